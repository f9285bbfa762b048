"""End to end: simulator (real websockets) → daemon → real Mosquitto → subscriber."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
import yaml

from monitor.config import Config, config_from_dict, deep_merge
from monitor.daemon import Daemon
from simulator.server import Simulator
from tests.conftest import REPO, Mosquitto, Subscriber, free_port, sim_config


def daemon_config(sim: Simulator, mqtt_url: str, prefix: str, **over: Any) -> Config:
    base = {
        "mqtt": {"url": mqtt_url, "prefix": prefix, "broker": "external"},
        "collector": {"backoff_initial": "100ms", "backoff_max": "1s"},
    }
    return sim_config(sim, **deep_merge(base, over))


@pytest.fixture
async def sim(start_simulator: Any) -> Simulator:
    return await start_simulator(scenario="sell_wave", speed=5.0, seed=3)


class RunningDaemon:
    def __init__(self, config: Config) -> None:
        self.daemon = Daemon(config)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.daemon.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)  # generous: a busy machine stops slowly


def _regimes(sub: Subscriber, prefix: str) -> list[str]:
    return [p["regime"] for p in sub.on(f"{prefix}/BTC/regime")]


async def test_daemon_publishes_status_regime_and_signals(
    sim: Simulator, mosquitto: Mosquitto, prefix: str, subscribe: Any
) -> None:
    sub = await subscribe(f"{prefix}/#")
    running = RunningDaemon(daemon_config(sim, mosquitto.url, prefix))
    instance = running.daemon.config.instance
    status = f"{prefix}/status/{instance}"
    # sell_wave: calm 10 s of event time, then sellers; at speed 5 that is ~2 s of wall time.
    await sub.wait_for(lambda s: "seller_dominance" in _regimes(s, prefix), timeout=30)
    await sub.wait_for(lambda s: s.on(f"{prefix}/BTC/events"))
    # Regime and events messages are queued ahead of the (coalesced) signals of the same tick.
    await sub.wait_for(
        lambda s: (
            s.on(f"{prefix}/BTC/signals")[-1]["signals"]["taker_imbalance_perp"]["value"]
            is not None
        )
    )

    # The sockets, held while the change waited for its PUBACK, are read again.
    async with asyncio.timeout(5):
        while not all(c.reading for c in running.daemon.connections):
            await asyncio.sleep(0.01)  # polling a flag

    assert sub.on(status)[0]["state"] == "online"
    assert sub.on(status)[0]["session"] == running.daemon.session
    regimes = sub.on(f"{prefix}/BTC/regime")
    assert regimes[0]["regime"] == "neutral" and regimes[0]["previous"] is None
    entered = next(r for r in regimes if r["regime"] == "seller_dominance")
    assert entered["previous"] == "neutral"
    assert entered["reasons"][0]["signal"] == "taker_buy_sell_ratio"
    assert entered["reasons"][0]["op"] == "<" and entered["reasons"][0]["value"] < 0.8
    # Exactly one events message per change (the initial regime is not a change).
    events = sub.on(f"{prefix}/BTC/events")
    changes = [r for r in regimes if r["previous"] is not None]
    assert [e["regime"] for e in events] == [r["regime"] for r in changes]
    assert len({e["id"] for e in events}) == len(events)
    # The events message is sent once the broker acknowledged the state messages before it:
    # both regime messages (neutral, seller_dominance) have their delivery latency measured.
    latency = running.daemon.pipeline.health_report(0)["publish_latency_ms"]
    assert latency["count"] >= 2 and 0 <= latency["p50"] <= latency["max"] < 30_000
    signals = sub.on(f"{prefix}/BTC/signals")
    seqs = [s["seq"] for s in signals]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no loss, no reordering
    latest = signals[-1]["signals"]
    assert latest["funding_rate"]["value"] is not None and latest["mark_price"]["value"] > 0
    assert -1 <= latest["taker_imbalance_perp"]["value"] <= 1

    # A subscriber arriving late gets the current regime and signals at once (retained).
    late = await subscribe(f"{prefix}/BTC/regime", f"{prefix}/BTC/signals")
    await late.wait_for(lambda s: s.on(f"{prefix}/BTC/regime") and s.on(f"{prefix}/BTC/signals"))
    assert all(retained for _, _, retained in late.messages[:2])

    await running.close()
    await sub.wait_for(lambda s: s.on(status)[-1]["state"] == "offline")


async def test_malformed_frames_are_counted_logged_once_per_kind_and_daemon_keeps_running(
    mosquitto: Mosquitto, prefix: str, subscribe: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tapewatch.health")
    bad = Simulator(port=0, speed=5.0, faults=frozenset({"malformed"}), fault_every=0.05)
    await bad.start()
    try:
        sub = await subscribe(f"{prefix}/BTC/signals")
        running = RunningDaemon(daemon_config(bad, mosquitto.url, prefix))
        health = running.daemon.health
        kinds = {"not_json", "missing_field", "bad_type", "bad_value", "unknown_event"}
        await sub.wait_for(
            lambda s: {k for _, k in health.malformed} >= kinds and len(s.messages) > 0
        )
        seen = len(sub.messages)
        await sub.wait_for(lambda s: len(s.messages) >= seen + 3)  # still publishing afterwards
        assert not running.task.done()
        assert sum(health.malformed.values()) >= len(kinds)
        logged = [r for r in caplog.records if "malformed frame skipped" in r.getMessage()]
        assert len(logged) == len(health.malformed)  # one line per (venue, kind), no flood
        assert sum(bad.fault_counts.values()) >= sum(health.malformed.values())
        await running.close()
    finally:
        await bad.stop()


async def test_daemon_reconnects_after_the_exchange_drops_it(
    mosquitto: Mosquitto, prefix: str, subscribe: Any
) -> None:
    dropping = Simulator(port=0, speed=5.0, faults=frozenset({"drop"}), fault_every=1.0)
    await dropping.start()
    try:
        sub = await subscribe(f"{prefix}/BTC/signals")
        running = RunningDaemon(daemon_config(dropping, mosquitto.url, prefix))
        link = running.daemon.health.streams["binance-usdm/market"]
        await sub.wait_for(lambda s: link.reconnects >= 2 and link.connected)
        seen = len(sub.messages)
        await sub.wait_for(lambda s: len(s.messages) >= seen + 2)
        assert link.frames > 0
        await running.close()
    finally:
        await dropping.stop()


async def test_embedded_broker_serves_subscribers_when_none_answers(
    sim: Simulator, prefix: str, subscribe: Any
) -> None:
    port = free_port()
    config = daemon_config(sim, f"mqtt://127.0.0.1:{port}", prefix, mqtt={"broker": "auto"})
    running = RunningDaemon(config)
    await asyncio.wait_for(running.daemon.broker_ready.wait(), 10)
    assert running.daemon.broker is not None
    sub = await subscribe(f"{prefix}/#", port=port)
    status = f"{prefix}/status/{config.instance}"
    await sub.wait_for(lambda s: s.on(status) and s.on(f"{prefix}/BTC/regime"))
    assert sub.on(status)[0]["state"] == "online"
    await running.close()


async def test_auto_uses_a_broker_that_already_answers(
    sim: Simulator, mosquitto: Mosquitto, prefix: str, subscribe: Any
) -> None:
    sub = await subscribe(f"{prefix}/#")
    config = daemon_config(sim, mosquitto.url, prefix, mqtt={"broker": "auto"})
    running = RunningDaemon(config)
    await sub.wait_for(lambda s: s.on(f"{prefix}/status/{config.instance}"))
    assert running.daemon.broker is None
    await running.close()


async def test_cli_simulate_and_run_then_sigkill_publishes_offline_will(
    mosquitto: Mosquitto, prefix: str, subscribe: Any, tmp_path: Path
) -> None:
    """The user's path: `tapewatch simulate --write-config` + `tapewatch run`, then kill -9."""
    sim_port = free_port()
    cfg_path = tmp_path / "sim.yaml"
    env = {**os.environ, "TAPEWATCH_MQTT_URL": mosquitto.url}
    simulate = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "monitor",
            "simulate",
            "--port",
            str(sim_port),
            "--speed",
            "5",
            "--write-config",
            str(cfg_path),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    daemon = None
    try:
        assert simulate.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(simulate.stdout.readline), 20)
        assert "listening" in line, line
        written = yaml.safe_load(cfg_path.read_text())
        written["mqtt"]["prefix"] = prefix
        cfg_path.write_text(yaml.safe_dump(written))
        sub = await subscribe(f"{prefix}/#")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(cfg_path)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        status = f"{prefix}/status/{written['instance']}"  # the simulator's own instance
        await sub.wait_for(
            lambda s: (
                s.on(status) and s.on(f"{prefix}/BTC/regime") and s.on(f"{prefix}/BTC/signals")
            ),
            timeout=30,
        )
        assert sub.on(status)[-1]["state"] == "online"
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        await sub.wait_for(lambda s: s.on(status)[-1]["state"] == "offline", timeout=30)
        # The will is retained: a newcomer learns the daemon is gone.
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.subscribe(status, qos=1)
            async with asyncio.timeout(10):
                async for message in client.messages:
                    assert orjson.loads(message.payload)["state"] == "offline"  # type: ignore[arg-type]
                    assert message.retain
                    break
    finally:
        for proc in (daemon, simulate):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_demo_shows_signals_and_a_regime(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor",
            "demo",
            "--duration",
            "20",
            "--speed",
            "4",
            "--config",
            str(REPO / "config.yaml"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[signals] BTC" in result.stdout
    assert "[regime]  BTC seller_dominance (was neutral)" in result.stdout


def test_streams_are_split_across_connections_within_the_per_connection_cap() -> None:
    assets = {
        f"A{i:03d}": {"binance_spot": f"A{i:03d}USDT", "binance_usdm": f"A{i:03d}USDT"}
        for i in range(150)
    }
    config = config_from_dict(
        {
            "instance": "t",
            "assets": assets,
            "regimes": [],
            "mqtt": {"url": "mqtt://127.0.0.1", "prefix": "t/v1"},
        },
        env={},
    )
    daemon = Daemon(config, publish=False)
    by_socket: dict[str, list[int]] = {}
    for conn in daemon.connections:
        streams = conn.url.split("streams=", 1)[1].split("/")
        assert len(streams) <= 200, conn.name
        by_socket.setdefault(conn.name.split("#")[0], []).append(len(streams))
    # 150 symbols x 2 spot streams = 300 -> 2 sockets; /market 3 streams -> 3; /public 1 -> 1.
    assert {k: sum(v) for k, v in by_socket.items()} == {
        "binance-spot": 300,
        "binance-usdm/market": 450,
        "binance-usdm/public": 150,
    }
    assert {k: len(v) for k, v in by_socket.items()} == {
        "binance-spot": 2,
        "binance-usdm/market": 3,
        "binance-usdm/public": 1,
    }


async def test_rebirth_command_republishes_status_and_retained_state(
    start_simulator: Any, mosquitto: Mosquitto, prefix: str, subscribe: Any
) -> None:
    # A calm market: no regime changes, so every second message below comes from the rebirth.
    sim = await start_simulator(scenario="calm", speed=5.0, seed=3)
    running = RunningDaemon(daemon_config(sim, mosquitto.url, prefix))
    status = f"{prefix}/status/{running.daemon.config.instance}"
    sub = await subscribe(status, f"{prefix}/BTC/regime", f"{prefix}/ETH/regime")
    await sub.wait_for(
        lambda s: s.on(status) and s.on(f"{prefix}/BTC/regime") and s.on(f"{prefix}/ETH/regime")
    )
    before = {t: len(sub.on(t)) for t in (status, f"{prefix}/BTC/regime", f"{prefix}/ETH/regime")}
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        await client.publish(f"{prefix}/cmd/rebirth", b"", qos=1)
    await sub.wait_for(lambda s: all(len(s.on(t)) > n for t, n in before.items()))
    # The republished state is the current state: same payload, same session.
    for topic in before:
        assert sub.on(topic)[-1] == sub.on(topic)[0]
        assert sub.on(topic)[-1]["session"] == running.daemon.session
    assert sub.on(status)[-1]["state"] == "online"
    await running.close()


def test_blas_runs_on_one_thread_once_the_daemon_set_it() -> None:
    """OpenBLAS's idle helper threads busy-wait between dot products: a daemon recomputing its
    baselines kept a second core at 100 % (monitor/daemon.py ``_one_blas_thread``)."""
    from threadpoolctl import threadpool_info

    from monitor.daemon import _one_blas_thread

    _one_blas_thread()
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas, "numpy's BLAS was not found"
    assert [pool["num_threads"] for pool in blas] == [1] * len(blas)
