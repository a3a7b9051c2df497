"""Task ``extract_changes`` of ``sync_program_membership``: read both sides' changes, stage them.

* Marketo: "Change Status in Progression" activities (type resolved by name) from the stored
  paging token; with no token yet (the first run), a paging token for now is taken first and
  then the current members of every paired program are read through the bulk program-member
  export (10 programs a job), so nothing that happens during the export is missed.
* Dataverse: change tracking on ``campaignresponses`` (responses to paired campaigns, with their
  customer parties read in one query per 40 responses) and on ``listmembers`` (rows of the
  sync's own lists, and deleted rows).

Everything goes to the run's staging folder as Parquet, with a manifest holding the pairs in
force and the tokens to store once both loads succeeded; a failed load re-reads these files.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from crm_sync.marketing.membership_dynamics import LISTMEMBER_COLUMNS, responses_frame
from crm_sync.marketing.program_config import ProgramLink, ResolvedStatuses
from crm_sync.marketing.program_membership import (
    CHANGE_COLUMNS,
    CUSTOMER_PARTY,
    ENTITY,
    activity_type_id,
    changes_from_activities,
    changes_from_export,
)
from crm_sync.state import get_watermark, read_scope
from crm_sync.state.membership import program_lists

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from datetime import datetime

    from crm_sync.engine.context import RunContext
    from crm_sync.marketing.program_config import ProgramMapping
    from crm_sync_hooks.dynamics import ChangePage, DynamicsHook
    from crm_sync_hooks.marketo import MarketoHook

log = logging.getLogger(__name__)

EXTRACT_MANIFEST = "membership_extract"
M2D = (ENTITY, "m2d")
RESPONSES = ("campaignresponse", "d2m")
LISTMEMBERS = ("listmember", "d2m")
EXPORT_FIELDS = ("leadId", "programId", "statusName", "membershipDate")
RESPONSE_SELECT = ("activityid", "responsecode", "_regardingobjectid_value", "receivedon", "modifiedon")
LISTMEMBER_SELECT = ("listmemberid", "_listid_value", "_entityid_value")
PARTIES_PER_QUERY = 40
EXPORT_PROGRAMS = 10  # programs per bulk program-member export job


def links_to_json(links: Mapping[int, ProgramLink]) -> list[dict[str, Any]]:
    """The pairs in force, for the manifest (the loads use the extract's pairs, not a re-read)."""
    return [
        {
            "program_id": link.program_id,
            "campaign_id": link.campaign_id,
            "source": link.source,
            "to_dynamics": link.statuses.to_dynamics,
            "to_marketo": {str(k): v for k, v in link.statuses.to_marketo.items()},
        }
        for link in links.values()
    ]


def links_from_json(data: Sequence[Mapping[str, Any]]) -> dict[int, ProgramLink]:
    """Pairs back from :func:`links_to_json`."""
    return {
        int(d["program_id"]): ProgramLink(
            int(d["program_id"]),
            str(d["campaign_id"]),
            ResolvedStatuses(dict(d["to_dynamics"]), {int(k): v for k, v in d["to_marketo"].items()}),
            str(d["source"]),
        )
        for d in data
    }


def resolve_links(
    mapping: ProgramMapping, marketo: MarketoHook, dynamics: DynamicsHook
) -> dict[int, ProgramLink]:
    """The pairs in force: explicit ones, plus (with naming rules) programs and campaigns by name.

    Naming rules cost one Marketo call per 200 programs and one Dataverse query per 5,000 campaigns.
    """
    if not mapping.needs_names:
        return mapping.resolve()
    programs = {int(p["id"]): str(p["name"]) for page in marketo.get_programs() for p in page}
    campaigns = {
        str(r["campaignid"]).lower(): str(r.get("name") or "")
        for page in dynamics.query("campaigns", select=["campaignid", "name"], filter="statecode eq 0")
        for r in page
    }
    return mapping.resolve(programs, campaigns)


def _track(
    dynamics: DynamicsHook, entity_set: str, select: Sequence[str], link: str | None
) -> Iterator[ChangePage]:
    from crm_sync_hooks.dynamics import DeltaTokenExpired

    try:
        yield from dynamics.track_changes(entity_set, list(select), link)
    except DeltaTokenExpired:
        # Past the retention period: read the table whole again (idempotent against agreed state).
        log.warning("%s: delta link expired; reading the table again", entity_set)
        yield from dynamics.track_changes(entity_set, list(select), None)


def read_marketo_changes(
    marketo: MarketoHook, token: str | None, program_ids: Sequence[int], now: datetime, workdir: Path
) -> tuple[pd.DataFrame, str, str]:
    """Status changes since ``token`` (the activity feed), or all current members (bulk export).

    Returns:
        The changes (:data:`CHANGE_COLUMNS`), the next paging token and the source
        (``feed`` or ``export``).
    """
    if token is not None:
        type_id = activity_type_id(marketo.get_activity_types())
        records: list[dict[str, Any]] = []
        next_token = token
        for page in marketo.get_activities(token, [type_id]):
            records += page.records
            next_token = page.next_page_token
        return changes_from_activities(records), next_token, "feed"
    next_token = marketo.get_paging_token(now)  # first: whatever happens during the export is re-read
    frames = [pd.DataFrame(columns=list(CHANGE_COLUMNS))]
    ids = sorted(program_ids)
    for start in range(0, len(ids), EXPORT_PROGRAMS):
        dest = workdir / f"members-{start}.csv"
        export = marketo.export_program_members(
            ids[start : start + EXPORT_PROGRAMS],
            list(EXPORT_FIELDS),
            dest,
            poll_seconds=marketo.bulk_queue_wait,
            first_poll_seconds=1.0,
            workdir=workdir,
        )
        members = pd.read_csv(dest, dtype=str, keep_default_na=False, na_values=["null", ""])
        if "programId" not in members and len(ids[start : start + EXPORT_PROGRAMS]) == 1:
            members["programId"] = str(ids[start])
        log.info("program member export %s: %d members", export.export_ids, export.rows)
        frames.append(changes_from_export(members))
    return pd.concat(frames, ignore_index=True), next_token, "export"


def read_parties(dynamics: DynamicsHook, activity_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The customer parties of campaign responses, :data:`PARTIES_PER_QUERY` responses a query."""
    out: list[dict[str, Any]] = []
    ids = sorted({str(i).lower() for i in activity_ids})
    for start in range(0, len(ids), PARTIES_PER_QUERY):
        either = " or ".join(f"_activityid_value eq {i}" for i in ids[start : start + PARTIES_PER_QUERY])
        query = dynamics.query(
            "activityparties",
            select=["_activityid_value", "_partyid_value", "participationtypemask"],
            filter=f"({either}) and participationtypemask eq {CUSTOMER_PARTY}",
        )
        out += [row for page in query for row in page]
    return out


def extract_membership(
    ctx: RunContext, marketo: MarketoHook, dynamics: DynamicsHook, mapping: ProgramMapping, *, now: datetime
) -> dict[str, Any]:
    """Read and stage both sides' membership changes; returns the manifest (also staged).

    Args:
        ctx: The run's staging area and state store.
        marketo: Marketo hook (its calls are counted by the task session).
        dynamics: Dataverse hook.
        mapping: The validated program mapping.
        now: The run's clock, for the first run's paging token.
    """
    folder = ctx.staging.run_dir(ENTITY, ctx.run_id)
    with read_scope(ctx.state) as session:
        token = get_watermark(session, *M2D)
        responses_link = get_watermark(session, *RESPONSES)
        members_link = get_watermark(session, *LISTMEMBERS)
        own_lists = set(program_lists(session).values())
    links = resolve_links(mapping, marketo, dynamics)
    with tempfile.TemporaryDirectory(prefix="mds-members-") as tmp:
        changes, next_token, source = read_marketo_changes(marketo, token, list(links), now, Path(tmp))
    changes = changes[changes["program_id"].isin(list(links))]

    campaigns = {link.campaign_id for link in links.values()}
    rows: list[dict[str, Any]] = []
    next_responses = responses_link
    for page in _track(dynamics, "campaignresponses", RESPONSE_SELECT, responses_link):
        rows += [r for r in page.records if str(r.get("_regardingobjectid_value") or "").lower() in campaigns]
        next_responses = page.delta_link or next_responses
    responses = responses_frame(rows, read_parties(dynamics, [r["activityid"] for r in rows]))

    added: list[dict[str, Any]] = []
    deleted: list[str] = []
    next_members = members_link
    for page in _track(dynamics, "listmembers", LISTMEMBER_SELECT, members_link):
        added += [
            {
                "listmember_id": str(r["listmemberid"]).lower(),
                "list_id": str(r.get("_listid_value") or "").lower(),
                "entity_id": str(r.get("_entityid_value") or "").lower(),
            }
            for r in page.records
            if str(r.get("_listid_value") or "").lower() in own_lists
        ]
        deleted += [str(i).lower() for i in page.deleted_ids]
        next_members = page.delta_link or next_members

    manifest = {
        "started_at": now.isoformat(),
        "source": source,
        "links": links_to_json(links),
        "m2d_changes": ctx.staging.write_frame(folder, "m2d_changes", changes).to_dict(),
        "d2m_responses": ctx.staging.write_frame(folder, "d2m_responses", responses).to_dict(),
        "d2m_listmembers": ctx.staging.write_frame(
            folder, "d2m_listmembers", pd.DataFrame(added, columns=list(LISTMEMBER_COLUMNS))
        ).to_dict(),
        "d2m_listmember_deletes": ctx.staging.write_frame(
            folder, "d2m_listmember_deletes", pd.DataFrame({"listmember_id": deleted}, dtype=str)
        ).to_dict(),
        "tokens": {"m2d": next_token, "responses": next_responses, "listmembers": next_members},
    }
    ctx.staging.write_json(folder, EXTRACT_MANIFEST, manifest)
    return manifest


def read_manifest(ctx: RunContext) -> dict[str, Any]:
    """The run's extract manifest.

    Raises:
        FileNotFoundError: The run staged none (its extract did not finish).
    """
    data = ctx.staging.read_json(ctx.staging.run_dir(ENTITY, ctx.run_id), EXTRACT_MANIFEST)
    if data is None:
        raise FileNotFoundError(f"{ENTITY}: run {ctx.run_id} has no staged {EXTRACT_MANIFEST} manifest")
    return data
