"""The trigger Airflow's triggerer runs for each watcher (event-driven scheduling, Airflow 3).

A :class:`ChangeWatchTrigger` never ends: it peeks (:class:`~crm_sync.watch.peeker.Peeker`, in
a worker thread so the triggerer's event loop stays free), yields a ``TriggerEvent`` when new
changes arrived, and sleeps as the poll policy says. A failing peek is logged (secrets masked)
and retried after the idle ceiling with fresh hooks: a watcher outage delays runs, it never
fails one, and the DAGs' safety schedule still runs them.

Triggers with the same class path and arguments are one trigger in Airflow, so the Marketo
person-feed watcher named by both the lead and the contact asset polls once for both.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

log = logging.getLogger(__name__)

CLASSPATH = "crm_sync.watch.triggers.ChangeWatchTrigger"
ERROR_WAIT_SECONDS = 60.0


class ChangeWatchTrigger(BaseEventTrigger):
    """Watch one source: a Dataverse entity's delta link or the Marketo person feed.

    Args:
        source: ``dataverse`` or ``marketo``.
        entity: The entity of a Dataverse watcher (None for the Marketo person feed).
    """

    def __init__(self, source: str, entity: str | None = None) -> None:
        super().__init__()
        if source not in ("dataverse", "marketo"):
            raise ValueError(f"watcher source must be dataverse or marketo, not {source!r}")
        self.source = source
        self.entity = entity

    def serialize(self) -> tuple[str, dict[str, Any]]:
        kwargs: dict[str, Any] = {"source": self.source}
        if self.entity is not None:
            kwargs["entity"] = self.entity
        return CLASSPATH, kwargs

    def _name(self) -> str:
        return f"{self.source}:{self.entity}" if self.entity else self.source

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from crm_sync.alerting import redact
        from crm_sync.watch.peeker import Peeker

        peeker = Peeker(self.source, self.entity)
        try:
            while True:
                try:
                    outcome = await asyncio.to_thread(peeker.peek)
                except Exception as exc:
                    log.warning(
                        "watcher %s: peek failed (%s: %s); trying again in %.0f s",
                        self._name(), type(exc).__name__, redact(str(exc))[:500], ERROR_WAIT_SECONDS,
                    )  # fmt: skip
                    await asyncio.to_thread(peeker.close)
                    await asyncio.sleep(ERROR_WAIT_SECONDS)
                    continue
                if outcome.fire:
                    log.info("watcher %s: changes waiting %s", self._name(), outcome.payload)
                    yield TriggerEvent(outcome.payload)
                await asyncio.sleep(outcome.wait)
        finally:
            await asyncio.to_thread(peeker.close)
