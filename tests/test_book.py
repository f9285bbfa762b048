"""Local order book and its snapshot + diff sync.

Three kinds of evidence: every recorded snapshot + diff sequence in tests/data syncs without a
gap and agrees with the venue's own best bid/ask; hypothesis sequences against a naive
reference book rebuilt from scratch (and numpy for depth bands); hand-worked cases per venue
rule with expected values written out by hand.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streams.book
from streams.book import (
    ASK,
    BID,
    CROSSED,
    MISSED_UPDATES,
    NO_BRIDGE,
    PU_MISMATCH,
    SNAPSHOT_TOO_OLD,
    START,
    BookSync,
    OrderBook,
    SyncResult,
    SyncState,
)
from streams.events import (
    BINANCE_SPOT,
    BINANCE_USDM,
    COINBASE,
    DepthDiff,
    DepthSnapshot,
    Level,
)
from streams.tape import read_tape
from streams.venues import BY_NAME
from tests.conftest import DATA


@pytest.fixture(autouse=True, scope="module", params=["c", "python"])
def ladder_loop(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test here runs on both implementations of the per-level loop and of the depth
    band's sum: the C ones (``streams/_ladder.c``, which the install builds; its absence is a
    failure here, not a skip) and the Python ones a machine without a compiler falls back to."""
    if request.param == "c":
        from streams._ladder import apply, notional

        assert streams.book._apply is apply
        assert streams.book._notional is notional
        yield request.param
        return
    saved = streams.book._apply, streams.book._notional
    streams.book._apply, streams.book._notional = streams.book._apply_py, streams.book._notional_py
    try:
        yield request.param
    finally:
        streams.book._apply, streams.book._notional = saved


# ---------------------------------------------------------------------------------------------
# Recorded sequences
# ---------------------------------------------------------------------------------------------

USDM_90S = "binance-usdm-2024-07-18-btc-eth-90s.tape.jsonl.zst"
SPOT_60S = "binance-spot-2024-08-08-btc-eth-60s.tape.jsonl.zst"
USDM_ALTS = "binance-usdm-2021-07-22-alts.tape.jsonl.zst"
SPOT_ALTS = "binance-spot-2021-10-11-alts.tape.jsonl.zst"
COINBASE_L2 = "coinbase-2026-08-09-btc-eth.tape.jsonl.zst"

TAPE_VENUE = {
    USDM_90S: BINANCE_USDM,
    SPOT_60S: BINANCE_SPOT,
    USDM_ALTS: BINANCE_USDM,
    SPOT_ALTS: BINANCE_SPOT,
}
# Every symbol that has a REST snapshot and diffs in its tape.
BINANCE_CASES = [
    (USDM_90S, "BTCUSDT"),
    (USDM_90S, "ETHUSDT"),
    (SPOT_60S, "BTCUSDT"),
    (SPOT_60S, "ETHUSDT"),
    (USDM_ALTS, "SUSHIUSDT"),
    (USDM_ALTS, "AKROUSDT"),
    (USDM_ALTS, "KEEPUSDT"),
    (USDM_ALTS, "CTKUSDT"),
    (SPOT_ALTS, "NKNUSDT"),
    (SPOT_ALTS, "BLZETH"),
    (SPOT_ALTS, "LRCBTC"),
    (SPOT_ALTS, "RUNEEUR"),  # has no bookTicker frames
]


@dataclass(frozen=True)
class Ticker:
    bid: Level
    ask: Level


@dataclass
class Replay:
    """What happened to one symbol's book over a whole recording."""

    sync: BookSync
    results: list[SyncResult] = field(default_factory=list)
    diffs: int = 0
    applied: int = 0
    synced_at: int | None = None  # index of the first diff/snapshot that left the book synced
    crossed_seen: int = 0
    ticker_matches: int = 0  # bookTickers at an id the book reached, equal to the book's top
    ticker_mismatches: list[tuple[int, Ticker, Level | None, Level | None]] = field(
        default_factory=list
    )
    tickers_by_id: dict[int, Ticker] = field(default_factory=dict)
    last_ticker: Ticker | None = None
    ids_reached: set[int] = field(default_factory=set)


def _levels(raw: list[list[str]]) -> tuple[Level, ...]:
    return tuple((float(price), float(qty)) for price, qty in raw)


def _binance_events(path: Path) -> Iterator[DepthDiff | DepthSnapshot | tuple[str, int, Ticker]]:
    """Depth diffs, REST snapshots and bookTickers in tape order, parsed here on purpose: the
    production depth parsers are written separately and must not be what checks this code."""
    for rec in read_tape(path):
        ts_recv = int(rec.ts * 1000)
        if rec.url is not None:
            if "/depth?" not in rec.url:
                continue
            body = orjson.loads(rec.msg)
            venue = BINANCE_USDM if rec.url.startswith("/fapi/") else BINANCE_SPOT
            symbol = rec.url.split("symbol=")[1].split("&")[0]
            yield DepthSnapshot(
                venue=venue,
                symbol=symbol,
                ts_event=body.get("T", ts_recv),  # spot snapshots carry no time
                ts_recv=ts_recv,
                last_id=body["lastUpdateId"],
                bids=_levels(body["bids"]),
                asks=_levels(body["asks"]),
            )
            continue
        frame = orjson.loads(rec.msg)
        data = frame["data"]
        if frame["stream"].endswith("@bookTicker"):
            ticker = Ticker(
                (float(data["b"]), float(data["B"])), (float(data["a"]), float(data["A"]))
            )
            yield data["s"], data["u"], ticker
        elif data.get("e") == "depthUpdate":
            yield DepthDiff(
                venue=rec.src,
                symbol=data["s"],
                ts_event=data["E"],
                ts_recv=ts_recv,
                first_id=data["U"],
                last_id=data["u"],
                prev_last_id=data.get("pu"),
                bids=_levels(data["b"]),
                asks=_levels(data["a"]),
            )


def _check_top(replay: Replay) -> None:
    """At the very update id of a bookTicker the book's top must be the ticker, exactly."""
    sync = replay.sync
    if sync.last_id is None:
        return
    replay.ids_reached.add(sync.last_id)
    ticker = replay.tickers_by_id.get(sync.last_id)
    if ticker is None:
        return
    bid, ask = sync.book.best_bid(), sync.book.best_ask()
    if (bid, ask) == (ticker.bid, ticker.ask):
        replay.ticker_matches += 1
    else:
        replay.ticker_mismatches.append((sync.last_id, ticker, bid, ask))


