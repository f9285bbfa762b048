"""Binance spot and USDⓈ-M wire formats of the simulator's ticks (pure: dicts and strings).

Prices and quantities are strings as Binance prints them: USDⓈ-M BTCUSDT "78000.10" and "0.013",
spot "78000.01000000" and "0.01524000". Spot payloads differ from USDⓈ-M ones where Binance's do:
spot ``aggTrade`` has ``M`` and no ``nq``; spot ``depthUpdate`` has no ``T``/``pu``; spot
``bookTicker`` has no ``e``/``E``/``T`` at all (``docs/exchange-protocols.md`` §1.4, §2.3).
"""

from __future__ import annotations

from collections.abc import Container
from functools import lru_cache
from typing import Any, Final

import orjson

from simulator.book_model import Level
from simulator.market import (
    DepthTick,
    LiquidationTick,
    MarkTick,
    QuoteTick,
    Tick,
    TradeTick,
    VenueSpec,
)
from streams.events import BINANCE_SPOT, BINANCE_USDM
from streams.units import SECOND_MS

Json = dict[str, Any]

MARK_3S_EVERY_MS = 3 * SECOND_MS  # ``<sym>@markPrice`` without ``@1s`` updates every 3 s
DEPTH_STREAM = "depth@100ms"
# Book levels print the same prices and sizes over and over: their texts are cached.
TEXT_CACHE: Final = 1 << 16

# Which socket family carries which venue's streams.
SPOT = "spot"  # /spot/...
MARKET = "market"  # USDⓈ-M /market/...
PUBLIC = "public"  # USDⓈ-M /public/... (and, for books only, the retired root paths)


