"""The signal engine on hand-made events: every expected number below was worked out by hand.

Each test feeds a few events, then one event for a symbol no asset maps to (it moves event time
and nothing else) to close a publish boundary, and reads that boundary's snapshot.
"""

from __future__ import annotations

from typing import Any

import pytest
from pytest import approx

from monitor.config import ConfigError, config_from_dict
from monitor.pipeline import Pipeline
from signals.engine import DepthProvider, SignalEngine
from streams.events import (
    BINANCE_SPOT,
    BINANCE_USDM,
    BUY,
    COINBASE,
    SELL,
    DepthSnapshot,
    FeedGap,
    Liquidation,
    LongShortRatio,
    MarkPrice,
    OpenInterest,
    Trade,
)
from streams.units import DAY_MS, HOUR_MS, MINUTE_MS

BTC = {BINANCE_USDM: "BTCUSDT", BINANCE_SPOT: "BTCUSDT", COINBASE: "BTC-USD"}


def engine(
    flow_window_ms: int = 60_000,
    coverage: float = 0.0,
    volume_window_ms: int = 120_000,
    depth: DepthProvider | None = None,
) -> SignalEngine:
    return SignalEngine(
        {"BTC": BTC},
        flow_window_ms=flow_window_ms,
        bucket_ms=1000,
        publish_interval_ms=1000,
        flow_min_coverage=coverage,
        volume_window_ms=volume_window_ms,
        depth=depth,
    )


def trade(venue: str, ts: int, price: float, qty: float, side: str) -> Trade:
    return Trade(venue, BTC[venue], ts, ts, price, qty, side, ts)


def liq(ts: int, side: str, price: float, qty: float) -> Liquidation:
    return Liquidation(BINANCE_USDM, "BTCUSDT", ts, ts, side, price, qty)


def mark(ts: int, price: float) -> MarkPrice:
    return MarkPrice(BINANCE_USDM, "BTCUSDT", ts, ts, price, price, 0.0001, None)


