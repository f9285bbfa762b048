"""BucketWindow against direct numpy sums over the same events."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signals.window import BucketWindow


def reference_sum(
    events: list[tuple[int, float]],
    end_ms: int,
    span_ms: int,
    bucket_ms: int,
    missing: set[int] = frozenset(),
) -> float:
    """Sum of values whose bucket lies in the window ending with the bucket of ``end_ms``."""
    head = end_ms // bucket_ms
    lo = head - span_ms // bucket_ms + 1
    vals = np.array(
        [v for t, v in events if lo <= t // bucket_ms <= head and t // bucket_ms not in missing]
    )
    return float(vals.sum()) if vals.size else 0.0


def test_hand_worked_window() -> None:
    w = BucketWindow(span_ms=3000, bucket_ms=1000, channels=2)
    w.add(500, (1.0, 10.0))  # bucket 0
    w.add(1500, (2.0, 20.0))  # bucket 1
    w.add(2999, (4.0, 40.0))  # bucket 2
    assert w.totals() == [7.0, 70.0]
    w.add(3000, (8.0, 80.0))  # bucket 3 evicts bucket 0
    assert w.totals() == [14.0, 140.0]
    w.advance(5999)  # buckets 4, 5: window = 3, 4, 5
    assert w.totals() == [8.0, 80.0]
    w.advance(10_000)  # jump past the whole window
    assert w.totals() == [0.0, 0.0]


def test_late_events_land_in_their_bucket_or_are_counted_when_too_old() -> None:
    w = BucketWindow(3000, 1000, 1)
    w.add(5500, (1.0,))
    w.add(3200, (2.0,))  # bucket 3: still in the window 3..5
    assert w.totals() == [3.0]
    w.add(2999, (4.0,))  # bucket 2: already out of the window
    assert w.totals() == [3.0]
    assert w.late_dropped == 1


def test_missing_buckets_are_excluded_and_reduce_coverage() -> None:
    w = BucketWindow(10_000, 1000, 1)
    for t in range(0, 10_000, 1000):
        w.add(t, (1.0,))
    assert w.coverage() == 1.0
    w.mark_missing(3000, 5000)  # buckets 3 and 4
    assert w.totals() == [8.0]
    assert w.coverage() == pytest.approx(0.8)
    w.advance(14_999)  # buckets 0..4 leave the window, the missing flags with them
    assert w.coverage() == 1.0
    assert w.totals() == [5.0]


def test_coverage_counts_only_since_first_data() -> None:
    w = BucketWindow(3_600_000, 1000, 1)
    w.add(0, (1.0,))
    w.advance(9_999)
    assert w.coverage() == 1.0  # 10 buckets seen, none missing: a young window is not "missing"


def test_totals_stay_exact_after_a_volatile_stretch() -> None:
    """Huge values then tiny ones: subtract-only totals would keep the huge rounding residue."""
    rng = np.random.default_rng(7)
    w = BucketWindow(60_000, 1000, 1)
    events = []
    t = 0
    for _ in range(200):  # volatile: values around 1e16
        v = float(rng.uniform(0, 1e16))
        events.append((t, v))
        w.add(t, (v,))
        t += 300
    for _ in range(2000):  # calm: values around 1
        v = float(rng.uniform(0, 1))
        events.append((t, v))
        w.add(t, (v,))
        t += 300
    expected = reference_sum(events, t - 300, 60_000, 1000)
    assert w.totals()[0] == pytest.approx(expected, rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 50_000), st.floats(0, 1e6)), min_size=1, max_size=200),
    st.sampled_from([(5000, 1000), (10_000, 500), (1000, 1000)]),
)
def test_matches_numpy_for_any_in_order_stream(
    raw: list[tuple[int, float]], shape: tuple[int, int]
) -> None:
    span, bucket = shape
    events = sorted(raw)
    w = BucketWindow(span, bucket, 1)
    for t, v in events:
        w.add(t, (v,))
    expected = reference_sum(events, events[-1][0], span, bucket)
    assert w.totals()[0] == pytest.approx(expected, rel=1e-9, abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 30_000), st.floats(0, 1e6), st.booleans()),
        min_size=1,
        max_size=200,
    ),
    st.sampled_from([(5000, 1000), (10_000, 500), (1000, 1000)]),
)
def test_matches_numpy_in_any_order_with_reads_in_between(
    ops: list[tuple[int, float, bool]], shape: tuple[int, int]
) -> None:
    """Out-of-order events, and reads between the adds (the newest bucket is summed apart from
    the slots until the window moves or is read): every read agrees with numpy on the events
    kept so far, and so does a window rebuilt from a checkpoint."""
    span, bucket = shape
    slots = span // bucket
    w = BucketWindow(span, bucket, 2)
    kept: list[tuple[int, float]] = []
    head: int | None = None
    dropped = 0
    for t, v, read in ops:
        w.add(t, (v, 2 * v))
        if head is not None and t // bucket <= head - slots:
            dropped += 1
        else:
            kept.append((t, v))
            head = t // bucket if head is None else max(head, t // bucket)
        if read:
            assert head is not None
            expected = reference_sum(kept, head * bucket, span, bucket)
            assert w.totals() == pytest.approx([expected, 2 * expected], rel=1e-9, abs=1e-6)
            in_bucket = [x for s, x in kept if s // bucket == t // bucket]
            got = w.bucket(t)
            if t // bucket > head - slots:
                assert got is not None and got[0] == pytest.approx(sum(in_bucket), abs=1e-6)
    assert w.late_dropped == dropped
    assert head is not None
    expected = reference_sum(kept, head * bucket, span, bucket)
    rebuilt = BucketWindow.from_state(w.state())
    assert rebuilt.totals()[0] == pytest.approx(expected, rel=1e-9, abs=1e-6)
    assert w.samples()[:, 0].sum() == pytest.approx(expected, rel=1e-9, abs=1e-6)
    # values(): the same samples, per channel, in slot order
    for channel in (0, 1):
        assert sorted(w.values(channel)) == sorted(w.samples()[:, channel])


def test_rejects_span_not_multiple_of_bucket() -> None:
    with pytest.raises(ValueError):
        BucketWindow(1500, 1000, 1)


def test_a_gap_reaching_past_the_window_head_stays_missing_when_the_window_moves() -> None:
    w = BucketWindow(10_000, 1000, 1)
    w.add(0, (1.0,))
    w.mark_missing(1000, 4000)  # head is bucket 0; the gap covers buckets 1..3
    w.add(5500, (2.0,))
    assert w.coverage() == pytest.approx(3 / 6)  # buckets 0..5 seen, 1..3 missing
    assert w.totals() == [3.0]


def test_reading_one_past_bucket() -> None:
    w = BucketWindow(5000, 1000, 2)
    w.add(1200, (3.0, 1.0))
    w.add(1800, (4.0, 1.0))
    w.add(3500, (9.0, 1.0))
    assert w.bucket(1000) == [7.0, 2.0]
    assert w.bucket(2500) is None  # no data in bucket 2
    w.mark_missing(3000, 4000)
    assert w.bucket(3999) is None  # missing
    w.advance(6500)  # window now buckets 2..6: bucket 1 has left it
    assert w.bucket(1000) is None
    assert w.bucket(9000) is None  # not reached yet


def test_samples_since_keeps_the_buckets_from_the_one_holding_the_time_on() -> None:
    w = BucketWindow(span_ms=5000, bucket_ms=1000, channels=1)
    for ts, v in ((0, 1.0), (1500, 2.0), (3200, 4.0), (3900, 8.0), (5000, 16.0)):
        w.add(ts, (v,))
    # Bucket 0 has left the 5-bucket window [1, 5]; bucket 2 and 4 are empty (absent, not 0).
    assert w.samples_since(0)[:, 0].tolist() == [2.0, 12.0, 16.0]
    assert w.samples_since(3999)[:, 0].tolist() == [12.0, 16.0]
    assert w.samples_since(4000)[:, 0].tolist() == [16.0]
    assert w.samples_since(6000).shape == (0, 1)
    assert BucketWindow(5000, 1000, 1).samples_since(0).shape == (0, 1)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(0, 30_000), st.floats(0, 1e6)),
            st.tuples(st.just("gap"), st.integers(0, 30_000), st.integers(1, 8_000)),
            st.tuples(st.just("advance"), st.integers(0, 30_000), st.just(0)),
        ),
        min_size=1,
        max_size=150,
    ),
    st.sampled_from([(5000, 1000), (10_000, 500), (1000, 1000)]),
)
def test_totals_and_coverage_match_numpy_with_gaps_marked_in_between(
    ops: list[tuple[str, int, float]], shape: tuple[int, int]
) -> None:
    """Adds, missing stretches and moves in any order, read after every step: the totals are
    numpy's sum over the buckets in the window that are not missing (exactly 0 when none holds
    data), and coverage counts the missing ones, as a model that keeps every bucket says."""
    span, bucket = shape
    slots = span // bucket
    w = BucketWindow(span, bucket, 1)
    values: dict[int, list[float]] = {}  # bucket -> values added while it was in the window
    missing: set[int] = set()
    head: int | None = None
    first: int | None = None
    for op, t, x in ops:
        b = t // bucket
        if op == "add":
            w.add(t, (float(x),))
            if head is not None and b <= head - slots:
                continue  # too late: dropped
            values.setdefault(b, []).append(float(x))
            first = b if first is None else min(first, b)
            head = b if head is None else max(head, b)
        elif op == "advance":
            w.advance(t)
            head = b if head is None else max(head, b)
        elif head is not None:  # a gap is only marked on a window that has started
            end = t + int(x)
            w.mark_missing(t, end)
            head = max(head, (end - 1) // bucket)
            missing |= {k for k in range(b, (end - 1) // bucket + 1) if k > head - slots}
        if head is None:
            continue
        in_window = range(head - slots + 1, head + 1)
        missing = {k for k in missing if k in in_window}
        values = {k: v for k, v in values.items() if k in in_window}
        kept = [v for k, vs in values.items() if k not in missing for v in vs]
        expected = float(np.sum(kept)) if kept else 0.0
        got = w.totals()[0]
        if not [k for k in values if k not in missing]:
            assert got == 0.0  # exactly: no bucket with data is left
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-6 * (1 + max(kept, default=0)))
        if first is not None and first > head - slots:
            length = head - first + 1
            gaps = len([k for k in missing if k >= first])
            assert w.coverage() == pytest.approx(1 - gaps / length)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 20_000), st.integers(0, 1), st.floats(0, 1e6)),
        min_size=1,
        max_size=100,
    )
)
def test_add_one_is_add_with_the_other_channel_zero(ops: list[tuple[int, int, float]]) -> None:
    one, both = BucketWindow(5000, 1000, 2), BucketWindow(5000, 1000, 2)
    for t, channel, v in ops:
        one.add_one(t, channel, v)
        both.add(t, (v, 0.0) if channel == 0 else (0.0, v))
        assert one.totals() == pytest.approx(both.totals(), rel=1e-12, abs=1e-9)
    assert one.late_dropped == both.late_dropped
    np.testing.assert_allclose(one.samples(), both.samples(), rtol=1e-12, atol=1e-9)
