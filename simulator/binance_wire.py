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


@lru_cache(maxsize=TEXT_CACHE)
def units_text(units: int, exp: int, decimals: int) -> str:
    """``units`` of 10**-``exp`` (ticks or lots, as ``BookSpec.price`` / ``qty`` convert them)
    printed with ``decimals``."""
    return fixed(round(units / 10**exp, exp), decimals)


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
    base = tick.symbol.lower()
    if isinstance(tick, MarkTick):
        streams = [f"{base}@markPrice@1s"]
        if tick.event_ms % MARK_3S_EVERY_MS == 0:
            streams.append(f"{base}@markPrice")
        streams = [s for s in streams if s in wanted]
        raw = dumps(mark_payload(tick)) if streams else ""
        return [(MARKET, s, raw) for s in streams]
    assert spec is not None
    family, stream = _family_and_stream(tick, base)
    if not stream:
        return []
    out = []
    if stream in wanted:
        out.append((family, stream, dumps(_payload(tick, spec))))
    if isinstance(tick, TradeTick) and family == SPOT and f"{base}@trade" in wanted:
        out += [(family, f"{base}@trade", dumps(p)) for p in trade_payloads(tick, spec)]
    return out


def _family_and_stream(tick: Tick, base: str) -> tuple[str, str]:
    """The socket family and stream of a tick's main frame ("" for a Coinbase tick)."""
    if isinstance(tick, LiquidationTick):
        return MARKET, f"{base}@forceOrder"
    venue = getattr(tick, "venue", None)
    if venue == BINANCE_USDM:
        family = MARKET if isinstance(tick, TradeTick) else PUBLIC
    elif venue == BINANCE_SPOT:
        family = SPOT
    else:
        return "", ""
    if isinstance(tick, TradeTick):
        return family, f"{base}@aggTrade"
    if isinstance(tick, DepthTick):
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
    return f'{{"stream":{orjson.dumps(stream).decode()},"data":{raw}}}'


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
