"""A deterministic multi-venue crypto market: Binance USDⓈ-M, Binance spot and Coinbase.

Pure: no I/O, no wall clock, no asyncio. The only input is event time (ms since epoch) handed to
``MarketModel.advance``; the only randomness is ``numpy.random.Generator`` streams seeded from
``seed`` (one per asset and venue, so adding one never changes another's market).

Per asset there is one "fair" price path. Around it:

- the USDⓈ-M perp's mid is fair x (1 + funding above its base rate), and its 1 s mark updates
  carry fair as the index price;
- Binance spot's mid is fair;
- Coinbase's mid is Binance spot's plus the phase's premium (approached with a 3 s time constant,
  so phase changes glide instead of jumping).

Each venue has an L2 book (``book_model``) that follows its mid every ``STEP_MS``; trades in a
step print at that venue's touch as the last book update left it (a taker buy at the best ask, a
sell at the best bid) and deplete it. Binance spot's quote volume is the perp's divided by the
phase's ``perp_spot_volume``; Coinbase trades ``COINBASE_SHARE_OF_SPOT`` of spot's. A phase's
``activity`` scales every venue's trade rate and its ``bid_depth`` / ``ask_depth`` the sizes the
books draw on each side (all 1.0 in calm and selling, which then draw exactly as before).

Event time is cut into steps aligned on multiples of ``STEP_MS``. A step's trades, book update,
liquidation, positioning and (on whole seconds) mark update are drawn in one go the first time
any part of it is needed, in a fixed order, so the output depends only on the seed and on how far
time has advanced, not on how the caller chopped time into ``advance`` calls.

Coinbase also lists ``USDT-USD`` (``USDT_USD``), the price of one USDT in US dollars that the
USDT-adjusted premium converts Binance's prices with: trades and a book around a rate that
wanders in 1.0001-1.0004, pulled back to its centre, with its own random stream and no phases.

Taker side follows Binance's ``m`` flag: ``buyer_is_maker=True`` means the taker SOLD (on
Coinbase the wire's ``side`` is the maker's: "BUY" exactly when ``buyer_is_maker``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

from simulator.book_model import BookSpec, Level, VenueBook, book_shape
from simulator.positioning import Positioning, PositionRow
from simulator.scenarios import (
    CALM,
    CALM_FUNDING,
    SCENARIOS,
    SELL_WAVE_CYCLE_MS,
    Phase,
    PhaseFn,
    Premium,
    phase_function,
)
from streams.events import BINANCE_SPOT, BINANCE_USDM, COINBASE
from streams.units import HOUR_MS, SECOND_MS

__all__ = [
    "DEFAULT_SYMBOLS",
    "FUNDING_INTERVAL_MS",
    "SCENARIOS",
    "SELL_WAVE_CYCLE_MS",
    "USDT_USD",
    "VENUES",
    "Asset",
    "DepthTick",
    "LiquidationTick",
    "MarkTick",
    "MarketModel",
    "Premium",
    "QuoteTick",
    "Tick",
    "TradeTick",
    "VenueSpec",
]

DEFAULT_SYMBOLS: Final[Mapping[str, float]] = {"BTCUSDT": 78000.0, "ETHUSDT": 2500.0}
VENUES: Final = (BINANCE_USDM, BINANCE_SPOT, COINBASE)  # generation order within a step

STEP_MS: Final = 100  # book updates (Binance @depth@100ms) and trade draws happen per step
MARK_EVERY_MS: Final = SECOND_MS
FUNDING_INTERVAL_MS: Final = 8 * HOUR_MS  # 00/08/16 UTC; epoch midnight is a multiple

VOL_BP_PER_S: Final = 2.0  # standard deviation of log fair price per second, in basis points
SIZE_SIGMA: Final = 0.9  # log-normal shape of trade sizes; same for buyers and sellers
FUNDING_TAU_S: Final = 10.0  # funding approaches its phase target with this time constant
FUNDING_NOISE: Final = 2e-7  # per-second jitter of the predicted funding rate
PREMIUM_TAU_S: Final = 3.0  # the Coinbase premium approaches its phase target this fast
MARK_AVG_ALPHA: Final = 2 / 61  # "ap": a one-minute exponential average of the mark price
MAX_PUSH_LAG_MS: Final = 3  # E - T: Binance pushes an aggregate a few ms after its trade time
COINBASE_SHARE_OF_SPOT: Final = 0.4  # Coinbase quote volume / Binance spot quote volume
TOUCH_NOTIONAL_PER_TRADE: Final = 40.0  # resting size at the touch, in median trades
LIQUIDATION_MEDIAN_USD: Final = 25_000.0
LIQUIDATION_SIGMA: Final = 1.0
LIQUIDATION_LIMIT_SLIP: Final = 0.005  # a liquidation order's limit is this far through the book

# Coinbase USDT-USD: USD per USDT. Off its peg by a few basis points, as USDT usually trades,
# and moving by well under a basis point a minute (std ~0.5 bp around the centre).
USDT_USD: Final = "USDT-USD"
USDT_USD_CENTRE: Final = 1.00025
USDT_USD_MID_RANGE: Final = (1.0001, 1.00039)  # the mid's range: trades print in 1.0001-1.0004
USDT_USD_NOISE_PER_S: Final = 1e-5  # standard deviation of the rate's move per sqrt(second)
USDT_USD_TAU_S: Final = 60.0  # the rate returns to the centre with this time constant
USDT_USD_TRADES_PER_S: Final = 3.0
USDT_USD_MEDIAN_QTY: Final = 500.0  # USDT per trade
_USDT_STREAM: Final = 1_000_003  # key of its random streams: beyond any asset index

# USDⓈ-M calibration (aggregates per second and median notional per aggregate, in USDT).
_PERP_RATES: Final[Mapping[str, float]] = {"BTCUSDT": 20.0, "ETHUSDT": 12.0}
_PERP_MEDIAN_NOTIONAL: Final[Mapping[str, float]] = {"BTCUSDT": 1500.0, "ETHUSDT": 1000.0}
_SPOT_MEDIAN_NOTIONAL: Final[Mapping[str, float]] = {"BTCUSDT": 800.0, "ETHUSDT": 600.0}
_COINBASE_MEDIAN_NOTIONAL: Final = 400.0
_DEFAULT_RATE: Final = 8.0
_DEFAULT_MEDIAN_NOTIONAL: Final = 500.0
_FILL_P: Final[Mapping[str, float]] = {BINANCE_USDM: 0.6, BINANCE_SPOT: 0.5, COINBASE: 1.0}
# Where each venue's ids start: realistic magnitudes catch 32-bit and float-parsing mistakes.
_FIRST_IDS: Final[Mapping[str, tuple[int, int, int]]] = {  # (aggregate, trade, book update)
    BINANCE_USDM: (2_400_000_000, 5_800_000_000, 7_300_000_000_000),
    BINANCE_SPOT: (3_100_000_000, 4_500_000_000, 62_000_000_000),
    COINBASE: (1_068_000_000, 1_068_000_000, 0),
}


# -- ticks ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TradeTick:
    """One trade: a Binance aggregate (``aggTrade``; ``@trade`` splits it into ``first_id`` ..
    ``last_id``) or one Coinbase match (``agg_id`` is its trade_id, first = last = agg_id)."""

    venue: str  # streams.events venue name
    symbol: str  # venue symbol: BTCUSDT (both Binance venues) or BTC-USD
    event_ms: int  # E: when the venue pushed it
    trade_ms: int  # T: when it traded (E - T is 0..3 ms)
    agg_id: int  # a
    first_id: int  # f
    last_id: int  # l
    price: float  # on the venue's tick
    qty: float  # on the venue's lot
    buyer_is_maker: bool  # m: True means the taker sold

    @property
    def notional(self) -> float:
        return self.price * self.qty


@dataclass(frozen=True, slots=True)
class MarkTick:
    """One USDⓈ-M ``markPriceUpdate`` (the ``@markPrice@1s`` stream)."""

    symbol: str
    event_ms: int  # E, a whole second
    mark_price: float  # p
    index_price: float  # i (also used for P, the estimated settle price)
    mark_avg: float  # ap
    funding_rate: float  # r, predicted rate for the next settlement, as a fraction
    next_funding_ms: int  # T


@dataclass(frozen=True, slots=True)
class LiquidationTick:
    """One USDⓈ-M ``forceOrder`` snapshot (at most one per symbol per second)."""

    symbol: str
    event_ms: int  # E and o.T
    side: str  # "SELL" closes a long, "BUY" closes a short
    price: float  # o.p, the order's limit
    avg_price: float  # o.ap
    qty: float  # o.q = o.l = o.z (filled at once)


@dataclass(frozen=True, slots=True)
class DepthTick:
    """One book update of a venue, in integer ticks and lots (see ``VenueSpec.book``)."""

    venue: str
    symbol: str
    event_ms: int  # E (and T on USDⓈ-M), a multiple of STEP_MS
    first_id: int  # U
    last_id: int  # u
    prev_last_id: int  # pu
    bids: tuple[Level, ...]  # (price ticks, lots); 0 lots removes the level
    asks: tuple[Level, ...]


@dataclass(frozen=True, slots=True)
class QuoteTick:
    """Top of a venue's book after the update ``update_id`` changed it (``bookTicker``)."""

    venue: str
    symbol: str
    event_ms: int
    update_id: int
    bid: Level
    ask: Level


