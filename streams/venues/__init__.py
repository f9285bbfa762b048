"""The venue adapters: one per venue, each the only place that knows its interface.

Adding a venue means writing its adapter (a ``Venue`` subclass in a module of its own here,
with its wire parser beside ``streams/binance.py``), listing it in ``ADAPTERS``, giving it a
URL table in ``monitor/config.py``'s venues, and testing it. See ARCHITECTURE.md.
"""

from __future__ import annotations

from streams.venues.base import (
    FrameDecoder,
    HistorySeries,
    Pace,
    Poll,
    RestCall,
    RestLimits,
    Resync,
    Socket,
    Venue,
)
from streams.venues.binance_spot import BinanceSpot
from streams.venues.binance_usdm import BinanceUsdm
from streams.venues.coinbase import Coinbase

# By config key (the key under ``venues:`` and in each asset), in documentation order.
ADAPTERS: dict[str, type[Venue]] = {
    "binance_spot": BinanceSpot,
    "binance_usdm": BinanceUsdm,
    "coinbase": Coinbase,
}

# By venue name (the ``venue`` of their events).
BY_NAME: dict[str, type[Venue]] = {cls.name: cls for cls in ADAPTERS.values()}

__all__ = [
    "ADAPTERS",
    "BY_NAME",
    "BinanceSpot",
    "BinanceUsdm",
    "Coinbase",
    "FrameDecoder",
    "HistorySeries",
    "Pace",
    "Poll",
    "RestCall",
    "RestLimits",
    "Resync",
    "Socket",
    "Venue",
]
