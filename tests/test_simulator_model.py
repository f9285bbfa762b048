"""The simulator's pure market model: determinism, calibration per venue and phase, cross-venue
consistency (Coinbase premium, perp/spot volume), books, liquidations and positioning."""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from simulator import SCENARIOS, MarketModel, Premium
from simulator.book_model import LEVELS, VenueBook, ask_grid, bid_grid
from simulator.market import (
    FUNDING_INTERVAL_MS,
    DepthTick,
    LiquidationTick,
    MarkTick,
    QuoteTick,
    Tick,
    TradeTick,
    assets_from_symbols,
    venue_specs,
)
from simulator.positioning import HISTORY_ROWS, PERIOD_MS
from simulator.scenarios import (
    BASELINE_MS,
    NARRATIVES,
    RALLY_MS,
    TOUR,
    TOUR_GAP_MS,
    TOUR_HOLD_MS,
    tour_schedule,
)
from streams.events import BINANCE_SPOT, BINANCE_USDM, COINBASE

REPO = Path(__file__).parent.parent
START_MS = 1_780_000_000_123  # deliberately not on a whole second
CYCLE_MS = 100_000
SYMBOL = {BINANCE_USDM: "BTCUSDT", BINANCE_SPOT: "BTCUSDT", COINBASE: "BTC-USD"}

# The model modules must stay pure: data in, data out (as tests/test_layout.py demands of
# market.py). Every module the model is built from is held to the same rule.
MODEL_MODULES = [
    "market.py",
    "scenarios.py",
    "book_model.py",
    "positioning.py",
    "published.py",
    "binance_wire.py",
    "coinbase_wire.py",
    "coinbase_feed.py",
    "faults.py",
    "weights.py",
]
IO_MODULES = {"asyncio", "socket", "ssl", "websockets", "aiohttp", "time", "os", "subprocess"}


@pytest.fixture(scope="module")
def sell_wave_cycle() -> list[Tick]:
    return MarketModel(scenario="sell_wave", start_ms=START_MS).advance(START_MS + CYCLE_MS)


@pytest.fixture(scope="module")
def calm_run() -> list[Tick]:
    return MarketModel(scenario="calm", start_ms=START_MS).advance(START_MS + CYCLE_MS)


def trades_of(ticks: list[Tick], symbol: str, venue: str = BINANCE_USDM) -> list[TradeTick]:
    return [
        t for t in ticks if isinstance(t, TradeTick) and t.symbol == symbol and t.venue == venue
    ]


def marks_of(ticks: list[Tick], symbol: str) -> list[MarkTick]:
    return [t for t in ticks if isinstance(t, MarkTick) and t.symbol == symbol]


def buy_share(trades: list[TradeTick], keep: Callable[[np.ndarray], np.ndarray]) -> float:
    """Taker-buy share of notional among the trades whose offset into the cycle ``keep`` keeps."""
    offset = np.array([(t.trade_ms - START_MS) % CYCLE_MS for t in trades])
    notional = np.array([t.price * t.qty for t in trades])
    taker_buy = np.array([not t.buyer_is_maker for t in trades])
    chosen = keep(offset)
    return float(notional[chosen & taker_buy].sum() / notional[chosen].sum())


def selling(off: np.ndarray) -> np.ndarray:
    return (off >= 10_000) & (off < 50_000)


def calm(off: np.ndarray) -> np.ndarray:
    return (off < 10_000) | (off >= 50_000)


