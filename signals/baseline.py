"""z-scores against a long baseline (90 days of one-minute samples by default).

A metric is sampled once per baseline bucket: the value it had when the bucket closed (the last
value observed in it). Buckets in which the metric was missing, or in which the feed was down,
hold no sample, so they are excluded rather than read as zero. ``z = (x - mean) / std`` with
ddof 0, or, robust, ``(x - median) / (1.4826 * MAD)``.

Why there is no running-moment update here: add/subtract moment updates drift after a volatile
stretch, and even an exact sum of squares cancels catastrophically at large levels (open
interest in billions). The mean and std are instead kept per block of about sqrt(slots)
consecutive slots (360 blocks of 360 for 90 days of minutes): each block's count, mean and sum
of squared deviations come from a two-pass pass over its own samples, and the blocks combine
exactly (Chan, Golub and LeVeque's pairwise formula: every term non-negative, nothing
cancels). A closing bucket changes one slot, so only its block is recomputed: 17 us in an idle
loop, where a two-pass over all 129,600 samples took 166 us there and 1.5 ms (4.5 ms at p99)
amid bench/latency.py's traffic on a 2-core VM. The
robust (median/MAD) baseline has no such decomposition and recomputes over every sample.

Every baseline of every asset closes its bucket on the same tick, so the recompute is deferred:
``observe`` only marks the baseline ``stale``, ``score`` recomputes first unless told not to, and
the signal engine recomputes a few stale baselines per publish tick (a one-sample-old mean and
std for a few seconds, instead of one tick that holds the event loop for all of them).
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

from signals.window import BucketWindow

# Scales the MAD to a standard deviation for normally distributed data.
MAD_TO_STD = 1.4826


class ZScore(msgspec.Struct, frozen=True):
    """A signal's z-score against its baseline. A ``msgspec`` struct, built in C: every
    snapshot builds one per z-scored signal."""

    z: float | None  # None until n_obs >= min_obs, or when the baseline has no spread
    n_obs: int  # samples in the baseline
    warmup: bool  # the baseline window is not yet full of samples


class Baseline:
    def __init__(self, span_ms: int, bucket_ms: int, min_obs: int, robust: bool = False) -> None:
        self.window = BucketWindow(span_ms, bucket_ms, channels=1)
        self.bucket_ms = bucket_ms
        self.min_obs = min_obs
        self.robust = robust
        self._open: tuple[int, float] | None = None  # (bucket, latest value) not yet closed
        self._bucket: int | None = None  # the bucket of the latest observation
        self._blocks = _BlockMoments(self.window)
        self._center: float | None = None
        self._scale: float | None = None
        self.n_obs = 0
        self.stale = False  # a bucket closed since the moments were last computed

    def observe(self, ts_ms: int, value: float | None) -> None:
        """The metric's value at ``ts_ms`` (None = missing). O(1) unless a bucket closes."""
        bucket = ts_ms // self.bucket_ms
        if self._bucket is not None and bucket > self._bucket:
            end = self.window.end_ms
            if self._open is not None:
                closed, last = self._open
                self.window.add(closed * self.bucket_ms, (last,))
                self._blocks.changed(closed, closed)
            # The baseline ends at the last closed bucket, and slides even without samples.
            self.window.advance((bucket - 1) * self.bucket_ms)
            self._blocks.moved(end)
            self.stale = True
        self._bucket = max(bucket, self._bucket or bucket)
        # The value at the bucket's close is the last one observed: missing included. A
        # non-finite value is no sample: one would make the moments NaN for the whole window.
        valid = value is not None and math.isfinite(value)
        self._open = (bucket, float(value)) if valid else None

    def fill(self, ts_ms: np.ndarray, values: np.ndarray) -> int:
        """Add history (the start-up backfill): ``values[i]`` is the metric at the close of the
        bucket holding ``ts_ms[i]``. Buckets that already hold a sample keep it, and the bucket
        still open for live observation is never touched. Returns the samples added."""
        ok = np.isfinite(values)
        buckets = np.asarray(ts_ms)[ok] // self.bucket_ms
        values = np.asarray(values, dtype=float)[ok]
        if self._bucket is not None:
            keep = buckets < self._bucket
            buckets, values = buckets[keep], values[keep]
        # One sample per bucket: the last value in it, as live observation would keep.
        _, last = np.unique(buckets[::-1], return_index=True)
        pick = len(buckets) - 1 - last
        added = self.window.fill(buckets[pick], values[pick].reshape(-1, 1))
        if added:
            self._blocks.changed_all()
            self.refresh()
        return added

    def mark_missing(self, start_ms: int, end_ms: int) -> None:
        """A feed outage: its buckets carry no sample."""
        if self._open is not None and start_ms // self.bucket_ms <= self._open[0]:
            self._open = None
        end = self.window.end_ms
        self.window.mark_missing(start_ms, end_ms)
        self._blocks.moved(end)
        if end_ms > start_ms:
            self._blocks.changed(start_ms // self.bucket_ms, (end_ms - 1) // self.bucket_ms)
        self.refresh()

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        bucket = -1 if self._bucket is None else self._bucket
        open_bucket, open_value = self._open if self._open is not None else (-1, np.nan)
        return {
            **{f"window.{k}": v for k, v in self.window.state().items()},
            "marks": np.array([bucket, open_bucket, self.min_obs, int(self.robust)]),
            "open_value": np.array([open_value]),
        }

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Continue from ``state()`` of a baseline with the same window; ValueError if it differs
        (a changed config: the old samples do not fit, start afresh)."""
        window = BucketWindow.from_state(
            {k.removeprefix("window."): v for k, v in state.items() if k.startswith("window.")}
        )
        if (window.span_ms, window.bucket_ms) != (self.window.span_ms, self.window.bucket_ms):
            raise ValueError("baseline window changed since the checkpoint")
        bucket, open_bucket = int(state["marks"][0]), int(state["marks"][1])
        self.window = window
        self._blocks = _BlockMoments(window)
        self._bucket = None if bucket < 0 else bucket
        value = float(state["open_value"][0])
        self._open = None if open_bucket < 0 or not np.isfinite(value) else (open_bucket, value)
        self.refresh()

    def refresh(self) -> None:
        """Recompute the moments (n_obs, center, scale) from the window's samples."""
        self.stale = False
        if not self.robust:
            n, center, scale = self._blocks.moments()
            if n == 0 or (math.isfinite(center) and math.isfinite(scale)):
                self._set(n, center, scale)
                return
        samples = self.window.values()  # slot order: the moments do not need time order
        if len(samples) == 0:
            self._set(0, math.nan, math.nan)
            return
        center, scale = _moments(samples, self.robust)
        if not (math.isfinite(center) and math.isfinite(scale)):
            # Finite samples near the float limit overflow when squared or summed: compute on
            # the samples scaled to at most 1 and scale back, so the moments stay finite.
            top = float(np.abs(samples).max())
            center, scale = _moments(samples / top, self.robust)
            center, scale = center * top, scale * top
        self._set(len(samples), center, scale)

    def _set(self, n_obs: int, center: float, scale: float) -> None:
        self.n_obs = n_obs
        if n_obs == 0:
            self._center = self._scale = None
            return
        self._center = center
        self._scale = scale if 0 < scale < math.inf else None

    def score(self, x: float | None, refresh: bool = True) -> ZScore:
        """z of ``x``; ``refresh=False`` scores against the moments as they are, even if a
        bucket closed since (the engine recomputes them in its own time)."""
        if refresh and self.stale:
            self.refresh()
        warmup = self.n_obs < self.window.slots
        if x is None or self.n_obs < self.min_obs or self._scale is None or self._center is None:
            return ZScore(None, self.n_obs, warmup)
        return ZScore((x - self._center) / self._scale, self.n_obs, warmup)


def _moments(samples: np.ndarray, robust: bool) -> tuple[float, float]:
    """(center, scale): median and scaled MAD, or mean and population std."""
    if robust:
        center = float(np.median(samples))
        return center, MAD_TO_STD * float(np.median(np.abs(samples - center)))
    mean, sum_sq = _mean_and_sum_sq(samples)
    return mean, math.sqrt(max(sum_sq, 0.0) / len(samples))  # ddof 0


def _mean_and_sum_sq(samples: np.ndarray) -> tuple[float, float]:
    """The mean and the sum of squared deviations from it of a non-empty array."""
    n = len(samples)
    # Corrected two-pass: no cancellation at large levels, and the second pass also removes
    # the first mean's rounding (which, at a level of 1e9, is not negligible against a spread
    # of 1).
    with np.errstate(over="ignore", invalid="ignore"):
        first = float(samples.mean())
        deviations = samples - first
        shift = float(deviations.sum())
        sum_sq = float(np.dot(deviations, deviations)) - shift * shift / n
    return first + shift / n, sum_sq


class _BlockMoments:
    """Count, mean and sum of squared deviations per block of a window's slots, recomputed
    only for blocks whose slots changed (see the module docstring). The owner reports every
    change it makes to the window: ``changed`` (buckets written or flagged), ``moved`` (the
    window's end moved on: the buckets it passed were cleared), ``changed_all``."""

    def __init__(self, window: BucketWindow) -> None:
        self.window = window
        self.size = max(1, math.isqrt(window.slots))
        count = -(-window.slots // self.size)
        self._n = np.zeros(count)
        self._mean = np.zeros(count)
        self._sum_sq = np.zeros(count)
        self._dirty: set[int] = set(range(count))

    def changed_all(self) -> None:
        self._dirty.update(range(len(self._n)))

    def changed(self, first: int, last: int) -> None:
        """Buckets ``first`` to ``last`` (absolute indices) changed."""
        slots = self.window.slots
        if last - first + 1 >= slots:
            self.changed_all()
            return
        lo, hi = first % slots // self.size, last % slots // self.size
        if first % slots <= last % slots:
            self._dirty.update(range(lo, hi + 1))
        else:  # wraps around the ring's end
            self._dirty.update(range(lo, len(self._n)))
            self._dirty.update(range(hi + 1))

    def moved(self, end_before: int | None) -> None:
        """The window's end was at ``end_before`` (``BucketWindow.end_ms``) before a change."""
        end = self.window.end_ms
        if end_before is None:
            self.changed_all()
        elif end is not None and end > end_before:
            bucket_ms = self.window.bucket_ms
            self.changed(end_before // bucket_ms, end // bucket_ms - 1)

    def moments(self) -> tuple[int, float, float]:
        """(n, mean, population std) over every sample in the window; (0, nan, nan) when there
        is none. Non-finite when the samples overflow (the caller falls back then)."""
        size, slots = self.size, self.window.slots
        for block in self._dirty:
            samples = self.window.slot_values(block * size, min((block + 1) * size, slots))
            n = len(samples)
            mean, sum_sq = _mean_and_sum_sq(samples) if n else (0.0, 0.0)
            self._n[block], self._mean[block], self._sum_sq[block] = n, mean, sum_sq
        self._dirty.clear()
        counts = self._n
        total = float(counts.sum())
        if total == 0:
            return 0, math.nan, math.nan
        with np.errstate(over="ignore", invalid="ignore"):
            mean = float(np.dot(counts, self._mean)) / total
            deviations = self._mean - mean
            # The weighted mean's own rounding, removed as in the two-pass (``shift``).
            shift = float(np.dot(counts, deviations)) / total
            between = float(np.dot(counts * deviations, deviations)) - total * shift * shift
            sum_sq = float(self._sum_sq.sum()) + between
        return int(total), mean + shift, math.sqrt(max(sum_sq, 0.0) / total)
