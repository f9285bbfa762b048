"""The daemon's optional HTTP listener (``http.listen``, off by default): ``GET /metrics`` in the
Prometheus text format and ``GET /healthz`` (README "Prometheus and health checks").

``HttpServer`` is a plain aiohttp application: another endpoint joins it with
``server.app.router.add_get(...)`` before the daemon runs (aiohttp freezes the routes at
start). Handlers run on the daemon's event loop and read its state between two frames; nothing on
the per-frame path knows the listener exists.

The address comes from the config, loopback unless the user wrote another: nothing here has
authentication. A port that cannot be opened stops the daemon at start with one line
(``HttpListenError``), before any socket or broker connection is made.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from monitor.metrics import DaemonMetrics, health_check, wall_ms

if TYPE_CHECKING:
    from monitor.daemon import Daemon

log = logging.getLogger("tapewatch.http")

# Open requests (a scrape in flight) get this long to finish at shutdown; stopping stays bounded.
SHUTDOWN_GRACE_S = 1.0
STOP_TIMEOUT_S = 5.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpListenError(Exception):
    """The listener could not open its address (in use, not on this machine, no permission)."""


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HttpServer:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.app = web.Application()
        self._runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        return address(self.host, self.port)

    async def start(self) -> None:
        """Listen; raises ``HttpListenError`` (one line naming the address) if it cannot."""
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            # From the errno alone: asyncio and uvloop word the same failure differently.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            if exc.errno == errno.EADDRINUSE:
                reason += " (another tapewatch or another program listens there: pick another port)"
            raise HttpListenError(f"http.listen {self.address}: {reason}") from None
        self._runner = runner
        paths = sorted({r.resource.canonical for r in self.app.router.routes() if r.resource})
        log.info("http: listening on http://%s (%s)", self.address, ", ".join(paths))

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        try:
            await asyncio.wait_for(runner.cleanup(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("http: listener did not close within %gs", STOP_TIMEOUT_S)


def daemon_listener(daemon: Daemon) -> HttpServer | None:
    """The listener of ``daemon``'s ``http.listen`` with ``/metrics`` and ``/healthz``, and the
    publisher's latency hook feeding the histogram; None when ``http.listen`` is off or the
    daemon does not publish (``tapewatch record`` runs beside a daemon on the same config and
    must leave its port alone)."""
    publisher = daemon.publisher
    listen = daemon.config.http.listen
    if listen is None or publisher is None:
        return None
    metrics = DaemonMetrics(daemon)
    publisher.on_latency = metrics.observe_latency
    server = HttpServer(*listen)
    server.app.router.add_get("/metrics", _metrics_handler(metrics))
    server.app.router.add_get("/healthz", _healthz_handler(daemon))
    return server


def _metrics_handler(metrics: DaemonMetrics) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        body, content_type = await metrics.scrape(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    return handle


def _healthz_handler(daemon: Daemon) -> Handler:
    silence_ms = round(daemon.config.collector.silence_timeout * 1000)

    async def handle(request: web.Request) -> web.Response:
        publisher = daemon.publisher
        ok, body = health_check(
            daemon.connections,
            wall_ms(),
            silence_ms,
            publisher is not None and publisher.connected.is_set(),
            daemon.config.mqtt.url,
        )
        return web.json_response(
            body, status=200 if ok else 503, headers={"Cache-Control": "no-store"}
        )

    return handle
