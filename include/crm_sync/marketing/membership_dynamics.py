"""Dynamics → Marketo: campaign responses set program statuses, removed list members leave.

Plain functions over plain data, like :mod:`crm_sync.marketing.program_membership` (whose
docstring explains the echo suppression both directions share): a response the sync wrote
itself is recognised by its derived id, a status already agreed is no change, and a list member
removed in Dynamics whose membership is already agreed removed is the sync's own removal.
Only the statuses a pair's ``to_marketo`` map names are ever set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from crm_sync.marketing.program_membership import ENTITY, response_id

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from crm_sync.marketing.program_config import ProgramLink

RESPONSE_COLUMNS = ("activity_id", "campaign_id", "responsecode", "party_id", "received_on")
LISTMEMBER_COLUMNS = ("listmember_id", "list_id", "entity_id")

StatusKey = tuple[int, str, bool]  # program id, status, already a member (→ the lead API's call)


def responses_frame(
    responses: Iterable[Mapping[str, Any]], parties: Iterable[Mapping[str, Any]]
) -> pd.DataFrame:
    """One row per changed campaign response and customer party (:data:`RESPONSE_COLUMNS`).

    Args:
        responses: ``campaignresponses`` rows (``activityid``, ``responsecode``,
            ``_regardingobjectid_value``, ``receivedon``, ``modifiedon``).
        parties: Their ``activityparties`` rows (``_activityid_value``, ``_partyid_value``).
    """
    by_activity: dict[str, list[str]] = {}
    for p in parties:
        if p.get("_partyid_value"):
            by_activity.setdefault(str(p["_activityid_value"]).lower(), []).append(
                str(p["_partyid_value"]).lower()
            )
    rows = []
    for r in responses:
        aid = str(r["activityid"]).lower()
        for party in by_activity.get(aid, []):
            rows.append(
                {
                    "activity_id": aid,
                    "campaign_id": str(r.get("_regardingobjectid_value") or "").lower(),
                    "responsecode": r.get("responsecode"),
                    "party_id": party,
                    "received_on": str(r.get("receivedon") or r.get("modifiedon") or ""),
                }
            )
    frame = pd.DataFrame(rows, columns=list(RESPONSE_COLUMNS))
    frame["responsecode"] = pd.to_numeric(frame["responsecode"]).astype("Int64")
    return frame


def links_by_campaign(links: Mapping[int, ProgramLink]) -> dict[str, ProgramLink]:
    """Pairs by campaign id (a campaign paired with several programs takes the lowest program id)."""
    out: dict[str, ProgramLink] = {}
    for pid in sorted(links, reverse=True):
        out[links[pid].campaign_id] = links[pid]
    return out


def persons_by_dynamics_id(links: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Active id-map links with a Marketo person as Dataverse id → (person entity, Marketo id)."""
    active = links[(links["state"] == "active") & links["marketo_id"].notna()]
    return {
        str(r["dynamics_id"]): (str(r["entity"]), str(r["marketo_id"])) for r in active.to_dict("records")
    }


@dataclass
class MarketoPlan:
    """What one run writes into Marketo, and the state it agrees on after each write succeeds."""

    status_sets: dict[StatusKey, list[str]] = field(default_factory=dict)
    removals: dict[int, list[str]] = field(default_factory=dict)
    memberships: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    learned: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    done_pending: list[tuple[int, str]] = field(default_factory=list)
    own: int = 0
    not_allowed: int = 0
    unchanged: int = 0

    @property
    def groups(self) -> int:
        return len(self.status_sets) + len(self.removals)

    @property
    def records(self) -> int:
        return sum(map(len, self.status_sets.values())) + sum(map(len, self.removals.values()))


def _own(link: ProgramLink, activity_id: str, marketo_id: str | None) -> bool:
    if marketo_id is None:
        return False
    return any(activity_id == response_id(link.program_id, marketo_id, s) for s in link.statuses.to_dynamics)


