"""USDⓈ-M positioning of one symbol: open interest, global long/short accounts, taker volume.

Pure: no I/O. Feeds Binance's REST statistics (``/fapi/v1/openInterest`` and the 5-minute rows of
``/futures/data/globalLongShortAccountRatio``, ``takerlongshortRatio`` and
``openInterestHist``). Binance keeps 30 days of those rows, so a model starts with 30 days of
synthetic calm history ending at the last 5-minute boundary before the scenario; rows after that
are summed from the trades the model actually generated, so they agree with the tape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from streams.units import DAY_MS, MINUTE_MS

PERIOD_MS: Final = 5 * MINUTE_MS
HISTORY_ROWS: Final = 30 * DAY_MS // PERIOD_MS  # 30 days of 5-minute rows
OI_NOTIONAL_USD: Final = 6e9  # open interest a symbol starts with, in quote currency
OI_REVERSION_PER_S: Final = 1 / 600  # calm phases pull OI back towards its start
OI_VOL_PER_SQRT_S: Final = 3e-5
LONG_ACCOUNT_TAU_S: Final = 120.0
LONG_ACCOUNT_NOISE: Final = 0.004  # row-to-row jitter of the long share


@dataclass(frozen=True, slots=True)
class PositionRow:
    """One 5-minute statistics row; ``timestamp_ms`` is the end of its period."""

    timestamp_ms: int
    long_account: float  # share of accounts net long
    buy_vol: float  # taker buy volume in the period, base asset
    sell_vol: float
    open_interest: float  # base asset, at the end of the period
    oi_value: float  # open_interest x mark price

    @property
    def long_short_ratio(self) -> float:
        return self.long_account / (1.0 - self.long_account)

    @property
    def buy_sell_ratio(self) -> float:
        return self.buy_vol / self.sell_vol if self.sell_vol > 0 else 0.0


class Positioning:
    """Evolves with the market (``step``, ``trade``, ``liquidated``) and closes a row at every
    5-minute boundary of event time."""

    def __init__(
        self,
        price: float,
        base_vol_per_s: float,
        rng: np.random.Generator,
        start_ms: int,
        long_account: float,
    ) -> None:
        self.anchor_oi = OI_NOTIONAL_USD / price
        self.open_interest = self.anchor_oi
        self.long_account = long_account
        self.rng = rng
        self.rows: list[PositionRow] = _history(
            price, base_vol_per_s, self.anchor_oi, long_account, rng, start_ms
        )
        # The period under way began before the scenario: count its calm part pro rata.
        self._period_end = (start_ms // PERIOD_MS + 1) * PERIOD_MS
        before = (start_ms % PERIOD_MS) / 1000.0 * base_vol_per_s / 2
        self._buy = before
        self._sell = before

    def trade(self, qty: float, taker_buys: bool) -> None:
        if taker_buys:
            self._buy += qty
        else:
            self._sell += qty

    def liquidated(self, qty: float) -> None:
        # A liquidation closes a position: open interest drops by its size.
        self.open_interest = max(self.anchor_oi * 0.1, self.open_interest - qty)

    def step(
        self,
        dt_s: float,
        oi_drift_per_s: float,
        reverting: bool,
        long_target: float,
        shock: float,
    ) -> None:
        pull = -OI_REVERSION_PER_S * math.log(self.open_interest / self.anchor_oi)
        drift = oi_drift_per_s + (pull if reverting else 0.0)
        self.open_interest *= math.exp(drift * dt_s + OI_VOL_PER_SQRT_S * math.sqrt(dt_s) * shock)
        keep = math.exp(-dt_s / LONG_ACCOUNT_TAU_S)
        self.long_account = long_target + (self.long_account - long_target) * keep

    def close_rows(self, now_ms: int, mark_price: float) -> None:
        """Close every period that ended at or before ``now_ms``."""
        while self._period_end <= now_ms:
            jitter = LONG_ACCOUNT_NOISE * float(self.rng.standard_normal())
            long_share = min(0.95, max(0.05, self.long_account + jitter))
            self.rows.append(
                PositionRow(
                    timestamp_ms=self._period_end,
                    long_account=long_share,
                    buy_vol=self._buy,
                    sell_vol=self._sell,
                    open_interest=self.open_interest,
                    oi_value=self.open_interest * mark_price,
                )
            )
            self._buy = self._sell = 0.0
            self._period_end += PERIOD_MS


def _history(
    price: float,
    base_vol_per_s: float,
    anchor_oi: float,
    long_account: float,
    rng: np.random.Generator,
    start_ms: int,
) -> list[PositionRow]:
    """30 days of calm rows ending at the last period boundary at or before ``start_ms``."""
    n = HISTORY_ROWS
    last_end = start_ms // PERIOD_MS * PERIOD_MS
    ends = last_end - PERIOD_MS * np.arange(n - 1, -1, -1, dtype=np.int64)
    # Slow AR(1) wanderings, so 24 h and 7 d changes are neither flat nor wild.
    shocks = rng.standard_normal((3, n))
    oi_log = np.zeros(n)
    long_dev = np.zeros(n)
    price_log = np.zeros(n)
    for i in range(1, n):
        oi_log[i] = 0.995 * oi_log[i - 1] + 0.004 * shocks[0, i]
        long_dev[i] = 0.98 * long_dev[i - 1] + 0.005 * shocks[1, i]
        price_log[i] = 0.997 * price_log[i - 1] + 0.002 * shocks[2, i]
    # End the history where the live market starts.
    oi = anchor_oi * np.exp(oi_log - oi_log[-1])
    longs = np.clip(long_account + long_dev - long_dev[-1], 0.05, 0.95)
    prices = price * np.exp(price_log - price_log[-1])
    volume = base_vol_per_s * PERIOD_MS / 1000.0 * rng.lognormal(0.0, 0.3, size=n)
    buy_share = np.clip(0.5 + 0.04 * rng.standard_normal(n), 0.2, 0.8)
    return [
        PositionRow(
            timestamp_ms=int(ends[i]),
            long_account=float(longs[i]),
            buy_vol=float(volume[i] * buy_share[i]),
            sell_vol=float(volume[i] * (1.0 - buy_share[i])),
            open_interest=float(oi[i]),
            oi_value=float(oi[i] * prices[i]),
        )
        for i in range(n)
    ]