Tick = TradeTick | MarkTick | LiquidationTick | DepthTick | QuoteTick


# -- static description -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Asset:
    """One asset and its symbol on each venue."""

    name: str  # BTC
    price: float  # start price
    binance: str  # BTCUSDT, both on spot and USDⓈ-M
    coinbase: str  # BTC-USD


@dataclass(frozen=True, slots=True)
class VenueSpec:
    """Precision, wire formatting and activity of one symbol on one venue."""

    venue: str
    symbol: str
    book: BookSpec
    price_decimals: int  # decimals the venue prints prices with (Coinbase: trimmed)
    qty_decimals: int
    trades_per_s: float  # calm rate (spot and Coinbase scale with the phase)
    median_qty: float
    fill_p: float  # geometric parameter of fills per aggregate (1.0: one fill)

    @property
    def tick_size(self) -> float:
        return self.book.tick

    def ticks(self, price: float) -> float:
        return price * 10**self.book.tick_exp


def assets_from_symbols(symbols: Mapping[str, float]) -> list[Asset]:
    """``{"BTCUSDT": 78000.0}`` -> BTC on BTCUSDT (both Binance venues) and BTC-USD."""
    out = []
    for symbol, price in symbols.items():
        if not price > 0:
            raise ValueError(f"start price of {symbol} must be positive, got {price!r}")
        if not symbol.endswith("USDT") or len(symbol) <= 4:
            raise ValueError(f"{symbol!r} is not a <BASE>USDT symbol")
        base = symbol[:-4]
        out.append(Asset(base, float(price), symbol, f"{base}-USD"))
    return out


