"""Frames in, MQTT messages out: parsers → books and trade continuity → signal engine →
regime engines → message builder.

The same pipeline serves the live daemon and ``tapewatch replay``; only the source of frames and
the sink of messages differ. It does no I/O. What it needs from the network (a book snapshot, the
trades of an id gap, a fresh Coinbase subscription) it asks for as ``Request`` data in
``requests``; the daemon carries them out and feeds the REST bodies back through ``feed_rest``,
in arrival order, exactly as a tape records them. A replay ignores the requests: the answers are
already on the tape. ``ts_pub`` is the caller's wall clock when live and event time in replay,
so a replay is reproducible to the byte.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from monitor.config import Config
from monitor.guards import BOOK_LEVEL, EventGuard, GuardLimits, Rejection
from monitor.health import Health
from monitor.messages import MessageBuilder, OutMessage, Topics
from signals.engine import DEPTH_BAND_PCT, BaselineSpec, SignalEngine
from signals.regimes import RegimeEngine
from streams import binance, coinbase
from streams.book import BookSync
from streams.continuity import TradeContinuity, TradeGap
from streams.events import (
    BINANCE_SPOT,
    BINANCE_USDM,
    COINBASE,
    DepthDiff,
    DepthSnapshot,
    Event,
    FeedGap,
    Trade,
)
from streams.frames import IgnoredFrame, MalformedFrame, SkippedFrame

CONFIG_VENUES = {"binance_spot": BINANCE_SPOT, "binance_usdm": BINANCE_USDM, "coinbase": COINBASE}

log = logging.getLogger("tapewatch.pipeline")


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """Fetch a REST depth snapshot for one symbol (its book lost sync)."""

    venue: str
    symbol: str


@dataclass(frozen=True, slots=True)
class BackfillRequest:
    """Fetch the trades of an id gap from REST."""

    gap: TradeGap


@dataclass(frozen=True, slots=True)
class ResubscribeRequest:
    """Coinbase books can only be re-seeded by a fresh level2 subscription: reconnect."""

    venue: str
    reason: str


Request = SnapshotRequest | BackfillRequest | ResubscribeRequest


def asset_symbols(config: Config) -> dict[str, dict[str, str]]:
    """asset -> {venue: venue symbol} for the venues configured per asset."""
    out: dict[str, dict[str, str]] = {}
    for name, asset in config.assets.items():
        out[name] = {
            venue: symbol
            for key, venue in CONFIG_VENUES.items()
            if (symbol := getattr(asset, key)) is not None
        }
    return out


class Pipeline:
    def __init__(
        self,
        config: Config,
        builder: MessageBuilder,
        health: Health | None = None,
    ) -> None:
        sig = config.signals
        self.config = config
        self.builder = builder
        self.health = health or Health()
        symbols = asset_symbols(config)

        def depth_1pct(venue: str, symbol: str) -> tuple[float, float] | None:
            # Read at snapshot time; an unsynced book would report a made-up depth.
            sync = self.books.get((venue, symbol))
            if sync is None or not sync.synced:
                return None
            return sync.book.depth_band(DEPTH_BAND_PCT)

        self.engine = SignalEngine(
            symbols,
            flow_window_ms=round(sig.flow_window * 1000),
            bucket_ms=round(sig.bucket * 1000),
            publish_interval_ms=round(sig.publish_interval * 1000),
            flow_min_coverage=sig.flow_min_coverage,
            volume_window_ms=round(sig.volume_window * 1000),
            depth=depth_1pct,
            baseline=BaselineSpec(
                span_ms=round(sig.baseline_window * 1000),
                bucket_ms=round(sig.baseline_bucket * 1000),
                min_obs=max(1, round(sig.baseline_min_history / sig.baseline_bucket)),
                robust=sig.robust_z,
            ),
            # Its trades go to the engine's USDT price, not to an asset; it has no book here.
            usdt_usd=sig.usdt_usd_product,
            # A trade socket silent this long is down: the silent stretch is missing data.
            silence_ms=round(config.collector.silence_timeout * 1000),
        )
        self.guard = _guard(config, symbols)
        self.regimes = {name: RegimeEngine(name, config.regimes) for name in config.assets}
        self.books = {
            (venue, symbol): BookSync(venue, symbol)
            for venues in symbols.values()
            for venue, symbol in venues.items()
        }
        self.continuity = TradeContinuity()
        self.coinbase_sequence = coinbase.SequenceTracker()
        self.requests: list[Request] = []  # drained by the daemon, ignored by replay
        self._last_trade_ms: dict[str, int] = {}  # per venue, live trades only
        # After a trade socket drops: venue -> (last trade time before, symbols not yet heard).
        self._reconnecting: dict[str, tuple[int, set[str]]] = {}
        # Trade-id gaps found on reconnect, waiting for their backfill: the outage's event-time
        # span per gap, marked missing only if the backfill could not recover every trade.
        self._outage: dict[TradeGap, tuple[int, int]] = {}
        # A retained signals message older than a few intervals is stale; let v5 brokers drop it.
        self.signal_expiry_s = max(10, round(sig.publish_interval * 10))

    @classmethod
    def for_session(
        cls,
        config: Config,
        session: str,
        version: str,
        started_ms: int,
        health: Health | None = None,
    ) -> Pipeline:
        topics = Topics(config.mqtt.prefix, config.instance)
        return cls(config, MessageBuilder(topics, session, version, started_ms), health)

    # -- inputs ---------------------------------------------------------------------------------
    def feed_frame(
        self, venue: str, raw: str | bytes, ts_recv_ms: int, now_ms: int | None = None
    ) -> list[OutMessage]:
        """One raw websocket frame. ``now_ms`` is the wall clock (live) or None (replay)."""
        self.health.frames[venue] += 1
        try:
            events = self._parse_frame(venue, raw, ts_recv_ms)
        except SkippedFrame as skip:
            self._count(venue, skip)
            return []
        self.guard.observe_frame(venue, events)
        return self._process(venue, events, now_ms, live=True)

    def feed_rest(
        self, venue: str, url: str, body: str | bytes, ts_recv_ms: int, now_ms: int | None = None
    ) -> list[OutMessage]:
        """One REST response body (``url`` = path?query), in arrival order among the frames."""
        self.health.rest_bodies[venue] += 1
        parser = coinbase.parse_rest if venue == COINBASE else binance.parse_rest
        try:
            events = parser(venue, url, body, ts_recv_ms)
        except SkippedFrame as skip:
            self._count(venue, skip)
            return []
        return self._process(venue, events, now_ms, live=False)

    def control(self, venue: str, ctl: dict[str, Any]) -> list[OutMessage]:
        """A collector conclusion, live or from a tape's ``ctl`` record."""
        if not isinstance(ctl, dict):
            self.health.count_malformed(venue, MalformedFrame("bad_control", str(ctl)[:80]))
            return []
        kind = ctl.get("kind")
        if kind == "link_lost":
            self._link_lost(venue, bool(ctl.get("trades", True)))
            return []
        if kind == "backfill_done":
            try:
                gap = TradeGap(venue, str(ctl["symbol"]), int(ctl["first_id"]), int(ctl["last_id"]))
            except (KeyError, TypeError, ValueError):
                self.health.count_malformed(venue, MalformedFrame("bad_control", str(ctl)[:80]))
                return []
            return self._backfill_done(gap)
        self.health.count_ignored(venue, IgnoredFrame("unknown_control", str(kind)[:40]))
        return []

    def _link_lost(self, venue: str, carried_trades: bool) -> None:
        if venue == COINBASE:
            self.coinbase_sequence.reset()  # a new connection numbers from its own baseline
        last = self._last_trade_ms.get(venue)
        if carried_trades and last is not None and venue not in self._reconnecting:
            symbols = {sym for (v, sym) in self.continuity.symbols if v == venue}
            self._reconnecting[venue] = (last, symbols)

    def _backfill_done(self, gap: TradeGap) -> list[OutMessage]:
        """Ids the backfill did not bring are lost; if an outage lost any, its span is missing."""
        lost = self.continuity.give_up(gap.venue, gap.symbol, gap.first_id, gap.last_id)
        if lost:
            log.warning(
                "%s %s: gave up on %d trade(s) of ids %d..%d (backfill incomplete); counted lost",
                gap.venue,
                gap.symbol,
                lost,
                gap.first_id,
                gap.last_id,
            )
        span = self._outage.pop(gap, None)
        if span is None or lost == 0:
            return []
        start, end = span
        return self.feed_event(FeedGap(gap.venue, gap.symbol, start, end, end, "trades lost"))

    def take_requests(self) -> list[Request]:
        out, self.requests = self.requests, []
        return out

    # -- internals ------------------------------------------------------------------------------
    def _parse_frame(self, venue: str, raw: str | bytes, ts_recv_ms: int) -> list[Event]:
        if venue == COINBASE:
            msg = coinbase.parse_envelope(raw)
            # The sequence counter covers every frame on the connection, heartbeats included.
            if self.coinbase_sequence.observe(msg):
                self._coinbase_sequence_gap()
            return coinbase.events_from(venue, msg, ts_recv_ms)
        if venue in (BINANCE_SPOT, BINANCE_USDM):
            return binance.parse_frame(venue, raw, ts_recv_ms)
        raise IgnoredFrame("venue_not_collected", venue)

    def _count(self, venue: str, skip: SkippedFrame) -> None:
        if isinstance(skip, MalformedFrame):
            self.health.count_malformed(venue, skip)
        elif isinstance(skip, IgnoredFrame):
            self.health.count_ignored(venue, skip)

    def _process(
        self, venue: str, events: list[Event], now_ms: int | None, live: bool
    ) -> list[OutMessage]:
        """``live``: the events came from a websocket frame (not a REST body)."""
        # The per-frame path: exact class checks and the common case inline.
        out: list[OutMessage] = []
        check = self.guard.check
        for event in events:
            rejection = check(venue, event)
            if rejection is not None:
                self.health.count_rejected(venue, rejection, event.ts_recv)
                continue
            cls = event.__class__
            if cls is Trade:
                counted, gap = self.continuity.admit(event, live)
                if gap is not None:
                    self._trade_gap(gap)
                for trade in counted:
                    if live:
                        if trade.ts_event > self._last_trade_ms.get(venue, 0):
                            self._last_trade_ms[venue] = trade.ts_event
                        if venue in self._reconnecting:
                            out += self._first_trade_since_reconnect(trade, gap, now_ms)
                            gap = None  # the gap opened before the first of them
                    out += self.feed_event(trade, now_ms)
                continue
            if cls is DepthDiff or cls is DepthSnapshot:
                self._book(event)
            out += self.feed_event(event, now_ms)
        return out

    def _trade_gap(self, gap: TradeGap) -> None:
        if gap.backfillable:
            self.requests.append(BackfillRequest(gap))
        else:
            log.warning(
                "%s %s: trade ids %d..%d missed, too many to backfill; counted lost",
                gap.venue,
                gap.symbol,
                gap.first_id,
                gap.last_id,
            )

    def _first_trade_since_reconnect(
        self, trade: Trade, gap: TradeGap | None, now_ms: int | None
    ) -> list[OutMessage]:
        venue = trade.venue
        pending = self._reconnecting[venue]
        if trade.symbol not in pending[1]:
            return []
        start, waiting = pending
        waiting.discard(trade.symbol)
        if not waiting:
            del self._reconnecting[venue]
        if gap is None:  # no trade was missed while the socket was down
            return []
        if gap.backfillable:
            self._outage[gap] = (start, trade.ts_event)  # decided when the backfill is done
            return []
        outage = FeedGap(venue, trade.symbol, start, trade.ts_recv, trade.ts_event, "trades lost")
        return self.feed_event(outage, now_ms)

    def _book(self, event: DepthDiff | DepthSnapshot) -> None:
        sync = self.books.get((event.venue, event.symbol))
        if sync is None:
            return
        filtered = self.guard.book_levels(event.venue, event)
        if filtered is not None:
            bids, asks, dropped = filtered
            detail = f"{event.symbol}: {dropped} level(s) crossing the band or over the cap"
            self.health.count_rejected(
                event.venue, Rejection(BOOK_LEVEL, detail), event.ts_recv, dropped
            )
            event = replace(event, bids=bids, asks=asks)
        result = sync.on_diff(event) if isinstance(event, DepthDiff) else sync.on_snapshot(event)
        if result.needs_snapshot:
            self._request_snapshot(sync, result.reason or "resync")

    def _request_snapshot(self, sync: BookSync, reason: str) -> None:
        if sync.venue == COINBASE:
            request: Request = ResubscribeRequest(COINBASE, reason)
        else:
            request = SnapshotRequest(sync.venue, sync.symbol)
        if request not in self.requests:
            self.requests.append(request)

    def _coinbase_sequence_gap(self) -> None:
        for (venue, _symbol), sync in self.books.items():
            if venue == COINBASE:
                result = sync.invalidate("sequence_gap")
                if result.needs_snapshot:
                    self._request_snapshot(sync, "sequence_gap")

    def feed_event(self, event: Event, now_ms: int | None = None) -> list[OutMessage]:
        snapshots = self.engine.on_event(event)
        if not snapshots:  # nearly every event: no publish boundary passed
            return []
        out: list[OutMessage] = []
        for snap in snapshots:
            ts_pub = snap.ts_event if now_ms is None else now_ms
            out.append(self.builder.signals(snap, ts_pub, self.signal_expiry_s))
            change = self.regimes[snap.asset].evaluate(snap)
            if change is not None:
                out.extend(self.builder.regime(change, ts_pub))
        return out

    # -- health ---------------------------------------------------------------------------------
    def health_report(self, now_ms: int) -> dict[str, Any]:
        report = self.health.report(now_ms)
        report["books"] = {
            f"{venue}/{symbol}": {"synced": sync.synced, **sync.counters()}
            for (venue, symbol), sync in sorted(self.books.items())
        }
        report["trades"] = self.continuity.report()
        report["coinbase_sequence_gaps"] = self.coinbase_sequence.gaps
        report["silent_feeds"] = self.engine.silent_feeds()
        return report


def _guard(config: Config, symbols: dict[str, dict[str, str]]) -> EventGuard:
    """The plausibility guard for the configured symbols (and the USDT-USD reference)."""
    reference_of = {
        (venue, symbol): asset
        for asset, venues in symbols.items()
        for venue, symbol in venues.items()
    }
    usdt = config.signals.usdt_usd_product
    if usdt and any(venue == COINBASE for venue, _ in reference_of):
        # Collected on the Coinbase socket (its trades only), priced around 1, not an asset's.
        reference_of.setdefault((COINBASE, usdt), usdt)
    g = config.guards
    limits = GuardLimits(
        max_ahead_ms=round(g.max_ahead * 1000),
        max_behind_ms=round(g.max_behind * 1000),
        price_band=g.price_band,
        max_notional=g.max_notional,
    )
    return EventGuard(limits, reference_of)
