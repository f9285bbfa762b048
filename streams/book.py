"""Local order books: one price ladder per symbol, kept in sync from a snapshot plus diffs.

Pure: no I/O, no asyncio, no wall clock. The collector feeds ``BookSync`` the normalized
``DepthDiff``/``DepthSnapshot`` events and acts on each ``SyncResult``: when
``needs_snapshot`` is set it fetches a REST snapshot (Binance) or resubscribes (Coinbase) for
that one symbol, and hands the answer to ``on_snapshot``.

Continuity rules, as the exchanges document them (docs/exchange-protocols.md §1.5, §2.3, §4.1;
README "Collectors", "Self-healing"); each venue adapter names its ``BookRule``:

* Binance spot (as corrected 2025-11-12): a snapshot older than the first buffered
  ``U`` is refetched; buffered events with ``u <= lastUpdateId`` are dropped; afterwards an
  event with ``U > book_id + 1`` means events were missed. Events already covered by the book
  are ignored.
* Binance USDⓈ-M: events with ``u < lastUpdateId`` are dropped; the first applied event
  must satisfy ``U <= lastUpdateId <= u``; from then on each ``pu`` must equal the previous
  ``u``. ``U`` is not ``prev u + 1`` on futures, so it is never checked.
* Coinbase level2: the in-stream snapshot resets the book; updates carry no ids, the
  caller checks the socket's ``sequence_num`` and calls ``invalidate`` on a hole.

A crossed book (best bid >= best ask) cannot come out of a correct replay, so it is treated as
corruption and resynced like a gap.
"""

from __future__ import annotations

import enum
import math
import sys
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from streams.events import DepthDiff, DepthSnapshot, Level

BID: Final = "bid"
ASK: Final = "ask"

# SyncResult.reason values (invalidate() passes the caller's own reason through).
START: Final = "start"  # first diff buffered: fetch the initial snapshot
MISSED_UPDATES: Final = "missed_updates"  # spot: U > previous u + 1
PU_MISMATCH: Final = "pu_mismatch"  # USDⓈ-M: pu != previous u
NO_BRIDGE: Final = "no_bridge"  # USDⓈ-M: first event after the snapshot starts past it
SNAPSHOT_TOO_OLD: Final = "snapshot_too_old"  # snapshot predates the buffered stream
CROSSED: Final = "crossed"  # best bid >= best ask after an update
ALREADY_SYNCED: Final = "already_synced"  # unrequested Binance snapshot while in sync
WAITING: Final = "waiting_snapshot"  # Coinbase update before the snapshot: dropped

_STALE: Final = "stale"  # internal verdict: the diff is already contained in the book


def _apply_py(
    levels: Sequence[Level],
    slot_of: dict[float, int],
    prices: array[float],
    qtys: array[float],
    free: list[int],
    sign: float,
    dead: float,
    top: float,
    used: int,
) -> tuple[float, int, bool]:
    """Set each level to its absolute quantity (0 removes it): the C loop of ``_ladder.c`` in
    Python, for where that module was not built. Same arguments and result; see ``_Ladder``.

    Stores go through memoryviews: a memoryview store converts the float directly, an
    ``array`` store goes through ``PyArg_Parse`` and costs half as much again (measured)."""
    price_view, qty_view = memoryview(prices), memoryview(qtys)
    top_key = sign * top  # keys (sign × price): the smallest is the best on either side
    lost_top = False
    for price, qty in levels:
        # 0.0, not 0: CPython 3.11 specialises a float-with-float comparison (measured).
        if qty > 0.0:
            slot = slot_of.get(price)
            if slot is not None:
                qty_view[slot] = qty
                continue
            if free:
                slot = free.pop()
            else:
                slot, used = used, used + 1
            slot_of[price] = slot
            price_view[slot] = price
            qty_view[slot] = qty
            if sign * price < top_key:
                top, top_key = price, sign * price
        else:
            slot = slot_of.pop(price, None)
            if slot is None:
                continue  # removing a level we never saw is normal (outside the snapshot)
            price_view[slot] = dead
            qty_view[slot] = 0.0
            free.append(slot)
            if price == top:
                lost_top = True
    return top, used, lost_top


