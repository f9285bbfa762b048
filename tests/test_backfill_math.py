"""signals.backfill: history bars to baseline samples, checked by hand and against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from signals.backfill import AssetHistory, baseline_samples, history_rows, rolling_sum
from signals.baseline import Baseline
from signals.window import BucketWindow
from streams.events import Bars, Points
from streams.units import DAY_MS, HOUR_MS, MINUTE_MS

M = MINUTE_MS
H8 = 8 * HOUR_MS


def bars(closes: list[float], quotes: list[float], buys: list[float], first: int = 0) -> Bars:
    n = len(closes)
    return Bars(
        np.arange(first, first + n, dtype=np.int64) * M,
        np.array(closes, dtype=float),
        np.array(quotes, dtype=float),
        np.array(buys, dtype=float),
    )


def without(b: Bars, minute: int) -> Bars:
    keep = b.open_ms != minute * M
    return Bars(b.open_ms[keep], b.close[keep], b.quote_volume[keep], b.taker_buy_quote[keep])


def value_at(samples: dict, name: str, t_ms: int) -> float | None:
    ts, values = samples[name]
    hit = np.flatnonzero(ts == t_ms)
    return float(values[hit[0]]) if len(hit) else None


HISTORY = AssetHistory(
    perp=bars([100, 101, 102], [100, 200, 300], [60, 50, 300]),
    spot=bars([100, 101, 102], [50, 50, 150], [10, 40, 20]),
    coinbase=bars([100.5, 100.9], [5, 5], [np.nan, np.nan]),
)


def test_flow_metrics_by_hand() -> None:
    # Per minute, perp + spot: total 150 / 250 / 450, taker buy 70 / 90 / 320. Flow window of
    # 2 minutes: m0 holds only itself (1 bar >= 50 % coverage of 2).
    s = baseline_samples(HISTORY, 2 * M, 3 * M, min_coverage=0.5)
    assert value_at(s, "taker_imbalance", 0) == pytest.approx((140 - 150) / 150)
    assert value_at(s, "net_taker_usd", 0) == pytest.approx(-10)
    assert value_at(s, "taker_imbalance", M) == pytest.approx((320 - 400) / 400)  # -0.2
    assert value_at(s, "net_taker_usd", M) == pytest.approx(-80)
    assert value_at(s, "taker_imbalance", 2 * M) == pytest.approx((820 - 700) / 700)
    assert value_at(s, "net_taker_usd", 2 * M) == pytest.approx(120)


def test_perp_spot_ratio_needs_the_coverage_share_of_its_window() -> None:
    s = baseline_samples(HISTORY, 2 * M, 3 * M, min_coverage=0.5)
    assert value_at(s, "perp_spot_volume_ratio", 0) is None  # 1 of 3 minutes < 50 %
    assert value_at(s, "perp_spot_volume_ratio", M) == pytest.approx(300 / 100)
    assert value_at(s, "perp_spot_volume_ratio", 2 * M) == pytest.approx(600 / 250)


def test_premium_only_where_both_venues_have_a_bar() -> None:
    s = baseline_samples(HISTORY, 2 * M, 3 * M, min_coverage=0.5)
    assert value_at(s, "coinbase_premium_pct", 0) == pytest.approx(0.5)
    assert value_at(s, "coinbase_premium_pct", M) == pytest.approx(-0.1 / 101 * 100)
    assert value_at(s, "coinbase_premium_pct", 2 * M) is None


def test_windows_reaching_before_the_fetched_bars_give_no_sample() -> None:
    partial = AssetHistory(perp=HISTORY.perp, spot=HISTORY.spot, complete_from_ms=M)
    s = baseline_samples(partial, 2 * M, 3 * M, min_coverage=0.5)
    # The 2-minute window of m2 is [m1, m2]: complete. m1's reaches back to m0: not yet fetched.
    assert s["taker_imbalance"][0].tolist() == [2 * M]
    assert "perp_spot_volume_ratio" not in s  # a 3-minute window needs m0 too


def test_funding_minutes_take_the_rate_settled_at_the_end_of_their_interval() -> None:
    funding = Points(np.array([0, H8, 2 * H8], dtype=np.int64), np.array([1e-4, 2e-4, -1e-4]))
    s = baseline_samples(AssetHistory(funding=funding), M, M, 0.1)
    ts = s["funding_rate"][0]
    assert len(ts) == 2 * H8 // M  # every minute between the first and last settlement
    assert value_at(s, "funding_rate", 0) == 2e-4
    assert value_at(s, "funding_rate", H8 - M) == 2e-4  # closes exactly at the settlement
    assert value_at(s, "funding_rate", H8) == -1e-4
    assert value_at(s, "funding_rate", 2 * H8) is None  # interval not settled yet


def test_open_interest_change_against_the_row_a_day_earlier() -> None:
    step = 5 * M
    t = np.arange(0, DAY_MS + 2 * step, step, dtype=np.int64)
    oi = Points(t, 100.0 + t / step)
    s = baseline_samples(AssetHistory(open_interest=oi), M, M, 0.1)
    ts = s["oi_change_pct_24h"][0]
    assert ts[0] == DAY_MS and len(ts) == 2 * 5  # two rows with a day-old partner, 5 minutes each
    assert value_at(s, "oi_change_pct_24h", DAY_MS + 4 * M) == pytest.approx((388 / 100 - 1) * 100)
    assert value_at(s, "oi_change_pct_24h", DAY_MS + step) == pytest.approx((389 / 101 - 1) * 100)


def test_open_interest_reference_is_the_value_at_the_5_minute_mark() -> None:
    """Not the bucket's mean: a row between the marks (as live polls have) does not move it."""
    t = np.array([0, 2 * M, 5 * M, DAY_MS, DAY_MS + 5 * M], dtype=np.int64)
    oi = Points(t, np.array([100.0, 120.0, 101.0, 110.0, 111.0]))
    s = baseline_samples(AssetHistory(open_interest=oi), M, M, 0.1)
    # Bucket [0, 5 min): minutes 0 and 1 close on the row at 0, minutes 2-4 on the one at 2 min.
    # Its value at the mark is 100 (a mean over its minutes would be 112).
    assert value_at(s, "oi_change_pct_24h", DAY_MS) == pytest.approx(10.0)
    assert value_at(s, "oi_change_pct_24h", DAY_MS + 4 * M) == pytest.approx(10.0)
    assert value_at(s, "oi_change_pct_24h", DAY_MS + 5 * M) == pytest.approx(111 / 101 * 100 - 100)
    # The last row is stale 5 minutes after it, as live's open interest is.
    assert value_at(s, "oi_change_pct_24h", DAY_MS + 9 * M) is not None
    assert value_at(s, "oi_change_pct_24h", DAY_MS + 10 * M) is None


