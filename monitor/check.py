"""``tapewatch run --check``: would the daemon work here, with this config, right now?

One line per check, each bounded in time and all run at once: the config, the state directory,
the MQTT broker (the same probe as ``mqtt.broker: auto``: a real CONNECT with the configured
credentials and TLS), every websocket the daemon would open (connected, subscribed, and market
data that the venue's own decoder reads) and one REST request per venue. The requests come from
the venue adapters, like everything the daemon sends: the first start-up history series of the
venue's first symbol, over the last few minutes (one page, a few rows: cheap in any venue's
budget, and it proves the endpoint, the symbol and the answer's shape, where a ping proves only
the host).

Nothing here raises to the user: every failure becomes a ``FAIL`` line naming the URL and why.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import websockets
from websockets.asyncio.client import connect

from monitor.broker import Answer, probe, why_not_embedded
from monitor.config import Config, ConfigError, MqttConfig, load_config, shard
from monitor.pipeline import trades_only
from streams.frames import IgnoredFrame, MalformedFrame, SkippedFrame
from streams.reporting import HostReporter, describe_connect_error, host_of, wall_ms
from streams.rest import HostUnreachable, RestClient, RestError
from streams.tasks import stop_tasks
from streams.units import MINUTE_MS
from streams.venues import RestCall, Socket, Venue

CHECK_TIMEOUT_S = 8.0  # each check
TOTAL_TIMEOUT_S = 10.0  # all of them (they run at once): a check that overstays is cut here
# The REST check asks for the rows of the last minutes that have closed: a few rows.
REST_WINDOW_MS = 3 * MINUTE_MS


@dataclass(frozen=True, slots=True)
class Result:
    name: str  # what was checked, e.g. "binance-spot websocket"
    url: str  # where
    ok: bool
    detail: str  # what was found, or why it failed


def report(results: list[Result]) -> list[str]:
    """The report: one line per check, then a summary line."""
    width = max((len(r.name) for r in results), default=0)
    lines = [
        f"{'ok' if r.ok else 'FAIL':<4}  {r.name:<{width}}  {r.url}: {r.detail}" for r in results
    ]
    failed = sum(not r.ok for r in results)
    lines.append(f"{len(results) - failed} ok, {failed} failed" if failed else "all ok")
    return lines


def load(path: str, which: tuple[int, int] | None) -> tuple[Config | None, Result]:
    """The config at ``path`` (sharded by ``which``), and the config check's line."""
    if not Path(path).exists():
        return None, Result("config", path, False, "no such file (--config FILE names it)")
    try:
        config = load_config(path)
        if which is not None:
            config = shard(config, *which)
    except ConfigError as err:
        return None, Result("config", path, False, "invalid: " + "; ".join(err.errors))
    except OSError as exc:
        return None, Result("config", path, False, f"cannot read it: {exc.strerror or exc}")
    venues = [v.name for v in config.adapters().values() if symbols(config, v)]
    detail = (
        f"valid: instance {config.instance}, {len(config.assets)} asset(s) on "
        f"{', '.join(venues) or 'no venue'}"
    )
    return config, Result("config", path, True, detail)


def symbols(config: Config, venue: Venue) -> list[str]:
    """The venue's symbols, as the daemon subscribes them (asset order)."""
    return [s for a in config.assets.values() if (s := getattr(a, venue.config_key))]


def rest_probe(venue: Venue, symbol: str, now_ms: int) -> tuple[RestCall, Callable[[str], Any]]:
    """The request that checks a venue's REST API, and the parser its answer must pass."""
    series = venue.history(symbol)
    if series:
        end = now_ms // MINUTE_MS * MINUTE_MS  # the minute under way, left out
        first = series[0]
        return first.call(end - REST_WINDOW_MS, end), first.parse
    snapshot = venue.snapshot(symbol, 5)  # a venue without history: a 5-level book, cheap
    if snapshot is None:
        raise ValueError(f"{venue.name}: its adapter names no REST request to check")
    return snapshot, lambda text: venue.parse_rest(_path_query(snapshot), text, now_ms)


def _path_query(call: RestCall) -> str:
    return f"{call.path}?{urlencode(call.params)}" if call.params else call.path


# -- the checks -----------------------------------------------------------------------------
def state_dir(config: Config) -> Result:
    """Whether the daemon can write its checkpoints, history cache and outbox."""
    where = Path(config.state.dir).absolute()
    existing = where
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return Result("state", str(where), False, f"{existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        return Result(
            "state", str(where), False, f"{existing} is not writable by uid {os.getuid()}"
        )
    found = "exists" if existing == where else f"will be created in {existing}"
    return Result("state", str(where), True, f"{found}, writable")


async def broker(mqtt: MqttConfig, timeout: float) -> Result:
    """The broker as ``mqtt.broker`` will find it."""
    name = "mqtt broker"
    found = await probe(mqtt, timeout)
    if mqtt.broker == "embedded":
        if found.answer is Answer.NOTHING:
            return Result(name, mqtt.url, True, "free: tapewatch run starts its embedded broker")
        return Result(
            name, mqtt.url, False, "something listens there already (broker: embedded cannot bind)"
        )
    if found.answer is Answer.ACCEPTED:
        as_user = f" as {mqtt.username}" if mqtt.username else ""
        return Result(name, mqtt.url, True, f"accepted the CONNECT{as_user}")
    if found.answer is Answer.REFUSED:
        return Result(
            name,
            mqtt.url,
            False,
            f"refused the CONNECT ({found.detail}): check TAPEWATCH_MQTT_USERNAME/"
            "TAPEWATCH_MQTT_PASSWORD and the broker's ACL",
        )
    if found.answer is Answer.UNCLEAR:
        return Result(name, mqtt.url, False, f"no MQTT answer ({found.detail})")
    if mqtt.broker == "auto":
        reason = why_not_embedded(mqtt)
        if reason is None:
            return Result(
                name,
                mqtt.url,
                True,
                "nothing listens: tapewatch run starts its embedded broker (broker: auto)",
            )
        return Result(
            name,
            mqtt.url,
            False,
            f"nothing listens (connection refused), and no embedded broker stands in: {reason}",
        )
    return Result(name, mqtt.url, False, "nothing listens (connection refused)")


