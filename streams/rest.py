"""The one REST client: GET with Binance weight accounting, a token bucket, and 418/429 bans.

One ``RestClient`` per venue host. Before each request it waits, in this order, for an active
ban (``blocked_until``, set from ``Retry-After`` on 429/418), for the next wall-clock minute if
the request would push the minute's request weight past 90 % of ``weight_limit``, and for a
token when ``requests_per_second`` is set (Coinbase's public 10 req/s). Waiting before sending,
instead of sending and being told off, is what keeps an IP out of Binance's ban escalation
(429 -> 418 for 2 minutes up to 3 days).

The body comes back as text, untouched: the recorder writes it byte for byte to a tape and the
pure parsers read it from there, live or in replay. ``RestResponse.url`` is ``path?query``
exactly as sent, which is what a tape records.

``get`` never retries; ``get_retrying`` retries transient failures with the project's one
``Backoff`` policy.

A host that cannot be resolved or reached raises ``HostUnreachable`` with a short message (the
host and the exception's class, not aiohttp's ``ConnectionKey`` repr) and is reported through a
``HostReporter``: one line per host, then reminders at a falling rate, then a recovery line.
Callers log such a failure only at debug level. ``reachable``, ``state_since_ms`` and
``last_error`` say in health whether the host answers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp
import orjson
from yarl import URL

from streams.connection import Backoff
from streams.reporting import HostReporter, describe_connect_error, host_of, wall_ms

if TYPE_CHECKING:
    from streams.venues import Venue

log = logging.getLogger("tapewatch.rest")

WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
# Stop at 90 % of the venue's weight limit: other requests from this IP (a second process, a
# request whose weight we under-declared) share the budget, and a 429 costs far more than a wait.
BUDGET_FRACTION = 0.9
# Binance counts weight per wall-clock minute on its own clock; waiting a little past our
# rollover covers a small skew between the two clocks.
ROLLOVER_MARGIN_S = 0.5
# Used when a 429 / 418 arrives without Retry-After (Binance always sends it; mirrors may not).
DEFAULT_RETRY_AFTER_429_S = 60.0
DEFAULT_RETRY_AFTER_418_S = 120.0
# get_retrying's back-off: U(0, min(cap, initial * 2**n)).
RETRY_INITIAL_S = 1.0
RETRY_CAP_S = 60.0
# Larger than any response we ask for (a 5000-level depth snapshot is well under 1 MiB); a
# bigger body is a misconfigured base URL, not data, and must not grow memory without bound.
MAX_BODY_BYTES = 32 * 1024 * 1024
# A wait counts as over this close to its end. At epoch magnitude (1.7e9 s) a float clock loses
# ~1e-7 s per addition, so "sleep until t" can land just short of t; a re-check demanding the
# exact instant would then ask for a sleep too small to move the clock, forever.
CLOCK_SLACK_S = 1e-3
# Error bodies are quoted in messages up to this length.
ERROR_SNIPPET_CHARS = 200


@dataclass(frozen=True, slots=True)
class RestResponse:
    status: int
    text: str  # the body exactly as received, decoded
    url: str  # path?query as sent: the tape's "url"
    headers: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)


class RestError(Exception):
    """A request that did not return 2xx: HTTP error, timeout or connection failure.

    ``status`` is None when no HTTP response arrived; ``code`` is Binance's error code when the
    body carried one (e.g. -1121 "Invalid symbol.").
    """

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class HostUnreachable(RestError):
    """The host could not be resolved or connected to (no HTTP response at all)."""

    def __init__(self, message: str, host: str, reason: str) -> None:
        super().__init__(message)
        self.host = host
        self.reason = reason  # e.g. "cannot resolve fapi.binance.com (...)", without the URL


class RateLimited(RestError):
    """429 (slow down) or 418 (banned); the client stays blocked for ``retry_after`` seconds."""

    def __init__(self, status: int, retry_after: float, message: str = "") -> None:
        super().__init__(message or f"HTTP {status}, retry after {retry_after:g}s", status=status)
        self.retry_after = retry_after


Params = Mapping[str, str | int]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]


class RestClient:
    """GET requests to one venue host, within its rate limits.

    ``clock`` must be wall-clock seconds (``time.time``): Binance's weight minutes are wall-clock
    minutes, and ``blocked_until`` is then a readable time. ``clock`` and ``sleep`` are injectable
    so the limiter can be tested without real waiting.
    """

    def __init__(
        self,
        venue: str,
        base_url: str,
        *,
        weight_limit: int | None = None,
        requests_per_second: float | None = None,
        timeout: float = 10.0,
        session: aiohttp.ClientSession | None = None,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        hosts: HostReporter | None = None,
    ) -> None:
        if weight_limit is not None and weight_limit <= 0:
            raise ValueError(f"weight_limit must be positive, got {weight_limit}")
        if requests_per_second is not None and requests_per_second <= 0:
            raise ValueError(f"requests_per_second must be positive, got {requests_per_second}")
        self.venue = venue
        self.base_url = base_url.rstrip("/")
        self.weight_limit = weight_limit
        self.requests_per_second = requests_per_second
        self.timeout = timeout
        self.blocked_until = 0.0  # clock time before which nothing is sent
        self.host = host_of(self.base_url)
        # Shared with a daemon's connections: one line per unreachable host, at a falling rate.
        self.hosts = hosts if hosts is not None else HostReporter()

        self._session = session
        self._owns_session = session is None
        self._closed = False
        self._clock = clock
        self._sleep = sleep
        # Admission (ban, weight, token) is decided one request at a time, in arrival order,
        # so concurrent callers neither overshoot the budget nor log the same wait twice.
        self._admit_lock = asyncio.Lock()
        self._logged_block = 0.0

        # Weight: local estimate for the current wall-clock minute, corrected by the header.
        self._minute = -1
        self._minute_weight = 0
        self._inflight_weight = 0
        # Token bucket: one second's worth of burst (Coinbase allows a little more).
        self._capacity = max(1.0, requests_per_second or 0.0)
        self._tokens = self._capacity
        self._refilled_at: float | None = None

        # Counters for the health topic.
        self.requests = 0
        self.errors = 0  # failed requests other than 429 / 418
        self.rate_limited = 0  # 429
        self.banned = 0  # 418
        self.used_weight: int | None = None  # last X-MBX-USED-WEIGHT-1M seen
        self.waited_s = 0.0  # time spent waiting for a ban, the weight budget or a token
        # Whether the host answers (None before the first request), since when (wall ms), and
        # the last failure's message.
        self.reachable: bool | None = None
        self.state_since_ms: int | None = None
        self.last_error: str | None = None
        self.unreachable_reason: str | None = None  # e.g. "cannot resolve <host> (...)"

    # -- public ------------------------------------------------------------------------------
    @classmethod
    def for_venue(cls, venue: Venue, hosts: HostReporter | None = None) -> RestClient:
        """The client of a venue adapter: its REST base and its rate limits."""
        return cls(
            venue.name,
            venue.rest_url,
            weight_limit=venue.limits.weight_limit,
            requests_per_second=venue.limits.requests_per_second,
            hosts=hosts,
        )

    async def get(
        self, path: str, params: Params | None = None, *, weight: int = 1
    ) -> RestResponse:
        """One GET; raises ``RateLimited`` on 429/418 and ``RestError`` on any other failure."""
        if self._closed:
            raise RuntimeError(f"{self.venue}: RestClient is closed")
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', got {path!r}")
        url = path + ("?" + urlencode(params) if params else "")
        full = self.base_url + url
        minute = await self._admit(weight)
        try:
            return await self._send(full, url, minute)
        finally:
            self._inflight_weight -= weight

    async def get_retrying(
        self,
        path: str,
        params: Params | None = None,
        *,
        weight: int = 1,
        attempts: int = 5,
        retry_unreachable: bool = True,
    ) -> RestResponse:
        """``get`` with retries of transient failures: 5xx, timeouts, connection errors, 429/418.

        Waits ``Backoff`` between attempts; after a 429/418 the next ``get`` additionally waits
        out the ban, so the pause is at least ``Retry-After``. Other 4xx (bad parameters, WAF 403,
        region 451) are raised at once: repeating them cannot succeed and may escalate a ban.
        ``retry_unreachable=False`` raises ``HostUnreachable`` at once, for callers that retry
        on a slower schedule of their own (the history backfill).
        """
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        backoff = Backoff(RETRY_INITIAL_S, RETRY_CAP_S)
        for attempt in range(1, attempts + 1):
            try:
                return await self.get(path, params, weight=weight)
            except RestError as exc:
                unreachable = isinstance(exc, HostUnreachable)
                if attempt == attempts or not _retryable(exc):
                    raise
                if unreachable and not retry_unreachable:
                    raise
                delay = backoff.next_delay()
                # The error message already names the venue and URL. An unreachable host is
                # reported once per host by the reporter, not once per attempt.
                log.log(
                    logging.DEBUG if unreachable else logging.WARNING,
                    "%s (attempt %d/%d); retrying in %.1fs",
                    exc,
                    attempt,
                    attempts,
                    delay,
                )
                await self._sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "rate_limited": self.rate_limited,
            "banned": self.banned,
            "used_weight": self.used_weight,
            "waited_s": round(self.waited_s, 3),
            "reachable": self.reachable,
            "since_ms": self.state_since_ms,
            "last_error": self.last_error,
        }

    async def close(self) -> None:
        self._closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> RestClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- limiting ----------------------------------------------------------------------------
    async def _admit(self, weight: int) -> int:
        """Wait until the request may go out; reserve its weight and token; return its minute."""
        async with self._admit_lock:
            while True:
                now = self._clock()
                if now < self.blocked_until - CLOCK_SLACK_S:
                    if self.blocked_until != self._logged_block:
                        self._logged_block = self.blocked_until
                        log.warning(
                            "%s: rate limited; holding requests for %.1fs",
                            self.venue,
                            self.blocked_until - now,
                        )
                    await self._wait(self.blocked_until - now)
                    continue
                if self.weight_limit is not None:
                    self._roll_minute(now)
                    budget = self.weight_limit * BUDGET_FRACTION
                    # A fresh minute always admits one request, so an oversized one cannot
                    # wait forever.
                    if self._minute_weight > 0 and self._minute_weight + weight > budget:
                        wait = (self._minute + 1) * 60.0 - now + ROLLOVER_MARGIN_S
                        log.info(
                            "%s: weight %d of %d used this minute; waiting %.1fs",
                            self.venue,
                            self._minute_weight,
                            self.weight_limit,
                            wait,
                        )
                        await self._wait(wait)
                        continue
                if self.requests_per_second is not None:
                    self._refill(now)
                    if self._tokens < 1.0 - CLOCK_SLACK_S * self.requests_per_second:
                        await self._wait((1.0 - self._tokens) / self.requests_per_second)
                        continue
                    self._tokens = max(0.0, self._tokens - 1.0)
                break
            self._minute_weight += weight
            self._inflight_weight += weight
            return self._minute

    def _roll_minute(self, now: float) -> None:
        minute = int(now // 60)
        if minute != self._minute:  # != rather than >: a wall clock can step back
            self._minute = minute
            self._minute_weight = 0

    def _refill(self, now: float) -> None:
        assert self.requests_per_second is not None
        if self._refilled_at is not None:
            elapsed = max(0.0, now - self._refilled_at)  # a wall clock can step back
            self._tokens = min(self._capacity, self._tokens + elapsed * self.requests_per_second)
        self._refilled_at = now

    async def _wait(self, seconds: float) -> None:
        self.waited_s += seconds
        await self._sleep(seconds)

    def _note_weight(self, headers: Mapping[str, str], weight_minute: int) -> None:
        raw = headers.get(WEIGHT_HEADER)
        if raw is None:
            return
        try:
            used = int(raw)
        except ValueError:
            log.debug("%s: unreadable %s header %r", self.venue, WEIGHT_HEADER, raw)
            return
        self.used_weight = used
        if self.weight_limit is None:
            return
        self._roll_minute(self._clock())
        # The server's count is the truth, also for traffic we do not see (other processes on
        # this IP). Requests still in flight may not be in it yet, so keep them on top; a
        # response from a minute that has since rolled over says nothing about this one.
        if weight_minute == self._minute:
            self._minute_weight = used + self._inflight_weight

    # -- I/O ---------------------------------------------------------------------------------
    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Created here, not in __init__, because a session must be made inside the loop.
            self._session = aiohttp.ClientSession()
        return self._session

    async def _send(self, full: str, url: str, weight_minute: int) -> RestResponse:
        self.requests += 1
        try:
            try:
                async with self._client().get(
                    URL(full, encoded=True),  # send the query exactly as the tape will record it
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as resp:
                    self._answered()
                    status = resp.status
                    headers = resp.headers
                    self._note_weight(headers, weight_minute)
                    if status in (418, 429):
                        raise self._rate_limited(status, headers, full)
                    body = await _read_body(resp)
            except RestError:
                raise
            except TimeoutError:
                self.errors += 1
                raise RestError(
                    f"{self.venue} GET {full}: timed out after {self.timeout:g}s"
                ) from None
            except aiohttp.ClientConnectorError as exc:
                self.errors += 1
                raise self._unreachable(exc, url) from None
            except aiohttp.ClientError as exc:
                self.errors += 1
                raise RestError(
                    f"{self.venue} GET {full}: connection failed: {type(exc).__name__}: {exc}"
                ) from None
        except RestError as exc:
            self.last_error = str(exc)
            raise

        try:
            text = body.decode(resp.charset or "utf-8")
        except (UnicodeDecodeError, LookupError) as exc:
            self.errors += 1
            raise RestError(
                f"{self.venue} GET {full}: body is not {resp.charset or 'utf-8'} text: {exc}",
                status=status,
            ) from None
        if not 200 <= status < 300:
            self.errors += 1
            raise _http_error(self.venue, full, status, resp.reason, text)
        return RestResponse(status=status, text=text, url=url, headers=headers)

    def _answered(self) -> None:
        """An HTTP response arrived: the host is reachable (whatever the status)."""
        if self.reachable is not True:
            self.reachable = True
            self.state_since_ms = wall_ms()
            self.unreachable_reason = None
        self.hosts.ok(self.host)

    def _unreachable(self, exc: aiohttp.ClientConnectorError, url: str) -> HostUnreachable:
        reason = describe_connect_error(exc, self.host) or f"{type(exc).__name__}: {exc}"
        if self.reachable is not False:
            self.reachable = False
            self.state_since_ms = wall_ms()
        self.unreachable_reason = reason
        self.hosts.failed(self.host, reason)
        # The path without its query: what was asked matters less than where it could not go.
        return HostUnreachable(
            f"{self.venue} GET {url.split('?', 1)[0]}: {reason}", self.host, reason
        )

    def _rate_limited(self, status: int, headers: Mapping[str, str], full: str) -> RateLimited:
        default = DEFAULT_RETRY_AFTER_418_S if status == 418 else DEFAULT_RETRY_AFTER_429_S
        retry_after = _retry_after(headers.get("Retry-After"), default)
        self.blocked_until = max(self.blocked_until, self._clock() + retry_after)
        if status == 418:
            self.banned += 1
            log.error(
                "%s: IP banned by the venue (HTTP 418) on GET %s; no requests for %gs",
                self.venue,
                full,
                retry_after,
            )
        else:
            self.rate_limited += 1
            log.warning(
                "%s: HTTP 429 on GET %s; no requests for %gs", self.venue, full, retry_after
            )
        return RateLimited(
            status,
            retry_after,
            f"{self.venue} GET {full}: HTTP {status}, retry after {retry_after:g}s",
        )


def _retryable(exc: RestError) -> bool:
    return isinstance(exc, RateLimited) or exc.status is None or exc.status >= 500


def _retry_after(raw: str | None, default: float) -> float:
    # Binance sends whole seconds; an HTTP-date or garbage falls back to the safe default.
    if raw is None:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        return default
    return seconds if math.isfinite(seconds) and seconds >= 0 else default


async def _read_body(resp: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise aiohttp.ClientPayloadError(f"body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _http_error(venue: str, full: str, status: int, reason: str | None, text: str) -> RestError:
    what = {403: "WAF rule violated", 451: "region restricted"}.get(status, reason or "")
    message = f"{venue} GET {full}: HTTP {status} {what}".rstrip()
    code: int | None = None
    detail = None
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, dict):
        if isinstance(payload.get("code"), int) and "msg" in payload:  # Binance
            code = payload["code"]
            detail = f"code {code}: {payload['msg']}"
        elif "message" in payload:  # Coinbase
            detail = str(payload["message"])
    if detail is None and text.strip():
        detail = text.strip()[:ERROR_SNIPPET_CHARS]
    if detail:
        message = f"{message}: {detail}"
    return RestError(message, status=status, code=code)
