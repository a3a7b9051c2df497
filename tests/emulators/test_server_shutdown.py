"""An emulator stops promptly even while a client holds a keep-alive connection open."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from tests.support.emulator_procs import start_emulator


@pytest.mark.parametrize("side", ["marketo", "dynamics"])
def test_stop_does_not_wait_for_an_idle_keep_alive_connection(tmp_path: Path, side: str) -> None:
    emu = start_emulator(side, tmp_path / side, ["--limits", "off"])
    with requests.Session() as held:
        try:
            resp = held.get(f"{emu.base_url}/_emulator/health", verify=emu.verify, timeout=30)
            assert resp.status_code == 200
            started = time.monotonic()
            emu.stop()  # terminate, then up to 10 s before it kills
            elapsed = time.monotonic() - started
        finally:
            emu.stop()
    assert emu.process.returncode is not None
    # Graceful shutdown is capped at 2 s (emulators/common/server.py); without the cap both
    # emulators waited for the idle connection until the 10 s kill.
    assert elapsed < 6, f"{side} emulator took {elapsed:.1f}s to stop"
