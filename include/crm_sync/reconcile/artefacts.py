"""The report as files next to the staged batches: a CSV of every finding and an HTML page.

The CSV is meant to be opened in a spreadsheet: text cells a spreadsheet would run as a formula
are written with a leading ``'`` (:func:`spreadsheet_safe`).
"""

from __future__ import annotations

import html
import io
from typing import TYPE_CHECKING

from crm_sync.engine.staging import replace_file, run_key

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from crm_sync.reconcile.core import Report


def report_dir(root: ObjectStoragePath, run_id: str) -> ObjectStoragePath:
    """Folder of one reconciliation's artefacts under the staging root."""
    return root / "reconcile" / run_key(run_id)


# A spreadsheet runs a cell that starts with one of these (formula injection, CWE-1236).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A text cell a spreadsheet would run as a formula, prefixed with ``'`` so it stays text."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


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
    # Values come from both CRMs, so anyone who can edit a record could plant a formula.
    # RFC 4180 line ends: the csv writer then quotes any cell holding a CR or LF of its own.
    report.differences.map(spreadsheet_safe).to_csv(buffer, index=False, lineterminator="\r\n")
    csv_url = replace_file(folder / "differences.csv", buffer.getvalue().encode())
    html_url = replace_file(folder / "report.html", report_html(report, run_id).encode())
    return csv_url, html_url
