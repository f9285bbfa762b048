"""Binance's wire format (spot and USDⓈ-M): combined-stream URLs and the pure parsers of frames
and REST bodies. Which streams and endpoints are read is the venue adapters' business
(``streams/venues/``).

Facts (as Binance documents them: docs/exchange-protocols.md §1–3, with sources):
- combined streams wrap each payload as ``{"stream": name, "data": payload}``;
- ``m`` is "is the buyer the maker?", so ``m == true`` means the taker SOLD;
- since 2026-04-23 USDⓈ-M serves trades/markPrice/forceOrder only under ``/market`` and books
  only under ``/public``; a socket on the wrong path connects and then stays silent.
"""

from __future__ import annotations

import math
from typing import Generic, TypeVar
from urllib.parse import parse_qs, urlsplit

import msgspec
import orjson

from streams.events import (
    BUY,
    SELL,
    Bars,
    BookTicker,
    DepthDiff,
    DepthSnapshot,
    Event,
    Level,
    Liquidation,
    LongShortRatio,
    MarkPrice,
    OpenInterest,
    Points,
    Trade,
)
from streams.frames import (
    IgnoredFrame,
    LevelSize,
    MalformedFrame,
    Price,
    Size,
    boolean,
    integer,
    non_negative_number,
    number,
    optional_integer,
    optional_number,
    positive_number,
    rest_rows,
    string,
)
from streams.units import MINUTE_MS

# Streams that tick on a fixed cadence whatever the market does: silence on them means the stream
# (not the market) stopped. Trades and book tickers are irregular and are not watched.
CADENCED_SUFFIXES = ("@markPrice@1s", "@depth@100ms")

# Stream kinds (the name between the symbol and any ``@`` option) that are Binance's, valid, and
# read by no signal: a tape recorded when they were subscribed has their frames skipped from the
# stream name, unparsed. A stream of any other unknown kind is parsed (and found malformed).
UNREAD_STREAM_KINDS = frozenset({"bookTicker", "ticker", "miniTicker"})

# Most streams one connection may carry (USDⓈ-M documents 200 or 1024; plan for 200).
MAX_STREAMS_PER_CONNECTION = 200

# Payload event types that are valid Binance data but not turned into events.
_NOT_COLLECTED = frozenset({"kline", "24hrTicker", "24hrMiniTicker"})


def combined_stream_url(base: str, symbols: list[str], streams: tuple[str, ...]) -> str:
    """``<base>/stream?streams=btcusdt@aggTrade/...`` (Binance wants lower-case symbols)."""
    names = "/".join(f"{sym.lower()}@{stream}" for sym in symbols for stream in streams)
    return f"{base.rstrip('/')}/stream?streams={names}"


def parse_frame(venue: str, raw: str | bytes, ts_recv: int) -> list[Event]:
    """Turn one websocket text frame into normalized events.

    Raises ``MalformedFrame`` or ``IgnoredFrame``; never anything else for any input.
    """
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedFrame("not_json", repr(raw[:80])) from None
    if not isinstance(msg, dict):
        raise MalformedFrame("not_object", type(msg).__name__)
    data = msg.get("data")
    if isinstance(data, dict) and "stream" in msg:
        msg = data
    elif "result" in msg and "id" in msg:
        raise IgnoredFrame("control_reply", str(msg.get("id")))
    elif "error" in msg:
        raise IgnoredFrame("error_reply", str(msg["error"])[:200])
    return parse_payload(venue, msg, ts_recv)


def parse_payload(venue: str, payload: dict, ts_recv: int) -> list[Event]:
    kind = payload.get("e")
    if kind is not None and kind.__class__ is not str:  # a list would not even hash
        raise MalformedFrame("bad_type", f"e={str(kind)[:40]}")
    if kind == "aggTrade":
        return [_trade(venue, payload, ts_recv, "a")]
    if kind == "trade":
        return [_trade(venue, payload, ts_recv, "t")]
    if kind == "markPriceUpdate":
        return [_mark_price(venue, payload, ts_recv)]
    if kind == "depthUpdate":
        return [_depth_diff(venue, payload, ts_recv)]
    if kind == "bookTicker" or (kind is None and "u" in payload and "B" in payload):
        return [_book_ticker(venue, payload, ts_recv)]  # spot bookTicker has no "e" and no time
    if kind == "forceOrder":
        return [_liquidation(venue, payload, ts_recv)]
    if kind in _NOT_COLLECTED:
        raise IgnoredFrame("not_collected", kind)
    if kind == "serverShutdown":
        raise IgnoredFrame("server_shutdown")
    raise MalformedFrame("unknown_event", repr(kind)[:40])


