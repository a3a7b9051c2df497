"""Entity configuration: one YAML file per entity, validated once into typed objects.

Every entity the sync knows is described by a file in ``include/crm_sync/entities/``. The DAG
factory and the engine read nothing else about an entity, so adding a custom entity is a new
YAML file. Files are parsed with ``yaml.safe_load`` and validated with pydantic; any problem
raises :class:`ConfigError` naming the file and the key path (``fields[3].option_set``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from croniter import croniter
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

log = logging.getLogger(__name__)

ENTITIES_DIR = Path(__file__).resolve().parent / "entities"
#: The sync-filter column every table may carry (sync-semantics §4.1); only an explicit No excludes.
DEFAULT_FILTER_COLUMN = "new_synctomkto"


class ConfigError(ValueError):
    """An entity file is missing, malformed or inconsistent; the message names file and key."""


def check_cron(value: str) -> str:
    """A DAG schedule as the mapping files give it: five cron fields, or a preset (``@hourly``).

    Raises:
        ValueError: Anything else (a six-field cron with seconds too: Airflow's cron
            timetables take five).
    """
    text = value.strip()
    if not (text.startswith("@") or len(text.split()) == 5) or not croniter.is_valid(text):
        raise ValueError(
            f"{value!r} is not a cron schedule: five fields (minute hour day month weekday) or a preset"
        )
    return text


#: A ``schedule:`` key of a mapping file: checked when the file is read, so a bad one is an error
#: naming the file and the key, not an Airflow import error about a timetable.
CronSchedule = Annotated[str, AfterValidator(check_cron)]


class Direction(StrEnum):
    """Which way data flows for an entity or a single field."""

    BOTH = "both"
    D2M = "d2m"  # Dynamics → Marketo
    M2D = "m2d"  # Marketo → Dynamics

    def includes(self, other: Direction) -> bool:
        """Return True when data flowing ``other`` (d2m or m2d) is covered by this direction."""
        return self is Direction.BOTH or self is other


class Side(StrEnum):
    """A system; used for conflict winners and required-field checks."""

    MARKETO = "marketo"
    DYNAMICS = "dynamics"


class Cast(StrEnum):
    """Value types a mapped field can have; see ``crm_sync.transforms.casts``."""

    STRING = "string"
    EMAIL = "email"
    INTEGER = "integer"
    DECIMAL = "decimal"
    BOOLEAN = "boolean"
    DATETIME = "datetime"
    DATE = "date"
    CHOICE = "choice"  # Dataverse option-set integer ↔ Marketo label
    MULTICHOICE = "multichoice"  # Dataverse "1,3" ↔ Marketo "Label1;Label3"
    GUID = "guid"
    STRING_LIST = "string_list"  # list-valued column (team members) → ';'-joined string


class DeletePolicy(StrEnum):
    """What a Dynamics delete does on the Marketo side (sync-semantics §2.8, §6.5)."""

    FLAG = "flag"  # set the sync-owned is-deleted field; never delete persons
    DELETE = "delete"  # delete the Marketo record (companies, opportunities, custom objects)
    IGNORE = "ignore"


class DuplicateEmail(StrEnum):
    """What a Dataverse person does whose email another synced person already has (issue 22)."""

    ALLOW = "allow"  # the native behaviour: each record becomes a Marketo person of its own
    # One live Marketo person per email: the record already linked (else the oldest of the
    # batch) holds it; the others are reported (record error DUPLICATE_EMAIL), never created.
    OLDEST_HOLDS = "oldest_holds"


class QuotaPriority(StrEnum):
    """How an entity's runs share a short API budget (``crm_sync.guards.quota``)."""

    NORMAL = "normal"  # runs while its load fits in what is left of the budget
    LOW = "low"  # deferred when its load would eat into the headroom kept for the others


class MarketoObject(StrEnum):
    """The Marketo object family an entity writes to; decides the REST path the hooks use."""

    LEAD = "lead"
    COMPANY = "company"
    OPPORTUNITY = "opportunity"
    OPPORTUNITY_ROLE = "opportunity_role"
    SALES_PERSON = "sales_person"
    CUSTOM_OBJECT = "custom_object"


