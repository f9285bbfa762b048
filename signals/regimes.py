"""Regime rules: ordered, explainable, with hysteresis, evaluated on each signal snapshot.

Rules come from ``config.yaml`` as data; nothing is ``eval``-ed. On each snapshot the rules are
tried in order and the first that holds wins; none holding means ``neutral``. The regime in force
is tested against its *exit* thresholds and every other rule against its *entry* thresholds, so a
signal hovering at a threshold does not flap. ``min_dwell`` holds a regime for a minimum time
once entered and ``cooldown`` keeps a regime from re-entering right after it ended.

Every change carries its reasons: for an entered regime, the conditions that held; for a return to
``neutral``, the conditions of the previous regime that stopped holding. Each reason reads as a
true statement ``value op threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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

    def evaluate(self, snap: SignalSnapshot) -> RegimeChange | None:
        ts, values = snap.ts_event, snap.lookup()
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
        return RegimeChange(self.asset, name, previous, ts, reasons, description)
