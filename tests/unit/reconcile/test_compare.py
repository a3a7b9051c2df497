"""The compare core on hand-made rows of the real lead entity: each kind of finding, and none."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from crm_sync.config import ENTITIES_DIR, EntityConfig, load_entities
from crm_sync.reconcile.compare import DIFF_COLUMNS, compare_entity
from crm_sync.state.idmap import LINK_COLUMNS
from crm_sync.transforms import empty_id_map

A, B, C, D = (f"0000000{i}-0000-4000-8000-000000000000" for i in range(1, 5))


@pytest.fixture(scope="module")
def lead() -> EntityConfig:
    return load_entities(ENTITIES_DIR)["lead"]


def _dyn(rows: list[dict[str, Any]]) -> pd.DataFrame:
    base = {"new_synctomkto": True, "donotphone": False, "revenue": None}
    return pd.DataFrame([{**base, **r} for r in rows])


def _mkto(rows: list[dict[str, Any]]) -> pd.DataFrame:
    base = {"msdType": "Lead", "msdIsDeleted": "false", "doNotCall": "false", "annualRevenue": None}
    return pd.DataFrame([{**base, **r} for r in rows])


def _links(pairs: list[tuple[str, str]], entity: str = "lead") -> pd.DataFrame:
    rows = [{"entity": entity, "dynamics_id": d, "marketo_id": m, "state": "active"} for d, m in pairs]
    frame = pd.DataFrame(rows)
    for col in LINK_COLUMNS:
        if col not in frame:
            frame[col] = None
    return frame[list(LINK_COLUMNS)]


def _found(frame: pd.DataFrame) -> list[tuple[Any, ...]]:
    assert list(frame.columns) == DIFF_COLUMNS
    plain = frame.astype(object).where(frame.notna(), None)
    return [tuple(r[1:]) for r in plain.itertuples(index=False)]


def test_equal_after_mapping_is_no_difference(lead: EntityConfig) -> None:
    # Same values in each system's own shape: option code vs label, bool vs "true", number vs text.
    dyn = _dyn(
        [{"leadid": A.upper(), "lastname": "Lee", "leadsourcecode": 8, "donotphone": True, "revenue": 12.5}]
    )
    mkto = _mkto(
        [
            {
                "id": 7,
                "externalPersonId": A,
                "lastName": "Lee",
                "leadSource": "Web",
                "doNotCall": "true",
                "annualRevenue": "12.5",
            }
        ]
    )
    out = compare_entity(lead, dyn, mkto, empty_id_map(), _links([(A, "7")]))
    assert _found(out) == []


def test_every_kind_of_finding(lead: EntityConfig) -> None:
    dyn = _dyn(
        [
            {"leadid": A, "lastname": "Lee", "jobtitle": "CTO"},
            {"leadid": B, "lastname": "Kim"},
            {"leadid": D, "lastname": "Hidden", "new_synctomkto": False},
        ]
    )
    mkto = _mkto(
        [
            {"id": 7, "externalPersonId": A, "lastName": "Lee", "title": "CEO"},
            {"id": 9, "externalPersonId": A, "lastName": "Lee", "title": "CTO"},  # a later duplicate
            {"id": 8, "externalPersonId": C, "lastName": "Gone"},  # its record was deleted
            {"id": 10, "externalPersonId": D, "lastName": "Hidden"},  # out of the sync's scope
            {"id": 11, "externalPersonId": "x", "msdIsDeleted": "true", "lastName": "Flagged"},
            {"id": 14, "externalPersonId": B, "msdIsDeleted": "true", "lastName": "Kim"},  # to revive
            {
                "id": 12,
                "msdType": None,
                "externalPersonId": None,
                "lastName": "New",
                "msdSyncToDynamics": "true",
            },
        ]
    )
    out = compare_entity(lead, dyn, mkto, empty_id_map(), _links([(A, "7"), (C, "8")]))
    assert _found(out) == [
        ("divergent", A, "7", "title", "CTO", "CEO"),
        ("duplicate_in_marketo", A, "9", None, None, None),
        ("missing_in_dynamics", None, "12", None, None, None),
        ("missing_in_marketo", B, "14", None, None, None),
        ("orphan", C, "8", None, None, None),
    ]


def test_one_person_claimed_by_a_lead_and_a_contact(lead: EntityConfig) -> None:
    dyn = _dyn([{"leadid": A, "lastname": "Lee"}])
    mkto = _mkto([{"id": 7, "externalPersonId": A, "lastName": "Lee"}])
    group = pd.concat([_links([(A, "7")]), _links([(B, "7")], entity="contact")], ignore_index=True)
    out = compare_entity(lead, dyn, mkto, empty_id_map(), _links([(A, "7")]), group)
    assert _found(out) == [("duplicate_in_dynamics", A, "7", None, None, None)]


def test_owner_lookup_compared_through_the_id_map(lead: EntityConfig) -> None:
    owner = "0000000a-0000-4000-8000-000000000000"
    dyn = _dyn(
        [
            {
                "leadid": A,
                "lastname": "Lee",
                "_ownerid_value": owner,
                "_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname": "systemuser",
            }
        ]
    )
    id_map = pd.DataFrame([{"entity": "user", "dynamics_id": owner, "marketo_id": "3"}])
    same = _mkto(
        [{"id": 7, "externalPersonId": A, "lastName": "Lee", "externalSalesPersonId": owner.upper()}]
    )
    other = _mkto([{"id": 7, "externalPersonId": A, "lastName": "Lee", "externalSalesPersonId": None}])
    assert _found(compare_entity(lead, dyn, same, id_map, _links([(A, "7")]))) == []
    assert _found(compare_entity(lead, dyn, other, id_map, _links([(A, "7")]))) == [
        ("divergent", A, "7", "externalSalesPersonId", owner, None)
    ]
