"""What the flow means: rolling windows, baselines and z-scores, the signal engine, and the
regime rules. Pure: events in, snapshots and regime changes out."""

from signals.backfill import AssetHistory
from signals.baseline import Baseline, ZScore
from signals.catalogue import SIGNALS, SignalSpec
from signals.engine import SignalEngine, SignalSnapshot
from signals.regimes import NEUTRAL, RegimeChange, RegimeEngine, RegimeRule
from signals.window import BucketWindow

__all__ = [
    "NEUTRAL",
    "SIGNALS",
    "AssetHistory",
    "Baseline",
    "BucketWindow",
    "RegimeChange",
    "RegimeEngine",
    "RegimeRule",
    "SignalEngine",
    "SignalSnapshot",
    "SignalSpec",
    "ZScore",
]