async def websocket(venue: Venue, sock: Socket, timeout: float) -> Result:
    """Connect, subscribe, and wait for a frame of market data the venue's decoder reads."""
    name, url = f"{sock.name} websocket", _without_query(sock.url)
    host = host_of(sock.url)
    decoder = venue.decoder()
    started = time.monotonic()
    replies: list[str] = []  # acks and error replies on the way: said if no data follows
    opened = False
    try:
        async with asyncio.timeout(timeout):
            async with connect(sock.url, max_size=2**23, open_timeout=None, close_timeout=1) as ws:
                opened = True
                for message in sock.subscribe:
                    await ws.send(message)
                while True:
                    raw = await ws.recv()
                    try:
                        events = decoder.decode(raw, wall_ms())
                    except IgnoredFrame as exc:
                        replies.append(str(exc))
                        continue
                    except MalformedFrame as exc:
                        return Result(name, url, False, f"sends what {venue.name} does not: {exc}")
                    if events:
                        took = time.monotonic() - started
                        return Result(name, url, True, f"market data after {took:.2f} s")
    except TimeoutError:
        if not opened:
            return Result(name, url, False, f"{host} did not open a websocket in {timeout:g} s")
        said = f"; it said: {replies[-1][:120]}" if replies else ""
        return Result(name, url, False, f"connected, no market data in {timeout:g} s{said}")
    except OSError as exc:
        detail = describe_connect_error(exc, host) or f"{type(exc).__name__}: {exc}"
        return Result(name, url, False, detail)
    except websockets.InvalidHandshake as exc:
        return Result(name, url, False, f"refused the websocket: {exc}")
    except websockets.InvalidURI as exc:
        return Result(name, url, False, f"not a websocket URL: {exc}")
    except websockets.ConnectionClosed as exc:
        return Result(name, url, False, f"closed the websocket: {exc}")


async def rest(venue: Venue, symbol: str, timeout: float) -> Result:
    """One REST request from the adapter; its answer must parse as the venue's."""
    name = f"{venue.name} REST"
    call, parse = rest_probe(venue, symbol, wall_ms())
    url = venue.rest_url.rstrip("/") + call.path
    client = RestClient(
        venue.name,
        venue.rest_url,
        weight_limit=venue.limits.weight_limit,
        requests_per_second=venue.limits.requests_per_second,
        timeout=timeout,
        hosts=HostReporter(),
    )
    try:
        resp = await client.get(call.path, call.params, weight=call.weight)
    except HostUnreachable as exc:
        return Result(name, url, False, exc.reason)
    except RestError as exc:
        # Its message starts with the venue and the URL, which the line shows already.
        said = f"{venue.name} GET {client.base_url}{_path_query(call)}: "
        return Result(name, url, False, str(exc).removeprefix(said))
    finally:
        await client.close()
    try:
        parse(resp.text)
    except SkippedFrame as exc:
        return Result(name, url, False, f"answered, but not as {venue.name} does: {exc}")
    return Result(name, url, True, f"HTTP {resp.status} for {symbol}")


def _without_query(url: str) -> str:
    # Binance's combined-stream URLs list every stream: the endpoint is what the line needs.
    return url.split("?", 1)[0]


# -- running them ---------------------------------------------------------------------------
async def _caught(result: Coroutine[Any, Any, Result], name: str, url: str) -> Result:
    """``result``, or a FAIL line for whatever it raised: never a traceback."""
    try:
        return await result
    except Exception as exc:  # the report is the one output: it says what went wrong
        return Result(name, url, False, f"{type(exc).__name__}: {exc}")


async def run_checks(
    config: Config, timeout: float = CHECK_TIMEOUT_S, total: float = TOTAL_TIMEOUT_S
) -> list[Result]:
    """Every network check of ``config`` at once, each within ``timeout``, all within
    ``total``; results in a fixed order (broker, then each venue's sockets and REST)."""
    planned: list[tuple[str, str, Coroutine[Any, Any, Result]]] = [
        ("mqtt broker", config.mqtt.url, broker(config.mqtt, timeout))
    ]
    for venue in config.adapters().values():
        wanted = symbols(config, venue)
        if not wanted:
            continue  # no asset is on this venue: the daemon never opens it
        references = trades_only(config).get(venue.name, [])
        for sock in venue.sockets(wanted, references):
            planned.append(
                (
                    f"{sock.name} websocket",
                    _without_query(sock.url),
                    websocket(venue, sock, timeout),
                )
            )
        planned.append((f"{venue.name} REST", venue.rest_url, rest(venue, wanted[0], timeout)))
    tasks = [asyncio.create_task(_caught(coro, name, url)) for name, url, coro in planned]
    done, pending = await asyncio.wait(tasks, timeout=total)
    await stop_tasks(list(pending), grace_s=1.0)
    return [
        task.result()
        if task in done
        else Result(name, url, False, f"no answer within {total:g} s (all checks)")
        for task, (name, url, _) in zip(tasks, planned, strict=True)
    ]
