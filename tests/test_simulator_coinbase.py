"""The simulator's Coinbase Advanced Trade socket and REST: the 5 s subscribe rule, snapshots
then the ``subscriptions`` reply, one ``sequence_num`` per connection, the maker-side
convention, trade ids, error frames and the market-trades REST endpoint."""

from __future__ import annotations

import asyncio
import bisect
import re
import time
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from simulator import Simulator
from simulator.server import SUBSCRIBE_TIMEOUT_S
from streams import coinbase
from streams.events import BUY, COINBASE, SELL
from tests.test_simulator import connect, recv_json, recv_until

RFC3339_NS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")


@pytest.fixture
async def sim(start_simulator: Any) -> Simulator:
    return await start_simulator(speed=5.0, subscribe_timeout=1.0)


def subscribe(channel: str, *products: str) -> str:
    msg: dict[str, Any] = {"type": "subscribe", "channel": channel}
    if products:
        msg["product_ids"] = list(products)
    return orjson.dumps(msg).decode()


async def test_socket_without_subscribe_is_closed_after_the_deadline(sim: Simulator) -> None:
    assert SUBSCRIBE_TIMEOUT_S == 5.0  # the default: Coinbase's rule
    opened = time.monotonic()
    async with connect(f"{sim.base_ws}/coinbase") as ws:
        with pytest.raises(ConnectionClosed):
            await recv_json(ws, timeout=5.0)
    assert 0.9 <= time.monotonic() - opened < 3.0
    # An invalid subscribe does not count either: error frame, then the close.
    async with connect(f"{sim.base_ws}/coinbase") as ws:
        await ws.send(subscribe("level2"))  # no product_ids
        assert (await recv_json(ws))["type"] == "error"
        with pytest.raises(ConnectionClosed):
            await recv_json(ws, timeout=5.0)


async def test_subscribed_socket_outlives_the_deadline(sim: Simulator) -> None:
    async with connect(f"{sim.base_ws}/coinbase") as ws:
        await ws.send(subscribe("heartbeats"))
        opened = time.monotonic()
        frames = await recv_until(ws, lambda _: time.monotonic() - opened > 1.5)
    beats = [f for f in frames if f["channel"] == "heartbeats"]
    counters = [f["events"][0]["heartbeat_counter"] for f in beats]
    assert counters == list(range(counters[0], counters[0] + len(counters)))
    assert all(type(c) is int for c in counters) and len(counters) >= 5  # 1/s of event time


async def test_snapshots_then_subscriptions_listing_everything(sim: Simulator) -> None:
    async with connect(f"{sim.base_ws}/coinbase") as ws:
        await ws.send(subscribe("market_trades", "BTC-USD", "ETH-USD"))
        first = await recv_until(
            ws, lambda fs: fs[-1]["channel"] == "subscriptions" if fs else False
        )
        await ws.send(subscribe("level2", "BTC-USD"))
        second = await recv_until(ws, lambda fs: bool(fs) and fs[-1]["channel"] == "subscriptions")
        await ws.send(subscribe("heartbeats"))
        third = await recv_until(ws, lambda fs: bool(fs) and fs[-1]["channel"] == "subscriptions")
        await ws.send(
            orjson.dumps(
                {"type": "unsubscribe", "product_ids": ["ETH-USD"], "channel": "market_trades"}
            ).decode()
        )
        fourth = await recv_until(ws, lambda fs: bool(fs) and fs[-1]["channel"] == "subscriptions")
    snapshots = [f for f in first if f["channel"] == "market_trades"]
    assert [f["events"][0]["type"] for f in snapshots] == ["snapshot", "snapshot"]
    assert {f["events"][0]["trades"][0]["product_id"] for f in snapshots} == {"BTC-USD", "ETH-USD"}
    assert first[-1]["events"] == [{"subscriptions": {"market_trades": ["BTC-USD", "ETH-USD"]}}]
    l2 = [f for f in second if f["channel"] == "l2_data"]
    assert l2[0]["events"][0]["type"] == "snapshot"  # level2 arrives as l2_data
    assert {u["side"] for u in l2[0]["events"][0]["updates"]} == {"bid", "offer"}
    assert second[-1]["events"][0]["subscriptions"] == {
        "level2": ["BTC-USD"],
        "market_trades": ["BTC-USD", "ETH-USD"],
    }
    assert third[-1]["events"][0]["subscriptions"]["heartbeats"] == ["heartbeats"]
    assert fourth[-1]["events"][0]["subscriptions"]["market_trades"] == ["BTC-USD"]
    for frame in first + second + third + fourth:
        assert set(frame) == {"channel", "client_id", "timestamp", "sequence_num", "events"}
        assert RFC3339_NS.fullmatch(frame["timestamp"])


