"""State of ``sync_program_membership``: the campaign lists it made, the memberships it agreed,
and the changes waiting for a person to be synced.

* ``program_list``: per program, campaign and person table (``lead``/``contact``), the static
  marketing list the sync created for it and attached to the campaign;
* ``program_membership``: per program and Marketo person, the status both systems last agreed on
  (``status`` None once removed), the Dataverse record and, once seen, its ``listmemberid`` (a
  deleted list member arrives from change tracking as that id alone);
* ``membership_pending``: a change for a person the id map does not link yet, per direction,
  program and person (Marketo id for ``m2d``, Dataverse id for ``d2m``); retried every run.

The models share :class:`crm_sync.state.models.Base`; migration ``v0008_program_membership``
creates them. Functions take an open session and leave the commit to the caller.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    String,
    UniqueConstraint,
    delete,
    select,
    tuple_,
)
from sqlalchemy.orm import Mapped, mapped_column

from crm_sync.state.db import chunks, upsert, utcnow
from crm_sync.state.models import Base

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from sqlalchemy.orm import Session

MEMBERSHIP_COLUMNS = (
    "program_id",
    "marketo_id",
    "campaign_id",
    "person_entity",
    "dynamics_id",
    "status",
    "list_id",
    "listmember_id",
)
PENDING_COLUMNS = ("direction", "program_id", "person_id", "campaign_id", "status", "occurred_at")


class ProgramList(Base):
    """The static marketing list of one program, campaign and person table."""

    __tablename__ = "program_list"

    program_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    campaign_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    person_entity: Mapped[str] = mapped_column(String(16), primary_key=True)
    list_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ProgramMembership(Base):
    """The agreed membership of one Marketo person in one program."""

    __tablename__ = "program_membership"
    __table_args__ = (
        UniqueConstraint("program_id", "marketo_id"),
        Index("ix_program_membership_listmember_id", "listmember_id"),
        Index("ix_program_membership_campaign_id_dynamics_id", "campaign_id", "dynamics_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    program_id: Mapped[int] = mapped_column(BigInteger)
    marketo_id: Mapped[str] = mapped_column(String(64))
    campaign_id: Mapped[str] = mapped_column(String(64))
    person_entity: Mapped[str] = mapped_column(String(16))  # lead / contact
    dynamics_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str | None] = mapped_column(String(128))  # None: removed
    list_id: Mapped[str | None] = mapped_column(String(64))
    listmember_id: Mapped[str | None] = mapped_column(String(64))
    in_list: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class MembershipPending(Base):
    """A change waiting for its person to be linked in the id map."""

    __tablename__ = "membership_pending"
    __table_args__ = (UniqueConstraint("direction", "program_id", "person_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    direction: Mapped[str] = mapped_column(String(8))
    program_id: Mapped[int] = mapped_column(BigInteger)
    person_id: Mapped[str] = mapped_column(String(64))
    campaign_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(128))
    occurred_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# --- lists ---------------------------------------------------------------------------------------
def program_lists(session: Session) -> dict[tuple[int, str, str], str]:
    """Every list the sync made: ``(program_id, campaign_id, person_entity)`` → ``list_id``."""
    rows = session.execute(
        select(
            ProgramList.program_id, ProgramList.campaign_id, ProgramList.person_entity, ProgramList.list_id
        )
    )
    return {(int(p), str(c), str(e)): str(lid) for p, c, e, lid in rows}


def save_program_list(
    session: Session, program_id: int, campaign_id: str, person_entity: str, list_id: str
) -> None:
    """Remember a list made and attached to its campaign (idempotent)."""
    row = {
        "program_id": int(program_id),
        "campaign_id": campaign_id,
        "person_entity": person_entity,
        "list_id": list_id,
        "created_at": utcnow(),
    }
    upsert(
        session, ProgramList, [row], keys=("program_id", "campaign_id", "person_entity"), update=["list_id"]
    )


# --- memberships ---------------------------------------------------------------------------------
def _as_dict(row: ProgramMembership) -> dict[str, Any]:
    out = {c: getattr(row, c) for c in MEMBERSHIP_COLUMNS}
    out["in_list"] = bool(row.in_list)
    return out


def memberships(
    session: Session, keys: Iterable[tuple[int, str]] | None = None
) -> dict[tuple[int, str], dict[str, Any]]:
    """Agreed memberships by ``(program_id, marketo_id)``: the given keys, or all of them."""
    if keys is None:
        return {
            (int(r.program_id), r.marketo_id): _as_dict(r)
            for r in session.execute(select(ProgramMembership)).scalars()
        }
    wanted = sorted({(int(p), str(m)) for p, m in keys})
    out: dict[tuple[int, str], dict[str, Any]] = {}
    cols = tuple_(ProgramMembership.program_id, ProgramMembership.marketo_id)
    for part in chunks(wanted, 200):
        for r in session.execute(select(ProgramMembership).where(cols.in_(part))).scalars():
            out[(int(r.program_id), r.marketo_id)] = _as_dict(r)
    return out


def memberships_by_listmember(session: Session, listmember_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Agreed memberships by the ``listmemberid`` of their list row."""
    ids = sorted({str(i).lower() for i in listmember_ids})
    out: dict[str, dict[str, Any]] = {}
    for part in chunks(ids):
        query = select(ProgramMembership).where(ProgramMembership.listmember_id.in_(part))
        out.update({str(r.listmember_id): _as_dict(r) for r in session.execute(query).scalars()})
    return out


