"""One definition per signal: the start-up backfill and the live engine sample the same values.

A random minute-level history (bars of each venue with missing and zero-volume minutes, funding
settlements, open-interest rows with gaps) goes (a) to the vectorised backfill
(``signals/backfill.py``), which one engine's ``AssetSignals.backfill`` puts into its baselines,
and (b) as a stream of events to a second engine, which samples its baselines at each minute's
close (``signals/baseline.py``). Every baseline the backfill fills must then hold the same
sample for every minute in both engines, and be missing in the same minutes.

How the history becomes events, as the exchanges would have sent them:

- a bar with volume is trades: their taker-buy and total notional are the bar's, at random times
  in the minute, the last one at the minute's last millisecond at the close price;
- each bar also means the venue's trade socket spoke at the minute's open and last millisecond:
  USDⓈ-M with a markPrice (which carries the funding rate), spot and Coinbase with a bookTicker.
  So a zero-volume bar is a quiet minute, not a dead feed;
- a missing bar is a minute in which that venue sent nothing: the engine's silence rule marks
  it missing in the venue's windows. The USDⓈ-M socket's silence also leaves the engine without
  a mark price, so without funding rate and open interest in USD for that minute;
- the markPrice's funding rate is the rate settled at the end of its interval (the README's
  reading of funding history); outside the settled intervals the history says nothing of it,
  and the markPrice carries none;
- an open-interest row is an OpenInterest event at its time, in contracts, and the mark price
  from then until the next row (the row is their product in USD, as the engine values it).
  Besides the rows at the 5-minute marks, some periods have a row between the marks, as live
  polls do: such a bucket holds several values, and the reference is the one at its mark;
- an unmapped event at every minute moves the engine's clock, as markPrice@1s does live, so each
  minute's close is observed even when every venue is silent.

Snapshots are published once a minute: a baseline sample is the value at a minute's close
whatever the publish interval, and the silence rule then judges a venue by whether it spoke
during the minute, which is what a bar says.

Coinbase candles have no taker side, so the backfilled ``taker_imbalance`` and
``net_taker_usd`` cover the Binance venues only (README "Backfill"): they are compared on an
asset without Coinbase, where the live signals are Binance-only too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from signals.backfill import AssetHistory, baseline_samples, chart_samples
from signals.baseline import Baseline
from signals.engine import BaselineSpec, SignalEngine
from streams.events import (
    BINANCE_SPOT,
    BINANCE_USDM,
    BUY,
    COINBASE,
    SELL,
    Bars,
    BookTicker,
    Event,
    MarkPrice,
    OpenInterest,
    Points,
    Trade,
)
from streams.units import DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS

SYMBOLS = {BINANCE_USDM: "XUSDT", BINANCE_SPOT: "XUSDT", COINBASE: "X-USD"}
OI_PERIOD_MS = 5 * MINUTE_MS  # Binance's open-interest history: one row per 5-minute mark
LAST_MS = MINUTE_MS - 1  # offset of a minute's last millisecond
SILENCE_MS = 15 * SECOND_MS  # collector.silence_timeout's default

# What the backfill samples, and so what is compared. Checked against what it produces, so that
# a signal added to the backfill is not silently left out here.
BACKFILLED = (
    "taker_imbalance",
    "net_taker_usd",
    "perp_spot_volume_ratio",
    "coinbase_premium_pct",
    "funding_rate",
    "oi_change_pct_24h",
)
BINANCE_FLOW = ("taker_imbalance", "net_taker_usd")  # Binance-only from history


@dataclass(frozen=True)
class Case:
    seed: int
    flow_minutes: int
    coverage: float
    volume_minutes: int

    def __str__(self) -> str:
        return f"seed{self.seed}-flow{self.flow_minutes}m-cov{self.coverage}"


# The last case has the default 24 h volume window, and a coverage whose product with the flow
# window rounds up in floating point (0.07 x 100 = 7.000000000000001): both paths must decide
# the same at the threshold (7 of 100 minutes is enough, as 7 / 100 >= 0.07).
CASES = [
    Case(0, 10, 0.3, 60),
    Case(1, 5, 0.5, 30),
    Case(2, 30, 0.1, 120),
    Case(3, 10, 0.7, 60),
    Case(4, 100, 0.07, 1440),
]


@dataclass
class Generated:
    history: AssetHistory
    events: list[Event]
    minutes: np.ndarray  # open ms of every minute the history covers (those compared)


def _presence(rng: np.random.Generator, n: int, long_outage: bool) -> np.ndarray:
    """Which minutes a venue has a bar: short random outages, and optionally one longer than
    the flow windows (so coverage fails for a while). The first minute is always there: live,
    coverage starts with a venue's first data, history's with its first bar."""
    present = np.ones(n, dtype=bool)
    for start in np.flatnonzero(rng.random(n) < 0.012):
        present[start : start + rng.geometric(0.3)] = False
    if long_outage:
        start = int(rng.integers(60, n - 200))
        present[start : start + int(rng.integers(35, 150))] = False
    present[0] = True
    return present


def _venue(
    rng: np.random.Generator,
    venue: str,
    t0: int,
    level: np.ndarray,
    present: np.ndarray,
    taker_side_known: bool,
) -> tuple[Bars, list[tuple[int, Event]]]:
    """One venue's bars and the trades and signs of life that make them."""
    symbol = SYMBOLS[venue]
    open_ms, close, quote, taker_buy = [], [], [], []
    events: list[tuple[int, Event]] = []
    last_price = float(level[0])
    for m in np.flatnonzero(present):
        t = t0 + int(m) * MINUTE_MS
        if venue != BINANCE_USDM:  # USDⓈ-M speaks with its markPrice, made by the caller
            for ts in (t, t + LAST_MS):
                price = last_price
                events.append((ts, BookTicker(venue, symbol, ts, ts, price, 1.0, price, 1.0)))
        # About one minute in twenty has no trade: a bar with zero volume.
        n_trades = 0 if rng.random() < 0.05 else int(rng.integers(1, 5))
        offsets = np.sort(rng.integers(0, LAST_MS, n_trades))
        if n_trades:
            offsets[-1] = LAST_MS  # the close is the minute's last trade
        buy_quote = total_quote = 0.0
        for offset in offsets:
            price = float(level[m] * np.exp(rng.normal(0.0, 2e-4)))
            qty = float(rng.lognormal(0.0, 1.0)) * 20_000.0 / price
            side = BUY if rng.random() < 0.5 else SELL
            ts = t + int(offset)
            trade_id = len(events)
            events.append((ts, Trade(venue, symbol, ts, ts, price, qty, side, trade_id)))
            notional = price * qty  # as the engine computes it
            total_quote += notional
            buy_quote += notional if side == BUY else 0.0
            last_price = price
        open_ms.append(t)
        close.append(last_price)  # a minute without trades closes at the previous price
        quote.append(total_quote)
        taker_buy.append(buy_quote if taker_side_known else np.nan)
    bars = Bars(
        np.array(open_ms, dtype=np.int64),
        np.array(close),
        np.array(quote),
        np.array(taker_buy),
    )
    return bars, events