@cache
def replay_binance(name: str) -> dict[str, Replay]:
    events = list(_binance_events(DATA / name))
    replays: dict[str, Replay] = {}

    def replay_for(symbol: str) -> Replay:
        if symbol not in replays:
            replays[symbol] = Replay(
                BookSync(TAPE_VENUE[name], symbol, BY_NAME[TAPE_VENUE[name]].book_rule)
            )
        return replays[symbol]

    # bookTicker ids first, so a ticker counts whether it arrives before or after its diff.
    for event in events:
        if isinstance(event, tuple):
            symbol, update_id, ticker = event
            replay_for(symbol).tickers_by_id[update_id] = ticker
            replay_for(symbol).last_ticker = ticker
    for i, event in enumerate(events):
        if isinstance(event, tuple):
            continue
        replay = replay_for(event.symbol)
        if isinstance(event, DepthDiff):
            replay.diffs += 1
            result = replay.sync.on_diff(event)
        else:
            result = replay.sync.on_snapshot(event)
        replay.results.append(result)
        replay.applied += result.applied
        if replay.sync.synced:
            if replay.synced_at is None:
                replay.synced_at = i
            replay.crossed_seen += replay.sync.book.is_crossed()
            _check_top(replay)
    return replays


@pytest.mark.parametrize(("name", "symbol"), BINANCE_CASES)
def test_recorded_binance_sequence_syncs_without_gap(name: str, symbol: str) -> None:
    replay = replay_binance(name)[symbol]
    sync = replay.sync
    assert replay.synced_at is not None
    assert sync.state is SyncState.SYNCED
    assert not any(r.gap for r in replay.results)
    # Exactly one snapshot request: the initial one, when the first diff was buffered.
    assert [r.reason for r in replay.results if r.needs_snapshot] == [START]
    counters = sync.counters()
    assert counters.pop("stale_diffs") > 0  # the diffs buffered before the snapshot
    assert counters == dict.fromkeys(counters, 0)
    # Every diff was either applied or already contained in the snapshot.
    assert replay.applied + sync.stale_diffs == replay.diffs
    assert replay.crossed_seen == 0
    assert sync.buffered == 0


@pytest.mark.parametrize(("name", "symbol"), [c for c in BINANCE_CASES if c[1] != "RUNEEUR"])
def test_recorded_book_top_equals_book_ticker(name: str, symbol: str) -> None:
    replay = replay_binance(name)[symbol]
    assert replay.ticker_mismatches == []
    # The tickers whose update id the book passed through: all of them matched, and there were
    # some (Binance shares the update-id counter between @depth and @bookTicker).
    reached = replay.ids_reached & set(replay.tickers_by_id)
    assert replay.ticker_matches == len(reached) > 0
    # The tape's last ticker is later than the last diff: at least it cannot be crossed with it.
    assert replay.last_ticker is not None
    bid, ask = replay.sync.book.best_bid(), replay.sync.book.best_ask()
    assert bid is not None and ask is not None
    assert bid[0] <= replay.last_ticker.ask[0]
    assert ask[0] >= replay.last_ticker.bid[0]


def test_recorded_futures_ids_are_not_contiguous_so_only_pu_is_checked() -> None:
    # The reason the USDⓈ-M rule must not look at U: in the recording, U != prev u + 1 almost
    # always, while pu == prev u always, and the book stays in sync.
    diffs = [
        e
        for e in _binance_events(DATA / USDM_90S)
        if isinstance(e, DepthDiff) and e.symbol == "BTCUSDT"
    ]
    ids = [(d.first_id, d.last_id, d.prev_last_id) for d in diffs]
    pairs = list(itertools.pairwise(ids))
    assert all(pu == prev_u for (_, prev_u, _), (_, _, pu) in pairs)
    assert sum(first != (prev_u or 0) + 1 for (_, prev_u, _), (first, _, _) in pairs) > (
        len(pairs) // 2
    )
    assert replay_binance(USDM_90S)["BTCUSDT"].sync.synced


@cache
def replay_coinbase() -> dict[str, tuple[BookSync, list[SyncResult], Ticker]]:
    syncs: dict[str, BookSync] = {}
    results: dict[str, list[SyncResult]] = {}
    tickers: dict[str, Ticker] = {}
    last_seq: int | None = None
    for rec in read_tape(DATA / COINBASE_L2):
        if rec.url is not None:
            continue
        frame = orjson.loads(rec.msg)
        seq = frame["sequence_num"]
        hole = last_seq is not None and seq != last_seq + 1
        last_seq = seq
        if hole:  # the recording has none; the caller's job, as the collector will do it
            for product, sync in syncs.items():
                results[product].append(sync.invalidate("sequence_gap"))
        if frame["channel"] == "ticker":
            for event in frame["events"]:
                for t in event["tickers"]:
                    tickers[t["product_id"]] = Ticker(
                        (float(t["best_bid"]), float(t["best_bid_quantity"])),
                        (float(t["best_ask"]), float(t["best_ask_quantity"])),
                    )
        if frame["channel"] != "l2_data":
            continue
        ts = int(rec.ts * 1000)
        for event in frame["events"]:
            product = event["product_id"]
            sync = syncs.setdefault(
                product, BookSync(COINBASE, product, BY_NAME[COINBASE].book_rule)
            )
            bids = tuple(
                (float(u["price_level"]), float(u["new_quantity"]))
                for u in event["updates"]
                if u["side"] == "bid"
            )
            asks = tuple(
                (float(u["price_level"]), float(u["new_quantity"]))
                for u in event["updates"]
                if u["side"] == "offer"
            )
            if event["type"] == "snapshot":
                result = sync.on_snapshot(
                    DepthSnapshot(COINBASE, product, ts, ts, None, bids, asks)
                )
            else:
                diff = DepthDiff(COINBASE, product, ts, ts, None, None, None, bids, asks)
                result = sync.on_diff(diff)
            results.setdefault(product, []).append(result)
            assert not sync.synced or not sync.book.is_crossed()
    return {p: (syncs[p], results[p], tickers[p]) for p in syncs}


@pytest.mark.parametrize("product", ["BTC-USD", "ETH-USD"])
def test_recorded_coinbase_level2_syncs(product: str) -> None:
    sync, results, ticker = replay_coinbase()[product]
    assert sync.synced
    assert results[0].applied == 0 and not results[0].needs_snapshot  # the snapshot itself
    assert not any(r.gap or r.needs_snapshot for r in results)
    assert all(r.applied == 1 for r in results[1:])
    assert sync.counters() == dict.fromkeys(sync.counters(), 0)
    bid, ask = sync.book.best_bid(), sync.book.best_ask()
    assert bid is not None and ask is not None
    assert bid[0] <= ticker.ask[0] and ask[0] >= ticker.bid[0]
    # Coinbase's level2 snapshot is the whole book, tens of thousands of levels deep.
    assert len(sync.book.levels(BID)) + len(sync.book.levels(ASK)) > 20_000


