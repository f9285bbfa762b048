"""The USDT-adjusted Coinbase premium, from the config key to the simulator's socket.

``coinbase_premium_usd_adj`` = Coinbase price - Binance spot price x USDT/USD, where USDT/USD is
the latest trade of ``signals.usdt_usd_product`` (Coinbase USDT-USD), at most 60 s old;
``coinbase_premium_pct_adj`` = that / (spot x USDT/USD) x 100. Every expected number below was
worked out by hand.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
from pytest import approx

from monitor.config import Config, ConfigError, config_from_dict, deep_merge
from monitor.daemon import Daemon
from monitor.pipeline import Pipeline, RefetchRequest
from signals.catalogue import SIGNALS
from signals.engine import USDT_STALE_MS, SignalEngine
from simulator import MarketModel, Simulator
from simulator.market import USDT_USD, DepthTick, TradeTick
from streams import coinbase
from streams.continuity import TradeGap
from streams.events import BINANCE_SPOT, BUY, COINBASE, SELL, Trade
from tests.conftest import Mosquitto, Subscriber, sim_config
from tests.test_simulator import connect, recv_until

BTC = {BINANCE_SPOT: "BTCUSDT", COINBASE: "BTC-USD"}
ADJ = ("coinbase_premium_usd_adj", "coinbase_premium_pct_adj")


def engine(usdt_usd: str | None = "USDT-USD") -> SignalEngine:
    return SignalEngine(
        {"BTC": BTC},
        flow_window_ms=60_000,
        bucket_ms=1000,
        publish_interval_ms=1000,
        usdt_usd=usdt_usd,
    )


def trade(venue: str, ts: int, price: float, symbol: str | None = None) -> Trade:
    return Trade(venue, symbol or BTC[venue], ts, ts, price, 0.1, BUY, ts)


def usdt(ts: int, price: float) -> Trade:
    return Trade(COINBASE, "USDT-USD", ts, ts, price, 500.0, SELL, ts)


def snap(eng: SignalEngine, ts: int) -> dict[str, float | None]:
    """Values of the snapshot closed by an event at ``ts`` (an unmapped symbol: time only)."""
    out = eng.on_event(Trade(BINANCE_SPOT, "NOTMAPPED", ts, ts, 1.0, 1.0, BUY, ts))
    assert [s.ts_event for s in out] == [ts // 1000 * 1000]
    return out[0].values


def feed(eng: SignalEngine, *events: Trade) -> None:
    for event in events:
        assert eng.on_event(event) == []


# -- the engine ------------------------------------------------------------------------------
def test_adjusted_premium_hand_computed() -> None:
    eng = engine()
    feed(
        eng,
        trade(BINANCE_SPOT, 100, 77_990.0),  # USDT
        trade(COINBASE, 500, 78_010.0),  # USD
        usdt(700, 1.0005),  # 1 USDT = 1.0005 USD
    )
    v = snap(eng, 1000)
    # 1:1: 78,010 - 77,990 = 20 USD; 20 / 77,990 x 100 = 0.025644 %.
    assert v["coinbase_premium_usd"] == approx(20.0)
    assert v["coinbase_premium_pct"] == approx(0.0256443, abs=1e-7)
    # Spot in USD: 77,990 x 1.0005 = 78,028.995; 78,010 - 78,028.995 = -18.995 USD.
    assert v["coinbase_premium_usd_adj"] == approx(-18.995, abs=1e-9)
    # -18.995 / 78,028.995 x 100 = -0.0243435 %.
    assert v["coinbase_premium_pct_adj"] == approx(-0.0243435, abs=1e-7)


def test_adjusted_premium_is_missing_without_a_usdt_trade_never_one_to_one() -> None:
    eng = engine()
    feed(eng, trade(BINANCE_SPOT, 100, 77_990.0), trade(COINBASE, 500, 78_010.0))
    v = snap(eng, 1000)
    assert v["coinbase_premium_usd"] == approx(20.0)  # the unadjusted one is there ...
    assert v["coinbase_premium_usd_adj"] is None  # ... and is not passed off as adjusted
    assert v["coinbase_premium_pct_adj"] is None


def test_adjusted_premium_missing_when_the_usdt_price_is_older_than_a_minute() -> None:
    assert USDT_STALE_MS == 60_000
    eng = engine()
    eng.on_event(usdt(1000, 1.0002))
    for event in (trade(BINANCE_SPOT, 55_000, 78_000.0), trade(COINBASE, 55_500, 78_000.0)):
        eng.on_event(event)  # each may close a boundary; only the ones below are read
    fresh = snap(eng, 61_000)  # the USDT trade is exactly 60 s old
    # 78,000 x 1.0002 = 78,015.6: -15.6 USD; -15.6 / 78,015.6 x 100 = -0.0199960 %.
    assert fresh["coinbase_premium_usd_adj"] == approx(-15.6, abs=1e-9)
    assert fresh["coinbase_premium_pct_adj"] == approx(-0.0199960, abs=1e-7)
    stale = snap(eng, 62_000)  # 61 s old
    assert stale["coinbase_premium_usd"] == approx(0.0)  # the asset prices are 7 and 6.5 s old
    assert stale["coinbase_premium_usd_adj"] is None
    assert stale["coinbase_premium_pct_adj"] is None


def test_adjusted_premium_missing_when_an_asset_price_is_missing_or_stale() -> None:
    eng = engine()
    feed(eng, trade(COINBASE, 500, 78_010.0), usdt(600, 1.0005))
    v = snap(eng, 1000)  # no spot trade
    assert (v["coinbase_premium_usd_adj"], v["coinbase_premium_pct_adj"]) == (None, None)
    eng.on_event(trade(BINANCE_SPOT, 12_000, 77_990.0))
    eng.on_event(usdt(12_100, 1.0005))
    v = snap(eng, 13_000)  # spot and rate are fresh, Coinbase's price is 12.5 s old
    assert v["coinbase_premium_usd"] is None
    assert (v["coinbase_premium_usd_adj"], v["coinbase_premium_pct_adj"]) == (None, None)


def test_usdt_trades_go_to_the_rate_not_to_an_asset_or_unrouted() -> None:
    eng = engine()
    feed(eng, usdt(100, 1.0004), usdt(200, 1.0003))
    v = snap(eng, 1000)
    assert eng.unrouted == 1  # the time-only event of snap(), not the USDT trades
    assert v["taker_imbalance_coinbase"] is None  # not counted as Coinbase BTC flow
    assert eng.usdt_usd(1000) == approx(1.0003)
    # A late trade (older event time) does not replace the newer rate.
    eng.on_event(usdt(150, 1.0009))
    assert eng.usdt_usd(1000) == approx(1.0003)


def test_disabled_variant_leaves_usdt_trades_unrouted_and_the_signals_missing() -> None:
    eng = engine(usdt_usd=None)
    feed(
        eng,
        trade(BINANCE_SPOT, 100, 77_990.0),
        trade(COINBASE, 500, 78_010.0),
        usdt(700, 1.0005),
    )
    v = snap(eng, 1000)
    assert eng.unrouted == 2  # the USDT trade and snap()'s event
    assert v["coinbase_premium_usd"] == approx(20.0)
    assert (v["coinbase_premium_usd_adj"], v["coinbase_premium_pct_adj"]) == (None, None)


def test_adjusted_signals_are_in_the_catalogue() -> None:
    assert SIGNALS["coinbase_premium_usd_adj"].unit == "USD"
    assert SIGNALS["coinbase_premium_pct_adj"].unit == "percent"


# -- subscribe messages, parser and pipeline routing -----------------------------------------
def test_subscribe_adds_the_usdt_product_to_market_trades_only() -> None:
    assert coinbase.subscribe_messages(["BTC-USD", "ETH-USD"], trades_only=["USDT-USD"]) == [
        '{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channel":"heartbeats"}',
        '{"type":"subscribe","product_ids":["BTC-USD","ETH-USD","USDT-USD"],'
        '"channel":"market_trades"}',
        '{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channel":"level2"}',
    ]
    # A product that is also an asset's is listed once.
    (trades,) = coinbase.subscribe_messages(["BTC-USD"], ("market_trades",), ["BTC-USD"])
    assert orjson.loads(trades)["product_ids"] == ["BTC-USD"]


T0 = coinbase.rfc3339_ms("2026-08-09T21:05:48Z")


def cb_frame(seq: int, *rows: tuple[str, int, str, int]) -> str:
    """A market_trades frame of (product, trade id, price, ms after T0) rows, newest first."""
    trades = [
        {
            "trade_id": str(trade_id),
            "product_id": product,
            "price": price,
            "size": "250.5",
            "side": "BUY",
            "time": f"2026-08-09T21:05:{48 + at // 1000:02d}.{at % 1000:03d}Z",
        }
        for product, trade_id, price, at in reversed(rows)
    ]
    return orjson.dumps(
        {
            "channel": "market_trades",
            "client_id": "",
            "timestamp": "2026-08-09T21:05:48.9Z",
            "sequence_num": seq,
            "events": [{"type": "update", "trades": trades}],
        }
    ).decode()


def spot_frame(trade_id: int, price: str, at: int) -> str:
    data = {"e": "aggTrade", "E": T0 + at, "s": "BTCUSDT", "a": trade_id, "p": price, "q": "0.1"}
    data.update({"f": trade_id, "l": trade_id, "T": T0 + at, "m": False})
    return orjson.dumps({"stream": "btcusdt@aggTrade", "data": data}).decode()


def pipeline_config(**signals: Any) -> Config:
    return config_from_dict(
        {
            "instance": "test",
            "assets": {"BTC": {"binance_spot": "BTCUSDT", "coinbase": "BTC-USD"}},
            "regimes": [],
            "signals": {"flow_window": "10m", "flow_min_coverage": 0.0, **signals},
            "mqtt": {"url": "mqtt://127.0.0.1", "prefix": "tw/v1"},
        },
        env={},
    )


def published(p: Pipeline, ts: int) -> dict[str, Any]:
    out = p.feed_event(Trade(BINANCE_SPOT, "NOTMAPPED", ts, ts, 1.0, 1.0, BUY, ts))
    (msg,) = [m for m in out if m.topic.endswith("BTC/signals")]
    return {name: entry["value"] for name, entry in msg.payload["signals"].items()}


def test_pipeline_routes_usdt_frames_to_the_rate_with_continuity_and_no_book() -> None:
    p = Pipeline.for_session(pipeline_config(), "t", "t", 0)
    assert p.feed_frame(BINANCE_SPOT, spot_frame(7, "77990", 100), T0 + 100) == []
    frame = cb_frame(0, ("USDT-USD", 100, "1.0005", 200), ("BTC-USD", 5000, "78010", 300))
    assert p.feed_frame(COINBASE, frame, T0 + 300) == []
    v = published(p, T0 + 1000)
    assert v["coinbase_premium_usd_adj"] == approx(-18.995, abs=1e-9)
    assert v["coinbase_premium_pct_adj"] == approx(-0.0243435, abs=1e-7)
    assert p.engine.unrouted == 1  # published()'s time-only event
    assert (COINBASE, "USDT-USD") in p.continuity.symbols  # trade ids tracked like any product
    assert (COINBASE, "USDT-USD") not in p.books  # no book: never resynced or subscribed
    assert p.take_requests() == []

    # Ids 101-104 were missed: once the next id confirms the jump, a backfill is asked for, as
    # for any product; the new rate is used.
    p.feed_frame(COINBASE, cb_frame(1, ("USDT-USD", 105, "1.0003", 1200)), T0 + 1200)
    assert p.take_requests() == []  # one frame's word is not enough
    p.feed_frame(COINBASE, cb_frame(2, ("USDT-USD", 106, "1.0003", 1300)), T0 + 1300)
    assert p.take_requests() == [RefetchRequest(TradeGap(COINBASE, "USDT-USD", 101, 104))]
    v = published(p, T0 + 2000)
    # 77,990 x 1.0003 = 78,013.397: 78,010 - 78,013.397 = -3.397 USD.
    assert v["coinbase_premium_usd_adj"] == approx(-3.397, abs=1e-9)
    assert p.health_report(0)["trades"]["coinbase/USDT-USD"]["gaps"] == 1


def test_pipeline_without_the_key_publishes_the_adjusted_signals_as_null() -> None:
    p = Pipeline.for_session(pipeline_config(usdt_usd_product=None), "t", "t", 0)
    p.feed_frame(BINANCE_SPOT, spot_frame(7, "77990", 100), T0 + 100)
    frame = cb_frame(0, ("USDT-USD", 100, "1.0005", 200), ("BTC-USD", 5000, "78010", 300))
    p.feed_frame(COINBASE, frame, T0 + 300)
    v = published(p, T0 + 1000)
    assert v["coinbase_premium_usd"] == approx(20.0)
    assert (v["coinbase_premium_usd_adj"], v["coinbase_premium_pct_adj"]) == (None, None)


# -- config ----------------------------------------------------------------------------------
def minimal(**signals: Any) -> dict[str, Any]:
    return {
        "instance": "test",
        "assets": {"BTC": {"binance_spot": "BTCUSDT", "coinbase": "BTC-USD"}},
        "regimes": [],
        "signals": signals,
        "mqtt": {"url": "mqtt://127.0.0.1", "prefix": "tw/v1"},
    }


def errors_of(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, env={})
    return info.value.errors


def test_config_key_default_disable_and_validation() -> None:
    assert config_from_dict(minimal(), env={}).signals.usdt_usd_product == "USDT-USD"
    for off in (None, "", "  "):
        config = config_from_dict(minimal(usdt_usd_product=off), env={})
        assert config.signals.usdt_usd_product is None
    other = config_from_dict(minimal(usdt_usd_product="USDT-USDC"), env={})
    assert other.signals.usdt_usd_product == "USDT-USDC"
    assert errors_of(minimal(usdt_usd_product="usdt-usd")) == [
        "signals.usdt_usd_product: Coinbase product ids look like BTC-USD, got 'usdt-usd' "
        "(did you mean 'USDT-USD'?)"
    ]
    assert errors_of(minimal(usdt_usd_product="USDTUSD")) == [
        "signals.usdt_usd_product: Coinbase product ids look like BTC-USD, got 'USDTUSD'"
    ]
    assert errors_of(minimal(usdt_usd_product=1.0005)) == [
        "signals.usdt_usd_product: expected string, got float 1.0005"
    ]
    assert errors_of(minimal(usdt_usd_product=["USDT-USD"])) == [
        "signals.usdt_usd_product: expected string, got list"
    ]
    assert errors_of(minimal(usdt_product="USDT-USD")) == [
        "signals.usdt_product: unknown key (did you mean 'usdt_usd_product'?)"
    ]


# -- simulator -------------------------------------------------------------------------------
START_MS = 1_780_000_000_123


def test_model_usdt_usd_trades_in_its_band_with_a_book() -> None:
    ticks = MarketModel(scenario="calm", start_ms=START_MS).advance(START_MS + 60_000)
    trades = [t for t in ticks if isinstance(t, TradeTick) and t.symbol == USDT_USD]
    assert all(t.venue == COINBASE for t in trades)
    assert 120 <= len(trades) <= 240  # ~3 a second
    prices = np.array([t.price for t in trades])
    assert prices.min() >= 1.0001 and prices.max() <= 1.0004
    assert np.allclose(prices * 1e5, np.round(prices * 1e5))  # on the 0.00001 tick
    assert prices.std() > 0  # it moves
    ids = [t.agg_id for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    depth = [t for t in ticks if isinstance(t, DepthTick) and t.symbol == USDT_USD]
    assert len(depth) == 600  # one book update per 100 ms
    # Its own random streams: the same seed gives the same USDT-USD market.
    again = MarketModel(scenario="calm", start_ms=START_MS).advance(START_MS + 60_000)
    assert [t for t in again if isinstance(t, TradeTick) and t.symbol == USDT_USD] == trades


async def test_simulator_config_enables_the_usdt_product(start_simulator: Any) -> None:
    sim: Simulator = await start_simulator()
    assert sim.config_overrides()["signals"]["usdt_usd_product"] == "USDT-USD"


async def test_usdt_usd_trades_arrive_over_the_simulator_websocket(start_simulator: Any) -> None:
    sim = await start_simulator(speed=5.0)
    updates: list[dict[str, Any]] = []

    def enough(frames: list[dict[str, Any]]) -> bool:
        updates[:] = [
            t
            for f in frames
            if f["channel"] == "market_trades"
            for e in f["events"]
            if e["type"] == "update"
            for t in e["trades"]
            if t["product_id"] == "USDT-USD"
        ]
        return len(updates) >= 15

    async with connect(f"{sim.base_ws}/coinbase") as ws:
        for raw in coinbase.subscribe_messages(["BTC-USD"], trades_only=["USDT-USD"]):
            await ws.send(raw)
        frames = await recv_until(ws, enough, timeout=15.0)

    assert [f["sequence_num"] for f in frames] == list(range(len(frames)))
    replies = [f for f in frames if f["channel"] == "subscriptions"]
    assert replies[-1]["events"] == [
        {
            "subscriptions": {
                "heartbeats": ["heartbeats"],
                "level2": ["BTC-USD"],
                "market_trades": ["BTC-USD", "USDT-USD"],
            }
        }
    ]
    # One snapshot of recent trades per product (empty right after the market starts).
    snapshots = [
        e
        for f in frames
        if f["channel"] == "market_trades"
        for e in f["events"]
        if e["type"] == "snapshot"
    ]
    assert len(snapshots) == 2
    # No book of it was asked for, so none arrives.
    books = [e["product_id"] for f in frames if f["channel"] == "l2_data" for e in f["events"]]
    assert set(books) == {"BTC-USD"}
    for row in updates:
        assert set(row) == {"trade_id", "product_id", "price", "size", "time", "side"}
        assert len(row["price"].split(".")[1]) <= 5  # trimmed, on the 0.00001 tick
    envelope = {"channel": "market_trades", "events": [{"trades": updates}]}
    parsed = coinbase.events_from(COINBASE, envelope, 0)
    assert {t.symbol for t in parsed} == {"USDT-USD"}
    assert all(1.0001 <= t.price <= 1.0004 for t in parsed)
    ids = sorted(t.trade_id for t in parsed)
    assert ids == list(range(ids[0], ids[0] + len(ids)))

    # REST market trades (what a trade-id gap's backfill fetches) serve it too; candles don't.
    base = f"{sim.base_http}/coinbase/api/v3/brokerage/market/products/USDT-USD"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/ticker", params={"limit": "5"}) as resp:
            assert resp.status == 200
            body = await resp.json()
        params = {"start": "0", "end": "60", "granularity": "ONE_MINUTE"}
        async with http.get(f"{base}/candles", params=params) as resp:
            assert resp.status == 404
    path = "/api/v3/brokerage/market/products/USDT-USD/ticker"
    rows = coinbase.parse_rest(COINBASE, path, orjson.dumps(body), 0)
    assert len(rows) == 5 and all(1.0001 <= t.price <= 1.0004 for t in rows)


# -- end to end ------------------------------------------------------------------------------
async def test_daemon_publishes_the_adjusted_premium_from_the_simulator(
    start_simulator: Any, mosquitto: Mosquitto, prefix: str, subscribe: Any
) -> None:
    sim = await start_simulator(scenario="calm", speed=5.0, seed=4)
    base = {"mqtt": {"url": mosquitto.url, "prefix": prefix, "broker": "external"}}
    config = sim_config(sim, **deep_merge(base, {"signals": {"backfill": False}}))
    assert config.signals.usdt_usd_product == "USDT-USD"
    sub: Subscriber = await subscribe(f"{prefix}/BTC/signals")
    daemon = Daemon(config)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:

        def adjusted(s: Subscriber) -> bool:
            msgs = s.on(f"{prefix}/BTC/signals")
            return (
                bool(msgs) and msgs[-1]["signals"]["coinbase_premium_usd_adj"]["value"] is not None
            )

        await sub.wait_for(adjusted, timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    latest = sub.on(f"{prefix}/BTC/signals")[-1]["signals"]
    premium = latest["coinbase_premium_usd"]["value"]
    adj = latest["coinbase_premium_usd_adj"]["value"]
    spot = latest["price"]["value"]  # the same latest spot trade the premiums use
    # premium - adj = spot x (USDT/USD - 1): the rate the daemon applied lies in the band.
    rate = 1 + (premium - adj) / spot
    assert 1.0001 - 1e-9 <= rate <= 1.0004 + 1e-9
    assert latest["coinbase_premium_pct_adj"]["value"] == approx(adj / (spot * rate) * 100)
    assert {latest[name]["unit"] for name in ADJ} == {"USD", "percent"}
    assert daemon.pipeline.engine.usdt_trade is not None
    assert (COINBASE, "USDT-USD") not in daemon.pipeline.books
