"""What ``tapewatch notify`` sends, as pure functions: events in, messages and decisions out.

Nothing here touches a socket, a file or the clock: the worker (``monitor/notify.py``) passes
the time in. This module reads an ``events`` payload (README "MQTT topics"), decides whether a
filter wants it, writes the title and body of one change or of a digest of several, groups the
changes of a burst (``Batcher``) and spaces the retries of a delivery (``retry_delay``).

The body is Markdown that reads as plain text (list lines and nothing else), so a service that
renders Markdown shows a list and one that takes text shows the same lines unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

import orjson

NEUTRAL = "neutral"
Direction = Literal["entered", "left"]
DIRECTIONS: tuple[Direction, ...] = ("entered", "left")

# Phones cut long notifications; a digest lists at most this many reasons per change.
DIGEST_REASONS = 3


class BadEvent(ValueError):
    """An ``events`` payload that is not a regime change this module can read (one line)."""


@dataclass(frozen=True, slots=True)
class Reason:
    signal: str
    value: float | None
    op: str  # "<", ">", "<=", ">=" or "missing"
    threshold: float | None


@dataclass(frozen=True, slots=True)
class Event:
    """One regime change as published on ``<prefix>/<ASSET>/events``."""

    id: str
    asset: str
    regime: str
    previous: str | None
    since: int  # ms since the epoch, event time
    description: str
    reasons: tuple[Reason, ...]


def _text(data: Mapping[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise BadEvent(f"field {key!r} must be a non-empty string, got {value!r:.60}")
    return value


def _float(value: object, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadEvent(f"{what} must be a number or null, got {value!r:.60}")
    return float(value)


def parse_event(payload: bytes) -> Event:
    """The regime change in an ``events`` payload; ``BadEvent`` says what is wrong with it."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise BadEvent(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadEvent(f"expected a JSON object, got {type(data).__name__}")
    if data.get("type") != "regime_change":
        raise BadEvent(f"type is {data.get('type')!r}, not 'regime_change'")
    since = data.get("since")
    if isinstance(since, bool) or not isinstance(since, int):
        raise BadEvent(f"field 'since' must be integer ms, got {since!r:.60}")
    raw_reasons = data.get("reasons", [])
    if not isinstance(raw_reasons, list):
        raise BadEvent("field 'reasons' must be a list")
    reasons: list[Reason] = []
    for i, item in enumerate(raw_reasons):
        if not isinstance(item, dict) or not isinstance(item.get("signal"), str):
            raise BadEvent(f"reasons[{i}] must be an object with a 'signal'")
        reasons.append(
            Reason(
                item["signal"],
                _float(item.get("value"), f"reasons[{i}].value"),
                str(item.get("op", "")),
                _float(item.get("threshold"), f"reasons[{i}].threshold"),
            )
        )
    description = data.get("description") or ""
    return Event(
        id=_text(data, "id") or "",
        asset=_text(data, "asset") or "",
        regime=_text(data, "regime") or "",
        previous=_text(data, "previous", optional=True),
        since=since,
        description=description if isinstance(description, str) else "",
        reasons=tuple(reasons),
    )


