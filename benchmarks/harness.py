"""Benchmark plumbing: emulator processes, an Airflow home, DAG runs in a sampled subprocess.

Nothing here asserts anything: it starts the real emulator processes (``tests/support``), points
Airflow connections and Variables at them through the environment, runs one DAG at a time with
``dag.test()`` in a child process (``benchmarks.dag_child``) while sampling that process's
resident memory with psutil, and diffs the emulators' ``/_emulator/stats`` around each run, and
the CPU seconds the machine and each emulator process spent (:func:`cpu_split`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from crm_sync.localenv import airflow_env
from tests.support.emulator_procs import PROJECT_DIR, RunningEmulator, start_emulator

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

log = logging.getLogger(__name__)

DAG_FILES = {
    "sync": PROJECT_DIR / "dags" / "sync_entities.py",
    "full_copy": PROJECT_DIR / "dags" / "full_copy.py",
}
AUTH_MARKERS = ("oauth", "/identity/", "openid-configuration")
MB = 1024 * 1024


@dataclass(frozen=True)
class LimitMode:
    """How both emulators enforce their limits, and what the hooks are told about them.

    Attributes:
        name: ``"limits-on"`` (production limits, windows time-scaled) or ``"limits-off"``.
        enforced: Whether the emulators enforce limits at all.
        marketo_calls: Marketo calls per window (100).
        marketo_window_s: Marketo window after time scaling (20 s x scale).
        dynamics_calls: Dataverse requests per window (6,000).
        dynamics_window_s: Dataverse window after time scaling (300 s / speed-up).
        marketo_scale: ``--time-scale`` of the Marketo emulator (a multiplier: 0.25 = 4x faster).
        dynamics_speedup: ``--time-scale`` of the Dataverse emulator (a divisor: 4 = 4x faster).
    """

    name: str
    enforced: bool
    marketo_calls: int = 100
    marketo_window_s: float = 20.0
    dynamics_calls: int = 6000
    dynamics_window_s: float = 300.0
    marketo_scale: float = 1.0
    dynamics_speedup: float = 1.0

    @classmethod
    def on(cls, marketo_scale: float, dynamics_speedup: float) -> LimitMode:
        """Production limits with the windows shortened by the given factors."""
        return cls(
            "limits-on",
            True,
            marketo_window_s=20.0 * marketo_scale,
            dynamics_window_s=300.0 / dynamics_speedup,
            marketo_scale=marketo_scale,
            dynamics_speedup=dynamics_speedup,
        )

    @classmethod
    def off(cls) -> LimitMode:
        """No limits on either emulator; the hooks' own limiter is opened wide as well."""
        return cls("limits-off", False, marketo_calls=1_000_000, dynamics_calls=1_000_000)

    def marketo_args(self) -> list[str]:
        """Command-line options of the Marketo emulator."""
        if not self.enforced:
            return ["--limits", "off"]
        return ["--limits", "on", "--time-scale", str(self.marketo_scale), "--daily-quota", "10000000"]

    def dynamics_args(self) -> list[str]:
        """Command-line options of the Dataverse emulator."""
        if not self.enforced:
            return ["--limits", "off"]
        return ["--limits", "on", "--time-scale", str(self.dynamics_speedup)]

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for the results."""
        return {
            "name": self.name,
            "enforced": self.enforced,
            "marketo": {"calls": self.marketo_calls, "window_s": self.marketo_window_s, "concurrent": 10},
            "dynamics": {
                "requests": self.dynamics_calls,
                "window_s": self.dynamics_window_s,
                "concurrent": 52,
            },
            "marketo_time_scale": self.marketo_scale,
            "dynamics_time_scale": self.dynamics_speedup,
        }

    def bound_seconds(self, marketo_calls: int, dynamics_calls: int) -> float:
        """Seconds the rate limits alone impose on this many calls (sliding window, first window free).

        ``n`` calls under ``k`` per window ``w`` cannot finish before ``floor((n - 1) / k) * w``.
        """
        if not self.enforced:
            return 0.0
        m = max(marketo_calls - 1, 0) // self.marketo_calls * self.marketo_window_s
        d = max(dynamics_calls - 1, 0) // self.dynamics_calls * self.dynamics_window_s
        return float(max(m, d))


def split_calls(stats: dict[str, Any]) -> dict[str, Any]:
    """Calls from an emulator's stats: auth calls, API calls (reads + writes) and the per-route detail."""
    calls: dict[str, int] = {str(k): int(v) for k, v in dict(stats.get("calls", {})).items()}
    auth = sum(n for route, n in calls.items() if any(m in route for m in AUTH_MARKERS))
    api = sum(calls.values()) - auth
    reads = sum(
        n
        for route, n in calls.items()
        if route.startswith("GET ") and not any(m in route for m in AUTH_MARKERS)
    )
    return {
        "api_calls": api,
        "auth_calls": auth,
        "get_calls": reads,
        "routes": calls,
        "records": dict(stats.get("records", {})),
        "limit_hits": dict(stats.get("limit_hits", {})),
        "max_in_flight": stats.get("max_in_flight"),
    }


