"""Baseline samples from REST history, so the 90-day z-scores are useful on the first day.

Live, a z-scored metric is sampled at the close of every baseline bucket (one minute). Here the
same metrics are computed for past minutes from one-minute bars, with the live definitions:

==========================  ================================================================
metric                      from history
==========================  ================================================================
taker_imbalance             Binance perp + spot klines (taker buy quote / quote volume),
net_taker_usd               summed over the flow window ending at the minute. Coinbase candles
                            carry no taker side, so these samples cover the Binance venues only.
perp_spot_volume_ratio      perp / spot kline quote volume over the volume window.
coinbase_premium_pct        (Coinbase candle close - Binance spot close) / spot close x 100.
funding_rate                the settled rate of the funding interval holding the minute (the
                            live predicted rate converges to it during the interval).
oi_change_pct_24h           open-interest history (5-minute rows, 30 days at most) against the
                            row 24 h earlier.
liquidations_usd,           no history exists: these baselines grow from live data only.
depth_usd_1pct
==========================  ================================================================

A rolling window needs enough bars, with the live rule: at least ``min_coverage`` of its
minutes. Every function is pure: arrays in, arrays out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from streams.events import Bars, Points

MINUTE_MS = 60_000
DAY_MS = 86_400_000
OI_ROW_MS = 5 * MINUTE_MS

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
        out["funding_rate"] = _funding_samples(history.funding)
    if len(history.open_interest):
        out["oi_change_pct_24h"] = _oi_change_samples(history.open_interest)
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

    def complete(window_ms: int) -> np.ndarray:
        if history.complete_from_ms is None:
            return np.ones(len(t), dtype=bool)
        return t + MINUTE_MS - window_ms >= history.complete_from_ms

    perp_quote = grid.place(perp.open_ms, perp.quote_volume)
    spot_quote = grid.place(spot.open_ms, spot.quote_volume)
    flow_slots = max(1, flow_window_ms // MINUTE_MS)
    flow_min = math.ceil(min_coverage * flow_slots)
    binance = [b for b in (perp, spot) if len(b)]
    if binance and flow_window_ms % MINUTE_MS == 0:
        # Taker flow of the Binance venues: a minute counts only when each has its bar.
        buy = sum(grid.place(b.open_ms, b.taker_buy_quote) for b in binance)
        total = sum(grid.place(b.open_ms, b.quote_volume) for b in binance)
        buys = rolling_sum(np.asarray(buy), flow_slots, flow_min)
        totals = rolling_sum(np.asarray(total), flow_slots, flow_min)
        net = 2.0 * buys - totals  # buy - sell
        ok = (totals > 0) & complete(flow_window_ms)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["taker_imbalance"] = (t, np.where(ok, net / totals, np.nan))
        out["net_taker_usd"] = (t, np.where(ok, net, np.nan))
    if len(perp) and len(spot) and volume_window_ms % MINUTE_MS == 0:
        slots = volume_window_ms // MINUTE_MS
        both = ~np.isnan(perp_quote) & ~np.isnan(spot_quote)
        need = math.ceil(min_coverage * slots)
        perp_sum = rolling_sum(np.where(both, perp_quote, np.nan), slots, need)
        spot_sum = rolling_sum(np.where(both, spot_quote, np.nan), slots, need)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(
                (spot_sum > 0) & complete(volume_window_ms), perp_sum / spot_sum, np.nan
            )
        out["perp_spot_volume_ratio"] = (t, ratio)
    if len(spot) and len(history.coinbase):
        spot_close = grid.place(spot.open_ms, spot.close)
        cb_close = grid.place(history.coinbase.open_ms, history.coinbase.close)
        out["coinbase_premium_pct"] = (t, (cb_close - spot_close) / spot_close * 100.0)
    return out


def _funding_samples(funding: Points) -> tuple[np.ndarray, np.ndarray]:
    """Each minute between two settlements gets the rate settled at the later one."""
    first, last = int(funding.ts_ms[0]), int(funding.ts_ms[-1])
    t = np.arange(first, last, MINUTE_MS, dtype=np.int64)
    close = t + MINUTE_MS
    k = np.searchsorted(funding.ts_ms, close, side="left")
    valid = (k > 0) & (k < len(funding))  # strictly inside a settled interval
    values = np.full(len(t), np.nan)
    values[valid] = funding.value[k[valid]]
    return t, values


def _oi_change_samples(oi: Points) -> tuple[np.ndarray, np.ndarray]:
    """For each minute covered by a row: (row / row 24 h earlier - 1) x 100. A row holds from
    its timestamp until the next one (5 minutes later)."""
    rows = oi.ts_ms
    then = np.searchsorted(rows, rows - DAY_MS)
    found = (then < len(rows)) & (rows[np.minimum(then, len(rows) - 1)] == rows - DAY_MS)
    change = np.full(len(rows), np.nan)
    past = oi.value[then[found]]
    change[found] = (oi.value[found] / past - 1.0) * 100.0
    minutes = OI_ROW_MS // MINUTE_MS
    t = (rows[:, None] + MINUTE_MS * np.arange(minutes)).ravel()
    return t, np.repeat(change, minutes)


def history_rows(history: AssetHistory, bucket_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """The engine's open-interest / price history (``bucket_ms`` buckets, channels
    (oi sum, oi count, price sum, price count)) from the fetched rows, so the 24 h and 7 d
    changes exist from the first minute."""
    oi, spot = history.open_interest, history.spot
    buckets = np.concatenate((oi.ts_ms // bucket_ms, spot.open_ms // bucket_ms))
    if len(buckets) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4))
    keys, index = np.unique(buckets, return_inverse=True)
    rows = np.zeros((len(keys), 4))
    n = len(oi)
    np.add.at(rows[:, 0], index[:n], oi.value)
    np.add.at(rows[:, 1], index[:n], 1.0)
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
