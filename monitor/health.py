"""Counters that say how healthy the feeds are; published on ``<prefix>/health/<instance>``.

Bad input is never silent: every malformed or ignored frame is counted under its venue and kind,
and the first frame of each malformed kind is logged (one line per kind, not a flood). Events
that parse but are implausible (monitor/guards.py) are counted under ``rejected`` by venue and
kind, with a WARNING at most once per venue, kind and minute.

``publish_latency_ms`` says how late regime changes reach the broker: for each regime and events
message (QoS 1), the time from the receive of the frame (or REST body) that caused it to the
broker's PUBACK, as the publisher sees it.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streams.frames import IgnoredFrame, MalformedFrame

if TYPE_CHECKING:  # the socket code is not needed to count: keep the pipeline free of it
    from monitor.guards import Rejection
    from streams.connection import LinkStats

log = logging.getLogger("tapewatch.health")

# A rejected kind is logged again after this long (receive time), with the count in between.
REJECTION_LOG_EVERY_MS = 60_000


def _link_report(link: LinkStats, now_ms: int) -> dict[str, Any]:
    age = None if link.last_frame_recv_ms is None else now_ms - link.last_frame_recv_ms
    return {
        "connected": link.connected,
        "frames": link.frames,
        "reconnects": link.reconnects,
        "dropped": link.dropped,
        "last_frame_age_ms": age,
        "last_error": link.last_error,
        "stalls": link.stalls,
        "stalled": list(link.stalled),
        "last_outage_s": None if link.last_outage_s is None else round(link.last_outage_s, 3),
        "max_outage_s": round(link.max_outage_s, 3),
    }


class LatencyWindow:
    """The most recent ``size`` latencies in ms, and how many there were since the start.

    ``report()`` gives ``count`` (since the start) and the nearest-rank ``p50``, ``p99`` and
    ``max`` of the recent ones (None before the first). Regime changes come a few an hour, so
    the window spans days to weeks of them rather than one health interval.
    """

    def __init__(self, size: int = 1000) -> None:
        self.samples: deque[float] = deque(maxlen=size)
        self.count = 0

    def add(self, ms: float) -> None:
        self.samples.append(ms)
        self.count += 1

    def report(self) -> dict[str, Any]:
        ordered = sorted(self.samples)
        return {
            "count": self.count,
            "p50": _rounded(percentile(ordered, 50)),
            "p99": _rounded(percentile(ordered, 99)),
            "max": _rounded(ordered[-1] if ordered else None),
        }


def percentile(ordered: list[float], p: float) -> float | None:
    """Nearest-rank percentile of sorted values: the smallest value with at least ``p`` % of
    them at or below it (so p99 of fewer than 100 values is the maximum)."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _rounded(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 2)


@dataclass
class Health:
    streams: dict[str, LinkStats] = field(default_factory=dict)
    # Per venue. A defaultdict, not a Counter: ``frames[venue] += 1`` runs for every frame,
    # and a Counter's costs ~130 ns against ~50 (it defines ``__delitem__``).
    frames: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    rest_bodies: Counter[str] = field(default_factory=Counter)  # per venue
    malformed: Counter[tuple[str, str]] = field(default_factory=Counter)  # (venue, kind)
    ignored: Counter[tuple[str, str]] = field(default_factory=Counter)
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)  # (venue, kind)
    outbox_depth: int = 0
    silence_ms: int = 15_000  # a socket without a frame for this long is listed as silent
    publish_latency: LatencyWindow = field(default_factory=LatencyWindow)
    _rate_mark: tuple[int, int] | None = None  # (time ms, total frames) at the last report
    # (venue, kind) -> (receive time of the last WARNING, count at that time)
    _rejection_logged: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)

    def add_link(self, link: LinkStats) -> LinkStats:
        self.streams[link.name] = link
        return link

    def count_malformed(self, venue: str, err: MalformedFrame) -> None:
        key = (venue, err.kind)
        if key not in self.malformed:
            log.warning(
                "%s: malformed frame skipped (%s); further %r frames are only counted",
                venue,
                err,
                err.kind,
            )
        self.malformed[key] += 1

    def count_ignored(self, venue: str, err: IgnoredFrame) -> None:
        self.ignored[(venue, err.kind)] += 1

    def count_rejected(self, venue: str, rejection: Rejection, at_ms: int, n: int = 1) -> None:
        """``n`` rejections of one kind (several levels of one book update count each)."""
        key = (venue, rejection.kind)
        self.rejected[key] += n
        last = self._rejection_logged.get(key)
        if last is None or at_ms - last[0] >= REJECTION_LOG_EVERY_MS or at_ms < last[0]:
            since = "" if last is None else f" ({self.rejected[key] - last[1]} since the last)"
            log.warning(
                "%s: rejected an implausible event (%s: %s)%s; counted under rejected in health",
                venue,
                rejection.kind,
                rejection.detail,
                since,
            )
            self._rejection_logged[key] = (at_ms, self.rejected[key])

    def count_rejected_many(self, venue: str, kind: str, n: int) -> None:
        """``n`` parts of one event rejected at once (book levels): counted, not logged."""
        self.rejected[(venue, kind)] += n

    def report(self, now_ms: int) -> dict[str, Any]:
        total = sum(self.frames.values())
        rate = None
        if self._rate_mark is not None and now_ms > self._rate_mark[0]:
            rate = round((total - self._rate_mark[1]) * 1000 / (now_ms - self._rate_mark[0]), 1)
        self._rate_mark = (now_ms, total)
        return {
            "streams": {name: _link_report(s, now_ms) for name, s in sorted(self.streams.items())},
            # Named, so that a venue that never connects or went quiet is visible at a glance.
            "silent_streams": [
                name
                for name, s in sorted(self.streams.items())
                if s.last_frame_recv_ms is None or now_ms - s.last_frame_recv_ms > self.silence_ms
            ],
            "frames": dict(self.frames),
            "rest_bodies": dict(self.rest_bodies),
            "msgs_per_s": rate,
            "malformed": {f"{v}/{k}": n for (v, k), n in sorted(self.malformed.items())},
            "ignored": {f"{v}/{k}": n for (v, k), n in sorted(self.ignored.items())},
            "rejected": {f"{v}/{k}": n for (v, k), n in sorted(self.rejected.items())},
            "outbox_depth": self.outbox_depth,
            "publish_latency_ms": self.publish_latency.report(),
        }
