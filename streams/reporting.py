"""Hosts that cannot be reached, said once and then less and less often; and venues' state.

Without network every websocket connect and every REST request fails within milliseconds, and
each of them used to log its own line: a first run offline printed five lines a second of
aiohttp reprs. What an operator needs is one line per host that says what is wrong, a reminder
now and then while it lasts, and a line when it works again. ``HostReporter`` does that for
every ``Connection`` and ``RestClient`` of a daemon (they share one, so two sockets to the same
host make one line): the first failure is logged at once, the next report comes after
``initial`` seconds, and each interval doubles up to ``cap``. Failures in between are counted,
not logged.

``describe_connect_error`` turns the exceptions of a failed connect (``socket.gaierror``,
``ConnectionRefusedError``, aiohttp's ``ClientConnectorError`` with its ``ConnectionKey``
repr...) into a short sentence naming the host, with the exception's class for whoever needs
to look it up.

``venues_report`` is the health topic's ``venues`` field: per venue, whether all its sockets
are connected and its REST host answers, since when, and the error that says why not.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from streams.connection import LinkStats

log = logging.getLogger("tapewatch.network")

# First reminder a minute after the first line, then every 2, 4, ... up to 30 minutes.
REPORT_INITIAL_S = 60.0
REPORT_CAP_S = 1800.0
# A quoted OS or library message is cut here: the line must stay one short line.
DETAIL_CHARS = 80

Clock = Callable[[], float]
WallMs = Callable[[], int]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def host_of(url: str) -> str:
    """The host a URL connects to, with its port only when the URL names one (so the shipped
    config reads ``fapi.binance.com`` and a loopback simulator ``127.0.0.1:8765``)."""
    parts = urlsplit(url)
    host = parts.hostname or url
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # a malformed port: the connect itself will say so
        port = None
    return f"{host}:{port}" if port is not None else host


def duration(seconds: float) -> str:
    """``45 s``, ``1 min``, ``1 h 5 min``: for log lines, not for parsing."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    minutes = round(s / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _detail(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or ""
    text = " ".join(str(text).split())
    if len(text) > DETAIL_CHARS:
        text = text[: DETAIL_CHARS - 3] + "..."
    return text


def _refused(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionRefusedError):
        return True
    # asyncio joins the failures of several addresses (::1 and 127.0.0.1) into one OSError
    # without an errno: refused if every part was.
    text = str(exc)
    return text.startswith("Multiple exceptions:") and text.count("Connect call failed") == (
        text.count(f"[Errno {errno.ECONNREFUSED}]")
    )


def describe_connect_error(exc: BaseException, host: str) -> str | None:
    """A short sentence for an exception raised while connecting to ``host``, or None when
    the exception is not about reaching the host (the caller reports those as before).

    aiohttp wraps the OS error in ``ClientConnectorError``, whose repr carries a whole
    ``ConnectionKey``; the OS error inside is what says what happened."""
    cause: BaseException = getattr(exc, "os_error", None) or exc
    if isinstance(cause, socket.gaierror) or type(exc).__name__ == "ClientConnectorDNSError":
        return f"cannot resolve {host} ({type(exc).__name__}: no network or DNS?)"
    name = type(cause).__name__  # ConnectionRefusedError says more than its aiohttp wrapper
    if _refused(cause):
        return f"{host} refused the connection ({name}: nothing listens there)"
    if isinstance(cause, ssl.SSLError | ssl.CertificateError):
        return f"TLS with {host} failed ({name}: {_detail(cause)})"
    if isinstance(cause, TimeoutError):
        return f"{host} did not answer in time ({name})"
    if isinstance(cause, OSError):
        if cause.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN):
            return f"cannot reach {host} ({name}: {_detail(cause)}; no network?)"
        return f"cannot connect to {host} ({name}: {_detail(cause)})"
    return None


@dataclass(slots=True)
class Outage:
    """A host that has failed since ``since_ms`` (wall clock), and what was last said of it."""

    error: str  # the latest failure, as described
    since_ms: int
    started: float  # monotonic: how long it has lasted
    failures: int
    next_report: float  # monotonic: failures before this are only counted
    interval: float  # seconds until the report after next


