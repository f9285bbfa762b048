"""A venue's L2 order book as the simulator draws it: integer ticks and lots, no I/O.

Shape. Each side holds the touch (best bid = floor(mid), best ask one tick above) and behind it
``BANDS * LEVELS_PER_BAND`` levels: band k has one at every multiple of ``base * growth**k``
ticks, so the book reaches ~1.2 % or more from the mid (the depth signals look at ±1 %). ``base``
is about 0.13 bp of the price, close to a typical 100 ms move, and levels sit on absolute price
multiples: a move of the touch changes a handful of levels near it and at the band edges
instead of re-pricing the whole side.

Dynamics, once per step (100 ms of event time): the touch follows the venue's mid (spread one
tick), levels that leave the grid are removed (quantity 0 on the wire), new ones get a drawn
size, trades deplete the touch they hit, and a few levels, mostly near the touch, are re-sized.
Quantities are absolute, as on every venue. A step may scale the sizes drawn on each side
(``depth``: 1.0 = calm): the book then thickens or thins as its levels are re-sized (most within
seconds, the far ones within about half a minute), with the same random draws as at 1.0.

Update ids. Binance spot numbers every level change: ``U = previous u + 1`` and ``u = U +
changes - 1``. Binance USDⓈ-M ids advance by random gaps between and inside events (the
matching engine numbers other work too), so only ``pu == previous u`` links events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from operator import itemgetter
from typing import Final

import numpy as np

BANDS: Final = 4
LEVELS_PER_BAND: Final = 50
LEVELS: Final = 1 + BANDS * LEVELS_PER_BAND  # per side, the touch included
MIN_SPAN: Final = 0.012  # the book reaches at least this far from the touch, as a fraction
BASE_STEP_FRACTION: Final = 1.3e-5  # first band's spacing, as a fraction of the price
LEVEL_SIGMA: Final = 0.6  # log-normal shape of resting sizes
DEPTH_GROWTH_PER_LEVEL: Final = 0.1  # level k rests (1 + 0.1 k) times the touch's median size
REFRESH_MEAN: Final = 4.0  # re-sized levels per side per step, beyond one that always is

Level = tuple[int, int]  # (price in ticks, quantity in lots); 0 lots removes the level
_PRICE: Final = itemgetter(0)


@dataclass(frozen=True, slots=True)
class BookSpec:
    """Price and size granularity of one venue's symbol, and its book's shape."""

    tick_exp: int  # tick = 10**-tick_exp
    lot_exp: int  # lot = 10**-lot_exp
    base: int  # the first band has a level every ``base`` ticks
    growth: int  # band k has one every base * growth**k ticks
    median_touch_lots: int  # median size resting at the touch

    @property
    def tick(self) -> float:
        return 10.0**-self.tick_exp

    @property
    def lot(self) -> float:
        return 10.0**-self.lot_exp

    def price(self, ticks: int) -> float:
        return round(ticks / 10**self.tick_exp, self.tick_exp)

    def qty(self, lots: int) -> float:
        return round(lots / 10**self.lot_exp, self.lot_exp)


def book_shape(price: float, tick_exp: int) -> tuple[int, int]:
    """``(base, growth)`` of a book around ``price``: base on a 1-2-5 series near
    ``BASE_STEP_FRACTION`` of the price, growth the smallest that spans ``MIN_SPAN``."""
    ticks = price * 10**tick_exp
    want = max(1.0, ticks * BASE_STEP_FRACTION)
    series = [m * 10**e for e in range(12) for m in (1, 2, 5)]
    base = min(series, key=lambda step: abs(math.log(step / want)))
    growth = 2
    while base * LEVELS_PER_BAND * sum(growth**k for k in range(BANDS)) < MIN_SPAN * ticks:
        growth += 1
    return base, growth


def bid_grid(best_bid: int, base: int, growth: int) -> list[int]:
    """The bid prices (ticks) of a book whose best bid is ``best_bid``, best first."""
    prices = [best_bid]
    edge = best_bid - 1  # the highest price the next band may use
    for band in range(BANDS):
        step = base * growth**band
        top = edge - edge % step
        prices.extend(range(top, top - LEVELS_PER_BAND * step, -step))
        edge = top - LEVELS_PER_BAND * step
    return prices


def ask_grid(best_ask: int, base: int, growth: int) -> list[int]:
    """The ask prices (ticks) of a book whose best ask is ``best_ask``, best first."""
    prices = [best_ask]
    edge = best_ask + 1  # the lowest price the next band may use
    for band in range(BANDS):
        step = base * growth**band
        bottom = edge + -edge % step
        prices.extend(range(bottom, bottom + LEVELS_PER_BAND * step, step))
        edge = bottom + LEVELS_PER_BAND * step
    return prices


@dataclass(frozen=True, slots=True)
class BookStep:
    """One step's changes: what a diff event carries."""

    bids: tuple[Level, ...]  # best first
    asks: tuple[Level, ...]
    first_id: int  # U
    last_id: int  # u
    prev_last_id: int  # pu (the previous event's u)