# ---------------------------------------------------------------------------------------------
# Reference book: a plain dict rebuilt from scratch from every update ever applied
# ---------------------------------------------------------------------------------------------

Update = tuple[str, float, float]  # (side, price, qty)
Side = dict[float, float]


def reference(history: list[Update]) -> tuple[Side, Side]:
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    for side, price, qty in history:
        book = bids if side == BID else asks
        if qty == 0:
            book.pop(price, None)
        else:
            book[price] = qty
    return bids, asks


def numpy_band(
    bids: dict[float, float], asks: dict[float, float], pct: float
) -> tuple[float, float] | None:
    if not bids or not asks:
        return None
    bp, bq = np.array(list(bids)), np.array(list(bids.values()))
    ap, aq = np.array(list(asks)), np.array(list(asks.values()))
    mid = (bp.max() + ap.min()) / 2
    in_bid = bp >= mid * (1 - pct / 100)
    in_ask = ap <= mid * (1 + pct / 100)
    return float(np.sum(bp[in_bid] * bq[in_bid])), float(np.sum(ap[in_ask] * aq[in_ask]))


def assert_same_book(book: OrderBook, bids: dict[float, float], asks: dict[float, float]) -> None:
    assert book.levels(BID) == sorted(bids.items(), reverse=True)
    assert book.levels(ASK) == sorted(asks.items())
    best_bid = max(bids.items()) if bids else None
    best_ask = min(asks.items()) if asks else None
    assert book.best_bid() == best_bid
    assert book.best_ask() == best_ask
    if best_bid and best_ask:
        assert book.mid() == (best_bid[0] + best_ask[0]) / 2
        assert book.is_crossed() == (best_bid[0] >= best_ask[0])
    else:
        assert book.mid() is None and not book.is_crossed()


def updates(diff: DepthDiff | DepthSnapshot) -> list[Update]:
    return [(BID, p, q) for p, q in diff.bids] + [(ASK, p, q) for p, q in diff.asks]


QTY = st.one_of(
    st.just(0.0),
    st.sampled_from([0.001, 0.5, 1.0, 2.25]),
    st.floats(min_value=1e-8, max_value=1e4, allow_nan=False, allow_infinity=False),
)
# A coarse shared grid so levels collide, get removed, reappear and cross.
ANY_PRICE = st.integers(0, 80).map(lambda k: 90 + k * 0.25)
BID_PRICE = st.integers(1, 40).map(lambda k: 100 - k * 0.5)  # always below ASK_PRICE
ASK_PRICE = st.integers(1, 40).map(lambda k: 100 + k * 0.5)


def batch(price: st.SearchStrategy[float]) -> st.SearchStrategy[list[Level]]:
    return st.lists(st.tuples(price, QTY), max_size=5)


# Prices 0.0005 apart: levels crowd the band edges, and slots are freed and reused often.
FINE_PRICE = st.integers(0, 8000).map(lambda k: 98 + k * 0.0005)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.sampled_from([ANY_PRICE, FINE_PRICE]).flatmap(
        lambda price: st.lists(st.tuples(batch(price), batch(price)), min_size=1, max_size=30)
    ),
    pct=st.floats(min_value=0.0001, max_value=20),
)
def test_order_book_matches_reference_and_numpy_bands(
    steps: list[tuple[list[Level], list[Level]]], pct: float
) -> None:
    book = OrderBook()
    history: list[Update] = []
    for bids, asks in steps:
        book.apply_levels(bids, asks)
        history += [(BID, p, q) for p, q in bids] + [(ASK, p, q) for p, q in asks]
        ref_bids, ref_asks = reference(history)
        assert_same_book(book, ref_bids, ref_asks)
        for band_pct in (0.5, 1.0, 2.0, pct):
            expected = numpy_band(ref_bids, ref_asks, band_pct)
            got = book.depth_band(band_pct)
            if expected is None:
                assert got is None
            else:
                assert got == pytest.approx(expected, rel=1e-12, abs=1e-9)


def assert_ladders_consistent(book: OrderBook) -> None:
    """The internal invariants the fast paths rely on, for both sides: ``top`` is the best
    price held (±inf when empty), every held level's slot holds its price and quantity, every
    other slot is dead (quantity 0, a price that cannot be the best) and the free slots are
    exactly the unused ones below ``_used``."""
    for ladder, best in ((book._bids, max), (book._asks, min)):
        held = ladder.slot_of
        assert ladder.top == (best(held) if held else ladder._sign * math.inf)
        assert ladder._used <= len(ladder._prices) == len(ladder._qtys)
        slots = set(held.values())
        assert len(slots) == len(held) and all(0 <= s < ladder._used for s in slots)
        assert len(set(ladder._free)) == len(ladder._free)
        assert set(ladder._free) == set(range(ladder._used)) - slots
        for price, slot in held.items():
            assert ladder._prices[slot] == price and ladder._qtys[slot] > 0
        for slot in set(range(len(ladder._prices))) - slots:
            assert ladder._prices[slot] == ladder._dead and ladder._qtys[slot] == 0.0


Op = tuple[str, list[Level], list[Level]]  # ("apply" | "load" | "clear", bids, asks)


def _ops(price: st.SearchStrategy[float]) -> st.SearchStrategy[list[Op]]:
    levels = st.lists(st.tuples(price, QTY), max_size=8)
    op = st.one_of(
        st.tuples(st.just("apply"), levels, levels),
        st.tuples(st.just("load"), levels, levels),
        st.tuples(st.just("clear"), st.just([]), st.just([])),
    )
    return st.lists(op, min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), price=st.sampled_from([ANY_PRICE, FINE_PRICE]))
def test_tracked_best_equals_reference_through_applies_snapshots_and_clears(
    data: st.DataObject, price: st.SearchStrategy[float]
) -> None:
    # The best price is tracked by apply, not searched: check it (and the slots behind the
    # bands) after every step of sequences that remove the best level, remove levels never
    # held, re-add removed prices, and load snapshots and clear in between.
    book = OrderBook()
    history: list[Update] = []
    for kind, bids, asks in data.draw(_ops(price)):
        if kind != "apply":
            history = []  # a snapshot or a clear replaces the whole book
        if kind == "clear":
            book.clear()
        elif kind == "load":
            book.load(bids, asks)
        else:
            ref_bids, ref_asks = reference(history)
            # Half the time, remove the best of each side first, within the same diff.
            if ref_bids and data.draw(st.booleans(), label="remove best bid"):
                bids = [(max(ref_bids), 0.0), *bids]
            if ref_asks and data.draw(st.booleans(), label="remove best ask"):
                asks = [(min(ref_asks), 0.0), *asks]
            book.apply_levels(bids, asks)
        history += [(BID, p, q) for p, q in bids] + [(ASK, p, q) for p, q in asks]
        ref_bids, ref_asks = reference(history)
        assert_same_book(book, ref_bids, ref_asks)
        assert_ladders_consistent(book)
        expected = numpy_band(ref_bids, ref_asks, 1.0)
        got = book.depth_band(1.0)
        assert got == (None if expected is None else pytest.approx(expected, rel=1e-12))


