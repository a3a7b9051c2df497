"""Marketo activities → rows of the Dataverse activity table, regarding the synced lead or contact.

Plain pandas functions: no hooks, no state store. Activities arrive from the activity feed
(:func:`from_feed`) or a bulk export file (:func:`from_export`) and are brought to one frame
(:data:`ACTIVITY_COLUMNS`); :func:`to_timeline_rows` maps them with the YAML's types and the id
map's links into upsert rows, and sets apart the activities whose person is not linked yet
(they wait, as record errors, and are retried) and those that are malformed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path

    from crm_sync.marketing.activity_config import ActivityMapping, ActivityType

ENTITY = "activity"  # the name in the state store (watermark, record errors, ledger, call log)
DIRECTION = "m2d"
ACTIVITY_COLUMNS = ("activity_id", "lead_id", "activity_date", "type_id", "primary", "attributes")
ERROR_COLUMNS = ("entity", "direction", "record_id", "field", "code", "reason")
WAITING = "PERSON_NOT_SYNCED"  # record-error code of an activity whose person is not linked yet
INVALID = "INVALID_ACTIVITY"
_EXPORT_COLUMNS = {
    "marketoGUID": "activity_id",
    "leadId": "lead_id",
    "activityDate": "activity_date",
    "activityTypeId": "type_id",
    "primaryAttributeValue": "primary",
    "attributes": "attributes",
}


@dataclass(frozen=True)
class PersonTable:
    """A person entity's Dataverse table and entity set (``lead`` / ``leads``)."""

    entity: str
    table: str
    entity_set: str


@dataclass
class Timeline:
    """What :func:`to_timeline_rows` made of a frame of activities.

    Attributes:
        rows: Upsert rows (column logical names, the regarding lookup as ``@odata.bind``).
        activity_ids: The activity id of each row, in order.
        waiting: The activities (:data:`ACTIVITY_COLUMNS`) whose person is not linked yet.
        errors: Record errors (:data:`ERROR_COLUMNS`) of the waiting and the malformed ones.
    """

    rows: pd.DataFrame
    activity_ids: list[str]
    waiting: pd.DataFrame
    errors: pd.DataFrame


def _attributes_json(value: Any) -> str:
    """An activity's attributes (the feed's ``[{name, value}]`` list or a dict) as a JSON object."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        value = {str(a.get("name")): a.get("value") for a in value if isinstance(a, dict)}
    if not isinstance(value, dict):
        return "{}"
    return json.dumps({k: v for k, v in value.items() if v is not None}, sort_keys=True, default=str)


def empty_activities() -> pd.DataFrame:
    """A frame of no activities with the :data:`ACTIVITY_COLUMNS`."""
    return pd.DataFrame({c: pd.Series(dtype=object) for c in ACTIVITY_COLUMNS})


def _text(value: Any) -> str | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Every column as text or None (so feed, export and staged activities concatenate and stage)."""
    out = frame.reindex(columns=list(ACTIVITY_COLUMNS)).astype(object)
    for column in ACTIVITY_COLUMNS:
        out[column] = [_text(v) for v in out[column]]
    return out.reset_index(drop=True)