# Rank r of a side (0: the touch) lies in "band" RANK_BAND[r] of (touch, band 0, band 1, ...)
# and RANK_INDEX[r] levels behind that band's first level: a level's price is then two lookups
# and an addition (``_Side.price_at``), where a divmod and a method call per re-sized level
# cost more than the rest of its work.
RANK_BAND: Final = (0, *(1 + (r - 1) // LEVELS_PER_BAND for r in range(1, LEVELS)))
RANK_INDEX: Final = (0, *((r - 1) % LEVELS_PER_BAND for r in range(1, LEVELS)))


# BookStep's fields in order: (bids, asks, first_id, last_id, prev_last_id)
StepFields = tuple[tuple[Level, ...], tuple[Level, ...], int, int, int]


class _Side:
    """One side: price -> lots on the grid that the touch determines.

    The grid is kept as its touch and each band's first level, in "keys" (price × ``sign``, so
    that better is always higher and bids and asks share one arithmetic). A step then touches
    only the levels that enter or leave a band's ends, instead of set operations over every
    level of both grids, which were the largest single cost of the simulator at 40x."""

    __slots__ = ("firsts", "levels", "offsets", "sign", "steps", "tops", "touch")

    def __init__(self, sign: int, base: int, growth: int) -> None:
        self.sign = sign  # +1 bids (better = higher), -1 asks
        self.steps = tuple(base * growth**band for band in range(BANDS))
        # Price of rank r minus that of its band's first level (0 for the touch).
        steps = (0, *self.steps)
        self.offsets = tuple(
            -sign * i * steps[b] for b, i in zip(RANK_BAND, RANK_INDEX, strict=True)
        )
        self.touch = 0  # best price; meaningful once ``regrid`` has run
        self.tops: tuple[int, ...] = ()  # key of each band's best level; () before the first
        self.firsts: tuple[int, ...] = ()  # prices of (touch, each band's best): by RANK_BAND
        self.levels: dict[int, int] = {}

    @property
    def best(self) -> int:
        return self.touch

    @property
    def grid(self) -> list[int]:
        """The grid's prices, best first (``bid_grid`` / ``ask_grid`` of the touch)."""
        sign = self.sign
        prices = [self.touch]
        for top, step in zip(self.tops, self.steps, strict=True):
            prices.extend(sign * key for key in range(top, top - LEVELS_PER_BAND * step, -step))
        return prices

    def price_at(self, rank: int) -> int:
        """The price of the ``rank``-th level, best first (0: the touch)."""
        return self.firsts[RANK_BAND[rank]] + self.offsets[rank]

    def regrid(self, touch: int, changes: dict[int, int]) -> list[tuple[int, int]]:
        """Move the touch to ``touch``: removed levels go into ``changes``; returns (rank,
        price) of the new levels, best first, which still need a size."""
        sign, levels, steps = self.sign, self.levels, self.steps
        old_tops = self.tops
        gone: list[int] = []  # prices that left the touch or their band
        came: list[tuple[int, int]] = []  # (rank, price) that entered the touch or a band
        if not old_tops or touch != self.touch:
            came.append((0, touch))
            if old_tops:
                gone.append(self.touch)
        tops = list(old_tops) if old_tops else [0] * BANDS
        edge = sign * touch - 1  # the best key the next band may use
        for band, step in enumerate(steps):
            top = edge - edge % step
            old_top = old_tops[band] if old_tops else None
            if top == old_top:
                break  # a band's first level depends only on the one above: none moves further
            tops[band] = top
            _band_changes(band, top, old_top, step, sign, gone, came)
            edge = top - LEVELS_PER_BAND * step
        self.touch, self.tops = touch, tuple(tops)
        self.firsts = (touch, *tops) if sign == 1 else (touch, *[-top for top in tops])
        if gone:
            # The grids' bands are disjoint, so a level that left one place is still on the
            # grid exactly when it entered another (a band next to it, or the touch).
            moved = {price for _, price in came}
            for price in gone:
                if price not in moved:
                    del levels[price]
                    changes[price] = 0
        return [new for new in came if new[1] not in levels]


def _band_changes(
    band: int,
    top: int,
    old_top: int | None,
    step: int,
    sign: int,
    gone: list[int],
    came: list[tuple[int, int]],
) -> None:
    """The prices that leave band ``band`` (old first key ``old_top``) into ``gone`` and the
    (rank, price) pairs that enter it (new first key ``top``) into ``came``, ranks ascending
    (a price is ``sign`` × its key). Both bands lie on multiples of ``step``, so they differ
    only at their ends."""
    n = LEVELS_PER_BAND
    first = 1 + band * n  # the rank of the band's first level
    shift = n if old_top is None else (old_top - top) // step  # > 0: moved down, < 0: up
    # Level i of the band (rank first + i) has key top - i * step: price top_price + i * rung.
    rung = -sign * step
    if old_top is None or not -n < shift < n:
        lo, hi = 0, n  # every level is new
        if old_top is not None:
            old = sign * old_top
            gone.extend(range(old, old + n * rung, rung))
    elif shift > 0:
        lo, hi = n - shift, n  # new at the bottom, the old top ones left
        old = sign * old_top
        gone.extend(range(old, old + shift * rung, rung))
    else:
        lo, hi = 0, -shift  # new at the top, the old bottom ones left
        old = sign * old_top
        gone.extend(range(old + (n + shift) * rung, old + n * rung, rung))
    # (A comprehension: a zip of two ranges with strict=True costs more, for a few levels.)
    top_price = sign * top
    came.extend([(first + i, top_price + i * rung) for i in range(lo, hi)])


class VenueBook:
    """One venue's book of one symbol, stepped by ``step`` with its own random stream."""

    def __init__(
        self,
        spec: BookSpec,
        mid_ticks: float,
        rng: np.random.Generator,
        first_update_id: int,
        *,
        id_gaps: bool,
    ) -> None:
        self.spec = spec
        self.rng = rng
        self.id_gaps = id_gaps  # USDⓈ-M: ids advance by random gaps, pu links events
        self.last_update_id = first_update_id
        self.bids = _Side(1, spec.base, spec.growth)
        self.asks = _Side(-1, spec.base, spec.growth)
        self.depth = (1.0, 1.0)  # (bid, ask) scale of the sizes drawn, set by each step
        # The median size of rank r at scale 1.0, the first factor of every size drawn.
        self._medians = tuple(
            spec.median_touch_lots * (1.0 + DEPTH_GROWTH_PER_LEVEL * rank) for rank in range(LEVELS)
        )
        best_bid = math.floor(mid_ticks)
        bid_new = self.bids.regrid(best_bid, {})
        ask_new = self.asks.regrid(best_bid + 1, {})
        self._size_new(bid_new, ask_new, {}, {})

    @property
    def best_bid(self) -> Level:
        price = self.bids.best
        return price, self.bids.levels[price]

    @property
    def best_ask(self) -> Level:
        price = self.asks.best
        return price, self.asks.levels[price]

    def levels(self, bids: bool, limit: int | None = None) -> list[Level]:
        """The side's levels, best first, at most ``limit`` of them."""
        side = self.bids if bids else self.asks
        grid = side.grid if limit is None else side.grid[:limit]
        return [(price, side.levels[price]) for price in grid]

    def step(
        self,
        mid_ticks: float,
        bought_lots: int,
        sold_lots: int,
        depth: tuple[float, float] = (1.0, 1.0),
    ) -> BookStep:
        """Follow ``mid_ticks``; ``bought_lots`` were taken from the best ask and ``sold_lots``
        from the best bid since the last step. ``depth`` scales the (bid, ask) sizes drawn from
        now on (1.0: calm)."""
        return BookStep(*self.step_fields(mid_ticks, bought_lots, sold_lots, depth))

    def step_fields(
        self,
        mid_ticks: float,
        bought_lots: int,
        sold_lots: int,
        depth: tuple[float, float] = (1.0, 1.0),
    ) -> StepFields:
        """``step``'s fields, in their order, without the ``BookStep``: the market model puts
        them straight into its ``DepthTick`` (a frozen dataclass costs a few µs to build)."""
        self.depth = depth
        bids, asks = self.bids, self.asks
        bid_changes: dict[int, int] = {}
        ask_changes: dict[int, int] = {}
        old_bid, old_ask = bids.touch, asks.touch
        best_bid = math.floor(mid_ticks)
        if best_bid != old_bid:
            bid_new = bids.regrid(best_bid, bid_changes)
            ask_new = asks.regrid(best_bid + 1, ask_changes)
        else:
            bid_new = ask_new = []
        # Trades ate into the touch they hit, if that level is still on the book.
        if sold_lots > 0 and old_bid in bids.levels:
            left = max(1, bids.levels[old_bid] - sold_lots)
            bids.levels[old_bid] = bid_changes[old_bid] = left
        if bought_lots > 0 and old_ask in asks.levels:
            left = max(1, asks.levels[old_ask] - bought_lots)
            asks.levels[old_ask] = ask_changes[old_ask] = left
        self._size_new(bid_new, ask_new, bid_changes, ask_changes)
        self._refresh(bid_changes, ask_changes)
        return self._event(bid_changes, ask_changes)

    # -- internals --------------------------------------------------------------------------
    # Sizes are drawn with numpy's generator but computed in Python floats: the arrays hold a
    # handful of levels, where each numpy call costs more than the arithmetic. The operations
    # and their order are numpy's (touch × (1 + g·rank) × scale × noise, rounded half to even),
    # so the book is the same, level for level.
    def _size_new(
        self,
        bid_new: list[tuple[int, int]],
        ask_new: list[tuple[int, int]],
        bid_changes: dict[int, int],
        ask_changes: dict[int, int],
    ) -> None:
        """Draw a size for each new (rank, price) of each side, bids first (one draw)."""
        n_bids = len(bid_new)
        total = n_bids + len(ask_new)
        if not total:
            return  # no draw: an empty draw leaves the stream where it is
        noise = self.rng.lognormal(0.0, LEVEL_SIGMA, size=total).tolist()
        bid_scale, ask_scale = self.depth
        medians = self._medians
        for side, new, changes, scale, start in (
            (self.bids, bid_new, bid_changes, bid_scale, 0),
            (self.asks, ask_new, ask_changes, ask_scale, n_bids),
        ):
            levels = side.levels
            for i, (rank, price) in enumerate(new, start):
                size = round(medians[rank] * scale * noise[i])
                levels[price] = changes[price] = size if size > 1 else 1

    def _refresh(self, bid_changes: dict[int, int], ask_changes: dict[int, int]) -> None:
        rng = self.rng
        counts = rng.poisson(REFRESH_MEAN, size=2).tolist()
        n_bids = 1 + counts[0]
        total = n_bids + 1 + counts[1]
        # Squared uniforms put most re-sizing near the touch, where real books churn.
        ranks = [int(LEVELS * (u * u)) for u in rng.random(total).tolist()]
        noise = rng.lognormal(0.0, LEVEL_SIGMA, size=total).tolist()
        bid_scale, ask_scale = self.depth
        medians, rank_band = self._medians, RANK_BAND
        for side, changes, scale, lo, hi in (
            (self.bids, bid_changes, bid_scale, 0, n_bids),
            (self.asks, ask_changes, ask_scale, n_bids, total),
        ):
            firsts, offsets, levels = side.firsts, side.offsets, side.levels
            for i in range(lo, hi):
                rank = ranks[i]
                price = firsts[rank_band[rank]] + offsets[rank]
                size = round(medians[rank] * scale * noise[i])
                levels[price] = changes[price] = size if size > 1 else 1

    def _event(self, bid_changes: dict[int, int], ask_changes: dict[int, int]) -> StepFields:
        changes = len(bid_changes) + len(ask_changes)
        previous = self.last_update_id
        if self.id_gaps:
            gap_first, gap_last = self.rng.geometric(0.3, size=2).tolist()
            first = previous + 1 + gap_first  # never previous + 1: only pu links events
            last = first + changes - 1 + gap_last - 1
        else:
            first = previous + 1
            last = previous + changes
        self.last_update_id = last
        # By price alone (prices are unique): a fifth cheaper than comparing the pairs.
        bids = tuple(sorted(bid_changes.items(), key=_PRICE, reverse=True))
        return bids, tuple(sorted(ask_changes.items(), key=_PRICE)), first, last, previous