def test_flow_coverage_is_per_venue_as_live() -> None:
    """Each venue's window must cover ``min_coverage`` of itself, and then all its volume
    counts: spot's missing minutes do not take perp's volume out of the sums."""
    perp = bars([1, 1, 1, 1], [100, 100, 100, 100], [60, 60, 60, 60])
    spot = bars([1, 1], [50, 50], [10, 10])  # minutes 2 and 3 missing
    s = baseline_samples(AssetHistory(perp=perp, spot=spot), 4 * M, 4 * M, min_coverage=0.5)
    # Minute 3: perp covers 4 of 4 minutes, spot 2 of 4 (= 0.5). Buy 240 + 20, total 400 + 100.
    assert value_at(s, "net_taker_usd", 3 * M) == pytest.approx(2 * 260 - 500)
    assert value_at(s, "taker_imbalance", 3 * M) == pytest.approx(20 / 500)
    # With one spot minute, spot never covers half its window: no sample at all, rather than
    # perp-only ones.
    spot = bars([1], [50], [10])
    s = baseline_samples(AssetHistory(perp=perp, spot=spot), 4 * M, 4 * M, min_coverage=0.5)
    assert "taker_imbalance" not in s and "net_taker_usd" not in s


def test_coverage_threshold_is_decided_as_live() -> None:
    """7 of 100 minutes cover 0.07 (7 / 100 >= 0.07), though 0.07 x 100 rounds above 7."""
    history = AssetHistory(perp=bars([1] * 10, [10] * 10, [6] * 10))
    s = baseline_samples(history, 100 * M, 100 * M, min_coverage=0.07)
    assert value_at(s, "taker_imbalance", 5 * M) is None  # 6 minutes
    assert value_at(s, "taker_imbalance", 6 * M) == pytest.approx(0.2)  # 7 minutes


def test_premium_needs_a_trade_on_both_venues_in_the_minute() -> None:
    """Live compares last trades at most 10 s old: a minute without volume has none."""
    spot = bars([100, 100, 100], [50, 0, 50], [25, 0, 25])
    coinbase = bars([100.2, 100.3, 100.4], [5, 5, 0], [np.nan] * 3)
    s = baseline_samples(AssetHistory(spot=spot, coinbase=coinbase), M, M, 0.1)
    assert value_at(s, "coinbase_premium_pct", 0) == pytest.approx(0.2)
    assert value_at(s, "coinbase_premium_pct", M) is None  # no spot trade
    assert value_at(s, "coinbase_premium_pct", 2 * M) is None  # no Coinbase trade


