"""Entry point of the ``check_setup`` task of the ``check_connections`` DAG.

Imported inside the task (never at DAG parse time). It runs ``setup check`` over every entity
file and fails the task when something blocks a sync, with the whole table in the log and a
one-line summary per problem in the error (and so in the alert). A system whose connection
does not answer is left to the DAG's ``test_connection`` task, so one broken secret raises one
alert, not two.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from crm_sync.tasks.common import entities_in, task_session

if TYPE_CHECKING:
    from crm_sync.engine.context import RunSettings

log = logging.getLogger(__name__)


class SetupIncomplete(AirflowFailException):
    """Something a sync needs is missing in Marketo or Dataverse; the message lists each fix.

    Fails without retries: a retry reads the same metadata again.
    """


def _answering(hook: Any, conn_id: str) -> bool:
    ok, message = hook.test_connection()
    if not ok:
        log.warning("setup check skips %s: its connection test failed (%s)", conn_id, message)
    return bool(ok)


def check_setup(settings: RunSettings) -> dict[str, Any]:
    """Run ``setup check`` for every entity, with the hooks of :func:`task_session`; returns the
    counts for XCom.

    Raises:
        SetupIncomplete: At least one finding blocks a sync.
    """
    from crm_sync.alerting import redact
    from crm_sync.setup.core import run_check
    from crm_sync.setup.findings import report_text

    entities = list(entities_in(settings.entities_dir).values())
    with task_session(settings, marketo=True, dynamics=True) as session:
        report = run_check(
            entities,
            marketo=session.marketo if _answering(session.marketo, settings.marketo_conn_id) else None,
            dynamics=session.dynamics if _answering(session.dynamics, settings.dynamics_conn_id) else None,
        )
    log.info("%s", report_text(report))
    if report.findings:
        lines = [f"{f.system} {f.object}.{f.item}: {f.problem} Fix: {f.fix}" for f in report.findings]
        raise SetupIncomplete(
            redact(
                f"setup check: {len(report.findings)} problem(s) block {', '.join(report.blocked)}; "
                "run `python -m crm_sync.setup apply` for what the APIs allow:\n" + "\n".join(lines)
            )
        )
    return {"checked": len(report.checked), "ready": report.ready, "problems": 0}