def from_feed(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Activities of ``GET /rest/v1/activities.json`` pages as :data:`ACTIVITY_COLUMNS`."""
    rows = [
        {
            "activity_id": r.get("marketoGUID") if r.get("marketoGUID") is not None else r.get("id"),
            "lead_id": r.get("leadId"),
            "activity_date": r.get("activityDate"),
            "type_id": r.get("activityTypeId"),
            "primary": r.get("primaryAttributeValue"),
            "attributes": _attributes_json(r.get("attributes") or []),
        }
        for r in records
    ]
    return _normalise(pd.DataFrame(rows)) if rows else empty_activities()


def from_export(path: Path) -> pd.DataFrame:
    """Activities of a bulk activity export file (CSV, ``null`` for empty) as :data:`ACTIVITY_COLUMNS`."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=["null"], encoding="utf-8")
    if frame.empty:
        return empty_activities()
    missing = sorted(set(_EXPORT_COLUMNS) - set(frame.columns))
    if missing:
        raise ValueError(f"activity export {path.name} lacks columns {missing}")
    return _normalise(frame.rename(columns=_EXPORT_COLUMNS))


def _errors(ids: Iterable[Any], field: str, code: str, reasons: Iterable[str]) -> pd.DataFrame:
    frame = pd.DataFrame({"record_id": [str(i) for i in ids], "reason": list(reasons)})
    return frame.assign(entity=ENTITY, direction=DIRECTION, field=field, code=code)[list(ERROR_COLUMNS)]


def _integers(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").astype("Int64")


def _valid(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off malformed activities (no id, lead id, type or date), each error naming the field."""
    problems: list[pd.DataFrame] = []
    frame = frame[frame["activity_id"].notna()].copy()
    frame["lead_id"] = _integers(frame["lead_id"])
    frame["type_id"] = _integers(frame["type_id"])
    frame["when"] = pd.to_datetime(frame["activity_date"], utc=True, errors="coerce", format="ISO8601")
    bad = pd.Series(False, index=frame.index)
    for column, what in (("lead_id", "leadId"), ("type_id", "activityTypeId"), ("when", "activityDate")):
        broken = frame[column].isna() & ~bad
        if broken.any():
            source = "activity_date" if column == "when" else column
            reasons = [
                f"activity {a}: {what} {v!r} is missing or not valid"
                for a, v in zip(frame.loc[broken, "activity_id"], frame.loc[broken, source], strict=True)
            ]
            problems.append(_errors(frame.loc[broken, "activity_id"], what, INVALID, reasons))
        bad |= broken
    errors = pd.concat(problems, ignore_index=True) if problems else _errors([], "", INVALID, [])
    return frame[~bad], errors


def person_targets(links: pd.DataFrame, persons: Iterable[PersonTable]) -> dict[str, tuple[PersonTable, str]]:
    """Marketo lead id → (person table, Dataverse GUID) from active id-map links, in the order of
    ``persons`` (the first entity with an active link wins)."""
    order = list(persons)
    by_entity = {p.entity: p for p in order}
    active = links[(links["state"] == "active") & links["marketo_id"].notna()]
    out: dict[str, tuple[PersonTable, str]] = {}
    for person in reversed(order):  # earlier entities overwrite later ones
        part = active[active["entity"] == person.entity]
        for mid, did in zip(part["marketo_id"], part["dynamics_id"], strict=True):
            out[str(mid)] = (by_entity[person.entity], str(did))
    return out


class _Attributes(dict[str, Any]):
    """Attribute lookups in a subject template: a missing attribute is empty."""

    def __missing__(self, key: str) -> str:
        return ""


def _subject(template: str, type_name: str, primary: Any, attrs: dict[str, Any], limit: int) -> str:
    text = template.format_map(
        {"type": type_name, "primary": "" if primary is None else primary, "attr": _Attributes(attrs)}
    )
    return text.strip()[:limit]


def to_timeline_rows(
    activities: pd.DataFrame,
    types: Mapping[int, ActivityType],
    targets: Mapping[str, tuple[PersonTable, str]],
    mapping: ActivityMapping,
) -> Timeline:
    """Map activities to upsert rows of the activity table.

    Args:
        activities: :data:`ACTIVITY_COLUMNS` (from the feed, an export or the waiting ones).
        types: The mapped types by id (:func:`~crm_sync.marketing.activity_config.resolve_types`);
            activities of other types are dropped.
        targets: Marketo lead id → person table and GUID (:func:`person_targets`).
        mapping: The activity mapping (columns, subject length).

    Returns:
        The rows (one per activity, deduplicated by activity id), the waiting activities and the
        record errors.
    """
    table = mapping.dynamics
    cols = table.columns
    frame = activities.drop_duplicates(subset=["activity_id"], keep="last")
    frame, errors = _valid(frame)
    frame = frame[frame["type_id"].isin(list(types))]
    lead_key = frame["lead_id"].astype(str)
    linked = lead_key.isin(list(targets))
    waiting = frame[~linked]
    reasons = [
        f"activity {a} waits: Marketo lead {lead} is not synced to Dynamics yet (no active "
        f"{'/'.join(mapping.persons)} link); retried on later runs"
        for a, lead in zip(waiting["activity_id"], waiting["lead_id"], strict=True)
    ]
    errors = pd.concat(
        [errors, _errors(waiting["activity_id"], "leadId", WAITING, reasons)], ignore_index=True
    )
    ready = frame[linked]
    records: list[dict[str, Any]] = []
    for aid, lead, when, type_id, primary, raw in zip(
        ready["activity_id"],
        ready["lead_id"],
        ready["when"],
        ready["type_id"],
        ready["primary"],
        ready["attributes"],
        strict=True,
    ):
        kind = types[int(type_id)]
        attrs = _parse_attributes(raw)
        if kind.attributes:
            attrs = {k: attrs[k] for k in kind.attributes if k in attrs}
        person, guid = targets[str(lead)]
        records.append(
            {
                table.key: str(aid),
                cols.subject: _subject(kind.subject, kind.name, primary, attrs, table.subject_max_length),
                cols.actualstart: when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                cols.primary_attribute: None if primary is None else str(primary)[:4000],
                cols.attributes: json.dumps(attrs, sort_keys=True, default=str),
                cols.lead_id: int(lead),
                cols.type_id: int(type_id),
                cols.type_name: kind.name,
                table.binding(person.table): f"/{person.entity_set}({guid})",
            }
        )
    rows = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    return Timeline(rows, [str(a) for a in ready["activity_id"]], _normalise(waiting), errors)


def _parse_attributes(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return {}
    return dict(value) if isinstance(value, dict) else {}


def upsert_records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Staged rows as write records: the empty lookup columns of other person tables dropped."""
    out = []
    for record in rows.astype(object).where(rows.notna(), None).to_dict("records"):
        out.append({k: v for k, v in record.items() if v is not None or not k.endswith("@odata.bind")})
    return out