async def test_one_sequence_num_counter_per_connection_across_channels(sim: Simulator) -> None:
    async with connect(f"{sim.base_ws}/coinbase") as ws:
        # The ticker too: tapewatch does not read it, but the simulator serves it.
        channels = (*coinbase.DEFAULT_CHANNELS, "ticker")
        for raw in coinbase.subscribe_messages(["BTC-USD", "ETH-USD"], channels):
            await ws.send(raw)
        frames = await recv_until(
            ws, lambda fs: len(fs) >= 150 and len({f["channel"] for f in fs}) == 5
        )
    assert [f["sequence_num"] for f in frames] == list(range(len(frames)))
    assert {f["channel"] for f in frames} == {
        "subscriptions",
        "heartbeats",
        "market_trades",
        "ticker",
        "l2_data",
    }
    # A second connection counts from 0 again.
    async with connect(f"{sim.base_ws}/coinbase") as ws:
        await ws.send(subscribe("heartbeats"))
        assert (await recv_json(ws))["sequence_num"] == 0


async def test_market_trades_side_is_the_maker_side(sim: Simulator) -> None:
    """A trade labelled SELL (maker sold) printed at the best ask: the taker bought."""
    tops: list[tuple[int, float, float]] = []  # (event time ms, best bid, best ask)
    trades: list[dict[str, Any]] = []
    book: dict[str, dict[float, float]] = {"bid": {}, "offer": {}}
    async with connect(f"{sim.base_ws}/coinbase") as ws:
        await ws.send(subscribe("level2", "BTC-USD"))
        await ws.send(subscribe("market_trades", "BTC-USD"))
        async with asyncio.timeout(10):
            while len(trades) < 60:
                msg = orjson.loads(await ws.recv())
                for event in msg["events"]:
                    if msg["channel"] == "l2_data":
                        for u in event["updates"]:
                            side = book[u["side"]]
                            qty = float(u["new_quantity"])
                            side[float(u["price_level"])] = qty
                            if qty == 0:
                                del side[float(u["price_level"])]
                        at = coinbase.rfc3339_ms(event["updates"][0]["event_time"])
                        tops.append((at, max(book["bid"]), min(book["offer"])))
                    elif msg["channel"] == "market_trades" and event["type"] == "update":
                        trades.extend(event["trades"])
    times = [t[0] for t in tops]
    checked = 0
    for trade in trades:
        at = coinbase.rfc3339_ms(trade["time"])
        i = bisect.bisect_right(times, at) - 1
        if i < 0 or at - times[i] >= 100:
            continue  # before the snapshot's book
        _, bid, ask = tops[i]
        assert float(trade["price"]) == (ask if trade["side"] == "SELL" else bid), trade
        (parsed,) = coinbase.events_from(
            COINBASE, {"channel": "market_trades", "events": [{"trades": [trade]}]}, 0
        )
        assert parsed.taker_side == (BUY if trade["side"] == "SELL" else SELL)
        checked += 1
    assert checked >= 30
    ids = sorted(int(t["trade_id"]) for t in trades)
    assert all(t["trade_id"].isdigit() for t in trades)
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # +1 per trade per product


async def test_bad_messages_get_error_frames_and_the_socket_stays(sim: Simulator) -> None:
    async with connect(f"{sim.base_ws}/coinbase") as ws:
        for bad in (
            "{oops",
            '{"type":"subscribe","channels":["ticker"],"product_ids":["BTC-USD"]}',
            '{"type":"subscribe","channel":"candles","product_ids":["BTC-USD"]}',
            '{"type":"subscribe","channel":"ticker","product_ids":["DOGE-USD"]}',
            '{"type":"dance"}',
        ):
            await ws.send(bad)
            reply = await recv_json(ws)
            assert set(reply) == {"type", "message"} and reply["type"] == "error", bad
        await ws.send(subscribe("ticker", "BTC-USD"))
        ticker = await recv_json(ws)
        assert ticker["channel"] == "ticker" and ticker["sequence_num"] == 0
        (quote,) = coinbase.events_from(COINBASE, ticker, 0)
        assert quote.bid < quote.ask


async def test_rest_market_trades_newest_first_with_best_bid_ask(sim: Simulator) -> None:
    async with connect(f"{sim.base_ws}/coinbase") as ws:
        await ws.send(subscribe("market_trades", "ETH-USD"))
        # Let at least five trades happen (the snapshot lists those before the subscribe). Count
        # distinct ids: the first update may repeat trades the snapshot already listed.
        await recv_until(
            ws,
            lambda fs: (
                len({t["trade_id"] for f in fs for e in f["events"] for t in e.get("trades", ())})
                >= 5
            ),
        )
    url = f"{sim.base_http}/coinbase/api/v3/brokerage/market/products/ETH-USD/ticker"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, params={"limit": "5"}) as resp:
            assert resp.status == 200
            body = await resp.json()
        async with http.get(url) as resp:
            assert resp.status == 400  # limit is required
        async with http.get(url.replace("ETH-USD", "XYZ-USD"), params={"limit": "5"}) as resp:
            assert resp.status == 404
    assert set(body) == {"trades", "best_bid", "best_ask"}
    assert float(body["best_bid"]) < float(body["best_ask"])
    trades = body["trades"]
    assert len(trades) == 5
    keys = {"trade_id", "product_id", "price", "size", "time", "side", "exchange"}
    assert all(set(t) == keys and t["side"] in ("BUY", "SELL") for t in trades)
    ids = [int(t["trade_id"]) for t in trades]
    assert ids == list(range(ids[0], ids[0] - 5, -1))  # newest first