def _trade(venue: str, p: dict, ts_recv: int, id_key: str) -> Trade:
    # Fast path for the well-formed frame (nearly all of them): read every field once and check
    # them together. Any doubt falls through to the strict readers, which say what is wrong.
    try:
        raw_p, raw_q, maker, ts, trade_id, symbol = (
            p["p"],
            p["q"],
            p["m"],
            p["T"],
            p[id_key],
            p["s"],
        )
        if raw_p.__class__ is str and raw_q.__class__ is str:
            price, qty = float(raw_p), float(raw_q)
            if (
                0.0 < price < math.inf
                and 0.0 < qty < math.inf
                and maker.__class__ is bool
                and ts.__class__ is int
                and trade_id.__class__ is int
                and symbol.__class__ is str
                and symbol
            ):
                return Trade(
                    venue, symbol, ts, ts_recv, price, qty, SELL if maker else BUY, trade_id
                )
    except (KeyError, ValueError):
        pass
    return _trade_strict(venue, p, ts_recv, id_key)


def _trade_strict(venue: str, p: dict, ts_recv: int, id_key: str) -> Trade:
    return Trade(
        venue=venue,
        symbol=string(p, "s"),
        ts_event=integer(p, "T"),
        ts_recv=ts_recv,
        price=positive_number(p, "p"),
        qty=positive_number(p, "q"),
        taker_side=SELL if boolean(p, "m") else BUY,
        trade_id=integer(p, id_key),
    )


def _mark_price(venue: str, p: dict, ts_recv: int) -> MarkPrice:
    next_funding = optional_integer(p, "T")
    return MarkPrice(
        venue=venue,
        symbol=string(p, "s"),
        ts_event=integer(p, "E"),
        ts_recv=ts_recv,
        mark_price=positive_number(p, "p"),
        index_price=optional_number(p, "i"),
        funding_rate=optional_number(p, "r"),
        next_funding_time=next_funding or None,
    )


def _levels(payload: dict, key: str) -> tuple[Level, ...]:
    """``[["price", "qty"], ...]`` with price > 0 and qty >= 0 (0 removes the level)."""
    raw = payload.get(key)
    if raw is None:
        raise MalformedFrame("missing_field", key)
    try:
        levels = [(float(p), float(q)) for p, q in raw]
    except (TypeError, ValueError):
        raise MalformedFrame("bad_type", f"{key}={str(raw)[:60]}") from None
    for price, qty in levels:
        # NaN fails every comparison, so it lands here too.
        if not (0.0 < price < math.inf and 0.0 <= qty < math.inf):
            raise MalformedFrame("bad_value", f"{key} level {price!r} {qty!r}")
    return tuple(levels)


def _depth_diff(venue: str, p: dict, ts_recv: int) -> DepthDiff:
    return DepthDiff(
        venue=venue,
        symbol=string(p, "s"),
        ts_event=integer(p, "E"),
        ts_recv=ts_recv,
        first_id=integer(p, "U"),
        last_id=integer(p, "u"),
        prev_last_id=optional_integer(p, "pu"),
        bids=_levels(p, "b"),
        asks=_levels(p, "a"),
    )


_P = TypeVar("_P")


class _DepthPayload(msgspec.Struct, gc=False):
    e: str
    E: int
    s: str
    U: int
    u: int
    b: list[tuple[Price, LevelSize]]
    a: list[tuple[Price, LevelSize]]
    pu: int | None = None


# ``gc=False`` on the decoded structs: they hold strings, numbers and lists of number pairs,
# never a cycle, and one is made per frame.
class _Combined(msgspec.Struct, Generic[_P], gc=False):
    """The combined-stream envelope around a payload."""

    stream: str
    data: _P


# Depth frames are most of the work: msgspec decodes one into typed fields in C, the level
# strings converted to floats and checked there ("lax" mode: numbers may also come as numeric
# strings), about five times faster than orjson and two float() calls per level.
_DEPTH_DECODER = msgspec.json.Decoder(_Combined[_DepthPayload], strict=False)


def _fast(decoder: msgspec.json.Decoder[_Combined[_P]], raw: str | bytes) -> _P | None:
    """The payload as the fast decoder reads it; None when it does not take the frame."""
    try:
        return decoder.decode(raw).data
    except msgspec.MsgspecError:
        return None


def parse_depth_frame(venue: str, raw: str | bytes, ts_recv: int) -> list[Event]:
    """A combined-stream depth frame: same outcome as ``parse_frame``. Anything the fast
    decoder does not take as it is (another shape, a bad level) goes the strict way, which
    says exactly what is wrong."""
    p = _fast(_DEPTH_DECODER, raw)
    if p is None or p.e != "depthUpdate" or not p.s:
        return parse_frame(venue, raw, ts_recv)
    return [DepthDiff(venue, p.s, p.E, ts_recv, p.U, p.u, p.pu, tuple(p.b), tuple(p.a))]


