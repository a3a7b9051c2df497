"""A new custom entity is one YAML file: the factory builds ``sync_custom_<name>`` and it syncs."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from tests.e2e.conftest import SyncEnv, write_calls

pytestmark = pytest.mark.e2e

# A second mapping of the Dataverse custom table new_project, to the emulator's custom object
# project_c, written by the test: nothing but this file is added.
WIDGET_YAML = textwrap.dedent(
    """
    name: widget
    custom: true
    description: Dataverse projects as Marketo project_c records (added by a test, no code change).
    dynamics: {table: new_project, entity_set: new_projects, key: new_projectid, filter_column: null}
    marketo: {object: custom_object, api_name: project_c, key: externalProjectId, id_field: marketoGUID}
    direction: d2m
    delete_policy: delete
    schedule: "*/10 * * * *"
    priority: 80
    fields:
      - {marketo: projectName, dynamics: new_name, required: true, max_length: 100}
      - {marketo: budget, dynamics: new_budget, cast: decimal}
      - marketo: projectStatus
        dynamics: new_status
        cast: choice
        option_set: {100000000: Planned, 100000001: Active, 100000002: Done}
    """
)


def test_new_custom_entity_yaml_gives_a_working_dag(sync_env: SyncEnv, new_guid: Callable[[], str]) -> None:
    (sync_env.entities_dir / "widget.yaml").write_text(WIDGET_YAML)
    dag = sync_env.dag("sync_custom_widget")
    assert "entity:custom" in dag.tags
    assert {t.task_id for t in dag.tasks} == {
        "small_run",
        "preflight",
        "extract_changes",
        "transform",
        "guard",
        "load",
        "commit",
    }

    alpha, beta = new_guid(), new_guid()
    hook = sync_env.dyn()
    try:
        rows: list[dict[str, Any]] = [
            {"new_projectid": alpha, "new_name": "Alpha", "new_budget": 99.5, "new_status": 100000001},
            {"new_projectid": beta, "new_name": None},  # required name missing: a record error
        ]
        results = hook.upsert_records("new_projects", rows, ["new_projectid"], id_column="new_projectid")
        assert all(r.ok for r in results), results
    finally:
        hook.close()

    sync_env.run("sync_custom_widget")

    mkto = sync_env.mkto()
    try:
        fields = ["externalProjectId", "projectName", "budget", "projectStatus"]
        pages = mkto.query_objects("customobjects/project_c", "externalProjectId", [alpha, beta], fields)
        widgets = {w["externalProjectId"]: w for page in pages for w in page}
    finally:
        mkto.close()
    assert set(widgets) == {alpha}
    assert widgets[alpha]["projectName"] == "Alpha"
    assert widgets[alpha]["projectStatus"] == "Active"
    assert widgets[alpha]["budget"] == pytest.approx(99.5)

    with sync_env.state().connect() as conn:
        errors = conn.execute(text("SELECT entity, source_id, field, code FROM record_error")).all()
    assert [tuple(e) for e in errors] == [("widget", beta, "new_name", "REQUIRED")]

    sync_env.reset_stats()
    sync_env.run("sync_custom_widget")
    assert write_calls(sync_env.marketo.stats()) == {}
    assert write_calls(sync_env.dynamics.stats()) == {}