class RssSampler:
    """Sample the resident memory of a process and its children every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            proc = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            try:
                rss = proc.memory_info().rss
                for child in proc.children(recursive=True):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        rss += child.memory_info().rss
            except psutil.NoSuchProcess:
                return
            self.samples.append((time.time(), rss))
            self._stop.wait(self.interval)

    def peak_between(self, start: float, end: float) -> int | None:
        """Highest sample taken in ``[start, end]`` (None when no sample fell inside)."""
        inside = [rss for t, rss in self.samples if start <= t <= end]
        return max(inside) if inside else None

    def last_before(self, moment: float) -> int | None:
        """The last sample taken before ``moment``."""
        before = [rss for t, rss in self.samples if t < moment]
        return before[-1] if before else None


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds spent so far: the machine's own work and the hypervisor's steal (all CPUs,
    from ``/proc/stat``), and each emulator's process with its children."""

    at: float
    machine_busy_s: float
    machine_steal_s: float
    emulators: dict[str, float]


def _process_tree_cpu_s(pid: int) -> float:
    """User and system seconds of ``pid``, its finished children and its live ones."""
    with contextlib.suppress(psutil.NoSuchProcess):
        proc = psutil.Process(pid)
        t = proc.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                c = child.cpu_times()
                total += c.user + c.system
        return total
    return 0.0


def cpu_snapshot(emulators: Iterable[RunningEmulator]) -> CpuSnapshot:
    """The machine's and each emulator's CPU seconds now."""
    m = psutil.cpu_times()
    busy = m.user + m.nice + m.system + getattr(m, "irq", 0.0) + getattr(m, "softirq", 0.0)
    return CpuSnapshot(
        at=time.monotonic(),
        machine_busy_s=busy,
        machine_steal_s=getattr(m, "steal", 0.0),
        emulators={emu.side: _process_tree_cpu_s(emu.process.pid) for emu in emulators},
    )


def cpu_split(before: CpuSnapshot, after: CpuSnapshot, cpus: int) -> dict[str, float]:
    """Where the CPU went between two snapshots, in seconds.

    ``capacity_s`` is what the machine's CPUs could give in that wall time; ``busy_s`` what they
    ran (any process); ``<side>_emulator_s`` each emulator's share of it; ``rest_s`` everything
    else busy (Airflow, the task processes, this harness); ``steal_s`` time the hypervisor gave
    to other guests while ours waited to run.
    """
    used = {f"{side}_emulator_s": after.emulators[side] - before.emulators.get(side, 0.0)
            for side in after.emulators}  # fmt: skip
    busy = after.machine_busy_s - before.machine_busy_s
    out = {
        "capacity_s": cpus * (after.at - before.at),
        "busy_s": busy,
        **used,
        "rest_s": busy - sum(used.values()),
        "steal_s": after.machine_steal_s - before.machine_steal_s,
    }
    return {k: round(v, 2) for k, v in out.items()}


@dataclass
class DagRunMeasure:
    """What one DAG run cost: wall time, calls per side, memory per task."""

    dag_id: str
    state: str
    wall_s: float
    marketo: dict[str, Any]
    dynamics: dict[str, Any]
    tasks: list[dict[str, Any]] = field(default_factory=list)
    baseline_rss_mb: float | None = None
    process_peak_rss_mb: float | None = None
    started: float = 0.0
    ended: float = 0.0
    cpu: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "dag_id": self.dag_id,
            "state": self.state,
            "wall_s": round(self.wall_s, 3),
            "marketo": self.marketo,
            "dynamics": self.dynamics,
            "tasks": self.tasks,
            "baseline_rss_mb": self.baseline_rss_mb,
            "process_peak_rss_mb": self.process_peak_rss_mb,
            "cpu": self.cpu,
        }


PROFILE_ENV = "MDS_BENCH_PROFILE"  # a folder: run each dag.test() child under py-spy, stacks there


