"""Coinbase Advanced Trade market-data frames: subscribe messages, the pure parser and the
``sequence_num`` continuity tracker.

Facts (Coinbase Advanced Trade's documentation, docs/exchange-protocols.md §4, checked against
tests/data/coinbase-*.tape):
- one channel per subscribe message; ``level2`` is subscribed as ``level2`` but arrives as
  ``l2_data``; ``heartbeats`` must be subscribed too or quiet channels are closed after 60-90 s;
- every frame is ``{channel, timestamp, sequence_num, events}`` (``client_id`` is documented
  but absent in practice); ``sequence_num`` is one counter per connection across all channels,
  acks and heartbeats included, starting at 0 (as recorded; the prose docs say per product);
- ``side`` in ``market_trades`` is the MAKER's side, so the taker bought when it says ``SELL``;
- times are RFC 3339 with 0 to 9 fractional digits (trailing zeros dropped), always ``Z``.

The collector parses each frame once and shows the dict to the tracker before turning it into
events, so heartbeats (which produce no events) still count for continuity::

    msg = parse_envelope(raw)  # MalformedFrame if not a JSON object
    missed = tracker.observe(msg)  # int when frames were lost: resubscribe level2, FeedGap
    events = events_from(venue, msg, ts_recv)  # or IgnoredFrame / MalformedFrame
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Sequence
from datetime import date
from typing import TypeVar

import orjson

from streams.events import (
    BUY,
    SELL,
    Bars,
    BookTicker,
    DepthDiff,
    DepthSnapshot,
    Event,
    Heartbeat,
    Level,
    Trade,
)
from streams.frames import (
    IgnoredFrame,
    MalformedFrame,
    non_negative_number,
    positive_number,
    rest_rows,
    string,
)
from streams.units import DAY_MS

# The channels read. heartbeats keep quiet channels open (and prove the socket alive); the
# ticker is not read: no signal uses it.
DEFAULT_CHANNELS = ("heartbeats", "market_trades", "level2")

# Documented public channels that are valid data but not turned into events.
_NOT_COLLECTED = frozenset({"candles", "status"})
_TAKER_SIDE = {"SELL": BUY, "BUY": SELL}  # keyed by the maker's side
_ASK_SIDE = {"bid": False, "offer": True, "ask": True}
_QUOTE_KEYS = ("best_bid", "best_bid_quantity", "best_ask", "best_ask_quantity")
_INT64_DIGITS = 19

_RFC3339 = re.compile(
    r"(\d{4}-\d\d-\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([Zz])|([+-])(\d\d):(\d\d))",
    re.ASCII,
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_UNSET = object()
T = TypeVar("T")


def subscribe_messages(
    product_ids: Sequence[str],
    channels: Iterable[str] = DEFAULT_CHANNELS,
    trades_only: Sequence[str] = (),
) -> list[str]:
    """One subscribe message per channel, in order: Advanced Trade takes one channel each.

    ``trades_only`` products join the ``market_trades`` message only (a reference price such
    as USDT-USD needs trades, not a book), so the number of messages stays one per channel.
    """
    ids = list(product_ids)
    with_trades = list(dict.fromkeys([*ids, *trades_only]))
    return [
        orjson.dumps(
            {
                "type": "subscribe",
                "product_ids": with_trades if channel == "market_trades" else ids,
                "channel": channel,
            }
        ).decode()
        for channel in channels
    ]


def parse_frame(venue: str, raw: str | bytes, ts_recv: int) -> list[Event]:
    """Turn one websocket text frame into normalized events.

    Raises ``MalformedFrame`` or ``IgnoredFrame``; never anything else for any input. A collector
    that tracks ``sequence_num`` uses ``parse_envelope`` + ``events_from`` instead, so the frame is
    decoded once.
    """
    return events_from(venue, parse_envelope(raw), ts_recv)


def parse_envelope(raw: str | bytes) -> dict:
    """Decode a frame into its JSON object (``MalformedFrame`` if it is not one)."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedFrame("not_json", repr(raw[:80])) from None
    if not isinstance(msg, dict):
        raise MalformedFrame("not_object", type(msg).__name__)
    return msg