def test_order_book_best_and_slots_stay_right_under_level_churn() -> None:
    # 20,000 single-level changes on 300 prices, half of them removals (of the best, of levels
    # never held, of levels just re-added): the tracked best equals the reference after each,
    # and freed slots are reused, so the arrays stay as small as the largest book seen.
    rng = random.Random(7)
    book = OrderBook()
    bids: dict[float, float] = {}
    largest = 0
    for i in range(20_000):
        price = 100 - rng.randrange(300) * 0.01
        if bids and rng.random() < 0.1:
            price = max(bids)  # the best level, changed or removed
        qty = 0.0 if rng.random() < 0.5 else rng.choice([0.1, 1.0, 5.0])
        book.apply_levels([(price, qty)], [])
        if qty:
            bids[price] = qty
        else:
            bids.pop(price, None)
        largest = max(largest, len(bids))
        assert book.best_bid() == (max(bids.items()) if bids else None)
        assert book._bids._used == largest
        if i % 1000 == 0:
            assert_ladders_consistent(book)
    assert len(book._bids._prices) <= 2 * largest + 64
    assert book.levels(BID) == sorted(bids.items(), reverse=True)


def test_hand_best_level_tracking() -> None:
    book = OrderBook()
    book.load([(99.0, 1.0), (98.0, 2.0)], [(101.0, 1.0), (102.0, 2.0)])
    # Removing prices never held, better than the best, changes nothing.
    book.apply_levels([(99.5, 0.0)], [(100.5, 0.0)])
    assert (book.best_bid(), book.best_ask()) == ((99.0, 1.0), (101.0, 1.0))
    # A new better level becomes the best; a quantity change of the best keeps it.
    book.apply_levels([(99.5, 3.0)], [(101.0, 4.0)])
    assert (book.best_bid(), book.best_ask()) == ((99.5, 3.0), (101.0, 4.0))
    # The best removed: the next one is found, even with a worse level added in the same diff.
    book.apply_levels([(99.5, 0.0), (97.0, 1.0)], [(101.0, 0.0)])
    assert (book.best_bid(), book.best_ask()) == ((99.0, 1.0), (102.0, 2.0))
    # Removed and re-added in one diff, at a new quantity: still the best.
    book.apply_levels([(99.0, 0.0), (99.0, 5.0)], [])
    assert book.best_bid() == (99.0, 5.0)
    # Added and removed in one diff: never the best.
    book.apply_levels([(100.0, 1.0), (100.0, 0.0)], [])
    assert book.best_bid() == (99.0, 5.0) and not book.is_crossed()
    # A side emptied, then refilled.
    book.apply_levels([(99.0, 0.0), (98.0, 0.0), (97.0, 0.0)], [])
    assert book.best_bid() is None and book.mid() is None and not book.is_crossed()
    assert book.depth_band(1.0) is None
    book.apply_levels([(96.0, 1.0)], [])
    assert book.best_bid() == (96.0, 1.0) and book.mid() == 99.0
    # A diff that crosses the book is seen at once.
    book.apply_levels([], [(95.0, 1.0)])
    assert book.is_crossed()
    book.clear()
    assert book.best_bid() is None and book.best_ask() is None and not book.is_crossed()
    assert_ladders_consistent(book)


def test_hand_arrays_grow_past_the_snapshot() -> None:
    # A snapshot sizes the arrays exactly; levels added after it grow them (doubling), and
    # the band and the best stay right across the growth.
    book = OrderBook()
    book.load([(100.0 - k, 1.0) for k in range(1, 4)], [(101.0, 1.0)])
    bids = {100.0 - k: 1.0 for k in range(1, 4)}
    for k in range(4, 300):
        book.apply_levels([(100.0 - k * 0.01, 2.0)], [])
        bids[100.0 - k * 0.01] = 2.0
    assert book.best_bid() == (max(bids), bids[max(bids)])
    assert book.depth_band(50.0) == pytest.approx(numpy_band(bids, {101.0: 1.0}, 50.0))
    assert_ladders_consistent(book)


# ---------------------------------------------------------------------------------------------
# A true exchange history, and what a client would receive of it
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    venue: str
    initial: DepthSnapshot  # state before the first event (id = pu of event 0)
    events: list[DepthDiff]

    def state_after(self, k: int, partial_next: int = 0) -> tuple[Side, Side]:
        """The true book after event k (k = -1: the initial book), plus the first
        ``partial_next`` level updates of event k+1."""
        history = updates(self.initial)
        for event in self.events[: k + 1]:
            history += updates(event)
        if partial_next:
            history += updates(self.events[k + 1])[:partial_next]
        return reference(history)

    def snapshot(self, k: int, inside_next: bool = False, partial_next: int = 0) -> DepthSnapshot:
        """A REST snapshot of the state after event k; with ``inside_next`` its id is the first
        id of event k+1 and it holds part of that event, as real snapshots taken while the
        engine is inside one diff's id range do (spot BTCUSDT in the recording)."""
        bids, asks = self.state_after(k, partial_next if inside_next else 0)
        if inside_next:
            last_id = self.events[k + 1].first_id
        else:
            last_id = self.events[k].last_id if k >= 0 else self.initial.last_id
        return DepthSnapshot(
            self.venue, "XYZ", 0, 0, last_id, tuple(bids.items()), tuple(asks.items())
        )


@st.composite
def histories(draw: st.DrawFn, venue: str, min_events: int = 3) -> History:
    n = draw(st.integers(min_events, 12))
    prev_u = draw(st.integers(1, 10**12))
    initial = DepthSnapshot(
        venue,
        "XYZ",
        0,
        0,
        prev_u,
        tuple(draw(batch(BID_PRICE))),
        tuple(draw(batch(ASK_PRICE))),
    )
    events = []
    for _ in range(n):
        # Futures ids skip (U != prev u + 1 is normal there); spot ids are contiguous.
        first = prev_u + 1 + (draw(st.integers(0, 5)) if venue == BINANCE_USDM else 0)
        last = first + draw(st.integers(0, 4))
        pu = prev_u if venue == BINANCE_USDM else None
        bids, asks = tuple(draw(batch(BID_PRICE))), tuple(draw(batch(ASK_PRICE)))
        events.append(DepthDiff(venue, "XYZ", 0, 0, first, last, pu, bids, asks))
        prev_u = last
    return History(venue, initial, events)


