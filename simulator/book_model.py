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


class _Side:
    """One side: price -> lots on the grid that the touch determines.

    The grid is kept as its touch and each band's first level, in "keys" (price × ``sign``, so
    that better is always higher and bids and asks share one arithmetic). A step then touches
    only the levels that enter or leave a band's ends, instead of set operations over every
    level of both grids, which were the largest single cost of the simulator at 40x."""

    __slots__ = ("levels", "sign", "steps", "tops", "touch")

    def __init__(self, sign: int, base: int, growth: int) -> None:
        self.sign = sign  # +1 bids (better = higher), -1 asks
        self.steps = tuple(base * growth**band for band in range(BANDS))
        self.touch = 0  # best price; meaningful once ``regrid`` has run
        self.tops: tuple[int, ...] = ()  # key of each band's best level; () before the first
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
        if rank == 0:
            return self.touch
        band, index = divmod(rank - 1, LEVELS_PER_BAND)
        return self.sign * (self.tops[band] - index * self.steps[band])

    def _band_tops(self, touch_key: int) -> tuple[int, ...]:
        tops = []
        edge = touch_key - 1  # the best key the next band may use
        for step in self.steps:
            top = edge - edge % step
            tops.append(top)
            edge = top - LEVELS_PER_BAND * step
        return tuple(tops)

    def _on_grid(self, key: int, touch_key: int, tops: tuple[int, ...]) -> bool:
        if key == touch_key:
            return True
        for top, step in zip(tops, self.steps, strict=True):
            if key > top:
                return False  # between this band and the one above it (or the touch)
            if key > top - LEVELS_PER_BAND * step:
                return (top - key) % step == 0
        return False

    def regrid(self, touch: int, changes: dict[int, int]) -> list[tuple[int, int]]:
        """Move the touch to ``touch``: removed levels go into ``changes``; returns (rank,
        price) of the new levels, best first, which still need a size."""
        sign, levels = self.sign, self.levels
        key, old_key = sign * touch, sign * self.touch
        tops, old_tops = self._band_tops(key), self.tops
        gone = [old_key] if old_tops and old_key != key else []
        came = [(0, key)] if not old_tops or old_key != key else []
        for band, (top, step) in enumerate(zip(tops, self.steps, strict=True)):
            old_top = old_tops[band] if old_tops else None
            if top != old_top:
                _band_changes(band, top, old_top, step, gone, came)
        self.touch, self.tops = touch, tops
        for k in gone:
            if not self._on_grid(k, key, tops):
                del levels[sign * k]
                changes[sign * k] = 0
        return [(rank, sign * k) for rank, k in came if sign * k not in levels]


