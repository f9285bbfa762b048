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
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import msgspec

from monitor.config import Config
from monitor.guards import BOOK_LEVEL, Check, EventGuard, GuardLimits, Rejection
from monitor.health import Health
from monitor.history_tape import HISTORY, HistoryReader
from monitor.messages import MessageBuilder, OutMessage, Topics
from monitor.series import ChartItems, MinuteSampler, backfill_rows
from signals.backfill import AssetHistory, chart_samples
from signals.engine import DEPTH_BAND_PCT, BaselineSpec, SignalEngine, SignalSnapshot
from signals.regimes import RegimeEngine
from streams.book import BookSync
from streams.continuity import SymbolContinuity, TradeContinuity, TradeGap
from streams.events import COINBASE, DepthDiff, DepthSnapshot, Event, FeedGap, Trade
from streams.frames import IgnoredFrame, MalformedFrame, SkippedFrame
from streams.venues import ADAPTERS, Resync, Venue

log = logging.getLogger("tapewatch.pipeline")


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """Fetch a REST depth snapshot for one symbol (its book lost sync)."""

    venue: str
    symbol: str


@dataclass(frozen=True, slots=True)
class RefetchRequest:
    """Fetch the trades of an id gap from REST."""

    gap: TradeGap


@dataclass(frozen=True, slots=True)
class ResubscribeRequest:
    """Books seeded by the subscription itself (Coinbase) are re-seeded by a reconnect."""

    venue: str
    reason: str


Request = SnapshotRequest | RefetchRequest | ResubscribeRequest

# A gap's refetch is over (tapes written before the rename say "backfill_done").
REFETCH_DONE = ("refetch_done", "backfill_done")


def asset_symbols(config: Config) -> dict[str, dict[str, str]]:
    """asset -> {venue: venue symbol} for the venues configured per asset."""
    out: dict[str, dict[str, str]] = {}
    for name, asset in config.assets.items():
        out[name] = {
            adapter.name: symbol
            for key, adapter in ADAPTERS.items()
            if (symbol := getattr(asset, key)) is not None
        }
    return out


class _TradeLane:
    """What a trade of one subscribed (venue, symbol) goes through, looked up once: the guard's
    check, its id sequence (bound at its first admissible trade, when ``TradeContinuity`` would
    create it) and the engine's route."""

    __slots__ = ("check", "on_trade", "sequence")

    def __init__(self, check: Check, on_trade: Callable[[Trade], list[SignalSnapshot]]) -> None:
        self.check = check
        self.sequence: SymbolContinuity | None = None
        self.on_trade = on_trade


