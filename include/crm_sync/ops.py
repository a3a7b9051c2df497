"""The operations a plan stages and the load sends: the vocabulary the engine and the guards share.

A plan's ``ops`` frame names each record's write with one of these; the guards count them (the
mass-delete share, the API calls a load will spend) before anything is written.
"""

from __future__ import annotations

MARKETO_UPSERT = "marketo_upsert"
MARKETO_LINK = "marketo_link"  # set the Dataverse key and type on a Marketo-only person
# Person lifecycle (issue 22): hand a Marketo person over to another Dataverse record.
MARKETO_REPOINT = "marketo_repoint"  # re-key and re-type a linked person (qualified lead, moved merge)
MARKETO_MERGE = "marketo_merge"  # merge a merged record's person into its survivor's (one call each)
MARKETO_ROLE_UPSERT = "marketo_role_upsert"  # opportunity roles, after their opportunity
MARKETO_DELETE = "marketo_delete"
MARKETO_FLAG_DELETED = "marketo_flag_deleted"
DYNAMICS_UPSERT = "dynamics_upsert"  # update a linked Dataverse row (never re-creates it)
DYNAMICS_CREATE = "dynamics_create"  # create the lead of a Marketo-only person (never overwrites)

MARKETO_OPS = (
    MARKETO_UPSERT,
    MARKETO_LINK,
    MARKETO_REPOINT,
    MARKETO_MERGE,
    MARKETO_ROLE_UPSERT,
    MARKETO_FLAG_DELETED,
    MARKETO_DELETE,
)
# Operations Marketo takes one record per call (no batch endpoint).
SINGLE_RECORD_OPS = (MARKETO_MERGE,)
DYNAMICS_OPS = (DYNAMICS_CREATE, DYNAMICS_UPSERT)
DELETE_OPS = (MARKETO_FLAG_DELETED, MARKETO_DELETE)
