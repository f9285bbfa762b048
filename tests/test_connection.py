"""The resilient connection against a real websocket server on loopback."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from streams.binance import stream_name
from streams.connection import (
    Backoff,
    Connection,
    Control,
    Frame,
    FrameQueue,
    LinkStats,
    ReadWatch,
)
from streams.reporting import HostReporter
from streams.tasks import stop_tasks
from tests.conftest import free_port

Handler = Callable[[ServerConnection, int], Awaitable[None]]


class Server:
    """A websocket server whose behaviour per accepted connection is a test-supplied handler."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.accepted = asyncio.Condition()

    async def _serve(self, ws: ServerConnection) -> None:
        async with self.accepted:
            self.connections += 1
            n = self.connections
            self.accepted.notify_all()
        await self.handler(ws, n)

    async def wait_connections(self, n: int, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout), self.accepted:
            await self.accepted.wait_for(lambda: self.connections >= n)


@pytest.fixture
async def server() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[Server, str]]]]:
    servers: list[Any] = []

    async def start(handler: Handler) -> tuple[Server, str]:
        srv = Server(handler)
        ws_server = await serve(srv._serve, "127.0.0.1", 0)
        servers.append(ws_server)
        port = ws_server.sockets[0].getsockname()[1]
        return srv, f"ws://127.0.0.1:{port}/stream"

    yield start
    for s in servers:
        s.close()
        await s.wait_closed()


def frame(stream: str, i: int) -> str:
    return f'{{"stream":"{stream}","data":{{"i":{i}}}}}'


def connection(url: str, queue: FrameQueue, **kw: Any) -> tuple[Connection, LinkStats]:
    stats = LinkStats("test")
    conn = Connection(
        "test",
        "binance-usdm",
        url,
        queue,
        stats,
        Backoff(0.01, 0.05, random.Random(1)),
        silence_timeout=kw.pop("silence_timeout", 5.0),
        **kw,
    )
    return conn, stats


async def run_until(conn: Connection, condition: Callable[[], bool], timeout: float = 10) -> None:
    task = asyncio.create_task(conn.run())
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.01)  # polling a counter, not waiting for time to pass
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def controls(queue: FrameQueue) -> list[dict[str, Any]]:
    return [item.ctl for item in queue._items if isinstance(item, Control)]


async def test_a_stalled_stream_is_detected_while_others_flow_and_reconnect_heals_it(
    server: Any,
) -> None:
    async def handler(ws: ServerConnection, n: int) -> None:
        # First connection: depth stops after 5 frames while trades keep flowing.
        for i in range(10_000):
            if n > 1 or i < 5:
                await ws.send(frame("btcusdt@depth@100ms", i))
            await ws.send(frame("btcusdt@aggTrade", i))
            await asyncio.sleep(0.02)

    srv, url = await server(handler)
    queue = FrameQueue(100_000)
    conn, stats = connection(
        url, queue, watched=("btcusdt@depth@100ms",), stream_of=stream_name, stall_timeout=0.4
    )
    await run_until(conn, lambda: srv.connections >= 2 and stats.frames > 60)
    assert stats.stalls == 1 and stats.stalled == ("btcusdt@depth@100ms",)
    assert "stalled" in (stats.last_error or "")
    assert controls(queue)[0] == {"kind": "link_lost", "stream": "test", "trades": True}
    # After the reconnect depth frames flow again.
    depth_after = [
        f for f in list(queue._items)[-20:] if isinstance(f, Frame) and "depth" in str(f.raw)
    ]
    assert depth_after


async def test_a_silent_socket_is_reconnected(server: Any) -> None:
    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.wait_closed()  # accept and say nothing, like a retired Binance path

    srv, url = await server(handler)
    conn, stats = connection(url, FrameQueue(10), silence_timeout=0.2)
    await run_until(conn, lambda: srv.connections >= 3)
    assert stats.reconnects >= 2 and "silent" in (stats.last_error or "")


