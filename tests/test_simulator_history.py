"""The simulator's backfill history over real HTTP: Binance spot/USDⓈ-M klines, funding history,
the 30-day statistics window and Coinbase candles; shapes, paging, determinism, bar invariants
and the cost of a full 90-day fetch."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import aiohttp
import numpy as np
import pytest

from simulator import Simulator
from simulator.history import PREMIUM_DAY_PCT, PREMIUM_MINUTE_PCT
from simulator.market import FUNDING_INTERVAL_MS
from simulator.scenarios import CALM
from simulator.weights import SPOT_LIMIT
from streams.units import MINUTE_MS
from tests.conftest import get

WEIGHT = "X-MBX-USED-WEIGHT-1M"
DAY_MS = 86_400_000


@pytest.fixture
async def sim(start_simulator: Any) -> Simulator:
    return await start_simulator(speed=1.0)


async def klines(
    http: aiohttp.ClientSession, sim: Simulator, path: str, query: str
) -> tuple[list[list[Any]], dict[str, str]]:
    status, rows, headers = await get(http, f"{sim.base_http}{path}?interval=1m&{query}")
    assert status == 200, rows
    return rows, headers


async def paged(
    http: aiohttp.ClientSession, sim: Simulator, path: str, symbol: str, start: int, pages: int
) -> list[list[Any]]:
    """``pages`` full pages from ``start``, each starting one minute after the last bar."""
    limit = 1500 if path.startswith("/fapi") else 1000
    out: list[list[Any]] = []
    for _ in range(pages):
        rows, _ = await klines(http, sim, path, f"symbol={symbol}&startTime={start}&limit={limit}")
        out.extend(rows)
        start = rows[-1][0] + MINUTE_MS
    return out


def columns(rows: list[list[Any]]) -> dict[str, np.ndarray]:
    """Kline rows -> arrays by Binance's field letters."""
    names = ("t", "o", "h", "l", "c", "v", "T", "q", "n", "V", "Q")
    return {name: np.array([float(r[i]) for r in rows]) for i, name in enumerate(names)}


