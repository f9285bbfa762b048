"""Normalized market events: the only data type that crosses from ``streams`` into ``signals``.

Every event carries two clocks, as tardis-node's normalized model does:
``ts_event`` is the exchange's own time (ms since epoch) and drives every window, so live and
replay compute the same numbers; ``ts_recv`` is when tapewatch received the frame (ms), kept for
latency and staleness checks only.

Venue names are the tape ``src`` names, so one string identifies a venue everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

BINANCE_SPOT: Final = "binance-spot"
BINANCE_USDM: Final = "binance-usdm"
COINBASE: Final = "coinbase"
VENUES: Final = (BINANCE_SPOT, BINANCE_USDM, COINBASE)

BUY: Final = "buy"
SELL: Final = "sell"


@dataclass(slots=True, frozen=True)
class Trade:
    """One trade (or Binance aggregate trade) with the *taker's* side already resolved."""

    venue: str
    symbol: str  # venue symbol, e.g. "BTCUSDT" or "BTC-USD"
    ts_event: int  # trade time, ms
    ts_recv: int
    price: float
    qty: float  # base-asset quantity
    taker_side: str  # BUY or SELL: the aggressor, never the maker
    trade_id: int  # aggTrade id `a`, trade id `t`, or Coinbase trade_id

    @property
    def notional(self) -> float:
        return self.price * self.qty


@dataclass(slots=True, frozen=True)
class MarkPrice:
    """Binance USDⓈ-M markPrice update: mark/index price and the *predicted* funding rate."""

    venue: str
    symbol: str
    ts_event: int
    ts_recv: int
    mark_price: float
    index_price: float | None
    funding_rate: float | None  # fraction per funding interval (0.0001 = 0.01 %)
    next_funding_time: int | None


Level = tuple[float, float]  # (price, quantity); quantity 0 removes the level


@dataclass(slots=True, frozen=True)
class DepthDiff:
    """An incremental book update with absolute quantities per level.

    Binance spot: ``first_id``=U, ``last_id``=u, ``prev_last_id`` None.
    Binance USDⓈ-M: also ``prev_last_id``=pu, the only continuity check there.
    Coinbase level2 update: ids are None (continuity comes from the socket's sequence_num).
    """

    venue: str
    symbol: str
    ts_event: int
    ts_recv: int
    first_id: int | None
    last_id: int | None
    prev_last_id: int | None
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


@dataclass(slots=True, frozen=True)
class DepthSnapshot:
    """A full book: Binance REST depth (``last_id``=lastUpdateId) or a Coinbase l2 snapshot."""

    venue: str
    symbol: str
    ts_event: int
    ts_recv: int
    last_id: int | None
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


@dataclass(slots=True, frozen=True)
class BookTicker:
    venue: str
    symbol: str
    ts_event: int  # Binance spot bookTicker has no time: the receive time stands in
    ts_recv: int
    bid: float
    bid_qty: float
    ask: float
    ask_qty: float


@dataclass(slots=True, frozen=True)
class Liquidation:
    """Binance forceOrder snapshot (at most one per symbol per second: a floor, not a total)."""

    venue: str
    symbol: str
    ts_event: int
    ts_recv: int
    side: str  # side of the liquidation ORDER: SELL closes a long, BUY closes a short
    price: float  # average fill price `ap`
    qty: float  # filled quantity `z`


@dataclass(slots=True, frozen=True)
class OpenInterest:
    """Polled ``/fapi/v1/openInterest``: contracts outstanding (base asset for USDⓈ-M)."""

    venue: str
    symbol: str
    ts_event: int
    ts_recv: int
    open_interest: float


@dataclass(slots=True, frozen=True)
class LongShortRatio:
    """Global long/short *account* ratio of one 5-minute period (``/futures/data``)."""

    venue: str
    symbol: str
    ts_event: int  # end of the period
    ts_recv: int
    ratio: float
    long_share: float
    short_share: float


@dataclass(slots=True, frozen=True)
class TakerVolumeRatio:
    """Binance's own taker buy/sell volume of one 5-minute period (``/futures/data``)."""

    venue: str
    symbol: str
    ts_event: int
    ts_recv: int
    buy_sell_ratio: float
    buy_volume: float
    sell_volume: float


@dataclass(slots=True, frozen=True)
class FeedGap:
    """A stretch of event time in which a venue's feed is known to be incomplete.

    Emitted by the collector side (a disconnect, a detected sequence gap); windows mark the
    covered buckets as missing instead of reading them as a quiet market.
    """

    venue: str
    symbol: str | None  # None: every symbol of the venue
    ts_event: int  # start of the gap (last good event time)
    ts_recv: int
    ts_end: int  # end of the gap (first event time after recovery)
    reason: str


Event = (
    Trade
    | MarkPrice
    | DepthDiff
    | DepthSnapshot
    | BookTicker
    | Liquidation
    | OpenInterest
    | LongShortRatio
    | TakerVolumeRatio
    | FeedGap
)