def _notional_py(
    prices: array[float], qtys: array[float], used: int, edge: float, sign: float
) -> float:
    """The resting notional of the slots at or better than ``edge`` (``sign × price <= sign ×
    edge``): ``_ladder.c``'s ``notional`` in numpy, for where that module was not built."""
    price_view = np.frombuffer(prices)[:used]  # the room past ``used`` is dead
    inside = price_view * sign <= sign * edge
    # One dot product over every slot, the prices outside the band zeroed: five times faster
    # than selecting the slots inside first (prices are finite, so no 0 × inf).
    return float(np.frombuffer(qtys)[:used] @ (price_view * inside))


try:
    from streams._ladder import apply as _apply
    from streams._ladder import notional as _notional
except ImportError:  # built without a C compiler: the same loops in Python, ~4x slower
    _apply = _apply_py
    _notional = _notional_py


class _Ladder:
    """One side of a book: each level's price and quantity in a slot of two flat arrays, a dict
    from price to slot, and the best price.

    The arrays make a depth band one pass over a book that grows to thousands of levels per
    side, in C (``_ladder.c``'s ``notional``; numpy in ``_notional_py`` where it was not built:
    in the daemon, where a snapshot's code is cold, numpy's calls cost ~50 µs a band), while
    setting a level stays a dict lookup and an array store, done in C too (``_apply_py`` where
    it was not built): a depth frame's 40-odd levels were half of its time in CPython. A
    removed level's slot keeps quantity 0 (so it adds nothing to a band) and a price that can
    never be the best, ``_dead`` (0 for bids, the largest float for asks), until a new level
    reuses it (the last freed slot first).

    ``top`` is the best price, kept up to date by ``apply``: a new level better than it becomes
    it. Only when the best level itself is removed is the book searched for the next one, once
    per diff, by one numpy max (bids) or min (asks) over the prices array, where the dead
    slots cannot win. The crossed check after every diff is then one float comparison, and a
    new level costs no heap push. (A lazy heap did this before: its pushes and its pops of
    stale entries, each a chase through thousands of float objects, were a sixth of a diff's
    time on the USDⓈ-M tape and a third on the spot one; see bench/README.md.)

    Prices are finite and positive (every parser and the guards check it): ``top`` is -inf
    for an empty bid side and +inf for an empty ask side, so no price equals it or fails to
    beat it.

    The arrays have room to grow into (a slot below ``_used`` holds a level or is free, the
    ones past it hold a dead price and quantity 0); ``apply`` makes room for every level of a
    diff to be new before the loop, so the loop never grows them.
    """

    __slots__ = ("_dead", "_empty", "_free", "_prices", "_qtys", "_sign", "_used", "slot_of", "top")

    def __init__(self, sign: float) -> None:
        self._sign = sign  # -1: bids (the highest price is the best), 1: asks
        self._dead = 0.0 if sign < 0 else sys.float_info.max
        self._empty = sign * math.inf
        self.load(())

    def load(self, levels: Iterable[Level]) -> None:
        # Same semantics as a run of set(): the last entry for a price wins, 0 means absent.
        book = {price: qty for price, qty in dict(levels).items() if qty > 0}
        self.slot_of: dict[float, int] = {price: slot for slot, price in enumerate(book)}
        self._prices = array("d", book)
        self._qtys = array("d", book.values())
        self._used = len(book)  # slots [0, _used) hold levels or are in _free
        self._free: list[int] = []  # slots of removed levels, for reuse
        self.top = self._search_top()  # the best price; ±inf (worse than any price) when empty

    def clear(self) -> None:
        self.load(())

    def apply(self, levels: Sequence[Level]) -> None:
        """Set each level to its absolute quantity; 0 removes it."""
        if self._used + len(levels) > len(self._prices):
            self._grow(len(levels))
        top, self._used, lost_top = _apply(
            levels,
            self.slot_of,
            self._prices,
            self._qtys,
            self._free,
            self._sign,
            self._dead,
            self.top,
            self._used,
        )
        self.top = self._search_top() if lost_top else top

    def best(self) -> Level | None:
        slot = self.slot_of.get(self.top)
        return None if slot is None else (self.top, self._qtys[slot])

    def notional_beyond(self, edge: float) -> float:
        """Resting notional (price × qty) of the levels at or better than ``edge``: at or
        above it for bids, at or below it for asks."""
        return _notional(self._prices, self._qtys, self._used, edge, self._sign)

    def items(self) -> list[Level]:
        qtys = self._qtys
        return [(price, qtys[slot]) for price, slot in self.slot_of.items()]

    def __len__(self) -> int:
        return len(self.slot_of)

    def _search_top(self) -> float:
        """The best price, by one pass over the prices array (dead slots never win)."""
        if not self.slot_of:
            return self._empty
        prices = np.frombuffer(self._prices)[: self._used]
        return float(prices.max() if self._sign < 0 else prices.min())

    def _grow(self, needed: int) -> None:
        """At least double the arrays' room, and to ``needed`` slots past ``_used`` (the new
        slots dead, quantity 0)."""
        room = max(len(self._prices), 64, self._used + needed - len(self._prices))
        self._prices.extend(array("d", [self._dead]) * room)
        self._qtys.extend(array("d", bytes(8 * room)))


