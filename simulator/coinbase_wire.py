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

from simulator.binance_wire import EXACT_UNITS, decimal_text
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
    """``units`` of 10**-``exp`` (as ``BookSpec.price`` / ``qty`` convert them), trimmed:
    ``trimmed(round(units / 10**exp, exp), decimals)``, from the integer (``decimal_text``)."""
    text = decimal_text(units, exp, decimals)
    return text.rstrip("0").rstrip(".") if "." in text else text


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


class _Trimmed(dict[int, str]):
    """``units`` -> its trimmed text (``price_text`` / ``qty_text``) followed by ``after``,
    computed once: a level2 update prints ~25 levels, and a dict lookup per level costs a
    fraction of an ``lru_cache`` call with three arguments. Emptied when full, like that cache.

    Sizes are drawn afresh and mostly print once, so callers write them from the integer
    inline when ``0 < units < limit``: ``template % (units // div, units % div)``, then
    trimmed (``decimal_text`` without the call); ``limit`` is 0 where that form does not
    apply."""

    __slots__ = ("after", "decimals", "div", "exp", "limit", "template")

    def __init__(self, exp: int, decimals: int, after: str) -> None:
        super().__init__()
        self.exp, self.decimals, self.after = exp, decimals, after
        self.div = 10**exp
        self.limit = EXACT_UNITS // 10 ** (decimals - exp) if 0 < exp <= decimals else 0
        self.template = f"%d.%0{exp}d" if self.limit else ""

    def __missing__(self, units: int) -> str:
        if len(self) >= TEXT_CACHE:
            self.clear()
        text = decimal_text(units, self.exp, self.decimals)
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        self[units] = text = text + self.after
        return text


# (tick exp, price decimals, lot exp, qty decimals) -> the texts of an update's price and size
_UPDATE_TEXTS: dict[tuple[int, int, int, int], tuple[_Trimmed, _Trimmed]] = {}


def _update_texts(spec: VenueSpec) -> tuple[_Trimmed, _Trimmed]:
    book = spec.book
    key = (book.tick_exp, spec.price_decimals, book.lot_exp, spec.qty_decimals)
    texts = _UPDATE_TEXTS.get(key)
    if texts is None:
        texts = _UPDATE_TEXTS[key] = (
            _Trimmed(book.tick_exp, spec.price_decimals, '","new_quantity":"'),
            _Trimmed(book.lot_exp, spec.qty_decimals, '"}'),
        )
    return texts


def depth_events_text(tick: DepthTick, spec: VenueSpec) -> str:
    """``dumps([depth_event(tick, spec)])``, byte for byte, written straight to text (same
    keys, same order, no spaces) without building a dict per level first. Prices, sizes,
    times and product ids are plain text that needs no JSON escaping."""
    prices, sizes = _update_texts(spec)
    div, limit, template = sizes.div, sizes.limit, sizes.template
    at = rfc3339_ms(tick.event_ms)
    updates = []
    for side, levels in (("bid", tick.bids), ("offer", tick.asks)):
        head = f'{{"side":"{side}","event_time":"{at}","price_level":"'
        updates += [
            head
            + prices[p]
            + (
                (template % (q // div, q % div)).rstrip("0").rstrip(".") + '"}'
                if 0 < q < limit
                else sizes[q]
            )
            for p, q in levels
        ]
    product = orjson.dumps(tick.symbol).decode()
    return f'[{{"type":"update","product_id":{product},"updates":[{",".join(updates)}]}}]'


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