class BenchEnv:
    """Both emulators, an Airflow home with a migrated metadata DB, a state store and staging.

    Args:
        workdir: Throwaway folder for everything.
        mode: Limits of both emulators.
        dynamics_seed: Seed the Dataverse emulator with this many leads (others in proportion).
        marketo_seed: Seed the Marketo emulator with this many leads.
    """

    def __init__(
        self,
        workdir: Path,
        mode: LimitMode,
        dynamics_seed: int | None = None,
        marketo_seed: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.mode = mode
        self.dynamics_seed = dynamics_seed
        self.marketo_seed = marketo_seed
        self.marketo: RunningEmulator | None = None
        self.dynamics: RunningEmulator | None = None
        self.env: dict[str, str] = {}
        self.state_url = f"sqlite:///{workdir / 'state.db'}"

    # --- life cycle --------------------------------------------------------------------------
    def __enter__(self) -> BenchEnv:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.marketo = start_emulator(
            "marketo", self.workdir / "marketo", self.mode.marketo_args(), seed_scale=self.marketo_seed,
            ready_timeout=300,
        )  # fmt: skip
        self.dynamics = start_emulator(
            "dynamics", self.workdir / "dynamics", self.mode.dynamics_args(), seed_scale=self.dynamics_seed,
            ready_timeout=300,
        )  # fmt: skip
        self.env = self._environment()
        self._apply_env_here()
        return self

    def __exit__(self, *exc: object) -> None:
        from crm_sync_hooks.caches import clear_process_caches

        clear_process_caches()
        for emu in (self.marketo, self.dynamics):
            if emu is not None:
                emu.stop()

    def _environment(self) -> dict[str, str]:
        assert self.marketo is not None
        assert self.dynamics is not None
        home = self.workdir / "airflow-home"
        env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
        env.update(airflow_env(home, parallelism=4))
        env["AIRFLOW__CORE__FERNET_KEY"] = os.environ.get("AIRFLOW__CORE__FERNET_KEY") or _fernet_key()
        env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
        limiter = f"sqlite:///{self.workdir / 'limiter.sqlite'}"
        # The hooks pace themselves on the same (time-scaled) windows the emulators enforce.
        env["AIRFLOW_CONN_MARKETO_DEFAULT"] = self.marketo.connection(
            timeout=120,
            limiter_url=limiter,
            rate_limit_calls=self.mode.marketo_calls,
            rate_limit_window_seconds=self.mode.marketo_window_s,
            bulk_poll_seconds=1,
        )
        env["AIRFLOW_CONN_DYNAMICS_DEFAULT"] = self.dynamics.connection(
            timeout=120,
            limiter_url=limiter,
            rate_limit_calls=self.mode.dynamics_calls,
            rate_limit_window_seconds=self.mode.dynamics_window_s,
        )
        env["AIRFLOW_VAR_MDS_STATE_DB_URL"] = self.state_url
        env["AIRFLOW_VAR_MDS_STAGING_PATH"] = f"file://{self.workdir / 'staging'}"
        return env

    def _apply_env_here(self) -> None:
        """Let this process's hooks (used to make changes and read results) see the same connections."""
        for key in ("AIRFLOW_CONN_MARKETO_DEFAULT", "AIRFLOW_CONN_DYNAMICS_DEFAULT"):
            os.environ[key] = self.env[key]

    def migrate_airflow(self) -> float:
        """Create the Airflow metadata DB of this environment; returns the seconds it took."""
        start = time.monotonic()
        subprocess.run(
            [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
            env=self.env, check=True, capture_output=True, cwd=PROJECT_DIR, timeout=600,
        )  # fmt: skip
        return time.monotonic() - start

    # --- measuring ---------------------------------------------------------------------------
    def reset_stats(self) -> None:
        """Zero both emulators' counters."""
        for emu in self.emulators():
            emu.admin("POST", "stats/reset")

    def emulators(self) -> Iterator[RunningEmulator]:
        """Both running emulators."""
        assert self.marketo is not None
        assert self.dynamics is not None
        yield self.marketo
        yield self.dynamics

    def run_dag(self, dag_id: str, dag_file: str = "sync", timeout: float = 7200) -> DagRunMeasure:
        """Run ``dag_id`` once with ``dag.test()`` in a child process; measure calls, time and RSS."""
        assert self.marketo is not None
        assert self.dynamics is not None
        self.reset_stats()
        out = self.workdir / "runs" / f"{dag_id}-{time.time_ns()}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        log_path = out.with_suffix(".log")
        argv = [sys.executable, "-m", "benchmarks.dag_child", str(DAG_FILES[dag_file]), dag_id, str(out)]
        profile_dir = os.environ.get(PROFILE_ENV)
        if profile_dir:
            # py-spy samples the dag.test() child (100 Hz, native frames off); the sampler then
            # watches py-spy, so a profiled run's memory figures are not comparable.
            flame = Path(profile_dir) / f"{dag_id}-{time.time_ns()}.txt"
            flame.parent.mkdir(parents=True, exist_ok=True)
            spy = str(Path(sys.executable).with_name("py-spy"))
            argv = [spy, "record", "--format", "raw", "--rate", "100", "--output", str(flame), "--", *argv]
        started = time.time()
        cpu_before = cpu_snapshot(self.emulators())
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                argv, env=self.env, stdout=log_file, stderr=subprocess.STDOUT, cwd=PROJECT_DIR
            )
            with RssSampler(proc.pid) as sampler:
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        ended = time.time()
        cpu = cpu_split(cpu_before, cpu_snapshot(self.emulators()), psutil.cpu_count() or 1)
        if proc.returncode != 0 or not out.exists():
            tail = log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{dag_id}: dag.test() child exited {proc.returncode}:\n{tail}")
        child = json.loads(out.read_text())
        tasks = []
        for ti in child["tasks"]:
            peak = sampler.peak_between(ti["start"], ti["end"]) if ti["start"] and ti["end"] else None
            before = sampler.last_before(ti["start"]) if ti["start"] else None
            tasks.append({
                **ti,
                "peak_rss_mb": round(peak / MB, 1) if peak else None,
                "rss_at_start_mb": round(before / MB, 1) if before else None,
            })  # fmt: skip
        first = min((t["start"] for t in child["tasks"] if t["start"]), default=None)
        baseline = sampler.last_before(first) if first else None
        measure = self._measure(
            child,
            tasks,
            baseline_rss_mb=round(baseline / MB, 1) if baseline else None,
            process_peak_rss_mb=round(child["max_rss_kb"] / 1024, 1),
            started=started,
            ended=ended,
            cpu=cpu,
        )
        if measure.state != "success":
            tail = log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{dag_id}: run ended {measure.state}:\n{tail}")
        return measure

    def run_dag_in_workers(self, dag_id: str, timeout: float = 7200) -> DagRunMeasure:
        """Run ``dag_id`` once under ``airflow standalone`` (LocalExecutor: a process per task).

        Calls and wall time are measured as in :meth:`run_dag`; each task's ``peak_rss_mb`` is
        its own process's peak (see :mod:`benchmarks.standalone`), which is what a worker needs.
        """
        from benchmarks.standalone import Standalone

        assert self.marketo is not None
        assert self.dynamics is not None
        with Standalone(self.env, self.workdir / f"standalone-{dag_id}") as airflow:
            self.reset_stats()
            started = time.time()
            cpu_before = cpu_snapshot(self.emulators())
            child = airflow.run(dag_id, timeout)
            cpu = cpu_split(cpu_before, cpu_snapshot(self.emulators()), psutil.cpu_count() or 1)
            ended = time.time()
        peaks = [t["peak_rss_mb"] for t in child["tasks"] if t["peak_rss_mb"]]
        measure = self._measure(
            child,
            child["tasks"],
            baseline_rss_mb=min(peaks) if peaks else None,
            process_peak_rss_mb=max(peaks) if peaks else None,
            started=started,
            ended=ended,
            cpu=cpu,
        )
        if measure.state != "success":
            failed = [t["task_id"] for t in child["tasks"] if t["state"] != "success"]
            raise RuntimeError(f"{dag_id}: run ended {measure.state}; tasks not successful: {failed}")
        return measure

    def _measure(
        self,
        child: dict[str, Any],
        tasks: list[dict[str, Any]],
        *,
        baseline_rss_mb: float | None,
        process_peak_rss_mb: float | None,
        started: float,
        ended: float,
        cpu: dict[str, float] | None = None,
    ) -> DagRunMeasure:
        """A finished run's measure: its report from the child, both emulators' counters since reset."""
        assert self.marketo is not None
        assert self.dynamics is not None
        return DagRunMeasure(
            dag_id=child["dag_id"],
            state=child["state"],
            wall_s=child["run_seconds"],
            marketo=split_calls(self.marketo.stats()),
            dynamics=split_calls(self.dynamics.stats()),
            tasks=tasks,
            baseline_rss_mb=baseline_rss_mb,
            process_peak_rss_mb=process_peak_rss_mb,
            started=started,
            ended=ended,
            cpu=cpu,
        )

    def cleanup(self) -> None:
        """Remove the working folder (emulator databases, staging, Airflow home)."""
        shutil.rmtree(self.workdir, ignore_errors=True)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()
