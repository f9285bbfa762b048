"""Prometheus metrics and the health check of a running daemon, read when they are asked for.

Nothing is counted twice: the collector reads, at scrape time, the counters that the health topic
reports (each socket's ``LinkStats``, the pipeline's ``Health``, its books and trade continuity,
the REST clients, the frame queue, the publisher), the regime engines and the newest signals
message of each asset. The per-frame path pays nothing for ``/metrics``. The one thing recorded
for it is the publish latency histogram, which the publisher feeds each time it times a PUBACK.

Missing data has no sample, never a 0 (the project's rule for signals, kept for every metric): a
signal without a value, the age of a socket's last frame before it sent one, the regime of an
asset before its first snapshot, whether a REST host answers before the first request.

The registry is the daemon's own, not prometheus_client's global one: it holds exactly this
daemon's metrics (several daemons in one process, as in the tests, never share a series).
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from monitor import __version__
from signals.catalogue import SIGNALS
from signals.regimes import NEUTRAL
from streams.reporting import venues_report

if TYPE_CHECKING:
    from monitor.daemon import Daemon
    from streams.connection import Connection

# Receive of the frame that caused a regime change → the broker's PUBACK. The budget is a few ms
# (README "Roadmap"); during a broker outage events wait in the outbox for minutes or hours.
LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
# A scrape waits at most this long for the outbox's count (its thread may be in an fsync); then
# it reports the health loop's last count.
OUTBOX_COUNT_WAIT_S = 1.0

# BookSync.counters() keys → (metric name, help).
BOOK_COUNTERS = {
    "resyncs": ("tapewatch_book_resyncs", "Times a synced book was discarded and seeded again."),
    "gaps": ("tapewatch_book_gaps", "Breaks in the book's diff sequence."),
    "crossed": ("tapewatch_book_crossed", "Times the book crossed (best bid >= best ask)."),
    "dropped_buffered": (
        "tapewatch_book_dropped_buffered_diffs",
        "Buffered diffs discarded while waiting for a snapshot (overflow or a gap).",
    ),
    "stale_diffs": (
        "tapewatch_book_stale_diffs",
        "Diffs already covered by the book (or before the Coinbase snapshot).",
    ),
    "snapshots_rejected": (
        "tapewatch_book_snapshots_rejected",
        "Snapshots too old for the buffered diffs, or not asked for.",
    ),
}


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class DaemonMetrics:
    """A daemon's registry: its collector and the publish latency histogram."""

    def __init__(self, daemon: Daemon) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = Histogram(
            "tapewatch_publish_latency_seconds",
            "Receive of the frame that caused a regime change to the broker's PUBACK of each of "
            "its regime and events messages.",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.collector = DaemonCollector(daemon)
        self.registry.register(self.collector)

    def observe_latency(self, ms: float) -> None:
        """The publisher's hook: one measured delivery, in ms."""
        self.latency.observe(ms / 1000)

    async def scrape(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format the scraper accepts, and its content type. Runs on the
        event loop: the state it reads is changed by that loop only, so it is read between two
        frames, never half-updated."""
        await self.collector.count_outbox()
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class DaemonCollector(Collector):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.outbox_depth: int | None = None  # counted before each scrape

    async def count_outbox(self) -> None:
        publisher = self.daemon.publisher
        if publisher is None:
            return
        if publisher.outbox is None:  # no usable file: the events wait in memory
            self.outbox_depth = publisher.pending
            return
        try:
            future = asyncio.wrap_future(publisher.outbox.count_soon())
            self.outbox_depth = await asyncio.wait_for(future, OUTBOX_COUNT_WAIT_S)
        except (TimeoutError, RuntimeError, sqlite3.Error):  # busy, or closed at shutdown
            self.outbox_depth = self.daemon.health.outbox_depth

    def collect(self) -> Iterator[Metric]:
        d = self.daemon
        yield from _identity(d)
        yield from stream_metrics(d.connections, wall_ms())
        yield from _venue_metrics(d)
        yield from _book_metrics(d)
        yield from _trade_metrics(d)
        yield from _rest_metrics(d)
        yield from _publisher_metrics(d, self.outbox_depth)
        yield from regime_metrics(d)
        yield from signal_metrics(_signal_payloads(d))


def _identity(d: Daemon) -> Iterator[Metric]:
    info = InfoMetricFamily("tapewatch", "This daemon: version, instance and session.")
    info.add_metric(
        [], {"version": __version__, "instance": d.config.instance, "session": d.session}
    )
    yield info
    yield GaugeMetricFamily(
        "tapewatch_start_time_seconds", "When the daemon started (unix time).", d.started_ms / 1000
    )


def stream_metrics(connections: Iterable[Connection], now_ms: int) -> Iterator[Metric]:
    """Per socket, from its ``LinkStats``."""
    labels = ["stream", "venue"]
    connected = GaugeMetricFamily(
        "tapewatch_stream_connected", "1 while the socket is open, else 0.", labels=labels
    )
    frames = CounterMetricFamily(
        "tapewatch_stream_frames", "Frames received on the socket.", labels=labels
    )
    reconnects = CounterMetricFamily(
        "tapewatch_stream_reconnects",
        "Times the socket ended (dropped, silent, stalled, rotated or failed to connect) and "
        "was tried again.",
        labels=labels,
    )
    stalls = CounterMetricFamily(
        "tapewatch_stream_stalls",
        "Times a stream with a fixed cadence went silent while its socket stayed open.",
        labels=labels,
    )
    dropped = CounterMetricFamily(
        "tapewatch_stream_dropped_frames",
        "Frames of the socket dropped because the frame queue was full.",
        labels=labels,
    )
    age = GaugeMetricFamily(
        "tapewatch_stream_last_frame_age_seconds",
        "Seconds since the socket's last frame (no sample before its first).",
        labels=labels,
    )
    for conn in connections:
        link, key = conn.health, [conn.name, conn.venue]
        connected.add_metric(key, float(link.connected))
        frames.add_metric(key, link.frames)
        reconnects.add_metric(key, link.reconnects)
        stalls.add_metric(key, link.stalls)
        dropped.add_metric(key, link.dropped)
        if link.last_frame_recv_ms is not None:
            age.add_metric(key, max(0, now_ms - link.last_frame_recv_ms) / 1000)
    yield from (connected, frames, reconnects, stalls, dropped, age)


def _per_venue(name: str, doc: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["venue"])
    for venue, n in sorted(counts.items()):
        family.add_metric([venue], n)
    return family


def _venue_metrics(d: Daemon) -> Iterator[Metric]:
    health, pipeline = d.health, d.pipeline
    frames = _per_venue(
        "tapewatch_frames_processed",
        "Websocket frames the pipeline processed, per venue.",
        health.frames,
    )
    bodies = _per_venue(
        "tapewatch_rest_bodies_processed",
        "REST responses the pipeline processed, per venue.",
        health.rest_bodies,
    )
    ignored_counts = dict(health.ignored)
    for venue, decoder in pipeline.decoders.items():
        if decoder.not_read:  # frames of streams no signal reads, skipped unparsed
            ignored_counts[(venue, "not_read")] = decoder.not_read
    yield frames
    yield bodies
    yield _by_kind(
        "tapewatch_malformed_frames",
        "Frames skipped as malformed, per venue and kind.",
        health.malformed,
    )
    yield _by_kind(
        "tapewatch_ignored_frames",
        "Valid frames not used (acks, streams not read), per venue and kind.",
        ignored_counts,
    )
    yield _by_kind(
        "tapewatch_rejected_events",
        "Events rejected by the guards as implausible, per venue and kind.",
        health.rejected,
    )
    decoders = {
        key: n for decoder in pipeline.decoders.values() for key, n in decoder.health().items()
    }
    if "coinbase_sequence_gaps" in decoders:
        yield CounterMetricFamily(
            "tapewatch_coinbase_sequence_gaps",
            "Holes in a Coinbase connection's sequence_num (its books are then rebuilt).",
            decoders["coinbase_sequence_gaps"],
        )
    up = GaugeMetricFamily(
        "tapewatch_venue_up",
        "1 when every socket of the venue is connected and its REST host answers, else 0.",
        labels=["venue"],
    )
    for venue, report in venues_report(d.connections, d.rest).items():
        up.add_metric([venue], float(report["up"]))
    yield up
    yield CounterMetricFamily(
        "tapewatch_queue_dropped_frames",
        "Items dropped from the full frame queue (the oldest go first).",
        d.queue.dropped,
    )
    yield GaugeMetricFamily(
        "tapewatch_queue_depth", "Items waiting in the frame queue for the pipeline.", len(d.queue)
    )


def _by_kind(name: str, documentation: str, counts: Mapping[tuple[str, str], int]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=["venue", "kind"])
    for (venue, kind), n in sorted(counts.items()):
        family.add_metric([venue, kind], n)
    return family


def _book_metrics(d: Daemon) -> Iterator[Metric]:
    labels = ["venue", "symbol"]
    synced = GaugeMetricFamily(
        "tapewatch_book_synced", "1 while the order book is in sync, else 0.", labels=labels
    )
    counters = {
        key: CounterMetricFamily(name, doc, labels=labels)
        for key, (name, doc) in BOOK_COUNTERS.items()
    }
    for (venue, symbol), sync in sorted(d.pipeline.books.items()):
        synced.add_metric([venue, symbol], float(sync.synced))
        for key, n in sync.counters().items():
            if key in counters:
                counters[key].add_metric([venue, symbol], n)
    yield synced
    yield from counters.values()


def _trade_metrics(d: Daemon) -> Iterator[Metric]:
    labels = ["venue", "symbol"]
    families = {
        "gaps": CounterMetricFamily(
            "tapewatch_trade_gaps", "Jumps in the trade ids (each is refetched).", labels=labels
        ),
        "recovered_gaps": CounterMetricFamily(
            "tapewatch_trade_gaps_recovered",
            "Trade id gaps filled completely by the refetch.",
            labels=labels,
        ),
        "recovered_trades": CounterMetricFamily(
            "tapewatch_trades_recovered", "Trades brought back by refetches.", labels=labels
        ),
        "lost_trades": CounterMetricFamily(
            "tapewatch_trades_lost",
            "Trade ids given up on (too many to refetch, or the refetch failed).",
            labels=labels,
        ),
        "duplicates": CounterMetricFamily(
            "tapewatch_trades_duplicate", "Trades seen twice and dropped.", labels=labels
        ),
        "suspects_dropped": CounterMetricFamily(
            "tapewatch_trades_suspect_dropped",
            "Trades whose id jump the stream never confirmed.",
            labels=labels,
        ),
    }
    missing = GaugeMetricFamily(
        "tapewatch_trades_missing", "Trade ids missing now, waiting for a refetch.", labels=labels
    )
    suspects = GaugeMetricFamily(
        "tapewatch_trades_suspect",
        "Trades held now because their id jumps, until the stream confirms it.",
        labels=labels,
    )
    for (venue, symbol), state in sorted(d.pipeline.continuity.symbols.items()):
        key = [venue, symbol]
        for attr, family in families.items():
            family.add_metric(key, getattr(state, attr))
        missing.add_metric(key, state.missing)
        suspects.add_metric(key, len(state.suspects))
    yield from families.values()
    yield missing
    yield suspects


def _rest_metrics(d: Daemon) -> Iterator[Metric]:
    labels = ["venue"]
    counters = {
        "requests": ("tapewatch_rest_requests", "REST requests sent."),
        "errors": ("tapewatch_rest_errors", "REST requests that failed."),
        "rate_limited": ("tapewatch_rest_rate_limited", "HTTP 429 answers (rate limited)."),
        "banned": ("tapewatch_rest_banned", "HTTP 418 answers (IP banned for a while)."),
    }
    families = {
        attr: CounterMetricFamily(name, doc, labels=labels)
        for attr, (name, doc) in counters.items()
    }
    waited = CounterMetricFamily(
        "tapewatch_rest_waited_seconds",
        "Time requests waited for the venue's rate budget.",
        labels=labels,
    )
    weight = GaugeMetricFamily(
        "tapewatch_rest_used_weight",
        "Request weight used in the current minute, as the venue last reported it (Binance).",
        labels=labels,
    )
    reachable = GaugeMetricFamily(
        "tapewatch_rest_reachable",
        "1 when the venue's REST host answered the last request, 0 when it could not be "
        "reached (no sample before the first request).",
        labels=labels,
    )
    for venue, client in sorted(d.rest.items()):
        for attr, family in families.items():
            family.add_metric([venue], getattr(client, attr))
        waited.add_metric([venue], client.waited_s)
        if client.used_weight is not None:  # None: the venue never said (Coinbase)
            weight.add_metric([venue], client.used_weight)
        if client.reachable is not None:
            reachable.add_metric([venue], float(client.reachable))
    yield from families.values()
    yield from (waited, weight, reachable)


def _publisher_metrics(d: Daemon, outbox_depth: int | None) -> Iterator[Metric]:
    publisher = d.publisher
    if publisher is None:
        return
    yield GaugeMetricFamily(
        "tapewatch_mqtt_connected",
        "1 while the daemon is connected to the MQTT broker, else 0.",
        float(publisher.connected.is_set()),
    )
    yield CounterMetricFamily(
        "tapewatch_mqtt_connects", "Connections made to the MQTT broker.", publisher.connects
    )
    yield CounterMetricFamily(
        "tapewatch_mqtt_published_messages",
        "Messages handed to the broker (QoS 1 ones acknowledged).",
        publisher.published,
    )
    yield GaugeMetricFamily(
        "tapewatch_mqtt_pending_messages",
        "Messages waiting to be sent or acknowledged.",
        publisher.pending,
    )
    yield CounterMetricFamily(
        "tapewatch_mqtt_dropped_messages",
        "Messages kept in memory only, dropped because the publish queue was full.",
        publisher.dropped,
    )
    if outbox_depth is not None:
        yield GaugeMetricFamily(
            "tapewatch_outbox_depth",
            "Regime events in the durable outbox waiting for the broker's acknowledgement.",
            outbox_depth,
        )
    yield GaugeMetricFamily(
        "tapewatch_outbox_lost",
        "Regime events found missing from the outbox at start (not acknowledged by the broker).",
        d.outbox_lost,
    )
    commands = publisher.commands
    yield CounterMetricFamily(
        "tapewatch_commands_received", "Messages on the command topic.", commands.received
    )
    yield CounterMetricFamily(
        "tapewatch_commands_ignored",
        "Command messages ignored (too big, or retained).",
        commands.ignored,
    )
    yield CounterMetricFamily(
        "tapewatch_rebirths", "Rebirths performed (requests coalesced).", commands.rebirths
    )


def regime_metrics(d: Daemon) -> Iterator[Metric]:
    """``tapewatch_regime{asset,regime}``: 1 for the regime in force, 0 for every other one the
    rules can give (the Prometheus enum idiom); an asset before its first regime has none."""
    names = [rule.name for rule in d.config.regimes] + [NEUTRAL]
    regime = GaugeMetricFamily(
        "tapewatch_regime",
        "1 for the asset's regime in force, 0 for the other regimes.",
        labels=["asset", "regime"],
    )
    since = GaugeMetricFamily(
        "tapewatch_regime_since_timestamp_seconds",
        "Event time the asset's regime in force was entered (unix time).",
        labels=["asset"],
    )
    for asset, engine in sorted(d.pipeline.regimes.items()):
        change = engine.in_force()
        if change is None:
            continue
        for name in names:
            regime.add_metric([asset, name], float(name == change.regime))
        since.add_metric([asset], change.since / 1000)
    yield regime
    yield since


def _signal_payloads(d: Daemon) -> dict[str, dict[str, Any]]:
    """asset -> payload of its newest signals message (the retained one the publisher keeps for
    a rebirth: what the broker has, or is about to have)."""
    publisher = d.publisher
    if publisher is None:
        return {}
    topics = d.pipeline.builder.topics
    assets = {topics.signals(asset): asset for asset in d.config.assets}
    return {
        assets[msg.topic]: msg.payload for msg in publisher.queue.retained() if msg.topic in assets
    }


def signal_metrics(payloads: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    """Every signal's value and z-score from each asset's newest signals payload. A value or z
    that is missing (null on MQTT) has no sample."""
    labels = ["asset", "signal"]
    value = GaugeMetricFamily(
        "tapewatch_signal",
        "Each signal's latest published value, in the unit tapewatch_signal_info gives "
        '(README "Signals"); a missing value has no sample.',
        labels=labels,
    )
    z = GaugeMetricFamily(
        "tapewatch_signal_z",
        "z-score of the signal against its baseline; no sample while missing or warming up.",
        labels=labels,
    )
    at = GaugeMetricFamily(
        "tapewatch_signals_timestamp_seconds",
        "Event time of the asset's latest signals snapshot (unix time).",
        labels=["asset"],
    )
    for asset, payload in sorted(payloads.items()):
        at.add_metric([asset], payload["ts_event"] / 1000)
        for name, entry in payload["signals"].items():
            if _present(entry.get("value")):
                value.add_metric([asset, name], entry["value"])
            if _present(entry.get("z")):
                z.add_metric([asset, name], entry["z"])
    yield value
    yield z
    yield at
    info = InfoMetricFamily(
        "tapewatch_signal", "Each signal of the catalogue: its unit and definition.", labels=[]
    )
    for spec in SIGNALS.values():
        info.add_metric([], {"signal": spec.name, "unit": spec.unit, "definition": spec.definition})
    yield info


def _present(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and not math.isnan(x)


# -- /healthz -----------------------------------------------------------------------------------
def health_check(
    connections: Sequence[Connection],
    now_ms: int,
    silence_ms: int,
    broker_connected: bool,
    broker_url: str,
) -> tuple[bool, dict[str, Any]]:
    """Healthy when the broker is connected and every socket is open and has delivered a frame
    within ``silence_ms`` (``collector.silence_timeout``, what health calls silent). The body
    names every reason it is not."""
    reasons: list[str] = []
    if not broker_connected:
        reasons.append(f"mqtt: not connected to the broker at {broker_url}")
    streams: dict[str, dict[str, Any]] = {}
    for conn in connections:
        link = conn.health
        age = None if link.last_frame_recv_ms is None else max(0, now_ms - link.last_frame_recv_ms)
        streams[conn.name] = {
            "connected": link.connected,
            "last_frame_age_s": None if age is None else round(age / 1000, 3),
        }
        if not link.connected and link.last_error is None:
            reasons.append(f"stream {conn.name}: connecting")
        elif not link.connected:
            reasons.append(f"stream {conn.name}: disconnected ({link.last_error})")
        elif age is None:
            reasons.append(f"stream {conn.name}: connected, no frame yet")
        elif age > silence_ms:
            reasons.append(
                f"stream {conn.name}: no frame for {age / 1000:.1f}s (limit {silence_ms / 1000:g}s)"
            )
    body = {
        "status": "unhealthy" if reasons else "ok",
        "reasons": reasons,
        "mqtt_connected": broker_connected,
        "streams": streams,
    }
    return not reasons, body