async def test_server_shutdown_reconnects_at_once(server: Any) -> None:
    async def handler(ws: ServerConnection, n: int) -> None:
        if n == 1:
            await ws.send('{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1}}')
        await ws.wait_closed()

    srv, url = await server(handler)
    conn, stats = connection(url, FrameQueue(10))
    await run_until(conn, lambda: srv.connections >= 2)
    assert stats.last_error == "serverShutdown announced"
    # The announcing frame itself still reaches the pipeline (it counts and ignores it).
    assert stats.frames == 1


async def test_requested_reconnect_skips_the_backoff(server: Any) -> None:
    async def handler(ws: ServerConnection, n: int) -> None:
        for i in range(10_000):
            await ws.send(frame("btcusdt@aggTrade", i))
            await asyncio.sleep(0.01)

    srv, url = await server(handler)
    conn, stats = connection(url, FrameQueue(100_000))
    conn.backoff = Backoff(60.0, 60.0)  # a normal failure would wait up to a minute
    requested = False

    def condition() -> bool:
        nonlocal requested
        if stats.frames > 5 and not requested:
            conn.request_reconnect("resubscribe")
            requested = True
        return srv.connections >= 2

    await run_until(conn, condition, timeout=5)
    assert stats.last_error == "requested: resubscribe"


async def test_refused_connections_back_off_and_keep_trying() -> None:
    queue = FrameQueue(10)
    conn, stats = connection("ws://127.0.0.1:9/stream", queue)  # nothing listens on port 9
    await run_until(conn, lambda: stats.reconnects >= 3)
    assert stats.last_error == (
        "127.0.0.1:9 refused the connection (ConnectionRefusedError: nothing listens there)"
    )
    assert [c["kind"] for c in controls(queue)][:3] == ["link_lost"] * 3


def lines(caplog: pytest.LogCaptureFixture, logger: str, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= level]


async def test_an_unreachable_host_is_one_line_however_often_it_is_tried_and_one_on_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "tapewatch")
    port = free_port()  # nothing listens there until the server below starts
    url = f"ws://127.0.0.1:{port}/stream"
    conn, stats = connection(url, FrameQueue(100))
    await run_until(conn, lambda: stats.reconnects >= 20)
    # Twenty attempts, one line: the host and why, no repr of the exception.
    said = lines(caplog, "tapewatch.network", logging.WARNING)
    assert said == [
        f"127.0.0.1:{port} refused the connection (ConnectionRefusedError: nothing listens "
        "there); retrying, next report in 1 min"
    ]
    assert lines(caplog, "tapewatch.connection", logging.WARNING) == []
    attempts = lines(caplog, "tapewatch.connection", logging.DEBUG)
    assert len(attempts) >= 20 and all("refused" in a for a in attempts)  # kept for debugging
    assert not stats.connected and stats.since_ms is not None
    down_since = stats.since_ms

    async def handler(ws: ServerConnection) -> None:
        await ws.send(frame("btcusdt@aggTrade", 1))
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", port):
        await run_until(conn, lambda: stats.connected and stats.frames > 0)
    recovered = lines(caplog, "tapewatch.network", logging.INFO)[1:]
    assert len(recovered) == 1
    assert re.fullmatch(
        rf"127\.0\.0\.1:{port} reachable again after \d+ s \(\d+ failed attempt\(s\)\)",
        recovered[0],
    )
    assert stats.since_ms >= down_since  # up since the connect


async def test_a_name_that_does_not_resolve_is_said_once_for_every_socket_to_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "tapewatch")
    hosts = HostReporter()  # shared, as in the daemon: two sockets, one host, one line
    queue = FrameQueue(100)
    market, market_stats = connection("wss://nonexistent.invalid/market", queue, hosts=hosts)
    public, public_stats = connection("wss://nonexistent.invalid/public", queue, hosts=hosts)
    task = asyncio.create_task(public.run())
    try:
        await run_until(
            market, lambda: market_stats.reconnects >= 5 and public_stats.reconnects >= 5
        )
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    said = lines(caplog, "tapewatch.network", logging.INFO)
    assert said == [
        "cannot resolve nonexistent.invalid (gaierror: no network or DNS?); retrying, next "
        "report in 1 min"
    ]
    assert (
        market_stats.last_error
        == public_stats.last_error
        == ("cannot resolve nonexistent.invalid (gaierror: no network or DNS?)")
    )
    assert hosts.outages["nonexistent.invalid"].failures >= 10


