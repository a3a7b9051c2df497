"""The activity mapping (``activities.yaml``): which Marketo activity types land on the Dynamics
timeline, and how each fills the columns of the custom activity table.

Types are named as Marketo's ``GET /rest/v1/activities/types.json`` lists them; their ids are
resolved once per run (:func:`resolve_types`), never written in the file. The file is read with
``yaml.safe_load`` and validated with pydantic; every problem raises
:class:`~crm_sync.config.ConfigError` naming the file and the key (``types[2].subject``).
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crm_sync.config import ConfigError, CronSchedule, read_yaml, validate_document

ACTIVITIES_FILE = Path(__file__).resolve().parent / "activities.yaml"
ACTIVITIES_ENV = "MDS_ACTIVITIES_FILE"
#: ``sync_activities``' default schedule: hourly, at a minute of its own (the watchers share the
#: Marketo day's idle polling with it).
ACTIVITIES_SCHEDULE = "17 * * * *"
#: Marketo's activity feed takes at most 10 activity type ids per call.
MAX_FEED_TYPES = 10
_TEMPLATE_FIELDS = ("type", "primary")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ActivityColumns(_Strict):
    """The Dataverse column each part of an activity goes to."""

    subject: str = "subject"
    actualstart: str = "actualstart"
    primary_attribute: str = "new_primaryattributevalue"
    attributes: str = "new_attributes"
    lead_id: str = "new_marketoleadid"
    type_id: str = "new_activitytypeid"
    type_name: str = "new_activitytypename"


class ActivityTable(_Strict):
    """The Dataverse activity table the activities are upserted into."""

    table: str = Field(min_length=1)
    entity_set: str = Field(min_length=1)
    key: str = Field(min_length=1)
    id_column: str = "activityid"
    regarding: str = "regardingobjectid"
    columns: ActivityColumns = ActivityColumns()
    subject_max_length: int = Field(default=200, ge=1)

    def binding(self, person_table: str) -> str:
        """The ``@odata.bind`` name of the regarding lookup for one person table."""
        return f"{self.regarding}_{person_table}_{self.table}@odata.bind"


def _check_template(template: str) -> str:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"not a valid template: {exc}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(f"{{{name}}}: format specs and conversions are not supported")
        if name in _TEMPLATE_FIELDS or (name.startswith("attr[") and name.endswith("]") and len(name) > 6):
            continue
        raise ValueError(f"unknown placeholder {{{name}}}: use {{type}}, {{primary}} or {{attr[Name]}}")
    return template


class ActivityType(_Strict):
    """One mapped Marketo activity type."""

    name: str = Field(min_length=1)
    subject: str = "{type}: {primary}"
    attributes: tuple[str, ...] = ()

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        return _check_template(value)


class ActivityMapping(_Strict):
    """The whole activity mapping file."""

    description: str = ""
    dynamics: ActivityTable
    persons: tuple[str, ...] = ("contact", "lead")
    batch_size: int = Field(default=1000, ge=1, le=1000)
    initial_lookback_hours: float = Field(default=24.0, ge=0)
    schedule: CronSchedule = ACTIVITIES_SCHEDULE
    types: tuple[ActivityType, ...] = Field(min_length=1, max_length=MAX_FEED_TYPES)
    source_path: Path | None = None

    @field_validator("persons")
    @classmethod
    def _persons(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one person entity (lead, contact)")
        if len(set(value)) != len(value):
            raise ValueError("each person entity once")
        return value

    @model_validator(mode="after")
    def _unique_types(self) -> ActivityMapping:
        seen: set[str] = set()
        for index, item in enumerate(self.types):
            if item.name.casefold() in seen:
                raise ValueError(f"types[{index}].name: {item.name!r} is mapped twice")
            seen.add(item.name.casefold())
        return self


def parse_activities(data: Any, source: Path | str = "<memory>") -> ActivityMapping:
    """Validate an activity mapping already loaded from YAML.

    Raises:
        ConfigError: Not a mapping, or a key is missing or wrong; names the file and the key.
    """
    return validate_document(ActivityMapping, data, source, source_path=Path(source))


def activities_file() -> Path:
    """The mapping file: ``$MDS_ACTIVITIES_FILE`` or the shipped ``activities.yaml``."""
    return Path(os.environ.get(ACTIVITIES_ENV) or ACTIVITIES_FILE)


def load_activities(path: Path | None = None) -> ActivityMapping:
    """Load and validate the activity mapping file (``path``, else :func:`activities_file`).

    Raises:
        ConfigError: The file cannot be read, is not YAML or fails validation.
    """
    path = path or activities_file()
    return parse_activities(read_yaml(path), path)


def resolve_types(mapping: ActivityMapping, types: list[dict[str, Any]]) -> dict[int, ActivityType]:
    """The mapped types by their id in this Marketo instance (from ``activities/types.json``).

    Names compare without regard to case.

    Raises:
        ConfigError: A mapped name is not an activity type of the instance (names the key).
    """
    by_name = {str(t.get("name", "")).casefold(): t for t in types}
    out: dict[int, ActivityType] = {}
    for index, item in enumerate(mapping.types):
        found = by_name.get(item.name.casefold())
        if found is None or found.get("id") is None:
            known = ", ".join(sorted(str(t.get("name")) for t in types))
            raise ConfigError(
                f"{mapping.source_path}: types[{index}].name: Marketo has no activity type "
                f"{item.name!r} (its types: {known})"
            )
        out[int(found["id"])] = item
    return out
