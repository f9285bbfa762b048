"""What ``tapewatch tail`` shows, without any I/O: the state built from tapewatch's MQTT
messages and its rendering.

``TailState`` ingests decoded messages (topic + payload dict) and keeps, per asset, the regime,
since when, the previous regime, the reasons and the latest signals with their z-scores, plus
each instance's status and health. ``render(state, now_ms)`` turns it into a rich renderable;
``PlainLog`` turns updates into plain lines for logs and pipes. Nothing here reads a clock or a
socket: ``monitor/tail.py`` does, and feeds it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.columns import Columns
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

MISSING = "—"
WARMUP_MARK = "~"
KINDS = ("regime", "signals", "events", "status", "health")


# -- pure part: state ---------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    """A JSON number, or None (missing, null, or not a number: a bool is not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class SignalReading:
    """One signal of the latest ``signals`` message. ``has_z``: the signal is z-scored (its
    entry carries ``z``, which may still be null before enough history)."""

    value: float | None
    unit: str | None = None
    z: float | None = None
    n_obs: int | None = None
    warmup: bool = False
    has_z: bool = False

    @classmethod
    def from_entry(cls, entry: Any) -> SignalReading:
        if not isinstance(entry, dict):
            return cls(_number(entry))
        return cls(
            value=_number(entry.get("value")),
            unit=_str(entry.get("unit")),
            z=_number(entry.get("z")),
            n_obs=_int(entry.get("n_obs")),
            warmup=entry.get("warmup") is True,
            has_z="z" in entry,
        )


@dataclass(slots=True)
class AssetView:
    asset: str
    regime: str | None = None
    since: int | None = None  # ms, event time
    previous: str | None = None
    description: str | None = None
    reasons: list[dict[str, Any]] = field(default_factory=list)
    signals: dict[str, SignalReading] = field(default_factory=dict)
    signals_ts: int | None = None  # ts_event of the latest signals message
    clock_ms: int | None = None  # the latest event time seen for this asset

    def _see(self, ts: int | None) -> None:
        if ts is not None and (self.clock_ms is None or ts > self.clock_ms):
            self.clock_ms = ts


@dataclass(slots=True)
class InstanceView:
    instance: str
    state: str | None = None
    session: str | None = None
    version: str | None = None
    started: int | None = None  # ms, wall time of the daemon
    health: dict[str, Any] | None = None
    health_ts: int | None = None  # ts_pub of the latest health message


@dataclass(frozen=True, slots=True)
class Update:
    """What one message changed: ``kind`` (one of ``KINDS``) of ``key`` (asset or instance)."""

    kind: str
    key: str


class TailState:
    """Everything the view shows, fed with decoded messages; no I/O, no clock."""

    def __init__(self, prefix: str, asset: str = "+") -> None:
        self.prefix = prefix.rstrip("/")
        self.asset_filter = asset
        self.assets: dict[str, AssetView] = {}
        self.instances: dict[str, InstanceView] = {}

    def asset(self, name: str) -> AssetView:
        if name not in self.assets:
            self.assets[name] = AssetView(name)
        return self.assets[name]

    def instance(self, name: str) -> InstanceView:
        if name not in self.instances:
            self.instances[name] = InstanceView(name)
        return self.instances[name]

    def ingest(self, topic: str, payload: Any) -> Update | None:
        """Apply one message; None when the topic or payload is not one the view shows."""
        head = self.prefix + "/"
        if not topic.startswith(head) or not isinstance(payload, dict):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) != 2 or not all(parts):
            return None
        first, second = parts
        if first == "status":
            self._status(self.instance(second), payload)
            return Update("status", second)
        if first == "health":
            view = self.instance(second)
            view.health = payload
            view.health_ts = _int(payload.get("ts_pub"))
            return Update("health", second)
        if self.asset_filter not in ("+", first):
            # Some brokers deliver retained messages of other topics too (README, amqtt).
            return None
        if second == "regime":
            self._regime(self.asset(first), payload)
        elif second == "events":
            view = self.asset(first)
            since = _int(payload.get("since"))
            # The retained regime message says the same; an event never takes the view back.
            if view.since is None or (since is not None and since >= view.since):
                self._regime(view, payload)
        elif second == "signals":
            self._signals(self.asset(first), payload)
        else:
            return None
        return Update(second, first)

    @staticmethod
    def _status(view: InstanceView, payload: dict[str, Any]) -> None:
        view.state = _str(payload.get("state"))
        view.session = _str(payload.get("session"))
        view.version = _str(payload.get("version"))
        view.started = _int(payload.get("started"))

    @staticmethod
    def _regime(view: AssetView, payload: dict[str, Any]) -> None:
        view.regime = _str(payload.get("regime"))
        view.since = _int(payload.get("since"))
        view.previous = _str(payload.get("previous"))
        view.description = _str(payload.get("description"))
        reasons = payload.get("reasons")
        view.reasons = (
            [r for r in reasons if isinstance(r, dict)] if isinstance(reasons, list) else []
        )
        view._see(_int(payload.get("ts_event")) or view.since)

    @staticmethod
    def _signals(view: AssetView, payload: dict[str, Any]) -> None:
        entries = payload.get("signals")
        entries = entries if isinstance(entries, dict) else {}
        view.signals = {str(k): SignalReading.from_entry(v) for k, v in entries.items()}
        view.signals_ts = _int(payload.get("ts_event"))
        view._see(view.signals_ts)

    def clock(self, asset: AssetView, now_ms: int) -> int:
        """The time ages of ``asset`` are measured to: the wall clock, or the asset's latest
        event time when that is ahead (a simulator at ``--speed 4`` runs event time four times
        faster than the wall clock)."""
        return max(now_ms, asset.clock_ms or now_ms)