# -- filters --------------------------------------------------------------------------------------
def moves(event: Event) -> list[tuple[Direction, str]]:
    """The regimes an event enters and leaves: neutral -> A enters A, A -> neutral leaves A,
    A -> B leaves A and enters B."""
    out: list[tuple[Direction, str]] = []
    if event.regime != NEUTRAL:
        out.append(("entered", event.regime))
    if event.previous is not None and event.previous != NEUTRAL:
        out.append(("left", event.previous))
    return out


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which changes to send. Empty ``assets``/``regimes`` mean all of them."""

    assets: frozenset[str] = frozenset()
    regimes: frozenset[str] = frozenset()
    directions: frozenset[Direction] = frozenset(DIRECTIONS)

    def wants(self, event: Event) -> bool:
        if self.assets and event.asset not in self.assets:
            return False
        return any(
            direction in self.directions and (not self.regimes or regime in self.regimes)
            for direction, regime in moves(event)
        )


# -- messages -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Message:
    title: str
    body: str
    ids: tuple[str, ...]


REPEAT_NOTE = (
    "Sent again: an earlier attempt may have arrived (its outcome was unknown when the "
    "notifier stopped or the request failed)."
)


def utc(ms: int) -> str:
    """``2026-12-03 20:43:07 UTC``: whole seconds, always UTC."""
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def number(value: float | None) -> str:
    """Four significant digits: enough to compare a value with its threshold on a phone."""
    if value is None:
        return "null"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def threshold(value: float | None) -> str:
    """A threshold as the config wrote it (0.53, -1.5, 2e-05), never rounded."""
    if value is None:
        return "null"
    return f"{value:g}" if float(f"{value:g}") == value else repr(value)


def reason_line(reason: Reason) -> str:
    """``taker_sell_ratio = 0.5612 (> 0.53)``; a missing value says so."""
    if reason.op == "missing" or reason.value is None:
        return f"{reason.signal}: no value (missing)"
    return f"{reason.signal} = {number(reason.value)} ({reason.op} {threshold(reason.threshold)})"


def headline(event: Event) -> str:
    """``BTC: seller_dominance (was neutral)``."""
    was = f" (was {event.previous})" if event.previous is not None else ""
    return f"{event.asset}: {event.regime}{was}"


def format_event(event: Event, *, repeat: bool = False) -> Message:
    """The message for one change: what, since when, what it means and why."""
    lines = [
        f"{event.asset} is in {event.regime} since {utc(event.since)} "
        f"(was {event.previous or 'nothing'})."
    ]
    if event.regime == NEUTRAL and event.previous:
        lines[0] = f"{event.asset} left {event.previous} at {utc(event.since)}: back to {NEUTRAL}."
    if event.description:
        lines.append(event.description)
    if event.reasons:
        why = "Why:" if event.regime != NEUTRAL else f"What stopped holding for {event.previous}:"
        lines += ["", why, *(f"- {reason_line(r)}" for r in event.reasons)]
    lines += ["", f"id: {event.id}"]
    if repeat:
        lines.append(REPEAT_NOTE)
    return Message(headline(event), "\n".join(lines), (event.id,))


def format_digest(events: Sequence[Event], *, repeat: bool = False) -> Message:
    """One message for a burst: a line per change (oldest first) with its main reasons."""
    if len(events) == 1:
        return format_event(events[0], repeat=repeat)
    ordered = sorted(events, key=lambda e: (e.since, e.asset, e.id))
    assets = sorted({e.asset for e in ordered})
    title = f"tapewatch: {len(ordered)} regime changes ({', '.join(assets)})"
    lines = [f"{len(ordered)} regime changes:", ""]
    for event in ordered:
        shown = event.reasons[:DIGEST_REASONS]
        more = len(event.reasons) - len(shown)
        why = "; ".join(reason_line(r) for r in shown) + (f"; +{more} more" if more > 0 else "")
        lines.append(f"- {utc(event.since)} {headline(event)}" + (f": {why}" if why else ""))
    lines += ["", "ids: " + ", ".join(e.id for e in ordered)]
    if repeat:
        lines.append(REPEAT_NOTE)
    return Message(title, "\n".join(lines), tuple(e.id for e in ordered))


# -- grouping bursts ------------------------------------------------------------------------------
T = TypeVar("T")


@dataclass(slots=True)
class Batcher(Generic[T]):
    """Groups changes into messages: a burst becomes one digest, and messages are spaced.

    An item waits at most ``window_ms`` for others to join it (unless ``max_items`` are already
    waiting), and two messages are at least ``min_interval_ms`` apart: what arrives in between
    waits and goes out together. Times are whatever clock the caller passes, in ms.
    """

    window_ms: int
    min_interval_ms: int
    max_items: int
    _items: list[tuple[int, T]] = field(default_factory=list)
    _last_sent: int | None = None

    def add(self, item: T, now_ms: int) -> None:
        self._items.append((now_ms, item))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[T]:
        return [item for _, item in self._items]

    def due_at(self) -> int | None:
        """When the next message should go; None while nothing waits."""
        if not self._items:
            return None
        first = self._items[0][0]
        gathered = first if len(self._items) >= self.max_items else first + self.window_ms
        if self._last_sent is None:
            return gathered
        return max(gathered, self._last_sent + self.min_interval_ms)

    def take(self, now_ms: int) -> list[T]:
        """The items of the next message if it is due at ``now_ms`` (else []), oldest first."""
        due = self.due_at()
        if due is None or now_ms < due:
            return []
        batch, self._items = self._items[: self.max_items], self._items[self.max_items :]
        self._last_sent = now_ms
        return [item for _, item in batch]


def retry_delay(attempt: int, initial_s: float, maximum_s: float) -> float:
    """Seconds before retry ``attempt`` (1 = the first retry): doubling from ``initial_s``."""
    return min(maximum_s, initial_s * 2.0 ** min(max(attempt - 1, 0), 60))


def split_urls(text: str) -> list[str]:
    """Apprise URLs from an environment variable: separated by whitespace (a URL has none;
    commas are not separators because Apprise URLs use them in their own arguments)."""
    return [part for part in text.split() if part]


def unique(items: Iterable[str]) -> list[str]:
    """``items`` without repeats, first occurrence kept."""
    return list(dict.fromkeys(items))
