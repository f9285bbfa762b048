"""The simulator never shares state with a real daemon (issue 9, item 6).

A config pointed at the simulator runs as its own instance in its own state directory; state
files record the venue endpoints and assets they came from, and a daemon on other endpoints sets
them aside (renamed, never deleted) with a WARNING; ``tapewatch record`` touches no state file.
The recipe test runs the README's commands as processes: ``simulate --write-config``, ``run`` on
the written config, then ``run`` on the shipped config, which must restore nothing of the
simulator's session.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.history_fetch import HistoryFetch
from monitor.state import load_checkpoint, origin, save_checkpoint
from tests.conftest import REPO, Mosquitto, free_port, sim_config
from tests.test_backfill import config_for, engine_for, filling, run_backfill
from tests.test_checkpoint import FAST, n_obs, run_until

SHIPPED = REPO / "config.yaml"
REAL_SPOT_WS = "wss://data-stream.binance.vision"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files(root: Path) -> dict[str, str]:
    """relative path -> content hash of every file under ``root``."""
    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


def set_aside_copies(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.set-aside-*"))


# -- the written config -------------------------------------------------------------------------
async def test_a_config_pointed_at_the_simulator_has_its_own_instance_and_state(
    start_simulator: Any,
) -> None:
    sim = await start_simulator()
    base = yaml.safe_load(SHIPPED.read_text())
    written = sim.config_for(base)
    assert (written["instance"], written["state"]["dir"]) == ("tapewatch-sim", "state/sim")
    assert written["state"]["checkpoint_interval"] == base["state"]["checkpoint_interval"]
    # Used as a base again (simulate --config sim.yaml), it stays the same instance.
    assert sim.config_for(written)["instance"] == "tapewatch-sim"
    assert sim.config_for(written)["state"]["dir"] == "state/sim"
    custom = sim.config_for({**base, "instance": "desk", "state": {"dir": "/var/lib/tw"}})
    assert (custom["instance"], custom["state"]["dir"]) == ("desk-sim", "/var/lib/tw/sim")


# -- checkpoints --------------------------------------------------------------------------------
async def test_a_checkpoint_from_other_endpoints_is_set_aside_and_nothing_restored(
    start_simulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sim = await start_simulator(speed=2.0, seed=7)
    # The old recipe's layout: the simulator's session under the shipped instance and state.
    shipped = load_config(SHIPPED, env={})
    borrowed = replace(sim_config(sim, **FAST), instance=shipped.instance, state=shipped.state)
    first = Daemon(borrowed, publish=False)
    await run_until(first, lambda: n_obs(first) >= 3)
    path = first.checkpoint_path
    before = digest(path)

    caplog.set_level(logging.WARNING, logger="tapewatch.daemon")
    real = Daemon(shipped, publish=False)
    assert real.checkpoint_path == path
    assert n_obs(real) == 0
    assert real.pipeline.regimes["BTC"].current is None
    assert not path.exists()
    [aside] = set_aside_copies(path)
    assert digest(aside) == before  # renamed, not rewritten: the session can still be read
    [warning] = [r for r in caplog.records if "other venue endpoints" in r.getMessage()]
    text = warning.getMessage()
    assert f"venues.binance_spot.ws: '{sim.base_ws}/spot' in the file" in text
    assert f"'{REAL_SPOT_WS}' configured" in text and str(aside) in text


async def test_a_checkpoint_that_records_no_origin_is_set_aside(
    start_simulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Written before checkpoints recorded their origin: nothing says it is this market's."""
    sim = await start_simulator(speed=2.0, seed=7)
    config = sim_config(sim, **FAST)
    first = Daemon(config, publish=False)
    await run_until(first, lambda: n_obs(first) >= 3)
    arrays, meta = load_checkpoint(first.checkpoint_path)
    old = {k: v for k, v in meta.items() if k in ("instance", "session", "saved_ms")}
    save_checkpoint(first.checkpoint_path, arrays, old)
    caplog.set_level(logging.WARNING, logger="tapewatch.daemon")
    second = Daemon(config, publish=False)
    assert n_obs(second) == 0 and len(set_aside_copies(first.checkpoint_path)) == 1
    assert any("no venue endpoints recorded" in r.getMessage() for r in caplog.records)