def feed(sync: BookSync, items: list[DepthDiff | DepthSnapshot]) -> list[SyncResult]:
    return [
        sync.on_diff(item) if isinstance(item, DepthDiff) else sync.on_snapshot(item)
        for item in items
    ]


BINANCE_VENUES = st.sampled_from([BINANCE_SPOT, BINANCE_USDM])


@settings(max_examples=100, deadline=None)
@given(data=st.data(), venue=BINANCE_VENUES)
def test_valid_binance_sequences_stay_equal_to_the_true_book(
    data: st.DataObject, venue: str
) -> None:
    hist = data.draw(histories(venue))
    n = len(hist.events)
    # The snapshot shows the state after event j, possibly partway into event j+1.
    j = data.draw(st.integers(0, n - 2), label="snapshot after event")
    nxt = hist.events[j + 1]
    inside = nxt.last_id != nxt.first_id and data.draw(st.booleans(), label="inside j+1")
    partial = data.draw(st.integers(0, len(updates(nxt))), label="updates of j+1 in it")
    snap = hist.snapshot(j, inside, partial)
    # The client subscribed at event s (no later than the snapshot's state, or the snapshot
    # would be too old) and received events s..t-1 before the REST answer came back.
    s = data.draw(st.integers(0, j + inside), label="first event seen")
    t = data.draw(st.integers(s, n), label="events before the snapshot")
    sync = BookSync(venue, "XYZ", BY_NAME[venue].book_rule, max_buffer=64)
    after = {event.last_id: k for k, event in enumerate(hist.events)}
    results = []
    for item in [*hist.events[s:t], snap, *hist.events[t:]]:
        results += feed(sync, [item])
        if sync.synced and sync.last_id in after:  # every intermediate book is a true one too
            assert_same_book(sync.book, *hist.state_after(after[sync.last_id]))

    assert not any(r.gap for r in results)
    assert [r.reason for r in results if r.needs_snapshot] == ([START] if t > s else [])
    assert sync.synced and sync.last_id == hist.events[-1].last_id
    assert_same_book(sync.book, *hist.state_after(n - 1))
    assert sync.counters()["gaps"] == sync.counters()["resyncs"] == 0


def _synced_on(hist: History, sync: BookSync) -> None:
    """Subscribe at event 0 and sync on a snapshot of the state after it."""
    feed(sync, [hist.events[0], hist.snapshot(0)])
    assert sync.synced and sync.last_id == hist.events[0].last_id


@settings(max_examples=75, deadline=None)
@given(data=st.data(), venue=BINANCE_VENUES)
def test_a_missed_event_is_a_gap_and_a_resync_recovers(data: st.DataObject, venue: str) -> None:
    hist = data.draw(histories(venue, min_events=5))
    n = len(hist.events)
    sync = BookSync(venue, "XYZ", BY_NAME[venue].book_rule)
    _synced_on(hist, sync)
    missing = data.draw(st.integers(1, n - 3), label="lost event")
    results = feed(sync, hist.events[1:missing])
    assert not any(r.gap for r in results)

    # The event after the lost one: spot sees U > book id + 1, futures sees pu != previous u.
    result = sync.on_diff(hist.events[missing + 1])
    assert result.gap and result.needs_snapshot
    assert result.reason == (MISSED_UPDATES if venue == BINANCE_SPOT else PU_MISMATCH)
    assert sync.state is SyncState.WAITING_SNAPSHOT and len(sync.book) == 0
    assert (sync.gaps, sync.resyncs) == (1, 1)

    # Recovery: keep buffering, then a snapshot at any later state.
    k = data.draw(st.integers(missing + 1, n - 1), label="resync snapshot after event")
    results = feed(
        sync, [*hist.events[missing + 2 : k + 1], hist.snapshot(k), *hist.events[k + 1 :]]
    )
    assert not any(r.gap or r.needs_snapshot for r in results)
    assert sync.synced and sync.last_id == hist.events[-1].last_id
    assert_same_book(sync.book, *hist.state_after(n - 1))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), venue=BINANCE_VENUES)
def test_a_corrupted_id_is_a_gap(data: st.DataObject, venue: str) -> None:
    # Same detection when nothing is lost but the ids themselves are off: a skipped id inside
    # a spot event, a pu pointing elsewhere on futures.
    hist = data.draw(histories(venue, min_events=3))
    sync = BookSync(venue, "XYZ", BY_NAME[venue].book_rule)
    _synced_on(hist, sync)
    good = hist.events[1]
    assert good.first_id is not None and good.last_id is not None
    skew = data.draw(st.integers(1, 3))
    if venue == BINANCE_SPOT:
        bad = DepthDiff(venue, "XYZ", 0, 0, good.first_id + skew, good.last_id + skew, None, (), ())
    else:
        assert good.prev_last_id is not None
        bad = DepthDiff(
            venue, "XYZ", 0, 0, good.first_id, good.last_id, good.prev_last_id - skew, (), ()
        )
    result = sync.on_diff(bad)
    assert result.gap and result.needs_snapshot and not sync.synced


@settings(max_examples=75, deadline=None)
@given(data=st.data(), venue=BINANCE_VENUES)
def test_snapshot_older_than_the_buffer_is_refused_and_a_newer_one_syncs(
    data: st.DataObject, venue: str
) -> None:
    hist = data.draw(histories(venue, min_events=4))
    n = len(hist.events)
    s = data.draw(st.integers(1, n - 2), label="first event seen")
    t = data.draw(st.integers(s + 1, n), label="events before the snapshot")
    old = data.draw(st.integers(-1, s - 1), label="old snapshot after event")
    sync = BookSync(venue, "XYZ", BY_NAME[venue].book_rule)
    feed(sync, hist.events[s:t])

    result = sync.on_snapshot(hist.snapshot(old))
    assert result == SyncResult(needs_snapshot=True, reason=SNAPSHOT_TOO_OLD)
    assert not sync.synced and sync.buffered == t - s and sync.snapshots_rejected == 1

    k = data.draw(st.integers(s, t - 1), label="fresh snapshot after event")
    results = feed(sync, [hist.snapshot(k), *hist.events[t:]])
    # Spot drops u <= lastUpdateId; futures keep event k (u == lastUpdateId) as the bridge.
    assert results[0].applied == (t - 1 - k if venue == BINANCE_SPOT else t - k)
    assert not any(r.gap or r.needs_snapshot for r in results)
    assert sync.synced and sync.last_id == hist.events[-1].last_id
    assert_same_book(sync.book, *hist.state_after(n - 1))


