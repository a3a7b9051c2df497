"""The Marketo person change feed, read once per cycle and shared by the person entities.

The feed is read from the stored paging token; its chunk is staged under the start token, and an
entity whose watermark is the same token reuses the staged chunk instead of calling Marketo
again. Chunks form a chain (each ends where the next starts) and an entity joining the feed
starts at the chain's newest token, so lead and contact walk the same chunks. The current values
of the changed persons are fetched by id; the chunk records when, so the transform can ignore a
snapshot older than the sync's own last write of a record. Flagged Marketo-only persons are
looked up by email in Dataverse before a lead is created for them."""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

import pandas as pd

from crm_sync.config import Direction, EntityConfig
from crm_sync.engine.latency import summarize
from crm_sync.engine.peek import parse_time
from crm_sync.engine.staging import Batcher, token_key
from crm_sync.state import (
    get_watermark,
    session_scope,
    set_watermark,
    utcnow,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from sqlalchemy.orm import Session

    from crm_sync.engine.clients import DynamicsClient, MarketoClient
    from crm_sync.engine.context import RunContext
    from crm_sync.engine.staging import StagingArea

log = logging.getLogger(__name__)

PERSON_FEED = "person"
# Watermark row holding the newest token of the shared person feed chain.
FEED_HEAD_ENTITY = "_person_feed"
MARKETO_READ_BATCH = 300
EMAIL_QUERY_CHUNK = 25  # emails per $filter, well under URL length limits


def _staged_chunk(staging: StagingArea, token: str) -> dict[str, Any] | None:
    """The staged feed chunk starting at ``token``, if one exists and moved the feed on."""
    staged = staging.read_json(staging.feed_dir(PERSON_FEED, token), "manifest")
    # A chunk that ended where it started saw no activity; reusing it would never move on.
    if staged is None or staged.get("start") != token or staged.get("token") == token:
        return None
    missing = [ref["path"] for ref in staged.get("batches", []) if not staging.exists(ref)]
    if missing:
        # Staging cleaned up, or lost: read this part of the feed again rather than fail every run.
        log.warning("person feed chunk at %s lists %d missing files (%s); reading it again",
                    token_key(token), len(missing), missing[0])  # fmt: skip
        return None
    return staged


def _read_chunk(
    client: MarketoClient, staging: StagingArea, start_token: str, fields: Sequence[str]
) -> dict[str, Any]:
    """Read the feed from ``start_token`` to its end now, fetch the changed persons, stage them."""
    ids: dict[int, None] = {}
    times: list[datetime | None] = []
    token = start_token
    for page in client.get_lead_changes(start_token, fields, MARKETO_READ_BATCH):
        ids.update((int(a["leadId"]), None) for a in page.records if a.get("leadId") is not None)
        times += [parse_time(a.get("activityDate")) for a in page.records]
        token = page.next_page_token or token
    chunk: dict[str, Any] = {"start": start_token, "token": token, "batches": [], "rows": 0}
    chunk["change_times"] = summarize(times)  # staged with the chunk: a reusing run has it too
    if token == start_token:
        return chunk
    # The snapshot is no older than this moment (taken before the current values are fetched).
    chunk["read_at"] = utcnow().isoformat()
    folder = staging.feed_dir(PERSON_FEED, start_token)
    # File names carry the end token and this reader's own mark: two readers of the same tail
    # (lead and contact runs at once) each stage whole files of their own, and the manifest
    # renamed last names only its writer's files.
    prefix = f"persons-{token_key(token)[:12]}-{uuid.uuid4().hex[:8]}"
    batcher = Batcher(staging, folder, prefix, MARKETO_READ_BATCH, ["id", *fields])
    for records in client.get_leads("id", list(ids), ["id", *fields], MARKETO_READ_BATCH) if ids else ():
        batcher.add(records)
    chunk.update(batches=[b.to_dict() for b in batcher.close()], rows=batcher.total)
    staging.write_json(folder, "manifest", chunk)
    return chunk


def read_person_feed(
    client: MarketoClient,
    staging: StagingArea,
    start_token: str,
    fields: Sequence[str],
) -> dict[str, Any]:
    """Walk the person change feed from ``start_token`` to now, reading each part only once.

    Chunks another entity already read (staged under their start token) are reused; only the
    tail nobody has read yet is asked from Marketo, so every change is fetched once and each
    run still sees the feed up to now before it writes (conflicts stay visible).

    Returns:
        ``start``, ``token`` (where the next run starts), ``chunks`` (each with ``batches``,
        ``rows`` and ``read_at``), ``rows`` (persons over all chunks) and ``reused`` (chunks
        taken from staging).
    """
    chunks: list[dict[str, Any]] = []
    token = start_token
    reused = 0
    seen = {token}
    while (staged := _staged_chunk(staging, token)) is not None and staged["token"] not in seen:
        chunks.append(staged)
        token = staged["token"]
        seen.add(token)
        reused += 1
    tail = _read_chunk(client, staging, token, fields)
    if tail["rows"]:
        chunks.append(tail)
    log.info("person feed: %d staged chunks reused, %d persons read now", reused, tail["rows"])
    return {
        "start": start_token,
        "token": tail["token"],
        "chunks": chunks,
        "rows": sum(int(c["rows"]) for c in chunks),
        "reused": reused,
        "fresh": tail["token"] != token,
    }


def _flagged_emails(
    entity: EntityConfig, staging: StagingArea, chunks: Sequence[dict[str, Any]]
) -> list[str]:
    """Emails of the Marketo-only persons flagged for creation in the staged feed chunks."""
    from crm_sync.transforms import flagged_unlinked

    email_field = entity.marketo.email_field
    emails: set[str] = set()
    for chunk in chunks:
        for ref in chunk["batches"]:
            flagged = flagged_unlinked(staging.read_frame(ref), entity)
            if email_field and email_field in flagged:
                emails |= {str(e).strip().lower() for e in flagged[email_field].dropna() if str(e).strip()}
    return sorted(emails)


def find_email_matches(
    client: DynamicsClient, tables: Sequence[EntityConfig], emails: Sequence[str]
) -> list[dict[str, Any]]:
    """Dataverse leads/contacts whose email is one of ``emails`` (dedup before creating a lead).

    Returns:
        Rows with ``email`` (lower case), ``dynamics_id``, ``table`` (the entity name) and
        ``person_type`` (the value of the Marketo type field for that entity).
    """
    found: list[dict[str, Any]] = []
    for table in tables:
        column = table.email_column()
        if not column:
            continue
        key = table.dynamics.key
        for start in range(0, len(emails), EMAIL_QUERY_CHUNK):
            part = emails[start : start + EMAIL_QUERY_CHUNK]
            quoted = " or ".join(f"{column} eq '{e.replace(chr(39), chr(39) * 2)}'" for e in part)
            for page in client.query(table.dynamics.entity_set, select=[key, column], filter=quoted):
                found += [
                    {
                        "email": str(r[column]).lower(),
                        "dynamics_id": str(r[key]).lower(),
                        "table": table.name,
                        "person_type": table.marketo.person_type,
                    }
                    for r in page
                    if r.get(column)
                ]
    return found


def stage_candidates(
    entity: EntityConfig,
    ctx: RunContext,
    dynamics: DynamicsClient | None,
    chunks: Sequence[dict[str, Any]],
    dedup_tables: Sequence[EntityConfig],
) -> dict[str, Any] | None:
    """Look up email matches of flagged persons in Dataverse and stage them for the transform."""
    if not entity.marketo.sync_flag_field or not entity.dedup_by_email:
        return None
    emails = _flagged_emails(entity, ctx.staging, chunks)
    if not emails:
        return None
    if dynamics is None:
        raise ValueError(f"{entity.name}: a Dynamics client is needed to look up email matches")
    rows = find_email_matches(dynamics, dedup_tables or [entity], emails)
    frame = pd.DataFrame(rows, columns=["email", "dynamics_id", "table", "person_type"])
    folder = ctx.staging.run_dir(entity.name, ctx.run_id) / "extract"
    return ctx.staging.write_frame(folder, "email-matches", frame).to_dict()


def feed_start(ctx: RunContext, marketo: MarketoClient, now: datetime) -> str:
    """Where an entity without its own feed watermark starts: the shared feed's newest token.

    Joining the chain of staged chunks (instead of taking a fresh token) is what lets the lead
    and the contact DAG share each chunk. Before any entity has read the feed, the chain starts
    now; earlier Marketo history belongs to the full copy.
    """
    with session_scope(ctx.state) as session:
        head = get_watermark(session, FEED_HEAD_ENTITY, Direction.M2D.value)
        if head is None:
            head = marketo.get_paging_token(now)
            advance_feed_head(session, head)
    return head


def advance_feed_head(session: Session, token: str) -> None:
    """Remember the newest chunk boundary of the shared person feed (not a data watermark)."""
    set_watermark(session, FEED_HEAD_ENTITY, Direction.M2D.value, token)