class HostReporter:
    """Per host: one line when it first fails, reminders at a falling rate, one on recovery.

    ``clock`` is monotonic seconds (the reporting rate), ``wall`` wall-clock ms (``since_ms``
    in health); both injectable so the rate can be tested without waiting.
    """

    def __init__(
        self,
        logger: logging.Logger = log,
        initial: float = REPORT_INITIAL_S,
        cap: float = REPORT_CAP_S,
        clock: Clock = time.monotonic,
        wall: WallMs = wall_ms,
    ) -> None:
        if not 0 < initial <= cap:
            raise ValueError(f"need 0 < initial <= cap, got {initial}, {cap}")
        self.log = logger
        self.initial = initial
        self.cap = cap
        self._clock = clock
        self._wall = wall
        self.outages: dict[str, Outage] = {}

    def failed(self, host: str, error: str) -> str | None:
        """Count a failure to reach ``host``; returns the line logged, if one was due."""
        now = self._clock()
        outage = self.outages.get(host)
        if outage is None:
            self.outages[host] = Outage(
                error, self._wall(), now, 1, now + self.initial, min(self.cap, 2 * self.initial)
            )
            return self._say(
                logging.WARNING, f"{error}; retrying, next report in {duration(self.initial)}"
            )
        outage.failures += 1
        outage.error = error
        if now < outage.next_report:
            return None
        wait = outage.interval
        outage.next_report = now + wait
        outage.interval = min(self.cap, 2 * wait)
        return self._say(
            logging.WARNING,
            f"{error}; still failing after {duration(now - outage.started)} "
            f"({outage.failures} attempts), next report in {duration(wait)}",
        )

    def ok(self, host: str) -> str | None:
        """``host`` answered; returns the recovery line if it had been failing."""
        outage = self.outages.pop(host, None)
        if outage is None:
            return None
        return self._say(
            logging.INFO,
            f"{host} reachable again after {duration(self._clock() - outage.started)} "
            f"({outage.failures} failed attempt(s))",
        )

    def _say(self, level: int, line: str) -> str:
        self.log.log(level, "%s", line)
        return line


class RestState(Protocol):
    """What ``venues_report`` reads of a REST client (``streams.rest.RestClient``)."""

    requests: int
    reachable: bool | None
    state_since_ms: int | None
    last_error: str | None
    unreachable_reason: str | None


class Link(Protocol):
    """What ``venues_report`` reads of a socket (``streams.connection.Connection``)."""

    venue: str
    health: LinkStats


def venues_report(links: Iterable[Link], rest: Mapping[str, RestState]) -> dict[str, Any]:
    """Per venue: ``up`` (every socket connected and the REST host answering), ``since_ms``
    (when that state began: the first part to fail, or the last to come up), ``error`` (why it
    is down), and the parts: ``sockets_connected`` of ``sockets``, ``rest_reachable`` (None
    until the first request). Venues with neither sockets nor requests are left out."""
    by_venue: dict[str, list[LinkStats]] = {}
    for link in links:
        by_venue.setdefault(link.venue, []).append(link.health)
    out: dict[str, Any] = {}
    for venue in sorted({*by_venue, *rest}):
        stats = by_venue.get(venue, [])
        client = rest.get(venue)
        used = client is not None and client.requests > 0
        if not stats and not used:
            continue
        # (since, error) of each part that is down; None since = still connecting.
        down = [(s.since_ms, s.last_error) for s in stats if not s.connected]
        rest_reachable = client.reachable if client is not None and used else None
        if client is not None and rest_reachable is False:
            down.append((client.state_since_ms, client.unreachable_reason or client.last_error))
        if down:
            known = [(t, e) for t, e in down if t is not None]
            since, error = min(known, key=lambda d: d[0]) if known else (None, None)
            if error is None:
                # A socket not yet connected that has not failed either is still connecting.
                error = next((e for _, e in down if e), "connecting")
        else:
            ups = [s.since_ms for s in stats if s.since_ms is not None]
            if client is not None and rest_reachable and client.state_since_ms is not None:
                ups.append(client.state_since_ms)
            since, error = (max(ups) if ups else None), None
        out[venue] = {
            "up": not down,
            "since_ms": since,
            "error": error,
            "sockets": len(stats),
            "sockets_connected": sum(s.connected for s in stats),
            "rest_reachable": rest_reachable,
        }
    return out
