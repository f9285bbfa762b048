"""Every injected fault, seen from the client side exactly as documented, and counted in
``Simulator.fault_counts`` under its specific key.

Exact counts: a test reads until it has seen enough, then stops the simulator while still
reading; the server flushes every queued frame before closing, so what the client received is
everything the counters counted.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from simulator import Simulator
from simulator.binance_wire import MALFORMED_KINDS
from simulator.faults import StreamFaults
from streams import binance, coinbase
from streams.book import BookSync
from streams.events import BINANCE_SPOT, BINANCE_USDM, DepthDiff
from streams.venues import BY_NAME
from tests.test_simulator import assert_agg_trade, connect, recv_json

Received = list[tuple[float, Any]]  # (monotonic arrival time, decoded frame)


async def drain(ws: ClientConnection, into: Received) -> None:
    """Collect frames until the server closes the socket."""
    try:
        while True:
            raw = await asyncio.wait_for(ws.recv(), 10.0)
            into.append((time.monotonic(), _loads(raw)))
    except ConnectionClosed:
        return


async def read_until(
    sockets: list[ClientConnection], done: Callable[[list[Received]], bool], timeout: float
) -> list[Received]:
    """Read every socket into its own list until ``done`` holds (checked as frames arrive)."""
    got: list[Received] = [[] for _ in sockets]
    satisfied = asyncio.Event()

    async def reader(i: int, ws: ClientConnection) -> None:
        while True:
            got[i].append((time.monotonic(), _loads(await ws.recv())))
            if done(got):
                satisfied.set()

    tasks = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(sockets)]
    try:
        await asyncio.wait_for(satisfied.wait(), timeout)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return got


async def finish(sim: Simulator, sockets: list[ClientConnection], got: list[Received]) -> None:
    """Stop the simulator while draining every socket (flush, then close)."""
    await asyncio.gather(
        sim.stop(), *(drain(ws, into) for ws, into in zip(sockets, got, strict=True))
    )


def data_of(frames: Received, stream: str) -> list[tuple[float, Any]]:
    return [(t, f["data"]) for t, f in frames if f.get("stream") == stream]


# -- drop -----------------------------------------------------------------------------------------
async def test_drop_cuts_every_socket_and_rest_backfills_the_missed_trades() -> None:
    sim = Simulator(speed=5.0, faults=frozenset({"drop"}), fault_every=1.0)
    await sim.start()
    try:
        url = f"{sim.base_ws}/market/stream?streams=btcusdt@aggTrade"
        seen: list[int] = []
        async with connect(url) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    seen.append((await recv_json(ws, timeout=5.0))["data"]["a"])
            assert closed.value.rcvd is None  # abrupt: no close frame, like a network failure
        assert sim.fault_counts["drop"] >= 1
        rest = f"{sim.base_http}/fapi/v1/aggTrades?symbol=BTCUSDT"
        async with aiohttp.ClientSession() as http:
            # Trades keep being generated while nobody listens: wait until a second of event
            # time (~20 BTCUSDT trades) has passed on the server's clock.
            dropped_at = sim.now_ms()
            async with asyncio.timeout(5):
                while True:
                    async with http.get(f"{sim.base_http}/fapi/v1/time") as resp:
                        if (await resp.json())["serverTime"] > dropped_at + 1000:
                            break
            async with connect(url) as ws:
                first_after = (await recv_json(ws))["data"]
            assert_agg_trade(first_after, "BTCUSDT")
            assert first_after["a"] > seen[-1] + 1  # the client sees the id jump
            missed: list[int] = []
            next_id = seen[-1] + 1
            while next_id < first_after["a"]:  # page with fromId, as a collector would
                async with http.get(f"{rest}&fromId={next_id}&limit=7") as resp:
                    page = [row["a"] for row in await resp.json()]
                missed += page
                next_id = page[-1] + 1
        missed = [a for a in missed if a < first_after["a"]]
        assert missed == list(range(seen[-1] + 1, first_after["a"]))
    finally:
        await sim.stop()


# -- malformed ------------------------------------------------------------------------------------
def classify(data: Any, combined: bool) -> str | None:
    """The malformed kind of a decoded frame; None for a valid one."""
    if data is None:
        return "not_json"
    if combined:
        assert set(data) == {"stream", "data"}
        data = data["data"]
    if data.get("e") != "aggTrade":
        return "unknown_event"
    if "p" not in data:
        return "missing_field"
    if not isinstance(data["p"], str):
        return "wrong_type_price"
    if not isinstance(data["m"], bool):
        return "wrong_type_flag"
    price = float(data["p"])
    if math.isnan(price):
        return "nan_price"
    if price < 0:
        return "negative_price"
    return None


async def test_malformed_fault_delivers_every_kind_and_counts_them() -> None:
    sim = Simulator(speed=5.0, faults=frozenset({"malformed"}), fault_every=0.1)
    await sim.start()
    urls = [  # combined and raw USDⓈ-M sockets, and a spot socket
        f"{sim.base_ws}/market/stream?streams=btcusdt@aggTrade",
        f"{sim.base_ws}/market/ws/btcusdt@aggTrade",
        f"{sim.base_ws}/spot/stream?streams=btcusdt@aggTrade",
    ]
    combined = (True, False, True)
    sockets = [await connect(url) for url in urls]

    def kinds(frames: Received, is_combined: bool) -> set[str | None]:
        return {classify(f, is_combined) for _, f in frames}

    try:
        got = await read_until(
            sockets,
            lambda g: all(kinds(g[i], combined[i]) >= {*MALFORMED_KINDS, None} for i in range(3)),
            timeout=10.0,
        )
        await finish(sim, sockets, got)
    finally:
        await sim.stop()
    counts: Counter[str | None] = Counter()
    for frames, is_combined in zip(got, combined, strict=True):
        counts += Counter(classify(f, is_combined) for _, f in frames)
    assert counts[None] > 0  # valid frames kept flowing between the bad ones
    for kind in MALFORMED_KINDS:
        assert counts[kind] == sim.fault_counts[f"malformed:{kind}"] > 0, kind
    assert sum(counts[k] for k in MALFORMED_KINDS) == sim.fault_counts["malformed"]


def _loads(raw: str | bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


# -- stall ----------------------------------------------------------------------------------------
def silences(times: list[float], longer_than: float) -> int:
    return sum(1 for a, b in itertools.pairwise(times) if b - a > longer_than)


async def test_stall_silences_one_stream_while_the_rest_flows() -> None:
    sim = Simulator(speed=5.0, faults=frozenset({"stall"}), fault_every=0.3, stall_seconds=1.0)
    await sim.start()
    depth = "btcusdt@depth@100ms"
    books = "btcusdt@depth@100ms/ethusdt@depth@100ms"
    sockets = [
        await connect(f"{sim.base_ws}/spot/stream?streams={books}/btcusdt@aggTrade"),
        await connect(f"{sim.base_ws}/public/stream?streams={books}"),
        await connect(f"{sim.base_ws}/coinbase"),
    ]
    for raw in coinbase.subscribe_messages(["BTC-USD"], ("heartbeats", "ticker")):
        await sockets[2].send(raw)

    def resumed(got: list[Received]) -> bool:
        spot = [t for t, _ in data_of(got[0], depth)]
        usdm = [t for t, _ in data_of(got[1], depth)]
        beats = [t for t, f in got[2] if f.get("channel") == "heartbeats"]
        return all(silences(ts, 0.8) >= 1 and ts[-1] - ts[0] > 1.2 for ts in (spot, usdm, beats))

    try:
        got = await read_until(sockets, resumed, timeout=8.0)
        await finish(sim, sockets, got)
    finally:
        await sim.stop()
    for i, venue in ((0, BINANCE_SPOT), (1, BINANCE_USDM)):
        btc = data_of(got[i], depth)
        eth = [t for t, _ in data_of(got[i], "ethusdt@depth@100ms")]
        stalls = silences([t for t, _ in btc], 0.8)
        assert stalls >= 1 and silences(eth, 0.5) == 0  # the other symbol kept flowing
        # Updates made during the stall never arrive: the resumed stream has a hole.
        holes = sum(
            1
            for (_, a), (_, b) in itertools.pairwise(btc)
            if (b["U"] != a["u"] + 1 if venue == BINANCE_SPOT else b["pu"] != a["u"])
        )
        assert holes == stalls
        key = f"stall:{venue}:{depth}"
        assert stalls <= sim.fault_counts[key] <= stalls + 1, (key, sim.fault_counts)
    trades = [t for t, _ in data_of(got[0], "btcusdt@aggTrade")]
    assert silences(trades, 0.5) == 0  # same socket, other stream: not stalled
    beats = [f for _, f in got[2] if f.get("channel") == "heartbeats"]
    tickers = [t for t, f in got[2] if f.get("channel") == "ticker"]
    assert silences([t for t, f in got[2] if f.get("channel") == "heartbeats"], 0.8) >= 1
    assert silences(tickers, 0.6) == 0  # other channels continue
    counters = [f["events"][0]["heartbeat_counter"] for f in beats]
    assert any(b - a > 1 for a, b in itertools.pairwise(counters))  # counter jumped
    assert sim.fault_counts["stall:coinbase:heartbeats"] >= 1


# -- skip_depth -----------------------------------------------------------------------------------
async def test_skip_depth_breaks_only_the_fault_symbols_continuity() -> None:
    sim = Simulator(speed=5.0, faults=frozenset({"skip_depth"}), fault_every=0.25)
    await sim.start()
    books = "btcusdt@depth@100ms/ethusdt@depth@100ms"
    sockets = [
        await connect(f"{sim.base_ws}/spot/stream?streams={books}"),
        await connect(f"{sim.base_ws}/public/stream?streams={books}"),
        await connect(f"{sim.base_ws}/coinbase"),
    ]
    await sockets[2].send(
        orjson.dumps(
            {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": "level2"}
        ).decode()
    )

    def holes(frames: Received, stream: str, futures: bool) -> int:
        diffs = [d for _, d in data_of(frames, stream)]
        key = "pu" if futures else "U"
        return sum(
            1 for a, b in itertools.pairwise(diffs) if b[key] != a["u"] + (0 if futures else 1)
        )

    def seq_holes(frames: Received) -> int:
        tracker = coinbase.SequenceTracker()
        for _, f in frames:
            tracker.observe(f)
        return tracker.gaps

    try:
        got = await read_until(
            sockets,
            lambda g: (
                holes(g[0], "btcusdt@depth@100ms", False) >= 2
                and holes(g[1], "btcusdt@depth@100ms", True) >= 2
                and seq_holes(g[2]) >= 2
            ),
            timeout=8.0,
        )
        await finish(sim, sockets, got)
    finally:
        await sim.stop()
    counts = sim.fault_counts

    def matches(seen: int, counted: int) -> bool:
        # A skip of the very last update before the stop is counted but has no later frame
        # to reveal it.
        return counted - 1 <= seen <= counted

    spot, usdm = "skip_depth:binance-spot:BTCUSDT", "skip_depth:binance-usdm:BTCUSDT"
    assert matches(holes(got[0], "btcusdt@depth@100ms", False), counts[spot])
    assert matches(holes(got[1], "btcusdt@depth@100ms", True), counts[usdm])
    assert holes(got[0], "ethusdt@depth@100ms", False) == 0
    assert holes(got[1], "ethusdt@depth@100ms", True) == 0
    missing = seq_holes(got[2])
    assert missing >= 2 and matches(missing, counts["skip_depth:coinbase:BTC-USD"])
    # What went missing on Coinbase was a BTC-USD book update (one every 100 ms of event time,
    # so a 200 ms step), never an ETH-USD one.
    steps: dict[str, Counter[int]] = {"BTC-USD": Counter(), "ETH-USD": Counter()}
    last: dict[str, int] = {}
    for _, frame in got[2]:
        if frame["channel"] == "l2_data" and frame["events"][0]["type"] == "update":
            event = frame["events"][0]
            at = coinbase.rfc3339_ms(event["updates"][0]["event_time"])
            if event["product_id"] in last:
                steps[event["product_id"]][at - last[event["product_id"]]] += 1
            last[event["product_id"]] = at
    assert set(steps["ETH-USD"]) == {100}
    # A skip just before the stop shows as a sequence hole (a later ETH frame reveals it) but
    # has no later BTC-USD update to show the 200 ms step.
    assert set(steps["BTC-USD"]) == {100, 200} and matches(steps["BTC-USD"][200], missing)
    assert counts["skip_depth"] == sum(
        counts[f"skip_depth:{v}"]
        for v in ("binance-spot:BTCUSDT", "binance-usdm:BTCUSDT", "coinbase:BTC-USD")
    )


async def test_skip_depth_then_rest_resync_recovers_the_book() -> None:
    """The client sees the gap on BTCUSDT, refetches the snapshot and is in sync again."""
    sim = Simulator(speed=5.0, faults=frozenset({"skip_depth"}), fault_every=0.5, seed=9)
    await sim.start()
    sync = BookSync(BINANCE_SPOT, "BTCUSDT", BY_NAME[BINANCE_SPOT].book_rule)
    gaps = 0
    try:
        async with (
            connect(f"{sim.base_ws}/spot/stream?streams=btcusdt@depth@100ms") as ws,
            aiohttp.ClientSession() as http,
        ):
            async with asyncio.timeout(8):
                while gaps < 2 or not sync.synced:
                    for event in binance.parse_frame(BINANCE_SPOT, await ws.recv(), 0):
                        assert isinstance(event, DepthDiff)
                        result = sync.on_diff(event)
                        gaps += result.gap
                        if result.needs_snapshot:
                            url = f"{sim.base_http}/spot/api/v3/depth?symbol=BTCUSDT&limit=1000"
                            async with http.get(url) as resp:
                                body = await resp.text()
                            (snap,) = binance.parse_rest(
                                BINANCE_SPOT, "/api/v3/depth?symbol=BTCUSDT", body, 0
                            )
                            sync.on_snapshot(snap)
    finally:
        await sim.stop()
    assert gaps >= 2 and sync.synced and sync.counters()["resyncs"] >= 1


# -- duplicate and reorder ------------------------------------------------------------------------
def id_steps(ids: list[int]) -> Counter[int]:
    return Counter(b - a for a, b in itertools.pairwise(ids))


async def test_duplicate_and_reorder_of_the_fault_symbols_trades() -> None:
    sim = Simulator(speed=5.0, faults=frozenset({"duplicate", "reorder"}), fault_every=0.25)
    await sim.start()
    trades = "btcusdt@aggTrade/ethusdt@aggTrade"
    sockets = [
        await connect(f"{sim.base_ws}/market/stream?streams={trades}"),
        await connect(f"{sim.base_ws}/spot/stream?streams={trades}"),
        await connect(f"{sim.base_ws}/coinbase"),
    ]
    await sockets[2].send(
        orjson.dumps(
            {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": "market_trades"}
        ).decode()
    )

    def ids(frames: Received, stream: str) -> list[int]:
        return [d["a"] for _, d in data_of(frames, stream)]

    def seqs(frames: Received) -> list[int]:
        return [f["sequence_num"] for _, f in frames]

    def enough(g: list[Received]) -> bool:
        binance_ok = all(
            id_steps(ids(g[i], "btcusdt@aggTrade"))[0] >= 2
            and id_steps(ids(g[i], "btcusdt@aggTrade"))[-1] >= 2
            for i in (0, 1)
        )
        steps = id_steps(seqs(g[2]))
        return binance_ok and steps[0] >= 2 and steps[-1] >= 2

    try:
        got = await read_until(sockets, enough, timeout=10.0)
        await finish(sim, sockets, got)
    finally:
        await sim.stop()
    counts = sim.fault_counts
    for i, venue in ((0, BINANCE_USDM), (1, BINANCE_SPOT)):
        steps = id_steps(ids(got[i], "btcusdt@aggTrade"))
        # A duplicate repeats an id (step 0); a swap of a+1 and a+2 reads a, a+2, a+1, a+3:
        # steps +2, -1, +2 (the last one missing if the stream ended on the swap).
        assert set(steps) <= {0, 1, 2, -1}
        assert steps[0] == counts[f"duplicate:{venue}:btcusdt@aggTrade"]
        assert 2 * steps[-1] - 1 <= steps[2] <= 2 * steps[-1]
        reordered = counts[f"reorder:{venue}:btcusdt@aggTrade"]
        assert reordered - 1 <= steps[-1] <= reordered  # one may be held when the server stopped
        assert set(id_steps(ids(got[i], "ethusdt@aggTrade"))) == {1}
    # Coinbase: a duplicate repeats the previous sequence_num; a swapped frame arrives after a
    # higher number (ETH-USD frames may pass in between). Both only ever on BTC-USD.
    frames = [f for _, f in got[2]]
    repeated = late = 0
    highest, previous = -1, None
    for frame in frames:
        seq = frame["sequence_num"]
        if seq == previous or seq < highest:
            repeated += seq == previous
            late += seq != previous
            assert frame["events"][0]["trades"][0]["product_id"] == "BTC-USD"
        highest, previous = max(highest, seq), seq
    assert repeated == counts["duplicate:coinbase:BTC-USD"]
    reordered = counts["reorder:coinbase:BTC-USD"]
    assert reordered - 1 <= late <= reordered
    # Nothing lost: every number up to the highest arrived (unless one was held at the stop).
    assert len({f["sequence_num"] for f in frames}) in (highest + 1, highest + 1 - reordered + late)


# -- REST 429 / 418 -------------------------------------------------------------------------------
async def poll(
    http: aiohttp.ClientSession, url: str, until: Callable[[int], bool]
) -> list[tuple[int, Any, dict[str, str]]]:
    """Request ``url`` back to back until a status satisfies ``until`` (bounded by 5 s)."""
    seen = []
    async with asyncio.timeout(5):
        while True:
            async with http.get(url) as resp:
                seen.append((resp.status, await resp.json(), dict(resp.headers)))
            if until(seen[-1][0]):
                return seen


async def test_rest_429_answers_the_next_request_once() -> None:
    sim = Simulator(faults=frozenset({"rest_429"}), fault_every=0.2)
    await sim.start()
    try:
        async with aiohttp.ClientSession() as http:
            url = f"{sim.base_http}/fapi/v1/ping"
            seen = await poll(http, url, lambda s: s == 429)
            _status, body, headers = seen[-1]
            assert body["code"] == -1003 and headers["Retry-After"] == "2"
            assert "X-MBX-USED-WEIGHT-1M" in headers
            after = await poll(http, f"{sim.base_http}/spot/api/v3/ping", lambda s: True)
            assert after[-1][0] == 200  # one refusal per injection
        refused = [s for s, _, _ in seen + after if s == 429]
        assert len(refused) == sim.fault_counts["rest_429"]
    finally:
        await sim.stop()


async def test_rest_418_bans_every_request_until_retry_after() -> None:
    # Bans at 0.8 s and 2.4 s (a ban under way is not renewed): 0.6 s of service between.
    sim = Simulator(faults=frozenset({"rest_418"}), fault_every=0.8, retry_after=1)
    await sim.start()
    try:
        async with aiohttp.ClientSession() as http:
            # A weight-0 endpoint: polling it can never run into the weight limit (429).
            url = f"{sim.base_http}/futures/data/takerlongshortRatio?symbol=BTCUSDT&period=5m"
            before = await poll(http, url, lambda s: s == 418)
            banned_at = time.monotonic()
            during = await poll(http, url, lambda s: s == 200)
            lifted_after = time.monotonic() - banned_at
        banned = [r for r in before + during if r[0] == 418]
        assert all(r[1]["code"] == -1003 and r[2]["Retry-After"] == "1" for r in banned)
        assert len(banned) >= 2  # every request during the ban, not just one
        assert 0.5 < lifted_after < 1.5
        assert len(banned) == sim.fault_counts["rest_418"]
    finally:
        await sim.stop()


def test_unknown_fault_and_symbol_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown faults"):
        Simulator(faults=frozenset({"meteor"}))
    with pytest.raises(ValueError, match="fault_symbol"):
        Simulator(fault_symbol="DOGEUSDT")
    assert Simulator(fault_symbol="ETH-USD").fault_symbol == "ETHUSDT"


def test_stream_faults_wait_for_a_reader_and_never_release_to_strangers() -> None:
    counts: Counter[str] = Counter()
    faults = StreamFaults(
        BINANCE_SPOT, "BTCUSDT", "btcusdt@depth@100ms", "btcusdt@aggTrade", counts
    )
    depth, trades = "btcusdt@depth@100ms", "btcusdt@aggTrade"
    faults.armed |= {"skip_depth", "reorder"}
    assert faults.frames(depth, "d1", subscribed=False) == ["d1"]  # nobody reads: stays armed
    assert faults.frames(depth, "d2", subscribed=True) == []
    assert faults.frames(depth, "d3", subscribed=True) == ["d3"]  # one shot
    assert faults.frames("ethusdt@aggTrade", "e1", subscribed=True) == ["e1"]
    assert faults.frames(trades, "t1", subscribed=True) == []  # held back...
    assert faults.frames(trades, "t2", subscribed=True) == ["t2", "t1"]  # ...sent after t2
    faults.armed.add("reorder")
    assert faults.frames(trades, "t3", subscribed=True) == []
    assert faults.frames(trades, "t4", subscribed=False) == ["t4"]  # its reader left: dropped
    assert faults.frames(trades, "t5", subscribed=True) == ["t5"]
    faults.armed.add("duplicate")
    assert faults.frames(trades, "t6", subscribed=True) == ["t6", "t6"]
    assert counts == Counter(
        {
            "skip_depth": 1,
            "skip_depth:binance-spot:BTCUSDT": 1,
            "reorder": 2,
            "reorder:binance-spot:btcusdt@aggTrade": 2,
            "duplicate": 1,
            "duplicate:binance-spot:btcusdt@aggTrade": 1,
        }
    )
