"""Scenario phases: what every venue's market does at each instant of a scenario.

Pure data and pure functions of elapsed event time; no I/O.

A phase fixes, per venue, the taker-side mix (share of aggregates whose taker buys), and for the
asset as a whole the price drift, the funding target, the Coinbase premium over Binance spot,
how many times Binance spot's quote volume the USDⓈ-M perp trades, the liquidation rate,
where open interest and the global long/short account ratio are heading, how busy trading is
and how deep each side of the books is (the last two 1.0, as calm, unless a phase says so).

The perp-venue calibration of ``calm`` and ``sell_wave`` is part of the daemon tests' contract:
calm buy share 0.5, selling buy share 0.3 with a -1.5 bp/s drift and funding heading to -0.0001,
and the ``sell_wave`` cycle (0-10 s calm, 10-50 s selling, 50-100 s calm, repeating).

The narrative scenarios reproduce the seed analyses that tapewatch's default regime rules
recognise (``config.yaml``, ``regimes:``): ``BASELINE_MS`` of calm, then the narrative's phases,
the last one held. ``tour`` plays every narrative in turn (``TOUR``), ``TOUR_HOLD_MS`` each with
``TOUR_GAP_MS`` of calm between them, then stays calm. Time is compressed: what the seeds saw
build over hours happens here in minutes (``--speed`` compresses it further), so flows, funding
and open interest move harder than the seeds' numbers; their directions and the way the venues
disagree are the seeds'. tests/test_scenario_regimes.py checks that each narrative's rule fires
on its scenario and on no other.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Final

from streams.units import MINUTE_MS

SELL_WAVE_CYCLE_MS: Final = 100_000
SELL_WAVE_SELLING_MS: Final = (10_000, 50_000)  # [start, end) offsets into the cycle
BASELINE_MS: Final = 10 * MINUTE_MS  # calm before a narrative starts
RALLY_MS: Final = 3 * MINUTE_MS  # distribution: the rally to the high before the selling
TOUR_HOLD_MS: Final = 5 * MINUTE_MS  # tour: how long each narrative's last phase is held
TOUR_GAP_MS: Final = 4 * MINUTE_MS  # tour: calm between two narratives
CALM_FUNDING: Final = 0.0001
# Calm phases pull the price back towards its start so long runs stay plausible
# (half-life two minutes; stationary spread ~20 bp at 2 bp/s volatility).
CALM_REVERSION_PER_S: Final = math.log(2) / 120

SCENARIOS: Final[dict[str, str]] = {
    "calm": "Balanced taker flow (buy share ~0.5 of notional) on every venue, price "
    "mean-reverting around its start, funding ~0.0001, Coinbase ~$5 over Binance spot "
    "(BTC), perp volume ~3x spot, a rare liquidation.",
    "sell_wave": "A 100 s cycle: 0-10 s calm, 10-50 s takers sell (perp buy share ~0.3, spot "
    "~0.4, Coinbase ~0.35 of notional), price drifting down, funding falling towards -0.0001, "
    "Coinbase premium sinking to ~-$90 (BTC), perp volume ~5x spot, bursts of long "
    "liquidations, open interest rising into the dip; 50-100 s calm again; repeats.",
    "deleveraging_cascade": "10 min calm, then a long-liquidation cascade: a liquidation "
    "almost every second, twice the usual trading with takers selling on every venue (perp "
    "buy share ~0.33, spot ~0.38), price falling ~3 bp/s, open interest unwinding ~3 %/min, "
    "both sides of the book thinning to ~55-60 %, funding near neutral, Coinbase premium "
    "unchanged.",
    "seller_dominance": "10 min calm, then sellers in control without panic: 1.7x the usual "
    "trading, perp takers ~0.38 buy / 0.62 sell, spot and Coinbase selling too, Coinbase "
    "~0.077 % under Binance (-$60 on BTC), price sagging ~0.5 bp/s, fewer liquidations than "
    "calm, open interest held.",
    "distribution": "10 min calm, a 3 min perp-led rally (~+3.6 %), then an exit pump near the "
    "high: spot and Coinbase takers sell (buy share ~0.36) into perp buying, Coinbase ~$91 "
    "under Binance (BTC), asks 1.5x and bids 0.8x their calm depth, open interest still rising.",
    "derivatives_led_decline": "10 min calm, then perps drag the price down while spot buys: "
    "perp volume ~8x spot and perp takers selling (buy share ~0.44), spot and Coinbase buying "
    "(~0.65), funding -0.015 %, open interest falling ~2.4 %/min, price sliding ~1.5 bp/s.",
    "spot_led_recovery": "10 min calm, then spot leads a recovery: spot and Coinbase takers "
    "buying (~0.65), perp volume down to ~1.8x spot, funding +0.015 %, Coinbase ~0.08 % over "
    "Binance, the book deepening (~1.3-1.4x), price climbing ~1 bp/s from the start level "
    "(78,000 on BTC).",
    "tour": "10 min calm, then each narrative in turn (distribution, seller_dominance, "
    "deleveraging_cascade, derivatives_led_decline, spot_led_recovery), 5 min each (the rally "
    "before distribution adds 3) with 4 min of calm between them, then calm.",
}


@dataclass(frozen=True, slots=True)
class Premium:
    """Coinbase price minus Binance spot price: in USD (the same amount for every asset) or in
    percent of the spot price (scales with the asset, which is what the built-in phases use)."""

    amount: float
    unit: str = "pct"  # "pct" or "usd"

    def __post_init__(self) -> None:
        if self.unit not in ("pct", "usd"):
            raise ValueError(f"premium unit must be 'pct' or 'usd', not {self.unit!r}")
        if not math.isfinite(self.amount):
            raise ValueError(f"premium amount must be finite, got {self.amount!r}")

    def usd(self, spot_price: float) -> float:
        return self.amount if self.unit == "usd" else self.amount / 100.0 * spot_price


@dataclass(frozen=True, slots=True)
class Phase:
    """What the market is doing at one instant of a scenario."""

    name: str
    buy_share: float  # USDⓈ-M perp: probability that an aggregate's taker is the buyer
    spot_buy_share: float  # Binance spot
    coinbase_buy_share: float  # Coinbase (taker side, i.e. the opposite of the wire's `side`)
    drift_bp_per_s: float
    reversion_per_s: float  # pull of log price towards the start price
    funding_target: float
    premium: Premium  # Coinbase over Binance spot
    perp_spot_volume: float  # perp quote volume / spot quote volume
    liquidations_per_s: float  # forceOrder snapshots per symbol per second (at most 1 / s)
    long_liquidation_share: float  # share of liquidation orders that are SELL (a long closed)
    oi_drift_per_s: float  # relative change of open interest per second, before liquidations
    long_account_target: float  # global long/short account ratio: share of accounts long
    # Trades per second on every venue, relative to calm (perp_spot_volume still splits them).
    activity: float = 1.0
    # Resting size of every venue's book on each side, relative to calm (new and re-sized
    # levels are drawn this much larger or smaller).
    bid_depth: float = 1.0
    ask_depth: float = 1.0


CALM: Final = Phase(
    name="calm",
    buy_share=0.5,
    spot_buy_share=0.5,
    coinbase_buy_share=0.52,
    drift_bp_per_s=0.0,
    reversion_per_s=CALM_REVERSION_PER_S,
    funding_target=CALM_FUNDING,
    premium=Premium(0.0064),  # +$5 on BTC at 78,000
    perp_spot_volume=3.0,
    liquidations_per_s=0.03,
    long_liquidation_share=0.5,
    oi_drift_per_s=0.0,
    long_account_target=0.55,
)
SELLING: Final = Phase(
    name="selling",
    buy_share=0.3,
    spot_buy_share=0.4,
    coinbase_buy_share=0.35,
    drift_bp_per_s=-1.5,
    reversion_per_s=0.0,
    funding_target=-0.0001,
    premium=Premium(-0.1154),  # -$90 on BTC at 78,000
    perp_spot_volume=5.0,
    liquidations_per_s=0.6,
    long_liquidation_share=0.9,
    oi_drift_per_s=2e-4,  # longs keep opening into the dip
    long_account_target=0.62,
)


# -- the seed narratives ------------------------------------------------------------------------
# Seed 000: "liquidity contraction ... depth index collapsing to -0.80", "taker imbalance ...
# -2.28", "open interest z-score now rests at -1.48", "funding rate remains near-neutral",
# "Taker Buy/Sell Ratio ... 0.79", "Liquidations USD z-score has spiked to +2.34".
CASCADE: Final = Phase(
    name="deleveraging_cascade",
    buy_share=0.33,
    spot_buy_share=0.38,
    coinbase_buy_share=0.40,
    drift_bp_per_s=-3.0,
    reversion_per_s=0.0,
    funding_target=0.00002,  # near neutral: no crowd of shorts paying yet
    premium=CALM.premium,  # a derivatives event: Coinbase stays where it was
    perp_spot_volume=4.5,
    liquidations_per_s=0.9,  # the stream's ceiling is one per second
    long_liquidation_share=0.92,
    oi_drift_per_s=-5e-4,  # positions unwound, ~3 % a minute
    long_account_target=0.5,
    activity=2.0,  # forced orders swell the volume
    bid_depth=0.55,
    ask_depth=0.6,
)
# Seed 001: "active buy-sell imbalance index is now -0.0917", "Z-score of active trading
# intensity ... -1.81", "short-sell ratio ... 0.546, while the long ratio is only 0.454",
# "Coinbase premium index is still negative at around -0.077", "not a traditional panic
# sell-off, but rather a lack of buying pressure".
SELLER_DOMINANCE: Final = Phase(
    name="seller_dominance",
    buy_share=0.38,
    spot_buy_share=0.38,
    coinbase_buy_share=0.36,
    drift_bp_per_s=-0.5,
    reversion_per_s=0.0,
    funding_target=0.00006,
    premium=Premium(-0.077),  # -$60 on BTC at 78,000
    perp_spot_volume=3.0,
    liquidations_per_s=0.01,  # no panic: fewer forced closes than calm
    long_liquidation_share=0.6,
    oi_drift_per_s=0.0,  # positions held: sellers, not forced closes
    long_account_target=0.5,
    activity=1.7,  # "actively executing market sell orders"
)
# Seed 002: "persistent spot selling even as prices rallied to the recent highs", "exchange
# premium has flipped negative ... around -$91", "ask-side delta remains elevated", "OI keeps
# climbing as prices decline". First the rally to the high, then the selling into it.
RALLY: Final = Phase(
    name="rally",
    buy_share=0.60,
    spot_buy_share=0.55,
    coinbase_buy_share=0.56,
    drift_bp_per_s=2.0,  # +3.6 % over RALLY_MS
    reversion_per_s=0.0,
    funding_target=0.0002,
    premium=CALM.premium,
    perp_spot_volume=4.0,  # leveraged buyers lead
    liquidations_per_s=0.1,
    long_liquidation_share=0.15,  # shorts squeezed
    oi_drift_per_s=1e-4,
    long_account_target=0.62,
    activity=1.3,
)
DISTRIBUTION: Final = Phase(
    name="distribution",
    buy_share=0.56,  # leveraged longs keep buying the dips
    spot_buy_share=0.36,
    coinbase_buy_share=0.36,
    drift_bp_per_s=-0.3,  # fading slowly from the high
    reversion_per_s=0.0,
    funding_target=0.00015,
    premium=Premium(-0.1167),  # -$91 on BTC at 78,000
    perp_spot_volume=3.0,
    liquidations_per_s=0.03,
    long_liquidation_share=0.5,
    oi_drift_per_s=1e-4,  # rising into the dips
    long_account_target=0.65,
    bid_depth=0.8,
    ask_depth=1.5,  # sell-side resistance
)
# Seed 003: "perpetual-to-spot volume ratio hitting 7.87", "net funding flows turned negative",
# "total open interest collapsed -14.9%", "price kept sliding even as spot liquidity delta
# showed positive imbalances".
DECLINE: Final = Phase(
    name="derivatives_led_decline",
    buy_share=0.44,  # perp sellers, mildly: their weight is the volume
    spot_buy_share=0.65,
    coinbase_buy_share=0.62,
    drift_bp_per_s=-1.5,
    reversion_per_s=0.0,
    funding_target=-0.00015,
    premium=Premium(0.02),  # US spot buyers are there too
    perp_spot_volume=8.0,
    liquidations_per_s=0.05,
    long_liquidation_share=0.85,
    oi_drift_per_s=-4e-4,  # ~2.4 % a minute
    long_account_target=0.45,  # a pivot from long to short bets
    activity=1.3,
)
# Seed 003, its watchpoints: "sustained positive net funding", spot demand, "a decisive move
# above $78,000, confirmed by a widening orderbook and a drop in the perpetual-to-spot volume
# ratio".
RECOVERY: Final = Phase(
    name="spot_led_recovery",
    buy_share=0.54,
    spot_buy_share=0.65,
    coinbase_buy_share=0.66,
    drift_bp_per_s=1.0,
    reversion_per_s=0.0,
    funding_target=0.00015,
    premium=Premium(0.08),
    perp_spot_volume=1.8,
    liquidations_per_s=0.04,
    long_liquidation_share=0.2,
    oi_drift_per_s=5e-5,
    long_account_target=0.58,
    bid_depth=1.4,
    ask_depth=1.3,
)

# Each narrative's phases after the calm baseline: (phase, how long); the last one is held.
# Signal windows for the compressed narratives: a narrative plays out in minutes, not hours, so
# the flow window is 2 min (not 1 h), the volume window 5 min (not 24 h), and the baselines are
# 7 days of 10 s buckets with a 3 min minimum. The rules and thresholds stay the shipped ones.
NARRATIVE_HISTORY_DAYS: Final = 7
NARRATIVE_WINDOWS: Final[dict[str, object]] = {
    "flow_window": "2m",
    "volume_window": "5m",
    "flow_min_coverage": 0.5,
    "baseline_window": f"{NARRATIVE_HISTORY_DAYS}d",
    "baseline_bucket": "10s",
    "baseline_min_history": "3m",
}

NARRATIVES: Final[dict[str, tuple[tuple[Phase, int], ...]]] = {
    "deleveraging_cascade": ((CASCADE, 0),),
    "seller_dominance": ((SELLER_DOMINANCE, 0),),
    "distribution": ((RALLY, RALLY_MS), (DISTRIBUTION, 0)),
    "derivatives_led_decline": ((DECLINE, 0),),
    "spot_led_recovery": ((RECOVERY, 0),),
}
# The tour tells one story: the exit pump at the top, sellers take over, longs are liquidated,
# perps grind lower while spot buys, then spot leads the recovery. The order matters for open
# interest, which carries from one narrative into the next: distribution's "OI rising into dips"
# comes before the cascade and the decline unwind it.
TOUR: Final = (
    "distribution",
    "seller_dominance",
    "deleveraging_cascade",
    "derivatives_led_decline",
    "spot_led_recovery",
)
PHASES: Final = (CALM, SELLING, CASCADE, SELLER_DOMINANCE, RALLY, DISTRIBUTION, DECLINE, RECOVERY)


def _timeline(segments: list[tuple[Phase, int]]) -> PhaseFn:
    """Phases one after another, each for its duration; the last one is held for ever."""
    starts, at = [], 0
    for _, duration in segments:
        starts.append(at)
        at += duration
    phases = [phase for phase, _ in segments]

    def phase_at(elapsed_ms: int) -> Phase:
        return phases[max(0, bisect.bisect_right(starts, elapsed_ms) - 1)]

    return phase_at


def _narrative(name: str) -> PhaseFn:
    return _timeline([(CALM, BASELINE_MS), *NARRATIVES[name]])


def _tour() -> PhaseFn:
    segments = [(CALM, BASELINE_MS)]
    for name in TOUR:
        steps = NARRATIVES[name]
        segments += [*steps[:-1], (steps[-1][0], TOUR_HOLD_MS), (CALM, TOUR_GAP_MS)]
    return _timeline(segments)


def tour_schedule() -> list[tuple[str, int, int]]:
    """``(narrative, start, end)`` of each narrative in ``tour``, ms after the scenario start."""
    out, at = [], BASELINE_MS
    for name in TOUR:
        end = at + sum(duration for _, duration in NARRATIVES[name][:-1]) + TOUR_HOLD_MS
        out.append((name, at, end))
        at = end + TOUR_GAP_MS
    return out


def _calm_phase(_elapsed_ms: int) -> Phase:
    return CALM


def _sell_wave_phase(elapsed_ms: int) -> Phase:
    position = elapsed_ms % SELL_WAVE_CYCLE_MS
    start, end = SELL_WAVE_SELLING_MS
    return SELLING if start <= position < end else CALM


PhaseFn = Callable[[int], Phase]

_PHASES: Final[dict[str, PhaseFn]] = {
    "calm": _calm_phase,
    "sell_wave": _sell_wave_phase,
    **{name: _narrative(name) for name in NARRATIVES},
    "tour": _tour(),
}


def phase_function(scenario: str, premiums: Mapping[str, Premium] | None = None) -> PhaseFn:
    """Elapsed event time (ms since the scenario started) -> phase, with the Coinbase premium of
    each phase (keyed by phase name: "calm", "selling", ...; see ``PHASES``) overridden by
    ``premiums``."""
    if scenario not in _PHASES:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(sorted(_PHASES))}")
    base = _PHASES[scenario]
    if not premiums:
        return base
    known = [p.name for p in PHASES]
    unknown = set(premiums) - set(known)
    if unknown:
        raise ValueError(f"premium for unknown phases {sorted(unknown)}; known: {', '.join(known)}")
    swapped = {p.name: replace(p, premium=premiums.get(p.name, p.premium)) for p in PHASES}

    def with_premiums(elapsed_ms: int) -> Phase:
        return swapped[base(elapsed_ms).name]

    return with_premiums
