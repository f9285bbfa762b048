"""``tapewatch tail``: a live terminal view of every asset's regime and key signals, from MQTT.

It is an ordinary MQTT subscriber (the same thing any user writes): it works against any broker
and any tapewatch instance, and ``tapewatch demo`` uses it. What it shows is built by the pure
``monitor/dashboard.py``; this module subscribes and feeds it. On a terminal (or with
``live=True``) it redraws the view in place a few times per second; otherwise (pipes, CI, tests)
it prints one line per regime change and status change, and a compact signals line at most once
per ``signals_every_s`` per asset.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
import time
from collections import Counter
from typing import TextIO

import aiomqtt
import orjson
from rich.console import Console
from rich.live import Live

from monitor.dashboard import KINDS, PlainLog, TailState, Update, render
from streams.tasks import stop_tasks

# -- I/O part -----------------------------------------------------------------------------------
# TCP connect and CONNACK together: paho bounds the first (5 s) but aiomqtt waits for the second
# for ever, so a port that accepts and never answers would hang `tail` without this.
CONNECT_TIMEOUT_S = 10.0


class BrokerUnreachable(Exception):
    """No MQTT session: connection refused, host unreachable, CONNACK refused or not in time."""


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _kind(topic: str, prefix: str) -> str | None:
    parts = topic[len(prefix) + 1 :].split("/")
    if len(parts) != 2:
        return None
    if parts[0] in ("status", "health"):
        return parts[0]
    return parts[1] if parts[1] in KINDS else None


async def tail(
    host: str,
    port: int,
    prefix: str,
    asset: str = "+",
    counts: Counter[str] | None = None,
    live: bool | None = None,
    out: TextIO | None = None,
    ready: asyncio.Event | None = None,
    *,
    username: str | None = None,
    password: str | None = None,
    tls_context: ssl.SSLContext | None = None,
    signals_every_s: float = 10.0,
    refresh_per_second: float = 4.0,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> None:
    """Show ``prefix``'s regimes and signals until cancelled.

    ``live``: redraw a rich view in place (True), print plain lines (False), or decide by
    whether ``out`` (default stdout) is a terminal (None). ``counts`` tallies the messages
    received per kind (used by ``demo``); ``ready`` is set once subscribed. Raises
    ``BrokerUnreachable`` when no session opens within ``connect_timeout_s``.
    """
    out = out if out is not None else sys.stdout
    if live is None:
        live = out.isatty()
    counts = counts if counts is not None else Counter()
    prefix = prefix.rstrip("/")
    state = TailState(prefix, asset)
    client = aiomqtt.Client(
        host,
        port,
        username=username,
        password=password,
        tls_context=tls_context,
    )
    async with contextlib.AsyncExitStack() as stack:
        try:
            await asyncio.wait_for(stack.enter_async_context(client), connect_timeout_s)
        except aiomqtt.MqttError as exc:
            raise BrokerUnreachable(str(exc)) from None
        except TimeoutError:
            raise BrokerUnreachable(f"no answer within {connect_timeout_s:g} s") from None
        for pattern in (
            f"{prefix}/{asset}/regime",
            f"{prefix}/{asset}/events",
            f"{prefix}/{asset}/signals",
            f"{prefix}/status/+",
            f"{prefix}/health/+",
        ):
            await client.subscribe(pattern, qos=1)
        if ready is not None:
            ready.set()
        if live:
            await _run_live(client, state, counts, out, refresh_per_second)
        else:
            await _run_plain(client, state, counts, out, PlainLog(signals_every_s))


def _ingest(state: TailState, counts: Counter[str], message: aiomqtt.Message) -> Update | None:
    topic = str(message.topic)
    try:
        payload = orjson.loads(message.payload)  # type: ignore[arg-type]
    except orjson.JSONDecodeError:
        return None
    kind = _kind(topic, state.prefix)
    if kind is not None:
        counts[kind] += 1
    return state.ingest(topic, payload)


async def _run_plain(
    client: aiomqtt.Client, state: TailState, counts: Counter[str], out: TextIO, log: PlainLog
) -> None:
    async for message in client.messages:
        update = _ingest(state, counts, message)
        for line in log.lines(state, update, _wall_ms()):
            print(line, file=out, flush=True)


async def _run_live(
    client: aiomqtt.Client,
    state: TailState,
    counts: Counter[str],
    out: TextIO,
    refresh_per_second: float,
) -> None:
    # Redrawn from this task only (no rich refresh thread), so nothing reads the state while a
    # message changes it. ``print`` from elsewhere in the process lands above the view.
    console = Console(file=out, force_terminal=True)
    redirect = out is sys.stdout
    with Live(
        render(state, _wall_ms()),
        console=console,
        auto_refresh=False,
        redirect_stdout=redirect,
        redirect_stderr=redirect,
    ) as view:

        async def redraw() -> None:
            while True:
                view.update(render(state, _wall_ms()), refresh=True)
                await asyncio.sleep(1 / refresh_per_second)

        ticker = asyncio.create_task(redraw(), name="tail-redraw")
        try:
            async for message in client.messages:
                _ingest(state, counts, message)
        finally:
            await stop_tasks([ticker])
            view.update(render(state, _wall_ms()))
