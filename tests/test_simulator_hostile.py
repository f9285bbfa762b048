"""The ``hostile`` fault seen from a real websocket client: every extra frame is well-formed
(the daemon's own parsers accept it as an event), implausible in exactly one way, follows a real
trade without disturbing the real sequence, is counted exactly, and is never confirmed by REST;
and a dead venue refuses every websocket while the others work.

Exact counts, as in ``test_simulator_faults``: a test reads until it has seen what it waits for,
then stops the simulator while still reading, so what the client received is everything the
counters counted (they count frames written to a socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from simulator import Simulator, binance_wire
from simulator.faults import count_sent
from simulator.hostile import (
    ABSURD_PRICE,
    ABSURD_PRICE150,
    ABSURD_VALUES,
    COINBASE_KINDS,
    FUTURE_TS,
    HOSTILE_KINDS,
    ID_JUMP,
    ID_JUMP50,
    ID_OFFSETS,
    TEN_YEARS_MS,
    TRADE_KINDS,
    UNKNOWN_SYMBOL,
    HostileTrades,
    hostile_agg_trade,
    hostile_market_trades,
)
from simulator.market import TradeTick, assets_from_symbols, venue_specs
from streams import binance, coinbase
from streams.events import BINANCE_SPOT, BINANCE_USDM, COINBASE, DepthDiff, Trade
from tests.test_simulator import AGG_TRADE_KEYS, SPOT_AGG_TRADE_KEYS, assert_agg_trade, connect

KIND_OF_OFFSET = {offset: kind for kind, offset in ID_OFFSETS.items()}
Raw = list[str]


# -- reading raw frames ---------------------------------------------------------------------------
async def read_until(
    sockets: list[ClientConnection], done: Callable[[], bool], on_frame: Callable[[int, str], None]
) -> list[Raw]:
    """Read every socket (raw text, in arrival order) until ``done()`` holds, checked after
    each frame; bounded by a generous timeout for a busy machine."""
    got: list[Raw] = [[] for _ in sockets]
    satisfied = asyncio.Event()

    async def reader(i: int, ws: ClientConnection) -> None:
        while True:
            raw = await ws.recv()
            assert isinstance(raw, str)
            got[i].append(raw)
            on_frame(i, raw)
            if done():
                satisfied.set()

    tasks = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(sockets)]
    try:
        await asyncio.wait_for(satisfied.wait(), 20.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return got


async def finish(
    sim: Simulator,
    sockets: list[ClientConnection],
    got: list[Raw],
    on_frame: Callable[[int, str], None],
) -> None:
    """Stop the simulator while draining every socket: the server flushes what it queued."""

    async def drain(i: int, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                raw = await asyncio.wait_for(ws.recv(), 10.0)
                assert isinstance(raw, str)
                got[i].append(raw)
                on_frame(i, raw)

    await asyncio.gather(sim.stop(), *(drain(i, ws) for i, ws in enumerate(sockets)))


@dataclass
class TradeSplit:
    """One symbol's trades in arrival order, split into the real run (each id one more than the
    last real one) and the extras, each with the real trade it followed."""

    real: list[Trade] = field(default_factory=list)
    extras: list[tuple[Trade, Trade, str]] = field(default_factory=list)  # (extra, before, raw)
    real_after_last_extra: int = 0

    def add(self, trade: Trade, raw: str) -> None:
        if not self.real or trade.trade_id == self.real[-1].trade_id + 1:
            self.real.append(trade)
            self.real_after_last_extra += 1
        else:
            self.extras.append((trade, self.real[-1], raw))
            self.real_after_last_extra = 0

    def kinds(self) -> Counter[str]:
        return Counter(
            KIND_OF_OFFSET.get(extra.trade_id - before.trade_id, "?")
            for extra, before, _ in self.extras
        )


def assert_hostile_trade(kind: str, extra: Trade, before: Trade) -> None:
    """``extra`` is wrong in exactly the way ``kind`` says, and otherwise a copy of ``before``."""
    assert extra.symbol == before.symbol and extra.taker_side == before.taker_side
    assert extra.trade_id == before.trade_id + ID_OFFSETS[kind]
    expected_ts = before.ts_event + (TEN_YEARS_MS if kind == FUTURE_TS else 0)
    assert extra.ts_event == expected_ts
    if kind in ABSURD_VALUES:
        assert extra.price == extra.qty == ABSURD_VALUES[kind]
    else:
        assert (extra.price, extra.qty) == (before.price, before.qty)


# -- the trade kinds, on the schedule -------------------------------------------------------------
async def test_hostile_trades_follow_real_ones_and_leave_the_real_sequence_alone() -> None:
    # One turn of the schedule: every trade kind exactly once, each sent after the next real
    # BTCUSDT trade of each Binance venue (and the time and price kinds on Coinbase BTC-USD).
    sim = Simulator(
        speed=5.0,
        faults=frozenset({"hostile"}),
        fault_every=0.1,
        hostile_kinds=TRADE_KINDS,
        hostile_rounds=1,
    )
    await sim.start()
    venues = (BINANCE_USDM, BINANCE_SPOT, COINBASE)
    sockets = [
        await connect(f"{sim.base_ws}/market/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade"),
        await connect(f"{sim.base_ws}/spot/ws/btcusdt@aggTrade"),  # raw mode
        await connect(f"{sim.base_ws}/coinbase"),
    ]
    for raw in coinbase.subscribe_messages(["BTC-USD", "ETH-USD"], ("market_trades",)):
        await sockets[2].send(raw)
    splits: dict[tuple[str, str], TradeSplit] = {}
    sequence_nums: list[int] = []

    def on_frame(i: int, raw: str) -> None:
        venue = venues[i]
        if venue == COINBASE:
            msg = coinbase.parse_envelope(raw)
            sequence_nums.append(msg["sequence_num"])
            if msg["channel"] != "market_trades" or msg["events"][0]["type"] != "update":
                return  # the snapshot at subscription: the real run starts with the updates
            events = coinbase.events_from(COINBASE, msg, 0)
            trades = sorted(events, key=lambda t: t.trade_id)  # rows arrive newest first
        else:
            trades = binance.parse_frame(venue, raw, 0)
        for trade in trades:
            assert isinstance(trade, Trade)
            splits.setdefault((venue, trade.symbol), TradeSplit()).add(trade, raw)

    def done() -> bool:
        for venue, symbol, kinds in (
            (BINANCE_USDM, "BTCUSDT", TRADE_KINDS),
            (BINANCE_SPOT, "BTCUSDT", TRADE_KINDS),
            (COINBASE, "BTC-USD", COINBASE_KINDS),
        ):
            split = splits.get((venue, symbol))
            if split is None or set(split.kinds()) != set(kinds):
                return False
            if split.real_after_last_extra < 1:
                return False
            if venue != COINBASE:  # the real trade with the id the 50-jump claimed has come
                jump50 = [e for e, b, _ in split.extras if e.trade_id - b.trade_id == 50]
                if split.real[-1].trade_id < jump50[0].trade_id:
                    return False
        return True

    try:
        got = await read_until(sockets, done, on_frame)
        # The frames that arrive meanwhile wait in the clients' queues for finish().
        await check_rest_never_confirms(sim, splits)
        await finish(sim, sockets, got, on_frame)
    finally:
        await sim.stop()

    counts = sim.fault_counts
    for venue, symbol, kinds in (
        (BINANCE_USDM, "BTCUSDT", TRADE_KINDS),
        (BINANCE_SPOT, "BTCUSDT", TRADE_KINDS),
        (COINBASE, "BTC-USD", COINBASE_KINDS),
    ):
        split = splits[(venue, symbol)]
        # Each kind exactly once, in the schedule's order, and counted exactly so.
        seen = [KIND_OF_OFFSET[e.trade_id - b.trade_id] for e, b, _ in split.extras]
        assert seen == [k for k in TRADE_KINDS if k in kinds], (venue, seen)
        for kind in kinds:
            assert counts[f"hostile:{venue}:{kind}"] == 1, (venue, kind, counts)
        # The real sequence is untouched: consecutive ids around every extra frame.
        ids = [t.trade_id for t in split.real]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        for extra, before, raw in split.extras:
            kind = KIND_OF_OFFSET[extra.trade_id - before.trade_id]
            assert_hostile_trade(kind, extra, before)
            position = ids.index(before.trade_id)
            assert position + 1 < len(ids)  # real trades followed it
            if venue != COINBASE:
                data = orjson.loads(raw)
                data = data["data"] if venue == BINANCE_USDM else data  # combined / raw socket
                assert set(data) == (
                    AGG_TRADE_KEYS if venue == BINANCE_USDM else SPOT_AGG_TRADE_KEYS
                )
                assert_agg_trade(data, symbol, spot=venue == BINANCE_SPOT)
                assert data["a"] == extra.trade_id  # f and l moved with it (pure test below)
    # Other symbols never carry hostile frames.
    for venue, symbol in ((BINANCE_USDM, "ETHUSDT"), (COINBASE, "ETH-USD")):
        assert splits[(venue, symbol)].extras == []
    # The Coinbase extra frames took their place in the connection's sequence: no gap.
    assert sequence_nums == list(range(len(sequence_nums)))
    assert counts["hostile"] == 2 * len(TRADE_KINDS) + len(COINBASE_KINDS)
    for kind in TRADE_KINDS:
        assert counts[f"hostile:{kind}"] == 2 + (kind in COINBASE_KINDS)


async def check_rest_never_confirms(
    sim: Simulator, splits: dict[tuple[str, str], TradeSplit]
) -> None:
    """REST ``aggTrades`` (``fromId`` paging, as a collector's backfill pages) serves exactly the
    real trades the stream carried, and none of the extra ids (the 50-jump's id belongs to a
    real, later trade)."""
    paths = {BINANCE_USDM: "/fapi/v1/aggTrades", BINANCE_SPOT: "/spot/api/v3/aggTrades"}
    async with aiohttp.ClientSession() as http:

        async def rows(venue: str, from_id: int, limit: int) -> list[dict[str, Any]]:
            url = f"{sim.base_http}{paths[venue]}?symbol=BTCUSDT&fromId={from_id}&limit={limit}"
            async with http.get(url) as resp:
                assert resp.status == 200, await resp.text()
                return await resp.json()

        for venue in paths:
            split = splits[(venue, "BTCUSDT")]
            real = {t.trade_id: t for t in split.real}
            for extra, before, _ in split.extras:
                found = await rows(venue, extra.trade_id, 5)
                if extra.trade_id - before.trade_id == 50:
                    # REST has the real trade with that id, not the injected one.
                    assert found[0]["a"] == extra.trade_id
                    assert found[0]["T"] == real[extra.trade_id].ts_event > extra.ts_event
                else:
                    assert found == []
            first, last = min(real), max(real)
            served: list[dict[str, Any]] = []
            while not served or served[-1]["a"] < last:
                served += await rows(venue, served[-1]["a"] + 1 if served else first, 1000)
            served = [r for r in served if r["a"] <= last]
            assert [r["a"] for r in served] == list(range(first, last + 1))
            for row in served:
                trade = real[row["a"]]
                assert (row["T"], float(row["p"]), float(row["q"])) == (
                    trade.ts_event,
                    trade.price,
                    trade.qty,
                )


# -- unknown symbols, on demand ------------------------------------------------------------------
async def test_unknown_symbol_burst_reaches_every_trade_and_book_socket() -> None:
    sim = Simulator(speed=5.0, unknown_symbols=3000)  # no schedule: the test injects
    await sim.start()
    spot_streams = "btcusdt@aggTrade/btcusdt@depth@100ms"
    sockets = [
        await connect(f"{sim.base_ws}/spot/stream?streams={spot_streams}"),
        await connect(f"{sim.base_ws}/market/ws/btcusdt@aggTrade"),
        await connect(f"{sim.base_ws}/public/stream?streams=btcusdt@depth@100ms"),
        await connect(f"{sim.base_ws}/market/stream?streams=btcusdt@markPrice@1s"),
    ]
    venues = (BINANCE_SPOT, BINANCE_USDM, BINANCE_USDM, BINANCE_USDM)
    fakes: list[Counter[tuple[str, str]]] = [Counter() for _ in sockets]
    real: list[list[Any]] = [[] for _ in sockets]
    real_at_burst: list[int] = []  # real frames per socket when the burst was sent

    def on_frame(i: int, raw: str) -> None:
        (event,) = binance.parse_frame(venues[i], raw, 0)
        if event.symbol.startswith("FAKE"):
            fakes[i][(type(event).__name__, event.symbol)] += 1
        else:
            real[i].append(event)
        if not real_at_burst and all(real):
            # Every socket is live: the burst reaches all of them, behind what they have read.
            real_at_burst.extend(len(r) for r in real)
            sim.inject_hostile(UNKNOWN_SYMBOL)

    def done() -> bool:
        # The whole burst, and real frames after it on every trade and book socket.
        return bool(real_at_burst) and all(
            sum(fakes[i].values()) == n and len(real[i]) > real_at_burst[i] + 1
            for i, n in enumerate((6000, 3000, 3000))
        )

    try:
        got = await read_until(sockets, done, on_frame)
        await finish(sim, sockets, got, on_frame)
    finally:
        await sim.stop()
    symbols = {f"FAKE{i:04d}USDT" for i in range(1, 3001)}
    assert fakes[0] == Counter({(k, s): 1 for s in symbols for k in ("Trade", "DepthDiff")})
    assert fakes[1] == Counter({("Trade", s): 1 for s in symbols})  # /market: trades only
    assert fakes[2] == Counter({("DepthDiff", s): 1 for s in symbols})  # /public: books only
    assert not fakes[3]  # a socket with neither trades nor books gets nothing
    counts = sim.fault_counts
    assert counts["hostile:binance-spot:unknown_symbol"] == 6000
    assert counts["hostile:binance-usdm:unknown_symbol"] == 6000
    assert counts["hostile:unknown_symbol"] == counts["hostile"] == 12000
    # The real streams went on unchanged through the burst.
    trade_ids = [t.trade_id for t in real[1]]
    assert trade_ids == list(range(trade_ids[0], trade_ids[0] + len(trade_ids)))
    diffs = [d for d in real[2] if isinstance(d, DepthDiff)]
    assert all(b.prev_last_id == a.last_id for a, b in itertools.pairwise(diffs))
    assert {e.symbol for e in real[0]} == {"BTCUSDT"}


# -- dead venue ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dead", "refused", "alive"),
    [
        (
            "binance-usdm/market",
            "/market/stream?streams=btcusdt@aggTrade",
            "/public/ws/btcusdt@depth@100ms",
        ),
        ("binance-usdm", "/ws/btcusdt@depth@100ms", "/spot/ws/btcusdt@aggTrade"),
        ("coinbase", "/coinbase", "/market/ws/btcusdt@aggTrade"),
    ],
)
async def test_a_dead_venue_never_connects_and_the_others_do(
    dead: str, refused: str, alive: str
) -> None:
    sim = Simulator(dead_venues={dead})
    await sim.start()
    try:
        for attempt in range(3):
            with pytest.raises(websockets.InvalidStatus) as err:
                await connect(f"{sim.base_ws}{refused}")
            assert err.value.response.status_code == 451
            family = refused.strip("/").split("/")[0].split("?")[0]
            family = {"ws": "legacy"}.get(family, family)
            venue = COINBASE if family == COINBASE else BINANCE_USDM
            assert sim.fault_counts[f"dead_venue:{venue}:{family}"] == attempt + 1
        assert sim.model is None  # a refused socket does not start the scenario's clock
        async with connect(f"{sim.base_ws}{alive}") as ws:
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 5.0))
        rest = f"{sim.base_http}/fapi/v1/aggTrades?symbol=BTCUSDT"
        async with aiohttp.ClientSession() as http, http.get(rest) as resp:
            assert resp.status == 200  # REST stays up
        assert sim.fault_counts["dead_venue"] == 3
    finally:
        await sim.stop()


# -- the pure parts --------------------------------------------------------------------------------
def _real_payloads() -> Iterator[tuple[str, dict[str, Any]]]:
    specs = venue_specs(assets_from_symbols({"BTCUSDT": 78000.0})[0])
    for venue in (BINANCE_USDM, BINANCE_SPOT):
        tick = TradeTick(
            venue,
            "BTCUSDT",
            1_700_000_000_123,
            1_700_000_000_121,
            41,
            70,
            72,
            78000.1,
            0.013,
            False,
        )
        yield venue, binance_wire.agg_trade_payload(tick, specs[venue])


def test_hostile_payloads_are_well_formed_and_wrong_in_one_way() -> None:
    for venue, real in _real_payloads():
        (before,) = binance.parse_payload(venue, real, 0)
        assert isinstance(before, Trade)
        for kind in TRADE_KINDS:
            payload = hostile_agg_trade(kind, real)
            assert list(payload) == list(real)  # same keys, same order: the venue's shape
            (extra,) = binance.parse_frame(venue, orjson.dumps(payload), 0)
            assert isinstance(extra, Trade)
            assert_hostile_trade(kind, extra, before)
            if kind in ABSURD_VALUES:  # printed like Binance prints it: fixed point
                assert "e" not in payload["p"] and payload["p"].endswith(
                    "." + "0" * len(real["p"].partition(".")[2])
                )
    with pytest.raises(ValueError, match="not a hostile trade kind"):
        hostile_agg_trade(UNKNOWN_SYMBOL, real)


def _trade_id(event: object) -> int:
    assert isinstance(event, Trade)
    return event.trade_id


def test_hostile_coinbase_trade_is_made_from_the_newest_row_of_the_batch() -> None:
    batch = orjson.dumps(
        [
            {
                "type": "update",
                "trades": [
                    {
                        "product_id": "BTC-USD",
                        "trade_id": "902",
                        "price": "78005.2",
                        "size": "0.00609115",
                        "time": "2026-08-09T21:05:42.5Z",
                        "side": "BUY",
                    },
                    {
                        "product_id": "BTC-USD",
                        "trade_id": "901",
                        "price": "78005.1",
                        "size": "0.001",
                        "time": "2026-08-09T21:05:42.4Z",
                        "side": "SELL",
                    },
                ],
            }
        ]
    ).decode()
    envelope = (
        '{{"channel":"market_trades","client_id":"","timestamp":"2026-08-09T21:05:42.6Z",'
        '"sequence_num":3,"events":{}}}'
    )
    before = max(coinbase.parse_frame(COINBASE, envelope.format(batch), 0), key=_trade_id)
    for kind in COINBASE_KINDS:
        (extra,) = coinbase.parse_frame(
            COINBASE, envelope.format(hostile_market_trades(kind, batch)), 0
        )
        assert isinstance(before, Trade) and isinstance(extra, Trade)
        assert_hostile_trade(kind, extra, before)
    with pytest.raises(ValueError, match="not a hostile Coinbase kind"):
        hostile_market_trades(ID_JUMP, batch)


def test_armed_kinds_go_one_per_real_trade_to_a_reader_only() -> None:
    trades = HostileTrades(BINANCE_USDM, "btcusdt@aggTrade")
    for kind in (ID_JUMP, FUTURE_TS, ID_JUMP, UNKNOWN_SYMBOL):
        trades.arm(kind)
    assert list(trades.pending) == [ID_JUMP, FUTURE_TS]  # no duplicates; bursts are not trades
    assert trades.take("btcusdt@aggTrade", subscribed=False) is None  # nobody reads: waits
    assert trades.take("ethusdt@aggTrade", subscribed=True) is None
    assert trades.take("btcusdt@aggTrade", subscribed=True) == ID_JUMP
    assert trades.take("btcusdt@aggTrade", subscribed=True) == FUTURE_TS
    assert trades.take("btcusdt@aggTrade", subscribed=True) is None
    on_coinbase = HostileTrades(COINBASE, "BTC-USD")
    for kind in HOSTILE_KINDS:
        on_coinbase.arm(kind)
    assert set(on_coinbase.pending) == COINBASE_KINDS == {FUTURE_TS, ABSURD_PRICE, ABSURD_PRICE150}
    assert ID_JUMP50 in TRADE_KINDS


def test_counter_keys() -> None:
    counts: Counter[str] = Counter()
    count_sent(counts, "hostile:binance-usdm:id_jump")
    count_sent(counts, "hostile:binance-spot:id_jump")
    count_sent(counts, "nan_price")
    assert counts == Counter(
        {
            "hostile": 2,
            "hostile:id_jump": 2,
            "hostile:binance-usdm:id_jump": 1,
            "hostile:binance-spot:id_jump": 1,
            "malformed": 1,
            "malformed:nan_price": 1,
        }
    )


def test_hostile_options_are_checked() -> None:
    with pytest.raises(ValueError, match="hostile_kinds"):
        Simulator(hostile_kinds=("meteor",))
    with pytest.raises(ValueError, match="unknown_symbols"):
        Simulator(unknown_symbols=0)
    with pytest.raises(ValueError, match="dead_venues"):
        Simulator(dead_venues={"kraken"})
    with pytest.raises(ValueError, match="unknown hostile kind"):
        Simulator().inject_hostile("meteor")
