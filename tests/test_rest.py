"""The REST client against a real aiohttp server on loopback.

Limiter waits are observed through an injected clock and sleep (``FakeTime``): the sleep records
what the client asked for and moves the clock on, so a 45 s wait takes no time. HTTP itself is
real. The only real waiting is the timeout test's 0.2 s.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from streams import rest
from streams.rest import HostUnreachable, RateLimited, RestClient, RestError, RestResponse

# 15 s into a wall-clock minute, so the rollover is 45 s away.
MINUTE_START = 60.0 * 29_666_666
T0 = MINUTE_START + 15.0


class FakeTime:
    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@dataclass
class Reply:
    status: int = 200
    body: str | bytes = "{}"
    headers: dict[str, str] = field(default_factory=dict)


class FakeVenue:
    """Answers every path with the next queued ``Reply`` (200 "{}" when none is queued)."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.seen: list[str] = []  # raw path?query of each request, as it arrived
        self.release = asyncio.Event()  # lets /slow handlers finish at teardown
        self.base_url = ""

    def queue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.raw_path)
        if request.path == "/slow":
            await asyncio.wait_for(self.release.wait(), 5)
        reply = self.replies.popleft() if self.replies else Reply()
        if isinstance(reply.body, bytes):
            return web.Response(
                status=reply.status,
                body=reply.body,
                headers=reply.headers,
                content_type="application/json",
                charset="utf-8",
            )
        return web.Response(status=reply.status, text=reply.body, headers=reply.headers)


