"""What the exchanges say: the normalized events, the venue adapters and their wire parsers,
books and trade continuity (pure), and the I/O that carries them (``streams.connection``,
``streams.rest``, ``streams.tape``: imported from their modules, so that importing ``streams``
opens no socket library)."""

from streams.events import (
    BINANCE_SPOT,
    BINANCE_USDM,
    COINBASE,
    Bars,
    DepthDiff,
    DepthSnapshot,
    Event,
    FeedGap,
    Heartbeat,
    Liquidation,
    LongShortRatio,
    MarkPrice,
    OpenInterest,
    Points,
    Trade,
)
from streams.frames import IgnoredFrame, MalformedFrame, SkippedFrame
from streams.venues import ADAPTERS, Venue

__all__ = [
    "ADAPTERS",
    "BINANCE_SPOT",
    "BINANCE_USDM",
    "COINBASE",
    "Bars",
    "DepthDiff",
    "DepthSnapshot",
    "Event",
    "FeedGap",
    "Heartbeat",
    "IgnoredFrame",
    "Liquidation",
    "LongShortRatio",
    "MalformedFrame",
    "MarkPrice",
    "OpenInterest",
    "Points",
    "SkippedFrame",
    "Trade",
    "Venue",
]