async def test_kline_shapes_limits_errors_and_weights(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    for path, max_limit, symbol in (
        ("/spot/api/v3/klines", 1000, "BTCUSDT"),
        ("/fapi/v1/klines", 1500, "ETHUSDT"),
    ):
        rows, _ = await klines(http, sim, path, f"symbol={symbol}")
        assert len(rows) == 500  # Binance's default limit
        for row in rows[:5]:
            assert len(row) == 12
            assert isinstance(row[0], int) and isinstance(row[6], int) and isinstance(row[8], int)
            assert all(isinstance(row[i], str) for i in (1, 2, 3, 4, 5, 7, 9, 10, 11))
            assert row[6] == row[0] + MINUTE_MS - 1 and row[0] % MINUTE_MS == 0
        # The newest bar is the last closed one: history ends at the simulator's now.
        assert rows[-1][6] < sim.now_ms() <= rows[-1][6] + 2 * MINUTE_MS
        capped, _ = await klines(http, sim, path, f"symbol={symbol}&limit=5000")
        assert len(capped) == max_limit
        future = sim.now_ms() + 3_600_000
        past_end, _ = await klines(http, sim, path, f"symbol={symbol}&startTime={future}")
        assert past_end == []
        for query, code in (
            (f"symbol={symbol}&interval=7m", -1120),
            (f"symbol={symbol}", -1102),  # no interval
            ("symbol=DOGEUSDT&interval=1m", -1121),
            (f"symbol={symbol}&interval=1m&startTime=2000&endTime=1000", -1023),
            (f"symbol={symbol}&interval=1m&limit=abc", -1100),
        ):
            status, body, headers = await get(http, f"{sim.base_http}{path}?{query}")
            assert status == 400 and body["code"] == code and isinstance(body["msg"], str), query
            assert WEIGHT in headers
    # Spot klines weigh 2; USDⓈ-M klines weigh by limit.
    for path, query, weight in (
        ("/spot/api/v3/klines", "limit=1000", 2),
        ("/fapi/v1/klines", "limit=99", 1),
        ("/fapi/v1/klines", "limit=100", 2),
        ("/fapi/v1/klines", "limit=500", 5),
        ("/fapi/v1/klines", "limit=1000", 5),
        ("/fapi/v1/klines", "limit=1500", 10),
    ):
        _, before = await klines(http, sim, path, "symbol=BTCUSDT&limit=1")
        _, after = await klines(http, sim, path, f"symbol=BTCUSDT&{query}")
        assert int(after[WEIGHT]) in (int(before[WEIGHT]) + weight, weight), (path, query)


async def test_start_end_inclusive_and_paging_is_contiguous(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    base = (sim.now_ms() - 10 * DAY_MS) // MINUTE_MS * MINUTE_MS
    path = "/spot/api/v3/klines"
    rows, _ = await klines(
        http, sim, path, f"symbol=BTCUSDT&startTime={base}&endTime={base + 4 * MINUTE_MS}"
    )
    assert [r[0] for r in rows] == [base + i * MINUTE_MS for i in range(5)]
    # A start inside a minute begins at the next bar; an end inside one includes it.
    rows, _ = await klines(
        http, sim, path, f"symbol=BTCUSDT&startTime={base + 1}&endTime={base + 2 * MINUTE_MS + 5}"
    )
    assert [r[0] for r in rows] == [base + MINUTE_MS, base + 2 * MINUTE_MS]
    # With only an end, the newest `limit` bars up to it.
    rows, _ = await klines(http, sim, path, f"symbol=BTCUSDT&endTime={base}&limit=3")
    assert [r[0] for r in rows] == [base - 2 * MINUTE_MS, base - MINUTE_MS, base]
    for kline_path, pages in ((path, 4), ("/fapi/v1/klines", 3)):
        series = await paged(http, sim, kline_path, "BTCUSDT", base, pages)
        opens = np.array([r[0] for r in series])
        assert len(series) == pages * (1500 if kline_path.startswith("/fapi") else 1000)
        assert opens[0] == base and np.all(np.diff(opens) == MINUTE_MS)  # no gaps, no overlaps
        # A page that overlaps two others repeats their bars exactly.
        middle, _ = await klines(
            http, sim, kline_path, f"symbol=BTCUSDT&startTime={opens[900]}&limit=300"
        )
        assert middle == series[900:1200]
        # Prices join across pages: each bar opens where the last one closed.
        assert all(a[4] == b[1] for a, b in pairwise(series))


async def test_history_is_deterministic_and_differs_by_symbol_and_seed(
    start_simulator: Any, http: aiohttp.ClientSession
) -> None:
    one = await start_simulator(seed=7)
    two = await start_simulator(seed=7)
    other = await start_simulator(seed=8)
    # Older than the 6 h tilt towards the live start, bars depend on seed, asset and time only.
    start = (one.now_ms() - 3 * DAY_MS) // MINUTE_MS * MINUTE_MS
    query = f"startTime={start}&limit=1000"
    a, _ = await klines(http, one, "/spot/api/v3/klines", f"symbol=BTCUSDT&{query}")
    b, _ = await klines(http, two, "/spot/api/v3/klines", f"symbol=BTCUSDT&{query}")
    c, _ = await klines(http, other, "/spot/api/v3/klines", f"symbol=BTCUSDT&{query}")
    eth, _ = await klines(http, one, "/spot/api/v3/klines", f"symbol=ETHUSDT&{query}")
    assert a == b
    assert [r[4] for r in a] != [r[4] for r in c]
    returns = [np.diff(np.log(columns(rows)["c"])) for rows in (a, eth)]
    assert abs(np.corrcoef(*returns)[0, 1]) < 0.2  # independent paths, not a rescaled copy


async def test_bar_invariants_over_ten_thousand_bars(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    start = (sim.now_ms() - 20 * DAY_MS) // MINUTE_MS * MINUTE_MS
    spot = columns(await paged(http, sim, "/spot/api/v3/klines", "BTCUSDT", start, 10))
    perp = columns(await paged(http, sim, "/fapi/v1/klines", "BTCUSDT", start, 7))
    for bars in (spot, perp):
        o, h, lo, c = bars["o"], bars["h"], bars["l"], bars["c"]
        assert np.all(lo <= np.minimum(o, c)) and np.all(np.maximum(o, c) <= h)
        assert np.all(bars["V"] <= bars["v"]) and np.all(bars["Q"] <= bars["q"])
        assert np.all(bars["n"] >= 1) and np.all(bars["v"] > 0)
        average = bars["q"] / bars["v"]
        typical = (h + lo + c) / 3
        deviation = np.abs(average / typical - 1)
        assert np.all(deviation < 0.01) and deviation.mean() < 0.001
        assert np.all((lo * 0.9999 <= average) & (average <= h * 1.0001))
        share = bars["Q"] / bars["q"]
        assert 0.45 < share.mean() < 0.55
        assert np.mean(share < 0.4) > 0.01  # sell-offs: something for z-scores to find
        moves = np.abs(np.diff(np.log(c)))
        assert 2e-4 < moves.mean() < 2e-3  # BTC-like minute moves
    n = len(spot["t"])
    ratio = perp["q"][:n].sum() / spot["q"].sum()
    assert 2.5 < ratio < 4.5  # perp volume ~3x spot
    assert np.all(np.abs(perp["c"][:n] / spot["c"] - 1) < 0.002)  # perp tracks spot


async def test_funding_history_on_8_hour_boundaries(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    url = f"{sim.base_http}/fapi/v1/fundingRate?symbol=BTCUSDT"
    status, latest, _ = await get(http, url)
    assert status == 200 and len(latest) == 100  # Binance's default limit
    start = sim.now_ms() - 90 * DAY_MS
    status, rows, _ = await get(http, f"{url}&startTime={start}&limit=1000")
    assert status == 200 and 269 <= len(rows) <= 271  # 90 days of 3 a day in one request
    assert rows[-100:] == latest
    times = [r["fundingTime"] for r in rows]
    assert all(t % FUNDING_INTERVAL_MS == 0 for t in times)
    assert all(b - a == FUNDING_INTERVAL_MS for a, b in pairwise(times))
    assert start <= times[0] and times[-1] <= sim.now_ms() < times[-1] + FUNDING_INTERVAL_MS
    for row in rows:
        assert set(row) == {"symbol", "fundingRate", "fundingTime", "markPrice"}
        assert row["symbol"] == "BTCUSDT" and abs(float(row["fundingRate"])) < 0.001
    rates = np.array([float(r["fundingRate"]) for r in rows])
    assert 0 < np.median(rates) < 2e-4 and rates.min() < 0  # near neutral, sometimes negative
    # The mark at a settlement is the perp's price at that moment.
    at = times[-5]
    bars, _ = await klines(
        http, sim, "/fapi/v1/klines", f"symbol=BTCUSDT&startTime={at}&endTime={at}"
    )
    assert abs(float(rows[-5]["markPrice"]) / float(bars[0][1]) - 1) < 1e-4
    status, window, _ = await get(http, f"{url}&startTime={times[3]}&endTime={times[6]}&limit=1000")
    assert [r["fundingTime"] for r in window] == times[3:7]


@pytest.mark.parametrize(
    "path", ["openInterestHist", "globalLongShortAccountRatio", "takerlongshortRatio"]
)
async def test_statistics_keep_only_30_days(
    sim: Simulator, http: aiohttp.ClientSession, path: str
) -> None:
    url = f"{sim.base_http}/futures/data/{path}?symbol=BTCUSDT&period=5m"
    now = sim.now_ms()
    status, old, _ = await get(
        http, f"{url}&startTime={now - 40 * DAY_MS}&endTime={now - 31 * DAY_MS}"
    )
    assert status == 200 and old == []
    status, first, _ = await get(http, f"{url}&startTime={now - 40 * DAY_MS}&limit=500")
    assert len(first) == 500 and first[0]["timestamp"] >= now - 30 * DAY_MS
    assert first[0]["timestamp"] < now - 30 * DAY_MS + 5 * MINUTE_MS  # from the 30-day edge
    stamps = [int(r["timestamp"]) for r in first]
    assert all(b - a == 5 * MINUTE_MS for a, b in pairwise(stamps))
    # Both bounds inclusive, paging forward from the start.
    status, window, _ = await get(
        http, f"{url}&startTime={stamps[10]}&endTime={stamps[20]}&limit=5"
    )
    assert [int(r["timestamp"]) for r in window] == stamps[10:15]
    status, tail, _ = await get(http, f"{url}&endTime={stamps[20]}&limit=3")
    assert [int(r["timestamp"]) for r in tail] == stamps[18:21]
    status, body, _ = await get(http, f"{url}&startTime={stamps[20]}&endTime={stamps[10]}")
    assert status == 400 and body["code"] == -1023


async def test_coinbase_candles_newest_first_with_the_calm_premium(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    end_s = (sim.now_ms() - 5 * DAY_MS) // 1000 // 60 * 60
    start_s = end_s - 349 * 60
    url = (
        f"{sim.base_http}/coinbase/api/v3/brokerage/market/products/BTC-USD/candles"
        f"?start={start_s}&end={end_s}&granularity=ONE_MINUTE"
    )
    status, body, _ = await get(http, url)
    assert status == 200 and list(body) == ["candles"]
    candles = body["candles"]
    assert len(candles) == 350
    assert all(
        list(c) == ["start", "low", "high", "open", "close", "volume"]
        and all(isinstance(v, str) for v in c.values())
        for c in candles
    )
    starts = [int(c["start"]) for c in candles]
    assert starts[0] == end_s and starts[-1] == start_s and starts == sorted(starts, reverse=True)
    for c in candles:
        low, high = float(c["low"]), float(c["high"])
        assert low <= min(float(c["open"]), float(c["close"])) <= high and float(c["volume"]) > 0
    spot, _ = await klines(
        http,
        sim,
        "/spot/api/v3/klines",
        f"symbol=BTCUSDT&startTime={start_s * 1000}&endTime={end_s * 1000}",
    )
    spot_close = np.array([float(r[4]) for r in spot])
    cb_close = np.array([float(c["close"]) for c in reversed(candles)])
    # The premium wanders around the calm level: a day's offset (sd 0.02 %) plus minute noise
    # (sd 0.01 %), so it is never a constant and never far from calm.
    calm_pct = CALM.premium.usd(1.0) * 100  # a percentage premium scales with the price
    off_calm = (cb_close / spot_close - 1.0) * 100 - calm_pct
    assert np.all(np.abs(off_calm) <= 5 * np.hypot(PREMIUM_DAY_PCT, PREMIUM_MINUTE_PCT))
    assert (
        0.5 * PREMIUM_MINUTE_PCT < np.std(np.diff(off_calm)) / np.sqrt(2) < 2 * PREMIUM_MINUTE_PCT
    )
    status, limited, _ = await get(http, url.replace(f"start={start_s}", f"start={end_s - 600}"))
    assert status == 200 and len(limited["candles"]) == 11
    for bad in (
        url.replace(f"start={start_s}", f"start={start_s - 60}"),  # 351 candles
        url.replace("ONE_MINUTE", "ONE_WEEK"),
        url.replace(f"start={start_s}&", ""),
        url + "&limit=351",
    ):
        status, body, _ = await get(http, bad)
        assert status == 400 and body["error"] == "INVALID_ARGUMENT", bad
    status, body, _ = await get(http, url.replace("BTC-USD", "DOGE-USD"))
    assert status == 404


async def test_full_90_day_spot_backfill_is_complete_and_within_weight(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    now = sim.now_ms()
    start = now - 90 * DAY_MS
    bars: list[list[Any]] = []
    used: list[int] = []
    while True:
        rows, headers = await klines(
            http, sim, "/spot/api/v3/klines", f"symbol=BTCUSDT&startTime={start}&limit=1000"
        )
        used.append(int(headers[WEIGHT]))
        bars.extend(rows)
        if len(rows) < 1000 or rows[-1][6] >= now:
            break
        start = rows[-1][0] + MINUTE_MS
    # Every closed minute of the 90 days: the start rounds up to a bar, the open bar is left out.
    assert len(used) == 130 and len(bars) in (129_599, 129_600)
    opens = np.array([r[0] for r in bars])
    assert np.all(np.diff(opens) == MINUTE_MS) and bars[-1][6] < sim.now_ms()
    assert max(used) < SPOT_LIMIT
