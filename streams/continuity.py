"""Trade-id continuity: every trade counted once, missing ones found and asked for.

Binance aggregate-trade ids and Coinbase trade ids rise by one per trade and symbol. A jump means
trades were missed (a reconnect, a dropped frame): the gap is reported so the collector can fetch
exactly those ids from REST, and refetched trades are admitted only if they fill an open gap.
An id seen before (a duplicated frame, Coinbase's snapshot of recent trades after a resubscribe,
a refetch overlapping live trades) is rejected, so flow signals never count a trade twice.

A jump is not believed on one frame's word. One forged id a billion ahead, taken as the new last
id, would turn every real trade after it into a "duplicate" and report a billion lost. So the
trade that jumps is held as a *suspect*: trades that continue the old sequence are admitted as
usual, and the suspect is adopted (its gap opened, the trade released) only when the stream
confirms the new ids, that is, when a later trade lands a little beyond it. A suspect that the old
sequence reaches or outlives was never real and is discarded. The price of this is one trade's
delay after a real reconnect: the first trade after it waits for the second.

The very first trade of a symbol is counted at once (there is nothing to compare it with), but
its id is only an anchor until its successor arrives: if an older id comes next instead, the
first was forged and the stream's own sequence replaces it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from streams.events import Trade

# Gaps wider than this are not worth paging through REST (1000 ids per page): report them as
# lost instead of spending minutes of rate limit on history the windows barely need.
MAX_REFETCH_IDS = 20_000

# A later trade confirms a suspected jump when it lands at most this far beyond it: after a
# reconnect the stream goes on from the new id (a dropped frame or two aside); a forged id is
# followed by nothing near it.
CONFIRM_SPAN = 1_000
# Suspects held per symbol at most; beyond this the one farthest ahead is discarded.
MAX_SUSPECTS = 8
# A suspect the old sequence keeps running past for this long (event time) is discarded.
SUSPECT_TTL_MS = 60_000


@dataclass(frozen=True, slots=True)
class TradeGap:
    venue: str
    symbol: str
    first_id: int  # first missing id
    last_id: int  # last missing id (inclusive)

    @property
    def size(self) -> int:
        return self.last_id - self.first_id + 1

    @property
    def refetchable(self) -> bool:
        return self.size <= MAX_REFETCH_IDS


Admission = tuple[tuple[Trade, ...], TradeGap | None]
_NONE: Admission = ((), None)


@dataclass(slots=True)
class SymbolContinuity:
    """The id sequence of one (venue, symbol), and the admission of its trades."""

    last_id: int | None = None
    open_gaps: list[list[int]] = field(default_factory=list)  # [first, last, gap] still missing
    remaining: dict[int, int] = field(default_factory=dict)  # gap (its first id) -> ids missing
    suspects: list[Trade] = field(default_factory=list)  # held jumps, by trade id
    anchored: bool = False  # last_id was followed by its successor: a real sequence
    gaps: int = 0
    recovered_gaps: int = 0
    recovered_trades: int = 0
    duplicates: int = 0
    lost_trades: int = 0  # ids given up on (gap too wide to refetch, refetch failed)
    suspects_dropped: int = 0  # jumps never confirmed

    @property
    def missing(self) -> int:
        return sum(hi - lo + 1 for lo, hi, _ in self.open_gaps)

    def admit(self, trade: Trade, live: bool = True) -> Admission:
        """``TradeContinuity.admit`` of a trade of this symbol: the pipeline holds this bound
        method per symbol, so the per-trade path skips the lookup."""
        # ``last_id + 1``, with no test for None: an int never equals None.
        if trade.trade_id - 1 == self.last_id and not self.suspects:
            self.last_id = trade.trade_id
            self.anchored = True
            return (trade,), None
        return self._admit_slow(trade, live)

    def _admit_slow(self, trade: Trade, live: bool) -> Admission:
        trade_id, last = trade.trade_id, self.last_id
        if last is None:  # the first trade: counted, its id an anchor until the next confirms
            if not live:
                return _NONE
            self.last_id = trade_id
            return (trade,), None
        if trade_id <= last:
            if self._fill(trade_id):
                return (trade,), None
            if not self.anchored and live:
                # The first id was not followed by its successor but by an older id: it was
                # the forged one. The stream's own sequence takes over from here.
                self.last_id = trade_id
                self.suspects_dropped += 1
                return (trade,), None
            self.duplicates += 1
            return _NONE
        if not live:  # a REST row ahead of the stream: the stream itself will deliver it
            return _NONE
        if trade_id == last + 1:
            self.last_id = trade_id
            self.anchored = True
            self._prune(trade)
            return (trade,), None
        for i, suspect in enumerate(self.suspects):
            if suspect.trade_id == trade_id:  # the suspect's frame again
                self.duplicates += 1
                return _NONE
            if suspect.trade_id < trade_id <= suspect.trade_id + CONFIRM_SPAN:
                return self._adopt(i, trade)
        self._hold(trade)
        return _NONE

    def _hold(self, trade: Trade) -> None:
        ids = [s.trade_id for s in self.suspects]
        self.suspects.insert(bisect.bisect(ids, trade.trade_id), trade)
        if len(self.suspects) > MAX_SUSPECTS:
            self.suspects.pop()  # the farthest ahead: the least plausible
            self.suspects_dropped += 1

    def _prune(self, newest: Trade) -> None:
        """After the old sequence advanced: suspects it reached were forged (the real trade of
        that id just arrived), and suspects it has outlived for long were never confirmed."""
        keep = [
            s
            for s in self.suspects
            if s.trade_id > newest.trade_id and newest.ts_event - s.ts_event <= SUSPECT_TTL_MS
        ]
        self.suspects_dropped += len(self.suspects) - len(keep)
        self.suspects = keep

    def _adopt(self, index: int, trade: Trade) -> Admission:
        """``trade`` landed just beyond suspect ``index``: the jump was real."""
        suspect = self.suspects.pop(index)
        gap = None
        last = self.last_id
        if last is not None and suspect.trade_id > last + 1:
            missed = TradeGap(trade.venue, trade.symbol, last + 1, suspect.trade_id - 1)
            if self.anchored or missed.refetchable:
                gap = self._open_gap(missed)
            else:  # a lone first id far from the confirmed sequence was no sequence at all
                self.suspects_dropped += 1
        self.last_id = suspect.trade_id
        self.anchored = True
        counted = [suspect]
        # Lower suspects now sit inside the gap just opened: they are some of its trades.
        while self.suspects and self.suspects[0].trade_id < suspect.trade_id:
            held = self.suspects.pop(0)
            if self._fill(held.trade_id):
                counted.append(held)
        counted += self._release()
        if trade.trade_id == self.last_id + 1:
            self.last_id = trade.trade_id
            counted.append(trade)
            counted += self._release()
        else:  # yet another jump: it waits for its own confirmation
            self._hold(trade)
        counted.sort(key=lambda t: t.trade_id)
        return tuple(counted), gap

    def _release(self) -> list[Trade]:
        """Suspects that now continue the confirmed sequence."""
        out = []
        while self.suspects and self.last_id is not None:
            head = self.suspects[0]
            if head.trade_id != self.last_id + 1:
                break
            self.suspects.pop(0)
            self.last_id = head.trade_id
            out.append(head)
        return out

    def _open_gap(self, gap: TradeGap) -> TradeGap:
        self.gaps += 1
        if gap.refetchable:
            self.open_gaps.append([gap.first_id, gap.last_id, gap.first_id])
            self.remaining[gap.first_id] = gap.size
        else:
            self.lost_trades += gap.size
        return gap

    def give_up(self, first_id: int, last_id: int) -> int:
        """``TradeContinuity.give_up`` for this symbol."""
        lost = 0
        for trade_id in range(first_id, last_id + 1):
            if self._fill(trade_id, recovered=False):
                lost += 1
        self.lost_trades += lost
        return lost

    def _fill(self, trade_id: int, recovered: bool = True) -> bool:
        for i, (lo, hi, origin) in enumerate(self.open_gaps):
            if lo <= trade_id <= hi:
                parts = [
                    [a, b, origin] for a, b in ((lo, trade_id - 1), (trade_id + 1, hi)) if a <= b
                ]
                self.open_gaps[i : i + 1] = parts
                self.remaining[origin] -= 1
                done = self.remaining[origin] == 0
                if done:
                    del self.remaining[origin]
                if recovered:
                    self.recovered_trades += 1
                    self.recovered_gaps += done
                return True
        return False


class TradeContinuity:
    def __init__(self) -> None:
        self.symbols: dict[tuple[str, str], SymbolContinuity] = {}

    def admit(self, trade: Trade, live: bool = True) -> Admission:
        """The trades to count now, in id order (usually just ``trade``; none for a duplicate
        or a held suspect; several when a suspect is confirmed), and the gap that revealed,
        if any. A gap too wide to refetch is counted lost at once; a narrower one stays open
        until filled. ``live=False`` (a refetched REST row) only ever fills an open gap."""
        return self.state(trade.venue, trade.symbol).admit(trade, live)

    def state(self, venue: str, symbol: str) -> SymbolContinuity:
        """The sequence of (venue, symbol), created at its first trade."""
        key = (venue, symbol)
        state = self.symbols.get(key)
        if state is None:
            state = self.symbols[key] = SymbolContinuity()
        return state

    def give_up(self, venue: str, symbol: str, first_id: int, last_id: int) -> int:
        """Declare ids in [first_id, last_id] lost (refetch failed); returns how many were open."""
        state = self.symbols.get((venue, symbol))
        return 0 if state is None else state.give_up(first_id, last_id)

    def report(self) -> dict[str, dict[str, int]]:
        return {
            f"{venue}/{symbol}": {
                "gaps": s.gaps,
                "recovered_gaps": s.recovered_gaps,
                "recovered_trades": s.recovered_trades,
                "missing": s.missing,
                "lost": s.lost_trades,
                "duplicates": s.duplicates,
                "suspects": len(s.suspects),
                "suspects_dropped": s.suspects_dropped,
            }
            for (venue, symbol), s in sorted(self.symbols.items())
        }
