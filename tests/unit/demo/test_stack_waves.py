"""``make demo-check`` settles the sync DAGs in dependency waves (scripts/stack.py)."""

from __future__ import annotations

from crm_sync.config import ENTITIES_DIR, load_entities
from scripts.stack import dependency_waves


def test_every_entity_runs_after_the_entities_it_depends_on_and_each_runs_once() -> None:
    entities = list(load_entities(ENTITIES_DIR).values())
    waves = dependency_waves(entities)
    wave_of = {entity.name: i for i, wave in enumerate(waves) for entity in wave}
    assert sorted(wave_of) == sorted(e.name for e in entities)
    assert sum(len(w) for w in waves) == len(entities)
    for entity in entities:
        for dep in entity.depends_on:
            assert wave_of[dep] < wave_of[entity.name], (entity.name, dep)
    # Independent entities share a wave: lead and contact both only need users, teams, accounts.
    assert wave_of["lead"] == wave_of["contact"]
    assert len(waves) < len(entities)