def test_a_minute_without_a_perp_bar_has_no_funding_and_no_open_interest() -> None:
    """The USDⓈ-M socket carries the mark price (funding rate, open interest in USD): a minute
    it sent nothing has neither, live or from history."""
    perp = without(bars([1] * 10, [10] * 10, [5] * 10), 4)
    funding = Points(np.array([0, 10 * M], dtype=np.int64), np.array([1e-4, 3e-4]))
    s = baseline_samples(AssetHistory(perp=perp, funding=funding), M, M, 0.1)
    assert value_at(s, "funding_rate", 3 * M) == 3e-4
    assert value_at(s, "funding_rate", 4 * M) is None
    assert value_at(s, "funding_rate", 5 * M) == 3e-4
    # Open interest at 0 and 1.5 min: minute 0 closes on the first row, minutes 1-5 on the
    # second (stale from minute 6 on). The engine's history keeps each 5-minute bucket's first
    # value: with minute 0 missed by the perp market, that is the second row.
    perp = without(bars([1] * 10, [10] * 10, [5] * 10), 0)
    oi = Points(np.array([0, 90_000], dtype=np.int64), np.array([100.0, 105.0]))
    keys, rows = history_rows(AssetHistory(perp=perp, open_interest=oi), 5 * M)
    assert keys.tolist() == [0, 1]
    assert rows.tolist() == [[105.0, 1.0, 0.0, 0.0], [105.0, 1.0, 0.0, 0.0]]
    # With the perp market there in minute 0, the bucket's first value is the row at 0.
    perp = bars([1] * 10, [10] * 10, [5] * 10)
    keys, rows = history_rows(AssetHistory(perp=perp, open_interest=oi), 5 * M)
    assert rows[0].tolist() == [100.0, 1.0, 0.0, 0.0]


def test_rolling_sum_matches_numpy_on_a_sliding_window_with_gaps() -> None:
    rng = np.random.default_rng(7)
    x = rng.lognormal(20, 2, 5000)  # large, volatile values
    x[rng.random(5000) < 0.2] = np.nan
    slots, need = 60, 30
    got = rolling_sum(x, slots, need)
    padded = np.concatenate((np.full(slots - 1, np.nan), x))
    windows = np.lib.stride_tricks.sliding_window_view(padded, slots)
    count = (~np.isnan(windows)).sum(axis=1)
    expected = np.where(count >= need, np.nansum(windows, axis=1), np.nan)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert np.isnan(got).sum() == np.isnan(expected).sum() > 0


def test_window_fill_never_overwrites_live_data_and_is_idempotent() -> None:
    w = BucketWindow(10 * M, M, channels=1)
    w.add(5 * M, (7.0,))  # live data in bucket 5
    w.mark_missing(3 * M, 4 * M)  # an outage in bucket 3
    buckets = np.arange(0, 6, dtype=np.int64)
    assert w.fill(buckets, np.full((6, 1), 1.0)) == 4  # buckets 0, 1, 2, 4
    assert w.fill(buckets, np.full((6, 1), 1.0)) == 0
    assert w.samples()[:, 0].tolist() == [1.0, 1.0, 1.0, 1.0, 7.0]
    assert w.totals()[0] == 11.0
    # History newer than the head moves the window on, as live data would.
    assert w.fill(np.array([12], dtype=np.int64), np.array([[2.0]])) == 1
    assert w.end_ms == 13 * M and w.samples()[:, 0].tolist() == [1.0, 7.0, 2.0]


def test_baseline_fill_leaves_the_open_bucket_to_live_observation() -> None:
    b = Baseline(span_ms=60 * M, bucket_ms=M, min_obs=3)
    b.observe(10 * M + 5, 4.0)  # bucket 10 is open
    ts = np.arange(0, 12, dtype=np.int64) * M
    added = b.fill(ts, np.arange(12, dtype=float))
    assert added == 10  # buckets 0..9; 10 (open) and 11 (the future) are not history
    assert b.n_obs == 10
    b.observe(11 * M, 5.0)  # closes bucket 10 with the live value
    samples = b.window.samples()[:, 0]
    assert samples.tolist() == [*range(10), 4.0]
    z = b.score(5.0)
    assert z.z == pytest.approx((5.0 - samples.mean()) / samples.std())
    assert z.n_obs == 11 and z.warmup