def _magnitude(price: float) -> int:
    return math.floor(math.log10(price))


def venue_specs(asset: Asset) -> dict[str, VenueSpec]:
    """Exchange-like precision of each venue: 78000 -> perp tick 0.1, spot/Coinbase 0.01."""
    price, sym = asset.price, asset.binance
    perp_tick_exp = max(0, 5 - _magnitude(price))  # 78000 -> 0.1, 2500 -> 0.01, as on Binance
    fine_tick_exp = max(2, perp_tick_exp)
    perp_notional = _PERP_MEDIAN_NOTIONAL.get(sym, _DEFAULT_MEDIAN_NOTIONAL)
    spot_notional = _SPOT_MEDIAN_NOTIONAL.get(sym, _DEFAULT_MEDIAN_NOTIONAL / 2)
    perp_rate = _PERP_RATES.get(sym, _DEFAULT_RATE)
    spot_rate = perp_rate * perp_notional / (CALM.perp_spot_volume * spot_notional)
    cb_rate = spot_rate * COINBASE_SHARE_OF_SPOT * spot_notional / _COINBASE_MEDIAN_NOTIONAL
    layout = (
        # venue, symbol, tick exp, lot exp, printed price / qty decimals, rate, median notional
        (BINANCE_USDM, sym, perp_tick_exp, 3, max(2, perp_tick_exp), 3, perp_rate, perp_notional),
        (BINANCE_SPOT, sym, fine_tick_exp, _magnitude(price) + 1, 8, 8, spot_rate, spot_notional),
        (
            COINBASE,
            asset.coinbase,
            fine_tick_exp,
            8,
            fine_tick_exp,
            8,
            cb_rate,
            _COINBASE_MEDIAN_NOTIONAL,
        ),
    )
    specs = {}
    for venue, symbol, tick_exp, lot_exp, price_dec, qty_dec, rate, notional in layout:
        lot = 10.0**-lot_exp
        touch_lots = max(1, round(TOUCH_NOTIONAL_PER_TRADE * notional / price / lot))
        specs[venue] = VenueSpec(
            venue=venue,
            symbol=symbol,
            book=BookSpec(tick_exp, lot_exp, *book_shape(price, tick_exp), touch_lots),
            price_decimals=price_dec,
            qty_decimals=qty_dec,
            trades_per_s=rate,
            median_qty=max(lot, notional / price),
            fill_p=_FILL_P[venue],
        )
    return specs


