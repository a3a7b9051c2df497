"""Programs and channels of the asset API: browse, get by id or name, create.

A program has a type (Default, Event, Event with Webinar, Engagement, Email) and a channel; the
channel names the progression statuses a member can have, each with a step and a success flag
(Adobe's Channels and Programs pages). Channels are instance configuration in Marketo (Admin >
Tags); the emulator ships a fixed set with the statuses the issue names. Their status ids are
what the "Change Status in Progression" activity reports as "Old Status ID"/"New Status ID".

Asset-API envelopes carry ``warnings`` and ``errors`` lists beside ``result``; a search that finds
nothing answers success with the warning "No assets found for the given search criteria." and no
``result`` (reference §0; which asset calls do so is unconfirmed, the emulator does it for every
program read).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, text

from emulators.marketo.envelope import MarketoError
from emulators.marketo.fields import format_datetime, parse_datetime
from emulators.marketo.store import programs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from emulators.marketo.store import Store

NOT_IN_PROGRAM = "Not in Program"
NO_ASSETS = "No assets found for the given search criteria."
MAX_RETURN = 200  # asset API page size (default 20)
DEFAULT_FOLDER = (28, "Marketing Activities")


@dataclass(frozen=True)
class Status:
    """One progression status of a channel."""

    id: int
    name: str
    step: int
    success: bool = False


@dataclass(frozen=True)
class Channel:
    """A channel: which program type it serves and its progression statuses."""

    id: int
    name: str
    program_type: str  # the channel's applicableProgramType
    statuses: tuple[Status, ...]

    def status(self, name: str) -> Status | None:
        """The status called ``name`` (case-insensitive), or None."""
        return next((s for s in self.statuses if s.name.lower() == name.lower()), None)


def _channel(ident: int, name: str, kind: str, *statuses: tuple[str, int, bool]) -> Channel:
    # Status ids are unique across channels: channel id * 100 + position (0 = Not in Program).
    first = Status(ident * 100, NOT_IN_PROGRAM, 0)
    rest = (Status(ident * 100 + i, n, step, ok) for i, (n, step, ok) in enumerate(statuses, start=1))
    return Channel(ident, name, kind, (first, *rest))


# Steps tie where Marketo's recommended channels tie them (Attended and No Show), so a member can
# move sideways between them; the exact lists are this emulator's choice (channels are configurable).
CHANNELS: dict[str, Channel] = {
    c.name: c
    for c in (
        _channel(1, "Webinar", "event", ("Invited", 10, False), ("Registered", 20, False),
                 ("No Show", 30, False), ("Attended", 30, True), ("Attended On-demand", 40, True)),
        _channel(2, "Email Send", "email", ("Member", 10, False), ("Sent", 20, False),
                 ("Opened", 30, False), ("Clicked", 40, True), ("Unsubscribed", 50, False)),
        _channel(3, "Nurture", "nurture", ("Member", 10, False), ("Engaged", 20, True)),
        _channel(4, "Online Advertising", "program", ("Invited", 10, False), ("Registered", 20, False),
                 ("No Show", 30, False), ("Attended", 40, True)),
        _channel(5, "Tradeshow", "event", ("Invited", 10, False), ("Visited Booth", 20, False),
                 ("Engaged", 30, True)),
        _channel(6, "Operational", "program", ("Member", 10, False)),
    )
}  # fmt: skip

# Program type -> (channel applicableProgramType, URL prefix as in Adobe's samples, status).
PROGRAM_TYPES: dict[str, tuple[str, str, str]] = {
    "Default": ("program", "PG", ""),
    "Event": ("event", "ME", ""),
    "Event with Webinar": ("event", "ME", ""),
    "Engagement": ("nurture", "NP", "on"),
    "Email": ("email", "EBP", "unlocked"),
}


def channel_view(channel: Channel) -> dict[str, Any]:
    """A channel as ``channels.json`` shows it."""
    stamp = "2024-01-01T00:00:00Z+0000"
    return {
        "id": channel.id,
        "name": channel.name,
        "applicableProgramType": channel.program_type,
        "progressionStatuses": [
            {"name": s.name, "step": s.step, "description": None, "hidden": False, "success": s.success}
            for s in channel.statuses
        ],
        "createdAt": stamp,
        "updatedAt": stamp,
    }


def _asset_time(stored: str) -> str:
    # Adobe's program samples show "2015-05-21T22:45:13Z+0000"; the emulator answers the same.
    return stored + "+0000"


def view(row: Any, detail: bool = False) -> dict[str, Any]:
    """A program as the asset API shows it; ``detail`` adds ``tags`` and ``costs`` (by id/name only)."""
    prefix = PROGRAM_TYPES[row["type"]][1]
    out = {
        "id": row["id"],
        "name": row["name"],
        "description": row["description"],
        "createdAt": _asset_time(row["createdAt"]),
        "updatedAt": _asset_time(row["updatedAt"]),
        "url": f"https://app-emulator.marketo.com/#{prefix}{row['id']}A1",
        "type": row["type"],
        "channel": row["channel"],
        "folder": {"type": "Folder", "value": row["folderId"], "folderName": row["folderName"]},
        "status": row["status"],
        "workspace": "Default",
        "headStart": False,
    }
    if detail:
        out.update({"tags": [], "costs": None})
    return out


def find(conn: Connection, program_id: int | None = None, name: str | None = None) -> Any:
    """The program row with ``program_id`` or ``name``, or None."""
    if program_id is not None:
        return (
            conn.execute(text("SELECT * FROM programs WHERE id = :i"), {"i": program_id}).mappings().first()
        )
    return conn.execute(text("SELECT * FROM programs WHERE name = :n"), {"n": name}).mappings().first()


def require(conn: Connection, program_id: Any) -> Any:
    """The program row for a lead-database call (members, exports).

    Raises:
        MarketoError: 1013 for an unknown or malformed id (the code for a program the member
            endpoints cannot find is unconfirmed; 1013 is Marketo's "Object not found").
    """
    try:
        ident = int(program_id)
    except (TypeError, ValueError):
        raise MarketoError("1013", f"Program '{program_id}' not found") from None
    row = find(conn, ident)
    if row is None:
        raise MarketoError("1013", f"Program '{program_id}' not found")
    return row


def channel_of(row: Any) -> Channel:
    return CHANNELS[row["channel"]]


def browse(
    conn: Connection,
    offset: int,
    max_return: int,
    status: str | None,
    earliest: str | None,
    latest: str | None,
) -> list[dict[str, Any]]:
    """One page of programs by id, optionally only those updated in ``[earliest, latest]``."""
    where: list[str] = ["1 = 1"]
    args: dict[str, Any] = {"o": offset, "n": max_return}
    if status:
        where.append("status = :s")
        args["s"] = status
    for name, op, value in (("e", ">=", earliest), ("l", "<=", latest)):
        if value:
            where.append(f"updatedAt {op} :{name}")
            args[name] = value
    rows = conn.execute(
        text(f"SELECT * FROM programs WHERE {' AND '.join(where)} ORDER BY id LIMIT :n OFFSET :o"), args
    ).mappings()
    return [view(r) for r in rows]


def _text_time(value: Any, name: str) -> str:
    try:
        return format_datetime(parse_datetime(str(value)))
    except ValueError:
        raise MarketoError("704", f"Invalid date format for {name}") from None


def create(conn: Connection, store: Store, spec: Any) -> dict[str, Any]:
    """Create a program from the Create Program parameters (admin calls may also set ``createdAt``).

    Raises:
        MarketoError: 701 for a missing name, type or channel; 709 (Business Rule Violation) for
            an unknown type or channel, a channel that does not serve the type, or a name in use
            (the real codes of these cases are unconfirmed); 704 for a bad ``createdAt``.
    """
    if not isinstance(spec, dict):
        raise MarketoError("609")
    for required in ("name", "type", "channel"):
        if not spec.get(required):
            raise MarketoError("701", f"{required} cannot be blank")
    name, ptype, channel_name = str(spec["name"]), str(spec["type"]), str(spec["channel"])
    if ptype not in PROGRAM_TYPES:
        raise MarketoError("709", f"Invalid program type '{ptype}'")
    channel = CHANNELS.get(channel_name)
    if channel is None or channel.program_type != PROGRAM_TYPES[ptype][0]:
        raise MarketoError("709", f"Channel '{channel_name}' cannot be used with program type '{ptype}'")
    if find(conn, name=name) is not None:
        raise MarketoError("709", f"Program name '{name}' is already in use")
    folder = spec.get("folder") or {}
    if isinstance(folder, str):  # the form-encoded call sends the folder as JSON text
        try:
            folder = json.loads(folder)
        except ValueError:
            raise MarketoError("1003", 'folder must be JSON like {"id":28,"type":"Folder"}') from None
    folder_id = int(folder.get("id") or DEFAULT_FOLDER[0]) if isinstance(folder, dict) else DEFAULT_FOLDER[0]
    when = _text_time(spec["createdAt"], "createdAt") if spec.get("createdAt") else _now()
    row = {
        "id": store.take_program_ids(1),
        "name": name,
        "description": str(spec.get("description") or ""),
        "type": ptype,
        "channel": channel.name,
        "status": PROGRAM_TYPES[ptype][2],
        "folderId": folder_id,
        "folderName": DEFAULT_FOLDER[1] if folder_id == DEFAULT_FOLDER[0] else f"Folder {folder_id}",
        "createdAt": when,
        "updatedAt": when,
    }
    conn.execute(insert(programs), row)
    return view(row, detail=True)


def create_many(conn: Connection, store: Store, specs: Sequence[Any]) -> list[dict[str, Any]]:
    """Admin ``POST /_emulator/programs``: create each program of ``specs`` in order."""
    return [create(conn, store, s) for s in specs]


def ensure_default(conn: Connection, store: Store) -> None:
    """Give a database without programs the one program connectors' health checks read."""
    if conn.execute(text("SELECT COUNT(*) FROM programs")).scalar():
        return
    spec = {"name": "Emulator Program", "type": "Default", "channel": "Operational",
            "createdAt": "2024-01-01T00:00:00Z"}  # fmt: skip
    create(conn, store, spec)


def _now() -> str:
    return format_datetime(dt.datetime.now(dt.UTC))