# -- pure part: formatting ----------------------------------------------------------------------
def format_age(ms: int | float | None) -> str:
    """``45s``, ``12m 03s``, ``3h 07m``, ``2d 04h``; ``—`` when unknown; never negative."""
    if ms is None:
        return MISSING
    s = max(0, int(ms // 1000))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def _clock(ms: int | None) -> str:
    if ms is None:
        return "--:--:--"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S")


def _num(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _usd(value: float, signed: bool = False) -> str:
    sign = "-" if value < 0 else ("+" if signed and value > 0 else "")
    a = abs(value)
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if a >= scale:
            return f"{sign}${a / scale:.2f}{suffix}"
    return f"{sign}${a:.0f}"


def _price(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    if abs(value) >= 1:
        return f"{value:,.2f}"
    return f"{value:.6g}"


@dataclass(frozen=True, slots=True)
class KeySignal:
    name: str
    fmt: Callable[[float], str]


KEY_SIGNALS: tuple[KeySignal, ...] = (
    KeySignal("taker_imbalance", lambda v: f"{v:+.3f}"),
    KeySignal("taker_buy_sell_ratio", lambda v: f"{v:.3f}"),
    KeySignal("net_taker_usd", lambda v: _usd(v, signed=True)),
    KeySignal("perp_spot_volume_ratio", lambda v: f"{v:.2f}"),
    KeySignal("coinbase_premium_pct", lambda v: f"{v:+.3f}%"),
    KeySignal("funding_rate", lambda v: f"{v * 100:+.4f}%"),
    KeySignal("open_interest_usd", _usd),
    KeySignal("oi_change_pct_24h", lambda v: f"{v:+.2f}%"),
    KeySignal("liquidations_usd", _usd),
    KeySignal("depth_usd_1pct", _usd),
    KeySignal("price", _price),
)


def format_reasons(reasons: list[dict[str, Any]]) -> str:
    out = []
    for r in reasons:
        signal = r.get("signal", "?")
        if r.get("op") == "missing":
            out.append(f"{signal} missing")
        else:
            out.append(f"{signal} {_num(r.get('value'))} {r.get('op')} {_num(r.get('threshold'))}")
    return "; ".join(out)


def format_z(reading: SignalReading) -> str:
    """``z -1.92``, ``z -1.92~`` while the baseline warms up, ``z —`` without enough history,
    ``""`` for a signal that is not z-scored."""
    if not reading.has_z:
        return ""
    mark = WARMUP_MARK if reading.warmup else ""
    return f"z {MISSING}" if reading.z is None else f"z {reading.z:+.2f}{mark}"


def _z_style(reading: SignalReading) -> str:
    if reading.z is None or reading.warmup:
        return "dim"
    a = abs(reading.z)
    return "bold red" if a >= 3 else "bold yellow" if a >= 2 else ""


def _regime_style(regime: str | None) -> str:
    if regime is None:
        return "dim"
    return "green" if regime == "neutral" else "bold magenta"


def _instance_line(view: InstanceView, now_ms: int) -> Text:
    online = view.state == "online"
    line = Text("● " if online else "○ ", style="green" if online else "red")
    line.append(view.instance, style="bold")
    line.append(f" {view.state or 'unknown'}", style="green" if online else "red")
    if view.session:
        line.append(f"  session {view.session}")
    if view.version:
        line.append(f"  v{view.version}")
    if online and view.started is not None:
        line.append(f"  up {format_age(now_ms - view.started)}")
    health = view.health
    if health:
        streams = health.get("streams")
        if isinstance(streams, dict) and streams:
            up = sum(1 for s in streams.values() if isinstance(s, dict) and s.get("connected"))
            stalled = sum(1 for s in streams.values() if isinstance(s, dict) and s.get("stalled"))
            style = "" if up == len(streams) else "yellow"
            line.append(f"  streams {up}/{len(streams)} connected", style=style)
            if stalled:
                line.append(f", {stalled} stalled", style="yellow")
        rate = _number(health.get("msgs_per_s"))
        if rate is not None:
            line.append(f"  {rate:.0f} msg/s")
        outbox = _int(health.get("outbox_depth"))
        if outbox is not None:
            line.append(f"  outbox {outbox}", style="yellow" if outbox else "")
        dropped = _int(health.get("queue_dropped"))
        if dropped:
            line.append(f"  dropped {dropped}", style="yellow")
        if view.health_ts is not None and now_ms - view.health_ts > 30_000:
            line.append(f"  (health {format_age(now_ms - view.health_ts)} old)", style="yellow")
    return line


PANEL_WIDTH = 48


def _asset_panel(state: TailState, view: AssetView, now_ms: int) -> Panel:
    clock = state.clock(view, now_ms)
    head = Text(view.regime or MISSING, style=_regime_style(view.regime))
    if view.since is not None:
        head.append(f"  for {format_age(clock - view.since)}")
    if view.previous:
        head.append(f"  (was {view.previous})", style="dim")
    why = Text("why ", style="dim")
    why.append(format_reasons(view.reasons) or MISSING)
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)  # name
    grid.add_column(justify="right", no_wrap=True, min_width=10)  # value
    grid.add_column(no_wrap=True)  # z
    for key in KEY_SIGNALS:
        reading = view.signals.get(key.name)
        if reading is None or reading.value is None:
            value = Text(MISSING, style="dim")
        else:
            value = Text(key.fmt(reading.value))
        z = Text("") if reading is None else Text(format_z(reading), style=_z_style(reading))
        grid.add_row(Text(key.name, style="cyan"), value, z)
    if view.signals_ts is None:
        asof = Text(f"signals {MISSING}", style="dim")
    else:
        age = clock - view.signals_ts
        asof = Text(
            f"signals at {_clock(view.signals_ts)} ({format_age(age)} ago)",
            style="dim" if age < 30_000 else "red",
        )
    return Panel(
        Group(head, why, Text(""), grid, asof),
        title=Text(view.asset, style="bold"),
        title_align="left",
        width=PANEL_WIDTH,
        box=box.ROUNDED,
    )


def render(state: TailState, now_ms: int) -> RenderableType:
    """The whole view at wall time ``now_ms``: a panel per asset (regime, its age, what it
    was before, why, and the key signals with their z-scores), side by side as the width
    allows, then a line per tapewatch instance."""
    header = Text(f"tapewatch tail · {state.prefix} · {_clock(now_ms)} UTC", style="bold")
    parts: list[RenderableType] = [header]
    if not state.assets and not state.instances:
        parts.append(Text(f"waiting for tapewatch messages on {state.prefix}/# …", style="dim"))
        return Group(*parts)
    if state.assets:
        panels = [_asset_panel(state, state.assets[name], now_ms) for name in sorted(state.assets)]
        parts.append(Columns(panels))
    for name in sorted(state.instances):
        parts.append(_instance_line(state.instances[name], now_ms))
    parts.append(
        Text(
            f"z: z-score against the baseline · {WARMUP_MARK} baseline still filling "
            f"(warm-up) · {MISSING} missing · ages on event time",
            style="dim",
        )
    )
    return Group(*parts)


class PlainLog:
    """Plain lines for a log or a pipe: one per regime change and per instance status change,
    and a compact signals line at most once per ``signals_every_s`` per asset."""

    def __init__(self, signals_every_s: float = 10.0) -> None:
        self.signals_every_ms = signals_every_s * 1000
        self._regime_shown: dict[str, tuple[str | None, int | None]] = {}
        self._status_shown: dict[str, tuple[str | None, str | None]] = {}
        self._signals_shown: dict[str, int] = {}  # asset -> wall ms of the last line

    def lines(self, state: TailState, update: Update | None, now_ms: int) -> list[str]:
        if update is None:
            return []
        if update.kind == "status":
            view = state.instances[update.key]
            if self._status_shown.get(view.instance) == (view.state, view.session):
                return []
            self._status_shown[view.instance] = (view.state, view.session)
            return [f"[status]  {view.instance} {view.state} (session {view.session})"]
        if update.kind in ("regime", "events"):
            asset = state.assets[update.key]
            if self._regime_shown.get(asset.asset) == (asset.regime, asset.since):
                return []  # the retained regime and its event say the same thing
            self._regime_shown[asset.asset] = (asset.regime, asset.since)
            return [regime_line(asset)]
        if update.kind == "signals":
            last = self._signals_shown.get(update.key)
            if last is not None and 0 <= now_ms - last < self.signals_every_ms:
                return []
            self._signals_shown[update.key] = now_ms
            return [signals_line(state.assets[update.key])]
        return []


def regime_line(view: AssetView) -> str:
    reasons = format_reasons(view.reasons)
    return (
        f"[regime]  {view.asset} {view.regime}"
        + (f" (was {view.previous})" if view.previous else "")
        + f" since {_clock(view.since)}"
        + (f" — {reasons}" if reasons else "")
    )


def signals_line(view: AssetView) -> str:
    shown = []
    for key in KEY_SIGNALS:
        reading = view.signals.get(key.name)
        if reading is None:
            continue
        z = format_z(reading)
        value = MISSING if reading.value is None else key.fmt(reading.value)
        shown.append(f"{key.name}={value}" + (f"({z.replace(' ', '=')})" if z else ""))
    return f"[signals] {view.asset} {_clock(view.signals_ts)} {' '.join(shown)}".rstrip()
