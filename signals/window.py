"""The one rolling-window type: time buckets over a numpy ring buffer, keyed on event time.

A window of ``span`` is ``span / bucket`` slots; slot ``i`` holds the sums of ``channels``
values for every event whose time falls in absolute bucket ``b`` with ``b % slots == i``.
Adding an event is O(1); moving the window forward clears the slots that fall out of it.

Missing is not zero: buckets in which a feed was known to be down (``mark_missing``) are flagged
and excluded, and ``coverage`` says how much of the window is backed by data, so a signal can be
reported as missing instead of as a quiet market. Coverage starts with data, never with the
clock: ``advance`` moves the window's end but a window that was only advanced covers nothing.
``touch`` says "the feed behind this window was alive here" without adding a value, which is
how a live but quiet feed (no liquidation for an hour) covers its window.

Running totals of the buckets that are not missing are kept by add/subtract for O(1) reads (a
bucket marked missing leaves them, an evicted one too), with counts of the missing buckets and
of the buckets that hold data, so no read scans the ring (an hour of 1-second buckets is 3,600
slots). Subtraction drifts in floating point (catastrophically after a volatile stretch, then
calm), so totals are recomputed exactly from the slots once per full rotation of the ring, and
are exactly zero whenever no bucket with data is left.

The newest bucket, where nearly every event lands, is summed in a plain Python list and written
to the numpy slots when the window moves on or is read: a numpy scalar update costs about ten
times a float add, and this is the per-trade path.
"""

from __future__ import annotations

import numpy as np


