"""The simulator's Binance REST endpoints: shapes, errors, request weight and its limit."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from simulator import Simulator
from simulator.positioning import PERIOD_MS
from simulator.weights import WeightMeter
from streams import binance
from streams.events import BINANCE_USDM
from tests.conftest import get
from tests.test_simulator import connect, recv_until

WEIGHT = "X-MBX-USED-WEIGHT-1M"


@pytest.fixture
async def sim(start_simulator: Any) -> Simulator:
    return await start_simulator(speed=5.0)


def weight_added(before: dict[str, str], after: dict[str, str], weight: int) -> bool:
    """The header grew by ``weight``, or a new minute began with this request."""
    used, now = int(before[WEIGHT]), int(after[WEIGHT])
    return now in (used + weight, weight)


async def test_depth_shapes_limits_and_weights(sim: Simulator, http: aiohttp.ClientSession) -> None:
    base = sim.base_http
    status, spot, h1 = await get(http, f"{base}/spot/api/v3/depth?symbol=BTCUSDT&limit=5")
    assert status == 200 and list(spot) == ["lastUpdateId", "bids", "asks"]
    assert len(spot["bids"]) == len(spot["asks"]) == 5
    assert all(len(p.split(".")[1]) == 8 for p, _ in spot["bids"])
    status, _, h2 = await get(http, f"{base}/spot/api/v3/depth?symbol=BTCUSDT&limit=500")
    assert status == 200 and weight_added(h1, h2, 25)
    status, usdm, h3 = await get(http, f"{base}/fapi/v1/depth?symbol=ETHUSDT&limit=10")
    assert status == 200 and list(usdm) == ["lastUpdateId", "E", "T", "bids", "asks"]
    assert len(usdm["asks"]) == 10 and int(h3[WEIGHT]) >= 2  # spot and USDⓈ-M count apart
    status, _, h4 = await get(http, f"{base}/fapi/v1/depth?symbol=ETHUSDT&limit=1000")
    assert status == 200 and weight_added(h3, h4, 20)
    for url, code in (
        ("/fapi/v1/depth?symbol=ETHUSDT&limit=7", -1130),  # not one of 5,10,...,1000
        ("/fapi/v1/depth?symbol=DOGEUSDT", -1121),
        ("/spot/api/v3/depth", -1102),
        ("/spot/api/v3/depth?symbol=BTCUSDT&limit=abc", -1100),
    ):
        status, body, headers = await get(http, base + url)
        assert status == 400 and body["code"] == code and isinstance(body["msg"], str), url
        assert WEIGHT in headers


async def test_ping_time_and_unknown_path(sim: Simulator, http: aiohttp.ClientSession) -> None:
    for prefix in ("/fapi/v1", "/spot/api/v3"):
        status, body, headers = await get(http, f"{sim.base_http}{prefix}/ping")
        assert status == 200 and body == {} and int(headers[WEIGHT]) >= 1
        before = sim.now_ms()
        _, body, _ = await get(http, f"{sim.base_http}{prefix}/time")
        assert before <= body["serverTime"] <= sim.now_ms()
    status, body, _ = await get(http, f"{sim.base_http}/fapi/v1/nothing")
    assert status == 404 and body["code"] == -1


async def test_agg_trades_rows_and_paging(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with connect(f"{sim.base_ws}/spot/stream?streams=btcusdt@aggTrade") as ws:
        await recv_until(ws, lambda fs: len(fs) >= 30)  # let trades accumulate
    for path, keys, weight in (
        ("/spot/api/v3/aggTrades", {"a", "p", "q", "f", "l", "T", "m", "M"}, 4),
        ("/fapi/v1/aggTrades", {"a", "p", "q", "f", "l", "T", "m"}, 20),
    ):
        url = f"{sim.base_http}{path}?symbol=BTCUSDT"
        status, latest, h1 = await get(http, url + "&limit=20")
        assert status == 200 and len(latest) == 20
        assert all(set(row) == keys for row in latest)
        ids = [row["a"] for row in latest]
        assert ids == list(range(ids[0], ids[0] + 20))
        _, page, h2 = await get(http, f"{url}&fromId={ids[3]}&limit=5")
        assert [row["a"] for row in page] == ids[3:8] and weight_added(h1, h2, weight)
        _, window, _ = await get(
            http, f"{url}&startTime={latest[5]['T']}&endTime={latest[9]['T']}&limit=1000"
        )
        assert {row["a"] for row in window} >= set(ids[6:9])
        _, none, _ = await get(http, f"{url}&fromId={ids[-1] + 10**6}")
        assert none == []
        parsed = binance.parse_rest(
            BINANCE_USDM, f"{path.removeprefix('/spot')}?symbol=BTCUSDT", orjson.dumps(latest), 0
        )
        assert [t.trade_id for t in parsed] == ids


async def test_open_interest_and_5_minute_statistics(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    base = f"{sim.base_http}"
    status, oi, _ = await get(http, f"{base}/fapi/v1/openInterest?symbol=BTCUSDT")
    assert status == 200 and set(oi) == {"openInterest", "symbol", "time"}
    assert oi["symbol"] == "BTCUSDT" and float(oi["openInterest"]) > 0
    assert abs(oi["time"] - sim.now_ms()) < 5_000
    query = "symbol=BTCUSDT&period=5m&limit=12"
    _, ratios, h1 = await get(http, f"{base}/futures/data/globalLongShortAccountRatio?{query}")
    _, taker, h2 = await get(http, f"{base}/futures/data/takerlongshortRatio?{query}")
    _, hist, _ = await get(http, f"{base}/futures/data/openInterestHist?{query}")
    assert h1[WEIGHT] == h2[WEIGHT]  # the statistics endpoints weigh nothing
    assert len(ratios) == len(taker) == len(hist) == 12
    for row in ratios:
        assert set(row) == {"symbol", "longShortRatio", "longAccount", "shortAccount", "timestamp"}
        long, short = float(row["longAccount"]), float(row["shortAccount"])
        assert abs(long + short - 1) < 1e-3
        assert abs(float(row["longShortRatio"]) - long / short) < 1e-3
    for row in taker:
        assert set(row) == {"buySellRatio", "buyVol", "sellVol", "timestamp"}
        buy, sell = float(row["buyVol"]), float(row["sellVol"])
        assert abs(float(row["buySellRatio"]) - buy / sell) < 1e-3
    assert all(
        set(r) == {"symbol", "sumOpenInterest", "sumOpenInterestValue", "timestamp"} for r in hist
    )
    stamps = [r["timestamp"] for r in ratios]
    assert all(t % PERIOD_MS == 0 for t in stamps) and stamps == sorted(stamps)
    assert stamps[-1] <= sim.now_ms() < stamps[-1] + 2 * PERIOD_MS
    start = stamps[0]
    _, paged, _ = await get(
        http,
        f"{base}/futures/data/takerlongshortRatio?symbol=BTCUSDT&period=5m&startTime={start}&limit=3",
    )
    assert [r["timestamp"] for r in paged] == stamps[:3]
    status, body, _ = await get(
        http, f"{base}/futures/data/takerlongshortRatio?symbol=BTCUSDT&period=7m"
    )
    assert status == 400 and body["code"] == -1120


async def test_weight_limit_refuses_with_429_and_retry_after(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.rest.meters[BINANCE_USDM].limit = 50  # the real 2400 / min would take long to reach
    statuses = []
    for _ in range(5):
        status, body, headers = await get(http, f"{sim.base_http}/fapi/v1/aggTrades?symbol=ETHUSDT")
        statuses.append(status)
    assert statuses[:2] == [200, 200] and 429 in statuses
    assert body["code"] == -1003 and 1 <= int(headers["Retry-After"]) <= 60
    assert int(headers[WEIGHT]) <= 50
    assert sim.rest.rate_limited[BINANCE_USDM] == statuses.count(429)
    status, _, _ = await get(http, f"{sim.base_http}/spot/api/v3/ping")
    assert status == 200  # spot has its own budget


def test_weight_meter_windows_reset_on_the_minute() -> None:
    meter = WeightMeter(10)
    assert meter.charge("a", 6, now_s=120.5) and meter.used("a", 121.0) == 6
    assert not meter.charge("a", 5, now_s=150.0)  # 11 > 10: refused, nothing added
    assert meter.used("a", 150.0) == 6 and meter.used("b", 150.0) == 0
    assert WeightMeter.retry_after(150.0) == 30
    assert meter.charge("a", 5, now_s=180.0) and meter.used("a", 180.0) == 5  # new minute