@pytest.fixture
async def venue() -> AsyncIterator[FakeVenue]:
    fake = FakeVenue()
    app = web.Application()
    app.router.add_get("/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.base_url = f"http://{host}:{port}"
    try:
        yield fake
    finally:
        fake.release.set()
        await runner.cleanup()


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def client(venue: FakeVenue, t: FakeTime, **kwargs: Any) -> RestClient:
    return client_at(venue.base_url, t, **kwargs)


def client_at(base_url: str, t: FakeTime, **kwargs: Any) -> RestClient:
    return RestClient("binance-usdm", base_url, clock=t.clock, sleep=t.sleep, **kwargs)


# -- success ---------------------------------------------------------------------------------
async def test_body_returned_verbatim_and_url_is_path_query_in_given_order(
    venue: FakeVenue, fake_time: FakeTime
) -> None:
    body = '{"lastUpdateId": 1027024,  "bids":[["4.00000000","431.00000000"]] , "note":"é ✓"}\n'
    venue.queue(Reply(body=body, headers={"X-MBX-USED-WEIGHT-1M": "7"}))
    async with client(venue, fake_time) as c:
        resp = await c.get("/fapi/v1/depth", {"symbol": "BTCUSDT", "limit": 5, "fromId": "12"})
        plain = await c.get("/fapi/v1/time")

    assert resp == RestResponse(200, body, "/fapi/v1/depth?symbol=BTCUSDT&limit=5&fromId=12")
    assert resp.text == body
    assert resp.headers["x-mbx-used-weight-1m"] == "7"  # case-insensitive, as HTTP is
    assert plain.url == "/fapi/v1/time"
    assert venue.seen == ["/fapi/v1/depth?symbol=BTCUSDT&limit=5&fromId=12", "/fapi/v1/time"]
    assert c.used_weight == 7
    stats = c.stats()
    assert isinstance(stats.pop("since_ms"), int)  # reachable since the first answer
    assert stats == {
        "requests": 2,
        "errors": 0,
        "rate_limited": 0,
        "banned": 0,
        "used_weight": 7,
        "waited_s": 0.0,
        "reachable": True,
        "last_error": None,
    }
    assert fake_time.sleeps == []


async def test_parameter_order_is_kept_not_sorted(venue: FakeVenue, fake_time: FakeTime) -> None:
    async with client(venue, fake_time) as c:
        resp = await c.get("/api/v3/aggTrades", {"symbol": "ETHUSDT", "fromId": 9, "limit": 1000})
    assert resp.url == "/api/v3/aggTrades?symbol=ETHUSDT&fromId=9&limit=1000"
    assert venue.seen == [resp.url]


# -- weight budget ---------------------------------------------------------------------------
async def test_server_reported_weight_makes_next_request_wait_for_minute_rollover(
    venue: FakeVenue, fake_time: FakeTime
) -> None:
    venue.queue(
        Reply(headers={"X-MBX-USED-WEIGHT-1M": "95"}),
        Reply(headers={"X-MBX-USED-WEIGHT-1M": "1"}),
    )
    async with client(venue, fake_time, weight_limit=100) as c:
        await c.get("/fapi/v1/openInterest", {"symbol": "BTCUSDT"})
        assert fake_time.sleeps == []
        await c.get("/fapi/v1/openInterest", {"symbol": "BTCUSDT"})

    # 15 s into the minute: wait the remaining 45 s plus the clock-skew margin.
    assert fake_time.sleeps == [pytest.approx(45.0 + rest.ROLLOVER_MARGIN_S)]
    assert fake_time.now >= MINUTE_START + 60.0
    assert c.used_weight == 1
    assert c.stats()["waited_s"] == pytest.approx(45.0 + rest.ROLLOVER_MARGIN_S)
    assert len(venue.seen) == 2


async def test_local_weight_estimate_limits_without_header(
    venue: FakeVenue, fake_time: FakeTime
) -> None:
    async with client(venue, fake_time, weight_limit=100) as c:
        await c.get("/api/v3/depth", weight=40)
        await c.get("/api/v3/depth", weight=40)  # 80 of a 90 budget
        assert fake_time.sleeps == []
        await c.get("/api/v3/depth", weight=40)  # 120 > 90: next minute
        assert fake_time.sleeps == [pytest.approx(45.0 + rest.ROLLOVER_MARGIN_S)]
        await c.get("/api/v3/depth", weight=40)  # the new minute has room for it
    assert len(fake_time.sleeps) == 1
    assert c.used_weight is None


async def test_request_heavier_than_budget_goes_out_in_a_fresh_minute(
    venue: FakeVenue, fake_time: FakeTime
) -> None:
    async with client(venue, fake_time, weight_limit=100) as c:
        await c.get("/api/v3/depth", {"limit": 5000}, weight=250)
    assert fake_time.sleeps == []
    assert len(venue.seen) == 1


async def test_no_weight_limit_means_no_budget_waits(venue: FakeVenue, fake_time: FakeTime) -> None:
    venue.queue(*[Reply(headers={"X-MBX-USED-WEIGHT-1M": "5999"})] * 3)
    async with client(venue, fake_time) as c:
        for _ in range(3):
            await c.get("/x")
    assert fake_time.sleeps == []
    assert c.used_weight == 5999


# -- 429 / 418 -------------------------------------------------------------------------------
async def test_429_blocks_for_retry_after_then_next_get_waits(
    venue: FakeVenue, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    venue.queue(Reply(429, '{"code":-1003,"msg":"Too many requests"}', {"Retry-After": "3"}))
    async with client(venue, fake_time) as c:
        with pytest.raises(RateLimited) as info:
            await c.get("/fapi/v1/depth", {"symbol": "BTCUSDT"})
        assert info.value.status == 429
        assert info.value.retry_after == 3.0
        assert isinstance(info.value, RestError)  # one except clause catches every failure
        assert c.blocked_until == pytest.approx(T0 + 3.0)
        assert c.stats()["rate_limited"] == 1
        assert c.stats()["errors"] == 0

        with caplog.at_level(logging.WARNING, logger="tapewatch.rest"):
            await asyncio.gather(c.get("/a"), c.get("/b"))  # both held by the same block

    assert fake_time.sleeps == [pytest.approx(3.0)]
    assert fake_time.now >= T0 + 3.0
    assert c.stats()["waited_s"] == pytest.approx(3.0)
    assert sum("holding requests" in r.getMessage() for r in caplog.records) == 1
    assert len(venue.seen) == 3


async def test_429_without_retry_after_blocks_for_a_minute(
    venue: FakeVenue, fake_time: FakeTime
) -> None:
    venue.queue(Reply(429))
    async with client(venue, fake_time) as c:
        with pytest.raises(RateLimited) as info:
            await c.get("/x")
    assert info.value.retry_after == rest.DEFAULT_RETRY_AFTER_429_S
    assert c.blocked_until == pytest.approx(T0 + 60.0)


async def test_418_is_a_ban_logged_as_error(
    venue: FakeVenue, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    venue.queue(Reply(418, "", {"Retry-After": "7"}))
    async with client(venue, fake_time) as c:
        with (
            caplog.at_level(logging.WARNING, logger="tapewatch.rest"),
            pytest.raises(RateLimited) as info,
        ):
            await c.get("/api/v3/klines", {"symbol": "BTCUSDT"})
        assert (info.value.status, info.value.retry_after) == (418, 7.0)
        assert c.stats()["banned"] == 1
        assert c.stats()["rate_limited"] == 0
        assert any(r.levelno == logging.ERROR and "418" in r.getMessage() for r in caplog.records)
        await c.get("/api/v3/klines", {"symbol": "BTCUSDT"})
    assert fake_time.sleeps == [pytest.approx(7.0)]


async def test_418_without_retry_after_blocks_two_minutes(
    venue: FakeVenue, fake_time: FakeTime
) -> None:
    venue.queue(Reply(418))
    async with client(venue, fake_time) as c:
        with pytest.raises(RateLimited) as info:
            await c.get("/x")
    assert info.value.retry_after == rest.DEFAULT_RETRY_AFTER_418_S
    assert c.blocked_until == pytest.approx(T0 + 120.0)


# -- other failures --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "words"),
    [(500, "500"), (503, "503"), (403, "403 WAF"), (451, "451 region restricted")],
)
async def test_http_errors_raise_rest_error_with_status_venue_and_url(
    venue: FakeVenue, fake_time: FakeTime, status: int, words: str
) -> None:
    venue.queue(Reply(status, "<html>nope</html>"))
    async with client(venue, fake_time) as c:
        with pytest.raises(RestError) as info:
            await c.get("/fapi/v1/depth", {"symbol": "BTCUSDT"})
    message = str(info.value)
    assert not isinstance(info.value, RateLimited)
    assert info.value.status == status
    assert words in message
    assert "binance-usdm" in message
    assert f"{venue.base_url}/fapi/v1/depth?symbol=BTCUSDT" in message
    assert "<html>nope</html>" in message
    assert c.stats()["errors"] == 1
    assert c.blocked_until == 0.0  # only 429/418 block


async def test_binance_json_error_is_in_the_message(venue: FakeVenue, fake_time: FakeTime) -> None:
    venue.queue(Reply(400, '{"code":-1121,"msg":"Invalid symbol."}'))
    async with client(venue, fake_time) as c:
        with pytest.raises(RestError) as info:
            await c.get("/fapi/v1/depth", {"symbol": "NOPE"})
    assert info.value.status == 400
    assert info.value.code == -1121
    assert "HTTP 400" in str(info.value)
    assert "code -1121: Invalid symbol." in str(info.value)


async def test_timeout_raises_rest_error(venue: FakeVenue, fake_time: FakeTime) -> None:
    async with client(venue, fake_time, timeout=0.2) as c:
        with pytest.raises(RestError) as info:
            await c.get("/slow")
    assert info.value.status is None
    assert "timed out after 0.2s" in str(info.value)
    assert "/slow" in str(info.value)
    assert c.stats()["errors"] == 1


def closed_port() -> int:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_connection_refused_raises_a_short_host_unreachable(fake_time: FakeTime) -> None:
    port = closed_port()
    async with RestClient(
        "coinbase", f"http://127.0.0.1:{port}", clock=fake_time.clock, sleep=fake_time.sleep
    ) as c:
        with pytest.raises(HostUnreachable) as info:
            await c.get("/products", {"limit": 1})
    assert info.value.status is None and info.value.host == f"127.0.0.1:{port}"
    # The venue, the path and what happened; not aiohttp's ConnectionKey repr.
    assert str(info.value) == (
        f"coinbase GET /products: 127.0.0.1:{port} refused the connection "
        "(ConnectionRefusedError: nothing listens there)"
    )
    stats = c.stats()
    assert stats["errors"] == 1 and stats["reachable"] is False
    assert stats["since_ms"] is not None and stats["last_error"] == str(info.value)


async def test_a_name_that_does_not_resolve_is_host_unreachable(fake_time: FakeTime) -> None:
    async with RestClient(
        "binance-usdm", "https://nonexistent.invalid", clock=fake_time.clock, sleep=fake_time.sleep
    ) as c:
        with pytest.raises(HostUnreachable) as info:
            await c.get("/fapi/v1/openInterest", {"symbol": "BTCUSDT"})
    assert str(info.value) == (
        "binance-usdm GET /fapi/v1/openInterest: cannot resolve nonexistent.invalid "
        "(ClientConnectorDNSError: no network or DNS?)"
    )
    assert "ConnectionKey" not in str(info.value)


async def test_an_unreachable_host_is_logged_once_not_per_attempt_and_its_recovery_once(
    fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "tapewatch")
    port = closed_port()
    async with client_at(f"http://127.0.0.1:{port}", fake_time) as c:
        for _ in range(3):  # 3 x 5 attempts, each failing at once
            with pytest.raises(HostUnreachable):
                await c.get_retrying("/fapi/v1/openInterest", {"symbol": "BTCUSDT"})
        assert c.requests == 15 and len(fake_time.sleeps) == 3 * 4  # retried, with back-off
        said = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert [r.getMessage() for r in said] == [
            f"127.0.0.1:{port} refused the connection (ConnectionRefusedError: nothing listens "
            "there); retrying, next report in 1 min"
        ]
        assert said[0].name == "tapewatch.network"
        # Each attempt is still there for whoever turns on debug logging.
        attempts = [r for r in caplog.records if r.name == "tapewatch.rest"]
        assert len(attempts) == 3 * 4 and all(r.levelno == logging.DEBUG for r in attempts)

        # The host comes back: one line, and the client says it is reachable.
        async def answer(request: web.Request) -> web.Response:
            return web.Response(text="{}")

        app = web.Application()
        app.router.add_get("/{tail:.*}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            resp = await c.get_retrying("/fapi/v1/openInterest", {"symbol": "BTCUSDT"})
        finally:
            await runner.cleanup()
    assert resp.text == "{}"
    recovered = [r.getMessage() for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(recovered) == 1 and recovered[0].startswith(f"127.0.0.1:{port} reachable again")
    assert recovered[0].endswith("(15 failed attempt(s))")
    assert c.stats()["reachable"] is True


async def test_retry_unreachable_false_gives_up_on_the_first_unreachable_attempt(
    fake_time: FakeTime,
) -> None:
    async with client_at(f"http://127.0.0.1:{closed_port()}", fake_time) as c:
        with pytest.raises(HostUnreachable):
            await c.get_retrying("/x", retry_unreachable=False)
    assert c.requests == 1 and fake_time.sleeps == []


async def test_an_http_error_makes_the_host_reachable(
    venue: FakeVenue, fake_time: FakeTime
) -> None:
    venue.queue(Reply(503))
    async with client(venue, fake_time) as c:
        assert c.stats()["reachable"] is None  # nothing asked yet
        with pytest.raises(RestError) as info:
            await c.get("/x")
    assert not isinstance(info.value, HostUnreachable) and info.value.status == 503
    assert c.stats()["reachable"] is True


async def test_undecodable_body_is_an_error_not_mangled_text(
    venue: FakeVenue, fake_time: FakeTime
) -> None:
    venue.queue(Reply(body=b'{"p":"\xff"}'))
    async with client(venue, fake_time) as c:
        with pytest.raises(RestError, match="not utf-8 text"):
            await c.get("/x")


async def test_oversized_body_is_refused(
    venue: FakeVenue, fake_time: FakeTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rest, "MAX_BODY_BYTES", 1000)
    venue.queue(Reply(body="x" * 5000))
    async with client(venue, fake_time) as c:
        with pytest.raises(RestError, match="larger than 1000 bytes"):
            await c.get("/x")


# -- retries ---------------------------------------------------------------------------------
async def test_get_retrying_recovers_after_two_500s(venue: FakeVenue, fake_time: FakeTime) -> None:
    venue.queue(Reply(500), Reply(500), Reply(200, '{"ok":true}'))
    async with client(venue, fake_time) as c:
        resp = await c.get_retrying("/fapi/v1/openInterest", {"symbol": "BTCUSDT"})
    assert (resp.status, resp.text) == (200, '{"ok":true}')
    assert len(venue.seen) == 3
    # Two back-off waits, fully jittered under the growing cap: U(0, 1), U(0, 2).
    assert len(fake_time.sleeps) == 2
    assert 0.0 <= fake_time.sleeps[0] <= rest.RETRY_INITIAL_S
    assert 0.0 <= fake_time.sleeps[1] <= 2 * rest.RETRY_INITIAL_S
    assert c.stats()["errors"] == 2
    assert c.stats()["requests"] == 3


async def test_get_retrying_gives_up_after_attempts_with_last_error(
    venue: FakeVenue, fake_time: FakeTime
) -> None:
    venue.queue(Reply(500), Reply(502), Reply(503), Reply(200))
    async with client(venue, fake_time) as c:
        with pytest.raises(RestError) as info:
            await c.get_retrying("/x", attempts=3)
    assert info.value.status == 503
    assert len(venue.seen) == 3
    assert len(fake_time.sleeps) == 2  # no pointless wait after the last attempt


async def test_get_retrying_waits_at_least_retry_after(
    venue: FakeVenue, fake_time: FakeTime
) -> None:
    venue.queue(Reply(429, "", {"Retry-After": "30"}), Reply(200, "[]"))
    async with client(venue, fake_time) as c:
        resp = await c.get_retrying("/futures/data/openInterestHist", {"symbol": "BTCUSDT"})
    assert resp.text == "[]"
    assert len(venue.seen) == 2
    # Back-off U(0, 1), then the rest of the 30 s block: together exactly Retry-After.
    assert sum(fake_time.sleeps) == pytest.approx(30.0)
    assert fake_time.now >= T0 + 30.0


@pytest.mark.parametrize("status", [400, 403, 451])
async def test_get_retrying_does_not_repeat_permanent_errors(
    venue: FakeVenue, fake_time: FakeTime, status: int
) -> None:
    venue.queue(Reply(status), Reply(200))
    async with client(venue, fake_time) as c:
        with pytest.raises(RestError) as info:
            await c.get_retrying("/x")
    assert info.value.status == status
    assert len(venue.seen) == 1
    assert fake_time.sleeps == []


# -- token bucket ----------------------------------------------------------------------------
async def test_token_bucket_delays_the_eleventh_immediate_request(
    venue: FakeVenue, fake_time: FakeTime
) -> None:
    async with RestClient(
        "coinbase",
        venue.base_url,
        requests_per_second=10,
        clock=fake_time.clock,
        sleep=fake_time.sleep,
    ) as c:
        for _ in range(10):
            await c.get("/api/v3/brokerage/market/products/BTC-USD/ticker", {"limit": 1})
        assert fake_time.sleeps == []  # the clock has not moved: a burst of 10 is allowed
        await c.get("/api/v3/brokerage/market/products/BTC-USD/ticker", {"limit": 1})
    assert fake_time.sleeps == [pytest.approx(0.1)]
    assert len(venue.seen) == 11


async def test_token_bucket_spaces_concurrent_requests(
    venue: FakeVenue, fake_time: FakeTime
) -> None:
    async with RestClient(
        "coinbase",
        venue.base_url,
        requests_per_second=10,
        clock=fake_time.clock,
        sleep=fake_time.sleep,
    ) as c:
        await asyncio.gather(*(c.get(f"/p/{i}") for i in range(15)))
    assert len(venue.seen) == 15
    assert fake_time.sleeps == [pytest.approx(0.1)] * 5
    assert fake_time.now == pytest.approx(T0 + 0.5)


# -- lifecycle -------------------------------------------------------------------------------
async def test_owned_session_closed_borrowed_session_left_open(
    venue: FakeVenue, fake_time: FakeTime
) -> None:
    async with aiohttp.ClientSession() as session:
        async with client(venue, fake_time, session=session) as c:
            await c.get("/x")
        assert not session.closed
        with pytest.raises(RuntimeError, match="closed"):
            await c.get("/x")

    owned = client(venue, fake_time)
    await owned.get("/x")
    inner = owned._session
    assert inner is not None
    await owned.close()
    assert inner.closed
