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

``l2_data`` and ``market_trades`` frames, nearly all the work, first try ``decode_fast``
(msgspec in C, prices and sizes checked as they are read), which gives the same events and the
frame's ``sequence_num`` for ``tracker.observe_number``, or None for anything it does not take
exactly as the strict path would; those go the strict way above (``CoinbaseDecoder``).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any, TypeVar

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
    Heartbeat,
    Level,
    Trade,
)
from streams.frames import (
    IgnoredFrame,
    LevelSize,
    MalformedFrame,
    Price,
    Size,
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
        return self.observe_number(msg.get("sequence_num"))

    def observe_number(self, seq: object) -> int | None:
        """``observe`` for a frame already decoded elsewhere (the fast path): ``seq`` is its
        ``sequence_num`` as ``parse_envelope`` would give it (None when absent)."""
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


# -- fast path: l2_data and market_trades decoded by msgspec in C -------------------------------
# Nearly all the work is these two channels (a level2 snapshot holds up to ~46,000 levels).
# msgspec decodes them into typed fields in "lax" mode (price and size strings become floats in
# C, checked against the bounds below as they are read); anything it does not take exactly as
# the strict parser would goes the strict way (orjson + ``events_from``), which names the fault.
# So the fast path only ever says yes: a frame it takes gives what the strict path gives, and
# any doubt is a fallback, never an outcome of its own.

# Prices and sizes are ``frames.Price``/``Size``/``LevelSize``. Lax mode reads only JSON-number
# syntax from a string ("1e5" but not " 1", "1_0", "0x1" or "٣"), all of which float() reads the
# same, correctly rounded; "-0" reads as 0.0 here and -0.0 through float(): equal, and either
# removes the level.
# The integers orjson returns as int; larger ones it returns as float (which the tracker
# ignores), while msgspec would give an int.
_JSON_INT_MIN, _JSON_INT_MAX = -(2**63), 2**64 - 1


# gc=False on every struct below: what JSON decodes into holds no reference cycles, and not
# tracking up to 46,000 level objects spares the collector (a cheaper allocation, too).
#
# A level's side is a tag: msgspec picks the class in C, so the per-level loop tests a class
# instead of looking a string up. A side not listed fails the decode (the strict path names
# it), and so does a repeated "side" key (orjson would keep the last one).
class _Level(msgspec.Struct, tag_field="side", gc=False):
    event_time: str
    price_level: Price
    new_quantity: LevelSize


class _Bid(_Level, tag="bid"):
    pass


class _Offer(_Level, tag="offer"):
    pass


class _Ask(_Level, tag="ask"):  # documented; the recording says "offer"
    pass


class _BookEvent(msgspec.Struct, gc=False):
    type: str
    product_id: str
    updates: list[_Bid | _Offer | _Ask]


class _BookFrame(msgspec.Struct, gc=False):
    channel: str
    events: list[_BookEvent]
    # Any: exactly the JSON value, with no lax conversion ("7" stays a string, as orjson has it).
    sequence_num: Any = None
    timestamp: Any = None  # read only for a snapshot without a real event_time


class _MarketTrade(msgspec.Struct, gc=False):
    product_id: str
    trade_id: str
    price: Price
    size: Size
    time: str
    side: str


class _TradesEvent(msgspec.Struct, gc=False):
    trades: list[_MarketTrade]


class _TradesFrame(msgspec.Struct, gc=False):
    channel: str
    events: list[_TradesEvent]
    sequence_num: Any = None


_BOOK_DECODER = msgspec.json.Decoder(_BookFrame, strict=False)
_TRADES_DECODER = msgspec.json.Decoder(_TradesFrame, strict=False)
# What msgspec may raise on input orjson also rejects: malformed JSON or a failed check
# (MsgspecError), a str holding a lone surrogate (UnicodeEncodeError), deep nesting.
_DECODE_ERRORS = (msgspec.MsgspecError, ValueError, RecursionError)


def decode_fast(venue: str, raw: str | bytes, ts_recv: int) -> tuple[object, list[Event]] | None:
    """``(sequence_num, events)`` of an ``l2_data`` or ``market_trades`` frame, decoded in C;
    None for any other frame or anything odd, which the caller sends the strict way
    (``parse_envelope``, ``SequenceTracker.observe``, ``events_from``).

    When it answers, the events equal ``events_from``'s and ``sequence_num`` is what the
    strict path's dict holds (None when absent), for the tracker's ``observe_number``. Frames
    with no events (IgnoredFrame on the strict path) are left to the strict path too.
    """
    if raw.__class__ is str:
        head = raw
    elif raw.__class__ is bytes and raw.isascii():
        # msgspec does not check the UTF-8 of strings it skips, orjson does: bytes are taken
        # here only when ASCII (real frames are; isascii is a fast C scan).
        head = raw[:32].decode("ascii")
    else:
        return None
    try:
        # Coinbase puts the channel first; a frame that does not goes the strict way.
        if head.startswith('{"channel":"l2_data"'):
            book = _BOOK_DECODER.decode(raw)
            if book.channel != "l2_data":  # a repeated key: the last one counts
                return None
            seq, events = book.sequence_num, _fast_book(venue, book, ts_recv)
        elif head.startswith('{"channel":"market_trades"'):
            frame = _TRADES_DECODER.decode(raw)
            if frame.channel != "market_trades":
                return None
            seq, events = frame.sequence_num, _fast_trades(venue, frame, ts_recv)
        else:
            return None
    except _DECODE_ERRORS:
        return None
    if events is None:
        return None
    if type(seq) is int and not _JSON_INT_MIN <= seq <= _JSON_INT_MAX:
        seq = None  # orjson reads it as a float: not a number the tracker counts
    return seq, events


def _fast_book(venue: str, frame: _BookFrame, ts_recv: int) -> list[Event] | None:
    """``_book`` on decoded structs: same events, or None wherever ``_book`` would raise."""
    out: list[Event] = []
    for event in frame.events:
        kind, symbol = event.type, event.product_id
        if (kind != "snapshot" and kind != "update") or not symbol:
            return None
        bids: list[tuple[float, float]] = []
        asks: list[tuple[float, float]] = []
        add_bid, add_ask, bid = bids.append, asks.append, _Bid  # locals: up to 46,000 turns
        newest = 0
        # Levels of one batch share their event_time (all 46,000 of a snapshot): parse it once.
        last_text: str | None = None  # not "": an empty event_time must be parsed (and fail)
        for u in event.updates:
            text = u.event_time
            if text != last_text:
                ms = _wire_ms(text)
                if ms is None:
                    return None
                last_text = text
                if ms > newest:
                    newest = ms
            # The class is the side, chosen by msgspec; a tuple display beats attrgetter here.
            if u.__class__ is bid:
                add_bid((u.price_level, u.new_quantity))
            else:
                add_ask((u.price_level, u.new_quantity))
        if kind == "snapshot":
            if newest > 0:  # else the documented 1970 placeholder: the send time stands in
                ts_event = newest
            else:
                sent = frame.timestamp
                if sent.__class__ is not str or (ts := _wire_ms(sent)) is None:
                    return None
                ts_event = ts
            out.append(DepthSnapshot(venue, symbol, ts_event, ts_recv, None, (*bids,), (*asks,)))
        elif bids or asks:
            out.append(
                DepthDiff(venue, symbol, newest, ts_recv, None, None, None, (*bids,), (*asks,))
            )
    return out or None


def _fast_trades(venue: str, frame: _TradesFrame, ts_recv: int) -> list[Event] | None:
    """``_trades`` on decoded structs: same events, or None wherever ``_trades`` would raise."""
    trades: list[Trade] = []
    for event in frame.events:
        for t in event.trades:
            taker = _TAKER_SIDE.get(t.side)
            raw_id, symbol = t.trade_id, t.product_id
            if (
                taker is None
                or not symbol
                or not (raw_id.isascii() and raw_id.isdigit())
                or len(raw_id) > _INT64_DIGITS
            ):
                return None
            ts = _wire_ms(t.time)
            if ts is None:
                return None
            trades.append(Trade(venue, symbol, ts, ts_recv, t.price, t.size, taker, int(raw_id)))
    if not trades:
        return None
    trades.sort(key=_time_order)
    return trades


# Milliseconds at the start of each second seen, keyed by the time's first 19 characters
# ("2026-08-09T21:05:48"): a feed sees a few new seconds a second, so this is a dict lookup
# instead of a regex match and the calendar maths. Emptied when full.
_SECOND_MS: dict[str, int] = {}
_SECOND_MS_MAX = 4096


def _wire_ms(text: str) -> int | None:
    """``_time_ms`` of a time string, or None where ``_time_ms`` would raise.

    Coinbase's own shape, ``YYYY-MM-DDTHH:MM:SS.digitsZ``, in a second already seen is the
    cached second plus its fraction; anything else (a new second, no fraction, an offset, a
    bad time) takes ``rfc3339_ms``, which fills the cache.
    """
    base = _SECOND_MS.get(text[:19])
    if base is not None and text[19:20] == "." and text[-1:] == "Z":
        frac = text[20:-1]
        # ASCII digits only: str.isdigit alone would take "²" or "٣", which the regex refuses.
        if frac.isdigit() and frac.isascii():
            return base + int(frac[:3] if len(frac) > 2 else frac.ljust(3, "0"))
    try:
        ms = rfc3339_ms(text)
    except ValueError:
        return None
    second = text[:19]
    if second not in _SECOND_MS:
        if len(_SECOND_MS) >= _SECOND_MS_MAX:
            _SECOND_MS.clear()
        # The regex's date and time part is exactly these 19 characters, valid since the whole
        # text matched: the second on its own reads as the same day and time, at .000Z.
        _SECOND_MS[second] = rfc3339_ms(second + "Z")
    return ms


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