@settings(max_examples=60, deadline=None)
@given(
    snap=st.tuples(batch(BID_PRICE), batch(ASK_PRICE)),
    steps=st.lists(st.tuples(batch(BID_PRICE), batch(ASK_PRICE)), max_size=20),
    cut=st.integers(0, 20),
)
def test_coinbase_updates_match_reference_and_invalidate_resyncs(
    snap: tuple[list[Level], list[Level]], steps: list[tuple[list[Level], list[Level]]], cut: int
) -> None:
    def snapshot(bids: dict | list, asks: dict | list) -> DepthSnapshot:
        b = bids.items() if isinstance(bids, dict) else bids
        a = asks.items() if isinstance(asks, dict) else asks
        return DepthSnapshot(COINBASE, "X-USD", 0, 0, None, tuple(b), tuple(a))

    def diff(bids: list[Level], asks: list[Level]) -> DepthDiff:
        return DepthDiff(COINBASE, "X-USD", 0, 0, None, None, None, tuple(bids), tuple(asks))

    first = snapshot(
        *reference([(BID, p, q) for p, q in snap[0]] + [(ASK, p, q) for p, q in snap[1]])
    )
    history = updates(first)
    sync = BookSync(COINBASE, "X-USD", BY_NAME[COINBASE].book_rule)
    assert sync.on_snapshot(first) == SyncResult()
    cut = min(cut, len(steps))
    for bids, asks in steps[:cut]:
        assert sync.on_diff(diff(bids, asks)) == SyncResult(applied=1)
        history += updates(diff(bids, asks))
    assert_same_book(sync.book, *reference(history))

    # A sequence_num hole: the caller invalidates; updates until the new snapshot are dropped.
    assert sync.invalidate("sequence_gap") == SyncResult(
        gap=True, needs_snapshot=True, reason="sequence_gap"
    )
    for bids, asks in steps[cut:]:
        assert sync.on_diff(diff(bids, asks)).applied == 0
        history += updates(diff(bids, asks))
    assert len(sync.book) == 0 and not sync.synced
    sync.on_snapshot(snapshot(*reference(history)))
    assert sync.synced
    assert_same_book(sync.book, *reference(history))


# ---------------------------------------------------------------------------------------------
# Hand-worked cases (expected values written out, not computed)
# ---------------------------------------------------------------------------------------------


def spot(first: int, last: int, bids: tuple = (), asks: tuple = ()) -> DepthDiff:
    return DepthDiff(BINANCE_SPOT, "BTCUSDT", 0, 0, first, last, None, bids, asks)


def usdm(first: int, last: int, pu: int, bids: tuple = (), asks: tuple = ()) -> DepthDiff:
    return DepthDiff(BINANCE_USDM, "BTCUSDT", 0, 0, first, last, pu, bids, asks)


def snap_of(venue: str, last_id: int | None, bids: tuple, asks: tuple) -> DepthSnapshot:
    symbol = "BTC-USD" if venue == COINBASE else "BTCUSDT"
    return DepthSnapshot(venue, symbol, 0, 0, last_id, bids, asks)


def test_hand_spot_rule() -> None:
    sync = BookSync(BINANCE_SPOT, "BTCUSDT", BY_NAME[BINANCE_SPOT].book_rule)
    assert sync.on_diff(spot(95, 98, bids=((10.0, 7.0),))) == SyncResult(
        needs_snapshot=True, reason=START
    )
    assert sync.on_diff(spot(99, 101, bids=((10.0, 0.0),), asks=((11.0, 5.0),))) == SyncResult()
    assert sync.on_diff(spot(102, 102, bids=((9.5, 4.0),))) == SyncResult()
    assert sync.buffered == 3
    # lastUpdateId 100: 95..98 is dropped, 99..101 contains 101 = 100 + 1 and bridges.
    snap = snap_of(BINANCE_SPOT, 100, ((10.0, 1.0), (9.0, 2.0)), ((11.0, 1.0), (12.0, 3.0)))
    assert sync.on_snapshot(snap) == SyncResult(applied=2)
    assert sync.book.levels(BID) == [(9.5, 4.0), (9.0, 2.0)]
    assert sync.book.levels(ASK) == [(11.0, 5.0), (12.0, 3.0)]
    assert sync.last_id == 102 and sync.stale_diffs == 1
    # Already contained (u <= 102): ignored, the book is untouched.
    assert sync.on_diff(spot(101, 102, bids=((9.5, 99.0),))) == SyncResult()
    assert sync.book.best_bid() == (9.5, 4.0) and sync.stale_diffs == 2
    # U = 103 = 102 + 1: applied; then U = 106 > 104 + 1: ids 105 were missed.
    assert sync.on_diff(spot(103, 104, asks=((11.0, 0.0),))) == SyncResult(applied=1)
    assert sync.book.best_ask() == (12.0, 3.0) and sync.book.mid() == 10.75
    assert sync.on_diff(spot(106, 107)) == SyncResult(
        gap=True, needs_snapshot=True, reason=MISSED_UPDATES
    )
    assert sync.state is SyncState.WAITING_SNAPSHOT and sync.last_id is None
    assert (sync.gaps, sync.resyncs, sync.buffered) == (1, 1, 1)
    # The diff that revealed the hole is kept: a snapshot at 106 resumes from it.
    assert sync.on_diff(spot(108, 108, bids=((9.0, 1.0),))) == SyncResult()
    assert sync.on_snapshot(snap_of(BINANCE_SPOT, 106, ((9.0, 3.0),), ((12.0, 3.0),))) == (
        SyncResult(applied=2)
    )
    assert sync.book.levels(BID) == [(9.0, 1.0)] and sync.last_id == 108


def test_hand_spot_snapshot_just_before_first_u_is_too_old() -> None:
    # Binance spot's rule: lastUpdateId strictly below the first buffered U means fetch again, even
    # at U - 1, where the first event would technically bridge.
    sync = BookSync(BINANCE_SPOT, "BTCUSDT", BY_NAME[BINANCE_SPOT].book_rule)
    sync.on_diff(spot(101, 103))
    result = sync.on_snapshot(snap_of(BINANCE_SPOT, 100, ((1.0, 1.0),), ((2.0, 1.0),)))
    assert result == SyncResult(needs_snapshot=True, reason=SNAPSHOT_TOO_OLD)
    assert sync.buffered == 1
    assert sync.on_snapshot(snap_of(BINANCE_SPOT, 101, ((1.0, 1.0),), ((2.0, 1.0),))) == (
        SyncResult(applied=1)
    )
    assert sync.last_id == 103


def test_hand_spot_buffer_overflow_drops_oldest() -> None:
    sync = BookSync(BINANCE_SPOT, "BTCUSDT", BY_NAME[BINANCE_SPOT].book_rule, max_buffer=3)
    for i in range(1, 6):
        sync.on_diff(spot(i, i, bids=((float(i), 1.0),)))
    assert sync.buffered == 3 and sync.dropped_buffered == 2  # 1 and 2 are gone
    # Now the oldest buffered U is 3, so a snapshot at 2 is too old; at 3 it is fine.
    empty = snap_of(BINANCE_SPOT, 2, (), ((9.0, 1.0),))
    assert sync.on_snapshot(empty).reason == SNAPSHOT_TOO_OLD
    result = sync.on_snapshot(snap_of(BINANCE_SPOT, 3, ((3.0, 1.0),), ((9.0, 1.0),)))
    assert result == SyncResult(applied=2)
    assert sync.book.levels(BID) == [(5.0, 1.0), (4.0, 1.0), (3.0, 1.0)]


