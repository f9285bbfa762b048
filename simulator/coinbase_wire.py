"""Coinbase Advanced Trade wire formats of the simulator's ticks (pure: dicts and strings).

Shapes follow the recorded feed (tests/data/coinbase-*.tape): envelope ``{channel, client_id,
timestamp, sequence_num, events}``, envelope timestamps with 9 fractional digits, trade times
with trailing zeros trimmed, prices and sizes trimmed ("78005.2", "0.00609115"), ``side`` of a
market trade = the MAKER's side, level2 sides ``bid``/``offer`` with absolute quantities.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final

import orjson

from simulator.book_model import Level
from simulator.market import DepthTick, TradeTick, VenueSpec

Json = dict[str, Any]

CHANNELS = ("heartbeats", "market_trades", "ticker", "level2")
WIRE_CHANNEL = {"level2": "l2_data"}  # level2 is subscribed as level2, delivered as l2_data
EPOCH_TEXT = "1970-01-01T00:00:00Z"
# Book levels print the same prices and sizes over and over, and a second's clock text is
# asked for by every frame of that second: these texts are cached.
TEXT_CACHE: Final = 1 << 16


def _clock(ms: int) -> str:
    return _second_text(ms // 1000)


@lru_cache(maxsize=256)
def _second_text(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def rfc3339_ns(ns: int) -> str:
    """``2026-08-09T21:05:48.228568804Z``: what Coinbase stamps envelopes with."""
    return f"{_clock(ns // 1_000_000)}.{ns % 1_000_000_000:09d}Z"


def rfc3339_ms(ms: int) -> str:
    """A trade or book time, fraction trimmed as Coinbase prints it (``…42.5Z``, ``…42Z``)."""
    fraction = f"{ms % 1000:03d}".rstrip("0")
    return f"{_clock(ms)}.{fraction}Z" if fraction else f"{_clock(ms)}Z"


def go_time(ns: int, uptime_ns: int) -> str:
    """A heartbeat's ``current_time``: Go's ``time.Time.String()`` with its monotonic part."""
    stamp = datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp}.{ns % 1_000_000_000:09d} +0000 UTC m=+{uptime_ns / 1e9:.9f}"


def trimmed(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


@lru_cache(maxsize=TEXT_CACHE)
def _units_trimmed(units: int, exp: int, decimals: int) -> str:
    """``units`` of 10**-``exp`` (as ``BookSpec.price`` / ``qty`` convert them), trimmed."""
    return trimmed(round(units / 10**exp, exp), decimals)


def price_text(ticks: int, spec: VenueSpec) -> str:
    return _units_trimmed(ticks, spec.book.tick_exp, spec.price_decimals)


def qty_text(lots: int, spec: VenueSpec) -> str:
    return _units_trimmed(lots, spec.book.lot_exp, spec.qty_decimals)


def maker_side(tick: TradeTick) -> str:
    """The wire's ``side``: the maker's. The buyer rested exactly when the taker sold."""
    return "BUY" if tick.buyer_is_maker else "SELL"


def market_trade(tick: TradeTick, spec: VenueSpec) -> Json:
    return {
        "product_id": tick.symbol,
        "trade_id": str(tick.agg_id),
        "price": trimmed(tick.price, spec.price_decimals),
        "size": trimmed(tick.qty, spec.qty_decimals),
        "time": rfc3339_ms(tick.trade_ms),
        "side": maker_side(tick),
    }


def rest_trade(tick: TradeTick, spec: VenueSpec) -> Json:
    """A row of ``/market/products/{id}/ticker``: the stream's fields plus ``exchange``."""
    return {**market_trade(tick, spec), "exchange": "COINBASE"}


def level_updates(
    bids: list[Level] | tuple[Level, ...],
    asks: list[Level] | tuple[Level, ...],
    spec: VenueSpec,
    event_time: str,
) -> list[Json]:
    out = [
        {
            "side": "bid",
            "event_time": event_time,
            "price_level": price_text(p, spec),
            "new_quantity": qty_text(q, spec),
        }
        for p, q in bids
    ]
    out += [
        {
            "side": "offer",
            "event_time": event_time,
            "price_level": price_text(p, spec),
            "new_quantity": qty_text(q, spec),
        }
        for p, q in asks
    ]
    return out


def l2_event(kind: str, product: str, updates: list[Json]) -> Json:
    return {"type": kind, "product_id": product, "updates": updates}


def depth_event(tick: DepthTick, spec: VenueSpec) -> Json:
    updates = level_updates(tick.bids, tick.asks, spec, rfc3339_ms(tick.event_ms))
    return l2_event("update", tick.symbol, updates)


def ticker(
    product: str,
    price: str,
    bid: Level,
    ask: Level,
    spec: VenueSpec,
    stats: Json,
) -> Json:
    """One entry of a ticker event; ``stats`` holds the 24 h and 52 w figures."""
    return {
        "type": "ticker",
        "product_id": product,
        "price": price,
        **stats,
        "best_bid": price_text(bid[0], spec),
        "best_ask": price_text(ask[0], spec),
        "best_bid_quantity": qty_text(bid[1], spec),
        "best_ask_quantity": qty_text(ask[1], spec),
    }


def frame(channel: str, timestamp: str, sequence_num: int, events_raw: str) -> str:
    """The envelope around already encoded events (encoded once, shared by every socket)."""
    return (
        f'{{"channel":"{channel}","client_id":"","timestamp":"{timestamp}",'
        f'"sequence_num":{sequence_num},"events":{events_raw}}}'
    )


def error_frame(message: str) -> str:
    return dumps({"type": "error", "message": message})


def dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()