def events_from(venue: str, msg: dict, ts_recv: int) -> list[Event]:
    """Events of a decoded frame; same outcomes as ``parse_frame``."""
    if "channel" not in msg and msg.get("type") == "error":
        raise IgnoredFrame("error_reply", str(msg.get("message"))[:200])
    channel = string(msg, "channel")
    if channel == "l2_data":
        return _book(venue, msg, ts_recv)
    if channel == "market_trades":
        return _trades(venue, msg, ts_recv)
    if channel in ("ticker", "ticker_batch"):
        return _tickers(venue, msg, ts_recv)
    if channel == "heartbeats":
        # No market data, but proof that the socket carrying the trades is alive: quiet
        # products keep their flow windows covered (signals/engine.py).
        return [Heartbeat(venue, None, _time_ms(msg, "timestamp"), ts_recv)]
    if channel == "subscriptions":
        raise IgnoredFrame("subscriptions")
    if channel in _NOT_COLLECTED:
        raise IgnoredFrame("not_collected", channel)
    raise MalformedFrame("unknown_channel", repr(channel)[:40])


class SequenceTracker:
    """Continuity of one connection's ``sequence_num`` (a single counter across channels).

    ``observe`` every frame in arrival order, heartbeats and acks included. It returns how many
    frames were skipped when the number jumps, else None. Lower or repeated numbers (late or
    duplicate frames) are ignored but counted in ``stale``; a late frame does not undo a gap,
    because the book built without it is already suspect. The first number seen after creation
    or ``reset`` (call it on every reconnect) is the baseline. Totals survive ``reset``.
    """

    __slots__ = ("gaps", "last", "missed", "stale")

    def __init__(self) -> None:
        self.last: int | None = None
        self.gaps = 0  # jumps seen
        self.missed = 0  # frames skipped over all jumps
        self.stale = 0  # late or duplicate numbers

    def reset(self) -> None:
        self.last = None

    def observe(self, frame: dict | str | bytes) -> int | None:
        """Pass the dict from ``parse_envelope`` on the hot path; raw frames are decoded here
        (and raise ``MalformedFrame`` like ``parse_envelope``). Frames without an integer
        ``sequence_num`` (error replies) say nothing about continuity: None."""
        msg = frame if isinstance(frame, dict) else parse_envelope(frame)
        seq = msg.get("sequence_num")
        if type(seq) is not int:  # bool is an int subclass: exclude it exactly
            return None
        last = self.last
        if last is not None and seq <= last:
            self.stale += 1
            return None
        self.last = seq
        if last is None or seq == last + 1:
            return None
        missed = seq - last - 1
        self.gaps += 1
        self.missed += missed
        return missed


def rfc3339_ms(text: str) -> int:
    """Milliseconds since the epoch of an RFC 3339 time, fraction truncated (not rounded).

    Accepts 0-9+ fractional digits, ``Z`` or a numeric offset; raises ValueError otherwise.
    Python 3.11's ``fromisoformat`` rejects more than 6 digits, and Coinbase sends up to 9.
    """
    fields = _RFC3339.fullmatch(text)
    if fields is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    return _fields_ms(fields)


def _fields_ms(fields: re.Match[str]) -> int:
    day, hh, mm, ss, frac, _, sign, off_h, off_m = fields.groups()
    hour, minute, second = int(hh), int(mm), int(ss)
    if hour > 23 or minute > 59 or second > 59:  # Coinbase (Go) never emits leap seconds
        raise ValueError(f"time of day out of range: {hh}:{mm}:{ss}")
    ms = _epoch_day(day) * DAY_MS + (hour * 3600 + minute * 60 + second) * 1000
    if frac:
        ms += int(frac[:3].ljust(3, "0"))
    if sign:
        offset_h, offset_m = int(off_h), int(off_m)
        if offset_h > 23 or offset_m > 59:
            raise ValueError(f"offset out of range: {sign}{off_h}:{off_m}")
        offset_ms = (offset_h * 60 + offset_m) * 60_000
        ms += -offset_ms if sign == "+" else offset_ms
    return ms


@functools.lru_cache(maxsize=16)
def _epoch_day(day: str) -> int:
    # A feed spans a day or two, so the calendar maths (and its validation) runs once per day.
    return date.fromisoformat(day).toordinal() - _EPOCH_ORDINAL


