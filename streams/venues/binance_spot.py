"""Binance spot: one socket per symbol group for trades and book diffs; REST on the public
market-data host (``data-api.binance.vision``: no key, the same data as ``api.binance.com``)."""

from __future__ import annotations

from collections.abc import Sequence

from streams.book import BookRule
from streams.events import BINANCE_SPOT
from streams.venues._binance import DEPTH_LIMITS, BinanceVenue
from streams.venues.base import HistorySeries, RestLimits, Resync, Socket

# Per symbol: aggregate trades and 100 ms book diffs (bookTicker is not read: no signal uses it).
STREAMS = ("aggTrade", "depth@100ms")


def depth_weight(limit: int) -> int:
    """``/api/v3/depth``: weight 5 up to 100 levels, 25 up to 500, 50 up to 1000, else 250."""
    return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250


class BinanceSpot(BinanceVenue):
    name = BINANCE_SPOT
    config_key = "binance_spot"
    limits = RestLimits(weight_limit=6000)
    book_rule = BookRule.FIRST_ID
    resync = Resync.SNAPSHOT
    history_group = "binance"
    depth_path = "/api/v3/depth"
    depth_limits = DEPTH_LIMITS
    depth_weight = staticmethod(depth_weight)
    agg_trades_path = "/api/v3/aggTrades"
    agg_trades_weight = 4
    klines_path = "/api/v3/klines"
    klines_weight = 2

    def __init__(self, ws: str, rest: str) -> None:
        super().__init__(rest, ws=ws)

    def sockets(self, symbols: Sequence[str], trades_only: Sequence[str] = ()) -> list[Socket]:
        return self.combined(self.name, self.socket_urls["ws"], symbols, STREAMS)

    def history(self, symbol: str) -> list[HistorySeries]:
        return [self.klines("spot", symbol)]
