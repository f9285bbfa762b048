"""The one MQTT publisher: keeps a broker connection alive and delivers the session's messages.

- On every (re)connect it publishes the retained ``online`` status first; the broker holds the
  retained ``offline`` status as last will, so a daemon killed with SIGKILL is seen as offline.
- Signals are state, not history: while the broker is away only the newest message per signals
  topic is kept. Regime and event messages are queued in order (bounded) and a message leaves the
  queue only after the broker acknowledged it, so a dropped connection loses nothing queued.
- A message on ``<prefix>/cmd/rebirth`` republishes the status and every retained message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import OrderedDict, deque

import aiomqtt

from monitor.config import MqttConfig
from monitor.messages import OutMessage
from streams.connection import Backoff
from streams.tasks import stop_tasks

log = logging.getLogger("tapewatch.mqtt")


class Publisher:
    def __init__(
        self,
        config: MqttConfig,
        client_id: str,
        birth: OutMessage,
        will: OutMessage,
        rebirth_topic: str,
        max_queued: int = 100_000,
    ) -> None:
        self.config = config
        self.client_id = client_id
        self.birth = birth
        self.will = will
        self.rebirth_topic = rebirth_topic
        self._ordered: deque[OutMessage] = deque()  # regime/events: order and delivery matter
        self._latest: OrderedDict[str, OutMessage] = OrderedDict()  # signals/health: newest only
        self._retained: dict[str, OutMessage] = {}  # everything retained, for rebirth
        self._max_queued = max_queued
        self._wake = asyncio.Event()
        self._rebirth = asyncio.Event()
        self.connected = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing waits to be sent
        self.dropped = 0
        self.published = 0
        self.connects = 0
        self._client: aiomqtt.Client | None = None

    # -- producer side (never blocks) -----------------------------------------------------
    def publish(self, msg: OutMessage) -> None:
        if msg.retain:
            self._retained[msg.topic] = msg
        if msg.qos == 0:
            self._latest[msg.topic] = msg
            self._latest.move_to_end(msg.topic)
        else:
            if len(self._ordered) >= self._max_queued:
                self._ordered.popleft()
                self.dropped += 1
                log.error("publish queue full (%d): dropped the oldest message", self._max_queued)
            self._ordered.append(msg)
        self._idle.clear()
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._ordered) + len(self._latest)

    # -- connection side --------------------------------------------------------------------
    async def run(self) -> None:
        backoff = Backoff(0.5, 30.0)
        while True:
            try:
                async with self._client_factory() as client:
                    self._client = client
                    self.connects += 1
                    backoff.reset()
                    log.info("mqtt: connected to %s:%d", self.config.host, self.config.port)
                    await client.subscribe(self.rebirth_topic, qos=1)
                    await self._send(client, self.birth)
                    self.connected.set()
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                self._client = None
                delay = backoff.next_delay()
                log.warning("mqtt: %s; reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Drain the queues and listen for commands until one of them fails (MqttError)."""
        # Not a TaskGroup: aborting one waits forever for a child that swallowed its
        # cancellation (see streams/tasks.py), and aiomqtt's publish can do exactly that.
        tasks = [
            asyncio.create_task(self._drain(client), name="mqtt-drain"),
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
        """Flush what is queued, then replace the retained status with ``offline``."""
        client = self._client
        if client is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        try:
            await client.publish(
                self.will.topic, self.will.payload_bytes(), qos=1, retain=True, timeout=timeout
            )
        except aiomqtt.MqttError as exc:
            log.warning("mqtt: could not publish offline status: %s", exc)

    def _client_factory(self) -> aiomqtt.Client:
        cfg = self.config
        return aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=self.client_id,
            username=cfg.username,
            password=cfg.password,
            keepalive=round(cfg.keepalive),
            tls_context=ssl.create_default_context() if cfg.tls else None,
            will=aiomqtt.Will(self.will.topic, self.will.payload_bytes(), qos=1, retain=True),
            timeout=10,
        )

    async def _send(self, client: aiomqtt.Client, msg: OutMessage) -> None:
        await client.publish(msg.topic, msg.payload_bytes(), qos=msg.qos, retain=msg.retain)
        self.published += 1

    async def _drain(self, client: aiomqtt.Client) -> None:
        while True:
            if self._rebirth.is_set():
                self._rebirth.clear()
                await self._send(client, self.birth)
                for msg in list(self._retained.values()):
                    await self._send(client, msg)
            if self._ordered:
                msg = self._ordered[0]
                await self._send(client, msg)
                # Leave the queue only once acknowledged: a drop mid-send retries it.
                if self._ordered and self._ordered[0] is msg:
                    self._ordered.popleft()
                continue
            if self._latest:
                _topic, msg = self._latest.popitem(last=False)
                await self._send(client, msg)
                continue
            self._idle.set()
            self._wake.clear()
            await self._wake.wait()

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if message.topic.matches(self.rebirth_topic):
                log.info("mqtt: rebirth requested")
                self._rebirth.set()
                self._wake.set()