def test_hand_spot_gap_while_buffering_restarts_the_buffer() -> None:
    sync = BookSync(BINANCE_SPOT, "BTCUSDT", BY_NAME[BINANCE_SPOT].book_rule)
    assert sync.on_diff(spot(10, 11)).needs_snapshot
    # 12 is missing: 10..11 can never be replayed. A snapshot is already requested, so no
    # second request; it will be judged against the new buffer when it arrives.
    assert sync.on_diff(spot(13, 14)) == SyncResult(gap=True, reason=MISSED_UPDATES)
    assert (sync.buffered, sync.dropped_buffered, sync.gaps, sync.resyncs) == (1, 1, 1, 0)
    assert sync.on_snapshot(snap_of(BINANCE_SPOT, 11, (), ())).reason == SNAPSHOT_TOO_OLD
    assert sync.on_snapshot(snap_of(BINANCE_SPOT, 13, (), ())) == SyncResult(applied=1)


def test_hand_usdm_rule() -> None:
    sync = BookSync(BINANCE_USDM, "BTCUSDT", BY_NAME[BINANCE_USDM].book_rule)
    sync.on_diff(usdm(990, 995, 980, bids=((50.0, 1.0),)))  # u < 1000: dropped
    sync.on_diff(usdm(996, 1003, 995, bids=((50.0, 2.0),), asks=((52.0, 0.0),)))  # bridges
    sync.on_diff(usdm(1010, 1012, 1003, asks=((51.0, 6.0),)))  # U != 1004 is fine: pu == 1003
    snap = snap_of(BINANCE_USDM, 1000, ((50.0, 9.0), (49.0, 1.0)), ((52.0, 4.0), (53.0, 1.0)))
    assert sync.on_snapshot(snap) == SyncResult(applied=2)
    assert sync.book.levels(BID) == [(50.0, 2.0), (49.0, 1.0)]
    assert sync.book.levels(ASK) == [(51.0, 6.0), (53.0, 1.0)]
    assert sync.last_id == 1012 and sync.stale_diffs == 1
    assert sync.book.depth_band(5.0) == pytest.approx((100.0 + 49.0, 306.0 + 53.0))
    # pu 1011 is not the previous u 1012: a gap, even though U > 1012.
    assert sync.on_diff(usdm(1020, 1021, 1011)) == SyncResult(
        gap=True, needs_snapshot=True, reason=PU_MISMATCH
    )
    assert (sync.gaps, sync.resyncs, sync.synced) == (1, 1, False)


def test_hand_usdm_event_ending_at_last_update_id_is_the_bridge() -> None:
    # Futures drop u < lastUpdateId only, so u == lastUpdateId is kept and bridges.
    sync = BookSync(BINANCE_USDM, "BTCUSDT", BY_NAME[BINANCE_USDM].book_rule)
    sync.on_diff(usdm(998, 1000, 990, bids=((7.0, 3.0),)))
    sync.on_diff(usdm(1004, 1004, 1000, bids=((7.0, 2.0),)))
    assert sync.on_snapshot(snap_of(BINANCE_USDM, 1000, ((7.0, 3.0),), ((8.0, 1.0),))) == (
        SyncResult(applied=2)
    )
    assert sync.book.best_bid() == (7.0, 2.0) and sync.last_id == 1004


def test_hand_usdm_first_live_event_must_bridge() -> None:
    # Snapshot before any diff: nothing to judge it by, so it is taken, and the first live
    # event decides. U 1001 > lastUpdateId 1000: the snapshot's id is not inside it.
    sync = BookSync(BINANCE_USDM, "BTCUSDT", BY_NAME[BINANCE_USDM].book_rule)
    assert sync.on_snapshot(snap_of(BINANCE_USDM, 1000, ((7.0, 1.0),), ((8.0, 1.0),))) == (
        SyncResult()
    )
    assert sync.synced
    assert sync.on_diff(usdm(990, 999, 985)) == SyncResult()  # older than the snapshot
    assert sync.on_diff(usdm(1001, 1002, 999)) == SyncResult(
        gap=True, needs_snapshot=True, reason=NO_BRIDGE
    )


def test_hand_usdm_snapshot_too_old_for_buffer() -> None:
    sync = BookSync(BINANCE_USDM, "BTCUSDT", BY_NAME[BINANCE_USDM].book_rule)
    sync.on_diff(usdm(1005, 1007, 1001))
    # The first buffered event with u >= 1003 starts at 1005 > 1003: events 1004.. are unseen.
    assert sync.on_snapshot(snap_of(BINANCE_USDM, 1003, (), ())) == SyncResult(
        needs_snapshot=True, reason=SNAPSHOT_TOO_OLD
    )
    assert sync.on_snapshot(snap_of(BINANCE_USDM, 1006, (), ())) == SyncResult(applied=1)


def test_hand_coinbase() -> None:
    sync = BookSync(COINBASE, "BTC-USD", BY_NAME[COINBASE].book_rule)
    assert sync.on_diff(
        DepthDiff(COINBASE, "BTC-USD", 0, 0, None, None, None, ((1.0, 1.0),), ())
    ) == SyncResult(reason="waiting_snapshot")  # before the snapshot: dropped
    snap = snap_of(COINBASE, None, ((100.0, 1.0), (99.0, 2.0)), ((101.0, 1.0),))
    assert sync.on_snapshot(snap) == SyncResult()
    update = DepthDiff(
        COINBASE, "BTC-USD", 5, 5, None, None, None, ((100.0, 0.0),), ((102.0, 4.0),)
    )
    assert sync.on_diff(update) == SyncResult(applied=1)
    assert sync.book.levels(BID) == [(99.0, 2.0)]
    assert sync.book.levels(ASK) == [(101.0, 1.0), (102.0, 4.0)]
    assert sync.book.mid() == 100.0 and sync.ts_event == 5
    assert sync.invalidate("sequence_gap").needs_snapshot
    assert (sync.synced, len(sync.book), sync.resyncs, sync.gaps) == (False, 0, 1, 1)
    assert sync.on_snapshot(snap) == SyncResult() and sync.synced