def save_memberships(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert or update agreed memberships keyed by ``(program_id, marketo_id)``.

    Each row carries every column of :data:`MEMBERSHIP_COLUMNS` and ``in_list``.
    """
    now = utcnow()
    clean = [
        {
            **{c: r.get(c) for c in (*MEMBERSHIP_COLUMNS, "in_list")},
            "program_id": int(r["program_id"]),
            "marketo_id": str(r["marketo_id"]),
            "in_list": bool(r.get("in_list")),
            "updated_at": now,
        }
        for r in rows
    ]
    clean = list({(r["program_id"], r["marketo_id"]): r for r in clean}.values())
    keys = ("program_id", "marketo_id")
    return upsert(
        session,
        ProgramMembership,
        clean,
        keys=keys,
        update=[c for c in clean[0] if c not in keys] if clean else None,
    )


# --- pending -------------------------------------------------------------------------------------
def _when(value: Any) -> datetime | None:
    """A change's time as an aware datetime (ISO text from the APIs is accepted)."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def add_pending(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    """Store changes waiting for their person (a newer change of the same key replaces an older)."""
    now = utcnow()
    clean = [
        {
            **{c: r.get(c) for c in PENDING_COLUMNS},
            "program_id": int(r["program_id"]),
            "person_id": str(r["person_id"]),
            "occurred_at": _when(r.get("occurred_at")),
            "updated_at": now,
        }
        for r in rows
    ]
    clean = list({(r["direction"], r["program_id"], r["person_id"]): r for r in clean}.values())
    keys = ("direction", "program_id", "person_id")
    return upsert(
        session,
        MembershipPending,
        clean,
        keys=keys,
        update=["campaign_id", "status", "occurred_at", "updated_at"],
    )


def pending(session: Session, direction: str) -> list[dict[str, Any]]:
    """The changes of ``direction`` waiting for their person, oldest first."""
    query = (
        select(MembershipPending)
        .where(MembershipPending.direction == direction)
        .order_by(MembershipPending.id)
    )
    return [{c: getattr(r, c) for c in PENDING_COLUMNS} for r in session.execute(query).scalars()]


def drop_pending(session: Session, direction: str, keys: Iterable[tuple[int, str]]) -> int:
    """Forget pending changes ``(program_id, person_id)`` of ``direction`` (applied or superseded)."""
    wanted = sorted({(int(p), str(m)) for p, m in keys})
    gone = 0
    cols = tuple_(MembershipPending.program_id, MembershipPending.person_id)
    for part in chunks(wanted, 200):
        result = session.execute(
            delete(MembershipPending).where(MembershipPending.direction == direction, cols.in_(part))
        )
        gone += int(getattr(result, "rowcount", 0) or 0)
    return gone