class _TradePayload(msgspec.Struct, gc=False):
    """``trade`` (id ``t``) or ``aggTrade`` (id ``a``)."""

    e: str
    s: str
    p: Price
    q: Size
    T: int
    m: bool
    t: int | None = None
    a: int | None = None


# Trades are most of the frames a signal reads: decoded like depth (lax: the price and size
# strings become floats in C), with the strict parser as the fallback for anything odd.
_TRADE_DECODER = msgspec.json.Decoder(_Combined[_TradePayload], strict=False)


def parse_trade_frame(venue: str, raw: str | bytes, ts_recv: int) -> list[Event]:
    """A combined-stream trade or aggTrade frame: same outcome as ``parse_frame``."""
    try:  # ``_fast``, inline: this is the per-trade path
        p = _TRADE_DECODER.decode(raw).data
    except msgspec.MsgspecError:
        return parse_frame(venue, raw, ts_recv)
    trade_id = p.t if p.e == "trade" else p.a if p.e == "aggTrade" else None
    if trade_id is None or not p.s:
        return parse_frame(venue, raw, ts_recv)
    return [Trade(venue, p.s, p.T, ts_recv, p.p, p.q, SELL if p.m else BUY, trade_id)]


try:
    from streams import _trade_frame
except ImportError:  # built without a C compiler: every trade frame parsed as above
    read_trade_frame = parse_trade_frame
else:
    _trade_frame.setup(Trade, BUY, SELL, parse_trade_frame)
    read_trade_frame = _trade_frame.parse


def _book_ticker(venue: str, p: dict, ts_recv: int) -> BookTicker:
    ts = optional_integer(p, "E")
    return BookTicker(
        venue=venue,
        symbol=string(p, "s"),
        ts_event=ts if ts is not None else ts_recv,
        ts_recv=ts_recv,
        bid=positive_number(p, "b"),
        bid_qty=non_negative_number(p, "B"),
        ask=positive_number(p, "a"),
        ask_qty=non_negative_number(p, "A"),
    )


def _liquidation(venue: str, p: dict, ts_recv: int) -> Liquidation:
    order = p.get("o")
    if not isinstance(order, dict):
        raise MalformedFrame("missing_field" if order is None else "bad_type", "o")
    side = string(order, "S")
    if side not in ("BUY", "SELL"):
        raise MalformedFrame("bad_value", f"S={side!r}")
    return Liquidation(
        venue=venue,
        symbol=string(order, "s"),
        ts_event=integer(order, "T"),
        ts_recv=ts_recv,
        side=BUY if side == "BUY" else SELL,
        price=positive_number(order, "ap"),
        qty=positive_number(order, "z"),
    )


# -- REST bodies -------------------------------------------------------------------------------
def parse_rest(venue: str, url: str, body: str | bytes, ts_recv: int) -> list[Event]:
    """Turn one REST response body into events. ``url`` is ``path?query`` as recorded.

    Raises ``MalformedFrame`` / ``IgnoredFrame`` like ``parse_frame``.
    """
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedFrame("not_json", f"{parts.path}: {str(body)[:80]!r}") from None
    handler = _REST.get(parts.path)
    if handler is None:
        raise IgnoredFrame("rest_not_collected", parts.path)
    if isinstance(data, dict) and "code" in data and "msg" in data:
        raise IgnoredFrame("rest_error", f"{parts.path}: {data['code']} {data['msg']}"[:200])
    symbol = query.get("symbol")
    if not symbol:
        raise MalformedFrame("missing_field", f"{parts.path}: symbol in query")
    return handler(venue, symbol, data, ts_recv)


def _rest_depth(venue: str, symbol: str, data: object, ts_recv: int) -> list[Event]:
    if not isinstance(data, dict):
        raise MalformedFrame("not_object", "depth snapshot")
    ts = data.get("E")
    return [
        DepthSnapshot(
            venue=venue,
            symbol=symbol,
            # Spot snapshots carry no time: the receive time stands in.
            ts_event=ts if isinstance(ts, int) and not isinstance(ts, bool) else ts_recv,
            ts_recv=ts_recv,
            last_id=integer(data, "lastUpdateId"),
            bids=_levels(data, "bids"),
            asks=_levels(data, "asks"),
        )
    ]


def _rest_agg_trades(venue: str, symbol: str, data: object, ts_recv: int) -> list[Event]:
    if not isinstance(data, list):
        raise MalformedFrame("bad_type", "aggTrades body is not a list")
    out: list[Event] = []
    for row in data:
        if not isinstance(row, dict):
            raise MalformedFrame("bad_type", "aggTrades row")
        out.append(_trade(venue, {**row, "s": symbol}, ts_recv, "a"))
    return out


