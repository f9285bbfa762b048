"""The one MQTT publisher: keeps a broker connection alive and hands it the session's messages.

Three parts: ``monitor/delivery.py`` decides what is sent next and what a PUBACK settles (pure);
``monitor/outbox.py`` keeps events on disk, on a thread of its own; ``Publisher`` here is the
connection loop between them and the broker, on the event loop.

- On every (re)connect it publishes the retained ``online`` status first; the broker holds the
  retained ``offline`` status as last will, so a daemon killed with SIGKILL is seen as offline.
- Signals are state, not history: while the broker is away only the newest message per signals
  topic is kept. Regime and event messages are queued in order (bounded) and a message leaves the
  queue only after the broker acknowledged it, so a dropped connection loses nothing queued.
- With an ``outbox_path``, the messages that are history rather than state (QoS >= 1 and not
  retained: the ``events`` topics) are also written to a durable SQLite outbox, and deleted
  from it after the broker's PUBACK. The writes run on the outbox's thread, so an fsync never
  holds the event loop, and the send does not wait for them: an event goes to the broker
  before its write (safe: see ``monitor/delivery.py``), and one the broker acknowledged before
  the write was done is deleted once it is written. While connected, the write starts when the
  PUBACK comes or ``STORE_AFTER_S`` after the publish, whichever is first, so the outbox's
  thread does not compete with the PUBACK for the core; otherwise at once. A new Publisher on the
  same file (the restarted daemon) sends what an earlier process left there first, in order,
  before anything of its own. Retained regime state stays in memory only: the new session
  republishes it. Delivery is at-least-once: a crash between PUBACK and the delete sends that
  event again after the restart, with the same payload and unique ``id``, so consumers can
  recognise the duplicate.
- QoS >= 1 messages go in publish order, up to ``IN_FLIGHT_MAX`` back to back before their
  PUBACKs (a regime change is two messages; several assets can change in one tick), so the
  broker receives them in that order (events from the outbox and in-memory regime messages stay
  interleaved as published). Each packet is written in the call that sends it, not on a later
  turn of the event loop (``monitor/mqtt_client.py``).
- A message on ``<prefix>/cmd/rebirth`` republishes the status and every retained message.
  The command topic is open to whoever the broker lets publish there, so it is bounded: on
  MQTT 5 the CONNECT announces a Maximum Packet Size (the broker never sends us more), payloads
  over ``MAX_COMMAND_BYTES`` and retained (stale) commands are ignored, rebirths are coalesced to
  at most one per ``REBIRTH_MIN_INTERVAL_S``, and repeats cost one log line per window.
- ``announce`` (Home Assistant's discovery configs, ``monitor/discovery.py``) follows the status
  on every connect and rebirth; ``sweep`` clears the retained configs no longer announced.
- A lost broker is retried every few seconds at most (``RECONNECT_INITIAL_S`` ..
  ``RECONNECT_MAX_S``, full jitter): the broker is ours to reach, not a rate-limited exchange, so
  events flow again within seconds of its return. The log says so at a falling rate.
- A QoS >= 1 message published with ``received_ms`` (the wall-clock receive time of the frame
  that caused it) adds its delivery latency, receive to PUBACK, to ``latency``: what the health
  report's ``publish_latency_ms`` shows.
- MQTT 5 when the broker speaks it: every message (the will and the clean-stop ``offline``
  included) says ``content-type: application/json``, and signals and health carry a message
  expiry (a dead daemon's retained signals and health expire). A broker that refuses MQTT 5 is
  spoken to in 3.1.1, with the same topics and payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path

import aiomqtt
from aiomqtt import ProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from monitor.config import MqttConfig
from monitor.delivery import DeliveryQueue, Entry, Rebirth
from monitor.health import LatencyWindow
from monitor.messages import OutMessage
from monitor.mqtt_client import Client
from monitor.outbox import Outbox
from streams.connection import Backoff
from streams.tasks import stop_tasks

log = logging.getLogger("tapewatch.mqtt")

# Reconnect back-off towards the broker: full jitter up to a cap of a few seconds, so events
# flow again within seconds of the broker's return (the exchanges keep their own, longer policy).
RECONNECT_INITIAL_S = 0.25
RECONNECT_MAX_S = 2.0
# A broker that answers but refuses the CONNECT (credentials, authorisation) is not coming back by
# itself: an operator fixes its password file or ACL. Asked again at a calmer pace, so its log
# does not fill with our refusals.
REFUSED_INITIAL_S = 2.0
REFUSED_MAX_S = 30.0
# A command is a topic and a word or two; anything bigger is not a command. The packet limit
# announced on MQTT 5 leaves room for the topic, properties and headers around such a payload.
MAX_COMMAND_BYTES = 1024
MAX_PACKET_BYTES = 16 * 1024
# At most this many commands unacknowledged in flight from the broker (MQTT 5 Receive Maximum):
# a flood waits in, and is bounded by, the broker's own per-client queue.
RECEIVE_MAXIMUM = 20
REBIRTH_MIN_INTERVAL_S = 5.0  # at most one rebirth per window; requests within it coalesce
REPEAT_LOG_WINDOW_S = 60.0  # ignored commands: the first is logged, then one summary per window
# QoS >= 1 messages sent back to back before their PUBACKs: a burst of regime changes costs one
# round trip. Well under the 20 that paho and Mosquitto allow in flight by default.
IN_FLIGHT_MAX = 8
# A broker that keeps the connection but never acknowledges: given up on, reconnected.
PUBACK_TIMEOUT_S = 10.0
# While connected, an event's outbox write starts when its PUBACK comes, or this long after it
# was published if the PUBACK is late. Started at once, the write's thread took the core and
# the GIL just as the PUBACK arrived (bench/README.md, "Latency": p99 +2 ms on a 2-core VM). A
# crash loses an event only if neither written nor acknowledged, so the window for that grows
# by at most this.
STORE_AFTER_S = 0.01
# How long a sweep of retained messages (``Publisher.sweep``) waits for its end marker.
SWEEP_TIMEOUT_S = 10.0


@dataclass(slots=True)
class CommandStats:
    """What arrived on the command topic since the start (the health report shows it)."""

    received: int = 0  # every message on the command topic
    ignored: int = 0  # too big or retained (stale): no effect
    rebirths: int = 0  # rebirths performed; the other requests were coalesced into them


class RepeatLog:
    """One WARNING for the first occurrence, then at most one summary line per window while
    more keep coming: a flood of bad commands costs a line a minute, not a line a message."""

    def __init__(self, what: str, window_s: float = REPEAT_LOG_WINDOW_S) -> None:
        self.what = what
        self.window_s = window_s
        self._more = 0
        self._timer: asyncio.TimerHandle | None = None

    def hit(self, detail: str) -> None:
        if self._timer is None:
            log.warning("mqtt: %s (%s)", self.what, detail)
            self._timer = asyncio.get_running_loop().call_later(self.window_s, self._summary)
        else:
            self._more += 1

    def _summary(self) -> None:
        if self._more == 0:
            self._timer = None  # quiet for a whole window: the next one is logged at once
            return
        log.warning("mqtt: %s: %d more in the last %gs", self.what, self._more, self.window_s)
        self._more = 0
        self._timer = asyncio.get_running_loop().call_later(self.window_s, self._summary)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class CommandTopic:
    """The command topic: each message checked cheaply, rebirths rate-limited. ``rebirth`` is
    called (on the event loop) for each rebirth to perform."""

    def __init__(self, topic: str, rebirth: Callable[[], None]) -> None:
        self.topic = topic
        self.stats = CommandStats()
        self._rebirth = rebirth
        self._asked = 0  # requests since the last rebirth performed
        self._last = -math.inf  # monotonic time of the last one
        self._timer: asyncio.TimerHandle | None = None  # a coalesced rebirth, scheduled
        self._too_big = RepeatLog(f"ignored a command payload over {MAX_COMMAND_BYTES} bytes")
        self._stale = RepeatLog("ignored a retained (stale) command")

    def handle(self, message: aiomqtt.Message) -> None:
        """Act on one message from the command topic, cheaply and with bounded effect. The
        payload is never kept or logged: only its size is looked at."""
        if not message.topic.matches(self.topic):
            return  # nothing else is subscribed; a broker may still send what it likes
        self.stats.received += 1
        payload = message.payload
        size = len(payload) if isinstance(payload, bytes | bytearray | str) else 0
        if size > MAX_COMMAND_BYTES:
            # MQTT 3.1.1 has no packet limit to announce: the client had to read it all.
            self.stats.ignored += 1
            self._too_big.hit(f"{size} bytes on {message.topic}")
            return
        if message.retain:
            # A retained command is an old one replayed by the broker at subscribe time; the
            # (re)connect publishes the birth anyway.
            self.stats.ignored += 1
            self._stale.hit(f"on {message.topic}")
            return
        self._ask_rebirth()

    def _ask_rebirth(self) -> None:
        """At once if the last rebirth is ``REBIRTH_MIN_INTERVAL_S`` old, else once at the end
        of that window however many requests arrive meanwhile."""
        self._asked += 1
        if self._timer is not None:
            return  # coalesced into the one already scheduled
        wait = self._last + REBIRTH_MIN_INTERVAL_S - time.monotonic()
        if wait <= 0:
            self._do_rebirth()
        else:
            self._timer = asyncio.get_running_loop().call_later(wait, self._do_rebirth)

    def _do_rebirth(self) -> None:
        self._timer = None
        self._last = time.monotonic()
        self.stats.rebirths += 1
        asked, self._asked = self._asked, 0
        if asked == 1:
            log.info("mqtt: rebirth requested")
        else:
            # One line per rebirth, so at most one per window whatever the request rate.
            log.info("mqtt: rebirth: %d requests coalesced into one", asked)
        self._rebirth()

    def cancel(self) -> None:
        """Stop the timers (the publisher has ended)."""
        for repeat in (self._too_big, self._stale):
            repeat.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Publisher:
    """The connection loop: connect (back-off, will, protocol fallback), announce the birth,
    listen on the command topic, and send what the ``DeliveryQueue`` hands out, reporting each
    PUBACK back to it and to the outbox."""

    def __init__(
        self,
        config: MqttConfig,
        client_id: str,
        birth: OutMessage,
        will: OutMessage,
        rebirth_topic: str,
        max_queued: int = 100_000,
        outbox_path: Path | None = None,
        latency: LatencyWindow | None = None,
        announce: tuple[OutMessage, ...] = (),
    ) -> None:
        """``announce``: retained messages sent right after the birth on every connect and
        rebirth (Home Assistant's discovery configs)."""
        self.config = config
        self.client_id = client_id
        self.birth = birth
        self.announce = announce
        self.will = will
        self.rebirth_topic = rebirth_topic
        self.command_topic = CommandTopic(rebirth_topic, self._rebirth)
        self.commands = self.command_topic.stats
        self.connected = asyncio.Event()
        self._wake = asyncio.Event()  # set: the queue may have something to hand out
        self._idle = asyncio.Event()  # set while nothing waits to be sent
        self._acked = asyncio.Event()  # set while no QoS >= 1 message waits for its PUBACK
        self._acked.set()
        # QoS >= 1 entries written on this connection, until their PUBACK: a prefix of the queue.
        self._written: dict[Entry, asyncio.Future[None]] = {}
        # The connection ``publish`` may write on: set while the delivery task waits.
        self._early: Client | None = None
        # Events whose outbox write waits for their PUBACK (``_store_later``), in publish order.
        self._unstored: list[Entry] = []
        self._store_timer: asyncio.TimerHandle | None = None
        self.published = 0
        self.connects = 0
        self._client: aiomqtt.Client | None = None
        self._down_since: float | None = None  # monotonic time the broker was first missed
        self._failures = 0  # failed attempts since then
        self.latency = latency if latency is not None else LatencyWindow()
        # Also told each latency measured, in ms (the /metrics histogram, monitor/metrics.py).
        self.on_latency: Callable[[float], None] | None = None
        # MQTT 5 first; a broker that refuses it gets 3.1.1 (``protocol``: what is in use).
        self._protocol = ProtocolVersion.V5
        self.protocol: ProtocolVersion | None = None
        self.outbox: Outbox | None = None
        left: list[tuple[int, OutMessage]] = []
        if outbox_path is not None:
            self.outbox, left = _open_outbox(outbox_path)
        self.queue = DeliveryQueue(max_queued, outbox=self.outbox is not None)
        # What an earlier process could not deliver goes before anything of this one.
        self.queue.resume(left)
        if left:
            self._acked.clear()

    # -- producer side (never blocks) -----------------------------------------------------
    def publish(self, msg: OutMessage, received_ms: float | None = None) -> None:
        """Queue ``msg``. ``received_ms``: when the frame that caused it was received (wall
        clock, ms); its delivery latency is then measured if it is QoS >= 1."""
        self.publish_all((msg,), received_ms)

    def publish_all(self, msgs: Iterable[OutMessage], received_ms: float | None = None) -> None:
        """Queue ``msgs`` in order, as ``publish`` does. If the delivery task waits, the QoS >= 1
        ones are written here and now, together (``Client.together``); the events' outbox
        writes start at their PUBACKs (``_store_later``)."""
        to_store: list[Entry] = []
        urgent = False
        for msg in msgs:
            entry = self.queue.add(msg, received_ms)
            if entry is not None:
                to_store.append(entry)
            urgent = urgent or msg.qos > 0
        if urgent:
            self._acked.clear()
            self._write_early()
        if to_store:
            self._store_later(to_store)
        self._idle.clear()
        self._wake.set()

    def _store_later(self, entries: list[Entry]) -> None:
        """Start the outbox writes of ``entries`` (published, maybe written to the broker) once
        their PUBACKs come, or ``STORE_AFTER_S`` from now, whichever is first; at once when
        no PUBACK can come soon (not connected, or no loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or not self.connected.is_set():
            for entry in entries:
                self._store(entry)
            return
        self._unstored.extend(entries)
        if self._store_timer is None:
            self._store_timer = loop.call_later(STORE_AFTER_S, self._store_unstored)

    def _store_unstored(self) -> None:
        """Start the outbox writes ``_store_later`` holds, in publish order."""
        if self._store_timer is not None:
            self._store_timer.cancel()
            self._store_timer = None
        entries, self._unstored = self._unstored, []
        for entry in entries:
            self._store(entry)

    def _store(self, entry: Entry) -> None:
        """Start ``entry``'s outbox write on the outbox's thread; the queue hears the outcome
        on the event loop. Without a running loop (a caller outside asyncio) it is written at
        once: there is no loop to keep free."""
        assert self.outbox is not None
        written = self.outbox.append_soon(entry.msg)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._stored(entry, written)
            return
        # wrap_future delivers the outcome through call_soon_threadsafe, and not at all once
        # the loop is closed.
        asyncio.wrap_future(written, loop=loop).add_done_callback(
            lambda done: self._stored(entry, done)
        )

    def _stored(self, entry: Entry, written: Future[int] | asyncio.Future[int]) -> None:
        try:
            outbox_id: int | None = written.result()
        except sqlite3.Error as exc:
            log.error(
                "outbox: could not store a message on %s (%s): kept in memory only",
                entry.msg.topic,
                exc,
            )
            outbox_id = None
        delivered = self.queue.stored(entry, outbox_id)
        if delivered is not None:
            # The broker acknowledged it while it was being written. Deletes stay in id order
            # (what ``lost_since`` relies on): writes report in call order, PUBACKs come in
            # publish order, and each delete is asked for at the later of the two.
            self._forget(delivered)
        self._wake.set()  # ``drained`` waits for the writes too

    def _forget(self, outbox_id: int) -> None:
        """Delete a delivered message from the outbox, on its thread; nothing waits for it (a
        crash before it is done sends the message again after the restart)."""
        assert self.outbox is not None
        self.outbox.ack_soon(outbox_id).add_done_callback(
            lambda done: _log_ack_failure(outbox_id, done)
        )

    @property
    def pending(self) -> int:
        return self.queue.pending

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    async def drained(self) -> None:
        """Return once nothing waits to be sent (every QoS >= 1 message acknowledged) and no
        outbox write is under way (so every delivered row's delete has been asked for)."""
        await self._idle.wait()

    async def acknowledged(self) -> None:
        """Return once every QoS >= 1 message (regime changes) has the broker's PUBACK;
        signals still waiting to be sent do not count, nor do outbox writes under way."""
        await self._acked.wait()

    # -- connection side --------------------------------------------------------------------
    async def run(self) -> None:
        """Publish until cancelled. Call it once: it closes the outbox when it ends (what is
        still in there is delivered by the next Publisher on the same file)."""
        try:
            await self._run()
        finally:
            self.command_topic.cancel()
            self._store_unstored()
            if self.outbox is not None:
                self.outbox.close()  # waits for the writes asked for: events published last

    async def _run(self) -> None:
        backoff = Backoff(RECONNECT_INITIAL_S, RECONNECT_MAX_S)
        refused = Backoff(REFUSED_INITIAL_S, REFUSED_MAX_S)
        while True:
            connected = False
            try:
                async with self._client_factory() as client:
                    connected = True
                    self._client = client
                    self.protocol = self._protocol
                    self.connects += 1
                    failed, down_for = self._failures, self._down_for()
                    backoff.reset()
                    refused.reset()
                    log.info(
                        "mqtt: connected to %s:%d (MQTT %s)%s",
                        self.config.host,
                        self.config.port,
                        _version(self._protocol),
                        f" after {failed} failed attempt(s) over {down_for:.1f}s" if failed else "",
                    )
                    self._down_since = None
                    self._failures = 0
                    await client.subscribe(self.rebirth_topic, qos=1)
                    await self._send_birth(client)
                    self.connected.set()
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                if not connected and self.protocol is None and _protocol_trouble(exc):
                    # Brokers without MQTT 5 (amqtt, old Mosquittos) refuse the CONNECT or
                    # never answer it: speak 3.1.1 to them (no content type, no expiry).
                    other = (
                        ProtocolVersion.V311
                        if self._protocol == ProtocolVersion.V5
                        else ProtocolVersion.V5
                    )
                    log.info("mqtt: %s; trying MQTT %s", exc, _version(other))
                    self._protocol = other
                    continue
                # A CONNACK with an error code before we were in: refused, not unreachable.
                refusal = not connected and isinstance(exc, aiomqtt.MqttCodeError)
                await self._lost(exc, refused if refusal else backoff)

    def prefer_v311(self) -> None:
        """Start with MQTT 3.1.1 (for a broker known not to speak 5, like the embedded one)."""
        self._protocol = ProtocolVersion.V311

    def _down_for(self) -> float:
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    async def _lost(self, exc: aiomqtt.MqttError, backoff: Backoff) -> None:
        self.connected.clear()
        self._client = None
        if self._down_since is None:
            self._down_since = time.monotonic()
        delay = backoff.next_delay()
        self._failures += 1
        # Retried every few seconds for as long as it takes: a WARNING on attempts 1, 2, 4, 8...
        # (a falling rate: about one an hour after a day), the others at DEBUG.
        attempt = self._failures
        level = logging.WARNING if attempt & (attempt - 1) == 0 else logging.DEBUG
        log.log(
            level,
            "mqtt: %s at %s (attempt %d, failing for %.0fs); reconnecting in %.1fs",
            exc,
            self.config.url,
            attempt,
            self._down_for(),
            delay,
        )
        await asyncio.sleep(delay)

    async def _serve(self, client: Client) -> None:
        """Deliver and listen for commands until one of them fails (MqttError)."""
        # Not a TaskGroup: aborting one waits forever for a child that swallowed its
        # cancellation (see streams/tasks.py), and aiomqtt's publish can do exactly that.
        tasks = [
            asyncio.create_task(self._deliver(client), name="mqtt-deliver"),
            asyncio.create_task(self._listen(client), name="mqtt-listen"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raises the MqttError that ended the session
            raise aiomqtt.MqttError("the message stream ended")
        finally:
            await stop_tasks(tasks)

    async def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued, then replace the retained status with ``offline``. Messages
        not flushed in time stay in the outbox, if there is one, for the next start."""
        client = self._client
        if client is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        try:
            await client.publish(
                self.will.topic,
                self.will.payload_bytes(),
                qos=1,
                retain=True,
                properties=self._properties(self.will),  # as the will: with its content type
                timeout=timeout,
            )
        except aiomqtt.MqttError as exc:
            log.warning("mqtt: could not publish offline status: %s", exc)

    def _client_factory(self) -> Client:
        cfg = self.config
        return Client(
            cfg.host,
            cfg.port,
            identifier=self.client_id,
            username=cfg.username,
            password=cfg.password,
            keepalive=round(cfg.keepalive),
            tls_context=cfg.ssl_context(),
            protocol=self._protocol,
            will=aiomqtt.Will(
                self.will.topic,
                self.will.payload_bytes(),
                qos=1,
                retain=True,
                properties=self._properties(self.will, PacketTypes.WILLMESSAGE),
            ),
            timeout=10,
            # Each packet leaves at once. With Nagle's algorithm a PUBLISH written while an
            # earlier small packet is unacknowledged waits for that ACK, which the broker
            # delays: regime changes took 15-25 ms instead of under 1 (bench/latency.py).
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            properties=self._connect_properties(),
            queue_type=_handled_on_arrival(self.command_topic.handle),
        )

    def _connect_properties(self) -> Properties | None:
        """MQTT 5: what we accept from the broker. It must not send a packet over
        ``MAX_PACKET_BYTES`` (it drops such a message for us: a 100 MB "command" never reaches
        this process) nor more than ``RECEIVE_MAXIMUM`` unacknowledged QoS 1 messages."""
        if self._protocol != ProtocolVersion.V5:
            return None
        props = Properties(PacketTypes.CONNECT)
        props.MaximumPacketSize = MAX_PACKET_BYTES
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        return props

    def command_stats(self) -> dict[str, int]:
        return asdict(self.commands)

    def _properties(self, msg: OutMessage, packet: int = PacketTypes.PUBLISH) -> Properties | None:
        """MQTT 5 extras: the payload's content type, and a message expiry for signals, so a
        retained signals message of a daemon that died does not outlive its meaning."""
        if self._protocol != ProtocolVersion.V5:
            return None
        return _json_properties(packet, msg.expiry)

    async def _send(self, client: aiomqtt.Client, msg: OutMessage) -> None:
        """Publish ``msg``; for QoS >= 1 this returns on the broker's PUBACK."""
        await client.publish(
            msg.topic,
            msg.payload_bytes(),
            qos=msg.qos,
            retain=msg.retain,
            properties=self._properties(msg),
        )
        self.published += 1

    async def _send_birth(self, client: aiomqtt.Client) -> None:
        """The status, then what is announced with it. Sent on every connect, not queued: a
        broker that restarted without persistence has forgotten every retained message, and the
        connect is when we learn of it."""
        await self._send(client, self.birth)
        for msg in self.announce:
            await self._send(client, msg)

    async def _deliver(self, client: Client) -> None:
        """Send what the queue hands out until the connection fails. QoS >= 1 messages go up to
        ``IN_FLIGHT_MAX`` at a time, in publish order; while this waits (for work or for
        PUBACKs), ``publish`` writes new ones itself (``_write_early``). A message in flight
        when the connection fails stays queued and is sent again, in its place, on the next."""
        queue = self.queue
        try:
            while True:
                item = queue.next()
                if item is None:
                    # A write still under way may owe a delete (its event acknowledged
                    # meanwhile): not idle until it reports, so a clean stop asks for that
                    # delete before the outbox closes.
                    if queue.idle and not queue.storing:
                        self._idle.set()
                    self._wake.clear()  # set again by publish, an outbox write, a rebirth
                    self._early = client
                    await self._wake.wait()
                    self._early = None
                    continue
                if isinstance(item, Rebirth):
                    await self._send_birth(client)
                    for msg in item.retained:
                        await self._send(client, msg)
                    continue
                if item.msg.qos == 0:
                    await self._send(client, item.msg)
                    continue
                burst = self._write_window(client)
                self._early = client
                await self._settle(burst)
                self._early = None
        finally:
            self._early = None
            self._drop_written()  # the next connection sends them again

    def _write_early(self) -> None:
        """From ``publish``: write the QoS >= 1 messages now in the window, if the delivery
        task waits (so nothing it sends can come between, like a rebirth's retained copies).
        Handing them to that task instead costs a turn of the event loop, and the PUBACK wait
        another three through aiomqtt's ``publish``: with 5,000 frames/s flowing, a turn is
        where a regime change waits (bench/README.md, "Latency")."""
        client = self._early
        if client is None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a caller off the loop: the delivery task sends it
            return
        self._write_window(client)

    def _write_window(self, client: Client) -> list[Entry]:
        """Write the QoS >= 1 entries in the window not yet written on this connection (in
        order: those written are a prefix of it); returns the window."""
        window = self.queue.in_flight(IN_FLIGHT_MAX)
        with client.together():
            for entry in window:
                if entry not in self._written:
                    self._write(client, entry)
        return window

    def _write(self, client: Client, entry: Entry) -> None:
        """Put ``entry`` on the wire (in publish order: every entry before it is written)."""
        msg = entry.msg
        self._written[entry] = client.publish_soon(
            msg.topic, msg.payload_bytes(), msg.qos, msg.retain, self._properties(msg)
        )

    async def _settle(self, burst: list[Entry]) -> None:
        """Wait for each PUBACK of ``burst`` (written), in publish order, which is the order
        the broker acknowledges them in, and report each to the queue and the outbox."""
        queue = self.queue
        for entry in burst:
            done = self._written[entry]
            try:
                async with asyncio.timeout(PUBACK_TIMEOUT_S):
                    await done
            except TimeoutError:
                raise aiomqtt.MqttError(f"no PUBACK within {PUBACK_TIMEOUT_S:g}s") from None
            del self._written[entry]
            self.published += 1
            if entry.received_ms is not None:
                ms = time.time_ns() / 1e6 - entry.received_ms
                self.latency.add(ms)
                if self.on_latency is not None:
                    self.on_latency(ms)
            outbox_id = queue.delivered(entry)
            if outbox_id is not None:
                self._forget(outbox_id)
        self._store_unstored()  # acknowledged: their writes no longer delay a PUBACK
        if queue.acknowledged:
            self._acked.set()

    def _drop_written(self) -> None:
        """Forget the writes of a connection that ended: their PUBACKs will never come."""
        for done in self._written.values():
            if not done.done():
                done.cancel()
            elif not done.cancelled():  # (a wait cut short cancels what it awaited)
                done.exception()  # retrieved: it is the connection's end, reported elsewhere
        self._written.clear()

    async def _listen(self, client: aiomqtt.Client) -> None:
        """Commands are handled as paho reads them (``_handled_on_arrival``): nothing is ever
        queued, so this only waits for the connection to end, which ``client.messages``
        reports as an MqttError."""
        async for message in client.messages:
            self.command_topic.handle(message)  # not reached while the queue type keeps nothing

    def _rebirth(self) -> None:
        self.queue.request_rebirth()
        self._idle.clear()
        self._wake.set()

    async def sweep(
        self,
        topic_filter: str,
        marker: str,
        stale: Callable[[set[str]], list[str]],
        timeout: float = SWEEP_TIMEOUT_S,
    ) -> list[str]:
        """Once connected, on a short connection of its own: read the retained messages under
        ``topic_filter`` and clear (an empty retained payload) the topics ``stale`` picks from
        them; returns those. Tried again, with back-off, until the broker lets it finish."""
        backoff = Backoff(RECONNECT_INITIAL_S, REFUSED_MAX_S)
        attempt = 0
        while True:
            await self.connected.wait()
            try:
                return await self._sweep(topic_filter, marker, stale, timeout)
            except aiomqtt.MqttError as exc:
                delay = backoff.next_delay()
                attempt += 1
                # A broker that refuses it for good (an ACL on client ids) costs a falling
                # number of lines: attempts 1, 2, 4, 8, ... at WARNING.
                level = logging.WARNING if attempt & (attempt - 1) == 0 else logging.DEBUG
                log.log(
                    level,
                    "mqtt: sweep of %s failed (%s, attempt %d); again in %.1fs",
                    topic_filter,
                    exc,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _sweep(
        self,
        topic_filter: str,
        marker: str,
        stale: Callable[[set[str]], list[str]],
        timeout: float,
    ) -> list[str]:
        """MQTT has no "that was the last retained message". A broker sends a subscription's
        retained messages as it grants it, and a client's messages in the order it queued them,
        so ``marker`` (a topic under ``topic_filter``), published after the SUBACK, comes back
        after the last of them. Without it in ``timeout`` (an ACL that hides the topic, say) the
        topics seen so far are cleared anyway: each one seen is stale whatever else was missed."""
        cfg = self.config
        found: set[str] = set()
        async with Client(
            cfg.host,
            cfg.port,
            identifier=f"{self.client_id}-sweep",
            username=cfg.username,
            password=cfg.password,
            keepalive=round(cfg.keepalive),
            tls_context=cfg.ssl_context(),
            protocol=self.protocol or self._protocol,
            timeout=10,
        ) as client:
            await client.subscribe(topic_filter, qos=1)
            await client.publish(marker, b"end", qos=1)
            try:
                async with asyncio.timeout(timeout):
                    async for message in client.messages:
                        if message.topic.matches(marker):
                            break
                        if message.retain and message.payload:
                            found.add(str(message.topic))
            except TimeoutError:
                log.warning(
                    "mqtt: no end marker on %s within %gs: sweeping the %d retained topic(s) seen",
                    marker,
                    timeout,
                    len(found),
                )
            cleared = stale(found)
            for topic in cleared:
                await client.publish(topic, b"", qos=1, retain=True)
        return cleared


def _handled_on_arrival(
    handle: Callable[[aiomqtt.Message], None],
) -> type[asyncio.Queue[aiomqtt.Message]]:
    """An incoming-message queue type for aiomqtt that keeps nothing: each message is handed
    to ``handle`` the moment paho has read it (on the event loop's thread), then dropped.

    Why not aiomqtt's queue and ``client.messages``: its iterator costs a task and a few loop
    turns per message while paho reads one message per turn, so under a flood of commands the
    queue only grows (100,000 small commands took a daemon from 67 to 450 MB)."""

    class Handled(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            handle(item)

        async def put(self, item: aiomqtt.Message) -> None:
            handle(item)

    return Handled


@functools.lru_cache(maxsize=16)
def _json_properties(packet: int, expiry: int | None) -> Properties:
    """Built once per kind and shared: paho's ``Properties()`` is slow (a tenth of a QoS 1
    publish and its PUBACK under cProfile), and paho only reads them (packed into each packet)."""
    props = Properties(packet)
    props.ContentType = "application/json"
    if expiry is not None:
        props.MessageExpiryInterval = expiry
    return props


def _version(protocol: ProtocolVersion) -> str:
    return "5" if protocol == ProtocolVersion.V5 else "3.1.1"


def _protocol_trouble(exc: aiomqtt.MqttError) -> bool:
    """Did the broker refuse the CONNECT for its protocol version (MQTT 3.1.1 CONNACK code 1,
    MQTT 5 reason code 132), or not answer it at all (amqtt with an MQTT 5 will)?"""
    rc = getattr(exc, "rc", None)
    value = getattr(rc, "value", rc)
    text = f"{rc} {exc}".lower()
    return value in (1, 132) or "protocol version" in text or "timed out" in text


def _log_ack_failure(outbox_id: int, done: Future[None]) -> None:
    """Runs on the outbox's thread once the delete of a delivered message is done."""
    exc = done.exception()
    if exc is not None:
        log.error(
            "outbox: could not delete delivered message %d (%s): it will be sent again "
            "after a restart",
            outbox_id,
            exc,
        )


def _open_outbox(path: Path) -> tuple[Outbox | None, list[tuple[int, OutMessage]]]:
    """The outbox at ``path`` and what an earlier process left in it, oldest first; or no
    outbox (logged) when it cannot be used at all. A corrupt file is already handled by
    ``Outbox`` (moved aside, fresh start); this is for the rest, e.g. a directory without
    write permission: the daemon keeps publishing, from memory."""
    outbox = None
    try:
        outbox = Outbox(path)
        left = outbox.peek(len(outbox))
    except (sqlite3.Error, OSError) as exc:
        log.error(
            "outbox: cannot use %s (%s): events are kept in memory only and are lost if the "
            "daemon stops before the broker has them",
            path,
            exc,
        )
        if outbox is not None:
            outbox.close()
        return None, []
    if left:
        log.info("outbox: %d undelivered message(s) from an earlier run go first", len(left))
    return outbox, left
