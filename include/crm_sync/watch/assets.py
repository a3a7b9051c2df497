"""The asset each ``sync_<entity>`` DAG is scheduled on, with the watchers that feed it events.

An entity reading Dataverse (D→M) has a watcher on its delta link; a person entity reading
Marketo (M→D) shares the Marketo person-feed watcher. Imported by the DAG file at parse time:
building an asset and a trigger object touches no network and no database.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetWatcher

from crm_sync.config import Direction, EntityConfig, watches_marketo
from crm_sync.watch.triggers import ChangeWatchTrigger

ASSET_URI_PREFIX = "crm-sync://changes/"


def changes_asset(entity: EntityConfig) -> Asset:
    """The asset "changes of ``entity`` are waiting", watched on each source the entity reads."""
    watchers = []
    if entity.direction.includes(Direction.D2M):
        trigger = ChangeWatchTrigger("dataverse", entity.name)
        watchers.append(AssetWatcher(name=f"{entity.name}_dataverse_changes", trigger=trigger))
    if watches_marketo(entity):
        # The same trigger arguments in every person entity's watcher: one poll serves them all.
        trigger = ChangeWatchTrigger("marketo")
        watchers.append(AssetWatcher(name=f"{entity.name}_marketo_person_feed", trigger=trigger))
    return Asset(
        name=f"crm_sync_changes_{entity.name}", uri=f"{ASSET_URI_PREFIX}{entity.name}", watchers=watchers
    )
