"""Peeks: how many changes wait beyond a committed watermark, without moving it.

A peek reads only the first page of a source's change feed from the stored token (a Dataverse
delta link, the Marketo person feed's paging token) and counts what it finds. It stages nothing
and stores no token: the next run reads the same changes again from the same watermark. The
watchers (:mod:`crm_sync.watch`) call these functions every few seconds; one peek is one API call.

    seen = peek_dynamics(entity, dataverse, delta_link)      # DynamicsPeek(pending=3, more=False, ...)
    feed = peek_person_feed(marketo, token, fields)          # PersonFeedPeek(lead_ids=[...], ...)
    per_entity = split_person_changes(session, feed, ["lead", "contact"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from crm_sync.state.idmap import lookup_links

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from sqlalchemy.orm import Session

    from crm_sync.config import EntityConfig
    from crm_sync.engine.clients import DynamicsClient, MarketoClient

PEEK_PAGE = 500  # rows per peek: enough to tell a small delta from a big one in one call


@dataclass(frozen=True)
class Seen:
    """What a peek saw for one entity and direction.

    Attributes:
        pending: Changes beyond the watermark (a lower bound when ``more``).
        more: The feed had more than one page: the delta is at least ``pending`` changes.
        oldest: Source time of the oldest change seen (None when the source gives none).
        newest: Source time of the newest change seen.
    """

    pending: int
    more: bool = False
    oldest: datetime | None = None
    newest: datetime | None = None

    @property
    def signature(self) -> tuple[int, bool, str | None]:
        """What changes between two peeks when something new arrived (an event fires on it)."""
        return (self.pending, self.more, self.newest.isoformat() if self.newest else None)


@dataclass(frozen=True)
class PersonFeedPeek:
    """The first page of the Marketo person feed from a token.

    Attributes:
        changes: Marketo person id → time of its newest change on the page.
        more: The feed has more pages.
    """

    changes: dict[int, datetime | None] = field(default_factory=dict)
    more: bool = False


def parse_time(value: Any) -> datetime | None:
    """An aware UTC datetime from a Dataverse or Marketo timestamp (ISO text), or None."""
    if value in (None, ""):
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _span(times: Iterable[datetime | None]) -> tuple[datetime | None, datetime | None]:
    known = [t for t in times if t is not None]
    return (min(known), max(known)) if known else (None, None)


def peek_dynamics(
    entity: EntityConfig, client: DynamicsClient, delta_link: str, *, page_size: int = PEEK_PAGE
) -> Seen:
    """Count the Dataverse changes of ``entity`` since ``delta_link`` (one page, one call).

    Rows carry their modified time when the delta link selected it (extracts select the
    entity's ``modified_column``); deletes carry none.

    Raises:
        DeltaTokenExpired: The delta link is past Dataverse's retention (the next run re-reads).
    """
    for page in client.track_changes(entity.dynamics.entity_set, [], delta_link, page_size):
        column = entity.dynamics.modified_column
        oldest, newest = _span(parse_time(r.get(column)) for r in page.records)
        pending = len(page.records) + len(page.deleted_ids)
        # The last page of a delta read carries the next delta link; any other page means more.
        return Seen(pending=pending, more=page.delta_link is None, oldest=oldest, newest=newest)
    return Seen(pending=0)


def peek_person_feed(
    client: MarketoClient, token: str, fields: Sequence[str], *, batch_size: int = 300, max_pages: int = 3
) -> PersonFeedPeek:
    """The persons changed in the Marketo person feed since ``token`` (usually one call).

    Marketo may answer a page with no changes and more to come (activities of fields not asked
    for); the peek reads on through at most ``max_pages`` pages for the first change.

    Raises:
        ValueError: No fields to watch.
    """
    changes: dict[int, datetime | None] = {}
    more = False
    for pages, page in enumerate(client.get_lead_changes(token, fields, batch_size), start=1):
        for activity in page.records:
            lead = activity.get("leadId")
            if lead is None:
                continue
            at = parse_time(activity.get("activityDate"))
            before = changes.get(int(lead))
            changes[int(lead)] = at if before is None or (at is not None and at > before) else before
        more = page.more
        if changes or pages >= max_pages:
            break
    return PersonFeedPeek(changes=changes, more=more)


def split_person_changes(
    session: Session, feed: PersonFeedPeek, person_entities: Sequence[str]
) -> dict[str, Seen]:
    """Attribute the feed's persons to the person entities whose M→D runs will handle them.

    A person linked to a record of an entity other than the first (``contact``) belongs to that
    entity; every other person, linked to the first or not linked at all (a new Marketo person
    becomes a record of the first, ``lead``), belongs to the first.
    """
    if not person_entities:
        return {}
    first, others = person_entities[0], list(person_entities[1:])
    owner: dict[int, str] = {}
    if others and feed.changes:
        links = lookup_links(session, others, marketo_ids=[str(i) for i in feed.changes])
        for entity, marketo_id in zip(links["entity"], links["marketo_id"], strict=True):
            if marketo_id is not None:
                owner[int(marketo_id)] = str(entity)
    out: dict[str, Seen] = {}
    for name in person_entities:
        times = [at for person, at in feed.changes.items() if owner.get(person, first) == name]
        oldest, newest = _span(times)
        out[name] = Seen(pending=len(times), more=feed.more, oldest=oldest, newest=newest)
    return out
