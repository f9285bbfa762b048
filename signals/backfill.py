"""Baseline samples from REST history, so the 90-day z-scores are useful on the first day.

Live, a z-scored metric is sampled at the close of every baseline bucket (one minute). Here the
same metrics are computed for past minutes from one-minute bars, with the live definitions
(``tests/test_signal_definitions.py`` feeds one history to both and requires equal samples):

==========================  ================================================================
metric                      from history
==========================  ================================================================
taker_imbalance             Binance perp + spot klines (taker buy quote / quote volume), each
net_taker_usd               venue summed over the flow window ending at the minute, counted
                            only when every venue with bars covers ``min_coverage`` of its
                            window. Coinbase candles carry no taker side, so these samples cover
                            the Binance venues only.
perp_spot_volume_ratio      perp / spot kline quote volume over the volume window, on the
                            minutes where both venues have a bar.
coinbase_premium_pct        (Coinbase candle close - Binance spot close) / spot close x 100,
                            where both bars traded (without a trade there is no fresh price).
funding_rate                the settled rate of the funding interval holding the minute (the
                            live predicted rate converges to it during the interval).
oi_change_pct_24h           open_interest_usd at the minute's close (the latest open-interest
                            row, at most 5 minutes old) against the first value in the 5-minute
                            bucket 24 h earlier: the row at that 5-minute mark (30 days at most).
liquidations_usd,           no history exists: these baselines grow from live data only.
depth_usd_1pct
==========================  ================================================================

A missing bar is a minute in which the venue delivered nothing, which live is a silent trade
socket: its windows count the minute missing. A rolling window needs, as live, at least
``min_coverage`` of its minutes. The USDⓈ-M socket also carries the mark price, which prices the
open interest and carries the funding rate: when perp bars were fetched, a minute without one
has no ``funding_rate`` and no ``open_interest_usd``, as live would have had none. Every function
is pure: arrays in, arrays out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from streams.events import Bars, Points
from streams.units import DAY_MS, MINUTE_MS

# Shared with the live engine (signals/engine.py imports them), so both apply the same numbers.
# Open interest older than this means the poller has stopped: it is missing, not the last value.
OI_STALE_MS = 5 * MINUTE_MS
# The buckets of the open-interest/price history behind the oi_change_pct_* and price_*
# changes. Binance's open-interest history has one row per 5-minute mark, and the value at a
# mark is what live (its first value in the bucket) and history (the row) can both give.
HISTORY_BUCKET_MS = 5 * MINUTE_MS

Samples = dict[str, tuple[np.ndarray, np.ndarray]]  # metric -> (minute open ms, value)


@dataclass(frozen=True, slots=True)
class AssetHistory:
    """What the backfill fetched for one asset; a venue the asset lacks stays empty."""

    perp: Bars = field(default_factory=Bars.empty)
    spot: Bars = field(default_factory=Bars.empty)
    coinbase: Bars = field(default_factory=Bars.empty)
    funding: Points = field(default_factory=Points.empty)
    open_interest: Points = field(default_factory=Points.empty)  # USD
    # Bars before this time were not fetched (yet): a rolling window reaching back past it
    # would be partial, so no sample is made for it. None = the bars are all there are.
    complete_from_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Grid:
    """Bars of several venues aligned on one dense minute grid (NaN where a bar is absent)."""

    start_ms: int
    minutes: int

    @classmethod
    def spanning(cls, *bars: Bars) -> Grid | None:
        present = [b.open_ms for b in bars if len(b)]
        if not present:
            return None
        lo = min(int(t[0]) for t in present)
        hi = max(int(t[-1]) for t in present)
        return cls(lo, (hi - lo) // MINUTE_MS + 1)

    @property
    def open_ms(self) -> np.ndarray:
        return self.start_ms + MINUTE_MS * np.arange(self.minutes, dtype=np.int64)

    def place(self, times: np.ndarray, values: np.ndarray) -> np.ndarray:
        out = np.full(self.minutes, np.nan)
        out[(times - self.start_ms) // MINUTE_MS] = values
        return out


def rolling_sum(values: np.ndarray, slots: int, min_count: int) -> np.ndarray:
    """Sum of the last ``slots`` values at each position, NaN ignored; NaN where fewer than
    ``min_count`` values were present."""
    present = ~np.isnan(values)
    sums = _window_sum(np.where(present, values, 0.0), slots)
    counts = _window_sum(present.astype(float), slots)
    return np.where(counts >= max(1, min_count), sums, np.nan)


def _window_sum(x: np.ndarray, slots: int) -> np.ndarray:
    # Cumulative sums in float64: over 90 days of minute volumes the relative error of a window
    # sum stays near 1e-12, far below anything a z-score can show.
    c = np.concatenate(([0.0], np.cumsum(x)))
    hi = np.arange(1, len(x) + 1)
    return c[hi] - c[np.maximum(0, hi - slots)]


def _min_count(coverage: float, slots: int) -> int:
    """The fewest present slots out of ``slots`` that cover ``coverage``, decided the way live
    decides it (``present / slots >= coverage``): ``ceil(coverage * slots)`` alone can round one
    too high (0.07 x 100 = 7.000000000000001, yet 7 of 100 cover 0.07)."""
    need = max(0, math.ceil(coverage * slots))
    while need > 0 and (need - 1) / slots >= coverage:
        need -= 1
    return need


def _perp_alive(perp: Bars, open_ms: np.ndarray) -> np.ndarray:
    """Minutes (by open time) in which the USDⓈ-M socket delivered something: those with a perp
    bar. Without any perp bar nothing is known, and every minute counts as alive."""
    if len(perp) == 0:
        return np.ones(len(open_ms), dtype=bool)
    return np.isin(open_ms, perp.open_ms, assume_unique=True)


def baseline_samples(
    history: AssetHistory,
    flow_window_ms: int,
    volume_window_ms: int,
    min_coverage: float,
) -> Samples:
    """Per z-scored metric, its value at the close of each past minute the history supports."""
    out: Samples = {}
    grid = Grid.spanning(history.perp, history.spot, history.coinbase)
    if grid is not None:
        out.update(_flow_samples(history, grid, flow_window_ms, volume_window_ms, min_coverage))
    if len(history.funding):
        out["funding_rate"] = _funding_samples(history.funding, history.perp)
    if len(history.open_interest):
        out["oi_change_pct_24h"] = _oi_change_samples(history)
    return {name: (t[ok], v[ok]) for name, (t, v) in out.items() if (ok := np.isfinite(v)).any()}


def _flow_samples(
    history: AssetHistory,
    grid: Grid,
    flow_window_ms: int,
    volume_window_ms: int,
    min_coverage: float,
) -> Samples:
    t = grid.open_ms
    out: Samples = {}
    perp, spot = history.perp, history.spot

    flow_slots = max(1, flow_window_ms // MINUTE_MS)
    flow_need = _min_count(min_coverage, flow_slots)
    binance = [b for b in (perp, spot) if len(b)]
    if binance and flow_window_ms % MINUTE_MS == 0:
        # Per venue, as live: each venue's window must cover ``min_coverage`` of its minutes on
        # its own, and then all of its volume counts, whatever the other venue had that minute.
        buys = sum(
            rolling_sum(grid.place(b.open_ms, b.taker_buy_quote), flow_slots, flow_need)
            for b in binance
        )
        totals = sum(
            rolling_sum(grid.place(b.open_ms, b.quote_volume), flow_slots, flow_need)
            for b in binance
        )
        buys, totals = np.asarray(buys), np.asarray(totals)
        net = 2.0 * buys - totals  # buy - sell
        ok = (totals > 0) & _complete(history, t, flow_window_ms)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["taker_imbalance"] = (t, np.where(ok, net / totals, np.nan))
        out["net_taker_usd"] = (t, np.where(ok, net, np.nan))
    if len(perp) and len(spot) and volume_window_ms % MINUTE_MS == 0:
        # One window for both venues, as live: a minute missing on either leaves both sums.
        perp_quote = grid.place(perp.open_ms, perp.quote_volume)
        spot_quote = grid.place(spot.open_ms, spot.quote_volume)
        slots = volume_window_ms // MINUTE_MS
        both = ~np.isnan(perp_quote) & ~np.isnan(spot_quote)
        need = _min_count(min_coverage, slots)
        perp_sum = rolling_sum(np.where(both, perp_quote, np.nan), slots, need)
        spot_sum = rolling_sum(np.where(both, spot_quote, np.nan), slots, need)
        ok = (spot_sum > 0) & _complete(history, t, volume_window_ms)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(ok, perp_sum / spot_sum, np.nan)
        out["perp_spot_volume_ratio"] = (t, ratio)
    if len(spot) and len(history.coinbase):
        # Live compares the two last trades, each at most 10 s old at the close. A bar without
        # volume had no trade that minute (its close is the previous one): no sample.
        cb = history.coinbase
        spot_close = grid.place(spot.open_ms, np.where(spot.quote_volume > 0, spot.close, np.nan))
        cb_close = grid.place(cb.open_ms, np.where(cb.quote_volume > 0, cb.close, np.nan))
        out["coinbase_premium_pct"] = (t, (cb_close - spot_close) / spot_close * 100.0)
    return out


def chart_samples(history: AssetHistory, flow_window_ms: int, min_coverage: float) -> Samples:
    """Past values of the signals the charts show beyond the baselines' metrics, with the live
    definitions: each Binance venue's ``taker_imbalance_<venue>`` and the perp's
    ``taker_buy_ratio``, ``taker_sell_ratio`` and ``taker_buy_sell_ratio`` (a venue's own
    flow window covering ``min_coverage`` of its minutes), and ``open_interest_usd``."""
    out: Samples = {}
    grid = Grid.spanning(history.perp, history.spot, history.coinbase)
    if grid is not None and flow_window_ms % MINUTE_MS == 0:
        t = grid.open_ms
        slots = max(1, flow_window_ms // MINUTE_MS)
        need = _min_count(min_coverage, slots)
        whole = _complete(history, t, flow_window_ms)
        for venue, bars in (("perp", history.perp), ("spot", history.spot)):
            if not len(bars):
                continue
            # Sell summed on its own, as live does: a window of buyers only has a sell of
            # exactly 0 (total - buy would leave a rounding residue, and a huge ratio).
            taker_sell = bars.quote_volume - bars.taker_buy_quote
            buy = rolling_sum(grid.place(bars.open_ms, bars.taker_buy_quote), slots, need)
            sell = rolling_sum(grid.place(bars.open_ms, taker_sell), slots, need)
            total = buy + sell
            ok = (total > 0) & whole
            with np.errstate(invalid="ignore", divide="ignore"):
                out[f"taker_imbalance_{venue}"] = (t, np.where(ok, (buy - sell) / total, np.nan))
                if venue == "perp":
                    out["taker_buy_ratio"] = (t, np.where(ok, buy / total, np.nan))
                    out["taker_sell_ratio"] = (t, np.where(ok, sell / total, np.nan))
                    ratio = np.where(ok & (sell > 0), buy / sell, np.nan)
                    out["taker_buy_sell_ratio"] = (t, ratio)
    if len(history.open_interest):
        out["open_interest_usd"] = _oi_usd_at_close(history)
    return {name: (t[ok], v[ok]) for name, (t, v) in out.items() if (ok := np.isfinite(v)).any()}


def _complete(history: AssetHistory, t: np.ndarray, window_ms: int) -> np.ndarray:
    """Minutes (by open time) whose window ending at their close lies within the fetched
    history: before ``complete_from_ms`` a window would be partial."""
    if history.complete_from_ms is None:
        return np.ones(len(t), dtype=bool)
    return t + MINUTE_MS - window_ms >= history.complete_from_ms


def _funding_samples(funding: Points, perp: Bars) -> tuple[np.ndarray, np.ndarray]:
    """Each minute between two settlements gets the rate settled at the later one, unless the
    USDⓈ-M socket (which carries the rate live, in markPrice) was silent that minute."""
    first, last = int(funding.ts_ms[0]), int(funding.ts_ms[-1])
    t = np.arange(first // MINUTE_MS * MINUTE_MS, last, MINUTE_MS, dtype=np.int64)
    close = t + MINUTE_MS
    k = np.searchsorted(funding.ts_ms, close, side="left")
    valid = (k > 0) & (k < len(funding)) & _perp_alive(perp, t)  # inside a settled interval
    values = np.full(len(t), np.nan)
    values[valid] = funding.value[k[valid]]
    return t, values


def _oi_usd_at_close(history: AssetHistory) -> tuple[np.ndarray, np.ndarray]:
    """``open_interest_usd`` at the close of each minute from the first open-interest row on,
    as live has it: the latest row before the close, missing when that row is more than
    OI_STALE_MS old or when the USDⓈ-M socket, whose mark price values the open interest live,
    was silent that minute. Returns (minute open ms, USD)."""
    oi = history.open_interest
    rows = oi.ts_ms
    first = int(rows[0]) // MINUTE_MS * MINUTE_MS
    t = np.arange(first, int(rows[-1]) + OI_STALE_MS, MINUTE_MS, dtype=np.int64)
    close = t + MINUTE_MS
    latest = np.searchsorted(rows, close, side="left") - 1  # the last row with time < close
    row = np.maximum(latest, 0)
    fresh = (latest >= 0) & (close - rows[row] <= OI_STALE_MS) & _perp_alive(history.perp, t)
    return t, np.where(fresh, oi.value[row], np.nan)


def _first_per_bucket(
    open_ms: np.ndarray, values: np.ndarray, bucket_ms: int
) -> tuple[np.ndarray, np.ndarray]:
    """(bucket index, first finite value) of every bucket holding a finite value: the open
    interest at each 5-minute mark, as live records it (its first value in the bucket)."""
    ok = np.isfinite(values)
    buckets = open_ms[ok] // bucket_ms
    keys, first = np.unique(buckets, return_index=True)  # first occurrence: times are sorted
    return keys, values[ok][first]


def _oi_change_samples(history: AssetHistory) -> tuple[np.ndarray, np.ndarray]:
    """For each minute: (open_interest_usd at its close / the value at the 5-minute mark 24 h
    earlier - 1) x 100, the live rule (signals/engine.py ``_changes``)."""
    t, now = _oi_usd_at_close(history)
    keys, marks = _first_per_bucket(t, now, HISTORY_BUCKET_MS)
    # Live looks up the bucket holding (close - 1 ms) - 24 h: the minute's own open - 24 h.
    then = (t + MINUTE_MS - 1 - DAY_MS) // HISTORY_BUCKET_MS
    past = np.full(len(t), np.nan)
    if len(keys):
        i = np.minimum(np.searchsorted(keys, then), len(keys) - 1)
        found = keys[i] == then
        past[found] = marks[i[found]]
    with np.errstate(invalid="ignore", divide="ignore"):
        change = np.where(past > 0, (now / past - 1.0) * 100.0, np.nan)
    return t, change


def history_rows(history: AssetHistory, bucket_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """The engine's open-interest / price history (``bucket_ms`` buckets, channels
    (oi value, oi count, price sum, price count)) from the fetched rows, so the 24 h and 7 d
    changes exist from the first minute. The open interest of a bucket is its value at the
    5-minute mark (count 1), as live records it."""
    oi, spot = history.open_interest, history.spot
    if len(oi):
        oi_keys, oi_values = _first_per_bucket(*_oi_usd_at_close(history), bucket_ms)
    else:
        oi_keys, oi_values = np.zeros(0, dtype=np.int64), np.zeros(0)
    buckets = np.concatenate((oi_keys, spot.open_ms // bucket_ms))
    if len(buckets) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4))
    keys, index = np.unique(buckets, return_inverse=True)
    rows = np.zeros((len(keys), 4))
    n = len(oi_keys)
    rows[index[:n], 0] = oi_values  # one per bucket: the keys are unique
    rows[index[:n], 1] = 1.0
    np.add.at(rows[:, 2], index[n:], spot.close)
    np.add.at(rows[:, 3], index[n:], 1.0)
    return keys, rows


def volume_rows(history: AssetHistory, bucket_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """The engine's perp/spot volume window (channels perp, spot quote volume) from klines:
    minutes where both venues have a bar, so the ratio compares the same minutes."""
    perp, spot = history.perp, history.spot
    common, pi, si = np.intersect1d(perp.open_ms, spot.open_ms, return_indices=True)
    if bucket_ms != MINUTE_MS or len(common) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 2))
    rows = np.column_stack((perp.quote_volume[pi], spot.quote_volume[si]))
    return common // bucket_ms, rows