class _Strict(BaseModel):
    """Base: unknown keys are errors (a typo must not silently disable a rule)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class FieldMap(_Strict):
    """One mapped field: a Marketo field ↔ a Dataverse column with a cast and rules."""

    marketo: str
    dynamics: str
    cast: Cast = Cast.STRING
    direction: Direction | None = None  # None = the entity's direction
    conflict_winner: Side | None = None  # None = the entity's rule
    option_set: dict[int, str] | None = None
    required: bool = False
    max_length: int | None = Field(default=None, gt=0)
    enabled: bool = True  # false keeps a documented mapping in the file without syncing it
    # A consent flag where true means "do not contact" (Marketo unsubscribed, Dataverse
    # donotbulkemail): an opt-out on either side always wins, and the sync carries a re-subscribe
    # across only from the entity's consent_owner side (transforms/conflicts.py).
    opt_out: bool = False
    # Datetime fields only: the IANA time zone to read a value without an offset in (a system
    # that writes local times); without it such a value is a record error, never guessed as UTC.
    timezone: str | None = None

    @property
    def name(self) -> str:
        """Stable key of the field in hashes and conflict logs (the Marketo field name)."""
        return self.marketo

    @model_validator(mode="after")
    def _choice_needs_map(self) -> FieldMap:
        if self.cast in (Cast.CHOICE, Cast.MULTICHOICE) and not self.option_set:
            raise ValueError(f"cast {self.cast.value!r} needs an option_set")
        if self.option_set and len(set(self.option_set.values())) != len(self.option_set):
            raise ValueError("option_set labels must be unique (Marketo → Dynamics maps labels back)")
        if self.opt_out and self.cast is not Cast.BOOLEAN:
            raise ValueError("opt_out needs cast boolean (true = do not contact)")
        if self.timezone is not None:
            if self.cast is not Cast.DATETIME:
                raise ValueError("timezone applies to cast datetime only")
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"timezone {self.timezone!r} is not an IANA time zone name") from None
        return self


class Lookup(_Strict):
    """A Dataverse lookup column resolved through the id map into a Marketo field (D→M only).

    ``targets`` maps the lookup's target table (``…@Microsoft.Dynamics.CRM.lookuplogicalname``)
    to the entity whose id-map rows resolve it; a plain lookup has a single target and no
    ``type_column``. ``value`` picks what lands in the Marketo field: the Dynamics GUID (the
    external keys ``externalSalesPersonId``/``externalCompanyId`` are GUIDs) or the Marketo id.
    """

    dynamics: str
    marketo: str
    targets: dict[str, str]
    type_column: str | None = None
    value: str = "dynamics_id"
    required: bool = False
    as_integer: bool = False  # Marketo link fields holding a numeric lead id (leadID)

    @field_validator("value")
    @classmethod
    def _value_kind(cls, v: str) -> str:
        if v not in ("dynamics_id", "marketo_id"):
            raise ValueError("value must be 'dynamics_id' or 'marketo_id'")
        return v

    @model_validator(mode="after")
    def _polymorphic_needs_type(self) -> Lookup:
        if len(self.targets) > 1 and not self.type_column:
            raise ValueError("a lookup with several targets needs type_column")
        return self


class DynamicsSide(_Strict):
    """The Dataverse table of an entity."""

    table: str = Field(max_length=64)
    entity_set: str
    key: str
    filter_column: str | None = DEFAULT_FILTER_COLUMN
    modified_column: str = "modifiedon"
    expand: str | None = None  # $expand needed by the extractor (team members)


class MarketoSide(_Strict):
    """The Marketo object of an entity and its keys."""

    object: MarketoObject
    api_name: str | None = None  # custom objects only
    key: str  # dedupe field the upserts use
    id_field: str = "id"
    person_type: str | None = None  # value of the sync-owned type field (Lead / Contact)
    type_field: str | None = None
    deleted_field: str | None = None
    record_id_field: str | None = None  # sync-owned copy of the Dataverse GUID
    email_field: str | None = None
    sync_flag_field: str | None = None  # Marketo-only persons flagged for creation in Dynamics

    @model_validator(mode="after")
    def _custom_needs_api_name(self) -> MarketoSide:
        if self.object is MarketoObject.CUSTOM_OBJECT and not self.api_name:
            raise ValueError("object custom_object needs api_name")
        return self


class RoleRule(_Strict):
    """Opportunity contact roles derived from a polymorphic customer lookup (§2.4)."""

    entity: str  # name used for these rows in the id map and error tables
    lookup: str  # the lookup column, e.g. _customerid_value
    type_column: str
    when_type: str = "contact"
    person_entity: str = "contact"
    role: str = "Customer"
    is_primary: bool = True


class ConvertedFrom(_Strict):
    """Where a person record can come from: a lead qualified into a contact (§6.2, issue 22).

    A new record of this entity whose ``column`` names a record of ``entity`` linked to a
    Marketo person continues that person (same Marketo id, re-keyed and re-typed) instead of
    becoming a second one; the origin's link stops updating it.
    """

    entity: str
    column: str  # the Dataverse lookup naming the origin (contact: _originatingleadid_value)


class MergeColumns(_Strict):
    """The Dataverse columns the ``Merge`` action sets on the subordinate record (§6.3)."""

    flag: str = "merged"
    master: str = "_masterid_value"


class EntityConfig(_Strict):
    """Everything the engine and the DAG factory know about one entity."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,32}$")
    description: str = ""
    custom: bool = False
    dynamics: DynamicsSide
    marketo: MarketoSide
    direction: Direction
    conflict_winner: Side = Side.DYNAMICS
    fields: tuple[FieldMap, ...]
    lookups: tuple[Lookup, ...] = ()
    roles: RoleRule | None = None
    delete_policy: DeletePolicy = DeletePolicy.FLAG
    dedup_by_email: bool = False
    # The side whose re-subscribe (an opt_out field going back to false) the sync carries to the
    # other side; a re-subscribe on the other side is refused and the opt-out written back to it.
    consent_owner: Side = Side.MARKETO
    # A linked Marketo person that is gone from Marketo (deleted or merged away there) when a
    # Dynamics change reaches it: false reports it (a parked record error) and creates nothing;
    # true re-creates it from the whole Dataverse record on the error's retry (§2.8).
    recreate_deleted: bool = False
    duplicate_email: DuplicateEmail = DuplicateEmail.ALLOW
    converted_from: ConvertedFrom | None = None
    # Set for persons: a record merged into another in Dynamics hands its Marketo person over.
    merges: MergeColumns | None = None
    batch_size: int = Field(default=300, gt=0, le=300)
    # With ``watch`` on, runs start when a watcher sees changes (event-driven) and ``schedule`` is
    # only the safety net (a slow cron); with it off, ``schedule`` alone starts the runs.
    watch: bool = True
    schedule: CronSchedule = "*/5 * * * *"
    priority: int = Field(default=50, ge=0)
    quota_priority: QuotaPriority = QuotaPriority.NORMAL
    max_delete_share: float = Field(default=0.2, gt=0, le=1)
    depends_on: tuple[str, ...] = ()
    source_path: Path | None = Field(default=None, exclude=True)

    @field_validator("fields", mode="after")
    @classmethod
    def _drop_disabled(cls, fields: tuple[FieldMap, ...]) -> tuple[FieldMap, ...]:
        return tuple(f for f in fields if f.enabled)

    @model_validator(mode="after")
    def _consistent(self) -> EntityConfig:
        if not self.fields:
            raise ValueError("fields: at least one enabled field is needed")
        seen_m: set[str] = set()
        seen_d: set[str] = set()
        for i, f in enumerate(self.fields):
            if f.marketo in seen_m:
                raise ValueError(f"fields[{i}]: Marketo field {f.marketo!r} mapped twice")
            if f.dynamics in seen_d:
                raise ValueError(f"fields[{i}]: Dataverse column {f.dynamics!r} mapped twice")
            seen_m.add(f.marketo)
            seen_d.add(f.dynamics)
            if f.direction is not None and not self.direction.includes(f.direction):
                raise ValueError(
                    f"fields[{i}] ({f.marketo}): direction {f.direction.value} outside the entity's "
                    f"{self.direction.value}"
                )
        return self

    def field_direction(self, field: FieldMap) -> Direction:
        """Return the effective direction of ``field`` (its override or the entity's)."""
        return field.direction or self.direction

    def fields_for(self, direction: Direction) -> tuple[FieldMap, ...]:
        """Return the fields that flow ``direction`` (``Direction.D2M`` or ``Direction.M2D``)."""
        return tuple(f for f in self.fields if self.field_direction(f).includes(direction))

    def email_column(self) -> str | None:
        """The Dataverse column holding a person's email (mapped from ``marketo.email_field``)."""
        return next((f.dynamics for f in self.fields if f.marketo == self.marketo.email_field), None)

    def winner(self, field: FieldMap) -> Side:
        """Return which side wins when ``field`` changed on both sides since the last sync."""
        if self.field_direction(field) is Direction.D2M:
            return Side.DYNAMICS
        if self.field_direction(field) is Direction.M2D:
            return Side.MARKETO
        return field.conflict_winner or self.conflict_winner

    @property
    def writes_dynamics(self) -> bool:
        """True when the entity ever writes to Dataverse."""
        return self.direction is not Direction.D2M

    @property
    def dag_id(self) -> str:
        """DAG id of the entity's incremental sync (``sync_<name>`` / ``sync_custom_<name>``)."""
        return f"sync_custom_{self.name}" if self.custom else f"sync_{self.name}"