class Pipeline:
    def __init__(
        self,
        config: Config,
        builder: MessageBuilder,
        health: Health | None = None,
        chart: bool = False,
    ) -> None:
        """``chart``: keep one-minute samples and regime changes for the signal history store
        (``take_chart``); whoever sets it drains them."""
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
            # A trade socket silent this long (event time) is down: the stretch is missing data.
            silence_ms=round(sig.feed_silence * 1000),
            premium_stale_ms=round(sig.premium_max_age * 1000),
        )
        self.guard = _guard(config, symbols)
        self.regimes = {name: RegimeEngine(name, config.regimes) for name in config.assets}
        self.venues = config.adapters()
        self.books = {
            (venue, symbol): BookSync(venue, symbol, self.venues[venue].book_rule)
            for venues in symbols.values()
            for venue, symbol in venues.items()
        }
        self.continuity = TradeContinuity()
        # venue -> symbol -> its lane (see ``_trade``); by venue first, so that the per-trade
        # lookup builds no key. Trades come only from the configured venues' frames and bodies.
        self._lanes: dict[str, dict[str, _TradeLane]] = {venue: {} for venue in self.venues}
        self.decoders = {name: venue.decoder() for name, venue in self.venues.items()}
        self.history_reader = HistoryReader()  # history records of a tape
        self.history_added: dict[str, dict[str, int]] = {name: {} for name in config.assets}
        self.requests: list[Request] = []  # drained by the daemon, ignored by replay
        self._sampler = MinuteSampler() if chart else None
        self._chart = ChartItems([], [], [])
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
        chart: bool = False,
    ) -> Pipeline:
        topics = Topics(config.mqtt.prefix, config.instance)
        return cls(config, MessageBuilder(topics, session, version, started_ms), health, chart)

    # -- inputs ---------------------------------------------------------------------------------
    def feed_frame(
        self, venue: str, raw: str | bytes, ts_recv_ms: int, now_ms: int | None = None
    ) -> list[OutMessage]:
        """One raw websocket frame. ``now_ms`` is the wall clock (live) or None (replay)."""
        self.health.frames[venue] += 1
        decoder = self.decoders.get(venue)
        if decoder is None:
            self.health.count_ignored(venue, IgnoredFrame("venue_not_collected", venue))
            return []
        try:
            events = decoder.decode(raw, ts_recv_ms)
        except SkippedFrame as skip:
            self._count(venue, skip)
            events = []
        if decoder.frames_lost:
            # Frames were lost on the connection (even if this one is unusable): its books
            # may be missing updates.
            decoder.frames_lost = False
            self._frames_lost(venue)
        if not events:  # a frame of a stream no signal reads, a control reply, a bad frame
            return []
        if len(events) == 1 and events[0].__class__ is Trade:  # most frames: one trade
            return self._trade(venue, events[0], now_ms, True, True)
        return self._process(venue, events, now_ms, live=True)

    def feed_rest(
        self, venue: str, url: str, body: str | bytes, ts_recv_ms: int, now_ms: int | None = None
    ) -> list[OutMessage]:
        """One REST response body (``url`` = path?query), in arrival order among the frames."""
        self.health.rest_bodies[venue] += 1
        try:
            events = self._venue(venue).parse_rest(url, body, ts_recv_ms)
        except SkippedFrame as skip:
            self._count(venue, skip)
            return []
        return self._process(venue, events, now_ms, live=False)

    def fill_history(self, asset: str, history: AssetHistory, final: bool = False) -> None:
        """An asset's start-up history so far: fill what its baselines lack (idempotent)."""
        state = self.engine.assets.get(asset)
        if state is None:
            return
        added = self.history_added.setdefault(asset, {})
        samples = None
        if final and self._sampler is not None:
            # The charts' past minutes: the same samples the baselines get, and the price.
            samples = state.history_samples(history)
            charted = chart_samples(history, state.perp_flow.span_ms, state.flow_min_coverage)
            spot = history.spot
            minutes, rows = backfill_rows({**samples, **charted}, (spot.open_ms, spot.close))
            self._chart.history.append((asset, minutes, rows))
        for name, count in state.backfill(history, samples).items():
            added[name] = added.get(name, 0) + count
        if final:
            log.info(
                "backfill %s: samples added: %s",
                asset,
                ", ".join(f"{n} {name}" for name, n in sorted(added.items())) or "none",
            )

    def control(self, venue: str, ctl: dict[str, Any]) -> list[OutMessage]:
        """A collector conclusion, live or from a tape's ``ctl`` record."""
        if not isinstance(ctl, dict):
            self.health.count_malformed(venue, MalformedFrame("bad_control", str(ctl)[:80]))
            return []
        kind = ctl.get("kind")
        if kind == HISTORY:
            try:
                self.fill_history(*self.history_reader.read(ctl))
            except (TypeError, ValueError) as exc:
                self.health.count_malformed(venue, MalformedFrame("bad_control", str(exc)[:80]))
            return []
        if kind == "link_lost":
            self._link_lost(venue, bool(ctl.get("trades", True)))
            return []
        if kind in REFETCH_DONE:
            try:
                gap = TradeGap(venue, str(ctl["symbol"]), int(ctl["first_id"]), int(ctl["last_id"]))
            except (KeyError, TypeError, ValueError):
                self.health.count_malformed(venue, MalformedFrame("bad_control", str(ctl)[:80]))
                return []
            return self._refetch_done(gap)
        self.health.count_ignored(venue, IgnoredFrame("unknown_control", str(kind)[:40]))
        return []

    def _link_lost(self, venue: str, carried_trades: bool) -> None:
        decoder = self.decoders.get(venue)
        if decoder is not None:
            decoder.connection_lost()
        last = self._last_trade_ms.get(venue)
        if carried_trades and last is not None and venue not in self._reconnecting:
            symbols = {sym for (v, sym) in self.continuity.symbols if v == venue}
            self._reconnecting[venue] = (last, symbols)

    def _refetch_done(self, gap: TradeGap) -> list[OutMessage]:
        """Ids the refetch did not bring are lost; if an outage lost any, its span is missing."""
        lost = self.continuity.give_up(gap.venue, gap.symbol, gap.first_id, gap.last_id)
        if lost:
            log.warning(
                "%s %s: gave up on %d trade(s) of ids %d..%d (refetch incomplete); counted lost",
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

    @property
    def chart_pending(self) -> bool:
        """Whether ``take_chart`` has anything (cheap: asked after every record)."""
        chart = self._chart
        return bool(chart.samples or chart.changes or chart.history)

    def take_chart(self, final: bool = False) -> ChartItems:
        """The minutes closed, the regime changes and the start-up history's past minutes since
        the last call; ``final`` (the end of a replay): the minutes still open too, with their
        latest snapshot."""
        out, self._chart = self._chart, ChartItems([], [], [])
        if final and self._sampler is not None:
            out.samples.extend(self._sampler.flush())
        return out

    # -- internals ------------------------------------------------------------------------------
    def _venue(self, venue: str) -> Venue:
        adapter = self.venues.get(venue)
        if adapter is None:
            raise IgnoredFrame("venue_not_collected", venue)
        return adapter

    def _count(self, venue: str, skip: SkippedFrame) -> None:
        if isinstance(skip, MalformedFrame):
            self.health.count_malformed(venue, skip)
        elif isinstance(skip, IgnoredFrame):
            self.health.count_ignored(venue, skip)

    def _process(
        self, venue: str, events: list[Event], now_ms: int | None, live: bool
    ) -> list[OutMessage]:
        """``live``: the events came from a websocket frame (not a REST body)."""
        newest = events[-1] if live else None  # a frame's newest event measures its clock
        # The per-frame path: exact class checks and the common case inline.
        out: list[OutMessage] = []
        check = self.guard.check
        for event in events:
            cls = event.__class__
            if cls is Trade:
                out += self._trade(venue, event, now_ms, live, event is newest)  # type: ignore[arg-type]
                continue
            rejection = check(venue, event, event is newest)
            if rejection is not None:
                self.health.count_rejected(venue, rejection, event.ts_recv)
                continue
            if cls is DepthDiff or cls is DepthSnapshot:
                self._book(event)
            out += self.feed_event(event, now_ms)
        return out

    def _trade(
        self, venue: str, trade: Trade, now_ms: int | None, live: bool, clocked: bool
    ) -> list[OutMessage]:
        """One trade through the guard, continuity and the engine: the per-trade path."""
        lane = self._lanes[venue].get(trade.symbol) or self._lane(venue, trade.symbol)
        rejection = lane.check(trade, clocked)
        if rejection is not None:
            self.health.count_rejected(venue, rejection, trade.ts_recv)
            return []
        seq = lane.sequence
        if seq is None:  # the symbol's first admissible trade: its id sequence starts here
            seq = lane.sequence = self.continuity.state(venue, trade.symbol)
        if trade.trade_id - 1 == seq.last_id and not seq.suspects and not self._reconnecting:
            # ``SymbolContinuity.admit``'s first case and ``_admitted``, inline (nearly every
            # trade: the trade continues its sequence, nothing is held, and no reconnect is
            # being settled); the call was 3.5 % of a trade frame's time (measured in turn).
            seq.last_id = trade.trade_id
            seq.anchored = True
            if live and trade.ts_event > self._last_trade_ms.get(venue, 0):
                self._last_trade_ms[venue] = trade.ts_event
            snapshots = lane.on_trade(trade)
            return self._messages(snapshots, now_ms) if snapshots else []
        counted, gap = seq.admit(trade, live)
        if gap is not None:
            self._trade_gap(gap)
        out: list[OutMessage] = []
        for admitted in counted:
            if live and venue in self._reconnecting:
                out += self._first_trade_since_reconnect(admitted, gap, now_ms)
                gap = None  # the gap opened before the first of them
            out += self._admitted(lane, venue, admitted, now_ms, live)
        return out

    def _admitted(
        self, lane: _TradeLane, venue: str, trade: Trade, now_ms: int | None, live: bool
    ) -> list[OutMessage]:
        """A trade continuity counts: into the engine."""
        if live and trade.ts_event > self._last_trade_ms.get(venue, 0):
            self._last_trade_ms[venue] = trade.ts_event
        snapshots = lane.on_trade(trade)
        return self._messages(snapshots, now_ms) if snapshots else []

    def _lane(self, venue: str, symbol: str) -> _TradeLane:
        """The lane of (venue, symbol): kept for a subscribed one; for any other symbol, made
        for the one trade (the guard rejects it), so made-up symbols cannot grow the table."""
        check = self.guard.checker(venue, symbol)
        if check is None:
            return _TradeLane(partial(self.guard.check, venue), self.engine.on_trade)
        lane = self._lanes[venue][symbol] = _TradeLane(
            check, self.engine.trade_route(venue, symbol)
        )
        return lane

    def _trade_gap(self, gap: TradeGap) -> None:
        if gap.refetchable:
            self.requests.append(RefetchRequest(gap))
        else:
            log.warning(
                "%s %s: trade ids %d..%d missed, too many to refetch; counted lost",
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
        if gap.refetchable:
            self._outage[gap] = (start, trade.ts_event)  # decided when the refetch is done
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
            event = msgspec.structs.replace(event, bids=bids, asks=asks)
        result = sync.on_diff(event) if isinstance(event, DepthDiff) else sync.on_snapshot(event)
        if result.needs_snapshot:
            self._request_snapshot(sync, result.reason or "resync")

    def _request_snapshot(self, sync: BookSync, reason: str) -> None:
        if self.venues[sync.venue].resync is Resync.RESUBSCRIBE:
            request: Request = ResubscribeRequest(sync.venue, reason)
        else:
            request = SnapshotRequest(sync.venue, sync.symbol)
        if request not in self.requests:
            self.requests.append(request)

    def _frames_lost(self, venue: str) -> None:
        for (book_venue, _symbol), sync in self.books.items():
            if book_venue == venue:
                result = sync.invalidate("sequence_gap")
                if result.needs_snapshot:
                    self._request_snapshot(sync, "sequence_gap")

    def feed_event(self, event: Event, now_ms: int | None = None) -> list[OutMessage]:
        snapshots = self.engine.on_event(event)
        return self._messages(snapshots, now_ms) if snapshots else []

    def _messages(self, snapshots: list[SignalSnapshot], now_ms: int | None) -> list[OutMessage]:
        """What the snapshots of a publish boundary say: signals, and any regime change."""
        out: list[OutMessage] = []
        sampler = self._sampler
        for snap in snapshots:
            ts_pub = snap.ts_event if now_ms is None else now_ms
            out.append(self.builder.signals(snap, ts_pub, self.signal_expiry_s))
            change = self.regimes[snap.asset].evaluate(snap)
            if change is not None:
                msgs = self.builder.regime(change, ts_pub)
                out.extend(msgs)
                if sampler is not None:
                    self._chart.changes.append((change, msgs[-1].payload))
            if sampler is not None and (sample := sampler.add(snap)) is not None:
                self._chart.samples.append(sample)
        return out

    # -- health ---------------------------------------------------------------------------------
    def health_report(self, now_ms: int) -> dict[str, Any]:
        report = self.health.report(now_ms)
        report["books"] = {
            f"{venue}/{symbol}": {"synced": sync.synced, **sync.counters()}
            for (venue, symbol), sync in sorted(self.books.items())
        }
        report["trades"] = self.continuity.report()
        for venue, decoder in self.decoders.items():
            report.update(decoder.health())
            if decoder.not_read:
                report["ignored"][f"{venue}/not_read"] = decoder.not_read
        report["silent_feeds"] = self.engine.silent_feeds()
        return report


def trades_only(config: Config) -> dict[str, list[str]]:
    """venue -> symbols read for their trades alone, no book: the USDT-USD reference of the
    adjusted premium, a Coinbase product, collected when any asset is on Coinbase."""
    usdt = config.signals.usdt_usd_product
    on_coinbase = any(asset.coinbase for asset in config.assets.values())
    return {COINBASE: [usdt]} if usdt and on_coinbase else {}


def _guard(config: Config, symbols: dict[str, dict[str, str]]) -> EventGuard:
    """The plausibility guard for the configured symbols (and the trades-only references)."""
    reference_of = {
        (venue, symbol): asset
        for asset, venues in symbols.items()
        for venue, symbol in venues.items()
    }
    for venue, references in trades_only(config).items():
        for symbol in references:
            # Priced on their own (USDT-USD around 1), not as an asset.
            reference_of.setdefault((venue, symbol), symbol)
    g = config.guards
    limits = GuardLimits(
        max_ahead_ms=round(g.max_ahead * 1000),
        max_behind_ms=round(g.max_behind * 1000),
        price_band=g.price_band,
        max_notional=g.max_notional,
    )
    return EventGuard(limits, reference_of)
