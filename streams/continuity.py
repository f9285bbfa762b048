"""Trade-id continuity: every trade counted once, missing ones found and asked for.

Binance aggregate-trade ids and Coinbase trade ids rise by one per trade and symbol. A jump means
trades were missed (a reconnect, a dropped frame): the gap is reported so the collector can fetch
exactly those ids from REST, and backfilled trades are admitted only if they fill an open gap.
An id seen before (a duplicated frame, Coinbase's snapshot of recent trades after a resubscribe,
a backfill overlapping live trades) is rejected, so flow signals never count a trade twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Gaps wider than this are not worth paging through REST (1000 ids per page): report them as
# lost instead of spending minutes of rate limit on history the windows barely need.
MAX_BACKFILL_IDS = 20_000


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
    def backfillable(self) -> bool:
        return self.size <= MAX_BACKFILL_IDS


@dataclass
class SymbolContinuity:
    last_id: int | None = None
    open_gaps: list[list[int]] = field(default_factory=list)  # [first, last, gap] still missing
    remaining: dict[int, int] = field(default_factory=dict)  # gap (its first id) -> ids missing
    gaps: int = 0
    recovered_gaps: int = 0
    recovered_trades: int = 0
    duplicates: int = 0
    lost_trades: int = 0  # ids given up on (gap too wide to backfill)

    @property
    def missing(self) -> int:
        return sum(hi - lo + 1 for lo, hi, _ in self.open_gaps)


class TradeContinuity:
    def __init__(self) -> None:
        self.symbols: dict[tuple[str, str], SymbolContinuity] = {}

    def admit(self, venue: str, symbol: str, trade_id: int) -> tuple[bool, TradeGap | None]:
        """Whether to count this trade, and the gap its arrival revealed (if any). A gap too
        wide to backfill is counted lost at once; a narrower one stays open until filled."""
        state = self.symbols.get((venue, symbol))
        if state is None:
            state = self.symbols[(venue, symbol)] = SymbolContinuity()
        last = state.last_id
        if last is None or trade_id == last + 1:
            state.last_id = trade_id
            return True, None
        if trade_id > last + 1:
            state.last_id = trade_id
            state.gaps += 1
            gap = TradeGap(venue, symbol, last + 1, trade_id - 1)
            if gap.backfillable:
                state.open_gaps.append([gap.first_id, gap.last_id, gap.first_id])
                state.remaining[gap.first_id] = gap.size
            else:
                state.lost_trades += gap.size
            return True, gap
        if self._fill(state, trade_id):
            return True, None
        state.duplicates += 1
        return False, None

    def give_up(self, venue: str, symbol: str, first_id: int, last_id: int) -> int:
        """Declare ids in [first_id, last_id] lost (backfill failed); returns how many were open."""
        state = self.symbols.get((venue, symbol))
        if state is None:
            return 0
        lost = 0
        for trade_id in range(first_id, last_id + 1):
            if self._fill(state, trade_id, recovered=False):
                lost += 1
        state.lost_trades += lost
        return lost

    @staticmethod
    def _fill(state: SymbolContinuity, trade_id: int, recovered: bool = True) -> bool:
        for i, (lo, hi, origin) in enumerate(state.open_gaps):
            if lo <= trade_id <= hi:
                parts = [
                    [a, b, origin] for a, b in ((lo, trade_id - 1), (trade_id + 1, hi)) if a <= b
                ]
                state.open_gaps[i : i + 1] = parts
                state.remaining[origin] -= 1
                done = state.remaining[origin] == 0
                if done:
                    del state.remaining[origin]
                if recovered:
                    state.recovered_trades += 1
                    state.recovered_gaps += done
                return True
        return False

    def report(self) -> dict[str, dict[str, int]]:
        return {
            f"{venue}/{symbol}": {
                "gaps": s.gaps,
                "recovered_gaps": s.recovered_gaps,
                "recovered_trades": s.recovered_trades,
                "missing": s.missing,
                "lost": s.lost_trades,
                "duplicates": s.duplicates,
            }
            for (venue, symbol), s in sorted(self.symbols.items())
        }
