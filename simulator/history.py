"""Deterministic 1-minute history of every asset, for the REST backfill endpoints (klines,
funding history, Coinbase candles).

Pure: no I/O, no wall clock. A bar is a function of (seed, asset, minute) only, plus a
continuity term near the scenario start:

- Log price is a stationary process around the asset's start price: a daily AR(1) anchor
  (``a_d`` at each UTC midnight, a weighted sum of the previous ``ANCHOR_TERMS`` daily shocks,
  so any day can be computed without walking from the beginning) and, inside each day, a
  Brownian bridge from ``a_d`` to ``a_{d+1}``. Every day draws its minutes from its own
  ``PCG64([seed, asset, HISTORY_STREAM, day])``, so serving one page costs one or two days of
  vectorised draws, never the 129,600 bars before it.
- In the last ``BRIDGE_MS`` before the scenario start the path is tilted linearly so that it
  ends exactly at the live start price; bars older than that do not depend on when the
  simulator started, which is what makes them reproducible across runs.
- Taker-buy share is ~0.5 with a daily bias and minute noise; on about a third of the days a
  sell-off of 20-120 minutes drives prices down, the buy share to ~0.4 (spot) / ~0.3 (perp),
  volume up, and perp/spot volume from 3x to 5x, mirroring the live ``selling`` phase.
- The perp trades at spot x (1 + funding - base rate), like the live model's mid; funding is
  settled every 8 h (00/08/16 UTC). Coinbase is spot plus the scenario's calm premium.

Bars after the scenario start come from this generator too (they do not aggregate the live
tape): a backfill should take history up to its own start and the live streams after.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

from simulator.market import (
    COINBASE_SHARE_OF_SPOT,
    FUNDING_INTERVAL_MS,
    SIZE_SIGMA,
    Asset,
    VenueSpec,
)
from simulator.scenarios import CALM, CALM_FUNDING, SELLING, Premium
from streams.events import BINANCE_SPOT, BINANCE_USDM, COINBASE
from streams.units import DAY_MS, HOUR_MS, MINUTE_MS

DAY_MINUTES: Final = DAY_MS // MINUTE_MS
LISTED_DAYS: Final = 400  # no bars before the scenario start minus this (the "listing")
BRIDGE_MS: Final = 6 * HOUR_MS  # the tilt towards the live start price spans this much
HISTORY_STREAM: Final = 7_700  # rng stream tags, apart from the live model's
ANCHOR_STREAM: Final = 7_701

ANCHOR_PHI: Final = 0.97  # daily AR(1) of the log price anchor
ANCHOR_SIGMA: Final = 0.10  # its stationary standard deviation (10 % around the start price)
ANCHOR_TERMS: Final = 150  # 0.97**150 ~ 0.01: older shocks are negligible
MINUTE_VOL: Final = 6e-4  # 6 bp per minute, ~2.3 % a day: BTC-like
WICK_VOL: Final = 2.5e-4  # how far high/low reach beyond open/close, in log terms
SELL_OFF_P: Final = 0.35  # share of days with a sell-off
SELL_OFF_MINUTES: Final = (20, 120)
SELL_OFF_DRIFT: Final = -8e-4  # per minute: -1.6 % to -9.6 % over a sell-off
SELL_OFF_VOLUME: Final = 3.0
FUNDING_NOISE: Final = 3e-5
# Coinbase premium around its calm level (percent): a per-day offset and per-minute noise.
PREMIUM_DAY_PCT: Final = 0.02
PREMIUM_MINUTE_PCT: Final = 0.01
CACHE_DAYS: Final = 16  # per asset: paging touches each day once or twice
_LOGNORMAL_MEAN: Final = math.exp(SIZE_SIGMA**2 / 2)


@dataclass(frozen=True, slots=True)
class ModelBars:
    """Consecutive 1-minute bars of one symbol on one venue, as the model generates them
    (unrounded floats, every kline field); ``rest`` formats them for the wire. Not
    ``streams.events.Bars``, the columns the daemon parses out of those bodies."""

    open_ms: np.ndarray  # int64 open times
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray  # base asset
    quote_volume: np.ndarray
    trades: np.ndarray  # int64
    taker_buy_volume: np.ndarray
    taker_buy_quote: np.ndarray

    def __len__(self) -> int:
        return len(self.open_ms)


@dataclass(frozen=True, slots=True)
class _Day:
    """Everything of one asset on one UTC day; arrays of 1440 minutes unless noted."""

    log_path: np.ndarray  # 1441 log spot prices at the minute boundaries
    wick_up: np.ndarray  # log distance of high above max(open, close)
    wick_down: np.ndarray
    vwap_pos: np.ndarray  # where the bar's average price sits between low and high
    spot_quote: np.ndarray
    perp_quote: np.ndarray
    coinbase_quote: np.ndarray
    spot_buy: np.ndarray  # taker-buy share of volume
    perp_buy: np.ndarray
    basis: np.ndarray  # 1441 values of perp / spot - 1 at the minute boundaries
    premium_noise: np.ndarray  # 1441 values (percent) added to the calm Coinbase premium
    funding: np.ndarray  # 3 rates: interval j's is settled at (j + 1) x 8 h after midnight


class AssetHistoryModel:
    """The generator of one asset's 1-minute history on every venue, ending where the live
    market starts (not ``signals.backfill.AssetHistory``, what the daemon's backfill makes of
    the bodies served from it)."""

    def __init__(
        self,
        asset: Asset,
        index: int,
        specs: Mapping[str, VenueSpec],
        seed: int,
        start_ms: int,
        premium: Premium,
    ) -> None:
        self.asset = asset
        self.specs = specs
        self.premium = premium
        self._seed = seed
        self._index = index
        self._log_price = math.log(asset.price)
        self.start_ms = start_ms
        # The tilt is pinned to the start minute's boundary, so the bar the scenario starts in
        # opens exactly at the live start price.
        self._pin_ms = start_ms // MINUTE_MS * MINUTE_MS
        self.first_minute = (start_ms - LISTED_DAYS * DAY_MS) // MINUTE_MS
        spot, perp = specs[BINANCE_SPOT], specs[BINANCE_USDM]
        # Calm quote volume per minute, as the live model trades it.
        self._perp_quote_per_min = perp.trades_per_s * 60 * perp.median_qty * asset.price
        self._perp_quote_per_min *= _LOGNORMAL_MEAN
        self._trade_notional = {
            BINANCE_USDM: perp.median_qty * asset.price * _LOGNORMAL_MEAN,
            BINANCE_SPOT: spot.median_qty * asset.price * _LOGNORMAL_MEAN,
        }
        self._shocks: dict[int, float] = {}
        self._days: OrderedDict[int, _Day] = OrderedDict()
        # The tilt: the stationary path's value at the start minute, to be cancelled there.
        self._start_offset = 0.0
        start_minute = start_ms // MINUTE_MS
        day = self._day(start_minute // DAY_MINUTES)
        self._start_offset = float(day.log_path[start_minute % DAY_MINUTES])
        self._days.clear()  # cached days were built without the tilt

    # -- the stationary process -------------------------------------------------------------
    def _shock(self, day: int) -> float:
        value = self._shocks.get(day)
        if value is None:
            rng = np.random.Generator(
                np.random.PCG64([self._seed, self._index, ANCHOR_STREAM, day])
            )
            value = self._shocks[day] = float(rng.standard_normal())
        return value

    def _anchor(self, day: int) -> float:
        """Log price (relative to the start price) at the midnight opening ``day``."""
        shocks = np.array([self._shock(day - j) for j in range(ANCHOR_TERMS)])
        weights = ANCHOR_PHI ** np.arange(ANCHOR_TERMS)
        return float(ANCHOR_SIGMA * math.sqrt(1 - ANCHOR_PHI**2) * (weights @ shocks))

    def _day(self, day: int) -> _Day:
        cached = self._days.get(day)
        if cached is not None:
            self._days.move_to_end(day)
            return cached
        built = self._build_day(day)
        self._days[day] = built
        if len(self._days) > CACHE_DAYS:
            self._days.popitem(last=False)
        return built

    def _build_day(self, day: int) -> _Day:
        rng = np.random.Generator(np.random.PCG64([self._seed, self._index, HISTORY_STREAM, day]))
        n = DAY_MINUTES
        hours = np.arange(n) / 60.0
        # Busier and more volatile during the European/US overlap (peak ~15:30 UTC).
        season = 1.0 + 0.6 * np.exp(-(((hours - 15.5) / 3.0) ** 2))
        day_vol = rng.lognormal(0.0, 0.3)
        day_buy_bias = 0.02 * rng.standard_normal()
        eps = rng.standard_normal(n)
        # The draws below are always made, sell-off or not, so days stay independent streams.
        sell_draw, sell_start_u, sell_len_u = rng.random(3)
        selling = np.zeros(n, dtype=bool)
        if sell_draw < SELL_OFF_P:
            lo, hi = SELL_OFF_MINUTES
            length = lo + int(sell_len_u * (hi - lo))
            begin = int(sell_start_u * (n - length))
            selling[begin : begin + length] = True
        returns = MINUTE_VOL * day_vol * np.sqrt(season) * eps + np.where(
            selling, SELL_OFF_DRIFT, 0.0
        )
        walk = np.concatenate(([0.0], np.cumsum(returns)))
        frac = np.arange(n + 1) / n
        a0, a1 = self._anchor(day), self._anchor(day + 1)
        # A Brownian bridge: the day ends exactly at the next day's anchor.
        log_path = a0 + (a1 - a0) * frac + walk - frac * walk[-1]
        log_path = log_path + self._tilt(day * DAY_MS + np.arange(n + 1) * MINUTE_MS)

        wick_up = WICK_VOL * day_vol * np.abs(rng.standard_normal(n))
        wick_down = WICK_VOL * day_vol * np.abs(rng.standard_normal(n))
        vwap_pos = rng.uniform(0.3, 0.7, n)
        activity = season * day_vol * rng.lognormal(-0.08, 0.4, n)
        activity = np.where(selling, activity * SELL_OFF_VOLUME, activity)
        perp_quote = self._perp_quote_per_min * activity
        perp_spot = np.where(selling, SELLING.perp_spot_volume, CALM.perp_spot_volume)
        spot_quote = perp_quote / perp_spot * rng.lognormal(-0.02, 0.2, n)
        coinbase_quote = spot_quote * COINBASE_SHARE_OF_SPOT * rng.lognormal(-0.02, 0.2, n)
        spot_base = np.where(selling, SELLING.spot_buy_share, 0.5) + day_buy_bias
        perp_base = np.where(selling, SELLING.buy_share, 0.5) + 1.3 * day_buy_bias
        spot_buy = np.clip(spot_base + 0.05 * rng.standard_normal(n), 0.05, 0.95)
        perp_buy = np.clip(perp_base + 0.06 * rng.standard_normal(n), 0.05, 0.95)
        # Interval j's rate is settled at its end ((j + 1) x 8 h): it follows the day's
        # direction and turns negative after a sell-off in the interval.
        trend = (a1 - a0) / (ANCHOR_SIGMA * math.sqrt(1 - ANCHOR_PHI**2))
        funding = (
            CALM_FUNDING
            + 3e-5 * trend
            - np.where(selling.reshape(3, -1).any(axis=1), 1.5e-4, 0.0)
            + FUNDING_NOISE * rng.standard_normal(3)
        )
        # The perp trades at a premium of the rate above its base (as the live mid does); it
        # is 0 at each settlement so the perp's path has no jumps across intervals or days.
        position = np.arange(n + 1) % (n // 3) / (n // 3)
        slot = np.minimum(np.arange(n + 1) // (n // 3), 2)
        basis = (funding[slot] - CALM_FUNDING) * np.sin(np.pi * position)
        # The premium wanders around its calm level (a day's offset plus minute noise), as two
        # venues' last prices do; a constant premium would make any live change an absurd z.
        premium_noise = PREMIUM_DAY_PCT * rng.standard_normal() + PREMIUM_MINUTE_PCT * (
            rng.standard_normal(n + 1)
        )
        return _Day(
            log_path,
            wick_up,
            wick_down,
            vwap_pos,
            spot_quote,
            perp_quote,
            coinbase_quote,
            spot_buy,
            perp_buy,
            basis,
            premium_noise,
            funding,
        )

    def _tilt(self, times_ms: np.ndarray) -> np.ndarray:
        """Cancels the stationary path's offset at the start, fading out over ``BRIDGE_MS``."""
        weight = np.clip(1.0 - (self._pin_ms - times_ms) / BRIDGE_MS, 0.0, 1.0)
        return -self._start_offset * weight

    # -- queries ----------------------------------------------------------------------------
    def _span(self, first_minute: int, count: int) -> list[tuple[_Day, int, int]]:
        """(day, first index, end index) slices covering ``count`` minutes from
        ``first_minute``."""
        out = []
        minute, left = first_minute, count
        while left > 0:
            day, offset = divmod(minute, DAY_MINUTES)
            take = min(left, DAY_MINUTES - offset)
            out.append((self._day(day), offset, offset + take))
            minute += take
            left -= take
        return out

    def bars(self, venue: str, first_minute: int, count: int) -> ModelBars:
        """``count`` bars of ``venue`` opening at minute ``first_minute`` (ms // 60000)."""
        span = self._span(first_minute, count)

        def cat(field: str) -> np.ndarray:
            return np.concatenate([getattr(d, field)[a:b] for d, a, b in span])

        if count <= 0:
            empty = np.zeros(0)
            return ModelBars(
                np.zeros(0, np.int64), *([empty] * 6), np.zeros(0, np.int64), empty, empty
            )
        # Minute boundaries: each slice's opens, then the close of the last minute.
        last_day, _, last_end = span[-1]

        def boundaries(field: str) -> np.ndarray:
            return np.concatenate([cat(field), getattr(last_day, field)[last_end : last_end + 1]])

        path = np.exp(self._log_price + boundaries("log_path"))
        if venue == BINANCE_USDM:
            path = path * (1.0 + boundaries("basis"))
            quote, buy = cat("perp_quote"), cat("perp_buy")
        elif venue == BINANCE_SPOT:
            quote, buy = cat("spot_quote"), cat("spot_buy")
        elif venue == COINBASE:
            path = self.coinbase_price(path, boundaries("premium_noise"))
            quote, buy = cat("coinbase_quote"), np.full(count, 0.5)
        else:
            raise KeyError(venue)
        opens, closes = path[:-1], path[1:]
        high = np.maximum(opens, closes) * np.exp(cat("wick_up"))
        low = np.minimum(opens, closes) * np.exp(-cat("wick_down"))
        vwap = low + (high - low) * cat("vwap_pos")
        volume = quote / vwap
        notional = self._trade_notional.get(venue, self._trade_notional[BINANCE_SPOT])
        trades = np.maximum(1, np.rint(quote / notional)).astype(np.int64)
        open_ms = (first_minute + np.arange(count, dtype=np.int64)) * MINUTE_MS
        buy_volume, buy_quote = volume * buy, quote * buy
        return ModelBars(
            open_ms, opens, high, low, closes, volume, quote, trades, buy_volume, buy_quote
        )

    def coinbase_price(self, spot: np.ndarray, noise_pct: np.ndarray | float = 0.0) -> np.ndarray:
        """Binance spot plus the calm premium (a percentage scales; USD adds) plus noise."""
        if self.premium.unit == "usd":
            return (spot + self.premium.amount) * (1.0 + noise_pct / 100.0)
        return spot * (1.0 + (self.premium.amount + noise_pct) / 100.0)

    def funding(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fundingTime ms, rate, mark price) of ``count`` settlements from settlement index
        ``first`` (fundingTime // 8 h)."""
        index = first + np.arange(count, dtype=np.int64)
        per_day = DAY_MS // FUNDING_INTERVAL_MS
        interval = index - 1  # the 8 h interval a settlement closes
        days, slots = np.divmod(interval, per_day)
        rates = np.empty(count)
        marks = np.empty(count)
        for day in np.unique(days).tolist():  # one per day of settlements, not per bar
            built = self._day(int(day))
            picks = days == day
            slot = slots[picks]
            rates[picks] = built.funding[slot]
            minutes = DAY_MINUTES // per_day
            # The perp's price at the settlement (its basis is 0 there, see _build_day).
            boundary = (slot + 1) * minutes
            marks[picks] = np.exp(self._log_price + built.log_path[boundary])
            marks[picks] *= 1.0 + built.basis[boundary]
        return index * FUNDING_INTERVAL_MS, rates, marks


class MarketHistory:
    """History of every asset of a market model, keyed by Binance symbol and Coinbase product."""

    def __init__(
        self,
        assets: list[Asset],
        specs: Mapping[tuple[str, str], VenueSpec],
        seed: int,
        start_ms: int,
        premium: Premium,
    ) -> None:
        self.by_binance: dict[str, AssetHistoryModel] = {}
        self.by_product: dict[str, AssetHistoryModel] = {}
        for i, asset in enumerate(assets):
            venue_specs = {
                BINANCE_SPOT: specs[(BINANCE_SPOT, asset.binance)],
                BINANCE_USDM: specs[(BINANCE_USDM, asset.binance)],
                COINBASE: specs[(COINBASE, asset.coinbase)],
            }
            history = AssetHistoryModel(asset, i, venue_specs, seed, start_ms, premium)
            self.by_binance[asset.binance] = history
            self.by_product[asset.coinbase] = history