@pytest.mark.parametrize("module", MODEL_MODULES)
def test_model_modules_import_no_io(module: str) -> None:
    tree = ast.parse((REPO / "simulator" / module).read_text())
    names = {alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {n for n in names if n.split(".")[0] in IO_MODULES}, module


# -- determinism ------------------------------------------------------------------------------
def test_same_seed_same_ticks_however_time_is_chopped() -> None:
    whole = MarketModel(seed=7, start_ms=START_MS).advance(START_MS + 20_000)
    chopped_model = MarketModel(seed=7, start_ms=START_MS)
    chopped: list[Tick] = []
    for to_ms in range(START_MS + 37, START_MS + 20_000, 211):
        chopped += chopped_model.advance(to_ms)
    chopped += chopped_model.advance(START_MS + 20_000)
    assert len(whole) > 2000
    assert chopped == whole
    assert MarketModel(seed=7, start_ms=START_MS).advance(START_MS + 20_000) == whole
    assert chopped_model.position_rows("BTCUSDT") == MarketModel(
        seed=7, start_ms=START_MS
    ).position_rows("BTCUSDT")


def test_different_seed_different_ticks() -> None:
    a = MarketModel(seed=1, start_ms=START_MS).advance(START_MS + 5_000)
    b = MarketModel(seed=2, start_ms=START_MS).advance(START_MS + 5_000)
    assert a != b


def test_ticks_come_in_event_time_order_and_never_twice() -> None:
    model = MarketModel(start_ms=START_MS)
    first = model.advance(START_MS + 5_000)
    assert model.advance(START_MS + 5_000) == []
    assert model.advance(START_MS + 1_000) == []  # event time never runs backwards
    later = model.advance(START_MS + 9_000)
    times = [t.event_ms for t in first + later]
    assert times == sorted(times)
    assert times[0] > START_MS and times[-1] <= START_MS + 9_000


def test_every_venue_of_every_asset_trades_and_books(calm_run: list[Tick]) -> None:
    kinds = {(type(t).__name__, getattr(t, "venue", BINANCE_USDM), t.symbol) for t in calm_run}
    for symbol, product in (("BTCUSDT", "BTC-USD"), ("ETHUSDT", "ETH-USD")):
        for venue, sym in ((BINANCE_USDM, symbol), (BINANCE_SPOT, symbol), (COINBASE, product)):
            for kind in ("TradeTick", "DepthTick", "QuoteTick"):
                assert (kind, venue, sym) in kinds
        assert ("MarkTick", BINANCE_USDM, symbol) in kinds


# -- USDⓈ-M calibration (the daemon tests rely on it) -----------------------------------------
def test_mark_updates_exactly_one_second_apart() -> None:
    ticks = MarketModel(start_ms=START_MS).advance(START_MS + 60_000)
    for symbol in ("BTCUSDT", "ETHUSDT"):
        marks = marks_of(ticks, symbol)
        times = np.array([m.event_ms for m in marks])
        assert len(marks) == 60
        assert np.all(np.diff(times) == 1000)
        assert np.all(times % 1000 == 0)
        for mark in marks:
            assert mark.next_funding_ms % FUNDING_INTERVAL_MS == 0
            assert 0 < mark.next_funding_ms - mark.event_ms <= FUNDING_INTERVAL_MS


def test_trade_ids_contiguous_and_prices_on_tick(sell_wave_cycle: list[Tick]) -> None:
    for venue, symbol, tick_size, lot in (
        (BINANCE_USDM, "BTCUSDT", 0.1, 0.001),
        (BINANCE_USDM, "ETHUSDT", 0.01, 0.001),
        (BINANCE_SPOT, "BTCUSDT", 0.01, 0.00001),
        (COINBASE, "BTC-USD", 0.01, 1e-8),
    ):
        trades = trades_of(sell_wave_cycle, symbol, venue)
        agg = np.array([t.agg_id for t in trades])
        first = np.array([t.first_id for t in trades])
        last = np.array([t.last_id for t in trades])
        assert np.all(np.diff(agg) == 1)
        assert np.all(last >= first)
        assert np.all(first[1:] == last[:-1] + 1)
        lag = np.array([t.event_ms - t.trade_ms for t in trades])
        assert np.all((lag >= 0) & (lag <= 3))
        prices = np.array([t.price for t in trades])
        qtys = np.array([t.qty for t in trades])
        assert np.allclose(prices / tick_size, np.round(prices / tick_size))
        assert np.all(qtys >= lot)
        assert np.allclose(qtys / lot, np.round(qtys / lot), atol=1e-6)


def test_trade_rate_and_sizes_plausible(calm_run: list[Tick]) -> None:
    btc = trades_of(calm_run, "BTCUSDT")
    eth = trades_of(calm_run, "ETHUSDT")
    assert 15 * 100 < len(btc) < 25 * 100  # ~20 aggregates per second
    assert 0 < len(eth) < len(btc)
    assert 0.01 <= float(np.median([t.qty for t in btc])) <= 0.05
    marks = np.array([m.mark_price for m in marks_of(calm_run, "BTCUSDT")])
    assert np.max(np.abs(np.diff(np.log(marks)))) < 20e-4  # no 1 s move over 20 bp


def test_sell_wave_taker_buy_share_per_venue_and_phase(sell_wave_cycle: list[Tick]) -> None:
    ticks = sell_wave_cycle
    expected = {  # venue: (selling, calm) buy share of notional
        BINANCE_USDM: (0.3, 0.5),
        BINANCE_SPOT: (0.4, 0.5),
        COINBASE: (0.35, 0.52),
    }
    for venue, (want_selling, want_calm) in expected.items():
        for asset in ("BTC", "ETH"):
            symbol = f"{asset}-USD" if venue == COINBASE else f"{asset}USDT"
            trades = trades_of(ticks, symbol, venue)
            # Fewer trades on Coinbase and spot: a wider band, still clear of the other phase.
            band = 0.1 if venue == BINANCE_USDM else 0.13
            assert abs(buy_share(trades, selling) - want_selling) <= band, (venue, symbol)
            assert abs(buy_share(trades, calm) - want_calm) <= band, (venue, symbol)


def test_sell_wave_price_falls_and_funding_turns_negative(sell_wave_cycle: list[Tick]) -> None:
    marks = marks_of(sell_wave_cycle, "BTCUSDT")
    at = {m.event_ms - START_MS: m for m in marks}
    wave_start = min((off, m) for off, m in at.items() if off >= 10_000)[1]
    wave_end = max((off, m) for off, m in at.items() if off < 50_000)[1]
    assert wave_end.mark_price < wave_start.mark_price * (1 - 20e-4)
    assert wave_start.funding_rate > 0.00008
    assert wave_end.funding_rate < -0.00008
    model = MarketModel(scenario="sell_wave", start_ms=START_MS)
    assert model.phase_at(START_MS + 30_000) == "selling"
    assert model.phase_at(START_MS + 130_000) == "selling"  # the cycle repeats
    assert model.phase_at(START_MS + 60_000) == "calm"


def test_calm_scenario_is_balanced(calm_run: list[Tick]) -> None:
    share = buy_share(trades_of(calm_run, "BTCUSDT"), lambda off: off >= 0)
    assert 0.4 <= share <= 0.6
    funding = [m.funding_rate for m in marks_of(calm_run, "BTCUSDT")]
    assert all(0.00008 < r < 0.00012 for r in funding)


def test_model_rejects_unknown_scenario_and_phase() -> None:
    assert set(SCENARIOS) == {"calm", "sell_wave", "tour", *NARRATIVES}
    with pytest.raises(ValueError, match="unknown scenario"):
        MarketModel(scenario="moon", start_ms=START_MS)
    with pytest.raises(ValueError, match="unknown phases"):
        MarketModel(start_ms=START_MS, premiums={"boom": Premium(1.0)})
    with pytest.raises(ValueError, match="unit"):
        Premium(1.0, "bp")


def test_narratives_start_calm_then_hold_their_last_phase() -> None:
    assert set(NARRATIVES) == {
        "deleveraging_cascade",
        "seller_dominance",
        "distribution",
        "derivatives_led_decline",
        "spot_led_recovery",
    }
    for name, steps in NARRATIVES.items():
        model = MarketModel(scenario=name, start_ms=START_MS)
        assert model.phase_at(START_MS + BASELINE_MS - 1) == "calm"
        assert model.phase_at(START_MS + BASELINE_MS) == steps[0][0].name
        assert model.phase_at(START_MS + 10 * BASELINE_MS) == steps[-1][0].name
    model = MarketModel(scenario="distribution", start_ms=START_MS)
    assert model.phase_at(START_MS + BASELINE_MS + RALLY_MS - 1) == "rally"
    assert model.phase_at(START_MS + BASELINE_MS + RALLY_MS) == "distribution"


def test_tour_plays_each_narrative_between_calm_stretches() -> None:
    model = MarketModel(scenario="tour", start_ms=START_MS)
    schedule = tour_schedule()
    assert [name for name, _, _ in schedule] == list(TOUR)
    assert sorted(TOUR) == sorted(NARRATIVES)
    previous_end, gap = 0, BASELINE_MS  # calm before the first narrative, then the gaps
    for name, start, end in schedule:
        assert start - previous_end == gap
        gap = TOUR_GAP_MS
        assert model.phase_at(START_MS + start - 1) == "calm"
        assert model.phase_at(START_MS + end - 1) == NARRATIVES[name][-1][0].name
        assert model.phase_at(START_MS + end) == "calm"
        assert end - start == TOUR_HOLD_MS + sum(d for _, d in NARRATIVES[name][:-1])
        previous_end = end
    assert model.phase_at(START_MS + 10 * schedule[-1][2]) == "calm"


def test_book_depth_scale_thickens_and_thins_each_side() -> None:
    spec = venue_specs(assets_from_symbols({"BTCUSDT": 78_000.0})[0])[BINANCE_USDM].book
    mid = 78_000.0 * 10**spec.tick_exp

    def sides(depth: tuple[float, float]) -> tuple[float, float]:
        book = VenueBook(spec, mid, np.random.Generator(np.random.PCG64(5)), 1, id_gaps=True)
        for _ in range(600):  # a minute of steps at a fixed mid: every level re-sized
            book.step(mid, 0, 0, depth)
        return (
            sum(q for _, q in book.levels(bids=True)),
            sum(q for _, q in book.levels(bids=False)),
        )

    calm_bid, calm_ask = sides((1.0, 1.0))
    thin_bid, thick_ask = sides((0.5, 1.5))
    assert thin_bid / calm_bid == pytest.approx(0.5, rel=0.1)
    assert thick_ask / calm_ask == pytest.approx(1.5, rel=0.1)


def test_activity_scales_every_venue_and_depth_the_perp_book() -> None:
    start = START_MS + BASELINE_MS
    calm = MarketModel(scenario="deleveraging_cascade", start_ms=START_MS)
    ticks = calm.advance(start + 60_000)
    counts = {
        venue: [
            sum(1 for t in trades_of(ticks, SYMBOL[venue], venue) if lo <= t.trade_ms < lo + 60_000)
            for lo in (start - 60_000, start)
        ]
        for venue in (BINANCE_USDM, BINANCE_SPOT)
    }
    # The cascade trades twice as often; spot's share shrinks from 1/3 to 1/4.5 of perp's.
    perp_before, perp_after = counts[BINANCE_USDM]
    spot_before, spot_after = counts[BINANCE_SPOT]
    assert perp_after / perp_before == pytest.approx(2.0, rel=0.15)
    assert spot_after / spot_before == pytest.approx(2.0 * 3.0 / 4.5, rel=0.15)


# -- cross-venue consistency ------------------------------------------------------------------
def premium_by_second(ticks: list[Tick], asset: str) -> tuple[np.ndarray, np.ndarray]:
    """(second offset, mean Coinbase price - mean spot price) for seconds where both traded."""
    spot = trades_of(ticks, f"{asset}USDT", BINANCE_SPOT)
    cb = trades_of(ticks, f"{asset}-USD", COINBASE)

    def per_second(trades: list[TradeTick]) -> dict[int, float]:
        sec = np.array([(t.trade_ms - START_MS) // 1000 for t in trades])
        price = np.array([t.price for t in trades])
        return {int(s): float(price[sec == s].mean()) for s in np.unique(sec)}

    a, b = per_second(cb), per_second(spot)
    common = sorted(set(a) & set(b))
    return np.array(common), np.array([a[s] - b[s] for s in common])


def test_coinbase_premium_follows_the_phase(sell_wave_cycle: list[Tick]) -> None:
    seconds, premium = premium_by_second(sell_wave_cycle, "BTC")
    settled_calm = premium[(seconds >= 60) & (seconds < 100)]
    settled_selling = premium[(seconds >= 25) & (seconds < 50)]
    # Built-in premiums are percentages: +0.0064 % (~$5) calm, -0.1154 % (~-$90) selling.
    assert abs(float(np.median(settled_calm)) - 5.0) < 3.0
    assert abs(float(np.median(settled_selling)) + 90.0) < 6.0


def test_coinbase_premium_in_usd_is_controllable() -> None:
    model = MarketModel(
        scenario="calm",
        start_ms=START_MS,
        premiums={"calm": Premium(-25.0, "usd")},
    )
    seconds, premium = premium_by_second(model.advance(START_MS + 40_000), "ETH")
    assert abs(float(np.median(premium[seconds >= 15])) + 25.0) < 1.0


def test_perp_volume_is_a_multiple_of_spot(sell_wave_cycle: list[Tick]) -> None:
    for asset in ("BTC", "ETH"):
        perp = trades_of(sell_wave_cycle, f"{asset}USDT", BINANCE_USDM)
        spot = trades_of(sell_wave_cycle, f"{asset}USDT", BINANCE_SPOT)
        ratio = {}
        for name, keep in (("selling", selling), ("calm", calm)):

            def quote(trades: list[TradeTick], keep: Callable = keep) -> float:
                off = np.array([(t.trade_ms - START_MS) % CYCLE_MS for t in trades])
                return float(np.array([t.notional for t in trades])[keep(off)].sum())

            ratio[name] = quote(perp) / quote(spot)
        assert 2.3 < ratio["calm"] < 3.9, (asset, ratio)
        assert 3.8 < ratio["selling"] < 6.5, (asset, ratio)


def test_trades_print_at_the_venue_touch(calm_run: list[Tick]) -> None:
    """A taker buy pays the best ask, a sell hits the best bid, as the last book update left
    them (trades fall strictly between two 100 ms updates)."""
    for venue, symbol in SYMBOL.items():
        quotes = [t for t in calm_run if isinstance(t, QuoteTick) and t.venue == venue]
        quotes = [q for q in quotes if q.symbol == symbol]
        times = np.array([q.event_ms for q in quotes])
        for trade in trades_of(calm_run, symbol, venue)[:400]:
            i = int(np.searchsorted(times, trade.trade_ms, side="right")) - 1
            if i < 0:
                continue  # before the first update: the initial book
            tick = 10.0 ** -(2 if venue != BINANCE_USDM else 1)
            top = quotes[i].ask if not trade.buyer_is_maker else quotes[i].bid
            assert abs(trade.price - top[0] * tick) < tick / 2, (venue, trade, quotes[i])


# -- books ------------------------------------------------------------------------------------
def test_book_grids_are_disjoint_sorted_and_wide() -> None:
    bids = bid_grid(780_000, 10, 3)
    asks = ask_grid(780_001, 10, 3)
    assert len(bids) == len(asks) == LEVELS
    assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
    assert bids[0] == 780_000 and asks[0] == 780_001
    assert (bids[0] - bids[-1]) / bids[0] > 0.012  # reaches beyond ±1 %


def test_book_steps_keep_the_touch_grid_and_their_diffs_rebuild_the_book() -> None:
    """A step moves only the levels at the ends of each band; whatever the move (none, a few
    ticks, past a band, past the whole book), the book is the grid of its touch and the step's
    diff turns the previous book into the new one."""
    spec = venue_specs(assets_from_symbols({"BTCUSDT": 78_000.0})[0])[BINANCE_USDM].book
    moves = np.random.default_rng(3)
    mid = 780_000.5
    book = VenueBook(spec, mid, np.random.Generator(np.random.PCG64(5)), 1, id_gaps=False)
    copy = {True: dict(book.levels(bids=True)), False: dict(book.levels(bids=False))}
    jumps = [0, 1, 3, 10, 57, 400, 2_000, 60_000]
    for _ in range(600):
        mid += float(moves.choice(jumps) * moves.choice([-1, 1]) + moves.random())
        sold, bought = (int(x) for x in moves.integers(0, 50, size=2))
        step = book.step(mid, bought, sold)
        for side, levels in ((copy[True], step.bids), (copy[False], step.asks)):
            for price, lots in levels:
                if lots:
                    side[price] = lots
                else:
                    del side[price]
        best = math.floor(mid)
        bids, asks = book.levels(bids=True), book.levels(bids=False)
        assert [p for p, _ in bids] == bid_grid(best, spec.base, spec.growth)
        assert [p for p, _ in asks] == ask_grid(best + 1, spec.base, spec.growth)
        assert (dict(bids), dict(asks)) == (copy[True], copy[False])
        assert min(q for _, q in bids + asks) >= 1


def test_depth_ids_spot_contiguous_usdm_linked_by_pu(calm_run: list[Tick]) -> None:
    for venue in (BINANCE_SPOT, BINANCE_USDM, COINBASE):
        diffs = [t for t in calm_run if isinstance(t, DepthTick) and t.venue == venue]
        diffs = [d for d in diffs if d.symbol == SYMBOL[venue]]
        assert len(diffs) == 1000  # one update per 100 ms
        assert all(d.event_ms % 100 == 0 for d in diffs)
        first = np.array([d.first_id for d in diffs])
        last = np.array([d.last_id for d in diffs])
        prev = np.array([d.prev_last_id for d in diffs])
        assert np.all(prev[1:] == last[:-1])
        if venue == BINANCE_SPOT:
            assert np.all(first[1:] == last[:-1] + 1)
        if venue == BINANCE_USDM:
            assert np.all(first[1:] > last[:-1] + 1)  # real futures ids jump
        sizes = np.array([len(d.bids) + len(d.asks) for d in diffs])
        assert sizes.min() >= 2 and sizes.mean() < 60


# -- liquidations and positioning -----------------------------------------------------------
def test_liquidations_burst_in_the_sell_phase_and_close_longs(
    sell_wave_cycle: list[Tick],
) -> None:
    liqs = [t for t in sell_wave_cycle if isinstance(t, LiquidationTick)]
    off = np.array([(t.event_ms - START_MS) % CYCLE_MS for t in liqs])
    in_wave = selling(off)
    # 40 s of selling vs 60 s of calm per cycle: rates 0.6 / s vs 0.03 / s per symbol.
    assert in_wave.sum() > 5 * (~in_wave).sum()
    sells = np.array([t.side == "SELL" for t in liqs])
    assert sells[in_wave].mean() > 0.75
    for symbol in ("BTCUSDT", "ETHUSDT"):
        seconds = [t.event_ms // 1000 for t in liqs if t.symbol == symbol]
        assert len(seconds) == len(set(seconds))  # at most one snapshot per symbol per second
    for liq in liqs:
        assert (liq.price < liq.avg_price) == (liq.side == "SELL")


def test_open_interest_rises_into_the_dip_and_rows_close_every_5_minutes() -> None:
    start = (START_MS // PERIOD_MS + 1) * PERIOD_MS - 60_000  # one minute before a boundary
    model = MarketModel(scenario="sell_wave", start_ms=start)
    before = model.open_interest("BTCUSDT")
    ticks = model.advance(start + 45_000)
    assert model.open_interest("BTCUSDT") > before  # the selling phase adds positions
    rows = model.position_rows("BTCUSDT")
    assert len(rows) == HISTORY_ROWS
    assert np.all(np.diff([r.timestamp_ms for r in rows]) == PERIOD_MS)
    model.advance(start + 61_000)
    live = model.position_rows("BTCUSDT")[-1]
    assert live.timestamp_ms == start + 60_000
    traded = [t for t in trades_of(ticks, "BTCUSDT") if t.trade_ms > start]
    bought = sum(t.qty for t in traded if not t.buyer_is_maker)
    assert live.buy_vol >= bought  # the live row holds every perp taker buy since the start
    assert 0.05 < live.long_account < 0.95 and live.open_interest > 0
