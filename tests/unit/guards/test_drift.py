"""Schema drift check: needs from the entity files, comparison with the accepted snapshot, caching."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from crm_sync.config import EntityConfig
from crm_sync.guards.drift import (
    SchemaDriftError,
    check_schema,
    compare,
    dynamics_needs,
    marketo_fields,
    marketo_needs,
    raise_for_drift,
)
from crm_sync.state import session_scope


class FakeMarketo:
    def __init__(self, fields: dict[str, str]):
        self.fields = fields
        self.calls = 0

    def describe(self, object_name: str = "leads") -> list[dict[str, Any]]:
        self.calls += 1
        return [{"dataType": t, "rest": {"name": n}} for n, t in self.fields.items()]


class FakeDynamics:
    def __init__(self, columns: dict[str, str]):
        self.columns = columns

    def entity_attributes(
        self, logical_name: str, select: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        return [{"LogicalName": n, "AttributeType": t} for n, t in self.columns.items()]


def _contact_schema(contact: EntityConfig) -> tuple[dict[str, str], dict[str, str]]:
    """Fields of both sides that satisfy every need of contact.yaml."""
    dyn = {n.name: "Lookup" if n.lookup else "String" for n in dynamics_needs(contact)}
    mkto = {n.name: "string" for n in marketo_needs(contact)}
    for f in contact.fields:
        kind = {
            "boolean": ("Boolean", "boolean"),
            "datetime": ("DateTime", "datetime"),
            "choice": ("Picklist", "string"),
        }
        if f.cast.value in kind:
            dyn[f.dynamics], mkto[f.marketo] = kind[f.cast.value]
    for flag in (contact.marketo.deleted_field, contact.marketo.sync_flag_field):
        if flag:
            mkto[flag] = "boolean"  # the sync-owned flags must be booleans
    dyn["ownerid"] = "Owner"
    dyn["parentcustomerid"] = "Customer"
    return dyn, mkto


def test_needs_cover_keys_mapped_fields_and_lookups(entities: dict[str, EntityConfig]) -> None:
    contact = entities["contact"]
    d = {n.name for n in dynamics_needs(contact)}
    m = {n.name for n in marketo_needs(contact)}
    assert {"contactid", "modifiedon", "new_synctomkto", "jobtitle", "ownerid", "parentcustomerid"} <= d
    assert "mkt_leadscore" not in d, "disabled fields are not needed"
    assert {"externalPersonId", "msdType", "msdIsDeleted", "title", "externalCompanyId"} <= m
    assert "member_ids" not in {n.name for n in dynamics_needs(entities["team"])}, "derived columns skipped"


def test_marketo_fields_reads_lead_and_object_describes() -> None:
    lead = [{"dataType": "email", "rest": {"name": "email"}}]
    obj = [{"name": "Company", "fields": [{"name": "company", "dataType": "string"}]}]
    assert marketo_fields(lead) == {"email": "email"}
    assert marketo_fields(obj) == {"company": "string"}


def test_removed_field_names_a_probable_rename(entities: dict[str, EntityConfig]) -> None:
    contact = entities["contact"]
    baseline, _ = _contact_schema(contact)
    current = {("new_jobtitle" if k == "jobtitle" else k): v for k, v in baseline.items()}
    report = compare("dynamics", "contact", dynamics_needs(contact), current, baseline)
    (problem,) = report.problems
    assert "Dataverse contact.jobtitle (mapped to Marketo title) no longer exists" in problem
    assert "new_jobtitle (renamed?)" in problem
    assert report.new_fields == ["new_jobtitle"]


def test_incompatible_type_is_an_error_and_compatible_one_is_reported(
    entities: dict[str, EntityConfig],
) -> None:
    contact = entities["contact"]
    baseline, _ = _contact_schema(contact)
    bad = compare(
        "dynamics", "contact", dynamics_needs(contact), {**baseline, "donotphone": "String"}, baseline
    )
    assert bad.problems == [
        "Dataverse contact.donotphone (mapped to Marketo doNotCall) changed type Boolean -> String, "
        "which cast boolean cannot use"
    ]
    ok = compare("dynamics", "contact", dynamics_needs(contact), {**baseline, "jobtitle": "Memo"}, baseline)
    assert ok.problems == []
    assert ok.changed_types == ["contact.jobtitle: String -> Memo"]


def test_first_check_names_an_unusable_type(entities: dict[str, EntityConfig]) -> None:
    contact = entities["contact"]
    current, _ = _contact_schema(contact)
    report = compare("dynamics", "contact", dynamics_needs(contact), {**current, "ownerid": "String"}, None)
    assert report.problems == [
        "Dataverse contact.ownerid (lookup into Marketo externalSalesPersonId) has type String; "
        "a lookup type is needed"
    ]


def test_check_caches_marketo_describe_for_the_day_and_keeps_snapshot_on_drift(
    entities: dict[str, EntityConfig], state: Engine
) -> None:
    contact = entities["contact"]
    dyn, mkto = _contact_schema(contact)
    marketo, dynamics = FakeMarketo(mkto), FakeDynamics(dyn)
    with session_scope(state) as s:
        first = check_schema(contact, s, marketo=marketo, dynamics=dynamics, today="2026-11-26")
    with session_scope(state) as s:
        check_schema(contact, s, marketo=marketo, dynamics=dynamics, today="2026-11-26")
    assert marketo.calls == 1, "the describe is read once per day"
    assert [o["cached"] for o in first["objects"]] == [False, False]

    dynamics.columns = {**dyn, "new_score": "Integer"}
    dynamics.columns.pop("telephone1")
    for _ in range(2):  # the accepted snapshot stays, so every run stops the same way
        with session_scope(state) as s:
            result = check_schema(contact, s, marketo=marketo, dynamics=dynamics, today="2026-11-27")
        with pytest.raises(
            SchemaDriftError, match=r"contact\.telephone1 \(mapped to Marketo phone\) no longer exists"
        ):
            raise_for_drift(contact, result)
    assert marketo.calls == 2, "a new day reads the describe again, once"

    dynamics.columns["telephone1"] = "String"
    with session_scope(state) as s:
        report = check_schema(contact, s, marketo=marketo, dynamics=dynamics, today="2026-11-27")
    assert report["new_fields"] == {"dynamics contact": ["new_score"]}


def test_marketo_side_drift_is_named(entities: dict[str, EntityConfig], state: Engine) -> None:
    contact = entities["contact"]
    dyn, mkto = _contact_schema(contact)
    del mkto["msdIsDeleted"]
    with session_scope(state) as s:
        result = check_schema(
            contact, s, marketo=FakeMarketo(mkto), dynamics=FakeDynamics(dyn), today="2026-11-26"
        )
    with pytest.raises(SchemaDriftError) as err:
        raise_for_drift(contact, result)
    assert err.value.problems == ["Marketo leads.msdIsDeleted (the deleted flag) no longer exists"]
