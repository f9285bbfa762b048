"""The simulator's REST endpoints: Binance spot (under ``/spot``), Binance USDⓈ-M and Coinbase
(under ``/coinbase``), with Binance's request weights, 429/418 answers and error bodies.

Binance answers carry ``X-MBX-USED-WEIGHT-1M`` (weight used by the client's IP in the current
minute, spot and USDⓈ-M counted apart); a request over the limit gets 429 with ``Retry-After``
and ``{"code": -1003, ...}``, as do the injected ``rest_429``/``rest_418`` faults (Binance's
limits and endpoints: ``docs/exchange-protocols.md`` §3).
"""

from __future__ import annotations

import bisect
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Final

import numpy as np
import orjson
from aiohttp import web

from simulator import binance_wire
from simulator.coinbase_feed import CoinbaseFeed
from simulator.faults import REST_418, REST_429
from simulator.history import MarketHistory, ModelBars
from simulator.market import FUNDING_INTERVAL_MS, MarketModel, VenueSpec
from simulator.positioning import PERIOD_MS, PositionRow
from simulator.published import PublishedBook, TradeRing
from simulator.weights import (
    SPOT_LIMIT,
    USDM_LIMIT,
    WeightMeter,
)
from streams.events import BINANCE_SPOT, BINANCE_USDM, COINBASE
from streams.units import DAY_MS, HOUR_MS, MINUTE_MS
from streams.venues import BinanceSpot, BinanceUsdm

Json = dict[str, Any]
USDM_TRADE_HISTORY_MS: Final = 48 * HOUR_MS  # /fapi/v1/aggTrades reaches back 48 h
COINBASE_MAX_TRADES: Final = 1000
STATS_PERIODS: Final = {"5m": PERIOD_MS}
STATS_HISTORY_MS: Final = 30 * DAY_MS  # /futures/data/* keep the latest 30 days
SPOT_KLINES_MAX: Final = 1000
USDM_KLINES_MAX: Final = 1500
FUNDING_MAX: Final = 1000
COINBASE_MAX_CANDLES: Final = 350
COINBASE_GRANULARITIES: Final = frozenset(
    {
        "ONE_MINUTE",
        "FIVE_MINUTE",
        "FIFTEEN_MINUTE",
        "THIRTY_MINUTE",
        "ONE_HOUR",
        "TWO_HOUR",
        "FOUR_HOUR",
        "SIX_HOUR",
        "ONE_DAY",
    }
)


class RestError(Exception):
    def __init__(self, status: int, body: Json, headers: dict[str, str] | None = None) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body
        self.headers = headers or {}


def _bad(code: int, msg: str) -> RestError:
    return RestError(400, {"code": code, "msg": msg})


