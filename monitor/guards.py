"""Plausibility guards: what a well-formed event may claim before anything believes it.

A frame can parse perfectly and still be false: a trade stamped ten years ahead would drag the
event-time clock (and with it every window and baseline) into the future; a price of 1e200 would
enter the flow sums and the 90-day baselines; a symbol nobody subscribed would create state and
REST work. ``EventGuard`` sits between the parsers and everything else and rejects such events,
each under a named kind that the health topic counts per venue (``rejected``):

- ``unknown_symbol``: a symbol this daemon did not subscribe on that venue;
- ``future_ts``: event time ahead of the receive time by more than ``max_ahead`` beyond the
  venue's measured clock offset (the median of its recent frames' event − receive times);
- ``stale_ts``: event time behind the receive time by more than ``max_behind``;
- ``price_band``: a price outside ``price_band`` around the asset's reference price (the median
  of its recent trade and mark prices, over every venue);
- ``notional``: price × quantity above ``max_notional`` (or not finite), or open interest worth
  more than ``OI_NOTIONAL_FACTOR`` × ``max_notional``;
- ``book_level``: a book level that would cross the market (a bid above the band, an ask
  below it) or is above the notional cap; it is dropped from its diff or snapshot and the rest
  of the update applies. Orders far *behind* the price (a bid at a tenth of it) are real and
  common, and pass.

Pure: no clock, no I/O. Receive times come with the events, so a replay judges the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from streams.events import (
    BookTicker,
    DepthDiff,
    DepthSnapshot,
    Event,
    Level,
    Liquidation,
    MarkPrice,
    OpenInterest,
    Trade,
)

UNKNOWN_SYMBOL = "unknown_symbol"
FUTURE_TS = "future_ts"
STALE_TS = "stale_ts"
PRICE_BAND = "price_band"
NOTIONAL = "notional"
BOOK_LEVEL = "book_level"

# Open interest is the whole market's position, not one trade: a perp's can be worth thousands
# of times the largest single trade.
OI_NOTIONAL_FACTOR = 1_000.0

# Clock offset: the median of the last OFFSET_SAMPLES frames (every frame, rejected ones too: a
# single forged time cannot move a median, and a venue whose clock really differs is followed
# within a few frames). Recomputed every OFFSET_EVERY frames, which keeps it off the per-frame
# bill; offset 0 until OFFSET_MIN frames are in.
OFFSET_SAMPLES = 31
OFFSET_EVERY = 8
OFFSET_MIN = 5

# The reference price: the median of a batch of REFERENCE_BATCH recent prices (trades and mark
# prices, rejected ones included, so a real crash beyond the band re-anchors within two batches
# while one absurd print never moves it). A first estimate from REFERENCE_MIN prices.
REFERENCE_BATCH = 16
REFERENCE_MIN = 3


@dataclass(frozen=True, slots=True)
class GuardLimits:
    max_ahead_ms: int = 5_000
    max_behind_ms: int = 86_400_000
    price_band: float = 0.30  # ± fraction of the reference price
    max_notional: float = 1e10  # quote currency (USD/USDT) per trade, liquidation or level


@dataclass(frozen=True, slots=True)
class Rejection:
    kind: str
    detail: str


class _ClockOffset:
    """A venue's typical (event − receive) time: its clock offset plus the feed's latency."""

    __slots__ = ("_ring", "_seen", "offset")

    def __init__(self) -> None:
        self._ring: list[int] = []
        self._seen = 0
        self.offset = 0

    def observe(self, delta_ms: int) -> None:
        seen = self._seen
        if len(self._ring) < OFFSET_SAMPLES:
            self._ring.append(delta_ms)
        else:
            self._ring[seen % OFFSET_SAMPLES] = delta_ms
        self._seen = seen + 1
        if self._seen >= OFFSET_MIN and (self._seen % OFFSET_EVERY == 0 or seen < OFFSET_MIN):
            ordered = sorted(self._ring)
            self.offset = ordered[len(ordered) // 2]


class _Reference:
    """An asset's reference price."""

    __slots__ = ("_batch", "price")

    def __init__(self) -> None:
        self._batch: list[float] = []
        self.price: float | None = None

    def observe(self, price: float) -> None:
        batch = self._batch
        batch.append(price)
        if len(batch) >= REFERENCE_BATCH:
            self.price = sorted(batch)[len(batch) // 2]
            batch.clear()
        elif self.price is None and len(batch) >= REFERENCE_MIN:
            self.price = sorted(batch)[len(batch) // 2]


class EventGuard:
    """Judges events; ``check`` returns why one must be rejected, or None to let it through."""

    def __init__(
        self,
        limits: GuardLimits,
        symbols: dict[str, set[str]],
        reference_of: dict[tuple[str, str], str],
    ) -> None:
        """``symbols``: venue -> the symbols subscribed there. ``reference_of``: (venue, symbol)
        -> the name of the reference price it shares (its asset's; USDT-USD has its own)."""
        self.limits = limits
        self.symbols = symbols
        self._clocks: dict[str, _ClockOffset] = {}
        self._refs: dict[tuple[str, str], _Reference] = {}
        shared: dict[str, _Reference] = {}
        for key, name in reference_of.items():
            self._refs[key] = shared.setdefault(name, _Reference())

    def clock_offset_ms(self, venue: str) -> int:
        clock = self._clocks.get(venue)
        return 0 if clock is None else clock.offset

    def observe_frame(self, venue: str, events: list[Event]) -> None:
        """A websocket frame's newest event measures the venue's clock offset."""
        if not events:
            return
        event = events[-1]
        clock = self._clocks.get(venue)
        if clock is None:
            clock = self._clocks[venue] = _ClockOffset()
        clock.observe(event.ts_event - event.ts_recv)

    def check(self, venue: str, event: Event) -> Rejection | None:
        symbol = event.symbol
        if symbol is not None and symbol not in self.symbols.get(venue, ()):
            return Rejection(UNKNOWN_SYMBOL, symbol)
        limits = self.limits
        ahead = event.ts_event - event.ts_recv
        clock = self._clocks.get(venue)
        if ahead > (0 if clock is None else clock.offset) + limits.max_ahead_ms:
            return Rejection(FUTURE_TS, f"{symbol} {ahead / 1000:.1f} s ahead of its receipt")
        if -ahead > limits.max_behind_ms:
            return Rejection(STALE_TS, f"{symbol} {-ahead / 1000:.0f} s behind its receipt")
        if isinstance(event, Trade | Liquidation):
            return self._priced(venue, symbol, event.price, event.qty)
        if isinstance(event, MarkPrice):
            return self._priced(venue, symbol, event.mark_price, 0.0)
        if isinstance(event, OpenInterest):
            return self._open_interest(venue, symbol, event.open_interest)
        if isinstance(event, BookTicker) and not (
            self._in_band(venue, symbol, event.bid) and self._in_band(venue, symbol, event.ask)
        ):
            return Rejection(PRICE_BAND, f"{symbol} ticker {event.bid:g}/{event.ask:g}")
        return None

    def _priced(self, venue: str, symbol: str | None, price: float, qty: float) -> Rejection | None:
        ref = self._refs.get((venue, symbol or ""))
        notional = price * qty
        if not notional <= self.limits.max_notional:  # also catches inf and NaN
            return Rejection(NOTIONAL, f"{symbol} {price:g} x {qty:g}")
        if ref is None:
            return None
        reference = ref.price
        ref.observe(price)
        band = self.limits.price_band
        if reference is not None and not (
            reference * (1 - band) <= price <= reference * (1 + band)
        ):
            return Rejection(PRICE_BAND, f"{symbol} {price:g} against {reference:g}")
        return None

    def _bounds(self, venue: str, symbol: str | None) -> tuple[float, float]:
        """The plausible price range for a symbol; everything while it has no reference."""
        ref = self._refs.get((venue, symbol or ""))
        reference = None if ref is None else ref.price
        if reference is None:
            return 0.0, math.inf
        band = self.limits.price_band
        return reference * (1 - band), reference * (1 + band)

    def _in_band(self, venue: str, symbol: str | None, price: float) -> bool:
        low, high = self._bounds(venue, symbol)
        return low <= price <= high

    def _open_interest(self, venue: str, symbol: str | None, contracts: float) -> Rejection | None:
        ref = self._refs.get((venue, symbol or ""))
        price = None if ref is None else ref.price
        worth = contracts * (price or 1.0)
        if not worth <= self.limits.max_notional * OI_NOTIONAL_FACTOR:
            return Rejection(NOTIONAL, f"{symbol} open interest {contracts:g}")
        return None

    def book_levels(
        self, venue: str, event: DepthDiff | DepthSnapshot
    ) -> tuple[tuple[Level, ...], tuple[Level, ...], int] | None:
        """None when every level is plausible (nearly always: one pass, no copies); otherwise
        the bids and asks without the implausible levels (bids above the band, asks below
        it, levels above the notional cap), and how many were dropped."""
        low, high = self._bounds(venue, event.symbol)
        cap = self.limits.max_notional
        bids, asks = event.bids, event.asks
        if _plausible(bids, 0.0, high, cap) and _plausible(asks, low, math.inf, cap):
            return None
        kept_bids = tuple(lv for lv in bids if _plausible((lv,), 0.0, high, cap))
        kept_asks = tuple(lv for lv in asks if _plausible((lv,), low, math.inf, cap))
        return kept_bids, kept_asks, len(bids) + len(asks) - len(kept_bids) - len(kept_asks)


def _plausible(levels: tuple[Level, ...], low: float, high: float, cap: float) -> bool:
    # A plain loop, not all() over a generator: this runs over every level of every depth
    # frame, and the generator costs a third more.
    for price, qty in levels:  # noqa: SIM110
        if not (low <= price <= high and price * qty <= cap):
            return False
    return True
