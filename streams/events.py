"""Normalized market events: the only data type that crosses from ``streams`` into ``signals``.

Every event carries two clocks, as tardis-node's normalized model does:
``ts_event`` is the exchange's own time (ms since epoch) and drives every window, so live and
replay compute the same numbers; ``ts_recv`` is when tapewatch received the frame (ms), kept for
latency and staleness checks only.

Venue names are the tape ``src`` names, so one string identifies a venue everywhere.

REST history for the start-up backfill crosses the same boundary as ``Bars`` and ``Points``:
numpy columns of many rows, since 90 days of minutes as single events would be needlessly slow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgspec
import numpy as np

BINANCE_SPOT: Final = "binance-spot"
BINANCE_USDM: Final = "binance-usdm"
COINBASE: Final = "coinbase"
VENUES: Final = (BINANCE_SPOT, BINANCE_USDM, COINBASE)

BUY: Final = "buy"
SELL: Final = "sell"


class _Record(msgspec.Struct, frozen=True, gc=False):
    """The base of every event: immutable, compared by value, built in C (a frozen dataclass
    costs ~1 µs to build, eight times as much; one is built per trade). ``gc=False``: events
    hold only strings, numbers and tuples of them, never a cycle."""


class Trade(_Record, frozen=True):
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


class MarkPrice(_Record, frozen=True):
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


class DepthDiff(_Record, frozen=True):
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


class DepthSnapshot(_Record, frozen=True):
    """A full book: Binance REST depth (``last_id``=lastUpdateId) or a Coinbase l2 snapshot."""

    venue: str
    symbol: str
    ts_event: int
    ts_recv: int
    last_id: int | None
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


class BookTicker(_Record, frozen=True):
    venue: str
    symbol: str
    ts_event: int  # Binance spot bookTicker has no time: the receive time stands in
    ts_recv: int
    bid: float
    bid_qty: float
    ask: float
    ask_qty: float


class Liquidation(_Record, frozen=True):
    """Binance forceOrder snapshot (at most one per symbol per second: a floor, not a total)."""

    venue: str
    symbol: str
    ts_event: int
    ts_recv: int
    side: str  # side of the liquidation ORDER: SELL closes a long, BUY closes a short
    price: float  # average fill price `ap`
    qty: float  # filled quantity `z`


class OpenInterest(_Record, frozen=True):
    """Polled ``/fapi/v1/openInterest``: contracts outstanding (base asset for USDⓈ-M)."""

    venue: str
    symbol: str
    ts_event: int
    ts_recv: int
    open_interest: float


class LongShortRatio(_Record, frozen=True):
    """Global long/short *account* ratio of one 5-minute period (``/futures/data``)."""

    venue: str
    symbol: str
    ts_event: int  # end of the period
    ts_recv: int
    ratio: float
    long_share: float
    short_share: float


class FeedGap(_Record, frozen=True):
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


class Heartbeat(_Record, frozen=True):
    """A venue-wide sign of life with no market data (Coinbase ``heartbeats``): the socket that
    carries the venue's trades is alive at ``ts_event``, even when nothing trades."""

    venue: str
    symbol: None  # every symbol of the venue's connection
    ts_event: int
    ts_recv: int


Event = (
    Trade
    | MarkPrice
    | DepthDiff
    | DepthSnapshot
    | BookTicker
    | Liquidation
    | OpenInterest
    | LongShortRatio
    | FeedGap
    | Heartbeat
)


# -- history (the start-up backfill): columns of many rows, not single events ------------
@dataclass(frozen=True, slots=True)
class Bars:
    """One-minute bars of one venue symbol, sorted by open time, one per minute at most."""

    open_ms: np.ndarray  # int64, start of the minute
    close: np.ndarray  # last trade price of the minute
    quote_volume: np.ndarray  # traded notional (quote currency)
    taker_buy_quote: np.ndarray  # taker-buy notional; NaN where the venue does not say

    @classmethod
    def empty(cls) -> Bars:
        return cls(*(np.zeros(0, dtype=t) for t in (np.int64, float, float, float)))

    @classmethod
    def of(
        cls, open_ms: list[int], close: list[float], quote: list[float], taker: list[float]
    ) -> Bars:
        """Bars from rows in any order; the last row of a repeated minute wins."""
        if not open_ms:
            return cls.empty()
        columns = (np.array(c, dtype=float) for c in (close, quote, taker))
        return cls.empty().merged(cls(np.array(open_ms, dtype=np.int64), *columns))

    def __len__(self) -> int:
        return len(self.open_ms)

    def merged(self, other: Bars) -> Bars:
        """Union of two sets of bars; where both hold a minute, ``other`` wins."""
        return Bars(*_merge((self.open_ms, other.open_ms), _columns(self), _columns(other)))

    def between(self, start_ms: int, end_ms: int) -> Bars:
        keep = (self.open_ms >= start_ms) & (self.open_ms < end_ms)
        return Bars(self.open_ms[keep], *(c[keep] for c in _columns(self)))


@dataclass(frozen=True, slots=True)
class Points:
    """A time series of single values (funding settlements, open-interest rows)."""

    ts_ms: np.ndarray  # int64, sorted, unique
    value: np.ndarray

    @classmethod
    def empty(cls) -> Points:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0))

    @classmethod
    def of(cls, ts_ms: list[int], values: list[float]) -> Points:
        """Points from rows in any order; the last row of a repeated time wins."""
        if not ts_ms:
            return cls.empty()
        return cls.empty().merged(cls(np.array(ts_ms, dtype=np.int64), np.array(values)))

    def __len__(self) -> int:
        return len(self.ts_ms)

    def merged(self, other: Points) -> Points:
        return Points(*_merge((self.ts_ms, other.ts_ms), (self.value,), (other.value,)))

    def between(self, start_ms: int, end_ms: int) -> Points:
        keep = (self.ts_ms >= start_ms) & (self.ts_ms < end_ms)
        return Points(self.ts_ms[keep], self.value[keep])


def _columns(bars: Bars) -> tuple[np.ndarray, ...]:
    return bars.close, bars.quote_volume, bars.taker_buy_quote


def _merge(
    times: tuple[np.ndarray, np.ndarray],
    old: tuple[np.ndarray, ...],
    new: tuple[np.ndarray, ...],
) -> tuple[np.ndarray, ...]:
    ts = np.concatenate(times)
    # Later entries win: unique keeps the first of each time, so search from the end.
    _, last = np.unique(ts[::-1], return_index=True)
    order = len(ts) - 1 - last  # ascending times, index of each time's newest row
    columns = [np.concatenate(pair) for pair in zip(old, new, strict=True)]
    return (ts[order], *(c[order] for c in columns))