class OrderBook:
    """One symbol's price levels with absolute quantities; knows nothing about sequencing."""

    __slots__ = ("_asks", "_bids")

    def __init__(self) -> None:
        self._bids = _Ladder(-1.0)
        self._asks = _Ladder(1.0)

    def load(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Replace the whole book (a snapshot)."""
        self._bids.load(bids)
        self._asks.load(asks)

    def clear(self) -> None:
        self._bids.clear()
        self._asks.clear()

    def apply_levels(self, bids: Sequence[Level], asks: Sequence[Level]) -> None:
        """Set each level to its absolute quantity; quantity 0 removes the level."""
        self._bids.apply(bids)
        self._asks.apply(asks)

    def best_bid(self) -> Level | None:
        return self._bids.best()

    def best_ask(self) -> Level | None:
        return self._asks.best()

    def mid(self) -> float | None:
        bid, ask = self._bids.best(), self._asks.best()
        if bid is None or ask is None:
            return None
        return (bid[0] + ask[0]) / 2

    def is_crossed(self) -> bool:
        # An empty side's top is -inf (bids) or +inf (asks), never crossed with anything.
        return self._bids.top >= self._asks.top

    def depth_band(self, pct: float) -> tuple[float, float] | None:
        """(bid, ask) resting notional (price × qty) within ±``pct`` % of mid, edges included.

        None when one side is empty: without a mid there is no band, and zero would read as
        "no liquidity" instead of "unknown"."""
        bid, ask = self._bids.best(), self._asks.best()
        if bid is None or ask is None:
            return None
        mid = (bid[0] + ask[0]) / 2
        return (
            self._bids.notional_beyond(mid * (1 - pct / 100)),
            self._asks.notional_beyond(mid * (1 + pct / 100)),
        )

    def levels(self, side: str) -> list[Level]:
        """All levels of ``side`` (BID or ASK), best first."""
        if side == BID:
            return sorted(self._bids.items(), reverse=True)
        if side == ASK:
            return sorted(self._asks.items())
        raise ValueError(f"side must be {BID!r} or {ASK!r}, not {side!r}")

    def __len__(self) -> int:
        return len(self._bids) + len(self._asks)


class BookRule(enum.Enum):
    """A venue's continuity rule for its book diffs (see the module docstring); each venue
    adapter names its own."""

    FIRST_ID = "first_id"  # Binance spot: each diff's U follows the book's id
    PREVIOUS_ID = "previous_id"  # Binance USDⓈ-M: each diff's pu is the previous diff's u
    IN_STREAM = "in_stream"  # Coinbase: the subscription sends the snapshot, no ids


class SyncState(enum.Enum):
    WAITING_SNAPSHOT = "waiting_snapshot"
    SYNCED = "synced"


# The enum members as module constants: in CPython 3.11 reading a member off its class
# (``BookRule.FIRST_ID``) costs about ten times a global read (measured 170 ns against 15), and
# every diff tests the rule and the state several times.
_FIRST_ID: Final = BookRule.FIRST_ID
_PREVIOUS_ID: Final = BookRule.PREVIOUS_ID
_IN_STREAM: Final = BookRule.IN_STREAM
_WAITING_SNAPSHOT: Final = SyncState.WAITING_SNAPSHOT
_SYNCED: Final = SyncState.SYNCED


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one call did.

    ``applied``: diffs applied to the book by this call (a snapshot replays the buffer).
    ``gap``: the stream was found broken (missed ids, crossed book, ``invalidate``); the book
    is discarded and depth is unknown until the next sync.
    ``needs_snapshot``: a snapshot fetched before this call will not do; start a fetch (or a
    Coinbase resubscribe) for this symbol. Retrying a failed fetch is the caller's job.
    """

    applied: int = 0
    gap: bool = False
    needs_snapshot: bool = False
    reason: str | None = None


_NOTHING: Final = SyncResult()
_APPLIED_ONE: Final = SyncResult(applied=1)


class BookSync:
    """Snapshot + diff synchronisation of one symbol's ``OrderBook`` under one venue's rules.

    States: ``WAITING_SNAPSHOT`` (Binance: diffs are buffered, at most ``max_buffer``, the
    oldest dropped first; Coinbase: updates are dropped) and ``SYNCED``. A gap, a crossed book
    or ``invalidate`` discards the book and returns to ``WAITING_SNAPSHOT``.
    """

    def __init__(self, venue: str, symbol: str, rule: BookRule, max_buffer: int = 2000) -> None:
        if max_buffer < 1:
            raise ValueError("max_buffer must be at least 1")
        self.venue = venue
        self.symbol = symbol
        self.rule = rule
        self.max_buffer = max_buffer
        self.book = OrderBook()
        self.state = _WAITING_SNAPSHOT
        self._buffer: deque[DepthDiff] = deque()
        self._book_id: int | None = None  # last applied u, or the snapshot's lastUpdateId
        self._bridged = False  # USDⓈ-M: the first event after the snapshot has been applied
        self._requested = False  # a needs_snapshot was signalled and no snapshot came since
        self.ts_event: int | None = None  # exchange time of the last update in the book
        self.resyncs = 0  # times a synced book was discarded
        self.gaps = 0  # stream discontinuities seen (synced, buffering, or invalidate)
        self.crossed = 0
        self.dropped_buffered = 0  # buffered diffs discarded: overflow or a gap in the buffer
        self.stale_diffs = 0  # diffs already covered by the book, or Coinbase pre-snapshot
        self.snapshots_rejected = 0  # too old for the buffer, or unrequested while synced

    # ---- read side ------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        return self.state is _SYNCED

    @property
    def last_id(self) -> int | None:
        """The book's update id (Binance): the last applied ``u`` or the snapshot's id."""
        return self._book_id if self.synced else None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def counters(self) -> dict[str, int]:
        return {
            "resyncs": self.resyncs,
            "gaps": self.gaps,
            "crossed": self.crossed,
            "dropped_buffered": self.dropped_buffered,
            "stale_diffs": self.stale_diffs,
            "snapshots_rejected": self.snapshots_rejected,
        }

    # ---- input ----------------------------------------------------------------------------

    def on_diff(self, diff: DepthDiff) -> SyncResult:
        if diff.venue != self.venue or diff.symbol != self.symbol:
            self._check_routing(diff.venue, diff.symbol)  # raises
        rule = self.rule
        if rule is _IN_STREAM:
            return self._coinbase_diff(diff)
        if diff.first_id is None or diff.last_id is None:
            raise ValueError(f"{self.venue} diff without update ids: {diff!r}")
        if rule is _PREVIOUS_ID and diff.prev_last_id is None:
            raise ValueError(f"USDⓈ-M diff without pu: {diff!r}")
        if self.state is _WAITING_SNAPSHOT:
            return self._buffer_diff(diff)
        verdict = self._continuity(diff)
        if verdict is None:
            return self._apply(diff)
        if verdict == _STALE:
            self.stale_diffs += 1
            return _NOTHING
        return self._lose_sync(verdict, keep=(diff,))

    def on_snapshot(self, snap: DepthSnapshot) -> SyncResult:
        self._check_routing(snap.venue, snap.symbol)
        self._requested = False
        if self.rule is _IN_STREAM:
            return self._load(snap, replay=())
        if snap.last_id is None:
            raise ValueError(f"{self.venue} snapshot without lastUpdateId: {snap!r}")
        if self.synced:
            # A fetch that raced a recovery: the live book is already continuous.
            self.snapshots_rejected += 1
            return SyncResult(reason=ALREADY_SYNCED)
        if self._too_old(snap.last_id):
            self.snapshots_rejected += 1
            self._requested = True
            return SyncResult(needs_snapshot=True, reason=SNAPSHOT_TOO_OLD)
        replay = tuple(self._buffer)
        self._buffer.clear()
        return self._load(snap, replay)

    def invalidate(self, reason: str) -> SyncResult:
        """The caller saw this symbol's stream break (Coinbase sequence_num hole, disconnect)."""
        self.gaps += 1
        if self.synced:
            self.resyncs += 1
        self.dropped_buffered += len(self._buffer)
        self._reset()
        self._requested = True
        return SyncResult(gap=True, needs_snapshot=True, reason=reason)

    # ---- internals ------------------------------------------------------------------------

    def _check_routing(self, venue: str, symbol: str) -> None:
        # A misrouted event is a bug in the caller, not bad market data: fail loudly.
        if venue != self.venue or symbol != self.symbol:
            raise ValueError(f"{venue}/{symbol} event fed to the {self.venue}/{self.symbol} book")

    def _coinbase_diff(self, diff: DepthDiff) -> SyncResult:
        if not self.synced:
            # Updates before the snapshot are older than it; the snapshot is complete.
            self.stale_diffs += 1
            return SyncResult(reason=WAITING)
        return self._apply(diff)

    def _continuity(self, diff: DepthDiff) -> str | None:
        """None: apply; _STALE: already in the book; otherwise the gap's reason."""
        book_id = self._book_id
        assert book_id is not None and diff.first_id is not None and diff.last_id is not None
        if self.rule is _FIRST_ID:
            if diff.last_id <= book_id:
                # The spot rule ignores u < book id; u == book id re-sets levels to the values
                # the book already holds at that id, so skipping it is the same book.
                return _STALE
            return MISSED_UPDATES if diff.first_id > book_id + 1 else None
        if self._bridged:
            return None if diff.prev_last_id == book_id else PU_MISMATCH
        if diff.last_id < book_id:
            return _STALE
        return None if diff.first_id <= book_id else NO_BRIDGE

    def _apply(self, diff: DepthDiff) -> SyncResult:
        self.book.apply_levels(diff.bids, diff.asks)
        if diff.last_id is not None:
            self._book_id = diff.last_id
        self._bridged = True
        self.ts_event = diff.ts_event
        if self.book.is_crossed():
            return self._crossed(applied=1)
        return _APPLIED_ONE

    def _buffer_diff(self, diff: DepthDiff) -> SyncResult:
        buffer = self._buffer
        if buffer:
            last = buffer[-1]
            assert last.last_id is not None and diff.first_id is not None
            if self.rule is _FIRST_ID:
                assert diff.last_id is not None
                if diff.last_id <= last.last_id:
                    self.stale_diffs += 1
                    return _NOTHING
                broken = diff.first_id > last.last_id + 1
            else:
                broken = diff.prev_last_id != last.last_id
            if broken:
                # Nothing before the hole can ever be replayed: restart the buffer here.
                self.gaps += 1
                self.dropped_buffered += len(buffer)
                buffer.clear()
                buffer.append(diff)
                reason = MISSED_UPDATES if self.rule is _FIRST_ID else PU_MISMATCH
                return self._request(SyncResult(gap=True, reason=reason))
        if len(buffer) >= self.max_buffer:
            buffer.popleft()
            self.dropped_buffered += 1
        buffer.append(diff)
        if len(buffer) == 1:
            return self._request(SyncResult(reason=START))
        return _NOTHING

    def _request(self, result: SyncResult) -> SyncResult:
        """Ask for a snapshot unless one is already on its way (it will be judged on arrival)."""
        if self._requested:
            return result
        self._requested = True
        return SyncResult(result.applied, result.gap, True, result.reason)

    def _too_old(self, last_id: int) -> bool:
        if not self._buffer:
            # Nothing to compare with: the first live diff is checked against the snapshot.
            return False
        if self.rule is _FIRST_ID:
            first_id = self._buffer[0].first_id
            assert first_id is not None
            return last_id < first_id
        for diff in self._buffer:
            assert diff.first_id is not None and diff.last_id is not None
            if diff.last_id >= last_id:
                return diff.first_id > last_id
        return False  # everything buffered predates the snapshot

    def _load(self, snap: DepthSnapshot, replay: tuple[DepthDiff, ...]) -> SyncResult:
        self.book.load(snap.bids, snap.asks)
        self.state = _SYNCED
        self._book_id = snap.last_id
        self._bridged = False
        self.ts_event = snap.ts_event
        if self.book.is_crossed():
            self.dropped_buffered += len(replay)
            return self._crossed(applied=0)
        applied = 0
        for i, diff in enumerate(replay):
            verdict = self._continuity(diff)
            if verdict == _STALE:
                self.stale_diffs += 1
                continue
            if verdict is not None:
                # Unreachable while the buffer is checked on arrival and _too_old holds, but
                # if it happens the diffs from here on are still one continuous stream.
                lost = self._lose_sync(verdict, keep=replay[i:])
                return SyncResult(applied, lost.gap, lost.needs_snapshot, lost.reason)
            result = self._apply(diff)
            applied += 1
            if result.gap:
                self.dropped_buffered += len(replay) - i - 1
                return SyncResult(applied, True, True, result.reason)
        return SyncResult(applied=applied)

    def _crossed(self, applied: int) -> SyncResult:
        self.crossed += 1
        return self._discard(SyncResult(applied, gap=True, needs_snapshot=True, reason=CROSSED))

    def _lose_sync(self, reason: str, keep: tuple[DepthDiff, ...]) -> SyncResult:
        """A gap while synced: drop the book and buffer again from the diff past the hole."""
        self.gaps += 1
        result = self._discard(SyncResult(gap=True, needs_snapshot=True, reason=reason))
        self._buffer.extend(keep)
        return result

    def _discard(self, result: SyncResult) -> SyncResult:
        self.resyncs += 1
        self._reset()
        self._requested = True
        return result

    def _reset(self) -> None:
        self.book.clear()
        self.state = _WAITING_SNAPSHOT
        self._buffer.clear()
        self._book_id = None
        self._bridged = False