def _time_ms(payload: dict, key: str) -> int:
    text = string(payload, key)
    fields = _RFC3339.fullmatch(text)
    if fields is None:
        raise MalformedFrame("bad_type", f"{key}={text[:40]!r}")
    try:
        return _fields_ms(fields)
    except ValueError:  # shaped like a time, but not a real one (month 13, 25:00)
        raise MalformedFrame("bad_value", f"{key}={text[:40]!r}") from None


def _objects(payload: dict, key: str) -> list[dict]:
    """A list of JSON objects, e.g. ``events`` or ``trades``."""
    try:
        raw = payload[key]
    except KeyError:
        raise MalformedFrame("missing_field", key) from None
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise MalformedFrame("bad_type", f"{key}={str(raw)[:60]}")
    return raw


def _trades(venue: str, msg: dict, ts_recv: int) -> list[Event]:
    trades = [
        _trade(venue, raw, ts_recv)
        for event in _objects(msg, "events")
        for raw in _objects(event, "trades")
    ]
    if not trades:
        raise IgnoredFrame("empty", "market_trades")
    # Coinbase lists each batch newest first; consumers expect time order, as Binance sends it.
    trades.sort(key=_time_order)
    return [*trades]


def _time_order(trade: Trade) -> tuple[int, int]:
    return trade.ts_event, trade.trade_id


def _trade(venue: str, p: dict, ts_recv: int) -> Trade:
    return Trade(
        venue=venue,
        symbol=string(p, "product_id"),
        ts_event=_time_ms(p, "time"),
        ts_recv=ts_recv,
        price=positive_number(p, "price"),
        qty=positive_number(p, "size"),
        taker_side=_side(p, _TAKER_SIDE),
        trade_id=_trade_id(p),
    )


def _side(p: dict, meaning: dict[str, T]) -> T:
    """What ``p["side"]`` means in ``meaning``; MalformedFrame for a side not in it."""
    side = string(p, "side")
    value = meaning.get(side)
    if value is None:
        raise MalformedFrame("bad_value", f"side={side[:20]!r}")
    return value


def _trade_id(p: dict) -> int:
    # A string of digits on the wire; anything else would make de-duplication by id unsound.
    raw = string(p, "trade_id")
    if not (raw.isascii() and raw.isdigit()):
        raise MalformedFrame("bad_type", f"trade_id={raw[:40]!r}")
    if len(raw) > _INT64_DIGITS:
        raise MalformedFrame("bad_value", f"trade_id={raw[:40]!r}")
    return int(raw)


def _book(venue: str, msg: dict, ts_recv: int) -> list[Event]:
    out: list[Event] = []
    for event in _objects(msg, "events"):
        kind = string(event, "type")
        if kind not in ("snapshot", "update"):
            raise MalformedFrame("bad_value", f"type={kind[:20]!r}")
        symbol = string(event, "product_id")
        bids, asks, newest = _levels(_objects(event, "updates"))
        if kind == "snapshot":
            # Documented snapshots carry the 1970 placeholder as event_time (then the send time
            # stands in); recorded ones carry the book's real time, which keeps a snapshot
            # older than the updates that follow it.
            ts_event = newest if newest > 0 else _time_ms(msg, "timestamp")
            out.append(DepthSnapshot(venue, symbol, ts_event, ts_recv, None, bids, asks))
        elif bids or asks:
            out.append(DepthDiff(venue, symbol, newest, ts_recv, None, None, None, bids, asks))
    if not out:
        raise IgnoredFrame("empty", "l2_data")
    return out


