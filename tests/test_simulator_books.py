"""Order books from the simulator sync exactly with the client's ``BookSync``: Binance spot and
USDⓈ-M (buffer diffs, fetch the REST snapshot, replay) and Coinbase level2 (in-stream snapshot,
then updates), parsed with tapewatch's own parsers; the top of the synced book equals the
bookTicker / ticker carrying the same update."""

from __future__ import annotations

import itertools
import time
from typing import Any

import aiohttp
import orjson
import pytest

from simulator import Simulator
from streams import binance, coinbase
from streams.book import BookSync
from streams.events import (
    BINANCE_SPOT,
    BINANCE_USDM,
    COINBASE,
    BookTicker,
    DepthDiff,
    DepthSnapshot,
)
from streams.venues import BY_NAME
from tests.test_simulator import connect

VENUE_PATHS = {
    BINANCE_SPOT: ("/spot/stream", "/spot/api/v3/depth", "/api/v3/depth"),
    BINANCE_USDM: ("/public/stream", "/fapi/v1/depth", "/fapi/v1/depth"),
}


@pytest.fixture
async def sim(start_simulator: Any) -> Simulator:
    return await start_simulator(speed=5.0, seed=4)


def now_ms() -> int:
    return int(time.time() * 1000)


async def fetch(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as resp:
        return resp.status, await resp.text()


class BinanceBook:
    """A collector's view of one Binance book: the parser, BookSync and the bookTickers."""

    def __init__(self, venue: str, symbol: str) -> None:
        self.venue = venue
        self.sync = BookSync(venue, symbol, BY_NAME[venue].book_rule)
        self.gaps = 0
        self.matched_tickers = 0

    def feed(self, raw: str | bytes) -> None:
        for event in binance.parse_frame(self.venue, raw, now_ms()):
            if isinstance(event, DepthDiff):
                result = self.sync.on_diff(event)
                self.gaps += result.gap
            elif isinstance(event, BookTicker) and self.sync.synced:
                self.check_ticker(event, orjson.loads(raw)["data"]["u"])

    def check_ticker(self, ticker: BookTicker, update_id: int) -> None:
        # The ticker follows the diff with the same u, so the book must be exactly there;
        # tickers of updates the REST snapshot already covered were still in flight.
        last_id = self.sync.last_id
        assert last_id is not None and update_id <= last_id
        if update_id < last_id:
            return
        assert self.sync.book.best_bid() == (ticker.bid, ticker.bid_qty)
        assert self.sync.book.best_ask() == (ticker.ask, ticker.ask_qty)
        self.matched_tickers += 1


@pytest.mark.parametrize(("venue", "limit"), [(BINANCE_SPOT, 1000), (BINANCE_USDM, 500)])
async def test_binance_book_syncs_from_buffered_diffs_and_rest_snapshot(
    sim: Simulator, venue: str, limit: int
) -> None:
    ws_path, rest_path, parser_path = VENUE_PATHS[venue]
    url = f"{sim.base_ws}{ws_path}?streams=btcusdt@depth@100ms/btcusdt@bookTicker"
    view = BinanceBook(venue, "BTCUSDT")
    async with connect(url) as ws, aiohttp.ClientSession() as http:
        while view.sync.buffered < 3:  # buffer a few diffs first, as Binance's sync rules say
            view.feed(await ws.recv())
        query = f"?symbol=BTCUSDT&limit={limit}"
        status, body = await fetch(http, sim.base_http + rest_path + query)
        assert status == 200
        (snapshot,) = binance.parse_rest(venue, parser_path + query, body, now_ms())
        assert len(snapshot.bids) == len(snapshot.asks) == min(limit, 201)
        result = view.sync.on_snapshot(snapshot)
        assert view.sync.synced and not result.gap and not result.needs_snapshot
        while view.matched_tickers < 20:
            view.feed(await ws.recv())
        assert view.gaps == 0 and view.sync.counters()["resyncs"] == 0
        if limit < 201:
            return
        # A later snapshot equals the synced book level for level once both are at its id.
        status, body = await fetch(http, sim.base_http + rest_path + query)
        (later,) = binance.parse_rest(venue, parser_path + query, body, now_ms())
        while view.sync.last_id != later.last_id:
            assert view.sync.last_id is not None and view.sync.last_id < later.last_id
            view.feed(await ws.recv())
        assert view.sync.book.levels("bid") == list(later.bids)
        assert view.sync.book.levels("ask") == list(later.asks)


async def test_usdm_snapshot_carries_times_and_ids_jump(sim: Simulator) -> None:
    url = f"{sim.base_ws}/public/stream?streams=ethusdt@depth@100ms"
    async with connect(url) as ws:
        frames = [orjson.loads(await ws.recv())["data"] for _ in range(5)]
    for prev, diff in itertools.pairwise(frames):
        assert diff["pu"] == prev["u"] and diff["U"] > prev["u"] + 1
        assert diff["E"] == diff["T"] and diff["E"] - prev["E"] == 100
    async with aiohttp.ClientSession() as http:
        status, body = await fetch(http, f"{sim.base_http}/fapi/v1/depth?symbol=ETHUSDT&limit=20")
    snap = orjson.loads(body)
    assert status == 200 and list(snap) == ["lastUpdateId", "E", "T", "bids", "asks"]
    assert len(snap["bids"]) == 20 and snap["bids"][0][0] < snap["asks"][0][0]


async def test_coinbase_level2_snapshot_then_updates_and_ticker_matches_the_book(
    sim: Simulator,
) -> None:
    sync = BookSync(COINBASE, "ETH-USD", BY_NAME[COINBASE].book_rule)
    tracker = coinbase.SequenceTracker()
    matched = 0
    async with connect(f"{sim.base_ws}/coinbase") as ws:
        for raw in coinbase.subscribe_messages(["ETH-USD"], ("heartbeats", "level2", "ticker")):
            await ws.send(raw)
        while matched < 20:
            msg = coinbase.parse_envelope(await ws.recv())
            assert tracker.observe(msg) is None  # no hole in sequence_num
            try:
                events = coinbase.events_from(COINBASE, msg, now_ms())
            except coinbase.IgnoredFrame:
                continue
            for event in events:
                if isinstance(event, BookTicker):
                    if sync.synced:
                        assert sync.book.best_bid() == (event.bid, event.bid_qty)
                        assert sync.book.best_ask() == (event.ask, event.ask_qty)
                        matched += 1
                elif isinstance(event, DepthDiff):
                    assert sync.on_diff(event).applied == 1
                elif isinstance(event, DepthSnapshot):
                    result = sync.on_snapshot(event)
                    assert sync.synced and not result.gap
                    assert len(sync.book) == 2 * 201
    assert sync.counters()["gaps"] == 0 and tracker.gaps == 0
