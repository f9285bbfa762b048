"""The exchange simulator over real loopback sockets: Binance socket families and control
messages, speed, config. Shared helpers for the other ``test_simulator_*`` files live here.

Server tests synchronise on frames (bounded by timeouts), never on sleeps. A control reply works
as a barrier: the server writes each socket's frames in order, so every data frame queued before
the reply arrives before it. Clients connect with ``max_queue=None``: the ``websockets`` client
stops reading while its bounded queue is full, and would then wait ``close_timeout`` (10 s) for
the server's close frame when a test leaves with frames unread.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
import yaml
from websockets.asyncio.client import ClientConnection

from monitor.config import config_from_dict, load_config, parse_duration
from simulator import Simulator
from simulator.market import FUNDING_INTERVAL_MS
from simulator.server import MINIMAL_BASE_CONFIG, serve_forever

REPO = Path(__file__).parent.parent

AGG_TRADE_KEYS = {"e", "E", "s", "a", "p", "q", "nq", "f", "l", "T", "m"}
SPOT_AGG_TRADE_KEYS = {"e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"}
MARK_PRICE_KEYS = {"e", "E", "s", "p", "ap", "i", "P", "r", "T"}


# -- helpers shared by the test_simulator_* files -----------------------------------------------
def connect(url: str) -> Any:
    """``websockets.connect`` with an unbounded queue (see the module docstring)."""
    return websockets.connect(url, max_queue=None)


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> Any:
    return orjson.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_until(
    ws: ClientConnection, done: Callable[[list[Any]], bool], timeout: float = 5.0
) -> list[Any]:
    """Frames (decoded) until ``done(frames)`` holds; fails after ``timeout`` seconds."""
    frames: list[Any] = []
    async with asyncio.timeout(timeout):
        while not done(frames):
            frames.append(orjson.loads(await ws.recv()))
    return frames


async def request(ws: ClientConnection, message: dict[str, Any]) -> tuple[Any, list[Any]]:
    """Send a control message; return its reply and the data frames that came before it."""
    await ws.send(orjson.dumps(message).decode())
    frames = await recv_until(ws, lambda fs: bool(fs) and _is_reply(fs[-1], message.get("id")))
    return frames[-1], frames[:-1]


def _is_reply(frame: Any, rid: Any) -> bool:
    is_reply = isinstance(frame, dict) and ("result" in frame or "error" in frame)
    return is_reply and frame["id"] == rid


def count(frames: list[Any], event: str) -> int:
    return sum(1 for f in frames if f.get("data", f).get("e") == event)


def of_stream(frames: list[Any], stream: str) -> list[Any]:
    return [f["data"] for f in frames if f.get("stream") == stream]


def assert_agg_trade(data: dict[str, Any], symbol: str, spot: bool = False) -> None:
    assert set(data) == (SPOT_AGG_TRADE_KEYS if spot else AGG_TRADE_KEYS)
    assert data["e"] == "aggTrade" and data["s"] == symbol
    for key in ("p", "q") if spot else ("p", "q", "nq"):
        assert isinstance(data[key], str) and float(data[key]) > 0
    for key in ("E", "a", "f", "l", "T"):
        assert type(data[key]) is int
    assert type(data["m"]) is bool
    assert data["T"] <= data["E"] and data["f"] <= data["l"]


def assert_mark_price(data: dict[str, Any], symbol: str) -> None:
    assert set(data) == MARK_PRICE_KEYS
    assert data["e"] == "markPriceUpdate" and data["s"] == symbol
    for key in ("p", "ap", "i", "P", "r"):
        assert isinstance(data[key], str)
        float(data[key])
    assert type(data["E"]) is int and data["E"] % 1000 == 0
    assert type(data["T"]) is int and data["T"] % FUNDING_INTERVAL_MS == 0
    assert abs(float(data["r"])) < 0.01


@pytest.fixture
async def sim(start_simulator: Any) -> Simulator:
    return await start_simulator(speed=5.0)


# -- USDⓈ-M /market ---------------------------------------------------------------------------
async def test_combined_stream_delivers_exact_payloads(sim: Simulator) -> None:
    url = f"{sim.base_ws}/market/stream?streams=btcusdt@aggTrade/btcusdt@markPrice@1s"
    async with connect(url) as ws:
        frames = await recv_until(
            ws, lambda fs: count(fs, "markPriceUpdate") >= 2 and count(fs, "aggTrade") >= 5
        )
    for frame in frames:
        assert set(frame) == {"stream", "data"}
        if frame["stream"] == "btcusdt@aggTrade":
            assert_agg_trade(frame["data"], "BTCUSDT")
        else:
            assert frame["stream"] == "btcusdt@markPrice@1s"
            assert_mark_price(frame["data"], "BTCUSDT")
    trades = of_stream(frames, "btcusdt@aggTrade")
    assert [t["a"] for t in trades] == list(range(trades[0]["a"], trades[0]["a"] + len(trades)))
    assert len(trades[0]["p"].split(".")[1]) == 2  # "78000.10", as USDⓈ-M prints BTC


async def test_raw_path_delivers_bare_payloads(sim: Simulator) -> None:
    url = f"{sim.base_ws}/market/ws/btcusdt@aggTrade/ethusdt@markPrice@1s"
    async with connect(url) as ws:
        frames = await recv_until(
            ws, lambda fs: count(fs, "markPriceUpdate") >= 1 and count(fs, "aggTrade") >= 3
        )
    for frame in frames:
        assert "stream" not in frame
        if frame["e"] == "aggTrade":
            assert_agg_trade(frame, "BTCUSDT")
        else:
            assert_mark_price(frame, "ETHUSDT")


async def test_subscribe_list_unsubscribe(sim: Simulator) -> None:
    async with connect(f"{sim.base_ws}/market/ws") as ws:
        reply, before = await request(
            ws, {"method": "SUBSCRIBE", "params": ["ethusdt@aggTrade"], "id": 1}
        )
        assert reply == {"result": None, "id": 1}
        assert before == []  # nothing was subscribed before
        frames = await recv_until(ws, lambda fs: len(fs) >= 3)
        for frame in frames:
            assert_agg_trade(frame, "ETHUSDT")
        reply, _ = await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 2})
        assert reply == {"result": ["ethusdt@aggTrade"], "id": 2}
        reply, _ = await request(
            ws, {"method": "UNSUBSCRIBE", "params": ["ethusdt@aggTrade"], "id": 3}
        )
        assert reply == {"result": None, "id": 3}
        reply, between = await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 4})
        assert reply == {"result": [], "id": 4}
        assert between == []  # nothing after the unsubscribe was acknowledged


async def test_set_property_combined_switches_to_envelopes(sim: Simulator) -> None:
    async with connect(f"{sim.base_ws}/market/ws/btcusdt@aggTrade") as ws:
        reply, _ = await request(ws, {"method": "GET_PROPERTY", "params": ["combined"], "id": 1})
        assert reply == {"result": False, "id": 1}
        reply, _ = await request(
            ws, {"method": "SET_PROPERTY", "params": ["combined", True], "id": 2}
        )
        assert reply == {"result": None, "id": 2}
        frames = await recv_until(ws, lambda fs: len(fs) >= 2)
        assert all(f["stream"] == "btcusdt@aggTrade" for f in frames)
        reply, _ = await request(ws, {"method": "SET_PROPERTY", "params": ["combined", 1], "id": 3})
        assert reply["error"]["code"] == 1


async def test_bad_control_messages_get_error_frames_and_socket_stays_open(
    sim: Simulator,
) -> None:
    async with connect(f"{sim.base_ws}/market/ws") as ws:
        await ws.send("{not json")
        reply = await recv_json(ws)
        assert reply["error"]["code"] == 3 and reply["error"]["msg"].startswith("Invalid JSON")
        assert reply["id"] is None
        bad: list[tuple[Any, Any]] = [
            ({"method": "DANCE", "id": 5}, 5),
            ({"method": "SUBSCRIBE", "params": "btcusdt@aggTrade", "id": 6}, 6),
            ({"method": "SUBSCRIBE", "id": 7}, 7),
            ({"params": [], "id": 8}, 8),
            ({"method": "SUBSCRIBE", "params": [], "id": -1}, None),
            ([1, 2], None),
        ]
        for message, rid in bad:
            await ws.send(orjson.dumps(message).decode())
            reply = await recv_json(ws)
            assert reply["error"]["code"] == 2, message
            assert reply["error"]["msg"].startswith("Invalid request"), message
            assert reply["id"] == rid
        await ws.send(b"\x00binary")
        assert (await recv_json(ws))["error"]["code"] == 3
        reply, _ = await request(
            ws, {"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 9}
        )
        assert reply == {"result": None, "id": 9}
        frame = await recv_json(ws)
        assert_agg_trade(frame, "BTCUSDT")


async def test_streams_on_the_wrong_socket_stay_silent(sim: Simulator) -> None:
    """Market streams only on /market, books only on /public (and the retired root paths);
    a socket on the wrong path accepts the subscription and then delivers nothing."""
    market_streams = "btcusdt@aggTrade/btcusdt@markPrice@1s/btcusdt@forceOrder"
    silent_paths = [
        f"/public/stream?streams={market_streams}",
        "/public/ws/btcusdt@aggTrade",
        f"/stream?streams={market_streams}",
        "/ws/btcusdt@aggTrade",
        "/market/stream?streams=btcusdt@depth@100ms/btcusdt@bookTicker",
        "/spot/stream?streams=btcusdt@markPrice@1s/btcusdt@forceOrder",
    ]
    busy_url = f"{sim.base_ws}/market/stream?streams={market_streams}"
    silent = [await connect(sim.base_ws + path) for path in silent_paths]
    try:
        async with connect(busy_url) as busy:
            frames = await recv_until(
                busy, lambda fs: len(fs) >= 30 and count(fs, "markPriceUpdate") >= 2
            )
            assert len(frames) >= 30
            for rid, ws in enumerate(silent):
                # The reply is a barrier: any data frame sent earlier would come before it.
                reply, before = await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": rid})
                assert before == [], silent_paths[rid]
                assert len(reply["result"]) >= 1
    finally:
        for ws in silent:
            await ws.close()


async def test_public_spot_and_legacy_paths_carry_books(sim: Simulator) -> None:
    for path, spot in (
        ("/public/stream?streams=ethusdt@depth@100ms/ethusdt@bookTicker", False),
        ("/stream?streams=ethusdt@depth@100ms/ethusdt@bookTicker", False),  # retired root path
        ("/spot/stream?streams=ethusdt@depth@100ms/ethusdt@bookTicker", True),
    ):
        async with connect(sim.base_ws + path) as ws:
            frames = await recv_until(ws, lambda fs: count(fs, "depthUpdate") >= 2 and len(fs) >= 4)
        tickers = of_stream(frames, "ethusdt@bookTicker")
        assert tickers, path
        for data in tickers:
            keys = {"u", "s", "b", "B", "a", "A"} | (set() if spot else {"e", "E", "T"})
            assert set(data) == keys and data["s"] == "ETHUSDT"
            assert float(data["b"]) < float(data["a"])
        for data in of_stream(frames, "ethusdt@depth@100ms"):
            keys = {"e", "E", "s", "U", "u", "b", "a"} | (set() if spot else {"T", "pu"})
            assert set(data) == keys and data["e"] == "depthUpdate"


async def test_spot_trade_stream_splits_each_aggregate_into_its_fills(sim: Simulator) -> None:
    url = f"{sim.base_ws}/spot/stream?streams=btcusdt@aggTrade/btcusdt@trade"
    async with connect(url) as ws:
        frames = await recv_until(ws, lambda fs: len(of_stream(fs, "btcusdt@aggTrade")) >= 10)
    aggs = of_stream(frames, "btcusdt@aggTrade")
    fills = {t["t"]: t for t in of_stream(frames, "btcusdt@trade")}
    for agg in aggs[:-1]:  # the last aggregate's fills may still be on their way
        assert_agg_trade(agg, "BTCUSDT", spot=True)
        assert len(agg["p"].split(".")[1]) == 8  # spot prints 8 decimals
        parts = [fills[i] for i in range(agg["f"], agg["l"] + 1)]
        assert {p["p"] for p in parts} == {agg["p"]}
        assert all(p["m"] == agg["m"] and p["T"] == agg["T"] for p in parts)
        assert abs(sum(float(p["q"]) for p in parts) - float(agg["q"])) < 1e-9


async def test_speed_compresses_event_time() -> None:
    simulator = Simulator(speed=10.0)
    await simulator.start()
    try:
        url = f"{simulator.base_ws}/market/ws/btcusdt@aggTrade/btcusdt@markPrice@1s"
        async with connect(url) as ws:
            first_e = (await recv_json(ws))["E"]
            first_wall = time.monotonic()
            last_e, last_wall = first_e, first_wall
            while last_wall - first_wall < 1.5:
                last_e = (await recv_json(ws))["E"]
                last_wall = time.monotonic()
    finally:
        await simulator.stop()
    ratio = (last_e - first_e) / ((last_wall - first_wall) * 1000)
    assert 5 <= ratio <= 20, ratio


async def test_scenario_clock_starts_with_the_first_client_of_any_venue() -> None:
    simulator = Simulator(speed=5.0)
    await simulator.start()
    try:
        assert simulator.model is None
        async with connect(f"{simulator.base_ws}/coinbase") as ws:
            await ws.send('{"type":"subscribe","channel":"heartbeats"}')
            await recv_json(ws)
        assert simulator.model is not None
        assert simulator.model.phase_at(simulator.model.start_ms + 1) == "calm"
    finally:
        await simulator.stop()


# -- config ---------------------------------------------------------------------------------
async def test_write_config_points_every_venue_at_the_simulator(
    sim: Simulator, tmp_path: Path
) -> None:
    out = tmp_path / "sim.yaml"
    base_path = REPO / "config.yaml"
    sim.write_config(out, base_config_path=base_path)
    text = out.read_text()
    assert text.startswith("# Written by `tapewatch simulate`")
    assert str(sim.port) in text.splitlines()[0]
    written = yaml.safe_load(text)
    base = yaml.safe_load(base_path.read_text())
    p = sim.port
    assert written["venues"] == {
        "binance_spot": {"ws": f"ws://127.0.0.1:{p}/spot", "rest": f"http://127.0.0.1:{p}/spot"},
        "binance_usdm": {
            "market_ws": f"ws://127.0.0.1:{p}/market",
            "public_ws": f"ws://127.0.0.1:{p}/public",
            "rest": f"http://127.0.0.1:{p}",
        },
        "coinbase": {
            "ws": f"ws://127.0.0.1:{p}/coinbase",
            "rest": f"http://127.0.0.1:{p}/coinbase",
        },
    }
    assert written["assets"] == {
        "BTC": {"binance_spot": "BTCUSDT", "binance_usdm": "BTCUSDT", "coinbase": "BTC-USD"},
        "ETH": {"binance_spot": "ETHUSDT", "binance_usdm": "ETHUSDT", "coinbase": "ETH-USD"},
    }
    assert written["assets"] == MINIMAL_BASE_CONFIG["assets"]
    for key in ("mqtt", "log_level"):
        assert written[key] == base[key], key
    # Its own instance and state: a real daemon on the base config never restores its state.
    assert written["instance"] == f"{base['instance']}-sim"
    assert written["state"] == {**base["state"], "dir": f"{base['state']['dir']}/sim"}
    # REST polls keep the shipped cadence in event time: at 5x, a fifth of it in wall time.
    for key, value in base["collector"].items():
        if key.endswith("_poll"):
            want = parse_duration(value) / sim.speed
            assert parse_duration(written["collector"][key]) == pytest.approx(want, abs=1e-3), key
        else:
            assert written["collector"][key] == value, key
    assert written["signals"]["flow_window"] == "30s"
    assert written["signals"]["bucket"] == base["signals"]["bucket"]
    assert written["regimes"][0]["name"] == "seller_dominance"


@pytest.mark.parametrize(
    ("scenario", "speed", "factor"),
    [("sell_wave", 40.0, 40.0), ("tour", 40.0, 40.0), ("calm", 1.0, 1.0), ("calm", 0.5, 1.0)],
)
async def test_written_config_widens_the_event_time_bounds_by_the_speed(
    start_simulator: Any, tmp_path: Path, scenario: str, speed: float, factor: float
) -> None:
    """At 40x the shipped bounds on event time (5 s ahead, 15 s of feed silence, 10 s of
    premium age) are well under a second of wall time: a written config keeps each the same
    in wall time, never narrower. The sockets' silence timeout is wall time already."""
    simulator = await start_simulator(scenario=scenario, speed=speed)
    out = tmp_path / "sim.yaml"
    simulator.write_config(out, base_config_path=REPO / "config.yaml")
    written, base = load_config(out, env={}), load_config(REPO / "config.yaml", env={})
    assert written.guards.max_ahead == base.guards.max_ahead * factor
    assert written.signals.feed_silence == base.signals.feed_silence * factor
    assert written.signals.premium_max_age == base.signals.premium_max_age * factor
    assert written.collector.silence_timeout == base.collector.silence_timeout


