"""What the simulated venues have published: books as of the last update sent, recent trades.

Pure: no I/O. REST snapshots and Coinbase's in-stream level2 snapshot are served from here, not
from the model's live book (which may be a step ahead of the stream), so a snapshot's
``lastUpdateId`` is always an id the diff stream has carried, and a client's book syncs exactly.
"""

from __future__ import annotations

import bisect
from collections import deque
from itertools import islice

from simulator.book_model import Level, VenueBook
from simulator.market import DepthTick, TradeTick


class PublishedBook:
    """A copy of a venue book, advanced only by the diff events the simulator publishes."""

    __slots__ = ("asks", "bids", "event_ms", "last_update_id")

    def __init__(self, book: VenueBook, event_ms: int) -> None:
        self.bids: dict[int, int] = dict(book.levels(bids=True))
        self.asks: dict[int, int] = dict(book.levels(bids=False))
        self.last_update_id = book.last_update_id
        self.event_ms = event_ms

    def apply(self, tick: DepthTick) -> None:
        for side, levels in ((self.bids, tick.bids), (self.asks, tick.asks)):
            for price, lots in levels:
                if lots:
                    side[price] = lots
                else:
                    side.pop(price, None)
        self.last_update_id = tick.last_id
        self.event_ms = tick.event_ms

    def top(self, limit: int | None = None) -> tuple[list[Level], list[Level]]:
        """``(bids, asks)``, best first, at most ``limit`` levels a side."""
        bids = sorted(self.bids.items(), reverse=True)[:limit]
        asks = sorted(self.asks.items())[:limit]
        return bids, asks

    def best(self) -> tuple[Level, Level]:
        bid = max(self.bids)
        ask = min(self.asks)
        return (bid, self.bids[bid]), (ask, self.asks[ask])


class TradeRing:
    """The most recent trades of one venue symbol, oldest first, ids contiguous."""

    def __init__(self, capacity: int) -> None:
        self.trades: deque[TradeTick] = deque(maxlen=capacity)

    def append(self, tick: TradeTick) -> None:
        self.trades.append(tick)

    def __len__(self) -> int:
        return len(self.trades)

    def drop_before(self, trade_ms: int) -> None:
        """Forget trades older than ``trade_ms`` (USDⓈ-M keeps 48 h)."""
        trades = self.trades
        while trades and trades[0].trade_ms < trade_ms:
            trades.popleft()

    def from_id(self, first_id: int, limit: int) -> list[TradeTick]:
        """Up to ``limit`` trades with id >= ``first_id`` (from the oldest kept if older)."""
        trades = self.trades
        if not trades:
            return []
        start = max(0, first_id - trades[0].agg_id)
        return list(islice(trades, start, start + limit))

    def latest(self, limit: int) -> list[TradeTick]:
        """The ``limit`` newest trades, oldest first."""
        trades = self.trades
        return list(islice(trades, max(0, len(trades) - limit), None))

    def between(self, start_ms: int | None, end_ms: int | None, limit: int) -> list[TradeTick]:
        """Up to ``limit`` trades with ``start_ms <= T <= end_ms``, oldest first."""
        trades = self.trades
        lo = 0 if start_ms is None else bisect.bisect_left(trades, start_ms, key=_trade_ms)
        out = []
        for tick in islice(trades, lo, None):
            if end_ms is not None and tick.trade_ms > end_ms:
                break
            out.append(tick)
            if len(out) == limit:
                break
        return out


def _trade_ms(tick: TradeTick) -> int:
    return tick.trade_ms