def _band_changes(
    band: int,
    top: int,
    old_top: int | None,
    step: int,
    gone: list[int],
    came: list[tuple[int, int]],
) -> None:
    """The keys that leave band ``band`` (old first key ``old_top``) into ``gone`` and the
    (rank, key) pairs that enter it (new first key ``top``) into ``came``, ranks ascending.
    Both bands lie on multiples of ``step``, so they differ only at their ends."""
    n = LEVELS_PER_BAND
    first = 1 + band * n  # the rank of the band's first level
    shift = n if old_top is None else (old_top - top) // step  # > 0: moved down, < 0: up
    # Level i of the band (rank first + i) has key top - i * step.
    if old_top is None or not -n < shift < n:
        lo, hi = 0, n  # every level is new
        if old_top is not None:
            gone.extend(range(old_top, old_top - n * step, -step))
    elif shift > 0:
        lo, hi = n - shift, n  # new at the bottom, the old top ones left
        gone.extend(range(old_top, old_top - shift * step, -step))
    else:
        lo, hi = 0, -shift  # new at the top, the old bottom ones left
        gone.extend(range(old_top - (n + shift) * step, old_top - n * step, -step))
    ranks = range(first + lo, first + hi)
    came.extend(zip(ranks, range(top - lo * step, top - hi * step, -step), strict=True))


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
        best_bid = math.floor(mid_ticks)
        new: list[tuple[_Side, int, int]] = []
        for side, touch in ((self.bids, best_bid), (self.asks, best_bid + 1)):
            new += [(side, rank, price) for rank, price in side.regrid(touch, {})]
        self._size_new(new, {}, {})

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
        self.depth = depth
        bid_changes: dict[int, int] = {}
        ask_changes: dict[int, int] = {}
        old_bid, old_ask = self.bids.best, self.asks.best
        best_bid = math.floor(mid_ticks)
        new: list[tuple[_Side, int, int]] = []
        if best_bid != old_bid:
            bid_new = self.bids.regrid(best_bid, bid_changes)
            ask_new = self.asks.regrid(best_bid + 1, ask_changes)
            new = [(self.bids, r, p) for r, p in bid_new] + [(self.asks, r, p) for r, p in ask_new]
        # Trades ate into the touch they hit, if that level is still on the book.
        for side, price, lots, changes in (
            (self.bids, old_bid, sold_lots, bid_changes),
            (self.asks, old_ask, bought_lots, ask_changes),
        ):
            if lots > 0 and price in side.levels:
                left = max(1, side.levels[price] - lots)
                side.levels[price] = left
                changes[price] = left
        self._size_new(new, bid_changes, ask_changes)
        self._refresh(bid_changes, ask_changes)
        return self._event(bid_changes, ask_changes)

    # -- internals --------------------------------------------------------------------------
    # Sizes are drawn with numpy's generator but computed in Python floats: the arrays hold a
    # handful of levels, where each numpy call costs more than the arithmetic. The operations
    # and their order are numpy's (touch × (1 + g·rank) × scale × noise, rounded half to even),
    # so the book is the same, level for level.
    def _level_lots(self, rank: int, noise: float, scale: float) -> int:
        median = self.spec.median_touch_lots * (1.0 + DEPTH_GROWTH_PER_LEVEL * rank) * scale
        return max(1, round(median * noise))

    def _size_new(
        self,
        new: list[tuple[_Side, int, int]],
        bid_changes: dict[int, int],
        ask_changes: dict[int, int],
    ) -> None:
        if not new:
            return
        bid_scale, ask_scale = self.depth
        noise = self.rng.lognormal(0.0, LEVEL_SIGMA, size=len(new)).tolist()
        for (side, rank, price), drawn in zip(new, noise, strict=True):
            bids = side is self.bids
            size = self._level_lots(rank, drawn, bid_scale if bids else ask_scale)
            side.levels[price] = size
            (bid_changes if bids else ask_changes)[price] = size

    def _refresh(self, bid_changes: dict[int, int], ask_changes: dict[int, int]) -> None:
        rng = self.rng
        counts = rng.poisson(REFRESH_MEAN, size=2).tolist()
        n_bids = 1 + counts[0]
        total = n_bids + 1 + counts[1]
        # Squared uniforms put most re-sizing near the touch, where real books churn.
        ranks = [int(LEVELS * (u * u)) for u in rng.random(total).tolist()]
        noise = rng.lognormal(0.0, LEVEL_SIGMA, size=total).tolist()
        bid_scale, ask_scale = self.depth
        for i in range(total):
            bids = i < n_bids
            side, changes = (self.bids, bid_changes) if bids else (self.asks, ask_changes)
            price = side.price_at(ranks[i])
            size = self._level_lots(ranks[i], noise[i], bid_scale if bids else ask_scale)
            side.levels[price] = size
            changes[price] = size

    def _event(self, bid_changes: dict[int, int], ask_changes: dict[int, int]) -> BookStep:
        changes = len(bid_changes) + len(ask_changes)
        previous = self.last_update_id
        if self.id_gaps:
            gaps = self.rng.geometric(0.3, size=2)
            first = previous + 1 + int(gaps[0])  # never previous + 1: only pu links events
            last = first + changes - 1 + int(gaps[1]) - 1
        else:
            first = previous + 1
            last = previous + changes
        self.last_update_id = last
        return BookStep(
            bids=tuple(sorted(bid_changes.items(), reverse=True)),
            asks=tuple(sorted(ask_changes.items())),
            first_id=first,
            last_id=last,
            prev_last_id=previous,
        )