async def test_an_asset_on_other_symbols_starts_afresh_and_the_others_are_restored(
    start_simulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sim = await start_simulator(speed=2.0, seed=7)
    config = sim_config(sim, **FAST)
    first = Daemon(config, publish=False)
    await run_until(first, lambda: n_obs(first) >= 3 and first.pipeline.regimes["ETH"].current)
    saved = first.pipeline.engine.assets["ETH"].baselines["funding_rate"].n_obs
    assert saved > 0

    caplog.set_level(logging.WARNING, logger="tapewatch.daemon")
    moved = replace(config.assets["BTC"], coinbase=None)  # BTC now without Coinbase
    second = Daemon(replace(config, assets={**config.assets, "BTC": moved}), publish=False)
    assert n_obs(second) == 0 and second.pipeline.regimes["BTC"].current is None
    assert second.pipeline.engine.assets["ETH"].baselines["funding_rate"].n_obs == saved
    assert second.pipeline.regimes["ETH"].current is not None
    assert len(set_aside_copies(first.checkpoint_path)) == 1
    assert any("assets.BTC:" in r.getMessage() for r in caplog.records)


async def test_a_checkpoint_records_where_it_came_from(start_simulator: Any) -> None:
    sim = await start_simulator(speed=2.0, seed=7)
    config = sim_config(sim, **FAST)
    daemon = Daemon(config, publish=False)
    daemon.save_checkpoint()
    _, meta = load_checkpoint(daemon.checkpoint_path)
    assert meta["origin"] == origin(config)
    assert meta["origin"]["venues"]["binance_usdm"]["rest"] == sim.base_http
    assert meta["origin"]["assets"]["BTC"] == {
        "binance_spot": "BTCUSDT",
        "binance_usdm": "BTCUSDT",
        "coinbase": "BTC-USD",
    }


# -- history caches -----------------------------------------------------------------------------
async def test_a_history_cache_from_other_endpoints_is_set_aside(
    start_simulator: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = await start_simulator(symbols={"BTCUSDT": 78_000.0})
    config = config_for(sim, tmp_path / "state", "2h", coinbase=False)
    first = await run_backfill(config, engine_for(config))
    path = first._path("BTC")
    _, meta = load_checkpoint(path)
    assert meta["origin"]["venues"] == origin(config)["venues"]
    before = digest(path)
    # The same endpoints find their cache.
    again = HistoryFetch(config, filling(engine_for(config)), {}, time.time_ns() // 1_000_000)
    assert again.stored["BTC"]["perp"].hi > again.stored["BTC"]["perp"].lo

    caplog.set_level(logging.WARNING, logger="tapewatch.backfill")
    venues = load_config(SHIPPED, env={}).venues
    real = replace(config, venues=venues)
    fresh = HistoryFetch(real, filling(engine_for(real)), {}, time.time_ns() // 1_000_000)
    assert all(s.hi <= s.lo for s in fresh.stored["BTC"].values())  # fetched afresh
    assert not path.exists()
    [aside] = set_aside_copies(path)
    assert digest(aside) == before
    [warning] = [r for r in caplog.records if "was fetched elsewhere" in r.getMessage()]
    assert f"venues.binance_usdm.rest: '{sim.base_http}' in the file" in warning.getMessage()


# -- record -------------------------------------------------------------------------------------
def test_record_touches_no_state_file(tmp_path: Path) -> None:
    """``record`` on the config a daemon runs with: the daemon's checkpoint, history cache and
    outbox stay exactly as they are, and record writes none of its own."""
    state = tmp_path / "state"
    for name in ("tapewatch.npz", "history/tapewatch-BTC.npz", "tapewatch.outbox.sqlite"):
        (state / name).parent.mkdir(parents=True, exist_ok=True)
        (state / name).write_bytes(f"the running daemon's {name}".encode())
    before = files(state)
    simulate = subprocess.Popen(
        [sys.executable, "-m", "monitor", "simulate", "--port", "0", "--speed", "5"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert simulate.stdout is not None
        line = simulate.stdout.readline()
        assert "listening on ws://" in line, line
        base_ws = line.split("listening on ")[1].split()[0]
        port = int(base_ws.rsplit(":", 1)[1])
        # The shipped config with its instance and state directory, on the simulator's data.
        data = yaml.safe_load(SHIPPED.read_text())
        data["venues"] = _venues(port)
        data["signals"]["backfill"] = True  # record must not backfill (nor cache) anyway
        cfg = tmp_path / "daemon.yaml"
        cfg.write_text(yaml.safe_dump(data))
        result = subprocess.run(
            [sys.executable, "-m", "monitor", "record", "--out", "r.tape.jsonl", "--duration",
             "3", "--config", str(cfg)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    finally:
        simulate.kill()
        simulate.wait(10)
    assert result.returncode == 0, result.stderr
    assert "recorded" in result.stderr and (tmp_path / "r.tape.jsonl").stat().st_size > 0
    assert files(state) == before


def _venues(port: int) -> dict[str, Any]:
    ws, http = f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}"
    return {
        "binance_spot": {"ws": f"{ws}/spot", "rest": f"{http}/spot"},
        "binance_usdm": {"market_ws": f"{ws}/market", "public_ws": f"{ws}/public", "rest": http},
        "coinbase": {"ws": f"{ws}/coinbase", "rest": f"{http}/coinbase"},
    }


# -- the README's recipe, then the shipped config -------------------------------------------------
class Process:
    """A tapewatch command as a process, its log in a file (never a pipe that could fill)."""

    def __init__(self, args: list[str], cwd: Path, log: Path, env: dict[str, str]) -> None:
        self.log = log
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "monitor", *args],
                cwd=cwd,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_for(self, check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{what}: not seen\n{self.text()[-4000:]}")
            await asyncio.sleep(0.2)

    def stop(self) -> str:
        """SIGTERM (a clean stop: final checkpoint, offline status); returns the log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"did not stop in 30 s\n{self.text()[-4000:]}") from None
        return self.text()


@pytest.mark.timeout(150)
async def test_after_the_recipe_a_plain_run_restores_nothing_of_the_simulator(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    env = {**os.environ, "TAPEWATCH_MQTT_URL": mosquitto.url}
    sim_yaml = tmp_path / "sim.yaml"
    simulate = subprocess.Popen(
        [sys.executable, "-m", "monitor", "simulate", "--port", str(free_port()), "--speed",
         "5", "--write-config", str(sim_yaml)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    running: list[Process] = []
    try:
        assert simulate.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(simulate.stdout.readline), 30)
        assert "listening" in line, line
        written = yaml.safe_load(sim_yaml.read_text())
        sim_state = tmp_path / written["state"]["dir"]
        checkpoint = sim_state / f"{written['instance']}.npz"
        history = sim_state / "history" / f"{written['instance']}-BTC.npz"

        # Terminal 2 of the recipe: the daemon on the written config, until it has a history
        # cache of the simulated market (saved every few seconds of the backfill); then a clean
        # stop, which writes its checkpoint (the periodic one comes only a minute in).
        sim_run = Process(["run", "--config", str(sim_yaml)], tmp_path, tmp_path / "sim.log", env)
        running.append(sim_run)
        await sim_run.wait_for(history.exists, 60, "the simulator's history cache")
        sim_run.stop()
        assert checkpoint.exists(), sim_run.text()[-4000:]
        simulated = files(sim_state)
        _, meta = load_checkpoint(checkpoint)
        assert meta["origin"]["venues"]["binance_spot"]["ws"].startswith("ws://127.0.0.1:")

        # Later, the plain `tapewatch run` on the shipped config (no internet here: what
        # matters is what it restores).
        real = Process(["run", "--config", str(SHIPPED)], tmp_path, tmp_path / "real.log", env)
        running.append(real)
        await real.wait_for(lambda: "session" in real.text(), 30, "the real daemon's start")
        log = real.stop()
    finally:
        for process in running:
            if process.proc.poll() is None:
                process.proc.kill()
                process.proc.wait(10)
        simulate.kill()
        simulate.wait(10)

    assert "restored" not in log and "set aside" not in log, log
    assert files(sim_state) == simulated  # the simulator's session, untouched
    shipped = load_config(SHIPPED, env={})
    own = tmp_path / shipped.state.dir / f"{shipped.instance}.npz"
    arrays, meta = load_checkpoint(own)  # its own, written at its stop
    assert meta["origin"] == origin(shipped) and meta["regimes"] == {}
    engine = engine_for(shipped)
    assert engine.restore(arrays) == []
    assert {b.n_obs for a in engine.assets.values() for b in a.baselines.values()} == {0}
    # Any history cache it wrote is its own (the exchanges could not be reached: empty).
    for cache in (tmp_path / shipped.state.dir / "history").glob("*.npz"):
        _, meta = load_checkpoint(cache)
        assert meta["origin"]["venues"] == origin(shipped)["venues"], cache
