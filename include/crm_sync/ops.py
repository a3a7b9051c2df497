"""The operations a plan stages and the load sends: the vocabulary the engine and the guards share.

A plan's ``ops`` frame names each record's write with one of these; the guards count them (the
mass-delete share, the API calls a load will spend) before anything is written.
"""

from __future__ import annotations

MARKETO_UPSERT = "marketo_upsert"
MARKETO_LINK = "marketo_link"  # set the Dataverse key and type on a Marketo-only person
MARKETO_ROLE_UPSERT = "marketo_role_upsert"  # opportunity roles, after their opportunity
MARKETO_DELETE = "marketo_delete"
MARKETO_FLAG_DELETED = "marketo_flag_deleted"
DYNAMICS_UPSERT = "dynamics_upsert"  # update a linked Dataverse row (never re-creates it)
DYNAMICS_CREATE = "dynamics_create"  # create the lead of a Marketo-only person (never overwrites)

MARKETO_OPS = (MARKETO_UPSERT, MARKETO_LINK, MARKETO_ROLE_UPSERT, MARKETO_FLAG_DELETED, MARKETO_DELETE)
DYNAMICS_OPS = (DYNAMICS_CREATE, DYNAMICS_UPSERT)
DELETE_OPS = (MARKETO_FLAG_DELETED, MARKETO_DELETE)