class BucketWindow:
    def __init__(self, span_ms: int, bucket_ms: int, channels: int) -> None:
        if bucket_ms <= 0 or span_ms < bucket_ms or span_ms % bucket_ms:
            raise ValueError(f"span {span_ms} ms must be a positive multiple of bucket {bucket_ms}")
        self.span_ms = span_ms
        self.bucket_ms = bucket_ms
        self.slots = span_ms // bucket_ms
        self._sums = np.zeros((self.slots, channels))
        self._filled = np.zeros(self.slots, dtype=bool)  # the bucket received data
        self._missing = np.zeros(self.slots, dtype=bool)
        self._totals = np.zeros(channels)  # over the slots that are not missing
        self._bind()
        self._n_missing = 0  # slots flagged missing
        self._n_kept = 0  # slots filled and not missing: the ones the totals are made of
        self._head: int | None = None  # absolute index of the newest bucket in the window
        self._first: int | None = None  # absolute index of the first bucket with data or touch
        self._advances_since_exact = 0
        self._open: list[float] | None = None  # sums for the head bucket not yet in the slots
        self.late_dropped = 0  # events older than the window when they arrived
        # Bumped by every change to a bucket other than the open head one (the window moved,
        # a late event, a fill, a gap): what a reader caching results over closed buckets
        # keys its cache on.
        self.changes = 0

    # -- writing -------------------------------------------------------------------------
    def add(self, ts_ms: int, values: tuple[float, ...] | list[float]) -> None:
        bucket = ts_ms // self.bucket_ms
        if bucket == self._head:
            pending = self._open
            if pending is None:
                self._open = list(values)
                self._start_coverage(bucket)  # the head may have been reached by advance()
            else:
                for i, v in enumerate(values):
                    pending[i] += v
            return
        if self._head is None:
            self._head = bucket
        elif bucket > self._head:
            self._advance_to(bucket)
        elif bucket <= self._head - self.slots:
            self.late_dropped += 1
            return
        else:  # late, but still in the window
            self.changes += 1
            self._write(bucket % self.slots, values)
            self._start_coverage(bucket)
            return
        self._open = list(values)
        self._start_coverage(bucket)

    def add_one(self, ts_ms: int, channel: int, value: float) -> None:
        """``add`` of ``value`` to one channel (the others 0): the per-trade path, with no
        tuple built when the event lands in the open head bucket, as nearly every one does
        (the engine's trade route, ``signals/engine.py``, does that first case inline)."""
        pending = self._open
        if pending is not None and ts_ms // self.bucket_ms == self._head:
            pending[channel] += value
            return
        values = [0.0] * self._sums.shape[1]
        values[channel] = value
        self.add(ts_ms, values)

    def touch(self, ts_ms: int) -> None:
        """The feed behind this window was alive at ``ts_ms``: coverage starts here at the
        latest, as if a zero had been added (a live, quiet feed is information)."""
        bucket = ts_ms // self.bucket_ms
        if self._first is None or bucket < self._first:
            if self._head is not None and bucket <= self._head - self.slots:
                return
            self.add(ts_ms, (0.0,) * self._sums.shape[1])

    def _start_coverage(self, bucket: int) -> None:
        if self._first is None or bucket < self._first:
            self._first = bucket

    def _flush(self) -> None:
        """Write the head bucket's pending sums into the slots and the totals."""
        pending = self._open
        if pending is None:
            return
        assert self._head is not None
        self._write(self._head % self.slots, pending)
        self._open = None

    def _bind(self) -> None:
        """Memoryviews of the arrays, for the one-slot updates of the per-event path (writing a
        bucket, moving on by one): an item of a memoryview is a plain float or bool, several
        times cheaper to read and write than a numpy scalar. The arrays are only ever updated
        in place, so the views stay valid; ``from_state`` binds its new arrays."""
        self._sums_at = memoryview(self._sums)
        self._filled_at = memoryview(self._filled)
        self._missing_at = memoryview(self._missing)
        self._totals_at = memoryview(self._totals)

    def _write(self, slot: int, values: tuple[float, ...] | list[float]) -> None:
        sums = self._sums_at
        for i, v in enumerate(values):
            sums[slot, i] += v
        if self._missing_at[slot]:
            self._filled_at[slot] = True
            return  # kept (a later read of the bucket sees it), never counted in the totals
        totals = self._totals_at
        for i, v in enumerate(values):
            totals[i] += v
        if not self._filled_at[slot]:
            self._filled_at[slot] = True
            self._n_kept += 1

    def advance(self, ts_ms: int) -> None:
        """Move the window's end to ``ts_ms`` (event time) without adding data."""
        bucket = ts_ms // self.bucket_ms
        if self._head is None:
            self._head = bucket
        elif bucket > self._head:
            self._advance_to(bucket)

    def mark_missing(self, start_ms: int, end_ms: int) -> None:
        """Flag every bucket overlapping [start_ms, end_ms) that is still in the window."""
        if self._head is None or end_ms <= start_ms:
            return
        # A gap ending at end_ms means event time got there: move the window first, or the
        # buckets past the head would be cleared as fresh (quiet) ones when it moves later.
        end_bucket = (end_ms - 1) // self.bucket_ms
        if end_bucket > self._head:
            self._advance_to(end_bucket)
        lo = max(start_ms // self.bucket_ms, self._head - self.slots + 1)
        hi = min((end_ms - 1) // self.bucket_ms, self._head)
        if hi < lo:
            return
        self._flush()
        self.changes += 1
        if lo == hi:  # the common case, a silence growing by a bucket: no arrays
            slot = lo % self.slots
            if not self._missing[slot]:
                self._missing[slot] = True
                self._n_missing += 1
                if self._filled[slot]:
                    self._n_kept -= 1
                    self._totals -= self._sums[slot]
            return
        slots = np.arange(lo, hi + 1) % self.slots
        slots = slots[~self._missing[slots]]  # newly missing
        self._missing[slots] = True
        self._n_missing += len(slots)
        kept = slots[self._filled[slots]]
        if len(kept):
            self._n_kept -= len(kept)
            self._totals -= self._sums[kept].sum(axis=0)

    def fill(self, buckets: np.ndarray, values: np.ndarray) -> int:
        """Fill empty buckets with history (``values`` shape ``(n, channels)``, one row per
        absolute bucket index): buckets that already hold data or are flagged missing are left
        alone, so live data always wins and filling twice changes nothing. A bucket newer than
        the head moves the window forward. Returns the number of buckets filled."""
        if len(buckets) == 0:
            return 0
        self._flush()
        self.changes += 1
        last = int(buckets.max())
        if self._head is None:
            self._head = last
        elif last > self._head:
            self._advance_to(last)
        head = self._head
        in_window = (buckets > head - self.slots) & (buckets <= head)
        buckets, values = buckets[in_window], values[in_window]
        slots = buckets % self.slots
        empty = ~self._filled[slots] & ~self._missing[slots]
        slots, buckets = slots[empty], buckets[empty]
        if len(slots) == 0:
            return 0
        self._sums[slots] = values[empty]
        self._filled[slots] = True
        self._first = min(int(buckets.min()), self._first if self._first is not None else head)
        self.recompute()
        return len(slots)

    def _advance_to(self, bucket: int) -> None:
        assert self._head is not None
        self._flush()
        self.changes += 1
        steps = bucket - self._head
        if steps >= self.slots:
            self._sums[:] = 0.0
            self._filled[:] = False
            self._missing[:] = False
            self._totals[:] = 0.0
            self._n_missing = self._n_kept = 0
            self._advances_since_exact = 0
        else:
            sums, filled, missing = self._sums_at, self._filled_at, self._missing_at
            totals, channels = self._totals_at, range(len(self._totals))
            for b in range(self._head + 1, bucket + 1):
                slot = b % self.slots
                if missing[slot]:
                    missing[slot] = False
                    self._n_missing -= 1
                elif filled[slot]:
                    for i in channels:
                        totals[i] -= sums[slot, i]
                    self._n_kept -= 1
                else:
                    continue  # never written: its sums are zero already
                for i in channels:
                    sums[slot, i] = 0.0
                filled[slot] = False
            self._advances_since_exact += steps
            if self._advances_since_exact >= self.slots:
                self.recompute()
        self._head = bucket

    def recompute(self) -> None:
        """Exact totals and counts from the slots, discarding accumulated rounding drift."""
        self._flush()
        self._n_missing = int(self._missing.sum())
        kept = self._filled & ~self._missing
        self._n_kept = int(kept.sum())
        self._totals[:] = self._sums[kept].sum(axis=0)
        self._advances_since_exact = 0

    # -- reading -------------------------------------------------------------------------
    # The two reads below are on every snapshot's path: plain floats through the memoryviews,
    # no numpy scalar or array made (a tick's numpy calls, cold between ticks in the daemon,
    # cost several times what they do in a loop).
    def totals(self) -> list[float]:
        """Per-channel sums over the non-missing buckets of the window."""
        self._flush()
        if not self._n_kept:
            return [0.0] * len(self._totals)  # exactly: no drift left over from the past
        return self._totals_at.tolist()

    def bucket(self, ts_ms: int) -> list[float] | None:
        """Sums of the bucket holding ``ts_ms``, if it is in the window, received data and is
        not missing; None otherwise."""
        if self._head is None:
            return None
        self._flush()
        b = ts_ms // self.bucket_ms
        if not self._head - self.slots < b <= self._head:
            return None
        slot = b % self.slots
        if not self._filled_at[slot] or self._missing_at[slot]:
            return None
        sums = self._sums_at
        return [sums[slot, i] for i in range(len(self._totals))]

    def samples(self) -> np.ndarray:
        """Per-bucket sums of the buckets that received data and are not missing, oldest first
        (a copy, shape ``(n, channels)``). Empty buckets are absent, not zero rows."""
        if self._head is None:
            return self._sums[:0].copy()
        self._flush()
        order = (np.arange(self._head + 1, self._head + 1 + self.slots)) % self.slots
        keep = self._filled[order] & ~self._missing[order]
        return self._sums[order[keep]]

    def values(self, channel: int = 0) -> np.ndarray:
        """One channel of ``samples()`` in slot order, not time order, for statistics that do
        not care (mean, std, median): nothing is reordered, and a full window is a view, not a
        copy (valid until the window next changes)."""
        self._flush()
        column = self._sums[:, channel]
        if self._head is None:
            return column[:0]
        keep = self._filled & ~self._missing
        return column if keep.all() else column[keep]

    def slot_values(self, lo: int, hi: int, channel: int = 0) -> np.ndarray:
        """``values`` of slots ``lo`` to ``hi - 1`` only (a part of the ring, in slot order; a
        view when every one of them holds a sample)."""
        self._flush()
        column = self._sums[lo:hi, channel]
        if self._head is None:
            return column[:0]
        keep = self._filled[lo:hi] & ~self._missing[lo:hi]
        return column if keep.all() else column[keep]

    def samples_since(self, ts_ms: int, until_ms: int | None = None) -> np.ndarray:
        """``samples()`` restricted to the buckets from the one holding ``ts_ms`` on (up to
        the one holding ``until_ms``, if given)."""
        if self._head is None:
            return self._sums[:0].copy()
        self._flush()
        first = max(ts_ms // self.bucket_ms, self._head - self.slots + 1)
        last = self._head if until_ms is None else min(until_ms // self.bucket_ms, self._head)
        order = np.arange(first, last + 1) % self.slots
        keep = self._filled[order] & ~self._missing[order]
        return self._sums[order[keep]]

    def coverage(self) -> float:
        """Fraction of the window's buckets since the first data that are not missing."""
        if self._head is None or self._first is None:
            return 0.0
        length = min(self._head - self._first + 1, self.slots)
        return 1.0 - self._missing_since_first(length) / length

    def filled(self) -> float:
        """Fraction of the whole window backed by data: buckets since the first data (or touch),
        less the missing ones, over all buckets. A young or mostly-disconnected window scores
        low, and a window that never received anything scores 0 however far the clock ran."""
        if self._head is None or self._first is None:
            return 0.0
        length = min(self._head - self._first + 1, self.slots)
        return (length - self._missing_since_first(length)) / self.slots

    def _missing_since_first(self, length: int) -> int:
        """Missing buckets among the newest ``length`` (a feed silent before it ever delivered
        is marked missing too, but those buckets are not part of its coverage span)."""
        if not self._n_missing:
            return 0
        if length >= self.slots:
            return self._n_missing
        assert self._head is not None
        slots = np.arange(self._head - length + 1, self._head + 1) % self.slots
        return int(self._missing[slots].sum())

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to continue this window after a restart (plain numpy arrays)."""
        self._flush()
        head = -1 if self._head is None else self._head
        first = -1 if self._first is None else self._first
        sums, filled = _without_poison(self._sums, self._filled)
        return {
            "shape": np.array([self.span_ms, self.bucket_ms, self._sums.shape[1]]),
            "marks": np.array([head, first, self._advances_since_exact, self.late_dropped]),
            "sums": sums,
            "filled": filled,
            "missing": self._missing.copy(),
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> BucketWindow:
        """Rebuild a window from ``state()``; raises ValueError if the arrays do not fit."""
        span_ms, bucket_ms, channels = (int(x) for x in state["shape"])
        window = cls(span_ms, bucket_ms, channels)
        for key in ("sums", "filled", "missing"):
            if state[key].shape != getattr(window, f"_{key}").shape:
                raise ValueError(f"checkpoint array {key!r} has shape {state[key].shape}")
        head, first, advances, late = (int(x) for x in state["marks"])
        window._sums, window._filled = _without_poison(
            state["sums"].astype(float), state["filled"].astype(bool)
        )
        window._missing = state["missing"].astype(bool, copy=True)
        window._sums[~window._filled] = 0.0  # a slot without data holds nothing
        window._bind()
        window._head = None if head < 0 else head
        window._first = None if first < 0 else first
        window._advances_since_exact = advances
        window.late_dropped = late
        window.recompute()  # totals are derived: never trust them from disk
        return window

    @property
    def end_ms(self) -> int | None:
        """Exclusive end (event time) of the newest bucket."""
        return None if self._head is None else (self._head + 1) * self.bucket_ms


def _without_poison(sums: np.ndarray, filled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copies of a window's slots without non-finite rows. Such a row can only come from a
    poisoned feed (the guards and ``Baseline.observe`` keep them out): it is never written to
    a checkpoint nor restored from one, where it would spoil 90 days of moments."""
    sums, filled = sums.copy(), filled.copy()
    poisoned = ~np.isfinite(sums).all(axis=1)
    sums[poisoned] = 0.0
    filled[poisoned] = False
    return sums, filled
