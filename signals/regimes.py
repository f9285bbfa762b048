"""Regime rules: ordered, explainable, with hysteresis, evaluated on each signal snapshot.

Rules come from ``config.yaml`` as data; nothing is ``eval``-ed. On each snapshot the rules are
tried in order and the first that holds wins; none holding means ``neutral``. The regime in force
is tested against its *exit* thresholds and every other rule against its *entry* thresholds, so a
signal hovering at a threshold does not flap. ``min_dwell`` holds a regime for a minimum time
once entered and ``cooldown`` keeps a regime from re-entering right after it ended.

Every change carries its reasons: for an entered regime, the conditions that held; for a return to
``neutral``, the conditions of the previous regime that stopped holding. Each reason reads as a
true statement ``value op threshold``.

``state()`` and ``restore()`` carry the regime in force (and the cooldowns under way) across a
restart, as JSON-ready data. A restored regime is not re-entered, and it is not ended by the
restart's warm-up either: while a signal its rule reads is still missing (the restarted windows
are empty), the decision waits, for at most the grace the caller gives; then the first complete
snapshot decides, on event time, whether it still holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from signals.engine import SignalSnapshot

NEUTRAL = "neutral"


@dataclass(frozen=True, slots=True)
class Condition:
    signal: str
    op: Literal["above", "below"]
    threshold: float  # to enter
    exit_threshold: float  # to stay (looser than `threshold`)

    def holds(self, value: float | None, active: bool) -> bool:
        if value is None:
            return False
        limit = self.exit_threshold if active else self.threshold
        return value > limit if self.op == "above" else value < limit


@dataclass(frozen=True, slots=True)
class RegimeRule:
    name: str
    description: str
    all: tuple[Condition, ...]
    any: tuple[Condition, ...]
    min_dwell: float  # seconds
    cooldown: float  # seconds


@dataclass(frozen=True, slots=True)
class Reason:
    signal: str
    value: float | None
    op: str  # "<", ">", "<=", ">=", or "missing"
    threshold: float | None


@dataclass(frozen=True, slots=True)
class RegimeChange:
    asset: str
    regime: str
    previous: str | None  # None for the first regime of a session (not a change)
    since: int  # event time the regime was entered, ms
    reasons: tuple[Reason, ...]
    description: str


def _reason_data(reason: Reason) -> dict[str, Any]:
    """A reason as the MQTT payloads and the checkpoint write it."""
    return {
        "signal": reason.signal,
        "value": reason.value,
        "op": reason.op,
        "threshold": reason.threshold,
    }


def _reason_from(data: Mapping[str, Any]) -> Reason:
    value, threshold = data["value"], data["threshold"]
    return Reason(
        str(data["signal"]),
        None if value is None else float(value),
        str(data["op"]),
        None if threshold is None else float(threshold),
    )


def _held(cond: Condition, value: float | None, active: bool) -> Reason:
    limit = cond.exit_threshold if active else cond.threshold
    return Reason(cond.signal, value, ">" if cond.op == "above" else "<", limit)


def _failed(cond: Condition, value: float | None, active: bool) -> Reason:
    if value is None:
        return Reason(cond.signal, None, "missing", None)
    limit = cond.exit_threshold if active else cond.threshold
    return Reason(cond.signal, value, "<=" if cond.op == "above" else ">=", limit)


def _match(rule: RegimeRule, values: dict[str, float | None], active: bool) -> bool:
    if rule.all and not all(c.holds(values.get(c.signal), active) for c in rule.all):
        return False
    return not rule.any or any(c.holds(values.get(c.signal), active) for c in rule.any)


def _why_held(
    rule: RegimeRule, values: dict[str, float | None], active: bool
) -> tuple[Reason, ...]:
    return tuple(
        _held(c, values.get(c.signal), active)
        for c in (*rule.all, *rule.any)
        if c.holds(values.get(c.signal), active)
    )


def _why_ended(rule: RegimeRule, values: dict[str, float | None]) -> tuple[Reason, ...]:
    failed_all = [c for c in rule.all if not c.holds(values.get(c.signal), True)]
    # An `any` group fails only when every member fails, so then all of them are the reason.
    failed_any = (
        list(rule.any)
        if rule.any and not any(c.holds(values.get(c.signal), True) for c in rule.any)
        else []
    )
    return tuple(_failed(c, values.get(c.signal), True) for c in (*failed_all, *failed_any))


class RegimeEngine:
    """The regime state machine of one asset."""

    def __init__(self, asset: str, rules: tuple[RegimeRule, ...]) -> None:
        self.asset = asset
        self.rules = rules
        self._by_name = {r.name: r for r in rules}
        self.current: str | None = None
        self.since = 0
        self._ended_at: dict[str, int] = {}
        # The regime in force as last published (what ``state`` saves and a restart republishes).
        self._in_force: RegimeChange | None = None
        # After ``restore``: how long (event ms) a restored regime waits for its signals, and
        # the deadline, set by the first snapshot.
        self._hold_ms: int | None = None
        self._hold_until: int | None = None

    def evaluate(self, snap: SignalSnapshot) -> RegimeChange | None:
        ts, values = snap.ts_event, snap.lookup()
        if self._holding(ts, values):
            return None
        chosen: RegimeRule | None = None
        for rule in self.rules:
            active = rule.name == self.current
            cooled = ts - self._ended_at.get(rule.name, -(10**15)) >= rule.cooldown * 1000
            if (active or cooled) and _match(rule, values, active):
                chosen = rule
                break
        new = chosen.name if chosen else NEUTRAL

        if self.current is None:
            return self._enter(new, None, ts, chosen, values)
        if new == self.current:
            return None
        held = self._by_name.get(self.current)
        if held is not None and ts - self.since < held.min_dwell * 1000:
            return None
        previous = self.current
        if held is not None:
            self._ended_at[previous] = ts
        return self._enter(new, previous, ts, chosen, values)

    def _enter(
        self,
        name: str,
        previous: str | None,
        ts: int,
        rule: RegimeRule | None,
        values: dict[str, float | None],
    ) -> RegimeChange:
        self.current, self.since = name, ts
        if rule is not None:
            reasons = _why_held(rule, values, active=False)
            description = rule.description
        else:
            ended = self._by_name.get(previous or "")
            reasons = _why_ended(ended, values) if ended else ()
            description = "no rule holds"
        self._in_force = RegimeChange(self.asset, name, previous, ts, reasons, description)
        return self._in_force

    # -- restarts -------------------------------------------------------------------------------
    def in_force(self) -> RegimeChange | None:
        """The regime in force as it was published (None before the first snapshot)."""
        return self._in_force

    def state(self) -> dict[str, Any] | None:
        """What a restart needs, JSON-ready: the regime in force as published, and when each
        rule last ended (its cooldown). None before the first snapshot."""
        change = self._in_force
        if change is None:
            return None
        return {
            "regime": change.regime,
            "previous": change.previous,
            "since": change.since,
            "reasons": [_reason_data(r) for r in change.reasons],
            "description": change.description,
            "ended_at": dict(self._ended_at),
        }

    def restore(self, state: Mapping[str, Any], hold_ms: int = 0) -> None:
        """Continue from ``state()`` output. ``hold_ms``: for at most this long (event time,
        from the first snapshot) a restored regime whose signals are still missing is kept
        rather than ended: a restart's empty windows are not evidence that it ended. Raises
        ``ValueError`` (engine unchanged) for a state that does not fit the rules."""
        try:
            name, since = str(state["regime"]), int(state["since"])
            previous = state["previous"]
            change = RegimeChange(
                self.asset,
                name,
                None if previous is None else str(previous),
                since,
                tuple(_reason_from(r) for r in state["reasons"]),
                str(state["description"]),
            )
            ended = {str(k): int(v) for k, v in dict(state.get("ended_at") or {}).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{self.asset}: unreadable regime state ({exc!r})") from None
        if name != NEUTRAL and name not in self._by_name:
            raise ValueError(f"{self.asset}: regime {name!r} is no longer among the rules")
        self.current, self.since, self._in_force = name, since, change
        # Cooldowns of rules that no longer exist mean nothing.
        self._ended_at = {k: v for k, v in ended.items() if k in self._by_name}
        self._hold_ms, self._hold_until = max(0, hold_ms), None

    def _holding(self, ts: int, values: dict[str, float | None]) -> bool:
        """True while a restored regime waits for its signals (see ``restore``)."""
        if self._hold_ms is None:
            return False
        if self._hold_until is None:
            self._hold_until = ts + self._hold_ms
        rule = self._by_name.get(self.current or "")
        waiting = rule is not None and any(
            values.get(c.signal) is None for c in (*rule.all, *rule.any)
        )
        if waiting and ts < self._hold_until:
            return True
        self._hold_ms = self._hold_until = None  # from now on, every snapshot decides
        return False
