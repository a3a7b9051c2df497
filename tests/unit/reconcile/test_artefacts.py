"""The reconciliation's CSV is safe to open in a spreadsheet (issue 17, point 8)."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
from airflow.sdk import ObjectStoragePath

from crm_sync.reconcile.artefacts import write_artefacts
from crm_sync.reconcile.compare import DIFF_COLUMNS
from crm_sync.reconcile.core import Report

PLANTED = ['=HYPERLINK("http://x","y")', "+1-2", "-3+4", "@SUM(A1)", "\tindent", "\rback"]


def test_cells_a_spreadsheet_would_run_are_written_as_text(tmp_path: Path) -> None:
    rows = [
        {
            "entity": "lead",
            "kind": "divergent",
            "dynamics_id": f"g{i}",
            "marketo_id": str(i),
            "field": "title",
            "dynamics_value": value,
            "marketo_value": "Plain title",
        }
        for i, value in enumerate(PLANTED)
    ]
    differences = pd.DataFrame(rows, columns=DIFF_COLUMNS)
    report = Report(differences=differences, records={"lead": {"dynamics": 6, "marketo": 6}})

    csv_url, html_url = write_artefacts(ObjectStoragePath(f"file://{tmp_path}"), report, "manual__1")

    with open(csv_url.removeprefix("file://"), newline="") as fh:
        written = list(csv.DictReader(fh))
    assert [r["dynamics_value"] for r in written] == ["'" + v for v in PLANTED]
    assert {r["marketo_value"] for r in written} == {"Plain title"}, "ordinary text is left alone"
    assert [r["marketo_id"] for r in written] == [str(i) for i in range(len(PLANTED))]
    assert sorted(p.name for p in Path(csv_url.removeprefix("file://")).parent.iterdir()) == [
        "differences.csv",
        "report.html",
    ], "no temporary file is left behind"
    assert html_url.endswith("report.html")