def usdt_usd_spec() -> VenueSpec:
    """Coinbase USDT-USD as listed: price increment 0.00001, size increment 0.01."""
    tick_exp, lot_exp = 5, 2
    touch_notional = TOUCH_NOTIONAL_PER_TRADE * USDT_USD_MEDIAN_QTY
    touch_lots = max(1, round(touch_notional / USDT_USD_CENTRE * 10**lot_exp))
    return VenueSpec(
        venue=COINBASE,
        symbol=USDT_USD,
        book=BookSpec(tick_exp, lot_exp, *book_shape(USDT_USD_CENTRE, tick_exp), touch_lots),
        price_decimals=tick_exp,
        qty_decimals=lot_exp,
        trades_per_s=USDT_USD_TRADES_PER_S,
        median_qty=USDT_USD_MEDIAN_QTY,
        fill_p=_FILL_P[COINBASE],
    )


def next_funding_ms(event_ms: int) -> int:
    """The next 00:00, 08:00 or 16:00 UTC strictly after ``event_ms``."""
    return (event_ms // FUNDING_INTERVAL_MS + 1) * FUNDING_INTERVAL_MS


# -- the moving parts -------------------------------------------------------------------------
class _VenueFlow:
    """Trades and the book of one asset on one venue."""

    def __init__(
        self, spec: VenueSpec, mid: float, seed: int, asset_index: int, venue_index: int
    ) -> None:
        self.spec = spec
        self.rng = np.random.Generator(np.random.PCG64([seed, asset_index, venue_index]))
        first_agg, first_trade, first_update = _FIRST_IDS[spec.venue]
        self.next_agg_id = first_agg
        self.next_trade_id = first_trade
        self.last_event_ms = 0
        self.book = VenueBook(
            spec.book,
            spec.ticks(mid),
            np.random.Generator(np.random.PCG64([seed, asset_index, venue_index, 1])),
            first_update,
            id_gaps=spec.venue == BINANCE_USDM,
        )
        self.bought_lots = 0  # taken from the best ask since the last book update
        self.sold_lots = 0
        self.last_top: tuple[Level, Level] = (self.book.best_bid, self.book.best_ask)

    def trades(self, times: list[int], buy_share_at: list[float]) -> list[TradeTick]:
        """Trades at ``times`` (drawn by the caller from this flow's rng), the i-th taker buying
        with probability ``buy_share_at[i]``, at the touch the last book update left."""
        spec, rng = self.spec, self.rng
        count = len(times)
        if not count:
            return []  # no draws: an empty draw leaves the stream where it is
        # Python lists, not arrays, in the loop below: indexing an array costs more than the
        # loop's arithmetic. Same draws, same values.
        sides = rng.random(count).tolist()
        sizes = rng.lognormal(math.log(spec.median_qty), SIZE_SIGMA, size=count).tolist()
        fills = rng.geometric(spec.fill_p, size=count).tolist() if spec.fill_p < 1 else [1] * count
        lags = _integers(rng, 0, MAX_PUSH_LAG_MS + 1, count)
        book = spec.book
        bid_price = book.price(self.book.bids.best)
        ask_price = book.price(self.book.asks.best)
        venue, symbol = spec.venue, spec.symbol
        lot_exp = book.lot_exp
        scale = 10**lot_exp
        bought = sold = 0
        last_event_ms = self.last_event_ms
        agg_id, trade_id = self.next_agg_id, self.next_trade_id
        out = []
        for i in range(count):
            trade_ms = times[i]
            taker_buys = sides[i] < buy_share_at[i]
            lots = max(1, round(sizes[i] * scale))
            n_fills = min(fills[i], lots)
            if taker_buys:
                bought += lots
            else:
                sold += lots
            # E never goes backwards, so frames in push order also have increasing ids.
            event_ms = max(trade_ms + lags[i], last_event_ms)
            last_event_ms = event_ms
            # Positional (the fields' order), and the quantity as ``book.qty`` computes it:
            # a keyword call and a method call per trade cost as much as the rest of it.
            out.append(
                TradeTick(
                    venue,
                    symbol,
                    event_ms,
                    trade_ms,
                    agg_id,
                    trade_id,
                    trade_id + n_fills - 1,
                    ask_price if taker_buys else bid_price,
                    round(lots / scale, lot_exp),
                    not taker_buys,
                )
            )
            agg_id += 1
            trade_id += n_fills
        self.bought_lots += bought
        self.sold_lots += sold
        self.last_event_ms = last_event_ms
        self.next_agg_id, self.next_trade_id = agg_id, trade_id
        return out

    def book_update(
        self, end: int, mid: float, depth: tuple[float, float] = (1.0, 1.0)
    ) -> list[Tick]:
        spec = self.spec
        bids, asks, first_id, last_id, prev_last_id = self.book.step_fields(
            spec.ticks(mid), self.bought_lots, self.sold_lots, depth
        )
        self.bought_lots = self.sold_lots = 0
        out: list[Tick] = [
            DepthTick(spec.venue, spec.symbol, end, first_id, last_id, prev_last_id, bids, asks)
        ]
        top = (self.book.best_bid, self.book.best_ask)
        if top != self.last_top:
            self.last_top = top
            out.append(QuoteTick(spec.venue, spec.symbol, end, last_id, top[0], top[1]))
        return out


class _AssetState:
    """The evolving market of one asset on every venue."""

    def __init__(self, asset: Asset, index: int, seed: int, start_ms: int) -> None:
        self.asset = asset
        self.specs = venue_specs(asset)
        # The asset's own stream drives the fair path, funding, premium noise, liquidations.
        self.rng = np.random.Generator(np.random.PCG64([seed, index]))
        self.anchor_log = math.log(asset.price)
        self.log_fair = self.anchor_log
        self.funding = CALM_FUNDING
        self.mark_avg = asset.price
        self.premium_usd = CALM.premium.usd(asset.price)
        self.last_mark_ms = start_ms
        self.last_liquidation_s = -1  # the second of the last forceOrder snapshot
        self.slot_start = start_ms  # steps are (slot_start, slot_end]
        self.flows = {
            venue: _VenueFlow(self.specs[venue], self._mid(venue), seed, index, i + 1)
            for i, venue in enumerate(VENUES)
        }
        perp = self.specs[BINANCE_USDM]
        base_vol = perp.trades_per_s * perp.median_qty * math.exp(SIZE_SIGMA**2 / 2)
        self.positioning = Positioning(
            asset.price,
            base_vol,
            np.random.Generator(np.random.PCG64([seed, index, 99])),
            start_ms,
            CALM.long_account_target,
        )
        self.pending: list[Tick] = []

    def _mid(self, venue: str) -> float:
        fair = math.exp(self.log_fair)
        if venue == BINANCE_USDM:
            # Funding above its base rate means the perp trades at a premium to the index.
            return fair * (1.0 + self.funding - CALM_FUNDING)
        if venue == BINANCE_SPOT:
            return fair
        return fair + self.premium_usd

    # -- one step ---------------------------------------------------------------------------
    def fill_step(self, start_ms: int, phase_at: PhaseFn) -> None:
        """Draw everything of ``(slot_start, slot_end]``."""
        begin = self.slot_start
        end = (begin // STEP_MS + 1) * STEP_MS
        dt = (end - begin) / 1000.0
        phase = phase_at(begin - start_ms)
        for venue, flow in self.flows.items():
            self._trades(flow, venue, begin, end, phase, start_ms, phase_at)
        self._maybe_liquidate(begin, end, phase)
        after = phase_at(end - start_ms)
        self._walk(dt, after)
        depth = (after.bid_depth, after.ask_depth)
        for flow_venue, flow in self.flows.items():
            self.pending.extend(flow.book_update(end, self._mid(flow_venue), depth))
        if end % MARK_EVERY_MS == 0:
            self.pending.append(self._mark(end, phase_at(end - start_ms)))
        self.positioning.close_rows(end, self._mid(BINANCE_USDM))
        self.slot_start = end

    def _rate(self, venue: str, phase: Phase) -> float:
        spec = self.specs[venue]
        if venue == BINANCE_USDM:
            return spec.trades_per_s * phase.activity
        # Spot's share of volume follows the phase; Coinbase keeps its share of spot.
        return spec.trades_per_s * CALM.perp_spot_volume / phase.perp_spot_volume * phase.activity

    def _trades(
        self,
        flow: _VenueFlow,
        venue: str,
        begin: int,
        end: int,
        phase: Phase,
        start_ms: int,
        phase_at: PhaseFn,
    ) -> None:
        rng = flow.rng
        # Trades fall strictly inside the step: the book update at `end` comes after them.
        rate = self._rate(venue, phase)
        count = int(rng.poisson(rate * (end - begin) / 1000.0)) if end - begin > 1 else 0
        times = _trade_times(rng, begin, end, count)
        shares = [_buy_share(phase_at(t - start_ms), venue) for t in times]
        trades = flow.trades(times, shares)
        if venue == BINANCE_USDM:
            for trade in trades:
                self.positioning.trade(trade.qty, not trade.buyer_is_maker)
        self.pending.extend(trades)

    def _maybe_liquidate(self, begin: int, end: int, phase: Phase) -> None:
        rng = self.rng
        draws = rng.random(3)
        size_shock = float(rng.standard_normal())
        second = (end - 1) // 1000
        if second == self.last_liquidation_s or end - begin <= 1:
            return  # the stream pushes at most one snapshot per symbol per second
        if draws[0] >= 1.0 - math.exp(-phase.liquidations_per_s * (end - begin) / 1000.0):
            return
        self.last_liquidation_s = second
        flow = self.flows[BINANCE_USDM]
        spec = flow.spec
        long_closed = bool(draws[1] < phase.long_liquidation_share)
        notional = LIQUIDATION_MEDIAN_USD * math.exp(LIQUIDATION_SIGMA * size_shock)
        lots = max(1, round(notional / math.exp(self.log_fair) / spec.book.lot))
        qty = spec.book.qty(lots)
        # A SELL order (long closed) sells into the bids; its limit lies below them.
        touch = flow.book.bids.best if long_closed else flow.book.asks.best
        avg = spec.book.price(touch)
        slip = 1.0 - LIQUIDATION_LIMIT_SLIP if long_closed else 1.0 + LIQUIDATION_LIMIT_SLIP
        limit = round(avg * slip, spec.book.tick_exp)
        at = begin + 1 + int(draws[2] * 1e6) % max(1, end - begin - 1)
        self.pending.append(
            LiquidationTick(spec.symbol, at, "SELL" if long_closed else "BUY", limit, avg, qty)
        )
        self.positioning.liquidated(qty)

    def _walk(self, dt: float, phase: Phase) -> None:
        """Move the fair price, the Coinbase premium and positioning over ``dt`` seconds."""
        shocks = self.rng.standard_normal(2)
        pull = -phase.reversion_per_s * (self.log_fair - self.anchor_log)
        drift = phase.drift_bp_per_s * 1e-4 + pull
        self.log_fair += drift * dt + VOL_BP_PER_S * 1e-4 * math.sqrt(dt) * float(shocks[0])
        target = phase.premium.usd(math.exp(self.log_fair))
        self.premium_usd = target + (self.premium_usd - target) * math.exp(-dt / PREMIUM_TAU_S)
        self.positioning.step(
            dt,
            phase.oi_drift_per_s,
            reverting=phase.reversion_per_s > 0,
            long_target=phase.long_account_target,
            shock=float(shocks[1]),
        )

    def _mark(self, end_ms: int, phase: Phase) -> MarkTick:
        fraction = (end_ms - self.last_mark_ms) / 1000.0
        self.last_mark_ms = end_ms
        keep = math.exp(-fraction / FUNDING_TAU_S)
        self.funding = phase.funding_target + (self.funding - phase.funding_target) * keep
        self.funding += FUNDING_NOISE * math.sqrt(fraction) * float(self.rng.standard_normal())
        spec = self.specs[BINANCE_USDM]
        mark = round(self._mid(BINANCE_USDM), spec.price_decimals)
        self.mark_avg += MARK_AVG_ALPHA * (mark - self.mark_avg)
        return MarkTick(
            symbol=self.asset.binance,
            event_ms=end_ms,
            mark_price=mark,
            index_price=round(math.exp(self.log_fair), 8),
            mark_avg=round(self.mark_avg, 8),
            funding_rate=round(self.funding, 8),
            next_funding_ms=next_funding_ms(end_ms),
        )

    # -- emission -------------------------------------------------------------------------
    def take_until(self, to_ms: int) -> list[Tick]:
        """Remove and return the pending ticks with event time <= ``to_ms``, in event order."""
        ready, self.pending = _split(self.pending, to_ms)
        return ready


class _UsdtState:
    """Coinbase USDT-USD: trades and a book around a rate that wanders near its centre."""

    def __init__(self, seed: int, start_ms: int) -> None:
        self.spec = usdt_usd_spec()
        self.rng = np.random.Generator(np.random.PCG64([seed, _USDT_STREAM]))
        self.rate = USDT_USD_CENTRE
        self.flow = _VenueFlow(self.spec, self.rate, seed, _USDT_STREAM, 1)
        self.slot_start = start_ms
        self.pending: list[Tick] = []

    def fill_step(self) -> None:
        """Draw everything of ``(slot_start, slot_end]``, as ``_AssetState.fill_step`` does."""
        begin = self.slot_start
        end = (begin // STEP_MS + 1) * STEP_MS
        rng = self.flow.rng
        rate = USDT_USD_TRADES_PER_S * (end - begin) / 1000.0
        count = int(rng.poisson(rate)) if end - begin > 1 else 0
        times = _trade_times(rng, begin, end, count)
        self.pending.extend(self.flow.trades(times, [0.5] * count))
        dt = (end - begin) / 1000.0
        keep = math.exp(-dt / USDT_USD_TAU_S)
        shock = USDT_USD_NOISE_PER_S * math.sqrt(dt) * float(self.rng.standard_normal())
        low, high = USDT_USD_MID_RANGE
        self.rate = min(
            high, max(low, USDT_USD_CENTRE + (self.rate - USDT_USD_CENTRE) * keep + shock)
        )
        self.pending.extend(self.flow.book_update(end, self.rate))
        self.slot_start = end

    def take_until(self, to_ms: int) -> list[Tick]:
        ready, self.pending = _split(self.pending, to_ms)
        return ready


def _trade_times(rng: np.random.Generator, begin: int, end: int, count: int) -> list[int]:
    """``count`` trade times strictly inside the step ``(begin, end)``, ascending. Most steps
    of the smaller venues have no trade, and skipping the empty draw (which takes nothing from
    the stream) saves numpy's per-call cost there."""
    if not count:
        return []
    return sorted(_integers(rng, begin + 1, end, count))


# Below this many values, one ``integers`` call per value is cheaper than one call for all.
_SCALAR_INTEGERS: Final = 3


def _integers(rng: np.random.Generator, low: int, high: int, count: int) -> list[int]:
    """``rng.integers(low, high, size=count).tolist()``, the same values from the same bits,
    cheaper: that call costs ~7 µs here (most of it resolving the default dtype and the size),
    where a scalar call costs ~1 µs and the array call with an explicit dtype ~4 µs. numpy
    draws bounded integers one value at a time either way (for these small ranges, Lemire's
    method on the generator's 32-bit outputs), so scalar calls leave the stream exactly where
    one call of ``count`` does: same values, same generator state."""
    if count <= _SCALAR_INTEGERS:
        return [int(rng.integers(low, high)) for _ in range(count)]
    return rng.integers(low, high, size=count, dtype=np.int64).tolist()


def _split(pending: list[Tick], to_ms: int) -> tuple[list[Tick], list[Tick]]:
    """(ticks with event time <= ``to_ms`` in event order, the rest)."""
    # A stable sort keeps generation order (ids) among equal event times.
    pending.sort(key=_event_ms)
    cut = 0
    while cut < len(pending) and pending[cut].event_ms <= to_ms:
        cut += 1
    return pending[:cut], pending[cut:]


def _event_ms(tick: Tick) -> int:
    return tick.event_ms


def _buy_share(phase: Phase, venue: str) -> float:
    if venue == BINANCE_USDM:
        return phase.buy_share
    if venue == BINANCE_SPOT:
        return phase.spot_buy_share
    return phase.coinbase_buy_share


class MarketModel:
    """Generates every venue's trades, books, marks and liquidations, deterministically."""

    def __init__(
        self,
        symbols: Mapping[str, float] | None = None,
        scenario: str = "sell_wave",
        seed: int = 1,
        *,
        start_ms: int,
        premiums: Mapping[str, Premium] | None = None,
    ) -> None:
        """``symbols``: Binance symbol -> start price (BTCUSDT -> BTC, BTCUSDT, BTC-USD);
        ``premiums``: Coinbase premium per phase name, overriding the scenario's."""
        self._phase_at = phase_function(scenario, premiums)
        symbols = DEFAULT_SYMBOLS if symbols is None else symbols
        if not symbols:
            raise ValueError("at least one symbol is needed")
        self.assets = assets_from_symbols(symbols)
        self.scenario = scenario
        self.seed = seed
        self.start_ms = start_ms
        # What the calm phase's Coinbase premium is (the history's Coinbase candles use it).
        self.calm_premium: Premium = (premiums or {}).get(CALM.name, CALM.premium)
        self._cursor = start_ms
        if any(asset.coinbase == USDT_USD for asset in self.assets):
            raise ValueError(f"{USDT_USD} is simulated as the USDT reference, not as an asset")
        self._states = [
            _AssetState(asset, i, seed, start_ms) for i, asset in enumerate(self.assets)
        ]
        self._usdt = _UsdtState(seed, start_ms)
        self.specs: dict[tuple[str, str], VenueSpec] = {
            (spec.venue, spec.symbol): spec for s in self._states for spec in s.specs.values()
        }
        self.specs[(COINBASE, USDT_USD)] = self._usdt.spec
        self._by_binance = {s.asset.binance: s for s in self._states}

    @property
    def symbols(self) -> list[str]:
        """The Binance symbols (spot and USDⓈ-M share them)."""
        return [a.binance for a in self.assets]

    @property
    def now_ms(self) -> int:
        """Event time reached by the last ``advance``."""
        return self._cursor

    def phase_at(self, event_ms: int) -> str:
        """Name of the scenario phase at ``event_ms`` ("calm", "selling")."""
        return self._phase_at(event_ms - self.start_ms).name

    def book(self, venue: str, symbol: str) -> VenueBook:
        """The live book of ``symbol`` on ``venue``; it may be up to one step ahead of what
        ``advance`` has returned (callers that serve snapshots keep their own copy)."""
        if (venue, symbol) == (COINBASE, USDT_USD):
            return self._usdt.flow.book
        for state in self._states:
            flow = state.flows[venue]
            if flow.spec.symbol == symbol:
                return flow.book
        raise KeyError(f"{venue}/{symbol}")

    def open_interest(self, symbol: str) -> float:
        return self._by_binance[symbol].positioning.open_interest

    def position_rows(self, symbol: str) -> list[PositionRow]:
        """Closed 5-minute rows of ``symbol``, oldest first (30 days of history, then live)."""
        return self._by_binance[symbol].positioning.rows

    def advance(self, to_ms: int) -> list[Tick]:
        """Everything with event time in (previous ``to_ms``, ``to_ms``], in event-time order.

        Ties keep asset order, then generation order. Asking for a time already reached
        returns nothing: event time never runs backwards.
        """
        if to_ms <= self._cursor:
            return []
        self._cursor = to_ms
        out: list[Tick] = []
        for state in self._states:
            # A tick with event time <= to_ms can only come from a step starting before to_ms.
            while state.slot_start < to_ms:
                state.fill_step(self.start_ms, self._phase_at)
            out.extend(state.take_until(to_ms))
        usdt = self._usdt
        while usdt.slot_start < to_ms:
            usdt.fill_step()
        out.extend(usdt.take_until(to_ms))
        out.sort(key=_event_ms)
        return out
