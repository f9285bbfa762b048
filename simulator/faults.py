"""Fault injection on the simulator's wire: the kinds, their counter keys, and the per-stream
decisions (pure: no I/O, no clock; the server arms faults on its schedule and asks here what
to send).

Counter keys (``Simulator.fault_counts``): every injection counts under its kind and under
``<kind>:<venue>:<what>`` with the venue names of ``streams.events``, e.g.
``skip_depth:binance-spot:BTCUSDT``, ``stall:binance-usdm:btcusdt@depth@100ms``,
``reorder:coinbase:BTC-USD``; ``stall`` counts per stalled connection; ``drop``, ``rest_429``
and ``rest_418`` count per socket cut or per refused response, ``malformed`` per frame as before
(plus ``malformed:<kind>``). ``hostile`` (see ``hostile``) counts per frame written, under
``hostile``, ``hostile:<kind>`` and ``hostile:<venue>:<kind>``; a dead venue (not a scheduled
fault: ``Simulator(dead_venues=...)``) counts each refused websocket under ``dead_venue`` and
``dead_venue:<venue>:<path family>``, e.g. ``dead_venue:binance-usdm:market``.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

from streams.events import BINANCE_SPOT, BINANCE_USDM, COINBASE

DROP: Final = "drop"
MALFORMED: Final = "malformed"
STALL: Final = "stall"
SKIP_DEPTH: Final = "skip_depth"
DUPLICATE: Final = "duplicate"
REORDER: Final = "reorder"
REST_429: Final = "rest_429"
REST_418: Final = "rest_418"
HOSTILE: Final = "hostile"
FAULTS: Final = frozenset(
    {DROP, MALFORMED, STALL, SKIP_DEPTH, DUPLICATE, REORDER, REST_429, REST_418, HOSTILE}
)
UNKNOWN_SYMBOLS: Final = 3000  # default symbols per hostile burst: the size of issue 9's report
DEAD_VENUE: Final = "dead_venue"
# ``Simulator(dead_venues=...)`` names -> the websocket path families refused: binance_wire's
# SPOT, MARKET, PUBLIC and the retired root paths ("legacy", USDⓈ-M books), and /coinbase.
DEAD_VENUES: Final = {
    BINANCE_SPOT: ("spot",),
    BINANCE_USDM: ("market", "public", "legacy"),
    f"{BINANCE_USDM}/market": ("market",),
    f"{BINANCE_USDM}/public": ("public", "legacy"),
    COINBASE: ("coinbase",),
}
# Armed faults that wait for the next frame they apply to.
ONE_SHOT: Final = frozenset({SKIP_DEPTH, DUPLICATE, REORDER})


def count(counts: Counter[str], kind: str, venue: str, what: str) -> None:
    counts[kind] += 1
    counts[f"{kind}:{venue}:{what}"] += 1


def count_sent(counts: Counter[str], tag: str) -> None:
    """Count one faulty frame that was written to a socket. ``tag`` is a malformed kind
    (``not_json``, ...) or a hostile frame's full key ``hostile:<venue>:<kind>``."""
    if tag.startswith(f"{HOSTILE}:"):
        counts[HOSTILE] += 1
        counts[f"{HOSTILE}:{tag.rsplit(':', 1)[1]}"] += 1
        counts[tag] += 1
        return
    counts[MALFORMED] += 1
    counts[f"{MALFORMED}:{tag}"] += 1


class StreamFaults:
    """What one Binance venue sends for the streams of its fault symbol.

    An armed ``skip_depth`` withholds the next
    ``depth_stream`` event; ``duplicate`` sends the next ``trade_stream`` frame twice;
    ``reorder`` holds it back and sends it after the following one. A one-shot fault waits for a
    frame that somebody is subscribed to, so every counted injection reached a client.
    """

    def __init__(
        self,
        venue: str,
        symbol: str,
        depth_stream: str,
        trade_stream: str,
        counts: Counter[str],
    ) -> None:
        self.venue = venue
        self.symbol = symbol
        self.depth_stream = depth_stream
        self.trade_stream = trade_stream
        self.counts = counts
        self.armed: set[str] = set()
        self._held: str | None = None  # payload of a reordered frame, sent after the next one

    def watches(self, stream: str) -> bool:
        """Whether frames of ``stream`` can be affected (callers skip ``frames`` otherwise)."""
        return stream in (self.depth_stream, self.trade_stream)

    def frames(self, stream: str, raw: str, subscribed: bool) -> list[str]:
        """The payloads to send for one event of ``stream`` (usually ``[raw]``)."""
        if stream == self.depth_stream and subscribed and SKIP_DEPTH in self.armed:
            self.armed.discard(SKIP_DEPTH)
            count(self.counts, SKIP_DEPTH, self.venue, self.symbol)
            return []
        if stream != self.trade_stream:
            return [raw]
        if not subscribed:
            self._held = None  # its readers left: a late release would reach new ones only
            return [raw]
        if self._held is not None:
            held, self._held = self._held, None
            return [raw, held]
        if REORDER in self.armed:
            self.armed.discard(REORDER)
            count(self.counts, REORDER, self.venue, stream)
            self._held = raw
            return []
        if DUPLICATE in self.armed:
            self.armed.discard(DUPLICATE)
            count(self.counts, DUPLICATE, self.venue, stream)
            return [raw, raw]
        return [raw]