def _levels(updates: list[dict]) -> tuple[tuple[Level, ...], tuple[Level, ...], int]:
    """Bids, asks and the newest event_time (ms; 0 when there are no levels)."""
    bids: list[Level] = []
    asks: list[Level] = []
    newest = 0
    # Levels of one batch share their event_time (all 46 000 of a snapshot): parse it once.
    last_text: object = _UNSET
    last_ms = 0
    inf = math.inf
    for u in updates:
        text = u.get("event_time")
        if text != last_text:
            last_ms = _time_ms(u, "event_time")
            last_text = text
            newest = max(newest, last_ms)
        # Fast path for the well-formed level (nearly all of them, up to 46,000 a snapshot):
        # read the fields once and check them together; any doubt goes to the strict readers,
        # which say what is wrong.
        side, raw_p, raw_q = u.get("side"), u.get("price_level"), u.get("new_quantity")
        is_ask = _ASK_SIDE.get(side) if side.__class__ is str else None
        if is_ask is not None and raw_p.__class__ is str and raw_q.__class__ is str:
            try:
                price, qty = float(raw_p), float(raw_q)
            except ValueError:
                price = qty = math.nan
            if 0.0 < price < inf and 0.0 <= qty < inf:
                (asks if is_ask else bids).append((price, qty))
                continue
        (asks if _side(u, _ASK_SIDE) else bids).append(
            (positive_number(u, "price_level"), non_negative_number(u, "new_quantity"))
        )
    return tuple(bids), tuple(asks), newest


def _tickers(venue: str, msg: dict, ts_recv: int) -> list[Event]:
    out: list[Event] = []
    ts_event: int | None = None
    for event in _objects(msg, "events"):
        for t in _objects(event, "tickers"):
            # ticker_batch omits the quotes: nothing to report.
            if all(t.get(key) in (None, "") for key in _QUOTE_KEYS):
                continue
            if ts_event is None:  # tickers carry no time of their own: the frame's send time
                ts_event = _time_ms(msg, "timestamp")
            out.append(_book_ticker(venue, t, ts_event, ts_recv))
    if not out:
        raise IgnoredFrame("ticker_without_quotes")
    return out


def _book_ticker(venue: str, t: dict, ts_event: int, ts_recv: int) -> BookTicker:
    return BookTicker(
        venue=venue,
        symbol=string(t, "product_id"),
        ts_event=ts_event,
        ts_recv=ts_recv,
        bid=positive_number(t, "best_bid"),
        bid_qty=positive_number(t, "best_bid_quantity"),
        ask=positive_number(t, "best_ask"),
        ask_qty=positive_number(t, "best_ask_quantity"),
    )


# -- REST bodies -------------------------------------------------------------------------------
TRADES_PATH = "/api/v3/brokerage/market/products/{product}/ticker"
CANDLES_PATH = "/api/v3/brokerage/market/products/{product}/candles"
_TRADES_PATH = re.compile(r"/api/v3/brokerage/market/products/([A-Z0-9]+-[A-Z0-9]+)/ticker")


def parse_rest(venue: str, url: str, body: str | bytes, ts_recv: int) -> list[Event]:
    """Public market-trades REST body (used to backfill missed trade ids) into trades.

    Same outcomes as ``parse_frame``; rows carry the maker ``side`` like the websocket does.
    """
    path = url.split("?", 1)[0]
    if not _TRADES_PATH.fullmatch(path):
        raise IgnoredFrame("rest_not_collected", path)
    msg = parse_envelope(body)
    trades = [_trade(venue, row, ts_recv) for row in _objects(msg, "trades")]
    trades.sort(key=_time_order)
    return [*trades]


def channel_name(raw: str | bytes) -> str | None:
    """The channel of a frame, read from its prefix without parsing (for liveness checks)."""
    head = raw[:60] if isinstance(raw, str) else raw[:60].decode("ascii", "replace")
    start = head.find('"channel":"')
    if start < 0:
        return None
    start += 11
    end = head.find('"', start)
    return head[start:end] if end > start else None


def parse_candles(body: str | bytes) -> Bars:
    """ONE_MINUTE candles, ``{"candles": [{"start": UNIX s, "close", "volume", ...}]}`` newest
    first. They carry no taker split (``taker_buy_quote`` is NaN) and base-currency volume, so
    the quote volume is estimated as volume x close."""
    open_ms: list[int] = []
    close: list[float] = []
    quote: list[float] = []
    for row in rest_rows(body, "candles", key="candles"):
        if not isinstance(row, dict):
            raise MalformedFrame("bad_candle", repr(row)[:80])
        start = row.get("start")
        if not isinstance(start, str) or not start.isdigit():
            raise MalformedFrame("bad_candle", f"start {start!r}")
        price = positive_number(row, "close")
        open_ms.append(int(start) * 1000)
        close.append(price)
        quote.append(non_negative_number(row, "volume") * price)
    return Bars.of(open_ms, close, quote, [math.nan] * len(close))
