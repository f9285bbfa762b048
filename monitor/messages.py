"""The MQTT contract as pure functions: topics and JSON payloads (README "MQTT topics").

Nothing here touches a socket. The daemon hands these messages to the publisher; ``replay`` writes
them to JSON Lines. Both therefore emit exactly the same bytes for the same input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from signals.catalogue import SIGNALS
from signals.engine import SignalSnapshot
from signals.regimes import RegimeChange


@dataclass(frozen=True, slots=True)
class OutMessage:
    topic: str
    payload: dict[str, Any]
    qos: int
    retain: bool
    expiry: int | None = None  # seconds; MQTT v5 message expiry, when the broker supports it

    def payload_bytes(self) -> bytes:
        return orjson.dumps(self.payload)

    @classmethod
    def from_payload_bytes(cls, topic: str, payload: bytes, qos: int, retain: bool) -> OutMessage:
        """The inverse of ``payload_bytes`` (the durable outbox stores the bytes): the rebuilt
        message's ``payload_bytes()`` are the bytes given. Raises ``ValueError`` on bad JSON."""
        return cls(topic, orjson.loads(payload), qos, retain)

    def as_record(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "payload": self.payload,
            "retain": self.retain,
            "qos": self.qos,
        }


class Topics:
    def __init__(self, prefix: str, instance: str) -> None:
        self.prefix = prefix
        self.instance = instance

    def status(self) -> str:
        return f"{self.prefix}/status/{self.instance}"

    def health(self) -> str:
        return f"{self.prefix}/health/{self.instance}"

    def regime(self, asset: str) -> str:
        return f"{self.prefix}/{asset}/regime"

    def events(self, asset: str) -> str:
        return f"{self.prefix}/{asset}/events"

    def signals(self, asset: str) -> str:
        return f"{self.prefix}/{asset}/signals"

    def rebirth(self) -> str:
        return f"{self.prefix}/cmd/rebirth"


class MessageBuilder:
    """Builds the session's messages and numbers them: ``seq`` rises by one per topic."""

    def __init__(self, topics: Topics, session: str, version: str, started_ms: int) -> None:
        self.topics = topics
        self.session = session
        self.version = version
        self.started_ms = started_ms
        self._seq: dict[str, int] = {}
        # asset -> id of the last events message: the checkpoint keeps it with the regime state.
        self.last_event_id: dict[str, str] = {}

    def _next_seq(self, topic: str) -> int:
        seq = self._seq.get(topic, 0) + 1
        self._seq[topic] = seq
        return seq

    def status(self, state: str) -> OutMessage:
        payload = {
            "state": state,
            "instance": self.topics.instance,
            "session": self.session,
            "version": self.version,
            "started": self.started_ms,
        }
        return OutMessage(self.topics.status(), payload, qos=1, retain=True)

    def signals(self, snap: SignalSnapshot, ts_pub: int, signal_expiry_s: int) -> OutMessage:
        topic = self.topics.signals(snap.asset)
        entries: dict[str, dict[str, Any]] = {
            name: {"value": value, "unit": SIGNALS[name].unit}
            for name, value in snap.values.items()
        }
        for name, score in snap.z.items():
            entries[name].update(z=score.z, n_obs=score.n_obs, warmup=score.warmup)
        payload = {
            "asset": snap.asset,
            "ts_event": snap.ts_event,
            "ts_pub": ts_pub,
            "seq": self._next_seq(topic),
            "signals": entries,
        }
        return OutMessage(topic, payload, qos=0, retain=True, expiry=signal_expiry_s)

    def regime(self, change: RegimeChange, ts_pub: int) -> list[OutMessage]:
        """The retained state message and, for a real change, its one ``events`` message."""
        body = self._regime_body(change, ts_pub)
        state_topic = self.topics.regime(change.asset)
        out = [OutMessage(state_topic, {**body, "seq": self._next_seq(state_topic)}, 1, True)]
        if change.previous is not None:
            events_topic = self.topics.events(change.asset)
            seq = self._next_seq(events_topic)
            event_id = f"{self.session}:{change.asset}:{seq}"
            self.last_event_id[change.asset] = event_id
            event = {"id": event_id, "type": "regime_change", **body}
            out.append(OutMessage(events_topic, {**event, "seq": seq}, 1, False))
        return out

    def regime_state(self, change: RegimeChange, ts_pub: int) -> OutMessage:
        """The retained state message alone: a restarted daemon republishes the regime it
        restored (same regime, ``since`` and reasons), which is no change, so no event."""
        topic = self.topics.regime(change.asset)
        body = self._regime_body(change, ts_pub)
        return OutMessage(topic, {**body, "seq": self._next_seq(topic)}, 1, True)

    def _regime_body(self, change: RegimeChange, ts_pub: int) -> dict[str, Any]:
        reasons = [
            {"signal": r.signal, "value": r.value, "op": r.op, "threshold": r.threshold}
            for r in change.reasons
        ]
        return {
            "asset": change.asset,
            "regime": change.regime,
            "previous": change.previous,
            "since": change.since,
            "description": change.description,
            "reasons": reasons,
            "session": self.session,
            "ts_event": change.since,
            "ts_pub": ts_pub,
        }

    def health(self, report: dict[str, Any], ts_pub: int, expiry_s: int) -> OutMessage:
        """Retained, with a message expiry (MQTT 5; a few report intervals): the health of a
        daemon that died expires at the broker instead of looking current."""
        topic = self.topics.health()
        payload = {
            "instance": self.topics.instance,
            "session": self.session,
            "ts_pub": ts_pub,
            "seq": self._next_seq(topic),
            **report,
        }
        return OutMessage(topic, payload, qos=0, retain=True, expiry=expiry_s)
