"""The report as files next to the staged batches: a CSV of every finding and an HTML page."""

from __future__ import annotations

import html
import io
from typing import TYPE_CHECKING

from crm_sync.engine.staging import run_key

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from crm_sync.reconcile.core import Report


def report_dir(root: ObjectStoragePath, run_id: str) -> ObjectStoragePath:
    """Folder of one reconciliation's artefacts under the staging root."""
    return root / "reconcile" / run_key(run_id)


def _write(target: ObjectStoragePath, data: bytes) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp"
    with tmp.open("wb") as fh:
        fh.write(data)
    if target.exists():
        target.unlink()
    tmp.rename(target)
    return str(target)


def report_html(report: Report, run_id: str) -> str:
    """A self-contained HTML page: counts per entity and kind, then every finding (escaped)."""
    counts = report.counts()
    kinds = sorted({k for c in counts.values() for k in c})
    head = "".join(f"<th>{html.escape(k)}</th>" for k in kinds)
    body = "".join(
        f"<tr><td>{html.escape(e)}</td><td>{report.records[e]['dynamics']}</td>"
        f"<td>{report.records[e]['marketo']}</td>" + "".join(f"<td>{c[k]}</td>" for k in kinds) + "</tr>"
        for e, c in counts.items()
    )
    findings = report.differences.to_html(index=False, na_rep="", escape=True, border=0)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Reconciliation {html.escape(run_id)}</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left}</style></head><body>"
        f"<h1>Reconciliation {html.escape(run_id)}</h1>"
        f"<p>Started {report.started_at.isoformat()}, {report.seconds:.1f} s, {report.total} findings.</p>"
        f"<table><tr><th>entity</th><th>Dynamics rows</th><th>Marketo records</th>{head}</tr>{body}</table>"
        f"<h2>Findings</h2>{findings if report.total else '<p>no differences</p>'}</body></html>"
    )


def write_artefacts(root: ObjectStoragePath, report: Report, run_id: str) -> tuple[str, str]:
    """Write ``differences.csv`` and ``report.html``; returns their URLs (a re-run replaces them)."""
    folder = report_dir(root, run_id)
    buffer = io.StringIO()
    report.differences.to_csv(buffer, index=False)
    csv_url = _write(folder / "differences.csv", buffer.getvalue().encode())
    html_url = _write(folder / "report.html", report_html(report, run_id).encode())
    return csv_url, html_url
