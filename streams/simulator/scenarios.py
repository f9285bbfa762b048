"""Scenario phases: what every venue's market does at each instant of a scenario.

Pure data and pure functions of elapsed event time; no I/O.

A phase fixes, per venue, the taker-side mix (share of aggregates whose taker buys), and for the
asset as a whole the price drift, the funding target, the Coinbase premium over Binance spot,
how many times Binance spot's quote volume the USDⓈ-M perp trades, the liquidation rate and
where open interest and the global long/short account ratio are heading.

The perp-venue calibration of ``calm`` and ``sell_wave`` is part of the daemon tests' contract:
calm buy share 0.5, selling buy share 0.3 with a -1.5 bp/s drift and funding heading to -0.0001,
and the ``sell_wave`` cycle (0-10 s calm, 10-50 s selling, 50-100 s calm, repeating).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Final

SELL_WAVE_CYCLE_MS: Final = 100_000
SELL_WAVE_SELLING_MS: Final = (10_000, 50_000)  # [start, end) offsets into the cycle
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


def _calm_phase(_elapsed_ms: int) -> Phase:
    return CALM


def _sell_wave_phase(elapsed_ms: int) -> Phase:
    position = elapsed_ms % SELL_WAVE_CYCLE_MS
    start, end = SELL_WAVE_SELLING_MS
    return SELLING if start <= position < end else CALM


PhaseFn = Callable[[int], Phase]

_PHASES: Final[dict[str, PhaseFn]] = {"calm": _calm_phase, "sell_wave": _sell_wave_phase}


def phase_function(scenario: str, premiums: Mapping[str, Premium] | None = None) -> PhaseFn:
    """Elapsed event time (ms since the scenario started) -> phase, with the Coinbase premium of
    each phase (keyed by phase name: "calm", "selling") overridden by ``premiums``."""
    if scenario not in _PHASES:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(sorted(_PHASES))}")
    base = _PHASES[scenario]
    if not premiums:
        return base
    unknown = set(premiums) - {CALM.name, SELLING.name}
    if unknown:
        raise ValueError(f"premium for unknown phases {sorted(unknown)}; known: calm, selling")
    swapped = {p.name: replace(p, premium=premiums.get(p.name, p.premium)) for p in (CALM, SELLING)}

    def with_premiums(elapsed_ms: int) -> Phase:
        return swapped[base(elapsed_ms).name]

    return with_premiums
