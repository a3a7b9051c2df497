"""What ``setup check`` found: one :class:`Finding` per missing or conflicting piece, and the report.

A finding names the system, the object (Dataverse table, Marketo object), the item (field,
column, privilege, switch), what is wrong, the exact fix, and the entities whose syncs it
blocks. When the APIs allow the fix, it carries the :class:`Action` ``setup apply`` performs;
otherwise the fix is for a person (security roles, Marketo Support, the native sync switch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

MARKETO = "marketo"
DYNAMICS = "dynamics"


class Kind(StrEnum):
    """The kinds of problem the check reports."""

    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    MISSING_TABLE = "missing_table"
    CHANGE_TRACKING_OFF = "change_tracking_off"
    MISSING_PRIVILEGE = "missing_privilege"
    SECURED_COLUMN = "secured_column"
    NATIVE_SYNC_ON = "native_sync_on"
    UNREADABLE = "unreadable"


class ActionKind(StrEnum):
    """What ``setup apply`` can do through the APIs."""

    CREATE_MARKETO_LEAD_FIELD = "create_marketo_lead_field"
    CREATE_DYNAMICS_COLUMN = "create_dynamics_column"
    ENABLE_CHANGE_TRACKING = "enable_change_tracking"


@dataclass(frozen=True)
class Action:
    """One creation call ``setup apply`` makes.

    Attributes:
        kind: What to create or switch on.
        object: The Marketo object or Dataverse table.
        name: The field or column (empty for a table switch).
        params: The definition sent (Marketo ``dataType``/``displayName``; Dataverse column type).
    """

    kind: ActionKind
    object: str
    name: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for the dry run and the log."""
        if self.kind is ActionKind.CREATE_MARKETO_LEAD_FIELD:
            return f"create Marketo lead field {self.name} ({self.params['dataType']})"
        if self.kind is ActionKind.CREATE_DYNAMICS_COLUMN:
            return f"create Dataverse column {self.object}.{self.name} ({self.params['type']})"
        return f"enable change tracking on Dataverse table {self.object}"


@dataclass(frozen=True)
class Finding:
    """One missing or conflicting piece.

    Attributes:
        system: ``marketo`` or ``dynamics``.
        object: Dataverse table logical name or Marketo object path (``leads``, ``companies``...).
        item: The field, column, privilege or setting.
        kind: The kind of problem.
        problem: What is wrong, in one sentence.
        fix: The exact fix.
        entities: The entities whose syncs it blocks (sorted).
        action: What ``setup apply`` does about it; None when a person must fix it.
    """

    system: str
    object: str
    item: str
    kind: Kind
    problem: str
    fix: str
    entities: tuple[str, ...]
    action: Action | None = None

    @property
    def automatic(self) -> bool:
        """True when ``setup apply`` can fix it."""
        return self.action is not None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        data["entities"] = list(self.entities)
        data["automatic"] = self.automatic
        data["action"] = self.action.describe() if self.action else None
        return data


@dataclass
class Report:
    """Everything one check found, and what it looked at."""

    findings: list[Finding] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # "dynamics lead", "marketo leads"...
    entities: list[str] = field(default_factory=list)

    @property
    def blocked(self) -> list[str]:
        """The entities at least one finding blocks, sorted."""
        return sorted({e for f in self.findings for e in f.entities})

    @property
    def ready(self) -> list[str]:
        """The entities nothing blocks."""
        blocked = set(self.blocked)
        return [e for e in self.entities if e not in blocked]

    @property
    def actions(self) -> list[Action]:
        """The calls ``setup apply`` would make, each once, in a stable order."""
        seen: dict[tuple[str, str, str], Action] = {}
        for f in self.findings:
            if f.action is not None:
                seen.setdefault((f.action.kind.value, f.action.object, f.action.name), f.action)
        return list(seen.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": not self.findings,
            "findings": [f.to_json() for f in self.findings],
            "blocked": self.blocked,
            "ready": self.ready,
            "checked": self.checked,
        }


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines or [""]


def report_text(report: Report, width: int = 100) -> str:
    """The report as the table ``setup check`` prints: one block per finding, then a summary."""
    if not report.findings:
        return (
            f"setup check: everything the entities need is in place ({len(report.checked)} objects "
            f"checked; ready: {', '.join(report.ready) or 'none'})."
        )
    lines = [f"setup check: {len(report.findings)} problem(s)", ""]
    header = f"{'#':>3}  {'system':<9} {'where':<38} {'problem'}"
    lines += [header, "-" * min(width, 120)]
    for i, f in enumerate(report.findings, 1):
        where = f"{f.object}.{f.item}" if f.item else f.object
        text = _wrap(f.problem, max(30, width - 53))
        lines.append(f"{i:>3}  {f.system:<9} {where:<38} {text[0]}")
        lines += [f"{'':>53}{t}" for t in text[1:]]
        how = "setup apply does it" if f.automatic else "by hand"
        lines += [f"{'':>53}{t}" for t in _wrap(f"fix ({how}): {f.fix}", max(30, width - 53))]
        lines.append(f"{'':>53}blocks: {', '.join(f.entities) or 'nothing'}")
        lines.append("")
    auto = sum(f.automatic for f in report.findings)
    lines.append(
        f"{auto} can be fixed by `python -m crm_sync.setup apply`; {len(report.findings) - auto} by hand."
    )
    lines.append(
        f"blocked: {', '.join(report.blocked) or 'none'}; ready: {', '.join(report.ready) or 'none'}"
    )
    return "\n".join(lines)
