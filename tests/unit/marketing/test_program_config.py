"""The program mapping file: validation errors name file and key; pairs by id and by naming rule."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from crm_sync.config import ENTITIES_DIR, ConfigError, load_entity, parse_entity
from crm_sync.marketing.activity_config import load_activities, parse_activities
from crm_sync.marketing.program_config import PROGRAMS_FILE, load_programs, parse_programs

CAMPAIGN = "3f2b7c4e-0000-4000-8000-000000000001"
OTHER = "3f2b7c4e-0000-4000-8000-000000000002"


def _doc(**extra: Any) -> dict[str, Any]:
    return {
        "status_maps": {
            "event": {
                "to_dynamics": {"Registered": "Interested", "No Show": 2},
                "to_marketo": {"Interested": "Registered"},
            }
        },
        "default_status_map": "event",
        **extra,
    }


def test_the_shipped_file_is_valid() -> None:
    mapping = load_programs(PROGRAMS_FILE)
    assert mapping.needs_names
    assert mapping.spec.naming_rules[0].campaign_name == "{name}"


def test_an_explicit_pair_resolves_with_codes_as_numbers() -> None:
    mapping = parse_programs(_doc(programs=[{"program_id": 1001, "campaign_id": CAMPAIGN.upper()}]))
    (link,) = mapping.resolve().values()
    assert (link.program_id, link.campaign_id, link.source) == (1001, CAMPAIGN, "id")
    assert link.statuses.response_code("registered") == 1
    assert link.statuses.response_code("No Show") == 2
    assert link.statuses.response_code("Attended") is None
    assert link.statuses.allowed_status(1) == "Registered"
    assert link.statuses.allowed_status(2) is None


def test_naming_rules_pair_by_name_and_an_explicit_pair_wins() -> None:
    mapping = parse_programs(
        _doc(
            programs=[{"program_id": 7, "campaign_id": OTHER}],
            naming_rules=[{"program_name": "Webinar - (?P<name>.+)", "campaign_name": "{name}"}],
        )
    )
    programs = {5: "Webinar - Spring", 6: "Newsletter", 7: "Webinar - Spring", 8: "Webinar - Nowhere"}
    links = mapping.resolve(programs, {CAMPAIGN: "Spring"})
    assert {pid: (link.campaign_id, link.source) for pid, link in links.items()} == {
        5: (CAMPAIGN, "rule[0]"),
        7: (OTHER, "id"),
    }


def test_a_campaign_name_held_twice_pairs_nothing() -> None:
    mapping = parse_programs(_doc(naming_rules=[{"program_name": "(?P<n>.+)", "campaign_name": "{n}"}]))
    assert mapping.resolve({5: "Spring"}, {CAMPAIGN: "Spring", OTHER: "Spring"}) == {}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"programs": [{"program_id": 1, "campaign_id": "nope"}]},
            "programs[0].campaign_id: Value error, must be a GUID",
        ),
        (
            {"programs": [{"program_id": 1, "campaign_id": CAMPAIGN, "status_map": "x"}]},
            "programs[0].status_map: no status map 'x'",
        ),
        (
            {"programs": [{"program_id": 1, "campaign_id": CAMPAIGN}] * 2},
            "programs[1].program_id: program 1 is paired twice",
        ),
        (
            {"naming_rules": [{"program_name": "(", "campaign_name": "x"}]},
            "naming_rules[0].program_name: Value error, not a regular expression",
        ),
        ({"naming_rules": [{"program_name": "a", "campaign_name": "{b}"}]}, "campaign_name uses ['b']"),
        (
            {"programs": [{"program_id": 1, "campaign_id": CAMPAIGN, "colour": 1}]},
            "programs[0].colour: Extra inputs",
        ),
    ],
)
def test_errors_name_the_file_and_the_key(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_programs(_doc(**extra), "programs.yaml")
    assert str(err.value).startswith("programs.yaml: ")
    assert message in str(err.value)


def test_program_activity_and_entity_files_name_a_listed_key_the_same_way() -> None:
    """``programs[0].program_id``, ``types[0].subject`` and ``fields[0].marketo``: one notation
    (``crm_sync.config``'s), whichever mapping file is wrong."""
    entity = load_entity(ENTITIES_DIR / "lead.yaml").model_dump(mode="json", exclude={"source_path"})
    entity["fields"][0]["marketo"] = 7
    activities = load_activities().model_dump(mode="json", exclude={"source_path"})
    activities["types"][0]["subject"] = "{nope}"
    programs = _doc(programs=[{"program_id": 0, "campaign_id": CAMPAIGN}])
    messages = []
    for parse, data, name in (
        (parse_entity, entity, "lead.yaml"),
        (parse_activities, activities, "activities.yaml"),
        (parse_programs, programs, "programs.yaml"),
    ):
        with pytest.raises(ConfigError) as err:
            parse(data, name)
        messages.append(str(err.value))
    keys = [re.match(r"^[\w.]+: ([\w\[\].]+): ", m) for m in messages]
    assert [k.group(1) if k else m for k, m in zip(keys, messages, strict=True)] == [
        "fields[0].marketo",
        "types[0].subject",
        "programs[0].program_id",
    ]


def test_an_unknown_response_code_and_a_removal_status_are_refused() -> None:
    bad_code = {"status_maps": {"m": {"to_dynamics": {"Registered": "Maybe"}}}}
    with pytest.raises(ConfigError, match=r"status_maps\.m: unknown response code 'Maybe'"):
        parse_programs(bad_code, "f.yaml")
    removal = {"status_maps": {"m": {"to_dynamics": {"Not in Program": 2}}}}
    with pytest.raises(
        ConfigError, match=r"status_maps\.m\.to_dynamics: Value error, 'Not in Program' is a removal"
    ):
        parse_programs(removal, "f.yaml")


def test_a_file_that_is_not_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "programs.yaml"
    path.write_text("programs: [\n")
    with pytest.raises(ConfigError, match=f"{path}: cannot load"):
        load_programs(path)


def test_a_schedule_is_five_cron_fields_or_a_preset_and_a_bad_one_names_the_key() -> None:
    """The three mapping files that carry a DAG's ``schedule`` check it as they are read."""
    entity = load_entity(ENTITIES_DIR / "lead.yaml").model_dump(mode="json", exclude={"source_path"})
    activities = load_activities().model_dump(mode="json", exclude={"source_path"})
    programs = _doc()
    parsers = (
        (parse_entity, entity, "lead.yaml"),
        (parse_activities, activities, "activities.yaml"),
        (parse_programs, programs, "programs.yaml"),
    )
    for parse, data, name in parsers:
        assert _schedule(parse({**data, "schedule": " @hourly "}, name)) == "@hourly"
        assert _schedule(parse({**data, "schedule": "5 */2 * * 1-5"}, name)) == "5 */2 * * 1-5"
        for bad in ("61 * * * *", "every hour", "0 0 * * * *", ""):
            with pytest.raises(ConfigError, match=rf"^{re.escape(name)}: schedule: .*is not a cron schedule"):
                parse({**data, "schedule": bad}, name)


def _schedule(parsed: Any) -> str:
    spec = getattr(parsed, "spec", parsed)  # the program mapping wraps its file
    return str(spec.schedule)


def test_the_shipped_files_keep_the_marketing_dags_hourly_at_minutes_of_their_own() -> None:
    assert load_activities().schedule == "17 * * * *"
    assert load_programs(PROGRAMS_FILE).spec.schedule == "47 * * * *"