def generate(seed: int, venues: tuple[str, ...]) -> Generated:
    rng = np.random.default_rng(seed)
    n = DAY_MS // MINUTE_MS + 3 * 60  # 27 h: three hours of 24 h open-interest changes
    # A minute-aligned start that is not a 5-minute mark: the first bucket is partial.
    t0 = 1_767_225_600_000 + int(rng.integers(1, 5)) * MINUTE_MS
    end = t0 + n * MINUTE_MS

    spot_level = 50_000.0 * np.exp(np.cumsum(rng.normal(0.0, 5e-4, n)))
    levels = {
        BINANCE_SPOT: spot_level,
        BINANCE_USDM: spot_level * (1.0 + 3e-4),
        COINBASE: spot_level * (1.0 + rng.normal(4e-4, 6e-4, n)),
    }
    outage_venue = venues[int(rng.integers(len(venues)))]
    bars: dict[str, Bars] = {}
    events: list[tuple[int, Event]] = []
    for venue in venues:
        present = _presence(rng, n, long_outage=venue == outage_venue)
        bars[venue], venue_events = _venue(
            rng, venue, t0, levels[venue], present, taker_side_known=venue != COINBASE
        )
        events += venue_events

    # Funding: a settlement every 4 h, a few milliseconds late as Binance's sometimes are, one
    # of them absent; the first may come after the start and the last before the end.
    settle = np.arange(t0 - 5 * HOUR_MS, end + 5 * HOUR_MS, 4 * HOUR_MS, dtype=np.int64)
    settle += int(rng.integers(0, 4 * HOUR_MS // MINUTE_MS)) * MINUTE_MS
    settle += rng.integers(0, 8, len(settle))
    settle = settle[
        (settle >= t0 - int(rng.integers(-3, 5)) * HOUR_MS)
        & (settle <= end - int(rng.integers(-3, 5)) * HOUR_MS)
    ]
    settle = np.delete(settle, int(rng.integers(1, len(settle) - 1)))
    funding = Points(settle, rng.normal(1e-4, 1.5e-4, len(settle)))

    # Open interest: a row at every 5-minute mark (from before the start, as the backfill fetches
    # a lead), some rows and one half hour of them missing. Between the marks live polls every
    # few seconds; an extra row inside about a third of the periods stands in for those polls,
    # so that a 5-minute bucket holds more than one value and the reference must be the one at
    # its mark. Each row is contracts at a mark price, which holds until the next row: the
    # history gives open interest in USD at the row's time only, and live values the latest
    # contracts at the current mark price, which are the same only while that price holds.
    marks = np.arange(
        (t0 - 40 * MINUTE_MS) // OI_PERIOD_MS * OI_PERIOD_MS, end, OI_PERIOD_MS, dtype=np.int64
    )
    kept = rng.random(len(marks)) > 0.08
    hole = int(rng.integers(0, len(marks) - 6))
    kept[hole : hole + 6] = False
    extra = marks[rng.random(len(marks)) < 0.3]
    extra += rng.integers(MINUTE_MS, OI_PERIOD_MS - MINUTE_MS, len(extra))
    oi_ts = np.sort(np.concatenate((marks[kept], extra)))
    contracts = 1e5 * np.exp(np.cumsum(rng.normal(0.0, 2e-3, len(oi_ts))))
    mark_price = 50_000.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-3, len(oi_ts))))
    # USD as the engine computes it: open interest x mark price, in Python floats.
    oi_usd = np.array([float(c) * float(p) for c, p in zip(contracts, mark_price, strict=True)])
    open_interest = Points(oi_ts, oi_usd)
    symbol = SYMBOLS[BINANCE_USDM]
    for ts, held in zip(oi_ts.tolist(), contracts.tolist(), strict=True):
        events.append((ts, OpenInterest(BINANCE_USDM, symbol, ts, ts, held)))

    # The USDⓈ-M socket's markPrice in every minute with a perp bar: the mark price of the
    # latest open-interest row, and the predicted funding rate, which the history gives as the
    # rate settled at the end of the interval under way (none outside the settled intervals).
    for t in bars[BINANCE_USDM].open_ms:
        for ts in (int(t), int(t) + LAST_MS):
            k = int(np.searchsorted(settle, ts, side="right"))
            rate = float(funding.value[k]) if 0 < k < len(settle) else None
            price = float(mark_price[max(0, np.searchsorted(oi_ts, ts, side="right") - 1)])
            events.append((ts, MarkPrice(BINANCE_USDM, symbol, ts, ts, price, price, rate, None)))

    # The clock: an event no asset maps, at every minute from the first event on, until the
    # history's last minute has closed. The minutes after it are not the history's to say
    # (there, live takes over and the backfill never writes), so they are not compared.
    first = min(t0, int(marks[0]), int(settle[0]) // MINUTE_MS * MINUTE_MS)
    minutes = np.arange(first, end, MINUTE_MS, dtype=np.int64)
    for t in (*minutes, end, end + MINUTE_MS):
        ts = int(t)
        events.append((ts, Trade(BINANCE_USDM, "UNMAPPED", ts, ts, 1.0, 1.0, BUY, 0)))

    events.sort(key=lambda pair: pair[0])  # stable: same-time events keep their order
    history = AssetHistory(
        perp=bars[BINANCE_USDM],
        spot=bars[BINANCE_SPOT],
        coinbase=bars.get(COINBASE, Bars.empty()),
        funding=funding,
        open_interest=open_interest,
    )
    return Generated(history, [event for _, event in events], minutes)


def make_engine(case: Case, venues: tuple[str, ...], minutes: int) -> SignalEngine:
    return SignalEngine(
        {"X": {venue: SYMBOLS[venue] for venue in venues}},
        flow_window_ms=case.flow_minutes * MINUTE_MS,
        bucket_ms=SECOND_MS,
        publish_interval_ms=MINUTE_MS,
        flow_min_coverage=case.coverage,
        volume_window_ms=case.volume_minutes * MINUTE_MS,
        baseline=BaselineSpec(span_ms=(minutes + 10) * MINUTE_MS, bucket_ms=MINUTE_MS, min_obs=1),
        silence_ms=SILENCE_MS,
    )


def samples_by_minute(baseline: Baseline, minutes: np.ndarray) -> np.ndarray:
    """The sample a baseline holds for each minute (NaN where it holds none)."""
    out = np.full(len(minutes), np.nan)
    for i, t in enumerate(minutes):
        held = baseline.window.bucket(int(t))
        if held is not None:
            out[i] = held[0]
    return out


# Absolute tolerance per signal, for values that are a difference of two large sums (net
# taker notional is buy - sell of window sums near 1e6 USD: summed in another order, the last
# bits differ) or cross zero; everything else is held to the relative tolerance alone.
ATOL = {"net_taker_usd": 1e-6, "taker_imbalance": 1e-12, "coinbase_premium_pct": 1e-12}
RTOL = 1e-9


@pytest.mark.parametrize("venues", ["binance", "all"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_backfill_and_live_engine_sample_the_same_values(case: Case, venues: str) -> None:
    configured = (BINANCE_USDM, BINANCE_SPOT) + ((COINBASE,) if venues == "all" else ())
    data = generate(case.seed, configured)
    n = len(data.minutes)

    live = make_engine(case, configured, n)
    for event in data.events:
        live.on_event(event)
    filled = make_engine(case, configured, n)
    added = filled.assets["X"].backfill(data.history)

    produced = baseline_samples(
        data.history, case.flow_minutes * MINUTE_MS, case.volume_minutes * MINUTE_MS, case.coverage
    )
    expected = set(BACKFILLED) - (set() if venues == "all" else {"coinbase_premium_pct"})
    assert set(produced) == expected
    compared = sorted(expected - (set(BINANCE_FLOW) if venues == "all" else set()))
    for name in compared:
        got = samples_by_minute(live.assets["X"].baselines[name], data.minutes)
        want = samples_by_minute(filled.assets["X"].baselines[name], data.minutes)
        assert added[name] == np.isfinite(want).sum()  # none outside the history's minutes
        # Enough of both, or the comparison proves little: the gaps must have bitten, and most
        # minutes must carry a value (oi_change_pct_24h only has the last 3 h).
        present = np.isfinite(want)
        assert present.sum() >= (100 if name == "oi_change_pct_24h" else 600), name
        assert (~present).sum() >= 20, name
        mismatch = np.flatnonzero(np.isfinite(got) != present)
        assert len(mismatch) == 0, (
            f"{name}: missing in one path only at minutes {data.minutes[mismatch[:5]].tolist()} "
            f"(live {got[mismatch[:5]].tolist()}, backfill {want[mismatch[:5]].tolist()})"
        )
        np.testing.assert_allclose(
            got[present], want[present], rtol=RTOL, atol=ATOL.get(name, 0.0), err_msg=name
        )


# What the chart history adds from the same bars (monitor/series.py ``backfill_rows``).
CHARTED = (
    "taker_imbalance_perp",
    "taker_imbalance_spot",
    "taker_buy_ratio",
    "taker_sell_ratio",
    "taker_buy_sell_ratio",
    "open_interest_usd",
)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_charts_past_minutes_equal_the_live_snapshots(case: Case) -> None:
    """The chart history's past values of the signals no baseline keeps, against what the live
    engine publishes at each minute's close from the same history as events."""
    configured = (BINANCE_USDM, BINANCE_SPOT)
    data = generate(case.seed, configured)
    live = make_engine(case, configured, len(data.minutes))
    at_close: dict[int, dict[str, float | None]] = {}  # minute open -> values at its close
    for event in data.events:
        for snap in live.on_event(event):
            at_close[snap.ts_event - MINUTE_MS] = snap.values
    produced = chart_samples(data.history, case.flow_minutes * MINUTE_MS, case.coverage)
    assert set(produced) == set(CHARTED)
    minutes = set(data.minutes.tolist())
    for name in CHARTED:
        t, v = produced[name]
        want = {m: x for m, x in zip(t.tolist(), v.tolist(), strict=True) if m in minutes}
        got = {
            m: values[name]
            for m, values in at_close.items()
            if m in minutes and values[name] is not None
        }
        assert len(want) >= 100 and len(minutes) - len(want) >= 20, name  # gaps bit
        assert sorted(set(got) ^ set(want))[:5] == [], f"{name}: present in one path only"
        keys = sorted(want)
        np.testing.assert_allclose(
            [got[m] for m in keys], [want[m] for m in keys], rtol=RTOL, atol=1e-12, err_msg=name
        )
