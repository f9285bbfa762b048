"""``http.listen``: /metrics and /healthz of a real daemon, checked against what it publishes.

The daemon runs against the simulator and a real Mosquitto; /metrics is scraped over HTTP and
parsed with prometheus_client's own parser. The numbers are compared with independent sources:
the health report and the signals and regime messages the daemon published on MQTT (what a
subscriber received), and the failures the test causes (a simulator stopped, a venue refused, a
broker stopped).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from monitor.config import ConfigError, config_from_dict, shard
from monitor.daemon import Daemon
from monitor.http_server import HttpListenError, HttpServer
from simulator.server import Simulator
from tests.conftest import REPO, Mosquitto, Subscriber, free_port, sim_config


# -- config ---------------------------------------------------------------------------------------
def shipped() -> dict[str, Any]:
    return yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))


def http_listen(value: Any) -> Any:
    data = shipped()
    data["http"] = {"listen": value}
    return config_from_dict(data, env={}).http.listen


def listen_errors(value: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        http_listen(value)
    return err.value.errors


def test_the_listener_is_off_unless_configured() -> None:
    assert config_from_dict(shipped(), env={}).http.listen is None
    data = shipped()
    del data["http"]
    assert config_from_dict(data, env={}).http.listen is None
    data["http"] = None  # every key commented out
    assert config_from_dict(data, env={}).http.listen is None


def test_http_listen_takes_an_address_and_a_bare_port_means_loopback() -> None:
    assert http_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert http_listen("0.0.0.0:9464") == ("0.0.0.0", 9464)
    assert http_listen("[::1]:9464") == ("::1", 9464)
    assert http_listen("localhost:80") == ("localhost", 80)
    assert http_listen(9464) == ("127.0.0.1", 9464)
    assert http_listen(" 9464 ") == ("127.0.0.1", 9464)
    assert http_listen(None) is None


def test_http_listen_errors_name_the_key_and_the_fix() -> None:
    assert listen_errors(":9464") == [
        "http.listen: names no address before ':9464': write 127.0.0.1:9464 for this machine "
        "only, or 0.0.0.0:9464 for every interface"
    ]
    assert listen_errors("::1:9464") == [
        "http.listen: an IPv6 address goes in brackets, e.g. [::1]:9464, got '::1:9464'"
    ]
    assert listen_errors("[fe80::zz]:9464") == ["http.listen: not an IPv6 address: 'fe80::zz'"]
    forms = "host:port such as 127.0.0.1:9464, [::1]:9464 or 0.0.0.0:9464, or a port alone"
    assert listen_errors("http://127.0.0.1:9464") == [
        f"http.listen: expected {forms}, without a scheme, got 'http://127.0.0.1:9464'"
    ]
    assert listen_errors("localhost") == [f"http.listen: expected {forms}, got 'localhost'"]
    assert listen_errors("a b:1") == [
        f"http.listen: not a host name or IP address: 'a b' (expected {forms})"
    ]
    assert listen_errors(0) == ["http.listen: port must be between 1 and 65535, got 0"]
    assert listen_errors("127.0.0.1:65536") == [
        "http.listen: port must be between 1 and 65535, got 65536"
    ]
    assert listen_errors(9464.0) == ["http.listen: expected string, got float 9464.0"]
    data = shipped()
    data["http"] = {"listen": 9464, "port": 1}
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, env={})
    assert err.value.errors == ["http.port: unknown key (known: listen)"]


def test_each_shard_listens_on_its_own_port() -> None:
    data = shipped()
    data["http"] = {"listen": "127.0.0.1:9464"}
    config = config_from_dict(data, env={})  # two assets, BTC and ETH
    assert shard(config, 1, 2).http.listen == ("127.0.0.1", 9464)
    assert shard(config, 2, 2).http.listen == ("127.0.0.1", 9465)
    data["http"] = {"listen": "127.0.0.1:65535"}
    with pytest.raises(ConfigError) as err:
        shard(config_from_dict(data, env={}), 2, 2)
    assert err.value.errors == ["--shard 2/2: http.listen port 65535 + 1 is over 65535"]


def test_record_leaves_the_port_to_the_daemon_beside_it() -> None:
    """``tapewatch record`` (a daemon that does not publish) opens no listener, so it can run
    on the same config as the daemon."""
    data = shipped()
    data["http"] = {"listen": "127.0.0.1:9464"}
    config = config_from_dict(data, env={})
    assert Daemon(config, publish=False, stateful=False).http is None


async def test_a_port_in_use_is_one_line_naming_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(HttpListenError) as err:
            await HttpServer("127.0.0.1", port).start()
    assert str(err.value) == (
        f"http.listen 127.0.0.1:{port}: Address already in use (another tapewatch or another "
        "program listens there: pick another port)"
    )


# -- end to end -----------------------------------------------------------------------------------
class Scrape:
    """One /metrics answer, parsed by prometheus_client's parser."""

    def __init__(self, text: str, before_ms: int, after_ms: int) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.before_ms, self.after_ms = before_ms, after_ms  # wall clock around the request

    def values(self, sample: str, *keys: str) -> dict[Any, float]:
        """Sample name → {label value (or tuple of them, in ``keys`` order): value}."""
        out: dict[Any, float] = {}
        for family in self.families.values():
            for s in family.samples:
                if s.name == sample:
                    key = tuple(s.labels[k] for k in keys)
                    out[key[0] if len(keys) == 1 else key] = s.value
        return out

    def one(self, sample: str) -> float:
        (value,) = self.values(sample).values()
        return value

    def slashed(self, sample: str, second: str) -> dict[str, float]:
        """Samples labelled venue and ``second`` (kind, symbol), keyed as health keys them:
        ``venue/second``."""
        return {f"{v}/{k}": n for (v, k), n in self.values(sample, "venue", second).items()}


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


