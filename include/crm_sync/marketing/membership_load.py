"""Tasks ``load_to_dynamics``, ``load_to_marketo`` and ``commit`` of ``sync_program_membership``.

Each load re-reads the run's staged changes (never the APIs' feeds), adds the changes still
waiting for their person, plans with the pure functions of :mod:`program_membership` /
:mod:`membership_dynamics` against the agreed state, writes, and then stores the new agreed
state, the waiting changes and their record errors in one transaction. A re-run of a load
plans nothing new: every change it re-reads is already the agreed state. The commit stores the
extract's tokens only after both loads succeeded, and writes the run ledger.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pandas as pd

from crm_sync.marketing.membership_dynamics import (
    learned_rows,
    links_by_campaign,
    pending_as_responses,
    persons_by_dynamics_id,
    plan_list_changes,
    plan_to_marketo,
)
from crm_sync.marketing.membership_extract import LISTMEMBERS, M2D, RESPONSES, links_from_json
from crm_sync.marketing.program_membership import (
    CHANGE_COLUMNS,
    ENTITY,
    LIST_TYPE,
    PERSON_ENTITIES,
    ListKey,
    list_id_for,
    list_name,
    marketo_write_calls,
    pending_errors,
    persons_by_marketo_id,
    plan_to_dynamics,
)
from crm_sync.state import (
    RunCounts,
    lookup_links,
    read_scope,
    record_errors,
    resolve_errors,
    session_scope,
    set_watermark,
    utcnow,
    write_ledger,
)
from crm_sync.state.guards import run_api_calls
from crm_sync.state.membership import (
    add_pending,
    drop_pending,
    memberships,
    memberships_by_listmember,
    pending,
    program_lists,
    save_memberships,
    save_program_list,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from crm_sync.engine.context import RunContext
    from crm_sync_hooks.dynamics import DynamicsHook
    from crm_sync_hooks.marketo import MarketoHook
    from crm_sync_hooks.results import WriteResult

log = logging.getLogger(__name__)


def _store_waiting(
    ctx: RunContext,
    direction: str,
    saved: Iterable[Mapping[str, Any]],
    waiting: list[dict[str, Any]],
    done: list[tuple[int, str]],
) -> None:
    """The new agreed state, the changes still waiting and their record errors, in one transaction."""
    with session_scope(ctx.state) as session:
        rows = list(saved)
        if rows:
            save_memberships(session, rows)
        if waiting:
            add_pending(session, waiting)
            record_errors(session, pending_errors(waiting, direction), run_id=ctx.run_id)
        if done:
            drop_pending(session, direction, done)
            resolve_errors(session, ENTITY, direction, [f"{p}:{m}" for p, m in done])


# --- Marketo → Dynamics ---------------------------------------------------------------------------
def ensure_list(ctx: RunContext, dynamics: DynamicsHook, key: ListKey, known: dict[ListKey, str]) -> str:
    """The list of a program, campaign and person table: made and attached when missing (2 calls)."""
    if key in known:
        return known[key]
    program_id, campaign_id, entity = key
    list_id = list_id_for(program_id, campaign_id, entity)
    record = {
        "listid": list_id,
        "listname": list_name(program_id, entity),
        "createdfromcode": LIST_TYPE[entity],
        "type": False,
    }
    (result,) = dynamics.upsert_records("lists", [record], ["listid"], id_column="listid")
    if not result.ok:
        raise RuntimeError(
            f"list {list_name(program_id, entity)} for campaign {campaign_id}: {result.reason}"
        )
    dynamics.add_list_to_campaign(list_id, campaign_id)
    with session_scope(ctx.state) as session:
        save_program_list(session, program_id, campaign_id, entity, list_id)
    known[key] = list_id
    return list_id


def _list_members(dynamics: DynamicsHook, list_id: str) -> dict[str, str]:
    """Members of a list: record id → ``listmemberid`` (one query per 5,000 members)."""
    pages = dynamics.query(
        "listmembers", select=["listmemberid", "_entityid_value"], filter=f"_listid_value eq {list_id}"
    )
    return {str(r["_entityid_value"]).lower(): str(r["listmemberid"]).lower() for page in pages for r in page}


def load_to_dynamics(ctx: RunContext, dynamics: DynamicsHook, manifest: Mapping[str, Any]) -> dict[str, int]:
    """Write the staged Marketo changes (and the waiting ones) into Dataverse; returns counts."""
    links = links_from_json(manifest["links"])
    staged = ctx.staging.read_frame(manifest["m2d_changes"])
    with read_scope(ctx.state) as session:
        waiting = pending(session, "m2d")
    before = pd.DataFrame(
        [
            {
                "program_id": w["program_id"],
                "marketo_id": w["person_id"],
                "status": w["status"],
                "occurred_at": w["occurred_at"].isoformat() if w["occurred_at"] else None,
                "activity_id": "",
            }
            for w in waiting
        ],
        columns=list(CHANGE_COLUMNS),
    )
    changes = pd.concat([before, staged], ignore_index=True) if len(before) else staged
    changes["program_id"] = changes["program_id"].astype("int64")
    changes["marketo_id"] = changes["marketo_id"].astype(str)
    keys = list(zip(changes["program_id"].tolist(), changes["marketo_id"].tolist(), strict=True))
    with read_scope(ctx.state) as session:
        persons = persons_by_marketo_id(
            lookup_links(session, PERSON_ENTITIES, marketo_ids=changes["marketo_id"].unique())
        )
        agreed = memberships(session, keys)
        known = program_lists(session)
    plan = plan_to_dynamics(changes, links, persons, agreed)
    list_ids = {key: ensure_list(ctx, dynamics, key, known) for key in sorted({*plan.adds, *plan.removes})}
    for key, ids in plan.adds.items():
        dynamics.add_list_members(list_ids[key], key[2], ids)
    for key, ids in plan.removes.items():
        failed = [r for r in dynamics.remove_list_members(list_ids[key], ids) if not r.ok]
        if failed:
            raise RuntimeError(
                f"program {key[0]}: {len(failed)} list members not removed: {failed[0].reason}"
            )
    results = dynamics.upsert_records(
        "campaignresponses", plan.responses, ["activityid"], id_column="activityid"
    )
    bad = {plan.responses[r.index]["activityid"]: r for r in results if not r.ok}
    learned: dict[str, dict[str, str]] = {
        list_ids[k]: _list_members(dynamics, list_ids[k]) for k in plan.adds
    }
    saved = []
    for row in plan.memberships:
        key = (int(row["program_id"]), row["campaign_id"], row["person_entity"])
        if row["status"] is not None:
            lid = list_ids.get(key) or known.get(key)
            row = {
                **row,
                "list_id": lid,
                "listmember_id": learned.get(lid or "", {}).get(row["dynamics_id"], row["listmember_id"]),
            }
        saved.append(row)
    if bad:
        log.warning(
            "%d campaign responses failed: %s",
            len(bad),
            "; ".join(f"{k}: {r.reason}" for k, r in bad.items()),
        )
        from crm_sync.marketing.program_membership import response_id

        saved = [
            s
            for s in saved
            if s["status"] is None or response_id(s["program_id"], s["marketo_id"], s["status"]) not in bad
        ]
    _store_waiting(ctx, "m2d", saved, plan.pending, plan.done_pending)
    counts = {
        "changes": len(staged),
        "added": sum(map(len, plan.adds.values())),
        "removed": sum(map(len, plan.removes.values())),
        "responses": len(plan.responses) - len(bad),
        "failed": len(bad),
        "waiting": len(plan.pending),
        "unchanged": plan.unchanged,
    }
    log.info("Marketo → Dynamics: %s", counts)
    return counts


# --- Dynamics → Marketo ---------------------------------------------------------------------------
def _set_statuses(
    marketo: MarketoHook, program_id: int, status: str, member: bool, ids: list[str]
) -> dict[str, WriteResult]:
    """Set a status: members through the lead API's status call, others (and members Marketo does not
    know) through the program-member call, which adds them."""
    leads = [int(i) for i in ids]
    out: dict[str, WriteResult] = {}
    if member:
        out = {str(r.id): r for r in marketo.change_lead_program_status(program_id, leads, status)}
        leads = [i for i in leads if out.get(str(i)) is None or out[str(i)].code == "1037"]
    if leads:
        out.update({str(r.id): r for r in marketo.set_program_member_status(program_id, leads, status)})
    return out


def load_to_marketo(
    ctx: RunContext, marketo: MarketoHook, manifest: Mapping[str, Any], check_budget: Callable[[int], None]
) -> dict[str, int]:
    """Write the staged Dataverse changes (and the waiting ones) into Marketo; returns counts.

    ``check_budget`` gets the Marketo calls the writes need before any is sent (it raises to defer).
    """
    links = links_from_json(manifest["links"])
    responses = ctx.staging.read_frame(manifest["d2m_responses"])
    added = ctx.staging.read_frame(manifest["d2m_listmembers"])
    deleted = ctx.staging.read_frame(manifest["d2m_listmember_deletes"])["listmember_id"].tolist()
    with read_scope(ctx.state) as session:
        waiting = pending(session, "d2m")
        everything = pd.concat([pending_as_responses(waiting, links), responses], ignore_index=True)
        ids = {*everything["party_id"].astype(str), *added["entity_id"].astype(str)}
        persons = persons_by_dynamics_id(lookup_links(session, PERSON_ENTITIES, dynamics_ids=ids))
        lists = {lid: key for key, lid in program_lists(session).items()}
        campaigns = links_by_campaign(links)
        keys = {
            (campaigns[c].program_id, persons[d][1])
            for c, d in zip(everything["campaign_id"], everything["party_id"], strict=True)
            if c in campaigns and d in persons
        }
        keys |= {
            (lists[lid][0], persons[eid][1])
            for lid, eid in zip(added["list_id"], added["entity_id"], strict=True)
            if lid in lists and eid in persons
        }
        agreed = memberships(session, keys)
        by_listmember = memberships_by_listmember(session, deleted)
    plan = plan_to_marketo(everything, links, persons, agreed)
    plan_list_changes(plan, added, deleted, lists, persons, by_listmember)
    check_budget(marketo_write_calls(plan.groups, plan.records))
    saved = {(int(r["program_id"]), str(r["marketo_id"])): r for r in learned_rows(plan.learned, agreed)}
    written = skipped = 0
    for (program_id, status, member), mids in plan.status_sets.items():
        results = _set_statuses(marketo, program_id, status, member, mids)
        for mid in mids:
            result = results.get(mid)
            if result is not None and result.ok:
                saved[(program_id, mid)] = plan.memberships[(program_id, mid)]
                written += 1
            else:
                skipped += 1
                log.info(
                    "program %s: status %r not set for lead %s: %s",
                    program_id,
                    status,
                    mid,
                    result.reason if result else "no result",
                )
    for program_id, mids in plan.removals.items():
        results = {str(r.id): r for r in marketo.remove_program_members(program_id, [int(m) for m in mids])}
        for mid in mids:  # "not a member" (1037) is removed too
            if results.get(mid) is None or results[mid].ok or results[mid].code == "1037":
                saved[(program_id, mid)] = plan.memberships[(program_id, mid)]
    _store_waiting(ctx, "d2m", saved.values(), plan.pending, plan.done_pending)
    counts = {
        "responses": len(responses),
        "statuses_set": written,
        "skipped": skipped,
        "removed": sum(map(len, plan.removals.values())),
        "own": plan.own,
        "not_allowed": plan.not_allowed,
        "waiting": len(plan.pending),
        "unchanged": plan.unchanged,
        "learned": len(plan.learned),
    }
    log.info("Dynamics → Marketo: %s", counts)
    return counts


# --- commit ---------------------------------------------------------------------------------------
def commit_membership(
    ctx: RunContext,
    manifest: Mapping[str, Any],
    to_dynamics: Mapping[str, int],
    to_marketo: Mapping[str, int],
) -> dict[str, Any]:
    """Store the extract's tokens (after both loads succeeded) and write the run ledger."""
    tokens = manifest["tokens"]
    with session_scope(ctx.state) as session:
        for (entity, direction), token in (
            (M2D, tokens["m2d"]),
            (RESPONSES, tokens["responses"]),
            (LISTMEMBERS, tokens["listmembers"]),
        ):
            if token:
                set_watermark(session, entity, direction, str(token))
        calls = sum(run_api_calls(session, ctx.run_id, ENTITY).values())
        counts = RunCounts(
            run_id=ctx.run_id,
            entity=ENTITY,
            direction="both",
            status="success",
            extracted=int(manifest["m2d_changes"]["rows"]) + int(manifest["d2m_responses"]["rows"]),
            loaded=int(to_dynamics.get("added", 0))
            + int(to_dynamics.get("responses", 0))
            + int(to_dynamics.get("removed", 0))
            + int(to_marketo.get("statuses_set", 0))
            + int(to_marketo.get("removed", 0)),
            skipped=int(to_dynamics.get("unchanged", 0)) + int(to_marketo.get("unchanged", 0)),
            failed=int(to_dynamics.get("failed", 0)),
            api_calls=calls,
            started_at=pd.Timestamp(manifest["started_at"]).to_pydatetime(),
            ended_at=utcnow(),
        )
        write_ledger(session, counts)
    return {"api_calls": calls, "loaded": counts.loaded, "source": manifest["source"]}