def test_hand_crossed_book_is_resynced() -> None:
    sync = BookSync(BINANCE_SPOT, "BTCUSDT", BY_NAME[BINANCE_SPOT].book_rule)
    sync.on_snapshot(snap_of(BINANCE_SPOT, 10, ((10.0, 1.0),), ((11.0, 1.0),)))
    result = sync.on_diff(spot(11, 11, bids=((11.0, 2.0),)))  # bid 11 >= ask 11
    assert result == SyncResult(applied=1, gap=True, needs_snapshot=True, reason=CROSSED)
    assert (sync.crossed, sync.resyncs, sync.gaps, sync.synced, len(sync.book)) == (
        1,
        1,
        0,
        False,
        0,
    )
    # A crossed REST snapshot is refused the same way.
    sync = BookSync(BINANCE_SPOT, "BTCUSDT", BY_NAME[BINANCE_SPOT].book_rule)
    assert sync.on_snapshot(snap_of(BINANCE_SPOT, 10, ((12.0, 1.0),), ((11.0, 1.0),))).reason == (
        CROSSED
    )
    assert not sync.synced


def test_hand_depth_band() -> None:
    book = OrderBook()
    assert book.depth_band(1.0) is None
    book.apply_levels(
        [(99.2, 2.0), (98.5, 1.0), (97.0, 10.0)], [(100.8, 1.0), (101.5, 2.0), (103.0, 4.0)]
    )
    # mid = 100. ±0.5 %: 99.5..100.5 holds nothing.
    assert book.mid() == 100.0
    assert book.depth_band(0.5) == (0.0, 0.0)
    # ±1 %: bids >= 99 -> 99.2×2 = 198.4; asks <= 101 -> 100.8×1 = 100.8.
    assert book.depth_band(1.0) == pytest.approx((198.4, 100.8))
    # ±2 %: + 98.5×1 = 296.9; + 101.5×2 = 303.8.
    assert book.depth_band(2.0) == pytest.approx((296.9, 303.8))
    # ±5 %: + 97×10 = 1266.9; + 103×4 = 715.8.
    assert book.depth_band(5.0) == pytest.approx((1266.9, 715.8))
    # Removing a level that was never there is normal and changes nothing.
    book.apply_levels([(42.0, 0.0)], [(420.0, 0.0)])
    assert book.depth_band(5.0) == pytest.approx((1266.9, 715.8))


def test_hand_unrequested_snapshot_while_synced_is_ignored() -> None:
    sync = BookSync(BINANCE_SPOT, "BTCUSDT", BY_NAME[BINANCE_SPOT].book_rule)
    sync.on_snapshot(snap_of(BINANCE_SPOT, 10, ((10.0, 1.0),), ((11.0, 1.0),)))
    stale = snap_of(BINANCE_SPOT, 5, ((1.0, 1.0),), ((2.0, 1.0),))
    assert sync.on_snapshot(stale) == SyncResult(reason="already_synced")
    assert sync.book.best_bid() == (10.0, 1.0) and sync.snapshots_rejected == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.on_diff(DepthDiff(BINANCE_SPOT, "ETHUSDT", 0, 0, 1, 1, None, (), ())),
        lambda s: s.on_diff(DepthDiff(BINANCE_USDM, "BTCUSDT", 0, 0, 1, 1, 0, (), ())),
        lambda s: s.on_diff(DepthDiff(BINANCE_SPOT, "BTCUSDT", 0, 0, None, None, None, (), ())),
        lambda s: s.on_snapshot(snap_of(BINANCE_SPOT, None, (), ())),
    ],
)
def test_misrouted_or_idless_input_is_a_caller_bug(call: Callable[[BookSync], object]) -> None:
    with pytest.raises(ValueError):
        call(BookSync(BINANCE_SPOT, "BTCUSDT", BY_NAME[BINANCE_SPOT].book_rule))


def test_hand_usdm_gap_while_buffering_restarts_the_buffer() -> None:
    sync = BookSync(BINANCE_USDM, "BTCUSDT", BY_NAME[BINANCE_USDM].book_rule)
    assert sync.on_diff(usdm(100, 105, 90)).needs_snapshot
    assert sync.on_diff(usdm(107, 109, 105)) == SyncResult()  # U jumps, pu chains: fine
    # pu 111 is not 109: something between was lost; only the new diff is worth keeping.
    assert sync.on_diff(usdm(115, 118, 111)) == SyncResult(gap=True, reason=PU_MISMATCH)
    assert (sync.buffered, sync.dropped_buffered, sync.gaps) == (1, 2, 1)
    assert sync.on_snapshot(snap_of(BINANCE_USDM, 116, (), ())) == SyncResult(applied=1)
    assert sync.last_id == 118


def test_hand_depth_band_edges_are_inclusive() -> None:
    book = OrderBook()
    book.apply_levels([(199.0, 1.0), (100.0, 1.0), (99.0, 1.0)], [(201.0, 1.0), (300.0, 1.0)])
    book.apply_levels([], [(301.0, 1.0)])
    # mid 200, ±50 % is exactly 100..300: both edge levels count.
    assert book.depth_band(50.0) == (199.0 + 100.0, 201.0 + 300.0)


def test_hand_snapshot_load_last_entry_wins_and_zero_is_absent() -> None:
    book = OrderBook()
    book.load([(5.0, 1.0), (5.0, 3.0), (4.0, 0.0)], [(6.0, 0.0), (6.0, 2.0), (7.0, 0.0)])
    assert book.levels(BID) == [(5.0, 3.0)]
    assert book.levels(ASK) == [(6.0, 2.0)]
    assert len(book) == 2


def test_c_loop_refuses_what_it_cannot_store_safely() -> None:
    # The C loop writes into raw buffers: arguments that would put a store out of bounds or
    # read a non-pair are refused with an exception, never a crash (the caller makes room and
    # the parsers give pairs of floats, so neither happens in the daemon).
    from array import array

    from streams._ladder import apply

    prices, qtys = array("d", [0.0]), array("d", [0.0])
    with pytest.raises(IndexError):
        apply([(1.0, 1.0), (2.0, 1.0)], {}, prices, qtys, [], -1.0, 0.0, -math.inf, 0)
    with pytest.raises(TypeError):
        apply([(1.0,)], {}, prices, qtys, [], -1.0, 0.0, -math.inf, 0)
    with pytest.raises(TypeError):
        apply([(1.0, 1.0)], {}, [0.0], qtys, [], -1.0, 0.0, -math.inf, 0)
    with pytest.raises(TypeError):
        apply([("1", 1.0)], {}, prices, qtys, [], -1.0, 0.0, -math.inf, 0)
    slot_of: dict[float, int] = {}
    assert apply([(5.0, 2.0)], slot_of, prices, qtys, [], -1.0, 0.0, -math.inf, 0) == (
        5.0,
        1,
        False,
    )
    assert slot_of == {5.0: 0} and (prices[0], qtys[0]) == (5.0, 2.0)