def plan_to_marketo(
    responses: pd.DataFrame,
    links: Mapping[int, ProgramLink],
    persons: Mapping[str, tuple[str, str]],
    agreed: Mapping[tuple[int, str], Mapping[str, Any]],
) -> MarketoPlan:
    """Plan the Marketo status writes of changed campaign responses (latest per program and person).

    Args:
        responses: :data:`RESPONSE_COLUMNS` rows (pending ones first, then this run's).
        links: Program ↔ campaign pairs in force; responses to other campaigns are ignored.
        persons: Dataverse id → (person entity, Marketo id), from the id map.
        agreed: Agreed memberships by (program id, Marketo id).
    """
    plan = MarketoPlan()
    campaigns = links_by_campaign(links)
    # The sync's own responses and codes the YAML allows nothing for drop out first; of the
    # rest, the latest per program and person wins (the delta is in change order).
    latest: dict[tuple[int, str], tuple[ProgramLink, str, dict[str, Any]]] = {}
    for rec in responses.to_dict("records"):
        link = campaigns.get(str(rec["campaign_id"]))
        if link is None:
            continue
        did = str(rec["party_id"])
        person = persons.get(did)
        if _own(link, str(rec["activity_id"]), person[1] if person else None):
            plan.own += 1
            continue
        code = rec["responsecode"]
        status = link.statuses.allowed_status(None if pd.isna(code) else int(code))
        if status is None:
            plan.not_allowed += 1
            continue
        latest[(link.program_id, did)] = (link, status, rec)
    for (_, did), (link, status, rec) in latest.items():
        person = persons.get(did)
        if person is None:
            plan.pending.append(
                {
                    "direction": "d2m",
                    "program_id": link.program_id,
                    "person_id": did,
                    "campaign_id": link.campaign_id,
                    "status": status,
                    "occurred_at": rec.get("received_on") or None,
                }
            )
            continue
        entity, mid = person
        plan.done_pending.append((link.program_id, did))
        old = agreed.get((link.program_id, mid))
        if old is not None and str(old["status"] or "").lower() == status.lower():
            plan.unchanged += 1
            continue
        member = old is not None and old["status"] is not None
        plan.status_sets.setdefault((link.program_id, status, member), []).append(mid)
        base = dict(old) if old is not None else {"list_id": None, "listmember_id": None, "in_list": False}
        plan.memberships[(link.program_id, mid)] = {
            **base,
            "program_id": link.program_id,
            "marketo_id": mid,
            "campaign_id": link.campaign_id,
            "person_entity": entity,
            "dynamics_id": did,
            "status": status,
        }
    return plan


def plan_list_changes(
    plan: MarketoPlan,
    added: pd.DataFrame,
    deleted_ids: Iterable[str],
    lists: Mapping[str, tuple[int, str, str]],
    persons: Mapping[str, tuple[str, str]],
    agreed_by_listmember: Mapping[str, Mapping[str, Any]],
) -> None:
    """Add list-member changes to ``plan``: learn the ids of the sync's list rows, remove in Marketo
    the members removed from a sync-made list in Dynamics.

    Args:
        plan: The plan to extend.
        added: New ``listmembers`` rows (:data:`LISTMEMBER_COLUMNS`).
        deleted_ids: ``listmemberid`` of rows deleted in Dynamics.
        lists: The sync's lists: list id → (program id, campaign id, person entity).
        persons: Dataverse id → (person entity, Marketo id).
        agreed_by_listmember: Agreed memberships by ``listmemberid``.
    """
    for rec in added.to_dict("records"):
        owner = lists.get(str(rec["list_id"]).lower())
        person = persons.get(str(rec["entity_id"]).lower())
        if owner is not None and person is not None:
            plan.learned.append(
                {
                    "program_id": owner[0],
                    "marketo_id": person[1],
                    "list_id": str(rec["list_id"]).lower(),
                    "listmember_id": str(rec["listmember_id"]).lower(),
                }
            )
    for lmid in deleted_ids:
        old = agreed_by_listmember.get(str(lmid).lower())
        if old is None:
            continue
        key = (int(old["program_id"]), str(old["marketo_id"]))
        if old["status"] is None:
            plan.unchanged += 1  # the sync's own removal, coming back
            continue
        plan.removals.setdefault(key[0], []).append(key[1])
        plan.memberships[key] = {**old, "status": None, "in_list": False, "listmember_id": None}


def learned_rows(
    learned: Iterable[Mapping[str, Any]], agreed: Mapping[tuple[int, str], Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Agreed memberships updated with the list-member ids learnt (only members of that list)."""
    out = []
    for rec in learned:
        old = agreed.get((int(rec["program_id"]), str(rec["marketo_id"])))
        if old is not None and old["status"] is not None and old.get("listmember_id") != rec["listmember_id"]:
            out.append(
                {**old, "list_id": rec["list_id"], "listmember_id": rec["listmember_id"], "in_list": True}
            )
    return out


def pending_as_responses(rows: Iterable[Mapping[str, Any]], links: Mapping[int, ProgramLink]) -> pd.DataFrame:
    """Pending Dynamics → Marketo changes as response rows to plan again (their code re-derived)."""
    out = []
    for r in rows:
        link = links.get(int(r["program_id"]))
        if link is None:
            continue
        code = next((c for c, s in link.statuses.to_marketo.items() if s == r["status"]), None)
        out.append(
            {
                "activity_id": "",
                "campaign_id": link.campaign_id,
                "responsecode": code,
                "party_id": str(r["person_id"]),
                "received_on": str(r.get("occurred_at") or ""),
            }
        )
    frame = pd.DataFrame(out, columns=list(RESPONSE_COLUMNS))
    frame["responsecode"] = pd.to_numeric(frame["responsecode"]).astype("Int64")
    return frame


__all__ = ["ENTITY", "MarketoPlan", "plan_list_changes", "plan_to_marketo", "responses_frame"]
