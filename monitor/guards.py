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
from collections.abc import Callable
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

# Clock offset: the median of the last OFFSET_SAMPLES measured frames (the newest event of every
# OFFSET_STRIDE-th frame of the venue, rejected ones too: a single forged time cannot move a
# median, and a venue whose clock really differs is followed within a few dozen frames).
# Recomputed every OFFSET_EVERY samples, which keeps it off the per-frame bill; offset 0 until
# OFFSET_MIN samples are in.
OFFSET_SAMPLES = 31
OFFSET_STRIDE = 2
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

    __slots__ = ("_ring", "_samples", "frames", "offset")

    def __init__(self) -> None:
        self._ring: list[int] = []
        self._samples = 0
        self.frames = 0
        self.offset = 0

    def observe(self, delta_ms: int) -> None:
        n = self._samples
        if n < OFFSET_SAMPLES:
            self._ring.append(delta_ms)
        else:
            self._ring[n % OFFSET_SAMPLES] = delta_ms
        self._samples = n = n + 1
        if n >= OFFSET_MIN and (n % OFFSET_EVERY == 0 or n == OFFSET_MIN):
            ordered = sorted(self._ring)
            self.offset = ordered[len(ordered) // 2]


class _Reference:
    """An asset's reference price, and the band around it that prices must lie in."""

    __slots__ = ("band", "batch", "high", "low", "price")

    def __init__(self, band: float) -> None:
        self.batch: list[float] = []  # prices since the last batch
        self.band = band
        self.price: float | None = None
        self.low, self.high = 0.0, math.inf  # everything, until there is a reference

    def observe(self, price: float) -> None:
        self.batch.append(price)
        self.observed()

    def observed(self) -> None:
        """Prices were appended to ``batch``: a full batch (or a first estimate) sets the
        reference."""
        batch = self.batch
        if len(batch) >= REFERENCE_BATCH:
            self._set(sorted(batch)[len(batch) // 2])
            batch.clear()
        elif self.price is None and len(batch) >= REFERENCE_MIN:
            self._set(sorted(batch)[len(batch) // 2])

    def _set(self, price: float) -> None:
        self.price = price
        self.low, self.high = price * (1 - self.band), price * (1 + self.band)


class _Subject:
    """What the guard knows about one (venue, symbol), and its judgement of their events. A
    venue has two more: one for its venue-wide events (no symbol: no price to judge) and one
    for the symbols it did not subscribe (``unknown``)."""

    __slots__ = ("clock", "max_ahead", "max_behind", "max_notional", "reference", "unknown")

    def __init__(
        self,
        clock: _ClockOffset,
        reference: _Reference | None,
        limits: GuardLimits,
        unknown: bool = False,
    ) -> None:
        self.clock = clock  # its venue's
        self.reference = reference  # its asset's, shared by the asset's venues
        self.unknown = unknown
        # The bounds as plain attributes: they are read for every event.
        self.max_ahead, self.max_behind = limits.max_ahead_ms, limits.max_behind_ms
        self.max_notional = limits.max_notional

    def check(self, event: Event, clocked: bool) -> Rejection | None:
        """``EventGuard.check`` of an event of this subject: the pipeline holds this bound
        method per subscribed (venue, symbol), so the per-trade path skips the lookups."""
        ahead = event.ts_event - event.ts_recv
        if clocked and ahead:
            clock = self.clock
            clock.frames = frames = clock.frames + 1
            if frames % OFFSET_STRIDE == 1:
                clock.observe(ahead)
        if self.unknown:
            return Rejection(UNKNOWN_SYMBOL, event.symbol)
        if ahead > self.clock.offset + self.max_ahead:
            return Rejection(FUTURE_TS, f"{event.symbol} {ahead / 1000:.1f} s ahead of its receipt")
        if -ahead > self.max_behind:
            return Rejection(STALE_TS, f"{event.symbol} {-ahead / 1000:.0f} s behind its receipt")
        ref = self.reference
        if ref is None:  # a venue-wide event (a heartbeat): no price to judge
            return None
        cls = event.__class__  # exact class checks: this is the per-event path
        if cls is Trade:  # ``_priced`` and the reference's ``observe``, inline: the per-trade path
            price = event.price
            if not price * event.qty <= self.max_notional:  # also catches inf and NaN
                return Rejection(NOTIONAL, f"{price:g} x {event.qty:g}")
            low, high, batch = ref.low, ref.high, ref.batch
            batch.append(price)
            if len(batch) >= REFERENCE_BATCH or ref.price is None:
                ref.observed()
            if not low <= price <= high:
                return Rejection(PRICE_BAND, f"{price:g} against {ref.price:g}")
            return None
        if cls is Liquidation:
            return self._priced(event.price, event.qty)
        if isinstance(event, MarkPrice):
            return self._priced(event.mark_price, 0.0)
        if isinstance(event, OpenInterest):
            return self._open_interest(event.open_interest)
        if isinstance(event, BookTicker) and not (
            ref.low <= event.bid <= ref.high and ref.low <= event.ask <= ref.high
        ):
            return Rejection(PRICE_BAND, f"{event.symbol} ticker {event.bid:g}/{event.ask:g}")
        return None

    def _priced(self, price: float, qty: float) -> Rejection | None:
        ref = self.reference
        assert ref is not None
        if not price * qty <= self.max_notional:  # also catches inf and NaN
            return Rejection(NOTIONAL, f"{price:g} x {qty:g}")
        low, high = ref.low, ref.high  # the band before this price joins the reference
        ref.observe(price)
        if not low <= price <= high:
            return Rejection(PRICE_BAND, f"{price:g} against {ref.price:g}")
        return None

    def _open_interest(self, contracts: float) -> Rejection | None:
        assert self.reference is not None
        worth = contracts * (self.reference.price or 1.0)
        if not worth <= self.max_notional * OI_NOTIONAL_FACTOR:
            return Rejection(NOTIONAL, f"open interest {contracts:g}")
        return None


Check = Callable[[Event, bool], "Rejection | None"]


class EventGuard:
    """Judges events; ``check`` returns why one must be rejected, or None to let it through."""

    def __init__(self, limits: GuardLimits, reference_of: dict[tuple[str, str], str]) -> None:
        """``reference_of``: every subscribed (venue, symbol) -> the name of the reference price
        it shares (its asset's; USDT-USD has its own). Anything else is an unknown symbol."""
        self.limits = limits
        self._max_notional = limits.max_notional
        self._clocks = {venue: _ClockOffset() for venue, _ in reference_of}
        references: dict[str, _Reference] = {}
        # venue -> symbol -> subject; the key None holds the venue-wide one.
        self._subjects: dict[str, dict[str | None, _Subject]] = {
            venue: {None: _Subject(clock, None, limits)} for venue, clock in self._clocks.items()
        }
        self._unknown = {
            venue: _Subject(clock, None, limits, unknown=True)
            for venue, clock in self._clocks.items()
        }
        for (venue, symbol), name in reference_of.items():
            reference = references.setdefault(name, _Reference(limits.price_band))
            self._subjects[venue][symbol] = _Subject(self._clocks[venue], reference, limits)

    def clock_offset_ms(self, venue: str) -> int:
        clock = self._clocks.get(venue)
        return 0 if clock is None else clock.offset

    def check(self, venue: str, event: Event, clocked: bool = False) -> Rejection | None:
        """``clocked``: the event is the newest of a websocket frame, and every
        OFFSET_STRIDE-th such event of the venue measures its clock (rejected ones too), unless
        its time is the receive time (Binance spot's bookTicker carries no time of its own: the
        parser stamps it with the receive time, which measures nothing). A frame's older events
        (a Coinbase snapshot of past trades) and a REST row say nothing of the feed's clock."""
        subjects = self._subjects.get(venue)
        if subjects is None:
            return Rejection(UNKNOWN_SYMBOL, f"{event.symbol} (venue not collected)")
        subject = subjects.get(event.symbol)
        if subject is None:
            subject = self._unknown[venue]
        return subject.check(event, clocked)

    def checker(self, venue: str, symbol: str) -> Check | None:
        """``check`` of the events of one subscribed (venue, symbol), looked up once; None
        when it is not subscribed."""
        subject = self._subjects.get(venue, {}).get(symbol)
        return None if subject is None or subject.reference is None else subject.check

    def book_levels(
        self, venue: str, event: DepthDiff | DepthSnapshot
    ) -> tuple[tuple[Level, ...], tuple[Level, ...], int] | None:
        """None when every level is plausible (nearly always: one pass, no copies); otherwise
        the bids and asks without the implausible levels (bids above the band, asks below
        it, levels above the notional cap), and how many were dropped."""
        subject = self._subjects.get(venue, {}).get(event.symbol)
        ref = None if subject is None else subject.reference
        low, high = (0.0, math.inf) if ref is None else (ref.low, ref.high)
        cap = self._max_notional
        bids, asks = event.bids, event.asks
        if _plausible(bids, 0.0, high, cap) and _plausible(asks, low, math.inf, cap):
            return None
        kept_bids = tuple(lv for lv in bids if _plausible((lv,), 0.0, high, cap))
        kept_asks = tuple(lv for lv in asks if _plausible((lv,), low, math.inf, cap))
        return kept_bids, kept_asks, len(bids) + len(asks) - len(kept_bids) - len(kept_asks)


def _plausible_py(levels: tuple[Level, ...], low: float, high: float, cap: float) -> bool:
    """Whether every level lies in [low, high] and within the notional cap (NaN does not)."""
    # A plain loop, not all() over a generator: this runs over every level of every depth
    # frame, and the generator costs a third more.
    for price, qty in levels:  # noqa: SIM110
        if not (low <= price <= high and price * qty <= cap):
            return False
    return True


# The same loop in C where the optional extension was built (streams/_ladder.c: the book's
# per-level loop is there too); ``_plausible_py`` is the fallback, and the tests run both.
try:
    from streams._ladder import plausible as _plausible
except ImportError:  # built without a C compiler
    _plausible = _plausible_py