async def test_a_host_that_answers_with_an_http_error_is_not_called_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "tapewatch")

    def reject(conn: ServerConnection, request: Any) -> Any:
        return conn.respond(404, "no such stream\n")

    async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, process_request=reject) as srv:
        port = srv.sockets[0].getsockname()[1]
        conn, stats = connection(f"ws://127.0.0.1:{port}/retired", FrameQueue(10))
        await run_until(conn, lambda: stats.reconnects >= 2)
    assert lines(caplog, "tapewatch.network", logging.INFO) == []
    assert stats.last_error == (
        "connect failed: InvalidStatus: server rejected WebSocket connection: HTTP 404"
    )


def test_backoff_is_capped_full_jitter() -> None:
    b = Backoff(0.5, 4.0, random.Random(7))
    delays = [b.next_delay() for _ in range(12)]
    caps = [min(4.0, 0.5 * 2**n) for n in range(12)]
    assert all(0 <= d <= c for d, c in zip(delays, caps, strict=True))
    assert max(delays[5:]) > 2.0  # jitter spreads up to the cap, not stuck near zero
    b.reset()
    assert b.next_delay() <= 0.5


def test_queue_drops_the_oldest_when_full() -> None:
    q = FrameQueue(3)
    for i in range(5):
        q.put(Frame("v", i, str(i)))
    assert q.dropped == 2
    assert [f.raw for f in q._items if isinstance(f, Frame)] == ["2", "3", "4"]


async def test_each_frame_carries_its_receive_time_to_the_microsecond(server: Any) -> None:
    """The whole-millisecond stamp is the tapes' unit; delivery latencies start at the finer
    one, which must be the same instant (so the floored stamp is its floor)."""

    async def handler(ws: ServerConnection, n: int) -> None:
        for i in range(50):
            await ws.send(frame("btcusdt@aggTrade", i))
        await ws.wait_closed()

    _, url = await server(handler)
    queue = FrameQueue(1_000)
    conn, stats = connection(url, queue)
    before = time.time_ns() / 1e6
    await run_until(conn, lambda: stats.frames >= 50)
    after = time.time_ns() / 1e6
    frames = [item for item in queue._items if isinstance(item, Frame)]
    assert len(frames) == 50
    for f in frames:
        assert before <= f.recv_ms <= after
        assert f.ts_recv_ms == int(f.recv_ms)  # the same instant, floored
    assert any(f.recv_ms != f.ts_recv_ms for f in frames)  # finer than whole milliseconds
    assert [f.recv_ms for f in frames] == sorted(f.recv_ms for f in frames)


async def test_a_held_socket_is_not_read_and_loses_nothing_when_released(server: Any) -> None:
    """``hold`` (the daemon's, while a regime change waits for its PUBACK) stops reading the
    socket; what the server sends meanwhile waits in the kernel and comes after ``release``,
    all of it, in order."""
    go, sent = asyncio.Event(), asyncio.Event()

    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.send(frame("btcusdt@aggTrade", 0))
        await go.wait()
        for i in range(1, 200):
            await ws.send(frame("btcusdt@aggTrade", i))
        sent.set()
        await ws.wait_closed()

    _, url = await server(handler)
    queue = FrameQueue(1_000)
    conn, stats = connection(url, queue)
    task = asyncio.create_task(conn.run())
    try:
        async with asyncio.timeout(10):
            while stats.frames < 1:
                await asyncio.sleep(0.01)  # polling a counter
            assert conn.reading
            conn.hold()
            assert not conn.reading
            go.set()
            await sent.wait()
            await release_after_the_first(conn, stats, 200)
            assert conn.reading
    finally:
        await stop_tasks([task])
    assert numbers(queue) == list(range(200))