async def test_a_written_config_watches_only_the_simulated_assets(start_simulator: Any) -> None:
    """A base asset the simulator does not serve would only fail, symbol by symbol."""
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    base["assets"]["SOL"] = {"binance_spot": "SOLUSDT", "binance_usdm": "SOLUSDT"}
    simulator = await start_simulator(symbols={"BTCUSDT": 78_000.0})
    assert list(simulator.config_for(base)["assets"]) == ["BTC"]
    config_from_dict(simulator.config_for(base), env={})  # and it is a valid config


async def test_a_narrative_needs_a_base_config_with_rules(
    start_simulator: Any, tmp_path: Path
) -> None:
    """A seed narrative is there to show the config's rules; without any, say so."""
    simulator = await start_simulator(scenario="distribution")
    out = tmp_path / "sim.yaml"
    with pytest.raises(ValueError, match="has none: pass --config"):
        simulator.write_config(out, base_config_path=tmp_path / "missing.yaml")
    assert not out.exists()
    simulator.write_config(out, base_config_path=REPO / "config.yaml")
    assert [r["name"] for r in yaml.safe_load(out.read_text())["regimes"]][-1] == (
        "spot_led_recovery"
    )


async def test_urls_built_the_way_tapewatch_builds_them_answer(sim: Simulator) -> None:
    """``{binance_spot.ws}/stream?streams=``, ``{binance_usdm.market_ws}/stream?streams=``,
    ``{coinbase.ws}`` (then subscribe): all reach the simulator's venues."""
    venues = sim.config_overrides()["venues"]
    spot = f"{venues['binance_spot']['ws']}/stream?streams=btcusdt@aggTrade"
    market = f"{venues['binance_usdm']['market_ws']}/stream?streams=btcusdt@aggTrade"
    public = f"{venues['binance_usdm']['public_ws']}/stream?streams=btcusdt@bookTicker"
    for url, stream in (
        (spot, "btcusdt@aggTrade"),
        (market, "btcusdt@aggTrade"),
        (public, "btcusdt@bookTicker"),
    ):
        async with connect(url) as ws:
            assert (await recv_json(ws))["stream"] == stream
    async with connect(venues["coinbase"]["ws"]) as ws:
        await ws.send('{"type":"subscribe","product_ids":["BTC-USD"],"channel":"market_trades"}')
        assert (await recv_json(ws))["channel"] == "market_trades"


class _AnnouncingSimulator(Simulator):
    """Tells the test when ``start()`` returned, so it needs no sleep to wait for it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.started = asyncio.Event()

    async def start(self) -> None:
        await super().start()
        self.started.set()


async def test_serve_forever_prints_writes_and_stops_on_cancel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # write_config's default base is ./config.yaml
    simulator = _AnnouncingSimulator(scenario="calm", speed=2.0)
    out = tmp_path / "sim.yaml"
    task = asyncio.create_task(serve_forever(simulator, str(out)))
    await asyncio.wait_for(simulator.started.wait(), 5)
    port = simulator.port
    line = capsys.readouterr().out.strip()
    assert line == f"simulator listening on ws://127.0.0.1:{port} (scenario calm, speed 2)"
    assert f":{port}/market" in out.read_text()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(OSError):
        await websockets.connect(f"ws://127.0.0.1:{port}/market/ws")


def test_simulate_exits_with_the_reason_when_it_cannot_write_the_config(tmp_path: Path) -> None:
    args = ["--scenario", "tour", "--write-config", "sim.yaml", "--config", "none.yaml"]
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "simulate", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "scenario tour plays a seed narrative" in done.stderr and "pass --config" in done.stderr
