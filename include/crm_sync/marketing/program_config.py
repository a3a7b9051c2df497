"""The program mapping of ``sync_program_membership``: Marketo programs ↔ Dynamics campaigns.

One YAML file (``programs.yaml`` beside this module, or the file named by ``$MDS_PROGRAMS_FILE``)
pairs programs with campaigns, explicitly by id or by a naming rule, and says per pair which
progression status becomes which campaign response code (Marketo → Dynamics) and which response
code may set which status (Dynamics → Marketo; a code the file does not list sets nothing).
It is read with ``yaml.safe_load`` and validated with pydantic; a problem raises
:class:`~crm_sync.config.ConfigError` naming the file and the key path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crm_sync.config import CronSchedule, read_yaml, validate_document

if TYPE_CHECKING:
    from collections.abc import Mapping

PROGRAMS_FILE = Path(__file__).resolve().parent / "programs.yaml"
PROGRAMS_ENV = "MDS_PROGRAMS_FILE"
#: ``sync_program_membership``'s default schedule: hourly, at a minute of its own.
PROGRAMS_SCHEDULE = "47 * * * *"
NOT_IN_PROGRAM = "Not in Program"
#: The standard choice values of ``campaignresponse.responsecode``; the YAML may name them.
RESPONSE_CODES: dict[str, int] = {
    "Interested": 1,
    "Not Interested": 2,
    "Do Not Send Marketing Materials": 3,
    "Error": 4,
}
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _code(value: Any, labels: Mapping[str, int]) -> int:
    if isinstance(value, bool):
        raise ValueError(f"a response code must be a number or a label, got {value!r}")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    if text in labels:
        return labels[text]
    raise ValueError(f"unknown response code {value!r}: use a number or one of {sorted(labels)}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StatusMap(_Strict):
    """Which status becomes which response code, and which code may set which status.

    Attributes:
        to_dynamics: Marketo progression status → response code (number or label); a status
            not listed still makes the person a list member, with no campaign response.
        to_marketo: Response code → the Marketo status it sets; only these statuses are ever
            written to Marketo.
    """

    to_dynamics: dict[str, int | str] = Field(default_factory=dict)
    to_marketo: dict[int | str, str] = Field(default_factory=dict)

    @field_validator("to_dynamics", "to_marketo")
    @classmethod
    def _no_blank(cls, value: dict[Any, Any]) -> dict[Any, Any]:
        for key, target in value.items():
            if not str(key).strip() or not str(target).strip():
                raise ValueError(f"blank status or response code in {key!r}: {target!r}")
            if NOT_IN_PROGRAM in (str(key), str(target)):
                raise ValueError(f"{NOT_IN_PROGRAM!r} is a removal, not a mapped status")
        return value


class ProgramPair(_Strict):
    """One program paired with one campaign by id."""

    program_id: int = Field(gt=0)
    campaign_id: str
    status_map: str | None = None
    statuses: StatusMap | None = None

    @field_validator("campaign_id")
    @classmethod
    def _guid(cls, value: str) -> str:
        if not _GUID.match(value):
            raise ValueError(f"must be a GUID, got {value!r}")
        return value.lower()


class NamingRule(_Strict):
    """Programs whose name matches ``program_name`` (a full-match regex) pair with the campaign
    named ``campaign_name`` (a template of the regex's named groups: ``"{name}"``)."""

    program_name: str
    campaign_name: str
    status_map: str | None = None
    statuses: StatusMap | None = None

    @field_validator("program_name")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _template(self) -> NamingRule:
        groups = set(re.compile(self.program_name).groupindex)
        used = set(re.findall(r"{(\w+)}", self.campaign_name))
        if used - groups:
            raise ValueError(
                f"campaign_name uses {sorted(used - groups)}, groups of program_name are {sorted(groups)}"
            )
        return self


class ProgramsFile(_Strict):
    """The whole mapping file."""

    response_codes: dict[str, int] = Field(default_factory=lambda: dict(RESPONSE_CODES))
    status_maps: dict[str, StatusMap] = Field(default_factory=dict)
    default_status_map: str | None = None
    programs: list[ProgramPair] = Field(default_factory=list)
    naming_rules: list[NamingRule] = Field(default_factory=list)
    schedule: CronSchedule = PROGRAMS_SCHEDULE

    @model_validator(mode="after")
    def _references(self) -> ProgramsFile:
        names = set(self.status_maps)
        if self.default_status_map is not None and self.default_status_map not in names:
            raise ValueError(f"default_status_map: no status map {self.default_status_map!r}")
        items: list[tuple[str, ProgramPair | NamingRule]] = [
            *((f"programs[{i}]", p) for i, p in enumerate(self.programs)),
            *((f"naming_rules[{i}]", r) for i, r in enumerate(self.naming_rules)),
        ]
        for where, item in items:
            if item.status_map is not None and item.status_map not in names:
                raise ValueError(f"{where}.status_map: no status map {item.status_map!r}")
            if item.status_map is None and item.statuses is None and self.default_status_map is None:
                raise ValueError(f"{where}: needs status_map or statuses (no default_status_map)")
        for name, smap in self.status_maps.items():
            try:
                for value in smap.to_dynamics.values():
                    _code(value, self.response_codes)
                for key in smap.to_marketo:
                    _code(key, self.response_codes)
            except ValueError as exc:
                raise ValueError(f"status_maps.{name}: {exc}") from None
        seen: set[int] = set()
        for i, pair in enumerate(self.programs):
            if pair.program_id in seen:
                raise ValueError(f"programs[{i}].program_id: program {pair.program_id} is paired twice")
            seen.add(pair.program_id)
        return self


@dataclass(frozen=True)
class ResolvedStatuses:
    """A status map with response codes as numbers."""

    to_dynamics: dict[str, int]
    to_marketo: dict[int, str]

    def response_code(self, status: str) -> int | None:
        """The response code of a Marketo status (case-insensitive), or None when unmapped."""
        wanted = status.strip().lower()
        return next((c for s, c in self.to_dynamics.items() if s.lower() == wanted), None)

    def allowed_status(self, code: int | None) -> str | None:
        """The Marketo status a response code may set, or None when the file allows none."""
        return None if code is None else self.to_marketo.get(int(code))


@dataclass(frozen=True)
class ProgramLink:
    """One program ↔ campaign pair in force for a run."""

    program_id: int
    campaign_id: str
    statuses: ResolvedStatuses
    source: str  # "id" or "rule[<n>]"


@dataclass(frozen=True)
class ProgramMapping:
    """The validated file, ready to resolve pairs."""

    source: Path | str
    spec: ProgramsFile

    def statuses_for(self, item: ProgramPair | NamingRule) -> ResolvedStatuses:
        smap = item.statuses or self.spec.status_maps[str(item.status_map or self.spec.default_status_map)]
        codes = self.spec.response_codes
        return ResolvedStatuses(
            {s: _code(c, codes) for s, c in smap.to_dynamics.items()},
            {_code(c, codes): s for c, s in smap.to_marketo.items()},
        )

    @property
    def needs_names(self) -> bool:
        """Whether resolving pairs needs the program and campaign names (naming rules)."""
        return bool(self.spec.naming_rules)

    def resolve(
        self, programs: Mapping[int, str] | None = None, campaigns: Mapping[str, str] | None = None
    ) -> dict[int, ProgramLink]:
        """The pairs in force: every explicit pair, then each named program a rule pairs.

        Args:
            programs: Program id → name (only needed with naming rules).
            campaigns: Campaign id → name (only needed with naming rules); a name held by two
                campaigns pairs with neither.

        Returns:
            Pairs by program id (an explicit pair wins over a rule; the first matching rule wins).
        """
        out = {
            p.program_id: ProgramLink(p.program_id, p.campaign_id, self.statuses_for(p), "id")
            for p in self.spec.programs
        }
        by_name: dict[str, list[str]] = {}
        for cid, name in (campaigns or {}).items():
            by_name.setdefault(name, []).append(cid.lower())
        for pid, pname in sorted((programs or {}).items()):
            if pid in out:
                continue
            for i, rule in enumerate(self.spec.naming_rules):
                match = re.fullmatch(rule.program_name, pname)
                if match is None:
                    continue
                found = by_name.get(rule.campaign_name.format(**match.groupdict()), [])
                if len(found) == 1:
                    out[pid] = ProgramLink(pid, found[0], self.statuses_for(rule), f"rule[{i}]")
                break
        return out


def parse_programs(data: Any, source: Path | str = "<memory>") -> ProgramMapping:
    """Validate a parsed mapping document.

    Raises:
        ConfigError: Not a mapping, or a key fails validation; names the file and the key path
            as the entity files' errors do (``programs[0].campaign_id``).
    """
    spec = validate_document(ProgramsFile, {} if data is None else data, source)
    return ProgramMapping(source, spec)


def programs_file() -> Path:
    """The mapping file: ``$MDS_PROGRAMS_FILE`` or the shipped ``programs.yaml``."""
    return Path(os.environ.get(PROGRAMS_ENV) or PROGRAMS_FILE)


def load_programs(path: Path | None = None) -> ProgramMapping:
    """Load and validate the mapping file.

    Raises:
        ConfigError: The file cannot be read, is not YAML, or fails validation.
    """
    path = path or programs_file()
    return parse_programs(read_yaml(path), path)
