"""``tapewatch notify``: regime changes from MQTT to phones and chat, through Apprise.

One worker is one MQTT 5 client with a stable client id (``<group>-<worker>``, by default
``tapewatch-notify-<host name>``) and a durable session (clean start off, a session expiry):
while it is down the broker keeps its subscription and queues its events. Workers of one group
subscribe to
``$share/<group>/<prefix>/+/events``, so the broker hands each event to one of them.

The PUBACK of an event is sent by hand (paho's manual acknowledgement), and only when every
target's row in the store (``monitor/notify_store.py``) is ``sent``, or ``failed`` after the
give-up time. An event that dies with the worker is therefore delivered again by the broker to
the same session, and the store decides what to do with it: finished rows are acknowledged
without sending; a row still ``sending`` (the outcome of that request is unknown) is sent again,
marked as a retry. What arrives is grouped (``Batcher``): a burst becomes one digest.

Formatting, filters and grouping are pure (``monitor/notify_message.py``); this module is the
I/O: the MQTT session, the Apprise calls (blocking, on a thread of their own, one at a time)
and the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import ssl
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import apprise
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from monitor.config import Config
from monitor.notify_message import (
    DIRECTIONS,
    BadEvent,
    Batcher,
    Event,
    EventFilter,
    Message,
    format_digest,
    parse_event,
    retry_delay,
)
from monitor.notify_store import NotifyStore, Row, target_key
from streams.tasks import stop_tasks

log = logging.getLogger("tapewatch.notify")

CONNECT_TIMEOUT_S = 10.0
# Full-jitter back-off to the broker, as the publisher's: events flow again within seconds.
BROKER_BACKOFF_MAX_S = 2.0
# A clean stop lets a request under way finish (Apprise's own timeouts bound it) for this long.
STOP_GRACE_S = 15.0


class NotifyError(Exception):
    """A problem that stops ``tapewatch notify`` before or instead of running (one line)."""


# -- targets --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Target:
    key: str  # target_key(url): what the store records
    label: str  # the URL with its secrets masked, for logs
    service: apprise.Apprise


def _asset() -> apprise.AppriseAsset:
    # Memory only: Apprise would otherwise keep a cache of its own on disk.
    return apprise.AppriseAsset(app_id="tapewatch", app_desc="tapewatch", storage_mode="memory")


def _last_line(text: str, fallback: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else fallback


def _mask(text: str, url: str) -> str:
    scheme = url.split("://", 1)[0]
    return text.replace(url, f"{scheme}://...")


def load_targets(urls: Sequence[str]) -> list[Target]:
    """One Apprise service per URL; ``NotifyError`` names the first URL Apprise cannot use
    (by position and scheme: the rest of a URL may be a token)."""
    targets: list[Target] = []
    asset = _asset()
    for i, url in enumerate(urls, 1):
        with apprise.LogCapture(level=logging.DEBUG, fmt="%(message)s") as captured:
            plugin = apprise.Apprise.instantiate(url, asset=asset)
        if plugin is None:
            scheme = url.split("://", 1)[0]
            why = _mask(_last_line(captured.getvalue(), "Apprise does not accept it"), url)
            raise NotifyError(
                f"notification URL {i} of {len(urls)} ({scheme}://...) is not usable: {why} "
                "(see Apprise's list of services for the URL form of each)"
            )
        service = apprise.Apprise(asset=asset)
        service.add(plugin)
        targets.append(Target(target_key(url), str(plugin.url(privacy=True)), service))
    return targets


def _send_blocking(target: Target, message: Message, body_format: str) -> str | None:
    """One attempt; None when the service accepted it, else the error Apprise reported."""
    fmt = apprise.NotifyFormat.MARKDOWN if body_format == "markdown" else apprise.NotifyFormat.TEXT
    with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:
        try:
            ok = bool(
                target.service.notify(body=message.body, title=message.title, body_format=fmt)
            )
        except Exception as exc:  # a plugin bug must cost a retry, not the worker
            return f"{type(exc).__name__}: {exc}"
    return None if ok else _last_line(captured.getvalue(), "the service did not accept it")


# -- decisions ------------------------------------------------------------------------------------
def targets_to_send(
    rows: Iterable[Row], targets: Iterable[str], owner: str, now_ms: int, stale_ms: int
) -> dict[str, bool]:
    """Target -> "an earlier attempt's outcome is unknown" for the targets an event still needs.

    No row: first attempt. ``sent``/``failed``: done. ``sending`` by ``owner``: its request
    was under way when this worker stopped, so it goes again, marked as a retry. ``sending`` by
    another worker: that worker's session holds the event and it will finish it, unless the row
    has not moved for ``stale_ms`` (that worker is gone)."""
    by_target = {row.target: row for row in rows}
    out: dict[str, bool] = {}
    for key in targets:
        row = by_target.get(key)
        if row is None:
            out[key] = False
        elif row.state == "sending" and (row.owner == owner or now_ms - row.updated_ms > stale_ms):
            out[key] = True
    return out


@dataclass(eq=False, slots=True)
class Pending:
    """An event waiting in a batch or being delivered, and the MQTT messages that carried it."""

    event: Event
    targets: dict[str, bool]  # as targets_to_send
    mids: list[tuple[int, int]] = field(default_factory=list)  # (connection, packet id)


def _wall_ms() -> int:
    return int(time.time() * 1000)


# -- the worker -----------------------------------------------------------------------------------
class Notifier:
    """Runs one worker until ``stop`` is set (``run``). ``ready`` is set once subscribed;
    ``counts`` tallies ``sent``/``failed`` messages and ``duplicates``/``filtered``/
    ``malformed`` events, for tests and logs."""

    def __init__(
        self,
        config: Config,
        targets: Sequence[Target],
        *,
        worker: str,
        tls_context: ssl.SSLContext | None = None,
        store_path: str | Path | None = None,
    ) -> None:
        n = config.notify
        self.config = config
        self.notify = n
        self.targets = list(targets)
        self.client_id = f"{n.group}-{worker}"
        self.topic = f"$share/{n.group}/{config.mqtt.prefix}/+/events"
        self.filter = EventFilter(
            frozenset(n.assets),
            frozenset(n.regimes),
            frozenset(d for d in DIRECTIONS if d in n.directions),
        )
        self.batcher: Batcher[Pending] = Batcher(
            round(n.group_window * 1000), round(n.min_interval * 1000), n.max_events
        )
        self.store = NotifyStore(
            Path(store_path) if store_path else Path(config.state.dir) / f"notify-{n.group}.sqlite"
        )
        self.stale_ms = round((n.give_up + n.retry_max) * 1000) + 60_000
        self.tls_context = tls_context if tls_context is not None else config.mqtt.ssl_context()
        self.ready = asyncio.Event()
        self.counts: Counter[str] = Counter()
        self._pending: dict[str, Pending] = {}
        self._client: aiomqtt.Client | None = None
        self._generation = 0
        self._wake = asyncio.Event()
        # Apprise blocks (requests); one thread, one request at a time, so its log capture
        # sees only its own request's lines.
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notify-send")

    # -- life ---------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.store.open()
        except (sqlite3.Error, OSError) as exc:
            raise NotifyError(f"cannot open the store {self.store.path}: {exc}") from None
        labels = ", ".join(t.label for t in self.targets)
        log.info(
            "notify: worker %s, %d target(s): %s; store %s",
            self.client_id,
            len(self.targets),
            labels,
            self.store.path,
        )
        mqtt_task = asyncio.create_task(self._mqtt_loop(), name="notify-mqtt")
        delivery = asyncio.create_task(self._delivery_loop(stop), name="notify-delivery")
        stopped = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait(
                [mqtt_task, delivery, stopped], return_when=asyncio.FIRST_COMPLETED
            )
            for task in (mqtt_task, delivery):
                error = task.exception() if task in done else None
                if isinstance(error, sqlite3.Error | OSError):
                    # The record of what was sent is unusable: stop rather than send blind.
                    raise NotifyError(f"store {self.store.path}: {error}") from None
                if error is not None:
                    raise error
            stop.set()
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(delivery), STOP_GRACE_S)
        finally:
            stop.set()
            await stop_tasks([delivery, mqtt_task, stopped])
            await self.store.close()
            self._sender.shutdown(wait=False, cancel_futures=True)
            log.info(
                "notify: stopped; %d message(s) sent, %d given up, %d event(s) waiting (the "
                "broker keeps them for this session)",
                self.counts["sent"],
                self.counts["failed"],
                len(self._pending),
            )

    def _make_client(self) -> aiomqtt.Client:
        mqtt = self.config.mqtt
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(self.notify.session_expiry)
        # Unacknowledged events held at once: as many as one digest may list.
        props.ReceiveMaximum = self.notify.max_events
        client = aiomqtt.Client(
            mqtt.host,
            mqtt.port,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
            username=mqtt.username,
            password=mqtt.password,
            tls_context=self.tls_context,
            keepalive=int(mqtt.keepalive),
        )
        # aiomqtt 2.5 has no manual acknowledgement of its own; paho, which it wraps, has
        # (``manual_ack``, ``ack``): without it the PUBACK would leave before the delivery.
        client._client.manual_ack_set(True)
        return client

    async def _mqtt_loop(self) -> None:
        failures = 0
        started = time.monotonic()
        where = self.config.mqtt.url
        while True:
            client = self._make_client()
            try:
                async with contextlib.AsyncExitStack() as stack:
                    try:
                        await asyncio.wait_for(stack.enter_async_context(client), CONNECT_TIMEOUT_S)
                    except TimeoutError:
                        raise aiomqtt.MqttError(
                            f"no CONNACK within {CONNECT_TIMEOUT_S:g} s"
                        ) from None
                    self._generation += 1
                    self._client = client
                    await client.subscribe(self.topic, qos=1)
                    if failures:
                        log.warning(
                            "notify: connected to %s after %d failed attempt(s) over %.1f s",
                            where,
                            failures,
                            time.monotonic() - started,
                        )
                    log.info("notify: subscribed to %s on %s", self.topic, where)
                    failures = 0
                    self.ready.set()
                    async for message in client.messages:
                        await self._on_message(message)
            except aiomqtt.MqttError as exc:
                if _refuses_v5(exc):
                    raise NotifyError(
                        f"the broker at {where} refused MQTT 5 ({exc}): tapewatch notify needs "
                        "it for its durable shared subscription (Mosquitto 2 speaks it; the "
                        "embedded broker does not)"
                    ) from None
                failures += 1
                if failures == 1:
                    started = time.monotonic()
                if failures & (failures - 1) == 0:  # attempts 1, 2, 4, 8, ...
                    log.warning("notify: MQTT broker %s: %s (attempt %d)", where, exc, failures)
            finally:
                self._client = None
                self.ready.clear()
            await asyncio.sleep(random.uniform(0, min(BROKER_BACKOFF_MAX_S, 0.1 * 2**failures)))

    def _ack(self, generation: int, mid: int) -> None:
        # A packet id is only meaningful on the connection it came on: after a reconnect the
        # broker sends the event again with its id, and that copy is the one acknowledged.
        client = self._client
        if client is not None and generation == self._generation:
            client._client.ack(mid, 1)

    # -- receiving ------------------------------------------------------------------------------
    async def _on_message(self, message: aiomqtt.Message) -> None:
        generation, mid = self._generation, message.mid
        if message.qos == 0:
            mid = -1  # nothing to acknowledge
        try:
            event = parse_event(message.payload)  # type: ignore[arg-type]
        except BadEvent as exc:
            if not self.counts["malformed"]:
                log.warning("notify: skipped a message on %s: %s", message.topic, exc)
            self.counts["malformed"] += 1
            self._ack_mid(generation, mid)
            return
        if not self.filter.wants(event):
            self.counts["filtered"] += 1
            self._ack_mid(generation, mid)
            return
        pending = self._pending.get(event.id)
        if pending is not None:  # a second copy while the first is on its way
            pending.mids.append((generation, mid))
            self.counts["duplicates"] += 1
            return
        rows = await self.store.rows([event.id])
        needed = targets_to_send(
            rows, (t.key for t in self.targets), self.client_id, _wall_ms(), self.stale_ms
        )
        if not needed:
            self.counts["duplicates"] += 1
            log.debug("notify: %s already handled: acknowledged without sending", event.id)
            self._ack_mid(generation, mid)
            return
        pending = Pending(event, needed, [(generation, mid)])
        self._pending[event.id] = pending
        self.batcher.add(pending, self._now_ms())
        self._wake.set()

    def _ack_mid(self, generation: int, mid: int) -> None:
        if mid >= 0:
            self._ack(generation, mid)

    @staticmethod
    def _now_ms() -> int:
        return int(time.monotonic() * 1000)

    # -- delivering -----------------------------------------------------------------------------
    async def _delivery_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = self._now_ms()
            due = self.batcher.due_at()
            if due is None or due > now:
                self._wake.clear()
                timeout = None if due is None else (due - now) / 1000
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            batch = self.batcher.take(now)
            if await self._deliver(batch, stop):
                for pending in batch:
                    del self._pending[pending.event.id]
                    for generation, mid in dict.fromkeys(pending.mids):
                        self._ack_mid(generation, mid)

    async def _deliver(self, batch: list[Pending], stop: asyncio.Event) -> bool:
        """Every target of the batch sent or failed for good (True), or stopped (False)."""
        jobs = []
        for target in self.targets:
            items = [p for p in batch if target.key in p.targets]
            if items:
                jobs.append(self._deliver_to(target, items, stop))
        results = await asyncio.gather(*jobs)
        return all(results)

    async def _deliver_to(self, target: Target, items: list[Pending], stop: asyncio.Event) -> bool:
        n = self.notify
        loop = asyncio.get_running_loop()
        events = [p.event for p in items]
        pairs = [(e.id, target.key) for e in events]
        repeat = any(p.targets[target.key] for p in items)
        first = loop.time()
        attempt = 0
        while True:
            message = format_digest(events, repeat=repeat)
            await self.store.begin(pairs, self.client_id, _wall_ms())
            error = await loop.run_in_executor(
                self._sender, _send_blocking, target, message, n.body_format
            )
            if error is None:
                await self.store.finish(pairs, "sent", None, _wall_ms())
                self.counts["sent"] += 1
                log.info(
                    "notify: sent %s to %s%s",
                    message.title,
                    target.label,
                    f" after {attempt} failed attempt(s)" if attempt else "",
                )
                return True
            attempt += 1
            # The failed request may still have reached the service (a timeout, a reset):
            # the next copy says it may be a repeat.
            repeat = True
            elapsed = loop.time() - first
            if elapsed >= n.give_up:
                await self.store.finish(pairs, "failed", error, _wall_ms())
                self.counts["failed"] += 1
                log.error(
                    "notify: gave up on %s to %s after %d attempt(s) over %.0f s: %s",
                    message.title,
                    target.label,
                    attempt,
                    elapsed,
                    error,
                )
                return True
            delay = min(retry_delay(attempt, n.retry_initial, n.retry_max), n.give_up - elapsed)
            if attempt & (attempt - 1) == 0:
                log.warning(
                    "notify: %s did not take %s (%s); attempt %d failed, retrying in %.1f s",
                    target.label,
                    message.title,
                    error,
                    attempt,
                    delay,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return False


def _refuses_v5(exc: aiomqtt.MqttError) -> bool:
    """A CONNACK that refuses the protocol version (MQTT 3.1.1 code 1, MQTT 5 code 132)."""
    rc = getattr(exc, "rc", None)
    value = getattr(rc, "value", rc)
    return value in (1, 132) or "protocol version" in str(exc).lower()
