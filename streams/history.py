"""REST history bodies (the start-up backfill) turned into numpy columns.

Four shapes, all facts from the exchange reference:
- Binance klines (spot ``/api/v3/klines``, USDⓈ-M ``/fapi/v1/klines``): rows
  ``[open time, open, high, low, close, volume, close time, quote volume, trades,
  taker buy base, taker buy quote, ignore]``.
- Coinbase Advanced Trade candles: ``{"candles": [{"start": UNIX s, "close", "volume", ...}]}``,
  newest first, with no taker split (``taker_buy_quote`` is NaN) and base-currency volume
  (quote volume is estimated as volume x close).
- Binance funding history: ``[{"fundingTime", "fundingRate"}]``.
- Binance open-interest history: ``[{"timestamp", "sumOpenInterestValue"}]`` (USD notional).

Rows come back sorted by time and unique; a body that breaks the shape raises
``MalformedFrame``, like every other parser.
"""

from __future__ import annotations

import numpy as np
import orjson

from streams.events import Bars, Points
from streams.frames import MalformedFrame, integer, non_negative_number, number, positive_number

MINUTE_MS = 60_000


def _rows(body: str | bytes, what: str) -> list:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedFrame("not_json", f"{what}: {str(body)[:80]!r}") from None
    if isinstance(data, dict) and "code" in data and "msg" in data:
        raise MalformedFrame("rest_error", f"{what}: {data['code']} {data['msg']}"[:200])
    if isinstance(data, dict) and what == "candles":
        data = data.get("candles")
    if not isinstance(data, list):
        raise MalformedFrame("not_list", what)
    return data


_READERS = {"positive": positive_number, "non_negative": non_negative_number, "any": number}


def _number(raw: object, key: str, kind: str = "non_negative") -> float:
    return _READERS[kind]({key: raw}, key)


def _sorted_bars(open_ms: list[int], columns: list[list[float]]) -> Bars:
    if not open_ms:
        return Bars.empty()
    bars = Bars(np.array(open_ms, dtype=np.int64), *(np.array(c, dtype=float) for c in columns))
    return Bars.empty().merged(bars)  # sorts and removes duplicate minutes


def parse_klines(body: str | bytes) -> Bars:
    """Binance spot or USDⓈ-M 1-minute klines."""
    open_ms: list[int] = []
    close: list[float] = []
    quote: list[float] = []
    taker: list[float] = []
    for row in _rows(body, "klines"):
        if not isinstance(row, list) or len(row) < 11:
            raise MalformedFrame("bad_kline", repr(row)[:80])
        t = row[0]
        if isinstance(t, bool) or not isinstance(t, int) or t % MINUTE_MS:
            raise MalformedFrame("bad_kline", f"open time {t!r}")
        q = _number(row[7], "quote_volume")
        b = _number(row[10], "taker_buy_quote")
        if b > q * (1 + 1e-9):
            raise MalformedFrame("bad_kline", f"taker buy {b} > quote volume {q}")
        open_ms.append(t)
        close.append(_number(row[4], "close", "positive"))
        quote.append(q)
        taker.append(min(b, q))
    return _sorted_bars(open_ms, [close, quote, taker])


def parse_candles(body: str | bytes) -> Bars:
    """Coinbase Advanced Trade ONE_MINUTE candles."""
    open_ms: list[int] = []
    close: list[float] = []
    quote: list[float] = []
    for row in _rows(body, "candles"):
        if not isinstance(row, dict):
            raise MalformedFrame("bad_candle", repr(row)[:80])
        start = row.get("start")
        if not isinstance(start, str) or not start.isdigit():
            raise MalformedFrame("bad_candle", f"start {start!r}")
        price = _number(row.get("close"), "close", "positive")
        open_ms.append(int(start) * 1000)
        close.append(price)
        quote.append(_number(row.get("volume"), "volume") * price)
    return _sorted_bars(open_ms, [close, quote, [np.nan] * len(close)])


def _points(body: str | bytes, what: str, time_key: str, value_key: str, kind: str) -> Points:
    ts: list[int] = []
    values: list[float] = []
    for row in _rows(body, what):
        if not isinstance(row, dict):
            raise MalformedFrame(f"bad_{what}", repr(row)[:80])
        ts.append(integer(row, time_key))
        values.append(_number(row.get(value_key), value_key, kind))
    if not ts:
        return Points.empty()
    return Points.empty().merged(Points(np.array(ts, dtype=np.int64), np.array(values)))


def parse_funding_history(body: str | bytes) -> Points:
    """Binance ``/fapi/v1/fundingRate``: the settled rate (may be negative) at each funding time."""
    return _points(body, "funding", "fundingTime", "fundingRate", "any")


def parse_open_interest_history(body: str | bytes) -> Points:
    """Binance ``/futures/data/openInterestHist``: open interest in USD at each timestamp."""
    return _points(body, "oi_history", "timestamp", "sumOpenInterestValue", "positive")
