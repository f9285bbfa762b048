"""Binance's REST request weight, per client IP and per one-minute window (pure: the caller
passes the clock).

Binance counts weight in fixed windows that reset on the minute and reports the running total
in ``X-MBX-USED-WEIGHT-1M``; a request that would exceed the limit is refused with 429 and a
``Retry-After`` up to the next reset.
"""

from __future__ import annotations

import math
from typing import Final

from streams.venues import BinanceSpot, BinanceUsdm

# The venues' limits and depth weights are the adapters' (the one place tapewatch states them).
SPOT_LIMIT: Final = BinanceSpot.limits.weight_limit or 0
USDM_LIMIT: Final = BinanceUsdm.limits.weight_limit or 0
WINDOW_S: Final = 60


class WeightMeter:
    """Weight used per IP in the current window of one API family (spot or USDⓈ-M)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._window: dict[str, int] = {}  # ip -> window index of the count below
        self._used: dict[str, int] = {}

    def used(self, ip: str, now_s: float) -> int:
        window = int(now_s // WINDOW_S)
        if self._window.get(ip) != window:
            return 0
        return self._used.get(ip, 0)

    def charge(self, ip: str, weight: int, now_s: float) -> bool:
        """Add ``weight`` if it fits under the limit; False (nothing added) if it does not."""
        used = self.used(ip, now_s)
        if used + weight > self.limit:
            return False
        self._window[ip] = int(now_s // WINDOW_S)
        self._used[ip] = used + weight
        return True

    @staticmethod
    def retry_after(now_s: float) -> int:
        """Whole seconds until the window resets (at least 1)."""
        return max(1, math.ceil((now_s // WINDOW_S + 1) * WINDOW_S - now_s))
