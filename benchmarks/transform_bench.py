"""Throughput of the Dynamics → Marketo lead transform on synthetic rows.

Usage: ``python -m benchmarks.transform_bench [--rows 200000] [--repeat 3]``

Builds a synthetic batch shaped like a Dataverse ``lead`` extract (every mapped column, choice
codes, owner lookups, a sprinkling of invalid values), then times the hot path the engine runs
per batch: sync filter, mapping with casts, option sets, owner lookup through the id map and
validation, plus per-field hashing for echo suppression. Runs in one process on one core
(pandas is single-threaded here), so records/s is records/s per core.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid

import numpy as np
import pandas as pd

from crm_sync.config import Cast, Direction, EntityConfig, load_entities
from crm_sync.transforms import apply_sync_filter, dynamics_to_canonical, field_hashes, tracked_columns

log = logging.getLogger("transform_bench")

OWNER_TYPE = "_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"


def _guids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random upper-case GUID strings (Dataverse returns lower case; mixed tests the cast)."""
    raw = rng.integers(0, 2**63, size=(n, 2), dtype=np.int64).view(np.uint64)
    return np.array([str(uuid.UUID(int=(int(a) << 64) | int(b))).upper() for a, b in raw])


def synthetic_leads(entity: EntityConfig, n: int, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (rows, id_map) for ``n`` synthetic leads with 200 owners."""
    rng = np.random.default_rng(seed)
    owners = _guids(rng, 200)
    data: dict[str, object] = {entity.dynamics.key: _guids(rng, n)}
    words = np.array(["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"])
    for f in entity.fields_for(Direction.D2M):
        if f.cast is Cast.CHOICE:
            codes = np.array(list((f.option_set or {}).keys()))
            data[f.dynamics] = rng.choice(codes, size=n)
        elif f.cast is Cast.BOOLEAN:
            data[f.dynamics] = rng.random(n) < 0.2
        elif f.cast is Cast.DECIMAL:
            data[f.dynamics] = np.round(rng.random(n) * 1e6, 2)
        elif f.cast is Cast.DATETIME:
            secs = rng.integers(1_600_000_000, 1_800_000_000, size=n).astype("datetime64[s]")
            data[f.dynamics] = np.char.add(np.datetime_as_string(secs, unit="s"), "Z")
        elif f.cast is Cast.EMAIL:
            data[f.dynamics] = np.char.add(rng.choice(words, size=n), "@example.com")
        else:
            data[f.dynamics] = rng.choice(words, size=n)
    data["_ownerid_value"] = rng.choice(owners, size=n)
    data[OWNER_TYPE] = "systemuser"
    flags = np.array([True, False, None], dtype=object)
    data["new_synctomkto"] = rng.choice(flags, size=n, p=[0.6, 0.1, 0.3])
    rows = pd.DataFrame(data)
    bad = rng.random(n) < 0.001  # invalid emails on ~0.1% of rows
    rows.loc[bad, "emailaddress1"] = "not-an-email"
    id_map = pd.DataFrame(
        {
            "entity": "user",
            "dynamics_id": np.char.lower(owners.astype(str)),
            "marketo_id": np.arange(200).astype(str),
        }
    )
    return rows, id_map


def run_once(rows: pd.DataFrame, id_map: pd.DataFrame, entity: EntityConfig) -> tuple[float, int, int]:
    """Time one transform of ``rows``; return (seconds, valid rows, error rows)."""
    names = [c[0] for c in tracked_columns(entity)]
    start = time.perf_counter()
    kept, _ = apply_sync_filter(rows, entity)
    result = dynamics_to_canonical(kept, entity, id_map)
    field_hashes(result.frame, names)
    elapsed = time.perf_counter() - start
    return elapsed, len(result.frame), len(result.errors)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print records/s per core."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if hasattr(os, "sched_setaffinity"):
        # Pin to one CPU so the figure is per core even if a library starts worker threads.
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    entity = load_entities()["lead"]
    rows, id_map = synthetic_leads(entity, args.rows)
    timings = [run_once(rows, id_map, entity) for _ in range(args.repeat)]
    best, valid, errors = min(timings)
    rate = args.rows / best
    # The figure is the point of the tool; stdout keeps it pipeable.
    sys.stdout.write(
        f"lead d2m transform: {args.rows} rows, {len(tracked_columns(entity))} columns, "
        f"best of {args.repeat}: {best:.3f} s, {rate:,.0f} records/s per core "
        f"({valid} valid, {errors} errors)\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
