"""Coinbase Advanced Trade market-data feed: what each channel carries, and one connection's
protocol state (pure: no I/O; the server passes event times in and writes the frames out).

Protocol (Coinbase Advanced Trade's documented feed, ``docs/exchange-protocols.md`` §4.1, and the
recorded feed in tests/data):

- a client subscribes with ``{"type":"subscribe","product_ids":[...],"channel":"..."}``, one
  channel per message; it gets each product's snapshot (``market_trades``: recent trades newest
  first; ``level2``: the whole book; ``ticker``) and then a ``subscriptions`` frame listing
  everything it is subscribed to;
- ``market_trades`` batches the trades of each 250 ms of event time per product, newest first;
  ``side`` is the maker's; ``trade_id`` is a string of digits, +1 per trade per product;
- ``level2`` arrives on channel ``l2_data``: the snapshot, then one ``update`` per book step with
  absolute quantities (sides ``bid``/``offer``);
- ``ticker`` carries the last price and the best bid/ask after every book step that moved them;
- ``heartbeats`` ticks once per second of event time with an integer ``heartbeat_counter``;
- ``sequence_num`` is ONE counter per connection over all channels, starting at 0.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from simulator import coinbase_wire as wire
from simulator.faults import DUPLICATE, REORDER, SKIP_DEPTH, count
from simulator.market import DepthTick, QuoteTick, TradeTick, VenueSpec
from simulator.published import PublishedBook, TradeRing
from streams.events import COINBASE
from streams.units import DAY_MS, SECOND_MS

BATCH_MS: Final = 250
SNAPSHOT_TRADES: Final = 50
RING_TRADES: Final = 10_000
HEARTBEATS: Final = "heartbeats"
Json = dict[str, Any]


class ProtocolError(Exception):
    """A client message the feed refuses; the text goes back in an error frame."""


@dataclass(slots=True)
class _Stats:
    """24 h figures for the ticker: synthetic history plus what traded since the start."""

    open_price: float
    low: float
    high: float
    volume: float
    last: str


class CoinbaseFeed:
    """Market state of every Coinbase product, turned into encoded channel events."""

    def __init__(self, specs: dict[str, VenueSpec], books: dict[str, PublishedBook]) -> None:
        self.specs = specs
        self.books = books
        self.rings = {product: TradeRing(RING_TRADES) for product in specs}
        self._stats: dict[str, _Stats] = {}
        for product, spec in specs.items():
            (bid, _), (ask, _) = books[product].best()
            mid = spec.book.price((bid + ask) // 2)
            last = wire.trimmed(mid, spec.price_decimals)
            # A day's volume of the product before the simulation, so the figure looks real.
            day_volume = spec.trades_per_s * (DAY_MS / SECOND_MS) * spec.median_qty * 1.5
            self._stats[product] = _Stats(mid, mid * 0.99, mid * 1.01, day_volume, last)
        self._batch: dict[str, list[TradeTick]] = {}
        self._batch_end: dict[str, int] = {}

    @property
    def products(self) -> list[str]:
        return list(self.specs)

    # -- market events ------------------------------------------------------------------------
    def on_trade(self, tick: TradeTick) -> None:
        self.rings[tick.symbol].append(tick)
        stats = self._stats[tick.symbol]
        stats.volume += tick.qty
        stats.low = min(stats.low, tick.price)
        stats.high = max(stats.high, tick.price)
        stats.last = wire.trimmed(tick.price, self.specs[tick.symbol].price_decimals)
        end = (tick.event_ms // BATCH_MS + 1) * BATCH_MS
        self._batch.setdefault(tick.symbol, []).append(tick)
        self._batch_end.setdefault(tick.symbol, end)

    def due_batches(self, now_ms: int) -> list[tuple[str, int, str]]:
        """``(product, batch end ms, encoded events)`` of every batch whose 250 ms are over."""
        out = []
        for product, end in list(self._batch_end.items()):
            if end > now_ms:
                continue
            trades = self._batch.pop(product)
            del self._batch_end[product]
            spec = self.specs[product]
            rows = [wire.market_trade(t, spec) for t in reversed(trades)]  # newest first
            out.append((product, end, wire.dumps([{"type": "update", "trades": rows}])))
        return out

    def next_batch_end(self) -> int | None:
        return min(self._batch_end.values(), default=None)

    def on_depth(self, tick: DepthTick) -> str:
        """Encoded ``l2_data`` update events (the caller has applied ``tick`` to the book)."""
        return wire.depth_events_text(tick, self.specs[tick.symbol])

    def on_quote(self, tick: QuoteTick) -> str:
        return wire.dumps([{"type": "update", "tickers": [self._ticker(tick.symbol)]}])

    # -- snapshots ------------------------------------------------------------------------------
    def snapshot(self, channel: str, product: str) -> tuple[str, str]:
        """``(wire channel, encoded events)`` sent when ``product`` is subscribed on ``channel``."""
        spec = self.specs[product]
        if channel == "market_trades":
            recent = self.rings[product].latest(SNAPSHOT_TRADES)
            rows = [wire.market_trade(t, spec) for t in reversed(recent)]
            return channel, wire.dumps([{"type": "snapshot", "trades": rows}])
        if channel == "level2":
            book = self.books[product]
            bids, asks = book.top()
            updates = wire.level_updates(bids, asks, spec, wire.rfc3339_ms(book.event_ms))
            return "l2_data", wire.dumps([wire.l2_event("snapshot", product, updates)])
        if channel == "ticker":
            return channel, wire.dumps([{"type": "snapshot", "tickers": [self._ticker(product)]}])
        raise ValueError(f"no snapshot on {channel!r}")

    def _ticker(self, product: str) -> Json:
        spec = self.specs[product]
        stats = self._stats[product]
        bid, ask = self.books[product].best()
        last = float(stats.last)
        figures = {
            "volume_24_h": wire.trimmed(stats.volume, 8),
            "low_24_h": wire.trimmed(stats.low, spec.price_decimals),
            "high_24_h": wire.trimmed(stats.high, spec.price_decimals),
            "low_52_w": wire.trimmed(stats.open_price * 0.6, spec.price_decimals),
            "high_52_w": wire.trimmed(stats.open_price * 1.6, spec.price_decimals),
            "price_percent_chg_24_h": f"{(last / stats.open_price - 1) * 100:.14f}",
        }
        return wire.ticker(product, stats.last, bid, ask, spec, figures)

    # -- REST -----------------------------------------------------------------------------------
    def rest_ticker(self, product: str, limit: int) -> Json:
        """``GET /api/v3/brokerage/market/products/{product}/ticker?limit=N``."""
        spec = self.specs[product]
        trades = self.rings[product].latest(limit)
        bid, ask = self.books[product].best()
        return {
            "trades": [wire.rest_trade(t, spec) for t in reversed(trades)],
            "best_bid": wire.price_text(bid[0], spec),
            "best_ask": wire.price_text(ask[0], spec),
        }


@dataclass(eq=False, slots=True)
class Outgoing:
    """A frame for one connection; ``fault`` names a wire fault it carries (for counting)."""

    text: str
    fault: str | None = None


@dataclass(eq=False)
class CoinbaseSession:
    """One connection: subscriptions, its ``sequence_num`` counter, its heartbeat counter and
    the faults armed on it."""

    products: frozenset[str]
    counts: Counter[str]
    fault_product: str = ""
    subscriptions: dict[str, list[str]] = field(default_factory=dict)
    seq: int = 0
    heartbeat_counter: int = 0
    subscribed: bool = False  # a valid subscribe arrived (the 5 s rule)
    armed: set[str] = field(default_factory=set)
    _held: str | None = None  # a reordered market_trades frame, sent after the next one

    def wants(self, channel: str, product: str) -> bool:
        return product in self.subscriptions.get(channel, ())

    def frame(self, channel: str, timestamp: str, events_raw: str) -> str:
        seq = self.seq
        self.seq += 1
        return wire.frame(channel, timestamp, seq, events_raw)

    # -- client messages ----------------------------------------------------------------------
    def handle(self, text: str | bytes) -> tuple[str, str, list[str]]:
        """Apply one client message: ``(type, channel, products)``; raises ProtocolError."""
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ProtocolError("malformed JSON") from None
        if not isinstance(msg, dict):
            raise ProtocolError("message must be a JSON object")
        kind = msg.get("type")
        if kind not in ("subscribe", "unsubscribe"):
            raise ProtocolError(f"unknown message type {kind!r}")
        if "channels" in msg:
            raise ProtocolError('one channel per message: use "channel", not "channels"')
        channel = msg.get("channel")
        if channel not in wire.CHANNELS:
            raise ProtocolError(f"channel {channel!r} not available ({', '.join(wire.CHANNELS)})")
        raw_ids = msg.get("product_ids", [] if channel == HEARTBEATS else None)
        if not isinstance(raw_ids, list) or not all(isinstance(p, str) for p in raw_ids):
            raise ProtocolError("product_ids must be a list of product ids")
        if channel != HEARTBEATS and not raw_ids:
            raise ProtocolError(f"{channel} needs product_ids")
        unknown = [p for p in raw_ids if p not in self.products]
        if unknown:
            raise ProtocolError(f"unknown product_ids {unknown}")
        ids = [HEARTBEATS] if channel == HEARTBEATS else list(dict.fromkeys(raw_ids))
        current = self.subscriptions.setdefault(channel, [])
        if kind == "subscribe":
            self.subscribed = True
            added = [p for p in ids if p not in current]
            current.extend(added)
            return kind, channel, [p for p in added if p != HEARTBEATS]
        self.subscriptions[channel] = [p for p in current if p not in ids]
        if not self.subscriptions[channel]:
            del self.subscriptions[channel]
        return kind, channel, []

    def subscriptions_events(self) -> str:
        listed = {ch: list(ps) for ch, ps in sorted(self.subscriptions.items()) if ps}
        return wire.dumps([{"subscriptions": listed}])

    # -- frames with faults -------------------------------------------------------------------
    def l2_update(self, product: str, timestamp: str, events_raw: str) -> list[Outgoing]:
        text = self.frame("l2_data", timestamp, events_raw)
        if product == self.fault_product and SKIP_DEPTH in self.armed:
            # The frame is lost in transit: its sequence_num is used, nothing arrives.
            self.armed.discard(SKIP_DEPTH)
            count(self.counts, SKIP_DEPTH, COINBASE, product)
            return []
        return [Outgoing(text)]

    def trades(self, product: str, timestamp: str, events_raw: str) -> list[Outgoing]:
        text = self.frame("market_trades", timestamp, events_raw)
        if product != self.fault_product:
            return [Outgoing(text)]
        if self._held is not None:
            held, self._held = self._held, None
            return [Outgoing(text), Outgoing(held)]
        if REORDER in self.armed:
            self.armed.discard(REORDER)
            count(self.counts, REORDER, COINBASE, product)
            self._held = text
            return []
        if DUPLICATE in self.armed:
            self.armed.discard(DUPLICATE)
            count(self.counts, DUPLICATE, COINBASE, product)
            return [Outgoing(text), Outgoing(text)]
        return [Outgoing(text)]

    def heartbeat(
        self, timestamp: str, event_ns: int, uptime_ns: int, stalled: bool
    ) -> list[Outgoing]:
        # The counter is time: it advances through a stall, so the client sees the jump.
        self.heartbeat_counter += 1
        if stalled:
            return []
        events = wire.dumps(
            [
                {
                    "current_time": wire.go_time(event_ns, uptime_ns),
                    "heartbeat_counter": self.heartbeat_counter,
                }
            ]
        )
        return [Outgoing(self.frame(HEARTBEATS, timestamp, events))]