def snap(eng: SignalEngine, ts: int) -> dict[str, float | None]:
    """Values of the snapshot closed by an event at ``ts`` (an unmapped symbol: time only)."""
    out = eng.on_event(Trade(BINANCE_USDM, "NOTMAPPED", ts, ts, 1.0, 1.0, BUY, ts))
    assert [s.ts_event for s in out] == [ts // 1000 * 1000]
    return out[0].values


def feed(eng: SignalEngine, *events: object) -> None:
    for event in events:
        assert eng.on_event(event) == []  # type: ignore[arg-type]


# -- taker flow ------------------------------------------------------------------------------


def test_imbalance_per_venue_combined_and_net() -> None:
    eng = engine()
    feed(
        eng,
        trade(BINANCE_USDM, 100, 10.0, 10.0, BUY),  # perp buy 100
        trade(BINANCE_USDM, 200, 10.0, 30.0, SELL),  # perp sell 300
        trade(BINANCE_SPOT, 300, 20.0, 10.0, BUY),  # spot buy 200
        trade(BINANCE_SPOT, 400, 20.0, 5.0, SELL),  # spot sell 100
        trade(COINBASE, 500, 25.0, 2.0, BUY),  # coinbase buy 50
    )
    v = snap(eng, 1000)
    assert v["taker_imbalance_perp"] == approx(-0.5)  # (100 - 300) / 400
    assert v["taker_imbalance_spot"] == approx(1 / 3)  # (200 - 100) / 300
    assert v["taker_imbalance_coinbase"] == approx(1.0)  # 50 / 50
    # All venues: buy 350, sell 400.
    assert v["taker_imbalance"] == approx(-1 / 15)  # -50 / 750
    assert v["net_taker_usd"] == approx(-50.0)


def test_seed_shares_0454_0546_mean_imbalance_minus_0092() -> None:
    eng = engine()
    feed(
        eng,
        trade(BINANCE_USDM, 100, 1.0, 454.0, BUY),
        trade(BINANCE_USDM, 200, 1.0, 546.0, SELL),
    )
    v = snap(eng, 1000)
    assert v["taker_buy_ratio"] == approx(0.454)
    assert v["taker_sell_ratio"] == approx(0.546)
    assert v["taker_imbalance_perp"] == approx(-0.092)
    assert v["net_taker_usd"] == approx(-92.0)


def test_seed_buy_sell_ratio_079_means_imbalance_minus_0117() -> None:
    eng = engine()
    feed(
        eng,
        trade(BINANCE_USDM, 100, 1.0, 79.0, BUY),
        trade(BINANCE_USDM, 200, 1.0, 100.0, SELL),
    )
    v = snap(eng, 1000)
    assert v["taker_buy_sell_ratio"] == approx(0.79)
    assert v["taker_imbalance_perp"] == approx(-0.117318, abs=1e-6)  # -21 / 179


def test_a_window_of_buyers_only_has_no_sell_left_over_from_rounding() -> None:
    eng = engine()  # a 60 s flow window
    for i in range(30):  # sells of awkward sizes, then only buys for longer than the window
        eng.on_event(trade(BINANCE_USDM, 100 + i * 1000, 60000.1, 0.001 * (i % 7 + 1) / 3, SELL))
        eng.on_event(trade(BINANCE_USDM, 150 + i * 1000, 60000.3, 0.37, BUY))
    for i in range(30, 99):
        eng.on_event(trade(BINANCE_USDM, 150 + i * 1000, 60000.3, 0.37, BUY))
    # The window's running sell total is a rounding residue, not 0 ...
    assert eng.assets["BTC"].flow[BINANCE_USDM].totals()[1] != 0.0
    v = snap(eng, 100_500)
    # ... and none of it is published: no sellers is a sell share of exactly 0, no ratio.
    assert v["taker_sell_ratio"] == 0.0 and v["taker_buy_ratio"] == 1.0
    assert v["taker_imbalance_perp"] == 1.0
    assert v["taker_buy_sell_ratio"] is None


def test_combined_flow_is_missing_while_any_configured_venue_is_uncovered() -> None:
    # 8 s window, half of it must be covered.
    eng = engine(flow_window_ms=8000, coverage=0.5)
    feed(
        eng,
        trade(BINANCE_USDM, 100, 1.0, 100.0, BUY),
        trade(BINANCE_SPOT, 100, 1.0, 100.0, SELL),
        trade(COINBASE, 100, 1.0, 100.0, BUY),
    )
    assert snap(eng, 1000)["taker_imbalance"] is None  # 1 of 8 buckets: too young
    v = snap(eng, 4000)  # buckets 0..3 = 4 of 8
    assert v["taker_imbalance"] == approx(1 / 3)  # buy 200, sell 100
    assert v["net_taker_usd"] == approx(100.0)
    # Coinbase was down for buckets 1..3: at the next boundary 2 of its 8 buckets are backed.
    feed(eng, FeedGap(COINBASE, None, 1000, 4000, 4000, "test"))
    v = snap(eng, 5000)
    assert v["taker_imbalance_coinbase"] is None
    assert v["taker_imbalance"] is None
    assert v["net_taker_usd"] is None
    assert v["taker_imbalance_perp"] == approx(1.0)  # the other venues are unaffected
    assert v["taker_imbalance_spot"] == approx(-1.0)


def test_no_trades_means_missing_flow_not_zero() -> None:
    eng = engine()
    feed(eng, mark(100, 80_000.0))
    v = snap(eng, 1000)
    for name in (
        "taker_imbalance",
        "taker_imbalance_spot",
        "taker_imbalance_coinbase",
        "net_taker_usd",
        "perp_spot_volume_ratio",
    ):
        assert v[name] is None, name


# -- volume ----------------------------------------------------------------------------------


def test_perp_spot_volume_ratio() -> None:
    eng = engine()
    feed(
        eng,
        trade(BINANCE_USDM, 100, 10.0, 70.0, BUY),  # 700
        trade(BINANCE_USDM, 200, 1.0, 87.0, SELL),  # 87
        trade(BINANCE_SPOT, 300, 4.0, 25.0, BUY),  # 100
        trade(COINBASE, 400, 1000.0, 1.0, BUY),  # not in either side of the ratio
    )
    assert snap(eng, 1000)["perp_spot_volume_ratio"] == approx(7.87)  # 787 / 100


def test_volume_ratio_missing_without_spot_volume_or_coverage() -> None:
    eng = engine()
    feed(eng, trade(BINANCE_USDM, 100, 10.0, 70.0, BUY))
    assert snap(eng, 1000)["perp_spot_volume_ratio"] is None  # spot volume 0

    # 10 one-minute buckets, half must be covered: None after 1 minute, a value after 5.
    eng = engine(volume_window_ms=600_000, coverage=0.5)
    feed(
        eng,
        trade(BINANCE_USDM, 100, 1.0, 300.0, BUY),
        trade(BINANCE_SPOT, 200, 1.0, 200.0, SELL),
    )
    assert snap(eng, 60_000)["perp_spot_volume_ratio"] is None
    assert snap(eng, 300_000)["perp_spot_volume_ratio"] == approx(1.5)  # minutes 0-4: 300 / 200


# -- prices ----------------------------------------------------------------------------------


def test_coinbase_premium_and_price() -> None:
    eng = engine()
    feed(
        eng,
        trade(BINANCE_SPOT, 100, 78_000.0, 0.1, BUY),
        trade(COINBASE, 500, 77_909.0, 0.1, SELL),
    )
    v = snap(eng, 1000)
    assert v["coinbase_premium_usd"] == approx(-91.0)
    assert v["coinbase_premium_pct"] == approx(-0.1166667, abs=1e-7)  # -91 / 780
    assert v["price"] == approx(78_000.0)


def test_premium_missing_without_spot_trade() -> None:
    eng = engine()
    feed(eng, trade(COINBASE, 500, 77_909.0, 0.1, SELL))
    v = snap(eng, 1000)
    assert v["coinbase_premium_usd"] is None
    assert v["coinbase_premium_pct"] is None
    assert v["price"] is None


def test_premium_missing_when_coinbase_price_is_stale() -> None:
    eng = engine()
    feed(
        eng,
        trade(COINBASE, 500, 77_909.0, 0.1, SELL),
        trade(BINANCE_SPOT, 600, 78_000.0, 0.1, BUY),
    )
    assert snap(eng, 10_500)["coinbase_premium_usd"] == approx(-91.0)  # 9.5 s old: fresh
    eng.on_event(trade(BINANCE_SPOT, 12_000, 78_010.0, 0.1, BUY))  # closes 12 000: not read
    v = snap(eng, 13_000)  # the Coinbase price is 12.5 s old
    assert v["coinbase_premium_usd"] is None
    assert v["coinbase_premium_pct"] is None
    assert v["price"] == approx(78_010.0)


def test_price_missing_after_a_minute_without_spot_trades() -> None:
    eng = engine()
    feed(eng, trade(BINANCE_SPOT, 1000, 78_000.0, 0.1, BUY))
    assert snap(eng, 61_000)["price"] == approx(78_000.0)  # exactly 60 s old
    assert snap(eng, 62_000)["price"] is None


# -- liquidations ----------------------------------------------------------------------------


def test_liquidations_by_side_and_zero_once_covered() -> None:
    eng = engine(flow_window_ms=10_000, coverage=0.5)
    feed(
        eng,
        liq(500, SELL, 100.0, 2.0),  # a long, 200
        liq(600, SELL, 50.0, 1.0),  # a long, 50
        liq(700, BUY, 200.0, 0.5),  # a short, 100
    )
    v = snap(eng, 1000)  # 1 of 10 buckets
    assert v["liquidations_usd"] is None
    assert v["liquidations_usd_long"] is None
    assert v["liquidations_usd_short"] is None
    v = snap(eng, 5000)  # 5 of 10
    assert v["liquidations_usd"] == approx(350.0)
    assert v["liquidations_usd_long"] == approx(250.0)
    assert v["liquidations_usd_short"] == approx(100.0)
    v = snap(eng, 20_000)  # all three have left the window: a covered, quiet window
    assert v["liquidations_usd"] == 0.0
    assert v["liquidations_usd_long"] == 0.0
    assert v["liquidations_usd_short"] == 0.0


# -- book depth ------------------------------------------------------------------------------


def test_depth_from_the_perp_book() -> None:
    calls: list[tuple[str, str]] = []

    def depth(venue: str, symbol: str) -> tuple[float, float] | None:
        calls.append((venue, symbol))
        return (600.0, 400.0)

    eng = engine(depth=depth)
    feed(eng, mark(100, 80_000.0))
    v = snap(eng, 1000)
    assert calls == [(BINANCE_USDM, "BTCUSDT")]
    assert v["depth_usd_1pct_bid"] == approx(600.0)
    assert v["depth_usd_1pct_ask"] == approx(400.0)
    assert v["depth_usd_1pct"] == approx(1000.0)
    assert v["book_imbalance_1pct"] == approx(0.2)  # 200 / 1000


def test_depth_missing_when_book_not_synced_or_no_provider() -> None:
    for eng in (engine(depth=lambda venue, symbol: None), engine()):
        feed(eng, mark(100, 80_000.0))
        v = snap(eng, 1000)
        for name in (
            "depth_usd_1pct_bid",
            "depth_usd_1pct_ask",
            "depth_usd_1pct",
            "book_imbalance_1pct",
        ):
            assert v[name] is None, name


# -- open interest, long/short ---------------------------------------------------------------


def test_open_interest_usd_and_long_short_ratio() -> None:
    eng = engine()
    feed(
        eng,
        mark(100, 80_000.0),
        OpenInterest(BINANCE_USDM, "BTCUSDT", 200, 200, 12.5),
        LongShortRatio(BINANCE_USDM, "BTCUSDT", 300, 300, 1.85, 0.649, 0.351),
    )
    v = snap(eng, 1000)
    assert v["open_interest_usd"] == approx(1_000_000.0)  # 12.5 x 80,000
    assert v["long_short_ratio"] == approx(1.85)


def test_open_interest_usd_missing_when_stale_or_without_mark() -> None:
    eng = engine()
    feed(eng, OpenInterest(BINANCE_USDM, "BTCUSDT", 200, 200, 12.5))
    v = snap(eng, 1000)
    assert v["open_interest_usd"] is None  # no mark price
    assert v["long_short_ratio"] is None
    eng.on_event(mark(299_500, 80_000.0))  # closes an earlier boundary: not read
    assert snap(eng, 300_000)["open_interest_usd"] == approx(1_000_000.0)  # 299.8 s old
    assert snap(eng, 301_000)["open_interest_usd"] is None  # 300.8 s old, mark still fresh


# -- wiring in the pipeline ------------------------------------------------------------------


def pipeline_config(**signals: Any) -> Any:
    return config_from_dict(
        {
            "instance": "test",
            "assets": {"BTC": {"binance_usdm": "BTCUSDT"}},
            "regimes": [],
            "signals": {"flow_window": "10m", "flow_min_coverage": 0.0, **signals},
            "mqtt": {"url": "mqtt://127.0.0.1", "prefix": "tw/v1"},
        },
        env={},
    )


def published(p: Pipeline, ts: int) -> dict[str, Any]:
    out = p.feed_event(Trade(BINANCE_USDM, "BTCUSDT", ts, ts, 100.0, 1.0, BUY, ts))
    (msg,) = [m for m in out if m.topic.endswith("BTC/signals")]
    return {name: entry["value"] for name, entry in msg.payload["signals"].items()}


def test_pipeline_reads_depth_from_the_synced_perp_book_only() -> None:
    p = Pipeline.for_session(pipeline_config(), "t", "t", 0)
    p.feed_event(Trade(BINANCE_USDM, "BTCUSDT", 100, 100, 100.0, 1.0, BUY, 100))  # the clock
    v = published(p, 1000)
    assert v["depth_usd_1pct"] is None  # no snapshot yet: not synced
    p.books[(BINANCE_USDM, "BTCUSDT")].on_snapshot(
        DepthSnapshot(
            BINANCE_USDM,
            "BTCUSDT",
            1100,
            1100,
            1,
            bids=((99.5, 2.0), (98.0, 5.0)),  # mid 100: only 99.5 is within 1 %
            asks=((100.5, 4.0), (102.0, 1.0)),  # only 100.5 is
        )
    )
    v = published(p, 2000)
    assert v["depth_usd_1pct_bid"] == approx(199.0)  # 99.5 x 2
    assert v["depth_usd_1pct_ask"] == approx(402.0)  # 100.5 x 4
    assert v["depth_usd_1pct"] == approx(601.0)
    assert v["book_imbalance_1pct"] == approx(-0.33777, abs=1e-5)  # -203 / 601


def test_volume_window_config() -> None:
    assert pipeline_config().signals.volume_window == 86_400.0
    assert pipeline_config(volume_window="2h").signals.volume_window == 7200.0
    with pytest.raises(ConfigError, match="volume_window"):
        pipeline_config(volume_window="90s")  # the window keeps one-minute buckets


def test_long_short_ratio_goes_missing_when_the_poller_stops() -> None:
    eng = engine()
    feed(eng, LongShortRatio(BINANCE_USDM, "BTCUSDT", 300, 300, 1.85, 0.649, 0.351))
    assert snap(eng, 15 * MINUTE_MS)["long_short_ratio"] == approx(1.85)  # 14m59.7s old: fresh
    assert snap(eng, 15 * MINUTE_MS + 1000)["long_short_ratio"] is None  # over 15 minutes


def test_open_interest_and_price_changes_against_a_day_earlier() -> None:
    eng = engine()
    feed(
        eng,
        mark(10_000, 80_000.0),
        OpenInterest(BINANCE_USDM, "BTCUSDT", 10_000, 10_000, 10.0),  # 800,000 USD
        trade(BINANCE_SPOT, 10_000, 50_000.0, 0.1, BUY),
    )
    first = snap(eng, 11_000)
    assert first["oi_change_pct_24h"] is None  # no history a day back yet
    for event in (
        mark(DAY_MS + 10_000, 80_000.0),
        OpenInterest(BINANCE_USDM, "BTCUSDT", DAY_MS + 10_000, DAY_MS + 10_000, 11.0),  # 880,000
        trade(BINANCE_SPOT, DAY_MS + 10_000, 51_000.0, 0.1, BUY),
    ):
        eng.on_event(event)  # the first one closes a (stale, so unrecorded) snapshot
    v = snap(eng, DAY_MS + 11_000)
    assert v["open_interest_usd"] == approx(880_000.0)
    assert v["oi_change_pct_24h"] == approx(10.0)  # 880k / 800k - 1
    assert v["price_change_pct_24h"] == approx(2.0)  # 51k / 50k - 1
    assert v["oi_change_pct_7d"] is None  # no history a week back


def test_price_against_an_hour_earlier_and_against_the_24_h_high() -> None:
    """Hand-worked: the high is the highest 5-minute mean over the last 24 h; an hour back is
    the mean of the bucket that held that moment."""
    eng = engine()
    eng.on_event(trade(BINANCE_SPOT, 10_000, 60_000.0, 0.1, BUY))
    snap(eng, 11_000)  # bucket [0, 5 min): 60,000, the high, but more than a day before the end
    assert eng.assets["BTC"].history.samples().shape[0] == 1
    start = 2 * HOUR_MS
    prices = {  # the bucket each snapshot falls in, and the price it sees
        start: 50_000.0,  # [2 h, 2 h 5 min)
        start + 2 * MINUTE_MS: 51_000.0,  # same bucket: its mean is 50,500
        start + 10 * MINUTE_MS: 52_000.0,  # [2 h 10, 2 h 15): 52,000, the high of the last day
        start + HOUR_MS: 51_000.0,  # [3 h, 3 h 5): the hour-earlier bucket of the last snapshot
    }
    for ts, price in prices.items():
        eng.on_event(trade(BINANCE_SPOT, ts + 10_000, price, 0.1, BUY))
        snap(eng, ts + 11_000)
    # At 26 h 11 s: the last 24 h start in [2 h, 2 h 5), so the 60,000 bucket is out of it;
    # 1 h earlier (25 h 11 s) falls in an empty bucket; 24 h earlier in [2 h, 2 h 5).
    eng.on_event(trade(BINANCE_SPOT, 26 * HOUR_MS + 10_000, 49_920.0, 0.1, BUY))
    v = snap(eng, 26 * HOUR_MS + 11_000)
    assert v["price"] == approx(49_920.0)
    assert v["price_change_pct_1h"] is None  # no price in that bucket: missing, not 0
    assert v["price_change_pct_24h"] == approx((49_920.0 / 50_500.0 - 1) * 100)
    assert v["price_from_high_pct_24h"] == approx(-4.0)  # 49,920 / 52,000 - 1
    # At 27 h 11 s: 1 h earlier is the 49,920 bucket, and the price is a new high.
    eng.on_event(trade(BINANCE_SPOT, 27 * HOUR_MS + 10_000, 53_040.0, 0.1, BUY))
    v = snap(eng, 27 * HOUR_MS + 11_000)
    assert v["price_change_pct_1h"] == approx(6.25)  # 53,040 / 49,920 - 1
    assert v["price_from_high_pct_24h"] == 0.0


def test_open_interest_change_is_against_the_first_value_of_the_5_minute_bucket() -> None:
    """The reference is the open interest at the 5-minute mark (the bucket's first value), as in
    Binance's history (one row per mark); later polls in that bucket do not move it."""
    eng = engine()
    feed(
        eng,
        mark(10_000, 80_000.0),
        OpenInterest(BINANCE_USDM, "BTCUSDT", 10_000, 10_000, 10.0),  # 800,000 USD
    )
    assert snap(eng, 11_000)["oi_change_pct_1h"] is None  # no history an hour back yet
    eng.on_event(OpenInterest(BINANCE_USDM, "BTCUSDT", 11_500, 11_500, 10.5))  # 840,000 USD
    snap(eng, 12_000)
    # Both fall in the 5-minute bucket [0, 300 s): its first value, 800,000 USD, is kept.
    for event in (
        mark(HOUR_MS + 10_000, 80_000.0),
        OpenInterest(
            BINANCE_USDM, "BTCUSDT", HOUR_MS + 10_000, HOUR_MS + 10_000, 9.7375
        ),  # 779,000
    ):
        eng.on_event(event)
    v = snap(eng, HOUR_MS + 11_000)
    assert v["open_interest_usd"] == approx(779_000.0)
    assert v["oi_change_pct_1h"] == approx(-2.625)  # 779k / 800k - 1
    assert v["oi_change_pct_24h"] is None  # and nothing a day back


def test_a_bucket_without_open_interest_at_its_mark_takes_its_first_value() -> None:
    """The mark price is stale at the bucket's first snapshots: the first value it has counts."""
    eng = engine()
    feed(eng, OpenInterest(BINANCE_USDM, "BTCUSDT", 1_000, 1_000, 10.0))
    assert snap(eng, 2_000)["open_interest_usd"] is None  # no mark price: no USD value
    eng.on_event(mark(100_000, 81_000.0))  # closes a snapshot still without a mark price
    assert snap(eng, 101_000)["open_interest_usd"] == approx(810_000.0)  # the bucket's first
    eng.on_event(mark(200_000, 90_000.0))  # closes one with a stale mark price
    assert snap(eng, 201_000)["open_interest_usd"] == approx(900_000.0)  # kept out
    for event in (
        mark(HOUR_MS + 10_000, 81_000.0),
        OpenInterest(BINANCE_USDM, "BTCUSDT", HOUR_MS + 10_000, HOUR_MS + 10_000, 11.0),  # 891,000
    ):
        eng.on_event(event)
    assert snap(eng, HOUR_MS + 11_000)["oi_change_pct_1h"] == approx(10.0)  # 891k / 810k - 1