async def release_after_the_first(conn: Connection, stats: LinkStats, n: int) -> None:
    """Only the first of ``n`` frames is queued after 50 loop turns (in which an unheld
    socket would be read); then ``release``, and all ``n`` come."""
    for _ in range(50):
        await asyncio.sleep(0)
    assert stats.frames == 1
    conn.release()
    while stats.frames < n:
        await asyncio.sleep(0.01)


def numbers(queue: FrameQueue) -> list[int]:
    return [orjson.loads(item.raw)["data"]["i"] for item in queue._items]


async def test_a_held_socket_queues_no_frame_it_had_already_read(server: Any) -> None:
    """A burst read from the socket before ``hold`` sits in the websocket's buffer: the reader
    queues none of it until ``release`` (queuing it would delay the PUBACK the daemon holds
    for), then all of it, in order."""
    held: list[Connection] = []

    class HoldingQueue(FrameQueue):
        def put(self, item: Any) -> bool:
            if not held:  # the first frame, the rest of its burst still unqueued
                held.append(conn)
                conn.hold()
            return super().put(item)

    async def handler(ws: ServerConnection, n: int) -> None:
        for i in range(100):  # one burst: on this loop the client reads none of it before
            await ws.send(frame("btcusdt@aggTrade", i))
        await ws.wait_closed()

    _, url = await server(handler)
    queue = HoldingQueue(1_000)
    conn, stats = connection(url, queue)
    task = asyncio.create_task(conn.run())
    try:
        async with asyncio.timeout(10):
            while not held:
                await asyncio.sleep(0.01)  # polling a list
            await release_after_the_first(conn, stats, 100)
    finally:
        await stop_tasks([task])
    assert numbers(queue) == list(range(100))


def test_the_read_watch_ends_a_socket_silent_stalled_or_old_and_sleeps_until_then() -> None:
    """The timer's arithmetic, without a socket (times in seconds since the socket opened)."""
    watch = ReadWatch(0.0, silence=5.0, max_age=100.0, stall=4.0, watched=("depth",))
    assert watch.due(0.0) == 1.0  # the first stall check, a quarter of ``stall`` in
    assert watch.ending(1.0) is None  # nothing stalled yet (unheard since the open, 1 s)
    assert watch.due(1.0) == 2.0
    watch.last_frame = 3.9  # frames flow, none of the watched stream
    assert watch.ending(2.0) is None and watch.due(2.0) == 3.0
    assert watch.ending(3.0) is None and watch.due(3.0) == 4.0
    watch.last_frame = 4.5
    assert watch.ending(4.0) is None  # 4 s unheard is not past ``stall``
    assert watch.ending(5.0) == ("stalled stream(s) depth (socket still open)", ("depth",))

    heard = ReadWatch(0.0, silence=5.0, max_age=100.0, stall=8.0, watched=("depth",))
    for t in (0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5):
        heard.last_frame = heard.last_seen["depth"] = t
        assert heard.ending(t + 0.5) is None  # heard every second: never stalled nor silent
    assert heard.due(7.0) == 8.0  # the next stall check comes before the silence (11.5)
    assert heard.ending(11.4) is None
    assert heard.ending(11.5) == ("silent for 5s", ())  # then nothing: 5 s after 6.5

    plain = ReadWatch(10.0, silence=5.0, max_age=30.0, stall=4.0)  # no watched stream
    assert plain.due(10.0) == 15.0  # silence first, no stall checks
    plain.last_frame = 38.0
    assert plain.ending(39.0) is None and plain.due(39.0) == 40.0  # the age comes first
    assert plain.ending(40.0) == ("rotate", ())
    assert plain.due(41.0) == 41.001  # overdue: asked again at once, never in the past
