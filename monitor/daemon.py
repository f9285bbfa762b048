"""The daemon: collectors → bounded queue → pipeline → publisher, plus the REST side.

All I/O is wired here; everything between the queue and the publisher is the pure pipeline.
One consumer task drains the queue, so the engines see frames in arrival order and need no locks.
REST answers (book snapshots, trade refetches, polled open interest and ratios) and the start-up
history are queued among the frames, so the pipeline and the recorder see one ordered stream,
and a replay of the recording reproduces the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from monitor import __version__
from monitor.broker import EmbeddedBroker, ensure_broker
from monitor.config import Config
from monitor.discovery import Discovery, stale_topics, sweep_filter, sweep_marker
from monitor.health import Health
from monitor.history_fetch import HistoryFetch
from monitor.history_tape import HistoryItem
from monitor.http_server import HttpServer, daemon_listener
from monitor.messages import OutMessage
from monitor.mqtt import Publisher
from monitor.pipeline import (
    Pipeline,
    RefetchRequest,
    Request,
    ResubscribeRequest,
    SnapshotRequest,
    trades_only,
)
from monitor.recorder import Recorder
from monitor.restart import (
    audit_outbox,
    hold_ms,
    outbox_marks,
    regime_states,
    regimes_to_take_over,
    restore_regimes,
)
from monitor.service import DaemonStatus, Notifier, supervise
from monitor.signal_store import SignalStore, store_chart
from monitor.state import (
    StateError,
    asset_differences,
    endpoint_differences,
    load_checkpoint,
    origin,
    put_aside,
    save_checkpoint,
)
from monitor.web import LiveFeed, add_routes
from signals.backfill import AssetHistory
from signals.regimes import RegimeChange
from streams.connection import (
    Backoff,
    Connection,
    Control,
    Frame,
    FrameQueue,
    LinkStats,
    RestBody,
)
from streams.continuity import TradeGap
from streams.frames import SkippedFrame
from streams.reporting import HostReporter, venues_report
from streams.rest import HostUnreachable, RestClient, RestError, RestResponse
from streams.tasks import stop_tasks
from streams.venues import RestCall, Socket, Venue

log = logging.getLogger("tapewatch.daemon")

HEALTH_INTERVAL_S = 10.0
# Retained health expires (MQTT 5) after three missed reports: a dead daemon's health goes.
HEALTH_EXPIRY_S = round(3 * HEALTH_INTERVAL_S)

# How long the consumer waits for a regime change's PUBACK before it goes on with the frames.
URGENT_WAIT_S = 0.1


def _freeze_long_lived_objects() -> None:
    """Move everything alive now (config, baselines, books, the loaded libraries) out of the
    cyclic garbage collector's reach: the daemon keeps them for its whole life, and a full
    collection that walks them holds the event loop for tens of milliseconds."""
    gc.collect()
    gc.freeze()


def _one_blas_thread() -> None:
    """Run numpy's BLAS on this thread only. A baseline's moments are one dot product over up
    to 129,600 samples, and OpenBLAS splits such a product across all cores; between calls its
    helper threads busy-wait, so a daemon that recomputes a baseline every few seconds kept a
    second core at 100 % doing nothing (measured: 1.02 cores for one np.dot every 10 ms, 0.03
    with one thread), which starved the simulator beside it and any other work on the machine.
    One thread computes the product in ~25 µs."""
    threadpool_limits(limits=1, user_api="blas")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Daemon:
    def __init__(
        self,
        config: Config,
        recorder: Recorder | None = None,
        publish: bool = True,
        stateful: bool = True,
    ) -> None:
        """``stateful=False`` (``tapewatch record``): no checkpoint is restored or written and
        no history is backfilled, so the state files of a daemon on the same config are never
        touched; what the collectors receive (the tape) does not depend on that state."""
        self.config = config
        self.recorder = recorder
        self.session = uuid.uuid4().hex[:12]
        self.started_ms = wall_ms()
        self.health = Health(silence_ms=round(config.collector.silence_timeout * 1000))
        # The charts' history: one-minute samples and regime changes, off the event loop.
        self.signal_store = (
            SignalStore(
                Path(config.state.dir) / f"{config.instance}.signals.sqlite",
                round(config.signals.baseline_window * 1000),
            )
            if stateful and config.state.signal_history
            else None
        )
        self.pipeline = Pipeline.for_session(
            config,
            self.session,
            __version__,
            self.started_ms,
            self.health,
            chart=self.signal_store is not None,
        )
        builder = self.pipeline.builder
        self.publisher: Publisher | None = None
        self.discovery: Discovery | None = None
        announce: tuple[OutMessage, ...] = ()
        if publish and config.mqtt.discovery:
            self.discovery = Discovery(
                config.mqtt.discovery, builder.topics, config.regimes, __version__
            )
            announce = tuple(self.discovery.messages(config.assets))
        if publish:
            self.publisher = Publisher(
                config.mqtt,
                client_id=f"tapewatch-{config.instance}-{self.session}",
                birth=builder.status("online"),
                will=builder.status("offline"),
                rebirth_topic=builder.topics.rebirth(),
                # Regime events survive a broker outage and a restart of the daemon.
                outbox_path=Path(config.state.dir) / f"{config.instance}.outbox.sqlite",
                latency=self.health.publish_latency,
                announce=announce,
            )
        self.queue = FrameQueue(config.collector.queue_size)
        # One reporter for every socket and REST client: an unreachable host is one log line
        # (then reminders at a falling rate), however many of them use it.
        self.hosts = HostReporter()
        self.venues = self.pipeline.venues
        self.connections = self._connections()
        self.rest = {
            name: RestClient.for_venue(venue, self.hosts) for name, venue in self.venues.items()
        }
        # /metrics and /healthz on http.listen, read from this daemon's state when asked.
        self.http: HttpServer | None = daemon_listener(self)
        self.live = LiveFeed()  # the chart pages open on the listener
        if self.http is not None:
            rules = [rule.name for rule in config.regimes]
            add_routes(self.http.app, self.signal_store, list(config.assets), rules, self.live)
        self.broker: EmbeddedBroker | None = None
        self.broker_ready = asyncio.Event()  # set once an embedded broker (if any) listens
        self._inflight: set[Request] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.checkpoint_path = Path(config.state.dir) / f"{config.instance}.npz"
        self._saving = asyncio.Lock()
        self.stateful = stateful
        self.origin = origin(config)
        # Checkpoints are numbered when taken, so an older one never replaces a newer on disk.
        self._taken = self._written = 0
        self._write_lock = threading.Lock()
        self.outbox_lost = 0  # events lost from the outbox before this start (health topic)
        self.restored_regimes: list[RegimeChange] = []  # republished at start
        self.notifier = Notifier.from_env()  # systemd's Type=notify; a no-op without it
        if stateful:
            self._restore()

    # -- wiring ---------------------------------------------------------------------------------
    def _symbols(self, venue: Venue) -> list[str]:
        return [s for a in self.config.assets.values() if (s := getattr(a, venue.config_key))]

    def _connection(self, venue: Venue, socket: Socket) -> Connection:
        col = self.config.collector
        on_open = None
        if socket.subscribe:

            async def on_open(ws: Any) -> None:
                for message in socket.subscribe:
                    await ws.send(message)

        return Connection(
            socket.name,
            venue.name,
            socket.url,
            self.queue,
            self.health.add_link(LinkStats(socket.name)),
            Backoff(col.backoff_initial, col.backoff_max),
            silence_timeout=col.silence_timeout,
            stall_timeout=col.stall_timeout,
            hosts=self.hosts,
            on_open=on_open,
            watched=socket.watched,
            stream_of=socket.stream_of,
            carries_trades=socket.carries_trades,
        )

    def _connections(self) -> list[Connection]:
        references = trades_only(self.config)
        return [
            self._connection(venue, socket)
            for venue in self.venues.values()
            for socket in venue.sockets(self._symbols(venue), references.get(venue.name, []))
        ]

    # -- checkpoints ----------------------------------------------------------------------------
    def _restore(self) -> None:
        existed = self.checkpoint_path.exists()
        arrays, meta = self._restore_baselines()
        outbox = self.publisher.outbox if self.publisher is not None else None
        if meta is not None:
            self.outbox_lost = audit_outbox(outbox, meta.get("outbox"), self.checkpoint_path)
        # Without any checkpoint the outbox alone says which regimes were last announced.
        saved = meta if meta is not None else (None if existed else {})
        states = regimes_to_take_over(self.pipeline, saved, outbox)
        self.restored_regimes = restore_regimes(self.pipeline, states, hold_ms(self.config))
        if self.recorder is not None:
            # The tape starts from the same state, so its replay repeats this session.
            self.recorder.write_restore(self.started_ms, arrays, states)

    def _restore_baselines(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Restore the engine from the checkpoint; returns the arrays restored and the
        checkpoint's metadata, or no arrays and None when there is none that may be used
        (missing, damaged, or from other venue endpoints)."""
        try:
            arrays, meta = load_checkpoint(self.checkpoint_path)
        except StateError as exc:
            if self.checkpoint_path.exists():
                log.warning("%s: starting the baselines afresh", exc)
            return {}, None
        recorded = meta.get("origin")
        differs = endpoint_differences(recorded, self.origin)
        if differs:
            log.warning(
                "checkpoint %s came from other venue endpoints (%s): %s; starting afresh",
                self.checkpoint_path,
                "; ".join(differs),
                put_aside(self.checkpoint_path),
            )
            return {}, None
        changed = asset_differences(recorded, self.origin)
        if changed:
            log.warning(
                "checkpoint %s: %s; those assets start afresh, the file is %s",
                self.checkpoint_path,
                "; ".join(changed.values()),
                put_aside(self.checkpoint_path),
            )
            arrays = {k: v for k, v in arrays.items() if k.split("/", 1)[0] not in changed}
            regimes = meta.get("regimes")
            if isinstance(regimes, dict):
                meta["regimes"] = {a: r for a, r in regimes.items() if a not in changed}
        skipped = self.pipeline.engine.restore(arrays)
        log.info(
            "restored baselines from %s (saved %s by session %s)%s",
            self.checkpoint_path,
            meta.get("saved_ms"),
            meta.get("session"),
            f"; afresh (config changed): {', '.join(skipped)}" if skipped else "",
        )
        return arrays, meta

    def save_checkpoint(self) -> None:
        self._write_checkpoint(*self._checkpoint_state())

    async def save_checkpoint_in_background(self) -> None:
        """``save_checkpoint`` with the writing (tens of ms for 90-day baselines, fsync
        included) in a thread: only the copy of the state holds the event loop."""
        state = self._checkpoint_state()  # copies, taken between two frames
        async with self._saving:  # one writer at a time: a later state is never overwritten
            await asyncio.to_thread(self._write_checkpoint, *state)

    def _checkpoint_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        self._taken += 1
        meta: dict[str, Any] = {
            "instance": self.config.instance,
            "session": self.session,
            "saved_ms": wall_ms(),
            "number": self._taken,
            "origin": self.origin,
            "regimes": regime_states(self.pipeline),
        }
        marks = outbox_marks(self.publisher.outbox if self.publisher is not None else None)
        if marks is not None:
            meta["outbox"] = marks.as_data()
        return self.pipeline.engine.checkpoint(), meta

    def _write_checkpoint(self, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
        # A background write still in its thread at shutdown must not land after the final,
        # newer checkpoint: writes are serialised, and a state older than the file is dropped.
        with self._write_lock:
            if meta["number"] < self._written:
                return
            try:
                save_checkpoint(self.checkpoint_path, arrays, meta)
                self._written = meta["number"]
            except OSError as exc:
                log.error("could not write checkpoint %s: %s", self.checkpoint_path, exc)

    async def _checkpoints(self) -> None:
        while True:
            await asyncio.sleep(self.config.state.checkpoint_interval)
            await self.save_checkpoint_in_background()

    # -- running --------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then flush and announce ``offline``. The HTTP listener
        (``http.listen``) opens first, so a port in use stops the daemon before anything else
        starts (``HttpListenError``), and closes last."""
        http = self.http
        if http is not None:
            await http.start()
        try:
            await self._run(stop)
        finally:
            if http is not None:
                await http.stop()

    async def _run(self, stop: asyncio.Event) -> None:
        if self.publisher is not None:
            self.broker = await ensure_broker(self.config.mqtt)
            if self.broker is not None:
                self.publisher.prefer_v311()  # amqtt speaks MQTT 3.1.1 only
        self.broker_ready.set()
        log.info(
            "tapewatch %s session %s: %d asset(s) on %d socket(s)%s",
            __version__,
            self.session,
            len(self.config.assets),
            len(self.connections),
            f", publishing to {self.config.mqtt.url} under {self.config.mqtt.prefix}"
            if self.publisher
            else ", not publishing",
        )
        named = [(c.run(), c.name) for c in self.connections]
        if self.publisher is not None:
            self._republish_restored()
            named += [(self.publisher.run(), "publisher"), (self._report_health(), "health")]
        named += [(self._consume(), "consumer")]
        if self.stateful:
            named += [(self._checkpoints(), "checkpoints")]
        named += [(poller, "poller") for poller in self._pollers()]
        if self.notifier.enabled:
            # Last: its first step, READY=1, runs after every task above took its first, so
            # "ready" means the state is restored, the HTTP listener and the embedded broker
            # (if any) listen, and the consumer drains the queue. Not "the broker and the
            # venues answer": the daemon does its job while it retries them (events wait in the
            # outbox), and a start that waited for them would turn a broker outage at boot into
            # a restart loop.
            named += [(supervise(self.notifier, self.service_status), "systemd")]
        _one_blas_thread()
        _freeze_long_lived_objects()  # again after the backfill, which adds the history
        # Supervised by hand rather than by a TaskGroup, so that shutdown is bounded even when
        # a task swallows its cancellation (see streams/tasks.py).
        tasks = [asyncio.create_task(coro, name=name) for coro, name in named]
        if self.stateful and self.config.signals.backfill:
            self._spawn(self._backfill_history(), "backfill")
        if self.discovery is not None:
            self._spawn(self._sweep_discovery(), "discovery-sweep")
        stopping = asyncio.create_task(stop.wait(), name="stop")
        try:
            done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
            ended = [t for t in done if t is not stopping]  # tasks meant to run until stopped
            log.info("stopping")
            self.notifier.stopping("stopping: writing the checkpoint, flushing MQTT")
            if self.stateful:
                self.save_checkpoint()
            if ended:
                task = ended[0]
                error = None if task.cancelled() else task.exception()
                raise RuntimeError(f"task {task.get_name()} ended unexpectedly") from error
            if self.publisher is not None:
                await self.publisher.close()
        finally:
            stuck = await stop_tasks([*tasks, stopping, *self._tasks])
            if stuck:
                log.error("tasks still running after shutdown grace: %s", ", ".join(stuck))
            for client in self.rest.values():
                await client.close()
            if self.recorder is not None:
                self.recorder.close()
            if self.signal_store is not None:
                store_chart(self.signal_store, self.pipeline.take_chart())
                self.signal_store.close()
            if self.broker is not None:
                await self.broker.stop()

    def service_status(self) -> DaemonStatus:
        """What systemd's STATUS= line shows (monitor/service.py)."""
        return DaemonStatus(
            mqtt_url=self.config.mqtt.url if self.publisher is not None else None,
            mqtt_connected=self.publisher is not None and self.publisher.connected.is_set(),
            sockets=len(self.connections),
            sockets_up=sum(c.health.connected for c in self.connections),
            frames=sum(c.health.frames for c in self.connections),
            outbox=self.health.outbox_depth,
        )

    async def _sweep_discovery(self) -> None:
        """Remove the Home Assistant entities this instance announced before and no longer
        does (an asset, or a signal only a removed rule read), by clearing their retained
        configs. What was announced is read from the broker, not recorded in the state
        directory: the broker's retained configs are exactly what HA discovers, so this also
        clears what a run with another state directory, on another machine or of an older
        version left there, and a lost state directory leaves no entity behind."""
        assert self.publisher is not None and self.discovery is not None
        prefix, instance = self.discovery.prefix, self.config.instance
        announced = {msg.topic for msg in self.publisher.announce}
        cleared = await self.publisher.sweep(
            sweep_filter(prefix, instance),
            sweep_marker(prefix, instance, self.session),
            lambda found: stale_topics(prefix, instance, found, announced),
        )
        if cleared:
            log.info("discovery: removed %d entities no longer configured", len(cleared))
            log.debug("discovery: cleared %s", ", ".join(cleared))

    def _republish_restored(self) -> None:
        """The restored regimes, retained, as they were (same regime, since and reasons): the
        broker's retained message may be gone, and the new session owns it now. No event: a
        restart is not a change."""
        assert self.publisher is not None
        now = wall_ms()
        for change in self.restored_regimes:
            self.publisher.publish(self.pipeline.builder.regime_state(change, now))

    async def _publish(self, msgs: list[Any], received_ms: float) -> None:
        """Hand ``msgs`` to the publisher; ``received_ms`` is when the queue item that caused
        them was received (the health report's ``publish_latency_ms`` starts there).

        A regime change goes out before the next frame is processed: the consumer waits (at
        most ``URGENT_WAIT_S``, and only while connected) for its PUBACK. Otherwise the rest of
        a batch of hundreds of frames would hold the event loop the publisher needs. Changes
        come a few an hour, so the pause costs nothing; frames wait in the queue meanwhile, and
        the sockets are not read nor their frames already read queued (``Connection.hold``):
        parsing or queuing them then would delay the PUBACK's reading. The kernel and the
        websocket's buffer keep them."""
        publisher = self.publisher
        if publisher is None:
            return
        if not (publisher.connected.is_set() and any(msg.qos for msg in msgs)):
            publisher.publish_all(msgs, received_ms)
            return
        for connection in self.connections:
            connection.hold()
        try:
            # The change's packets are written in here: the last thing before the wait, so
            # the loop is free when its PUBACK comes.
            publisher.publish_all(msgs, received_ms)
            async with asyncio.timeout(URGENT_WAIT_S):
                await publisher.acknowledged()
        except TimeoutError:
            pass
        finally:
            for connection in self.connections:
                connection.release()

    async def _consume(self) -> None:
        pipeline, recorder = self.pipeline, self.recorder
        while True:
            for item in await self.queue.get_batch():
                if recorder is not None:
                    recorder.write(item)
                received: float = item.ts_recv_ms
                if isinstance(item, Frame):
                    msgs = pipeline.feed_frame(item.venue, item.raw, item.ts_recv_ms, wall_ms())
                    received = item.recv_ms or received
                elif isinstance(item, HistoryItem):
                    pipeline.fill_history(item.asset, item.history, item.final)
                    continue
                elif isinstance(item, RestBody):
                    msgs = pipeline.feed_rest(
                        item.venue, item.url, item.body, item.ts_recv_ms, wall_ms()
                    )
                else:
                    msgs = pipeline.control(item.venue, item.ctl)
                if msgs:  # most frames publish nothing: no coroutine for them
                    await self._publish(msgs, received)
            for request in pipeline.take_requests():
                self._dispatch(request)
            if self.signal_store is not None and pipeline.chart_pending:
                chart = pipeline.take_chart()
                store_chart(self.signal_store, chart)
                self.live.push(chart)

    # -- REST side ------------------------------------------------------------------------------
    def _dispatch(self, request: Request) -> None:
        if request in self._inflight:
            return
        if isinstance(request, ResubscribeRequest):
            for conn in self.connections:
                if conn.venue == request.venue:
                    conn.request_reconnect(request.reason)
            return
        self._inflight.add(request)
        self._spawn(self._fetch(request), "rest")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """A task that ends by itself (a REST request, the backfill); cancelled at shutdown."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _backfill_history(self) -> None:
        try:
            await HistoryFetch(self.config, self._queue_history, self.rest, wall_ms()).run()
        except Exception:  # the live signals go on without it
            log.exception("backfill failed; z-scores build from live data only")
            return
        _freeze_long_lived_objects()
        await self.save_checkpoint_in_background()

    def _queue_history(self, asset: str, history: AssetHistory, final: bool) -> None:
        # Among the frames, so the pipeline fills the baselines in the order the recorder
        # writes it. Each item holds all history so far: one lost to an overfull queue costs
        # nothing the next one does not bring.
        self.queue.put(HistoryItem(wall_ms(), asset, history, final))  # type: ignore[arg-type]

    async def _fetch(self, request: Request) -> None:
        try:
            if isinstance(request, SnapshotRequest):
                await self._snapshot(request)
            elif isinstance(request, RefetchRequest):
                await self._refetch(request.gap)
        finally:
            self._inflight.discard(request)

    async def _get(self, venue: str, call: RestCall) -> RestResponse:
        """GET ``call`` (with retries) and queue its answer."""
        resp = await self.rest[venue].get_retrying(call.path, call.params, weight=call.weight)
        self.queue.put(RestBody(venue, wall_ms(), resp.url, resp.text))
        return resp

    async def _snapshot(self, req: SnapshotRequest) -> None:
        call = self.venues[req.venue].snapshot(req.symbol, self.config.collector.book_limit)
        if call is None:
            return
        backoff = Backoff(1.0, 60.0)
        # The book stays unsynced until a snapshot arrives, so keep trying (politely).
        while True:
            try:
                await self._get(req.venue, call)
                return
            except RestError as exc:
                delay = backoff.next_delay()
                log.log(
                    # An unreachable host is reported once per host, not per symbol and attempt.
                    logging.DEBUG if isinstance(exc, HostUnreachable) else logging.WARNING,
                    "%s %s: snapshot failed (%s); again in %.1fs",
                    req.venue,
                    req.symbol,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _refetch(self, gap: TradeGap) -> None:
        """The trades of an id gap, page by page as the venue serves them; then a
        ``refetch_done`` control, after which ids still missing count as lost."""
        venue = self.venues[gap.venue]
        try:
            call: RestCall | None = venue.refetch(gap)
            while call is not None:
                resp = await self._get(gap.venue, call)
                try:
                    events = venue.parse_rest(resp.url, resp.text, wall_ms())
                except SkippedFrame:  # the pipeline counts it; nothing to page on
                    break
                call = venue.next_refetch(gap, events)
            log.info(
                "%s %s: refetched trade ids %d..%d",
                gap.venue,
                gap.symbol,
                gap.first_id,
                gap.last_id,
            )
        except RestError as exc:
            log.warning(
                "%s %s: refetch of %d trades failed: %s", gap.venue, gap.symbol, gap.size, exc
            )
        finally:
            done = {
                "kind": "refetch_done",
                "symbol": gap.symbol,
                "first_id": gap.first_id,
                "last_id": gap.last_id,
            }
            self.queue.put(Control(gap.venue, wall_ms(), done))

    def _pollers(self) -> list[Any]:
        col = self.config.collector
        return [
            self._poll(venue.name, getattr(col, poll.pace.value), poll.call)
            for venue in self.venues.values()
            for symbol in self._symbols(venue)
            for poll in venue.polls(symbol)
        ]

    async def _poll(self, venue: str, every: float, call: RestCall) -> None:
        client = self.rest[venue]
        failing = False  # log a failing poll once, and its recovery, not every round
        while True:
            try:
                resp = await client.get(call.path, call.params, weight=call.weight)
                self.queue.put(RestBody(venue, wall_ms(), resp.url, resp.text))
                if failing:
                    log.info("%s %s: polling works again", call.path, call.params.get("symbol"))
                failing = False
            except RestError as exc:
                # An unreachable host is reported once per host, not once per poll.
                if not failing and not isinstance(exc, HostUnreachable):
                    log.warning("%s: poll failed (%s); retrying every %gs", call.path, exc, every)
                    failing = True
            await asyncio.sleep(every)

    async def _report_health(self) -> None:
        assert self.publisher is not None
        while True:
            outbox = self.publisher.outbox
            if outbox is None:
                self.health.outbox_depth = self.publisher.pending
            else:  # awaited: the loop does not wait for the outbox's queued writes
                with contextlib.suppress(sqlite3.Error):
                    self.health.outbox_depth = await asyncio.wrap_future(outbox.count_soon())
            now = wall_ms()
            report = self.pipeline.health_report(now)
            report["rest"] = {venue: client.stats() for venue, client in self.rest.items()}
            report["venues"] = venues_report(self.connections, self.rest)
            report["queue_dropped"] = self.queue.dropped
            report["outbox_lost"] = self.outbox_lost
            report["commands"] = self.publisher.command_stats()
            self.publisher.publish(self.pipeline.builder.health(report, now, HEALTH_EXPIRY_S))
            await asyncio.sleep(HEALTH_INTERVAL_S)
