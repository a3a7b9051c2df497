"""Entity YAML loading and validation: the shipped files, a new custom entity, clear errors."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from crm_sync.config import (
    ENTITIES_DIR,
    ConfigError,
    Direction,
    MarketoObject,
    Side,
    load_entities,
    load_entity,
)

MINIMAL = """\
name: {name}
custom: true
dynamics: {{table: new_widget, entity_set: new_widgets, key: new_widgetid}}
marketo: {{object: custom_object, api_name: widget_c, key: widgetId, id_field: marketoGUID}}
direction: d2m
fields:
  - {{marketo: widgetName, dynamics: new_name, required: true}}
"""


@pytest.fixture(scope="module")
def entities():
    return load_entities()


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_entities_load_in_dependency_order(entities):
    assert list(entities) == ["user", "team", "account", "lead", "contact", "opportunity", "new_project"]


@pytest.mark.parametrize(
    ("name", "direction", "winner"),
    [
        ("lead", Direction.BOTH, Side.MARKETO),
        ("contact", Direction.BOTH, Side.DYNAMICS),
        ("account", Direction.D2M, Side.DYNAMICS),
        ("opportunity", Direction.D2M, Side.DYNAMICS),
        ("user", Direction.D2M, Side.DYNAMICS),
        ("team", Direction.D2M, Side.DYNAMICS),
        ("new_project", Direction.D2M, Side.DYNAMICS),
    ],
)
def test_directions_and_conflict_rules_follow_the_reference(entities, name, direction, winner):
    assert entities[name].direction is direction
    assert entities[name].conflict_winner is winner


def test_every_entity_depends_only_on_earlier_ones(entities):
    order = list(entities)
    for entity in entities.values():
        assert all(order.index(dep) < order.index(entity.name) for dep in entity.depends_on), entity.name


def test_field_override_decides_the_winner(entities):
    lead = entities["lead"]
    fields = {f.marketo: f for f in lead.fields}
    assert lead.winner(fields["title"]) is Side.MARKETO
    assert lead.winner(fields["msdCreatedDate"]) is Side.DYNAMICS  # d2m only
    assert fields["msdCreatedDate"] not in lead.fields_for(Direction.M2D)
    assert fields["title"] in lead.fields_for(Direction.M2D)


def test_disabled_fields_are_dropped(entities):
    assert "leadScore" not in {f.marketo for f in entities["contact"].fields}


def test_custom_entity_gets_its_own_dag_id(entities):
    assert entities["new_project"].dag_id == "sync_custom_new_project"
    assert entities["new_project"].marketo.object is MarketoObject.CUSTOM_OBJECT
    assert entities["lead"].dag_id == "sync_lead"


def test_a_new_yaml_file_adds_an_entity(tmp_path):
    for path in ENTITIES_DIR.glob("*.yaml"):
        shutil.copy(path, tmp_path)
    _write(tmp_path, "widget", MINIMAL.format(name="widget"))
    loaded = load_entities(tmp_path)
    assert loaded["widget"].dag_id == "sync_custom_widget"
    assert loaded["widget"].batch_size == 300
    assert loaded["widget"].dynamics.filter_column == "new_synctomkto"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("direction: d2m", "direction: sideways"), r"widget\.yaml: direction: Input should be"),
        (
            ("required: true}", "required: true, colour: red}"),
            r"widget\.yaml: fields\[0\]\.colour: Extra inputs",
        ),
        (
            ("new_name, required: true", "new_name, cast: choice"),
            r"fields\[0\]: Value error, cast 'choice' needs",
        ),
        (
            ("new_name, required: true", "new_name, direction: m2d"),
            r"fields\[0\] \(widgetName\): direction m2d",
        ),
        (("api_name: widget_c, ", ""), r"marketo: Value error, object custom_object needs api_name"),
        (
            ("new_name, required: true", "new_name, opt_out: true"),
            r"fields\[0\]: Value error, opt_out needs cast boolean",
        ),
        (("name: widget", "name: gadget"), r"name: 'gadget' must equal the file name 'widget'"),
    ],
)
def test_errors_name_file_and_key(tmp_path, change, expected):
    text = MINIMAL.format(name="widget").replace(*change)
    with pytest.raises(ConfigError, match=expected):
        load_entity(_write(tmp_path, "widget", text))


def test_unknown_lookup_target_is_reported(tmp_path):
    text = (
        MINIMAL.format(name="widget")
        + "lookups:\n  - {dynamics: _x_value, marketo: leadID, targets: {contact: contact}}\n"
    )
    _write(tmp_path, "widget", text)
    with pytest.raises(
        ConfigError, match=r"widget\.yaml: lookups\[0\]\.targets\.contact: unknown entity 'contact'"
    ):
        load_entities(tmp_path)


def test_duplicate_marketo_field_is_reported(tmp_path):
    text = MINIMAL.format(name="widget") + "  - {marketo: widgetName, dynamics: new_other}\n"
    with pytest.raises(ConfigError, match=r"fields\[1\]: Marketo field 'widgetName' mapped twice"):
        load_entity(_write(tmp_path, "widget", text))


def test_broken_yaml_is_reported(tmp_path):
    with pytest.raises(ConfigError, match=r"widget\.yaml: cannot load"):
        load_entity(_write(tmp_path, "widget", "name: [unclosed\n"))


def test_empty_directory_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="no entity"):
        load_entities(tmp_path)


def test_persons_mark_their_do_not_contact_flags_and_marketo_owns_consent(entities):
    for name in ("lead", "contact"):
        entity = entities[name]
        assert {f.marketo for f in entity.fields if f.opt_out} == {
            "unsubscribed",
            "msdDoNotEmail",
            "doNotCall",
            "msdDoNotFax",
            "msdDoNotSendMarketingMaterial",
        }
        assert entity.consent_owner.value == "marketo"