async def get_metrics(http: aiohttp.ClientSession, base: str) -> Scrape:
    before = wall_ms()
    async with http.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()
    return Scrape(text, before, wall_ms())


async def get_healthz(http: aiohttp.ClientSession, base: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{base}/healthz") as resp:
        return resp.status, await resp.json()


async def poll_healthz(http: aiohttp.ClientSession, base: str) -> tuple[int, dict[str, Any]]:
    """``get_healthz``, or (0, {}) while the starting daemon does not listen yet."""
    try:
        return await get_healthz(http, base)
    except aiohttp.ClientConnectorError:
        return 0, {}


async def until(
    condition: Callable[[], Awaitable[bool]],
    progress: Callable[[], float],
    limit: float,
    task: asyncio.Task[None],
    stall_s: float = 30.0,
) -> None:
    """Poll ``condition`` until it holds. It fails when ``progress()`` (simulator event time, or
    the wall clock for what runs on it) passes ``limit`` without it, or stands still for
    ``stall_s`` of wall time: a slow machine makes the wait longer, not the test fail."""
    moved, last = time.monotonic(), progress()
    while not await condition():
        assert not task.done(), f"daemon ended: {task.exception()!r}"
        now = progress()
        assert now <= limit, f"condition not met by {limit} (progress at {now})"
        if now != last:
            moved, last = time.monotonic(), now
        assert time.monotonic() - moved < stall_s, f"no progress for {stall_s}s (at {now})"
        await asyncio.sleep(0.05)  # a polling interval, not a synchronisation


def wall_s() -> float:
    return time.monotonic()


class RunningDaemon:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(daemon.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def run_daemon() -> AsyncIterator[Callable[..., RunningDaemon]]:
    started: list[RunningDaemon] = []

    def start(config: Any) -> RunningDaemon:
        running = RunningDaemon(Daemon(config))
        started.append(running)
        return running

    yield start
    for running in started:
        if not running.task.done():
            await running.close()


def daemon_config(sim: Simulator, mqtt_url: str, prefix: str, port: int, **over: Any) -> Any:
    base = {
        "mqtt": {"url": mqtt_url, "prefix": prefix, "broker": "external"},
        "collector": {"backoff_initial": "100ms", "backoff_max": "1s"},
        "http": {"listen": f"127.0.0.1:{port}"},
    }
    return sim_config(sim, **{**base, **over})


def health_messages(sub: Subscriber, prefix: str, instance: str) -> list[dict[str, Any]]:
    return sub.on(f"{prefix}/health/{instance}")


@pytest.mark.slow
async def test_metrics_match_what_the_daemon_publishes_and_healthz_follows_the_feeds(
    start_simulator: Any,
    mosquitto: Mosquitto,
    prefix: str,
    subscribe: Any,
    http: aiohttp.ClientSession,
    run_daemon: Callable[..., RunningDaemon],
) -> None:
    sim = await start_simulator(scenario="sell_wave", speed=5.0, seed=3)
    port = free_port()
    # Baselines short enough to give z-scores within the test (the shipped ones need a day).
    signals = {"baseline_bucket": "1s", "baseline_window": "10m", "baseline_min_history": "5s"}
    config = daemon_config(sim, mosquitto.url, prefix, port, signals=signals)
    sub = await subscribe(f"{prefix}/#")
    running = run_daemon(config)
    base = f"http://127.0.0.1:{port}"
    instance = config.instance

    def event_s() -> float:
        return sim.elapsed_ms() / 1000

    # Healthy once the broker is connected and every socket delivers.
    async def healthy() -> bool:
        status, _ = await poll_healthz(http, base)
        return status == 200

    await until(healthy, event_s, 60.0, running.task)
    status, body = await get_healthz(http, base)
    await sub.wait_for(lambda s: health_messages(s, prefix, instance))
    published_streams = set(health_messages(sub, prefix, instance)[-1]["streams"])
    assert len(published_streams) >= 4
    assert (status, body["status"], body["reasons"]) == (200, "ok", [])
    assert set(body["streams"]) == published_streams and body["mqtt_connected"] is True

    # sell_wave: 10 s of calm event time, then sellers take over.
    async def seller_dominance() -> bool:
        return any(p["regime"] == "seller_dominance" for p in sub.on(f"{prefix}/BTC/regime"))

    await until(seller_dominance, event_s, 120.0, running.task)
    live = await get_metrics(http, base)
    assert all(name.startswith("tapewatch") for name in live.families)  # its own registry
    assert all(f.documentation for f in live.families.values())
    assert live.families["tapewatch_stream_frames"].type == "counter"
    assert live.families["tapewatch_regime"].type == "gauge"
    assert live.families["tapewatch_publish_latency_seconds"].type == "histogram"
    assert live.values("tapewatch_stream_connected", "stream") == dict.fromkeys(
        published_streams, 1.0
    )
    assert live.one("tapewatch_mqtt_connected") == 1.0
    info = live.values("tapewatch_info", "instance", "session")
    assert info == {(instance, running.daemon.session): 1.0}

    # Cut every venue: the simulator goes away, each socket drops.
    await sim.stop()

    async def all_down() -> bool:
        status, body = await get_healthz(http, base)
        named = {r.split(":", 1)[0] for r in body["reasons"]}
        return status == 503 and named == {f"stream {name}" for name in published_streams}

    await until(all_down, wall_s, wall_s() + 30.0, running.task)
    status, body = await get_healthz(http, base)
    assert body["status"] == "unhealthy" and body["mqtt_connected"] is True
    assert all(": disconnected (" in reason for reason in body["reasons"]), body["reasons"]
    assert all(not s["connected"] for s in body["streams"].values())

    async def drained() -> bool:
        return len(running.daemon.queue) == 0

    await until(drained, wall_s, wall_s() + 30.0, running.task)
    before = await get_metrics(http, base)  # frames stopped; reconnect attempts go on

    # The first health report taken after that scrape, as a subscriber received it.
    def reported(s: Subscriber) -> bool:
        return any(h["ts_pub"] > before.after_ms for h in health_messages(s, prefix, instance))

    await sub.wait_for(reported, timeout=30)
    health = next(
        h for h in health_messages(sub, prefix, instance) if h["ts_pub"] > before.after_ms
    )
    after = await get_metrics(http, base)

    # Streams: frames stopped with the simulator, so all three agree exactly.
    frames = {name: float(s["frames"]) for name, s in health["streams"].items()}
    assert before.values("tapewatch_stream_frames_total", "stream") == frames
    assert after.values("tapewatch_stream_frames_total", "stream") == frames
    assert all(n > 0 for n in frames.values())
    for sample, field in [
        ("tapewatch_stream_reconnects_total", "reconnects"),  # still trying: it only grows
        ("tapewatch_stream_stalls_total", "stalls"),
        ("tapewatch_stream_dropped_frames_total", "dropped"),
    ]:
        low, high = before.values(sample, "stream"), after.values(sample, "stream")
        for name, s in health["streams"].items():
            assert low[name] <= s[field] <= high[name], (sample, name)
    assert after.values("tapewatch_stream_connected", "stream") == dict.fromkeys(frames, 0.0)
    # The age of the last frame: health said how old it was at ts_pub, so it was received at
    # ts_pub - age; the scrape's age lies within the request's own time span after that.
    ages = after.values("tapewatch_stream_last_frame_age_seconds", "stream")
    for name, s in health["streams"].items():
        received = health["ts_pub"] - s["last_frame_age_ms"]
        assert after.before_ms - received <= round(ages[name] * 1000) <= after.after_ms - received

    # Per venue and kind, books and trades: stopped with the frames, equal to health's.
    processed = after.values("tapewatch_frames_processed_total", "venue")
    assert processed == {v: float(n) for v, n in health["frames"].items()}
    for sample, field in [
        ("tapewatch_malformed_frames_total", "malformed"),
        ("tapewatch_ignored_frames_total", "ignored"),
        ("tapewatch_rejected_events_total", "rejected"),
    ]:
        expected = {k: float(n) for k, n in health[field].items()}
        assert after.slashed(sample, "kind") == expected, sample
    books = health["books"]
    assert len(books) == 6
    assert after.slashed("tapewatch_book_synced", "symbol") == {
        k: float(b["synced"]) for k, b in books.items()
    }
    for sample, field in [
        ("tapewatch_book_resyncs_total", "resyncs"),
        ("tapewatch_book_gaps_total", "gaps"),
        ("tapewatch_book_crossed_total", "crossed"),
    ]:
        expected = {k: float(b[field]) for k, b in books.items()}
        assert after.slashed(sample, "symbol") == expected, sample
    trades = health["trades"]
    assert len(trades) >= 6  # each symbol once it traded; Coinbase's USDT-USD as well
    for sample, field in [
        ("tapewatch_trade_gaps_total", "gaps"),
        ("tapewatch_trades_lost_total", "lost"),
        ("tapewatch_trades_duplicate_total", "duplicates"),
        ("tapewatch_trades_recovered_total", "recovered_trades"),
    ]:
        expected = {k: float(t[field]) for k, t in trades.items()}
        assert after.slashed(sample, "symbol") == expected, sample
    assert after.one("tapewatch_coinbase_sequence_gaps_total") == health["coinbase_sequence_gaps"]
    assert after.one("tapewatch_queue_dropped_frames_total") == health["queue_dropped"]
    low = before.values("tapewatch_rest_requests_total", "venue")
    high = after.values("tapewatch_rest_requests_total", "venue")
    for venue, rest in health["rest"].items():
        assert low[venue] <= rest["requests"] <= high[venue], venue
    assert after.values("tapewatch_venue_up", "venue") == {
        v: float(r["up"]) for v, r in health["venues"].items()
    }
    assert set(after.values("tapewatch_venue_up", "venue").values()) == {0.0}

    # Delivery: every regime and events message a subscriber got was timed once.
    delivered = sum(
        len(sub.on(f"{prefix}/{asset}/{kind}"))
        for asset in config.assets
        for kind in ("regime", "events")
    )
    assert delivered >= 4  # neutral and seller_dominance for BTC, with its event
    assert after.one("tapewatch_publish_latency_seconds_count") == delivered
    assert health["publish_latency_ms"]["count"] == delivered
    # Health's p50 and max are over the same deliveries (fewer than its window of 1,000), in
    # ms rounded to 0.01: each bucket holds what they say it must.
    latency = health["publish_latency_ms"]
    buckets = after.values("tapewatch_publish_latency_seconds_bucket", "le")
    assert buckets["+Inf"] == delivered
    for le, n in buckets.items():
        bound_ms = float(le) * 1000
        if bound_ms >= latency["max"] + 0.01:
            assert n == delivered, le
        elif bound_ms < latency["max"] - 0.01:
            assert n < delivered, le
        if bound_ms >= latency["p50"] + 0.01:
            assert n >= delivered / 2, le
    total_ms = after.one("tapewatch_publish_latency_seconds_sum") * 1000
    assert latency["max"] - 0.01 <= total_ms <= delivered * latency["max"] + 0.01
    assert after.one("tapewatch_outbox_depth") == health["outbox_depth"] == 0
    assert after.one("tapewatch_mqtt_connected") == 1.0

    # Regimes: the one in force is the last retained regime message of each asset.
    regimes = after.values("tapewatch_regime", "asset", "regime")
    names = {rule.name for rule in config.regimes} | {"neutral"}
    since = after.values("tapewatch_regime_since_timestamp_seconds", "asset")
    for asset in config.assets:
        last = sub.on(f"{prefix}/{asset}/regime")[-1]
        expected = {(asset, name): float(name == last["regime"]) for name in names}
        assert {k: v for k, v in regimes.items() if k[0] == asset} == expected
        assert round(since[asset] * 1000) == last["since"]

    # Signals: equal to the last signals message of each asset, missing values left out.
    values = after.values("tapewatch_signal", "asset", "signal")
    zs = after.values("tapewatch_signal_z", "asset", "signal")
    stamps = after.values("tapewatch_signals_timestamp_seconds", "asset")
    nulls = 0
    for asset in config.assets:
        last = sub.on(f"{prefix}/{asset}/signals")[-1]
        entries = last["signals"]
        assert round(stamps[asset] * 1000) == last["ts_event"]
        assert {k[1]: v for k, v in values.items() if k[0] == asset} == {
            name: e["value"] for name, e in entries.items() if e["value"] is not None
        }
        assert {k[1]: v for k, v in zs.items() if k[0] == asset} == {
            name: e["z"] for name, e in entries.items() if e.get("z") is not None
        }
        nulls += sum(e["value"] is None for e in entries.values())
    assert nulls > 0 and zs  # both kinds are there: the comparison above is not vacuous
    units = after.values("tapewatch_signal_info", "signal", "unit")
    assert units[("taker_imbalance", "ratio")] == 1.0
    assert units[("net_taker_usd", "USD")] == 1.0
    assert {k[0] for k in units} >= {k[1] for k in values}


@pytest.mark.slow
async def test_healthz_names_a_refused_venue_and_a_broker_outage(
    start_simulator: Any,
    tmp_path: Path,
    prefix: str,
    http: aiohttp.ClientSession,
    run_daemon: Callable[..., RunningDaemon],
) -> None:
    # Coinbase answers every websocket with HTTP 451; the Binance venues run as usual.
    sim = await start_simulator(scenario="calm", speed=5.0, seed=3, dead_venues={"coinbase"})
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker")  # ours to stop
    broker.start()
    try:
        port = free_port()
        running = run_daemon(daemon_config(sim, broker.url, prefix, port))
        base = f"http://127.0.0.1:{port}"

        def event_s() -> float:
            return sim.elapsed_ms() / 1000

        latest: dict[str, Any] = {}

        def reasons_about(*subjects: str) -> Callable[[], Awaitable[bool]]:
            """503, naming exactly ``subjects``, Coinbase once its refusal came back."""

            async def check() -> bool:
                status, body = await poll_healthz(http, base)
                if status == 0:
                    return False
                latest.update(status=status, body=body)
                named = {r.split(":", 1)[0] for r in body["reasons"]}
                refused = any("HTTP 451" in r for r in body["reasons"])
                return status == 503 and named == set(subjects) and refused

            return check

        # Only Coinbase is named once every Binance socket delivers and the broker is there.
        await until(reasons_about("stream coinbase"), event_s, 60.0, running.task)
        (reason,) = latest["body"]["reasons"]
        assert reason.startswith("stream coinbase: disconnected (")
        assert latest["body"]["mqtt_connected"] is True
        metrics = await get_metrics(http, base)
        assert metrics.values("tapewatch_stream_connected", "stream")["coinbase"] == 0.0
        assert metrics.values("tapewatch_venue_up", "venue")["coinbase"] == 0.0
        assert metrics.one("tapewatch_mqtt_connected") == 1.0

        broker.stop()
        await until(reasons_about("stream coinbase", "mqtt"), wall_s, wall_s() + 30.0, running.task)
        assert f"mqtt: not connected to the broker at {broker.url}" in latest["body"]["reasons"]
        assert latest["body"]["mqtt_connected"] is False
        assert (await get_metrics(http, base)).one("tapewatch_mqtt_connected") == 0.0

        broker.start()
        await until(reasons_about("stream coinbase"), wall_s, wall_s() + 30.0, running.task)
        assert (await get_metrics(http, base)).one("tapewatch_mqtt_connected") == 1.0
        await running.close()
        # Stopped: nothing listens on the port any more (TIME_WAIT aside).
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
    finally:
        broker.stop()


@pytest.mark.slow
def test_run_stops_at_start_with_one_line_when_the_port_is_taken(tmp_path: Path) -> None:
    data = shipped()
    data["mqtt"] = {"url": f"mqtt://127.0.0.1:{free_port()}", "broker": "external"}
    data["mqtt"]["prefix"] = "tw-test/v1"
    data["signals"] = {"backfill": False}
    data["log_level"] = "warning"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data["http"] = {"listen": f"127.0.0.1:{port}"}
        path = tmp_path / "taken.yaml"
        path.write_text(yaml.safe_dump(data))
        result = subprocess.run(
            [sys.executable, "-m", "monitor", "run", "--config", str(path)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"tapewatch run: http.listen 127.0.0.1:{port}: Address already in use (another "
        "tapewatch or another program listens there: pick another port)"
    ]
