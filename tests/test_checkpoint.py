"""Restarting the daemon continues the z-score baselines instead of resetting them."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from monitor.daemon import Daemon
from tests.conftest import sim_config

FAST = {"signals": {"baseline_bucket": "1s", "baseline_window": "1h", "baseline_min_history": "2s"}}


def n_obs(daemon: Daemon) -> int:
    return daemon.pipeline.engine.assets["BTC"].baselines["funding_rate"].n_obs


async def run_until(daemon: Daemon, condition: Any, timeout: float = 30) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                assert not task.done()
                await asyncio.sleep(0.05)  # polling an engine counter, bounded by the timeout
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_restart_keeps_n_obs_growing(start_simulator: Any) -> None:
    sim = await start_simulator(speed=2.0, seed=7)
    config = sim_config(sim, **FAST)
    first = Daemon(config, publish=False)
    await run_until(first, lambda: n_obs(first) >= 5)
    saved = n_obs(first)
    assert first.checkpoint_path == Path("state/sim/tapewatch-sim.npz")  # the simulator's own
    assert first.checkpoint_path.exists()

    second = Daemon(config, publish=False)  # restores at construction
    assert n_obs(second) == saved
    await run_until(second, lambda: n_obs(second) >= saved + 3)


async def test_a_damaged_checkpoint_is_reported_and_ignored(
    start_simulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sim = await start_simulator(speed=2.0, seed=7)
    config = sim_config(sim, **FAST)
    path = Path(config.state.dir) / f"{config.instance}.npz"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00 not a checkpoint")
    caplog.set_level(logging.WARNING, logger="tapewatch.daemon")
    daemon = Daemon(config, publish=False)
    assert n_obs(daemon) == 0
    assert any("starting the baselines afresh" in r.getMessage() for r in caplog.records)
    await run_until(daemon, lambda: n_obs(daemon) >= 2)  # and it runs normally


async def test_a_changed_baseline_window_starts_afresh(start_simulator: Any) -> None:
    sim = await start_simulator(speed=2.0, seed=7)
    first = Daemon(sim_config(sim, **FAST), publish=False)
    await run_until(first, lambda: n_obs(first) >= 3)
    changed = {"signals": {**FAST["signals"], "baseline_window": "2h"}}
    second = Daemon(sim_config(sim, **changed), publish=False)
    assert n_obs(second) == 0