def fixed(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


# Below this, a whole number of 10**-decimals converts to a float that is less than half of
# 10**-decimals off (an ulp of a float under 2**52 units is below one unit).
EXACT_UNITS: Final = 2**52


def decimal_text(units: int, exp: int, decimals: int) -> str:
    """``fixed(round(units / 10**exp, exp), decimals)``, written from the integer: the float is
    the decimal ``units`` × 10**-exp to within half an ulp, below half of 10**-decimals while
    the value in units of 10**-decimals stays under 2**52, so both roundings land on that
    decimal and the text is its digits. Twice as fast as the float round trip (``round`` to a
    number of digits alone costs as much as the whole text), which the book's sizes need: they
    are drawn afresh and rarely repeat. Outside that range, the float round trip itself."""
    if units < 0 or not 0 <= exp <= decimals or units * 10 ** (decimals - exp) >= EXACT_UNITS:
        return fixed(round(units / 10**exp, exp), decimals)
    if not exp:
        return f"{units}.{'0' * decimals}" if decimals else str(units)
    whole, part = divmod(units, 10**exp)
    return f"{whole}.{part:0{exp}d}{'0' * (decimals - exp)}"


@lru_cache(maxsize=TEXT_CACHE)
def units_text(units: int, exp: int, decimals: int) -> str:
    """``units`` of 10**-``exp`` (ticks or lots, as ``BookSpec.price`` / ``qty`` convert them)
    printed with ``decimals``."""
    return decimal_text(units, exp, decimals)


def price_text(ticks: int, spec: VenueSpec) -> str:
    return units_text(ticks, spec.book.tick_exp, spec.price_decimals)


def qty_text(lots: int, spec: VenueSpec) -> str:
    return units_text(lots, spec.book.lot_exp, spec.qty_decimals)


def _levels(levels: tuple[Level, ...] | list[Level], spec: VenueSpec) -> list[list[str]]:
    book = spec.book
    tick_exp, lot_exp = book.tick_exp, book.lot_exp
    price_dec, qty_dec = spec.price_decimals, spec.qty_decimals
    return [
        [units_text(p, tick_exp, price_dec), units_text(q, lot_exp, qty_dec)] for p, q in levels
    ]


class _Texts(dict[int, str]):
    """``units`` -> its text (``units_text``) between ``before`` and ``after``, computed once:
    a depth frame prints ~25 levels, and a dict lookup per level costs a fraction of an
    ``lru_cache`` call with three arguments. Bounded like the ``lru_cache`` (emptied when full:
    the levels near the touch come back at once).

    Sizes are drawn afresh and mostly print once, so callers write them from the integer
    inline (``decimal_text`` without the call) when ``0 < units < limit``: ``template %
    (units // div, units % div)``, a %-template being the cheapest way to print two integers;
    ``limit`` is 0 where that form does not apply."""

    __slots__ = ("after", "before", "decimals", "div", "exp", "limit", "template")

    def __init__(self, exp: int, decimals: int, before: str = "", after: str = "") -> None:
        super().__init__()
        self.exp, self.decimals, self.before, self.after = exp, decimals, before, after
        self.div = 10**exp
        inline = 0 < exp <= decimals
        self.limit = EXACT_UNITS // 10 ** (decimals - exp) if inline else 0
        tail = "0" * (decimals - exp) + after.replace("%", "%%")
        self.template = f"%d.%0{exp}d{tail}" if inline else ""

    def __missing__(self, units: int) -> str:
        if len(self) >= TEXT_CACHE:
            self.clear()
        text = f"{self.before}{decimal_text(units, self.exp, self.decimals)}{self.after}"
        self[units] = text
        return text


# (tick exp, price decimals, lot exp, qty decimals) -> the texts of a level's two halves
_LEVEL_TEXTS: dict[tuple[int, int, int, int], tuple[_Texts, _Texts]] = {}


def _level_texts(spec: VenueSpec) -> tuple[_Texts, _Texts]:
    """Texts of a level's price as ``["<price>","`` and of its size as ``<qty>"]``, so that a
    level is one concatenation."""
    book = spec.book
    key = (book.tick_exp, spec.price_decimals, book.lot_exp, spec.qty_decimals)
    texts = _LEVEL_TEXTS.get(key)
    if texts is None:
        texts = _LEVEL_TEXTS[key] = (
            _Texts(book.tick_exp, spec.price_decimals, '["', '","'),
            _Texts(book.lot_exp, spec.qty_decimals, "", '"]'),
        )
    return texts


@lru_cache(maxsize=1024)
def json_text(text: str) -> str:
    """``text`` as a JSON string, quotes included (symbols and stream names, over and over)."""
    return dumps(text)


# -- streams ----------------------------------------------------------------------------------
def agg_trade_payload(tick: TradeTick, spec: VenueSpec) -> Json:
    """``aggTrade``: USDⓈ-M carries ``nq`` (quantity without RPI orders), spot carries ``M``."""
    qty = fixed(tick.qty, spec.qty_decimals)
    payload: Json = {
        "e": "aggTrade",
        "E": tick.event_ms,
        "s": tick.symbol,
        "a": tick.agg_id,
        "p": fixed(tick.price, spec.price_decimals),
        "q": qty,
    }
    if tick.venue == BINANCE_USDM:
        payload["nq"] = qty  # no RPI orders in the simulator, so all of q is "normal"
    payload.update(
        {"f": tick.first_id, "l": tick.last_id, "T": tick.trade_ms, "m": tick.buyer_is_maker}
    )
    if tick.venue == BINANCE_SPOT:
        payload["M"] = True
    return payload


def trade_payloads(tick: TradeTick, spec: VenueSpec) -> list[Json]:
    """Spot ``@trade``: one frame per fill ``f``..``l`` of the aggregate, its quantity split
    in whole lots (the first fill takes the remainder)."""
    fills = tick.last_id - tick.first_id + 1
    lots = round(tick.qty * 10**spec.book.lot_exp)
    share, extra = divmod(lots, fills)
    price = fixed(tick.price, spec.price_decimals)
    return [
        {
            "e": "trade",
            "E": tick.event_ms,
            "s": tick.symbol,
            "t": tick.first_id + i,
            "p": price,
            "q": qty_text(share + (extra if i == 0 else 0), spec),
            "T": tick.trade_ms,
            "m": tick.buyer_is_maker,
            "M": True,
        }
        for i in range(fills)
    ]


def trade_payload(tick: TradeTick, spec: VenueSpec) -> Json:
    """The ``aggTrade`` payload (kept under its first name for existing callers)."""
    return agg_trade_payload(tick, spec)


def mark_payload(tick: MarkTick) -> Json:
    """The ``markPriceUpdate`` payload (Binance prints these with 8 decimals)."""
    index = fixed(tick.index_price, 8)
    return {
        "e": "markPriceUpdate",
        "E": tick.event_ms,
        "s": tick.symbol,
        "p": fixed(tick.mark_price, 8),
        "ap": fixed(tick.mark_avg, 8),
        "i": index,
        "P": index,  # estimated settle price: only meaningful before settlement; track index
        "r": fixed(tick.funding_rate, 8),
        "T": tick.next_funding_ms,
    }


def force_order_payload(tick: LiquidationTick, spec: VenueSpec) -> Json:
    qty = fixed(tick.qty, spec.qty_decimals)
    return {
        "e": "forceOrder",
        "E": tick.event_ms,
        "o": {
            "s": tick.symbol,
            "S": tick.side,
            "o": "LIMIT",
            "f": "IOC",
            "q": qty,
            "p": fixed(tick.price, spec.price_decimals),
            "ap": fixed(tick.avg_price, spec.price_decimals),
            "X": "FILLED",
            "l": qty,
            "z": qty,
            "T": tick.event_ms,
        },
    }


def depth_payload(tick: DepthTick, spec: VenueSpec) -> Json:
    if tick.venue == BINANCE_SPOT:
        return {
            "e": "depthUpdate",
            "E": tick.event_ms,
            "s": tick.symbol,
            "U": tick.first_id,
            "u": tick.last_id,
            "b": _levels(tick.bids, spec),
            "a": _levels(tick.asks, spec),
        }
    return {
        "e": "depthUpdate",
        "E": tick.event_ms,
        "T": tick.event_ms,
        "s": tick.symbol,
        "U": tick.first_id,
        "u": tick.last_id,
        "pu": tick.prev_last_id,
        "b": _levels(tick.bids, spec),
        "a": _levels(tick.asks, spec),
    }


def book_ticker_payload(tick: QuoteTick, spec: VenueSpec) -> Json:
    top = {
        "s": tick.symbol,
        "b": price_text(tick.bid[0], spec),
        "B": qty_text(tick.bid[1], spec),
        "a": price_text(tick.ask[0], spec),
        "A": qty_text(tick.ask[1], spec),
    }
    if tick.venue == BINANCE_SPOT:
        return {"u": tick.update_id, **top}
    return {"e": "bookTicker", "u": tick.update_id, "E": tick.event_ms, "T": tick.event_ms, **top}


# -- the frames' texts -----------------------------------------------------------------------
# The frames the simulator sends most, written straight to text: byte for byte what ``dumps``
# makes of the payloads above (same keys, same order, no spaces), without building the dicts
# and lists first. Prices, sizes and symbols are plain text that needs no JSON escaping.
def agg_trade_text(tick: TradeTick, spec: VenueSpec) -> str:
    """``dumps(agg_trade_payload(tick, spec))``."""
    qty = fixed(tick.qty, spec.qty_decimals)
    nq = f',"nq":"{qty}"' if tick.venue == BINANCE_USDM else ""
    spot = ',"M":true' if tick.venue == BINANCE_SPOT else ""
    return (
        f'{{"e":"aggTrade","E":{tick.event_ms},"s":{json_text(tick.symbol)},"a":{tick.agg_id},'
        f'"p":"{fixed(tick.price, spec.price_decimals)}","q":"{qty}"{nq},"f":{tick.first_id},'
        f'"l":{tick.last_id},"T":{tick.trade_ms},"m":{"true" if tick.buyer_is_maker else "false"}'
        f"{spot}}}"
    )


def depth_text(tick: DepthTick, spec: VenueSpec) -> str:
    """``dumps(depth_payload(tick, spec))``."""
    prices, sizes = _level_texts(spec)
    div, limit, template = sizes.div, sizes.limit, sizes.template
    # A size is written inline; a removal (0, a third of the levels) comes from the cache.
    bids = ",".join(
        [
            prices[p] + (template % (q // div, q % div) if 0 < q < limit else sizes[q])
            for p, q in tick.bids
        ]
    )
    asks = ",".join(
        [
            prices[p] + (template % (q // div, q % div) if 0 < q < limit else sizes[q])
            for p, q in tick.asks
        ]
    )
    head = f'{{"e":"depthUpdate","E":{tick.event_ms},'
    if tick.venue != BINANCE_SPOT:
        head += f'"T":{tick.event_ms},'
    head += f'"s":{json_text(tick.symbol)},"U":{tick.first_id},"u":{tick.last_id},'
    if tick.venue != BINANCE_SPOT:
        head += f'"pu":{tick.prev_last_id},'
    return f'{head}"b":[{bids}],"a":[{asks}]}}'


class _Everything:
    def __contains__(self, _: object) -> bool:
        return True


EVERY_STREAM: Final = _Everything()


def tick_frames(
    tick: Tick, spec: VenueSpec | None, wanted: Container[str] = EVERY_STREAM
) -> list[tuple[str, str, str]]:
    """``(socket family, stream name, encoded payload)`` of every frame that carries ``tick``
    on Binance, of the streams in ``wanted`` (encoding is most of the cost: a spot aggregate's
    ``@trade`` fills are built only when someone reads them); empty for Coinbase ticks."""
    if isinstance(tick, MarkTick):
        base = tick.symbol.lower()
        streams = [f"{base}@markPrice@1s"]
        if tick.event_ms % MARK_3S_EVERY_MS == 0:
            streams.append(f"{base}@markPrice")
        streams = [s for s in streams if s in wanted]
        raw = dumps(mark_payload(tick)) if streams else ""
        return [(MARKET, s, raw) for s in streams]
    assert spec is not None
    family, stream, fills = _streams_of(type(tick), getattr(tick, "venue", None), tick.symbol)
    if not stream:
        return []
    out = []
    if stream in wanted:
        out.append((family, stream, _text(tick, spec)))
    if fills and fills in wanted:
        assert isinstance(tick, TradeTick)
        out += [(family, fills, dumps(p)) for p in trade_payloads(tick, spec)]
    return out


@lru_cache(maxsize=1024)
def _streams_of(kind: type, venue: str | None, symbol: str) -> tuple[str, str, str]:
    """``(family, stream, @trade stream)`` of a tick of type ``kind`` on ``venue``: the stream
    of its main frame ("" for a Coinbase tick) and, for a spot trade, that of its fills ("")."""
    base = symbol.lower()
    family, stream = _family_and_stream(kind, venue, base)
    fills = f"{base}@trade" if issubclass(kind, TradeTick) and family == SPOT else ""
    return family, stream, fills


def _text(tick: Tick, spec: VenueSpec) -> str:
    if isinstance(tick, DepthTick):
        return depth_text(tick, spec)
    if isinstance(tick, TradeTick):
        return agg_trade_text(tick, spec)
    return dumps(_payload(tick, spec))


def _family_and_stream(kind: type, venue: str | None, base: str) -> tuple[str, str]:
    """The socket family and stream of a tick's main frame ("" for a Coinbase tick)."""
    if issubclass(kind, LiquidationTick):
        return MARKET, f"{base}@forceOrder"
    if venue == BINANCE_USDM:
        family = MARKET if issubclass(kind, TradeTick) else PUBLIC
    elif venue == BINANCE_SPOT:
        family = SPOT
    else:
        return "", ""
    if issubclass(kind, TradeTick):
        return family, f"{base}@aggTrade"
    if issubclass(kind, DepthTick):
        return family, f"{base}@{DEPTH_STREAM}"
    return family, f"{base}@bookTicker"


def _payload(tick: Tick, spec: VenueSpec) -> Json:
    if isinstance(tick, LiquidationTick):
        return force_order_payload(tick, spec)
    if isinstance(tick, TradeTick):
        return agg_trade_payload(tick, spec)
    if isinstance(tick, DepthTick):
        return depth_payload(tick, spec)
    assert isinstance(tick, QuoteTick)
    return book_ticker_payload(tick, spec)


def envelope(stream: str, raw: str) -> str:
    """Combined-mode frame around an already encoded payload (no second JSON encode)."""
    return f'{{"stream":{json_text(stream)},"data":{raw}}}'


def dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()


# -- REST bodies --------------------------------------------------------------------------------
def depth_snapshot(
    venue: str,
    last_update_id: int,
    bids: list[Level],
    asks: list[Level],
    spec: VenueSpec,
    now_ms: int,
) -> Json:
    """``/api/v3/depth`` (spot) or ``/fapi/v1/depth`` (USDⓈ-M, which adds E and T)."""
    body: Json = {"lastUpdateId": last_update_id}
    if venue == BINANCE_USDM:
        body.update({"E": now_ms, "T": now_ms})
    body.update({"bids": _levels(bids, spec), "asks": _levels(asks, spec)})
    return body


def agg_trade_row(tick: TradeTick, spec: VenueSpec) -> Json:
    """One row of ``aggTrades``: spot rows carry ``M``, USDⓈ-M rows do not."""
    row: Json = {
        "a": tick.agg_id,
        "p": fixed(tick.price, spec.price_decimals),
        "q": fixed(tick.qty, spec.qty_decimals),
        "f": tick.first_id,
        "l": tick.last_id,
        "T": tick.trade_ms,
        "m": tick.buyer_is_maker,
    }
    if tick.venue == BINANCE_SPOT:
        row["M"] = True
    return row


# -- malformed frames (fault injection) -------------------------------------------------------
MALFORMED_KINDS = (
    "not_json",
    "missing_field",
    "wrong_type_price",
    "wrong_type_flag",
    "nan_price",
    "negative_price",
    "unknown_event",
)


def malformed_frame(kind: str, symbol: str, price: str, now_ms: int, combined: bool) -> str:
    """One deliberately broken ``aggTrade``-shaped frame of ``kind`` (see ``MALFORMED_KINDS``)."""
    if kind == "not_json":
        return "{not json"  # cannot be wrapped: the whole frame is broken
    stream = f"{symbol.lower()}@aggTrade"
    payload: Json = {
        "e": "aggTrade",
        "E": now_ms,
        "s": symbol,
        "a": 0,
        "p": price,
        "q": "0.001",
        "nq": "0.001",
        "f": 0,
        "l": 0,
        "T": now_ms,
        "m": False,
    }
    if kind == "missing_field":
        del payload["p"]
    elif kind == "wrong_type_price":
        payload["p"] = [1]
    elif kind == "wrong_type_flag":
        payload["m"] = "yes"
    elif kind == "nan_price":
        payload["p"] = "NaN"
    elif kind == "negative_price":
        payload["p"] = "-5"
    elif kind == "unknown_event":
        stream = f"{symbol.lower()}@mysteryStream"
        payload = {"e": "mysteryUpdate", "E": now_ms, "s": symbol, "x": "?"}
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    raw = dumps(payload)
    return envelope(stream, raw) if combined else raw
