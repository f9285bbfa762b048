"""The delivery queue: which message the publisher sends next, and what a PUBACK settles.

Pure bookkeeping, no sockets, no files, no clock: ``monitor/mqtt.py`` owns the connection and
hands this queue's decisions to the MQTT client; ``monitor/outbox.py`` owns the SQLite file.

- Signals and health (QoS 0) are state, not history: only the newest message per topic waits,
  and one that is sent is gone (a drop mid-send loses state the next message replaces).
- QoS >= 1 messages (regime state and events) wait in publish order and leave only when
  ``delivered`` reports the broker's PUBACK, so a connection lost mid-send sends the same
  message again first on the next connection. Several may be in flight together
  (``in_flight``), sent back to back on one connection, so the broker receives them in publish
  order and acknowledges them in that order. They go before any signal.
- With an outbox, the QoS >= 1 messages that are history rather than state (not retained: the
  ``events`` topics) are written to it (``add`` returns the entry to write; ``stored``
  reports the write's outcome). The send does not wait for the write: an event is handed out
  before its write is done, or even begun (the publisher starts it at the PUBACK, or a few ms
  later if that is late). The outbox guarantees no less for it: an event is safe once
  committed or PUBACKed, the writes commit in publish order, and the broker holds a prefix of
  the QoS >= 1 messages published (sent in order on one connection), so a crash loses only the
  newest events, those neither committed nor PUBACKed: the window there always was between
  ``publish`` and the commit. The broker may acknowledge an event before its write is done;
  its row is then deleted once written (``stored`` returns it).
- A message in the outbox, or on its way there, is never dropped; one in memory only is
  dropped, oldest first, when ``max_queued`` are waiting.
- Every retained message is kept, newest per topic, for a rebirth (``request_rebirth``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice

from monitor.messages import OutMessage

log = logging.getLogger("tapewatch.mqtt")


@dataclass(eq=False, slots=True)
class Entry:
    """One message handed out to send. QoS >= 1: it stays queued until ``delivered``."""

    msg: OutMessage
    # Wall-clock receive time (ms) of the frame that caused it: its receive → PUBACK latency is
    # measured. None: not measured (QoS 0, or no receive time given).
    received_ms: float | None = None
    outbox_id: int | None = None  # its outbox row once stored; None: in memory only
    storing: bool = False  # its outbox write is due or under way
    # The broker's PUBACK came (``delivered``). If its write was still under way then, the row
    # is deleted once the write reports its id.
    acked: bool = False

    @property
    def durable(self) -> bool:
        """In the outbox, or on its way there: never dropped to make room."""
        return self.storing or self.outbox_id is not None


@dataclass(frozen=True, slots=True)
class Rebirth:
    """Send the birth, then every retained message (newest per topic) in first-seen order."""

    retained: tuple[OutMessage, ...]


class DeliveryQueue:
    def __init__(self, max_queued: int = 100_000, outbox: bool = False) -> None:
        """``outbox``: there is an outbox to write events to (``add`` says which)."""
        self.max_queued = max_queued
        self.outbox = outbox
        self.dropped = 0  # in-memory messages dropped because the queue was full
        self._ordered: deque[Entry] = deque()  # QoS >= 1: order and delivery matter
        self._latest: OrderedDict[str, OutMessage] = OrderedDict()  # QoS 0: newest only
        self._retained: dict[str, OutMessage] = {}  # everything retained, for a rebirth
        self._storing = 0  # outbox writes due or under way
        self._rebirth = False

    # -- what goes in -------------------------------------------------------------------------
    def resume(self, left: Iterable[tuple[int, OutMessage]]) -> None:
        """What an earlier process left in the outbox, oldest first: it goes before anything
        published in this one."""
        self._ordered.extendleft(reversed([Entry(msg, outbox_id=i) for i, msg in left]))

    def add(self, msg: OutMessage, received_ms: float | None = None) -> Entry | None:
        """Queue ``msg``; returns its entry when it must be written to the outbox (then report
        the outcome with ``stored``), else None."""
        if msg.retain:
            self._retained[msg.topic] = msg
        if msg.qos == 0:
            self._latest[msg.topic] = msg
            self._latest.move_to_end(msg.topic)
            return None
        store = self.outbox and not msg.retain
        if not store and len(self._ordered) >= self.max_queued:
            self._drop_oldest_in_memory()
        entry = Entry(msg, received_ms, storing=store)
        self._ordered.append(entry)
        if store:
            self._storing += 1
            return entry
        return None

    def stored(self, entry: Entry, outbox_id: int | None) -> int | None:
        """``entry``'s outbox write ended: its row id, or None when it failed (the message is
        then kept in memory only, like one published without an outbox). Returns the row to
        delete now, when the broker acknowledged ``entry`` before its write was done."""
        if not entry.storing:
            return None
        entry.storing = False
        entry.outbox_id = outbox_id
        self._storing -= 1
        return outbox_id if entry.acked else None

    def request_rebirth(self) -> None:
        """Republish the birth and every retained message, once, before anything else."""
        self._rebirth = True

    def _drop_oldest_in_memory(self) -> None:
        for i, entry in enumerate(self._ordered):
            if not entry.durable:
                del self._ordered[i]
                self.dropped += 1
                log.error("publish queue full (%d): dropped the oldest message", self.max_queued)
                return

    # -- what goes out ------------------------------------------------------------------------
    def next(self) -> Entry | Rebirth | None:
        """What to send now; None when nothing waits to be sent.

        A QoS >= 1 entry is the head of the queue and stays there until ``delivered``: asked
        again before that (after a lost connection) it is handed out again. A QoS 0 message
        leaves the queue here. An entry whose outbox write is under way is handed out too:
        the send does not wait for the disk (see the module's docstring for why that is safe)."""
        if self._rebirth:
            self._rebirth = False
            return Rebirth(tuple(self._retained.values()))
        if self._ordered:
            return self._ordered[0]
        if self._latest:
            _topic, msg = self._latest.popitem(last=False)
            return Entry(msg)
        return None

    def in_flight(self, limit: int) -> list[Entry]:
        """The QoS >= 1 entries at the head, oldest first, at most ``limit``: sent back to back,
        in flight together. Each stays queued until ``delivered``; asked again before that
        (after a lost connection) they are handed out again."""
        return list(islice(self._ordered, limit))

    def delivered(self, entry: Entry) -> int | None:
        """The broker acknowledged ``entry`` (a QoS 0 one: it was written to the socket).
        Returns its outbox row, to be deleted there, or None if it has none yet: with its
        write still under way, ``stored`` returns the row instead."""
        entry.acked = True
        # Dropped while in flight (a full queue), it is no longer the head: leave the new one.
        if self._ordered and self._ordered[0] is entry:
            self._ordered.popleft()
        return entry.outbox_id  # None while its write is under way: ``stored`` returns the row

    # -- where it stands ----------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Messages waiting to be sent or acknowledged."""
        return len(self._ordered) + len(self._latest)

    @property
    def acknowledged(self) -> bool:
        """Every QoS >= 1 message has the broker's PUBACK (signals may still wait)."""
        return not self._ordered

    @property
    def idle(self) -> bool:
        """Nothing waits to be sent: no message, no rebirth."""
        return not (self._ordered or self._latest or self._rebirth)

    @property
    def storing(self) -> int:
        """Outbox writes under way (of messages queued or already acknowledged)."""
        return self._storing

    def retained(self) -> list[OutMessage]:
        """The newest retained message of each topic, in first-seen order."""
        return list(self._retained.values())
