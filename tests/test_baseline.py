"""Baseline z-scores: hand-worked values and exactness against numpy on adversarial data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signals.baseline import MAD_TO_STD, Baseline

MIN = 60_000


def feed(b: Baseline, values: list[float | None], start_bucket: int = 0) -> None:
    """One observation per bucket, then a tick into the next bucket so the last one closes."""
    for i, v in enumerate(values):
        b.observe((start_bucket + i) * MIN + 30_000, v)
    b.observe((start_bucket + len(values)) * MIN, None)


def test_hand_worked_z() -> None:
    b = Baseline(span_ms=10 * MIN, bucket_ms=MIN, min_obs=3)
    feed(b, [1.0, 2.0, 3.0, 4.0])
    # mean 2.5, population variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25
    z = b.score(5.0)
    assert z.n_obs == 4 and z.warmup is True
    assert z.z == pytest.approx(2.5 / math.sqrt(1.25))


def test_the_value_at_the_buckets_close_is_the_sample() -> None:
    b = Baseline(10 * MIN, MIN, min_obs=1)
    b.observe(0, 10.0)
    b.observe(30_000, 20.0)  # same bucket: replaces 10
    b.observe(MIN, 0.0)  # closes bucket 0 with 20
    b.observe(MIN + 1, None)  # bucket 1 ends missing: no sample
    b.observe(2 * MIN, 1.0)
    assert b.window.samples()[:, 0].tolist() == [20.0]


def test_null_until_min_obs_and_warmup_until_full() -> None:
    b = Baseline(5 * MIN, MIN, min_obs=3)
    feed(b, [1.0, 2.0])
    assert b.score(3.0).z is None and b.score(3.0).n_obs == 2
    feed(b, [3.0], start_bucket=2)
    assert b.score(3.0).z is not None
    feed(b, [4.0, 5.0, 6.0], start_bucket=3)  # six samples into a 5-bucket window
    z = b.score(0.0)
    assert (z.n_obs, z.warmup) == (5, False)


def test_missing_buckets_are_excluded_not_zero() -> None:
    b = Baseline(10 * MIN, MIN, min_obs=1)
    feed(b, [5.0, None, None, 5.0, 7.0])
    assert b.window.samples()[:, 0].tolist() == [5.0, 5.0, 7.0]
    b.mark_missing(3 * MIN, 4 * MIN)  # an outage covering the 4th bucket
    assert b.window.samples()[:, 0].tolist() == [5.0, 7.0]


def test_a_flat_baseline_has_no_z() -> None:
    b = Baseline(10 * MIN, MIN, min_obs=2)
    feed(b, [3.0, 3.0, 3.0])
    assert b.score(4.0).z is None  # zero spread: any deviation would be infinite


@pytest.mark.parametrize("robust", [False, True])
def test_exact_after_a_volatile_stretch_at_a_large_level(robust: bool) -> None:
    """Level 1e9, std 1e6 for 2000 buckets, then std 1 for 6000: the last 3000 samples are calm.
    Running sums would still carry the volatile stretch's rounding; E[x^2] - mean^2 would
    cancel at this level. Compare with numpy on exactly the samples in the window."""
    rng = np.random.default_rng(3)
    volatile = 1e9 + rng.normal(0, 1e6, 2000)
    calm = 1e9 + rng.normal(0, 1.0, 6000)
    values = np.concatenate([volatile, calm])
    b = Baseline(3000 * MIN, MIN, min_obs=100, robust=robust)
    feed(b, values.tolist())
    window = values[-3000:]
    x = 1e9 + 2.5
    if robust:
        med = np.median(window)
        expected = (x - med) / (MAD_TO_STD * np.median(np.abs(window - med)))
    else:
        expected = (x - window.mean()) / window.std()
    got = b.score(x)
    assert got.n_obs == 3000 and got.warmup is False
    assert got.z == pytest.approx(expected, rel=1e-9)
    assert abs(got.z) < 10  # calm baseline: a 2.5 deviation is a few sigma, not millions


def test_robust_z_ignores_an_outlier() -> None:
    b = Baseline(100 * MIN, MIN, min_obs=5, robust=True)
    feed(b, [10.0, 11.0, 9.0, 10.0, 1e6])
    # median 10, |dev| = [0, 1, 1, 0, 999990] -> MAD 1
    assert b.score(12.0).z == pytest.approx(2.0 / MAD_TO_STD)


# One step of a baseline's life: (kind, buckets ahead, value or outage length).
_steps = st.lists(
    st.tuples(
        st.sampled_from(["observe", "observe", "observe", "missing", "fill"]),
        st.integers(0, 30),
        st.one_of(st.none(), st.floats(-5.0, 5.0)),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(steps=_steps, level=st.sampled_from([0.0, 1e3, 1e9]), slots=st.sampled_from([7, 50, 64]))
def test_moments_kept_per_block_equal_a_recompute_over_the_window(
    steps: list[tuple[str, int, float | None]], level: float, slots: int
) -> None:
    """The mean and std kept per block of slots, after any mix of closes, jumps, outages and
    history fills, equal numpy's over exactly the samples the window holds."""
    b = Baseline(slots * MIN, MIN, min_obs=1)
    bucket = 0
    for kind, ahead, value in steps:
        x = None if value is None else level + value * max(1.0, level * 1e-6)
        if kind == "observe":
            bucket += ahead
            b.observe(bucket * MIN + 30_000, x)
        elif kind == "missing":
            b.mark_missing((bucket - ahead) * MIN, (bucket - ahead + 1 + ahead // 3) * MIN)
        else:
            past = np.arange(bucket - ahead - 3, bucket - ahead) * MIN
            b.fill(past, level + np.linspace(-1.0, 1.0, len(past)))
        b.refresh()
        samples = b.window.samples()[:, 0]
        got = b.score(level + 2.0)
        assert got.n_obs == len(samples)
        std = float(samples.std()) if len(samples) else 0.0
        if std > 0 and std > abs(level) * 1e-12:  # a spread above rounding noise at that level
            expected = (level + 2.0 - float(samples.mean())) / std
            # Either mean may be a few units in the last place off at that level (1.2e-7 at
            # 1e9, against a spread of ~1): z can be no closer than that over the std.
            ulps = 8 * float(np.spacing(abs(level))) / std
            assert got.z == pytest.approx(expected, rel=1e-9, abs=1e-9 + ulps)
