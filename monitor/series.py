"""Signal history as chart series: the one-minute samples a chart plots, pure.

A signal's history is sampled once a minute, at the minute's close: the last snapshot whose
boundary falls in the minute (a snapshot at boundary B is the value at the close of the bucket
holding B - 1, so the sample of minute m is the snapshot at (m + 1) x 60 s, or the latest
before it when event time skipped that boundary). That is the same moment the 90-day baselines
sample, so a chart of a z-scored signal shows what its baseline holds.

A sample is one row of ``COLUMNS``: every catalogue signal's value, then the z of each z-scored
one. Missing is NaN, never 0. Rows are float32 (seven significant digits: a price of 64,123.45
reads back as 64,123.45 ± 0.004), which halves the store for numbers that are drawn, not added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from signals.catalogue import SIGNALS, Z_SCORED
from signals.engine import SignalSnapshot
from signals.regimes import RegimeChange
from streams.units import MINUTE_MS

COLUMNS: tuple[str, ...] = (*SIGNALS, *(f"{name}_z" for name in Z_SCORED))
ROW_DTYPE = np.dtype("<f4")


def minute_of(boundary_ms: int) -> int:
    """The minute (its open, ms) whose close a snapshot at ``boundary_ms`` samples."""
    return (boundary_ms - 1) // MINUTE_MS * MINUTE_MS


def row(snap: SignalSnapshot, columns: tuple[str, ...] = COLUMNS) -> np.ndarray:
    """``snap`` as one row of ``columns`` (NaN where missing)."""
    values = snap.values
    out = np.full(len(columns), np.nan, dtype=ROW_DTYPE)
    for i, name in enumerate(columns):
        if name.endswith("_z") and name not in values:
            score = snap.z.get(name[:-2])
            value = None if score is None else score.z
        else:
            value = values.get(name)
        if value is not None:
            out[i] = value
    return out


@dataclass(frozen=True, slots=True)
class Sample:
    """One asset's signals at the close of one minute."""

    asset: str
    minute: int  # the minute's open, ms (event time)
    row: np.ndarray  # COLUMNS, float32


@dataclass(frozen=True, slots=True)
class ChartItems:
    """What the signal history store gets from the pipeline since it last asked."""

    samples: list[Sample]  # one per asset and closed minute
    changes: list[tuple[RegimeChange, dict[str, Any]]]  # with its message's payload
    history: list[tuple[str, np.ndarray, np.ndarray]]  # asset, past minutes, their rows


class MinuteSampler:
    """Turns the per-interval snapshots into one sample per asset and minute."""

    def __init__(self) -> None:
        self._latest: dict[str, SignalSnapshot] = {}  # asset -> latest snapshot of its minute

    def add(self, snap: SignalSnapshot) -> Sample | None:
        """The sample of the minute that ``snap`` closes, if it moved to a new minute."""
        held = self._latest.get(snap.asset)
        self._latest[snap.asset] = snap
        if held is None or minute_of(held.ts_event) == minute_of(snap.ts_event):
            return None
        return Sample(snap.asset, minute_of(held.ts_event), row(held))

    def flush(self) -> list[Sample]:
        """The minutes still open (at the end of a replay): their latest snapshot so far."""
        out = [Sample(a, minute_of(s.ts_event), row(s)) for a, s in self._latest.items()]
        self._latest.clear()
        return out


def downsample(
    times: np.ndarray, values: np.ndarray, max_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` rows of a series (``times`` ascending, ``values`` one column per
    signal), drawn as the original would be: each of ``max_points // 2`` equal runs of rows
    becomes two, each column's minimum and maximum in the order they occurred, at the run's
    first time and its middle one. A one-minute spike (a liquidation burst) survives a 90-day
    view, and a run with no value in a column stays NaN there (a gap stays a gap)."""
    n = len(times)
    if n <= max_points or max_points < 2:
        return times, values
    runs = max_points // 2
    starts = np.unique(np.arange(runs, dtype=np.int64) * n // runs)  # exact: no float rounding
    ends = np.append(starts[1:], n)
    # Each column's rows side by side in memory: a reduction along them is several times faster
    # than down the columns of row-major rows (no copy if ``values`` is a transposed array).
    by_column = np.ascontiguousarray(values.T)
    with np.errstate(invalid="ignore"):  # a run that is all NaN has NaN extremes: a gap
        lo = np.fmin.reduceat(by_column, starts, axis=1)
        hi = np.fmax.reduceat(by_column, starts, axis=1)
    # The first row of each run holding its minimum (maximum), for the pair's order.
    index, past = np.arange(n, dtype=np.int32), np.int32(n)
    at_lo, at_hi = (
        np.minimum.reduceat(
            np.where(by_column == np.repeat(v, ends - starts, axis=1), index, past), starts, axis=1
        )
        for v in (lo, hi)
    )
    low_first = at_lo <= at_hi
    first = np.where(low_first, lo, hi)
    second = np.where(low_first, hi, lo)
    out_times = np.stack([times[starts], times[(starts + ends - 1) // 2]], axis=1).reshape(-1)
    out_values = np.stack([first.T, second.T], axis=1).reshape(-1, values.shape[1])
    return out_times, out_values


def backfill_rows(
    samples: dict[str, tuple[np.ndarray, np.ndarray]], price: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Rows for past minutes from the start-up history: ``samples`` are the backfill's values
    of the z-scored signals per minute open (``signals.backfill.baseline_samples``), ``price``
    the spot bars' (minute open, close). The other columns, and every z, are NaN: history
    says nothing about them (a z is recorded live only, against the baseline of its moment).
    Returns (minute opens ascending, rows of ``COLUMNS``)."""
    series = {**samples, "price": price}
    times = [t for t, _ in series.values() if len(t)]
    if not times:
        return np.zeros(0, dtype=np.int64), np.zeros((0, len(COLUMNS)), dtype=ROW_DTYPE)
    minutes = np.unique(np.concatenate(times)).astype(np.int64)
    rows = np.full((len(minutes), len(COLUMNS)), np.nan, dtype=ROW_DTYPE)
    for name, (t, v) in series.items():
        if name in COLUMNS and len(t):
            rows[np.searchsorted(minutes, t), COLUMNS.index(name)] = v
    return minutes, rows
