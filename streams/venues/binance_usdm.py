"""Binance USDⓈ-M perpetuals. Since 2026-04-23 trades, mark price and liquidations are served
only under ``/market`` and books only under ``/public``; a socket on the wrong path connects and
then stays silent. Open interest and the long/short account ratio come from REST polls."""

from __future__ import annotations

from collections.abc import Sequence

from streams import binance
from streams.book import BookRule
from streams.events import BINANCE_USDM
from streams.units import DAY_MS, HOUR_MS, MINUTE_MS
from streams.venues._binance import DEPTH_LIMITS, BinanceVenue, window
from streams.venues.base import HistorySeries, Pace, Poll, RestCall, RestLimits, Resync, Socket

MARKET_STREAMS = ("aggTrade", "markPrice@1s", "forceOrder")
PUBLIC_STREAMS = ("depth@100ms",)  # bookTicker is not read: no signal uses it
FUNDING_STEP_MS = 8 * HOUR_MS
OI_STEP_MS = 5 * MINUTE_MS
OI_KEPT_MS = 30 * DAY_MS  # Binance serves open-interest history for the last 30 days


def depth_weight(limit: int) -> int:
    """``/fapi/v1/depth``: weight 2 up to 50 levels, 5 for 100, 10 for 500, 20 for 1000."""
    return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20


class BinanceUsdm(BinanceVenue):
    name = BINANCE_USDM
    config_key = "binance_usdm"
    limits = RestLimits(weight_limit=2400)
    book_rule = BookRule.PREVIOUS_ID
    resync = Resync.SNAPSHOT
    history_group = "binance"
    depth_path = "/fapi/v1/depth"
    depth_limits = DEPTH_LIMITS
    depth_weight = staticmethod(depth_weight)
    agg_trades_path = "/fapi/v1/aggTrades"
    agg_trades_weight = 20
    klines_path = "/fapi/v1/klines"
    klines_weight = 5  # limit 1000 weighs 5 (1500 would weigh 10): 3 assets' 90 days fit 2400/min

    def __init__(self, market_ws: str, public_ws: str, rest: str) -> None:
        super().__init__(rest, market_ws=market_ws, public_ws=public_ws)

    def sockets(self, symbols: Sequence[str], trades_only: Sequence[str] = ()) -> list[Socket]:
        urls = self.socket_urls
        return [
            *self.combined(f"{self.name}/market", urls["market_ws"], symbols, MARKET_STREAMS),
            *self.combined(f"{self.name}/public", urls["public_ws"], symbols, PUBLIC_STREAMS),
        ]

    def polls(self, symbol: str) -> list[Poll]:
        return [
            Poll(RestCall("/fapi/v1/openInterest", {"symbol": symbol}), Pace.OPEN_INTEREST),
            Poll(
                RestCall(
                    "/futures/data/globalLongShortAccountRatio",
                    {"symbol": symbol, "period": "5m", "limit": 1},
                ),
                Pace.RATIOS,
            ),
        ]

    def history(self, symbol: str) -> list[HistorySeries]:
        return [
            self.klines("perp", symbol),
            HistorySeries(
                "funding", self.name, symbol, "/fapi/v1/fundingRate",
                step_ms=FUNDING_STEP_MS, page_rows=1000, weight=1,
                parse=binance.parse_funding_history,
                query=lambda start, end, rows: window(symbol, start, end, rows),
                points=True, whole=True, lead=True,
            ),
            HistorySeries(
                "open_interest", self.name, symbol, "/futures/data/openInterestHist",
                step_ms=OI_STEP_MS, page_rows=500, weight=0,
                parse=binance.parse_open_interest_history,
                query=lambda start, end, rows: {
                    **window(symbol, start, end, rows), "period": "5m"
                },
                points=True, kept_ms=OI_KEPT_MS - OI_STEP_MS, lead=True,
            ),
        ]  # fmt: skip