_Model = TypeVar("_Model", bound=BaseModel)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as ``fields[3].option_set``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top>"


def validate_document(model: type[_Model], data: Any, source: Path | str, **extra: Any) -> _Model:
    """Validate a YAML document (a mapping, with ``extra`` keys added) as ``model``.

    Raises:
        ConfigError: The document is not a mapping or fails validation; names the file and
            every failing key (``fields[3].option_set: ...``).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    try:
        return model.model_validate({**data, **extra})
    except ValidationError as exc:
        problems = "; ".join(f"{_format_loc(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None


def read_yaml(path: Path) -> Any:
    """The parsed YAML document in ``path``.

    Raises:
        ConfigError: The file cannot be read or is not YAML.
    """
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot load: {exc}") from None


def parse_entity(data: Any, source: Path | str = "<memory>") -> EntityConfig:
    """Validate one entity mapping already loaded from YAML.

    Args:
        data: The parsed YAML document.
        source: File name used in error messages.

    Returns:
        The validated entity.

    Raises:
        ConfigError: The document is not a mapping or fails validation; names file and key.
    """
    return validate_document(EntityConfig, data, source, source_path=Path(source))


def load_entity(path: Path) -> EntityConfig:
    """Load and validate one entity YAML file.

    Raises:
        ConfigError: The file cannot be read, is not valid YAML or fails validation.
    """
    entity = parse_entity(read_yaml(path), path)
    if entity.name != path.stem:
        raise ConfigError(f"{path}: name: {entity.name!r} must equal the file name {path.stem!r}")
    return entity


def load_entities(directory: Path = ENTITIES_DIR) -> dict[str, EntityConfig]:
    """Load every ``*.yaml`` in ``directory`` and check references between entities.

    Args:
        directory: Folder holding one YAML file per entity.

    Returns:
        Entities by name, ordered by (priority, name): the dependency order of upserts.

    Raises:
        ConfigError: A file is invalid, or a lookup/role/dependency names an unknown entity
            (every bad file named, one per line).
    """
    entities, errors = load_entities_each(directory)
    if errors:
        raise ConfigError("\n".join(errors.values()))
    return entities


def load_entities_each(directory: Path = ENTITIES_DIR) -> tuple[dict[str, EntityConfig], dict[str, str]]:
    """Load each ``*.yaml`` in ``directory`` on its own: a bad file never hides the good ones.

    A reference to an entity whose file exists but is invalid is not an error of the referring
    entity (that file's own error says what is wrong); a reference to an entity with no file is.

    Returns:
        The valid entities by name, ordered by (priority, name), and the error of each invalid
        file by its path (the message names the file and the key).

    Raises:
        ConfigError: The folder holds no entity file at all.
    """
    paths = sorted(directory.glob("*.yaml"))
    if not paths:
        raise ConfigError(f"{directory}: no entity *.yaml files found")
    loaded: dict[str, EntityConfig] = {}
    errors: dict[str, str] = {}
    for path in paths:
        try:
            entity = load_entity(path)
        except ConfigError as exc:
            errors[str(path)] = str(exc)
        else:
            loaded[entity.name] = entity
    known = set(loaded) | {path.stem for path in paths}
    for name, entity in list(loaded.items()):
        try:
            _check_references(entity, known)
        except ConfigError as exc:
            errors[str(entity.source_path)] = str(exc)
            del loaded[name]
    for message in errors.values():
        log.error("entity file skipped: %s", message)
    ordered = sorted(loaded.values(), key=lambda e: (e.priority, e.name))
    log.debug("loaded %d entities from %s (%d invalid files)", len(ordered), directory, len(errors))
    return {e.name: e for e in ordered}, errors


def _check_references(entity: EntityConfig, known: Collection[str]) -> None:
    """Fail when ``entity`` refers to an entity that has no YAML file."""
    refs: list[tuple[str, str]] = [(f"depends_on[{i}]", d) for i, d in enumerate(entity.depends_on)]
    for i, lk in enumerate(entity.lookups):
        refs += [(f"lookups[{i}].targets.{t}", name) for t, name in lk.targets.items()]
    if entity.roles:
        refs.append(("roles.person_entity", entity.roles.person_entity))
    for key, name in refs:
        if name not in known:
            raise ConfigError(f"{entity.source_path}: {key}: unknown entity {name!r}")


# The order entities are read in when a command names several (what points at what comes first).
ENTITY_ORDER = ("user", "team", "account", "contact", "lead", "opportunity")


def select_entities(all_entities: dict[str, EntityConfig], names: str) -> list[EntityConfig]:
    """The entities named in a comma-separated list (all when empty), in dependency order.

    Raises:
        SystemExit: An unknown entity name (the message lists the known ones).
    """
    wanted = [n.strip() for n in names.split(",") if n.strip()] or list(all_entities)
    unknown = [n for n in wanted if n not in all_entities]
    if unknown:
        raise SystemExit(f"unknown entities {unknown}; known: {sorted(all_entities)}")
    rank = {n: i for i, n in enumerate(ENTITY_ORDER)}
    return [all_entities[n] for n in sorted(wanted, key=lambda n: (rank.get(n, len(rank)), n))]


def watches_marketo(entity: EntityConfig) -> bool:
    """Whether the entity's runs read the Marketo person feed (a person entity syncing M→D)."""
    return entity.marketo.object is MarketoObject.LEAD and entity.direction.includes(Direction.M2D)
