"""Split the one Marketo person change feed between the lead and the contact entities.

Marketo has a single person object; the feed is read once per cycle and each person entity
takes its share by the sync-owned type field (``msdType`` = Lead / Contact). Persons without
a Dataverse link are candidates for creation in Dynamics only when flagged for sync.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from crm_sync.transforms.casts import as_string

if TYPE_CHECKING:
    from crm_sync.config import EntityConfig

_TRUE = {"true", "1", "yes"}


def persons_for_entity(persons: pd.DataFrame, entity: EntityConfig) -> pd.DataFrame:
    """Linked persons of ``entity``: its type-field value and a Dataverse key present."""
    keep = pd.Series(True, index=persons.index)
    if entity.marketo.type_field and entity.marketo.person_type:
        kind = as_string(persons.get(entity.marketo.type_field, pd.Series(pd.NA, index=persons.index)))
        keep &= kind.str.lower().eq(entity.marketo.person_type.lower()).fillna(False).astype(bool)
    key = as_string(persons.get(entity.marketo.key, pd.Series(pd.NA, index=persons.index)))
    return persons.loc[(keep & key.notna()).to_numpy()]


def flagged_unlinked(persons: pd.DataFrame, entity: EntityConfig) -> pd.DataFrame:
    """Marketo-only persons (no type, no Dataverse key) flagged for creation in Dynamics.

    Returns an empty frame when the entity has no ``sync_flag_field`` (creation disabled).
    """
    flag_col = entity.marketo.sync_flag_field
    if not flag_col or flag_col not in persons:
        return persons.iloc[0:0]
    missing = pd.Series(pd.NA, index=persons.index)
    key = as_string(persons.get(entity.marketo.key, missing))
    kind = as_string(persons.get(entity.marketo.type_field or "", missing))
    flag = as_string(persons[flag_col]).str.strip().str.lower().isin(_TRUE)
    return persons.loc[(flag & key.isna() & kind.isna()).to_numpy()]