def _rest_open_interest(venue: str, symbol: str, data: object, ts_recv: int) -> list[Event]:
    if not isinstance(data, dict):
        raise MalformedFrame("not_object", "openInterest")
    return [
        OpenInterest(
            venue,
            symbol,
            integer(data, "time"),
            ts_recv,
            non_negative_number(data, "openInterest"),
        )
    ]


def _period_time(row: dict) -> int:
    """``timestamp`` is a string in the docs and an int in Binance's SDK: accept both."""
    raw = row.get("timestamp")
    if isinstance(raw, str) and raw.isdigit():
        return int(raw)
    return integer(row, "timestamp")


def _rows(data: object, what: str) -> list[dict]:
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise MalformedFrame("bad_type", f"{what} body is not a list of objects")
    return data


def _rest_long_short(venue: str, symbol: str, data: object, ts_recv: int) -> list[Event]:
    return [
        LongShortRatio(
            venue,
            symbol,
            _period_time(r),
            ts_recv,
            non_negative_number(r, "longShortRatio"),
            non_negative_number(r, "longAccount"),
            non_negative_number(r, "shortAccount"),
        )
        for r in _rows(data, "globalLongShortAccountRatio")
    ]


_REST = {
    "/api/v3/depth": _rest_depth,
    "/fapi/v1/depth": _rest_depth,
    "/api/v3/aggTrades": _rest_agg_trades,
    "/fapi/v1/aggTrades": _rest_agg_trades,
    "/fapi/v1/openInterest": _rest_open_interest,
    "/futures/data/globalLongShortAccountRatio": _rest_long_short,
}


def stream_name(raw: str | bytes) -> str | None:
    """The stream of a combined-mode frame, read from its prefix without parsing the JSON."""
    if not isinstance(raw, str):
        raw = raw[:80].decode("ascii", "replace")
    if not raw.startswith('{"stream":"'):
        return None
    end = raw.find('"', 11, 80)
    return raw[11:end] if end > 11 else None


def stream_kind(name: str) -> str:
    """``btcusdt@depth@100ms`` -> ``depth``."""
    return name.partition("@")[2].partition("@")[0]


# -- start-up history bodies: columns of many rows --------------------------------------------
def parse_klines(body: str | bytes) -> Bars:
    """Spot ``/api/v3/klines`` or USDⓈ-M ``/fapi/v1/klines`` at 1 minute: rows ``[open time,
    open, high, low, close, volume, close time, quote volume, trades, taker buy base, taker buy
    quote, ignore]``."""
    open_ms: list[int] = []
    close: list[float] = []
    quote: list[float] = []
    taker: list[float] = []
    for row in rest_rows(body, "klines"):
        if not isinstance(row, list) or len(row) < 11:
            raise MalformedFrame("bad_kline", repr(row)[:80])
        t = row[0]
        if isinstance(t, bool) or not isinstance(t, int) or t % MINUTE_MS:
            raise MalformedFrame("bad_kline", f"open time {t!r}")
        q = non_negative_number({"quote_volume": row[7]}, "quote_volume")
        b = non_negative_number({"taker_buy_quote": row[10]}, "taker_buy_quote")
        if b > q * (1 + 1e-9):
            raise MalformedFrame("bad_kline", f"taker buy {b} > quote volume {q}")
        open_ms.append(t)
        close.append(positive_number({"close": row[4]}, "close"))
        quote.append(q)
        taker.append(min(b, q))
    return Bars.of(open_ms, close, quote, taker)


def parse_funding_history(body: str | bytes) -> Points:
    """USDⓈ-M ``/fapi/v1/fundingRate``: ``[{"fundingTime", "fundingRate"}]``, the settled rate
    (may be negative) at each funding time."""
    rows = _history_rows(body, "funding")
    return Points.of(
        [integer(r, "fundingTime") for r in rows], [number(r, "fundingRate") for r in rows]
    )


def parse_open_interest_history(body: str | bytes) -> Points:
    """USDⓈ-M ``/futures/data/openInterestHist``: ``[{"timestamp", "sumOpenInterestValue"}]``,
    open interest in USD at each timestamp."""
    rows = _history_rows(body, "oi_history")
    return Points.of(
        [integer(r, "timestamp") for r in rows],
        [positive_number(r, "sumOpenInterestValue") for r in rows],
    )


def _history_rows(body: str | bytes, what: str) -> list[dict]:
    rows = rest_rows(body, what)
    for row in rows:
        if not isinstance(row, dict):
            raise MalformedFrame(f"bad_{what}", repr(row)[:80])
    return rows