def json_response(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


@dataclass
class MarketState:
    """What the REST handlers read; owned and advanced by the server."""

    model: MarketModel
    books: dict[tuple[str, str], PublishedBook]
    rings: dict[tuple[str, str], TradeRing]
    coinbase: CoinbaseFeed


@dataclass
class RestFaults:
    """Injected REST refusals: one armed 429, and a 418 ban until ``banned_until`` (wall s)."""

    armed_429: bool = False
    banned_until: float = 0.0


class RestApi:
    """Routes REST requests; ``market`` starts the scenario on first use and returns the state."""

    def __init__(
        self,
        market: Callable[[], MarketState],
        now_ms: Callable[[], int],
        counts: Counter[str],
        retry_after: int,
        published_ms: Callable[[], int] | None = None,
    ) -> None:
        """``now_ms`` is the venue's clock; ``published_ms`` the event time of the last market
        data sent (default: the clock). Answers about the market (depth snapshots, open
        interest) carry the latter: an answer stamped ahead of every frame would move a
        client's event-time clock past the frames still on their way."""
        self._market = market
        self._now_ms = now_ms
        self._published_ms = published_ms or now_ms
        self.counts = counts
        self.retry_after = retry_after
        self.faults = RestFaults()
        self.meters = {BINANCE_SPOT: WeightMeter(SPOT_LIMIT), BINANCE_USDM: WeightMeter(USDM_LIMIT)}
        self.rate_limited: Counter[str] = Counter()  # natural (over-weight) refusals per venue
        self._history: MarketHistory | None = None

    def history(self) -> MarketHistory:
        """The backfill history, built (cheaply: bars are made per request) with the market."""
        if self._history is None:
            model = self._market().model
            self._history = MarketHistory(
                model.assets, model.specs, model.seed, model.start_ms, model.calm_premium
            )
        return self._history

    def arm_429(self) -> None:
        self.faults.armed_429 = True

    def start_ban(self) -> None:
        """Ban every client for ``retry_after`` seconds. Each ban is followed by at least as
        long a service window (injections in between are skipped), so however often the fault
        fires, clients can see a ban end and get their requests through."""
        now = time.monotonic()
        if now >= self.faults.banned_until + self.retry_after:
            self.faults.banned_until = now + self.retry_after

    # -- dispatch -------------------------------------------------------------------------------
    def route(
        self, path: str
    ) -> tuple[str, Callable[[web.Request], Any], Callable[[web.Request], int]] | None:
        """``(venue, handler, weight)`` for a REST path, else None."""
        if path.startswith("/spot/api/v3/"):
            handlers = self._spot
        elif path.startswith(("/fapi/v1/", "/futures/data/")):
            handlers = self._usdm
        elif path.startswith("/coinbase/api/v3/brokerage/market/products/"):
            return COINBASE, self._coinbase, _no_weight
        else:
            return None
        found = handlers.get(path)
        return None if found is None else (found[0], found[1], found[2])

    async def handle(self, request: web.Request) -> web.Response | None:
        found = self.route(request.path) if request.method == "GET" else None
        if found is None:
            return None
        venue, handler, weigh = found
        if venue == COINBASE:
            try:
                return json_response(200, handler(request))
            except RestError as err:
                return json_response(err.status, err.body)
        return self._binance(request, venue, handler, weigh)

    def _binance(
        self,
        request: web.Request,
        venue: str,
        handler: Callable[[web.Request], Any],
        weigh: Callable[[web.Request], int],
    ) -> web.Response:
        meter = self.meters[venue]
        ip = request.remote or "?"
        now_s = time.time()
        try:
            weight = weigh(request)
        except RestError as err:  # a bad parameter still costs the request's base weight
            weight, bad = 1, err
        else:
            bad = None
        refused = self._refusal(ip, meter, venue, weight, now_s)
        if refused is not None:
            status, body, headers = refused.status, refused.body, refused.headers
        elif bad is not None:
            status, body, headers = bad.status, bad.body, {}
        else:
            try:
                status, body, headers = 200, handler(request), {}
            except RestError as err:
                status, body, headers = err.status, err.body, {}
        used = {"X-MBX-USED-WEIGHT-1M": str(meter.used(ip, now_s))}
        return json_response(status, body, {**headers, **used})

    def _refusal(
        self, ip: str, meter: WeightMeter, venue: str, weight: int, now_s: float
    ) -> RestError | None:
        left = self.faults.banned_until - time.monotonic()
        if left > 0:
            self.counts[REST_418] += 1
            seconds = max(1, math.ceil(left))
            until = self._now_ms() + seconds * 1000
            return RestError(
                418,
                {
                    "code": -1003,
                    "msg": f"Way too many requests; IP({ip}) banned until {until}. "
                    "Please use the websocket for live updates to avoid bans.",
                },
                {"Retry-After": str(seconds)},
            )
        if self.faults.armed_429:
            self.faults.armed_429 = False
            self.counts[REST_429] += 1
            return self._too_many(ip, meter, self.retry_after)
        if not meter.charge(ip, weight, now_s):
            self.rate_limited[venue] += 1
            return self._too_many(ip, meter, WeightMeter.retry_after(now_s))
        return None

    @staticmethod
    def _too_many(ip: str, meter: WeightMeter, seconds: int) -> RestError:
        msg = (
            f"Too much request weight used; current limit of IP({ip}) is {meter.limit} request "
            "weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling "
            "the API."
        )
        return RestError(429, {"code": -1003, "msg": msg}, {"Retry-After": str(seconds)})

    # -- tables ---------------------------------------------------------------------------------
    @property
    def _spot(
        self,
    ) -> dict[str, tuple[str, Callable[[web.Request], Any], Callable[[web.Request], int]]]:
        s = BINANCE_SPOT
        return {
            "/spot/api/v3/ping": (s, lambda _: {}, _one),
            "/spot/api/v3/time": (s, self._time, _one),
            "/spot/api/v3/depth": (s, self._spot_depth, _spot_depth_weight),
            "/spot/api/v3/aggTrades": (s, self._spot_agg_trades, lambda _: 4),
            "/spot/api/v3/klines": (s, self._spot_klines, lambda _: 2),
        }

    @property
    def _usdm(
        self,
    ) -> dict[str, tuple[str, Callable[[web.Request], Any], Callable[[web.Request], int]]]:
        u = BINANCE_USDM
        return {
            "/fapi/v1/ping": (u, lambda _: {}, _one),
            "/fapi/v1/time": (u, self._time, _one),
            "/fapi/v1/depth": (u, self._usdm_depth, _usdm_depth_weight),
            "/fapi/v1/aggTrades": (u, self._usdm_agg_trades, lambda _: 20),
            "/fapi/v1/openInterest": (u, self._open_interest, _one),
            "/fapi/v1/klines": (u, self._usdm_klines, _usdm_klines_weight),
            # Binance gives it weight 0 and a separate 500 / 5 min bucket (not modelled).
            "/fapi/v1/fundingRate": (u, self._funding_rate, _no_weight),
            "/futures/data/globalLongShortAccountRatio": (u, self._long_short, _no_weight),
            "/futures/data/takerlongshortRatio": (u, self._taker_ratio, _no_weight),
            "/futures/data/openInterestHist": (u, self._oi_hist, _no_weight),
        }

    # -- Binance handlers -----------------------------------------------------------------------
    def _time(self, _: web.Request) -> Json:
        return {"serverTime": self._now_ms()}

    def _symbol(self, request: web.Request, venue: str) -> tuple[MarketState, str]:
        symbol = request.query.get("symbol", "")
        if not symbol:
            raise _bad(
                -1102,
                "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
            )
        state = self._market()
        if (venue, symbol) not in state.books:
            raise _bad(-1121, "Invalid symbol.")
        return state, symbol

    def _depth(self, request: web.Request, venue: str, default: int) -> Json:
        state, symbol = self._symbol(request, venue)
        limit = _int(request, "limit", default)
        book = state.books[(venue, symbol)]
        bids, asks = book.top(limit)
        spec = state.model.specs[(venue, symbol)]
        return binance_wire.depth_snapshot(
            venue, book.last_update_id, bids, asks, spec, self._published_ms()
        )

    def _spot_depth(self, request: web.Request) -> Json:
        return self._depth(request, BINANCE_SPOT, 100)

    def _usdm_depth(self, request: web.Request) -> Json:
        return self._depth(request, BINANCE_USDM, 500)

    def _agg_trades(self, request: web.Request, venue: str) -> list[Json]:
        state, symbol = self._symbol(request, venue)
        limit = min(_int(request, "limit", 500), 1000)
        ring = state.rings[(venue, symbol)]
        if venue == BINANCE_USDM:
            ring.drop_before(self._now_ms() - USDM_TRADE_HISTORY_MS)
        from_id = _optional_int(request, "fromId")
        start, end = _optional_int(request, "startTime"), _optional_int(request, "endTime")
        if from_id is not None:
            trades = ring.from_id(from_id, limit)
        elif start is not None or end is not None:
            trades = ring.between(start, end, limit)
        else:
            trades = ring.latest(limit)
        spec = state.model.specs[(venue, symbol)]
        return [binance_wire.agg_trade_row(t, spec) for t in trades]

    def _spot_agg_trades(self, request: web.Request) -> list[Json]:
        return self._agg_trades(request, BINANCE_SPOT)

    def _usdm_agg_trades(self, request: web.Request) -> list[Json]:
        return self._agg_trades(request, BINANCE_USDM)

    def _open_interest(self, request: web.Request) -> Json:
        state, symbol = self._symbol(request, BINANCE_USDM)
        return {
            "openInterest": f"{state.model.open_interest(symbol):.3f}",
            "symbol": symbol,
            "time": self._published_ms(),
        }

    def _rows(self, request: web.Request) -> tuple[str, list[PositionRow]]:
        state, symbol = self._symbol(request, BINANCE_USDM)
        period = request.query.get("period", "")
        if period not in STATS_PERIODS:
            raise _bad(-1120, "Invalid interval.")
        limit = min(_int(request, "limit", 30), 500)
        start, end = _optional_int(request, "startTime"), _optional_int(request, "endTime")
        _check_range(start, end)
        now = self._now_ms()
        rows = state.model.position_rows(symbol)  # ascending timestamps
        # Binance keeps only the latest 30 days: anything older is simply not there.
        oldest = now - STATS_HISTORY_MS
        lo = bisect.bisect_left(rows, max(oldest, start or 0), key=_stamp)
        hi = bisect.bisect_right(rows, now if end is None else min(now, end), key=_stamp)
        # With a start, Binance pages forward from it; otherwise it returns the latest.
        if start is not None:
            return symbol, rows[lo : min(hi, lo + limit)]
        return symbol, rows[max(lo, hi - limit) : hi]

    def _long_short(self, request: web.Request) -> list[Json]:
        symbol, rows = self._rows(request)
        return [
            {
                "symbol": symbol,
                "longShortRatio": f"{r.long_short_ratio:.4f}",
                "longAccount": f"{r.long_account:.4f}",
                "shortAccount": f"{1 - r.long_account:.4f}",
                "timestamp": r.timestamp_ms,
            }
            for r in rows
        ]

    def _taker_ratio(self, request: web.Request) -> list[Json]:
        _, rows = self._rows(request)
        return [
            {
                "buySellRatio": f"{r.buy_sell_ratio:.4f}",
                "buyVol": f"{r.buy_vol:.4f}",
                "sellVol": f"{r.sell_vol:.4f}",
                "timestamp": r.timestamp_ms,
            }
            for r in rows
        ]

    def _oi_hist(self, request: web.Request) -> list[Json]:
        symbol, rows = self._rows(request)
        return [
            {
                "symbol": symbol,
                "sumOpenInterest": f"{r.open_interest:.8f}",
                "sumOpenInterestValue": f"{r.oi_value:.8f}",
                "timestamp": r.timestamp_ms,
            }
            for r in rows
        ]

    # -- history (backfill) -----------------------------------------------------------------
    def _klines(self, request: web.Request, venue: str, max_limit: int) -> list[list[Any]]:
        state, symbol = self._symbol(request, venue)
        interval = request.query.get("interval", "")
        if not interval:
            raise _bad(
                -1102,
                "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.",
            )
        if interval != "1m":  # the only interval the simulator keeps
            raise _bad(-1120, "Invalid interval.")
        limit = min(_int(request, "limit", 500), max_limit)  # Binance caps silently
        start, end = _optional_int(request, "startTime"), _optional_int(request, "endTime")
        _check_range(start, end)
        history = self.history().by_binance[symbol]
        # Only closed bars: the one under way would leak the generator's future.
        last = self._now_ms() // MINUTE_MS - 1
        first, count = _window(history.first_minute, last, start, end, limit, MINUTE_MS)
        return _kline_rows(history.bars(venue, first, count), state.model.specs[(venue, symbol)])

    def _spot_klines(self, request: web.Request) -> list[list[Any]]:
        return self._klines(request, BINANCE_SPOT, SPOT_KLINES_MAX)

    def _usdm_klines(self, request: web.Request) -> list[list[Any]]:
        return self._klines(request, BINANCE_USDM, USDM_KLINES_MAX)

    def _funding_rate(self, request: web.Request) -> list[Json]:
        _, symbol = self._symbol(request, BINANCE_USDM)
        limit = min(_int(request, "limit", 100), FUNDING_MAX)
        start, end = _optional_int(request, "startTime"), _optional_int(request, "endTime")
        _check_range(start, end)
        history = self.history().by_binance[symbol]
        first_settlement = -(-history.first_minute * MINUTE_MS // FUNDING_INTERVAL_MS)
        last = self._now_ms() // FUNDING_INTERVAL_MS  # a settlement at `now` has happened
        first, count = _window(first_settlement, last, start, end, limit, FUNDING_INTERVAL_MS)
        times, rates, marks = history.funding(first, count)
        return [
            {
                "symbol": symbol,
                "fundingRate": f"{rate:.8f}",
                "fundingTime": at,
                "markPrice": f"{mark:.8f}",
            }
            for at, rate, mark in zip(times.tolist(), rates.tolist(), marks.tolist(), strict=True)
        ]

    # -- Coinbase -------------------------------------------------------------------------------
    def _coinbase(self, request: web.Request) -> Json:
        parts = request.path.split("/")  # ['', 'coinbase', 'api', 'v3', ..., '{id}', 'ticker']
        if len(parts) != 9 or parts[-1] not in ("ticker", "candles"):
            raise RestError(404, {"error": "NOT_FOUND", "message": "Not Found"})
        product = parts[-2]
        feed = self._market().coinbase
        if product not in feed.specs:
            raise RestError(404, {"error": "NOT_FOUND", "message": f"product {product} not found"})
        if parts[-1] == "candles":
            return self._coinbase_candles(request, product)
        raw = request.query.get("limit")
        if raw is None or not raw.isdigit() or int(raw) < 1:
            raise RestError(
                400, {"error": "INVALID_ARGUMENT", "message": "limit must be a positive integer"}
            )
        return feed.rest_ticker(product, min(int(raw), COINBASE_MAX_TRADES))

    def _coinbase_candles(self, request: web.Request, product: str) -> Json:
        """Advanced Trade public candles: ``start``/``end`` UNIX seconds (both inclusive),
        newest first; a range holding more than ``limit`` candles is refused, as Coinbase
        refuses ranges over its maximum."""
        query = request.query
        start, end = _coinbase_seconds(query.get("start")), _coinbase_seconds(query.get("end"))
        if start is None or end is None or start > end:
            raise _invalid("start and end must be UNIX seconds with start <= end")
        granularity = query.get("granularity", "")
        if granularity not in COINBASE_GRANULARITIES:
            raise _invalid(f"granularity {granularity!r} is not valid")
        if granularity != "ONE_MINUTE":
            raise _invalid("the simulator keeps ONE_MINUTE candles only")
        raw = query.get("limit")
        if raw is not None and (not raw.isdigit() or not 1 <= int(raw) <= COINBASE_MAX_CANDLES):
            raise _invalid(f"limit must be between 1 and {COINBASE_MAX_CANDLES}")
        limit = COINBASE_MAX_CANDLES if raw is None else int(raw)
        lo, hi = -(-start // 60), end // 60
        if hi - lo + 1 > limit:
            raise _invalid(
                f"start and end argument is invalid - number of candles requested should be "
                f"less than {limit + 1}"
            )
        history = self.history().by_product.get(product)
        if history is None:  # USDT-USD: the simulator keeps candles of the assets only
            raise RestError(404, {"error": "NOT_FOUND", "message": f"no candles of {product}"})
        hi = min(hi, self._now_ms() // MINUTE_MS - 1)
        lo = max(lo, history.first_minute)
        bars = history.bars(COINBASE, lo, max(0, hi - lo + 1))
        spec = self._market().model.specs[(COINBASE, product)]
        decimals = spec.book.tick_exp
        columns = [
            [str(ms // 1000) for ms in bars.open_ms.tolist()],
            *(
                _fixed(np.round(values, decimals), decimals)
                for values in (bars.low, bars.high, bars.open, bars.close)
            ),
            _fixed(np.round(bars.volume, 8), 8),
        ]
        keys = ("start", "low", "high", "open", "close", "volume")
        candles = [dict(zip(keys, row, strict=True)) for row in zip(*columns, strict=True)]
        candles.reverse()  # Coinbase answers newest first
        return {"candles": candles}


def _stamp(row: PositionRow) -> int:
    return row.timestamp_ms


def _check_range(start: int | None, end: int | None) -> None:
    if start is not None and end is not None and start > end:
        raise _bad(-1023, "Start time is greater than end time.")


def _window(
    first: int, last: int, start: int | None, end: int | None, limit: int, step: int
) -> tuple[int, int]:
    """``(first index, count)`` of a Binance history query over the indexes ``first..last``
    (index x ``step`` = open time): both bounds inclusive; with a start, the ``limit`` oldest
    from it; without, the ``limit`` newest up to ``end``."""
    lo = first if start is None else max(first, -(-start // step))
    hi = last if end is None else min(last, end // step)
    if hi < lo:
        return lo, 0
    count = min(limit, hi - lo + 1)
    return (lo, count) if start is not None else (hi - count + 1, count)


def _fixed(values: np.ndarray, decimals: int) -> list[str]:
    return [f"{v:.{decimals}f}" for v in values.tolist()]


def _kline_rows(bars: ModelBars, spec: VenueSpec) -> list[list[Any]]:
    """Binance kline rows, prices on the venue's tick and volumes on its lot, so the rows read
    like the venue's (and V <= v, Q <= q survive the rounding)."""
    tick, lot, pd, qd = spec.book.tick_exp, spec.book.lot_exp, spec.price_decimals, 8
    volume = np.round(bars.volume, lot)
    quote = np.round(bars.quote_volume, qd)
    buy_volume = np.minimum(np.round(bars.taker_buy_volume, lot), volume)
    buy_quote = np.minimum(np.round(bars.taker_buy_quote, qd), quote)
    open_ms = bars.open_ms.tolist()
    return [
        list(row)
        for row in zip(
            open_ms,
            *(_fixed(np.round(p, tick), pd) for p in (bars.open, bars.high, bars.low, bars.close)),
            _fixed(volume, spec.qty_decimals),
            [ms + MINUTE_MS - 1 for ms in open_ms],
            _fixed(quote, qd),
            bars.trades.tolist(),
            _fixed(buy_volume, spec.qty_decimals),
            _fixed(buy_quote, qd),
            repeat("0"),
        )
    ]


def _coinbase_seconds(raw: str | None) -> int | None:
    return int(raw) if raw is not None and raw.isdigit() else None


def _invalid(message: str) -> RestError:
    return RestError(400, {"error": "INVALID_ARGUMENT", "message": message})


def _usdm_klines_weight(request: web.Request) -> int:
    limit = min(_int(request, "limit", 500), USDM_KLINES_MAX)
    if limit < 100:
        return 1
    if limit < 500:
        return 2
    if limit <= 1000:
        return 5
    return 10


def _one(_: web.Request) -> int:
    return 1


def _no_weight(_: web.Request) -> int:
    return 0


def _int(request: web.Request, key: str, default: int) -> int:
    value = _optional_int(request, key)
    if value is None:
        return default
    if value < 1:
        raise _bad(-1100, f"Illegal characters found in parameter '{key}'; legal range is '1+'.")
    return value


def _optional_int(request: web.Request, key: str) -> int | None:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise _bad(
            -1100,
            f"Illegal characters found in parameter '{key}'; legal range is '^[0-9]{{1,20}}$'.",
        )
    return int(raw)


def _spot_depth_weight(request: web.Request) -> int:
    limit = _int(request, "limit", 100)
    if limit > 5000:
        raise _bad(-1100, "Illegal characters found in parameter 'limit'; legal range is '1-5000'.")
    return BinanceSpot.depth_weight(limit)


def _usdm_depth_weight(request: web.Request) -> int:
    limit = _int(request, "limit", 500)
    if limit not in BinanceUsdm.depth_limits:
        raise _bad(-1130, "Data sent for parameter 'limit' is not valid.")
    return BinanceUsdm.depth_weight(limit)
