"""The one resilient websocket connection class, and the bounded queue it feeds.

A ``Connection`` keeps one socket alive forever: it reconnects with capped, fully jittered
exponential back-off, answers pings (``websockets`` does this for us), treats a socket that stays
silent past ``silence_timeout`` as dead (Binance's retired paths connect and then say nothing),
rotates the socket before Binance's 24 h cut, and reconnects at once on ``serverShutdown``.

Frames go into a ``FrameQueue`` that never blocks the reader: when the consumer falls behind the
oldest frame is dropped and counted, because a reader that stops reading gets disconnected by the
exchange, which loses more than the queue would have.

A host that cannot be resolved or reached is reported through a ``HostReporter`` (one line, then
reminders at a falling rate, then a recovery line), not once per attempt: offline, attempts come
several a second at first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection, connect

from streams.reporting import HostReporter, describe_connect_error, host_of, wall_ms

log = logging.getLogger("tapewatch.connection")

# Binance closes every socket at 24 h; leave an hour's margin, as Binance's own SDK does.
DEFAULT_MAX_AGE_S = 23 * 3600
# A connection that lived this long counts as healthy: the next failure starts back-off afresh.
STABLE_AFTER_S = 60.0


@dataclass
class LinkStats:
    """Counters of one socket, read by the health report."""

    name: str
    connected: bool = False
    frames: int = 0
    reconnects: int = 0
    dropped: int = 0  # frames this socket lost to a full queue
    last_frame_recv_ms: int | None = None
    last_error: str | None = None
    stalls: int = 0  # times a watched stream went silent while the socket stayed open
    stalled: tuple[str, ...] = ()  # the streams of the last stall
    down_since: float | None = None  # monotonic time the socket was lost (None while up)
    since_ms: int | None = None  # wall time the current state (connected or not) began
    last_outage_s: float | None = None  # how long the last loss lasted until reconnected
    max_outage_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Frame:
    venue: str
    ts_recv_ms: int  # whole milliseconds, the tapes' unit
    raw: str | bytes
    # The same stamp to the microsecond (wall ms), for delivery latencies: measured from the
    # floored ``ts_recv_ms`` they would be overstated by up to 1 ms. 0.0: not taken.
    recv_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class Control:
    """A collector conclusion queued among the frames (and recorded on tapes as ``ctl``):
    ``{"kind": "link_lost", "stream": name, "trades": bool}`` when a socket drops, or
    ``{"kind": "refetch_done", "symbol", "first_id", "last_id"}`` when the refetch of a trade
    gap ends."""

    venue: str
    ts_recv_ms: int
    ctl: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RestBody:
    """A REST response, queued among the frames so the pipeline sees both in arrival order."""

    venue: str
    ts_recv_ms: int
    url: str  # path?query
    body: str


QueueItem = Frame | RestBody | Control


class FrameQueue:
    """Bounded FIFO between socket readers and the single consumer; drops oldest when full."""

    def __init__(self, maxsize: int) -> None:
        self._items: deque[QueueItem] = deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self.dropped = 0

    def put(self, item: QueueItem) -> bool:
        """Enqueue; returns False if an old frame had to be dropped to make room."""
        dropped = False
        if len(self._items) >= self._maxsize:
            self._items.popleft()
            self.dropped += 1
            dropped = True
        self._items.append(item)
        self._ready.set()
        return not dropped

    async def get_batch(self, limit: int = 1000) -> list[QueueItem]:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        n = min(limit, len(self._items))
        return [self._items.popleft() for _ in range(n)]

    def __len__(self) -> int:
        return len(self._items)


class Backoff:
    """Capped exponential back-off with full jitter: wait U(0, min(cap, initial * 2**n))."""

    def __init__(self, initial: float, cap: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        step = min(self.cap, self.initial * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 62)  # 2**n stays a finite float
        return self._rng.uniform(0.0, step)

    def reset(self) -> None:
        self.attempt = 0


class Connection:
    def __init__(
        self,
        name: str,
        venue: str,
        url: str,
        queue: FrameQueue,
        health: LinkStats,
        backoff: Backoff,
        silence_timeout: float,
        max_age: float = DEFAULT_MAX_AGE_S,
        on_open: Callable[[ClientConnection], Awaitable[None]] | None = None,
        watched: tuple[str, ...] = (),
        stream_of: Callable[[str | bytes], str | None] | None = None,
        stall_timeout: float = 10.0,
        carries_trades: bool = True,
        hosts: HostReporter | None = None,
    ) -> None:
        self.name = name
        self.venue = venue
        self.url = url
        self.queue = queue
        self.health = health
        self.backoff = backoff
        self.silence_timeout = silence_timeout
        self.max_age = max_age
        self.on_open = on_open  # e.g. send Coinbase subscribe messages
        # Streams with a fixed cadence: one silent for `stall_timeout` while the socket still
        # delivers others is a stalled stream (the exchange stopped it), healed by reconnecting.
        self.watched = watched
        self.stream_of = stream_of
        self.stall_timeout = stall_timeout
        self.carries_trades = carries_trades
        self._ws: ClientConnection | None = None
        self._held: asyncio.Transport | None = None  # paused by ``hold``
        self._reading = asyncio.Event()  # clear while held: ``_read`` takes no frame
        self._reading.set()
        self._restart_reason: str | None = None
        self._watch_reason: str | None = None  # why ``_read``'s watch closed the socket
        # Shared by a daemon's connections and REST clients: one line per host, not per socket.
        self.hosts = hosts if hosts is not None else HostReporter()
        self.host = host_of(url)
        parts = urlsplit(url)
        self._hostname = parts.hostname
        try:
            port = parts.port
        except ValueError:  # a malformed port: connect() says so (InvalidURI)
            port = None
        self._port = port or (443 if parts.scheme == "wss" else 80)
        self._proxied = _proxied(url)
        self._unreachable = False  # the last session ended because the host was not reached
        self._opened = False  # the current session's socket opened

    def hold(self) -> None:
        """Stop reading the socket until ``release``: the kernel keeps what arrives, and the
        websocket's buffer what was read before, unqueued. While a regime change waits for its
        PUBACK, parsing or queuing frames would delay the PUBACK's reading: the rest of a
        burst, queued, put it off by 0.4 ms at p50 (bench/README.md, 2026-12-05). A frame's
        receive stamp is taken when it is queued, so a frame held back is stamped after the
        hold, as one the kernel kept."""
        transport = self._ws.transport if self._ws is not None else None
        if transport is not None and not transport.is_closing() and transport.is_reading():
            transport.pause_reading()
            self._held = transport
        self._reading.clear()

    def release(self) -> None:
        """Read again after ``hold`` (a socket replaced meanwhile was never held)."""
        transport, self._held = self._held, None
        self._reading.set()
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    @property
    def reading(self) -> bool:
        """A socket is open and read (not held)."""
        return self._ws is not None and self._ws.transport.is_reading()

    def request_reconnect(self, reason: str) -> None:
        """Close the current socket; ``run`` reconnects at once (e.g. to re-subscribe)."""
        if self._ws is not None and self._restart_reason is None:
            self._restart_reason = reason
            asyncio.get_running_loop().create_task(_close_quietly(self._ws))

    async def run(self) -> None:
        """Connect, read, reconnect; returns only when cancelled."""
        while True:
            opened = time.monotonic()
            reason = await self._session()
            self.health.connected = False
            self.health.last_error = reason
            if self.health.down_since is None:
                self.health.down_since = time.monotonic()
                self.health.since_ms = wall_ms()
            self.queue.put(
                Control(
                    self.venue,
                    _now_ms(),
                    {"kind": "link_lost", "stream": self.name, "trades": self.carries_trades},
                )
            )
            if time.monotonic() - opened >= STABLE_AFTER_S:
                self.backoff.reset()
            planned = reason == "rotate" or reason.startswith("requested")
            delay = 0.0 if planned else self.backoff.next_delay()
            if self._unreachable:
                # The reporter says it once per host; each attempt only at debug level.
                self.hosts.failed(self.host, reason)
                log.debug("%s: %s; reconnecting in %.1fs", self.name, reason, delay)
            else:
                log.warning("%s: %s; reconnecting in %.1fs", self.name, reason, delay)
            self.health.reconnects += 1
            await asyncio.sleep(delay)

    async def _session(self) -> str:
        """One socket's life; returns why it ended."""
        self._unreachable = self._opened = False
        try:
            # Resolve first: uvloop's create_connection, cancelled (at shutdown) while it
            # resolves a name that then fails, leaves a "Future exception was never retrieved"
            # ERROR behind (MagicStack/uvloop#437); its getaddrinfo does not. Offline, every
            # attempt fails here, and the second lookup in connect() is then never made.
            if not self._proxied:  # through a proxy, the proxy resolves the name
                await asyncio.get_running_loop().getaddrinfo(
                    self._hostname, self._port, type=socket.SOCK_STREAM
                )
            async with connect(self.url, max_size=2**23, open_timeout=10, close_timeout=2) as ws:
                self._ws, self._restart_reason, self._opened = ws, None, True
                self._watch_reason = None
                self._mark_up()
                log.info("%s: connected to %s", self.name, self.url)
                if self.on_open is not None:
                    await self.on_open(ws)
                return await self._read(ws)
        except asyncio.CancelledError:
            raise
        except (OSError, TimeoutError) as exc:
            # Only a failure before the socket opened says the host cannot be reached.
            described = None if self._opened else describe_connect_error(exc, self.host)
            if described is not None:
                self._unreachable = True
                return described
            if self._opened:
                return f"closed: {type(exc).__name__}: {exc}"
            return f"connect failed: {type(exc).__name__}: {exc}"
        except (websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            # The host answered (with an HTTP error, say): it is reachable, the path is not.
            if not isinstance(exc, websockets.InvalidURI):
                self.hosts.ok(self.host)
            return f"connect failed: {type(exc).__name__}: {exc}"
        except websockets.ConnectionClosed as exc:
            if self._watch_reason is not None:
                return self._watch_reason
            if self._restart_reason is not None:
                return f"requested: {self._restart_reason}"
            return f"closed: {exc}"
        finally:
            self._ws = None

    def _mark_up(self) -> None:
        self.hosts.ok(self.host)
        health = self.health
        health.connected = True
        health.since_ms = wall_ms()
        if health.down_since is not None:
            health.last_outage_s = time.monotonic() - health.down_since
            health.max_outage_s = max(health.max_outage_s, health.last_outage_s)
            health.down_since = None

    async def _read(self, ws: ClientConnection) -> str:
        """Queue every frame until the socket ends; returns why it ended here (silent, stalled,
        rotated, shutdown announced). Silence, stalls and age are watched by one timer that
        fires only when something could be due, not by a timeout around each ``recv``: that
        cost ~5 µs a frame, more than the pipeline spends on a trade frame. The timer ends
        the socket by closing it; ``_session`` returns the reason it left in ``_watch_reason``."""
        loop = asyncio.get_running_loop()
        watch = ReadWatch(
            time.monotonic(), self.silence_timeout, self.max_age, self.stall_timeout, self.watched
        )
        health, queue, venue = self.health, self.queue, self.venue
        last_seen, stream_of = watch.last_seen, self.stream_of if self.watched else None
        closing: list[asyncio.Task[None]] = []

        def check() -> None:
            nonlocal timer
            now = time.monotonic()
            ending = watch.ending(now)
            if ending is None:
                timer = loop.call_later(watch.due(now) - now, check)
                return
            reason, stalled = ending
            if stalled:
                health.stalls += 1
                health.stalled = stalled
            self._watch_reason = reason
            closing.append(loop.create_task(_close_quietly(ws)))  # held until ``_read`` ends

        timer = loop.call_later(watch.due(watch.opened) - watch.opened, check)
        try:
            reading = self._reading
            while True:
                if not reading.is_set():
                    await reading.wait()
                raw = await ws.recv()
                watch.last_frame = now_mono = time.monotonic()
                if stream_of is not None:
                    stream = stream_of(raw)
                    if stream in last_seen:
                        last_seen[stream] = now_mono
                ns = time.time_ns()
                now = ns // 1_000_000
                health.frames += 1
                health.last_frame_recv_ms = now
                if not queue.put(Frame(venue, now, raw, ns / 1e6)):
                    health.dropped += 1
                head = raw[:64] if isinstance(raw, str) else raw[:64].decode("ascii", "replace")
                if "serverShutdown" in head:
                    await _close_quietly(ws)
                    return "serverShutdown announced"
        finally:
            timer.cancel()


@dataclass(slots=True)
class ReadWatch:
    """When a socket's reading must end, from monotonic times alone: no frame for
    ``silence`` seconds (Binance's retired paths connect and then say nothing), a ``watched``
    stream unheard for ``stall`` seconds while the socket still delivers others (the exchange
    stopped it), or ``max_age`` seconds since it opened (rotated before Binance's 24 h cut).
    Stalls are looked for every ``stall / 4`` seconds."""

    opened: float
    silence: float
    max_age: float
    stall: float
    watched: tuple[str, ...] = ()
    last_frame: float = field(init=False)
    last_seen: dict[str, float] = field(init=False)  # watched stream -> last heard
    _next_stall_check: float = field(init=False)

    def __post_init__(self) -> None:
        self.last_frame = self.opened
        self.last_seen = dict.fromkeys(self.watched, self.opened)
        self._next_stall_check = self.opened + self.stall / 4

    def ending(self, now: float) -> tuple[str, tuple[str, ...]] | None:
        """(why the socket must end now, the stalled streams), or None."""
        if self.last_seen and now >= self._next_stall_check:
            self._next_stall_check = now + self.stall / 4
            stalled = tuple(s for s, t in self.last_seen.items() if now - t > self.stall)
            if stalled:
                return f"stalled stream(s) {', '.join(stalled)} (socket still open)", stalled
        if now >= self.opened + self.max_age:
            return "rotate", ()
        if now - self.last_frame >= self.silence:
            return f"silent for {self.silence:.0f}s", ()
        return None

    def due(self, now: float) -> float:
        """When ``ending`` could next say something (a little past ``now`` at the least)."""
        due = min(self.opened + self.max_age, self.last_frame + self.silence)
        if self.last_seen:
            due = min(due, self._next_stall_check)
        return max(due, now + 0.001)


def _proxied(url: str) -> bool:
    """Whether ``connect`` will go through a proxy from the environment (websockets >= 15)."""
    try:
        from websockets.uri import get_proxy, parse_uri
    except ImportError:  # older websockets connect directly
        return False
    try:
        return get_proxy(parse_uri(url)) is not None
    except websockets.InvalidURI:
        return False


async def _close_quietly(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        await ws.close()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
