"""``tapewatch notify`` against real parts: Mosquitto (tests/conftest.py), events published as
the daemon publishes them (``MessageBuilder``), and real HTTP receivers on loopback (aiohttp)
behind Apprise's ``json://``, ``form://`` and ``ntfy://`` URLs.

The ntfy stand-in checks the request Apprise's ntfy plugin makes (read in its source): a POST
to the server's root with a JSON body ``{"topic", "title", "message"}`` and the options as
``X-Priority``, ``X-Tags`` and ``X-Markdown`` headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from aiohttp import web

from monitor.config import Config, config_from_dict, deep_merge
from monitor.messages import MessageBuilder, OutMessage, Topics
from monitor.notify import Notifier, load_targets
from monitor.notify_message import REPEAT_NOTE
from monitor.notify_store import read_rows
from signals.regimes import Reason, RegimeChange
from tests.conftest import REPO, Mosquitto, free_port

SHIPPED = yaml.safe_load((REPO / "config.yaml").read_text())
SINCE = 1_796_289_024_000
SELLERS = (
    Reason("taker_intensity_z", -1.9305326408231585, "<", -1.5),
    Reason("taker_sell_ratio", 0.5612, ">", 0.53),
    Reason("coinbase_premium_pct", -0.0771, "<", -0.05),
)
DESCRIPTION = "Sellers in control and no US spot bid."


# -- a receiver -----------------------------------------------------------------------------------
@dataclass
class Hit:
    """One HTTP request as the receiver saw it, and the status it answered."""

    method: str
    path: str
    headers: dict[str, str]
    content_type: str
    fields: dict[str, Any]
    status: int

    @property
    def message(self) -> str:
        return str(self.fields.get("message", ""))

    @property
    def ids(self) -> list[str]:
        found = re.search(r"^ids?: (.+)$", self.message, re.MULTILINE)
        return found[1].split(", ") if found else []

    @property
    def repeat(self) -> bool:
        return REPEAT_NOTE in self.message


@dataclass
class Receiver:
    """An HTTP server on loopback that records every request. ``status(fields)`` picks the
    answer (from the request's title and message fields);
    a request for which ``hold(hit)`` is true is recorded and then left waiting for
    ``release``."""

    status: Callable[[dict[str, Any]], int] = lambda fields: 200
    hold: Callable[[Hit], bool] | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)
    hits: list[Hit] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        if request.content_type == "application/json":
            fields = await request.json()
        else:
            fields = dict(await request.post())
        hit = Hit(
            request.method,
            request.path,
            dict(request.headers),
            request.content_type,
            fields,
            self.status(fields),
        )
        async with self._changed:
            self.hits.append(hit)
            self._changed.notify_all()
        if self.hold is not None and self.hold(hit):
            await self.release.wait()
        return web.json_response({"ok": hit.status == 200}, status=hit.status)

    def accepted(self) -> list[Hit]:
        return [h for h in self.hits if h.status == 200]

    def accepted_ids(self) -> list[str]:
        return [i for h in self.accepted() for i in h.ids]

    async def wait_for(self, predicate: Callable[[Receiver], bool], timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self))


@pytest.fixture(name="receiver")
async def receiver_fixture() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


# -- the daemon's side ----------------------------------------------------------------------------
class Publisher:
    """Publishes regime changes on the events topic as the daemon does (QoS 1, its builder)."""

    def __init__(self, client: aiomqtt.Client, prefix: str, session: str = "5e55101d0000") -> None:
        self.client = client
        self.builder = MessageBuilder(Topics(prefix, "test"), session, "0.1.0", SINCE)

    def build(
        self,
        asset: str = "BTC",
        regime: str = "seller_dominance",
        previous: str | None = "neutral",
        since: int = SINCE,
        reasons: tuple[Reason, ...] = SELLERS,
    ) -> OutMessage:
        change = RegimeChange(asset, regime, previous, since, reasons, DESCRIPTION)
        return self.builder.regime(change, since + 5)[-1]

    async def send(self, message: OutMessage) -> str:
        await self.client.publish(message.topic, message.payload_bytes(), qos=1)
        return str(message.payload["id"])

    async def change(self, *args: Any, **kwargs: Any) -> str:
        return await self.send(self.build(*args, **kwargs))


@pytest.fixture(name="publisher")
async def publisher_fixture(mosquitto: Mosquitto, prefix: str) -> AsyncIterator[Publisher]:
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        yield Publisher(client, prefix)


def group_of(prefix: str) -> str:
    return "g-" + prefix.split("/")[0].removeprefix("tw-test-")


def notify_data(
    mosquitto: Mosquitto, prefix: str, state: Path, urls: list[str], **notify: Any
) -> dict[str, Any]:
    """The shipped config on the test broker, with a quick notifier: no grouping, short
    retries, a group of this test's own."""
    section = {
        "urls": urls,
        "group": group_of(prefix),
        "session_expiry": "10m",
        "group_window": 0,
        "min_interval": 0,
        "retry_initial": "200ms",
        "retry_max": "1s",
        **notify,
    }
    return deep_merge(
        SHIPPED,
        {
            "mqtt": {"url": mosquitto.url, "prefix": prefix, "broker": "external"},
            "state": {"dir": str(state)},
            "notify": section,
        },
    )


def notify_config(
    mosquitto: Mosquitto, prefix: str, state: Path, urls: list[str], **notify: Any
) -> Config:
    return config_from_dict(notify_data(mosquitto, prefix, state, urls, **notify), env={})


@contextlib.asynccontextmanager
async def running(config: Config, worker: str = "w1") -> AsyncIterator[Notifier]:
    """A notifier worker in this process, subscribed before the block starts."""
    notifier = Notifier(config, load_targets(config.notify.urls), worker=worker)
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.run(stop))
    ready = asyncio.create_task(notifier.ready.wait())
    await asyncio.wait([task, ready], timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises what stopped it
    assert notifier.ready.is_set(), "the notifier did not subscribe in time"
    try:
        yield notifier
    finally:
        stop.set()
        ready.cancel()
        await asyncio.wait_for(task, 30)


def utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def store_rows(config: Config) -> list[Any]:
    return read_rows(Path(config.state.dir) / f"notify-{config.notify.group}.sqlite")


# -- tests ----------------------------------------------------------------------------------------
async def test_a_change_arrives_with_its_reasons_over_json_form_and_ntfy(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path, receiver: Receiver, publisher: Publisher
) -> None:
    base = f"127.0.0.1:{receiver.port}"
    urls = [
        f"json://{base}/json-hook",
        f"form://{base}/form-hook",
        f"ntfy://{base}/tw-alerts?priority=high&tags=warning,chart_with_downwards_trend"
        "&format=markdown&image=no",
    ]
    config = notify_config(mosquitto, prefix, tmp_path / "state", urls)
    async with running(config) as notifier:
        event_id = await publisher.change()
        await receiver.wait_for(lambda r: len(r.accepted()) == 3)
    by_path = {h.path: h for h in receiver.hits}
    assert set(by_path) == {"/json-hook", "/form-hook", "/"}

    title = "BTC: seller_dominance (was neutral)"
    lines = [
        f"BTC is in seller_dominance since {utc(SINCE)} (was neutral).",
        DESCRIPTION,
        "- taker_intensity_z = -1.931 (< -1.5)",
        "- taker_sell_ratio = 0.5612 (> 0.53)",
        "- coinbase_premium_pct = -0.0771 (< -0.05)",
        f"id: {event_id}",
    ]
    json_hit, form_hit, ntfy = by_path["/json-hook"], by_path["/form-hook"], by_path["/"]
    assert (json_hit.method, json_hit.content_type) == ("POST", "application/json")
    assert (form_hit.method, form_hit.content_type) == ("POST", "application/x-www-form-urlencoded")
    for hit in (json_hit, form_hit, ntfy):
        assert hit.fields["title"] == title
        for line in lines:
            assert line in hit.message.splitlines(), (line, hit.message)
        assert not hit.repeat
    # ntfy: the topic in the JSON body, its options as headers.
    assert ntfy.method == "POST"
    assert ntfy.content_type == "application/json"
    assert ntfy.fields["topic"] == "tw-alerts"
    assert ntfy.headers["X-Priority"] == "high"
    assert ntfy.headers["X-Tags"] == "chart_with_downwards_trend,warning"  # Apprise sorts them
    assert ntfy.headers["X-Markdown"] == "yes"

    assert notifier.counts["sent"] == 3
    rows = store_rows(config)
    assert sorted((r.event_id, r.state, r.attempts) for r in rows) == [(event_id, "sent", 1)] * 3
    assert len({r.target for r in rows}) == 3


async def test_filters_by_asset_regime_and_direction(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path, receiver: Receiver, publisher: Publisher
) -> None:
    urls = [f"json://127.0.0.1:{receiver.port}/hook"]
    config = notify_config(
        mosquitto,
        prefix,
        tmp_path / "state",
        urls,
        assets=["BTC"],
        regimes=["seller_dominance"],
        directions=["entered"],
    )
    async with running(config) as notifier:
        wanted = [await publisher.change("BTC", "seller_dominance", "neutral")]
        await publisher.change("BTC", "neutral", "seller_dominance")  # left: not wanted
        await publisher.change("ETH", "seller_dominance", "neutral")  # another asset
        await publisher.change("BTC", "distribution", "neutral")  # another regime
        wanted.append(await publisher.change("BTC", "seller_dominance", "distribution"))
        # The last one is wanted: a worker handles its events in order, so once it arrives
        # the three before it have been looked at.
        await receiver.wait_for(lambda r: len(r.accepted_ids()) == 2)
    assert receiver.accepted_ids() == wanted
    assert notifier.counts["filtered"] == 3
    assert {r.event_id for r in store_rows(config)} == set(wanted)


async def test_a_burst_becomes_one_digest(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path, receiver: Receiver, publisher: Publisher
) -> None:
    urls = [f"json://127.0.0.1:{receiver.port}/hook"]
    # A long window: only the full batch (max_events) sends it, so no timing is involved.
    config = notify_config(
        mosquitto, prefix, tmp_path / "state", urls, group_window="5m", max_events=4
    )
    async with running(config):
        ids = [
            await publisher.change("BTC", "seller_dominance", "neutral", SINCE),
            await publisher.change("ETH", "seller_dominance", "neutral", SINCE + 1_000),
            await publisher.change("BTC", "neutral", "seller_dominance", SINCE + 200_000),
            await publisher.change("ETH", "distribution", "seller_dominance", SINCE + 300_000),
        ]
        await receiver.wait_for(lambda r: len(r.accepted()) == 1)
    # Stopped: the delivery under way has finished and been recorded.
    assert sorted((r.event_id, r.state) for r in store_rows(config)) == sorted(
        (i, "sent") for i in ids
    )
    (hit,) = receiver.hits
    assert hit.fields["title"] == "tapewatch: 4 regime changes (BTC, ETH)"
    assert hit.ids == ids
    body = hit.message.splitlines()
    assert body[2] == (
        f"- {utc(SINCE)} BTC: seller_dominance (was neutral): taker_intensity_z = -1.931 "
        "(< -1.5); taker_sell_ratio = 0.5612 (> 0.53); coinbase_premium_pct = -0.0771 (< -0.05)"
    )
    assert body[5].startswith(f"- {utc(SINCE + 300_000)} ETH: distribution (was seller_dominance)")


async def test_a_copy_of_a_sent_event_and_a_bad_message_are_acked_without_sending(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path, receiver: Receiver, publisher: Publisher
) -> None:
    urls = [f"json://127.0.0.1:{receiver.port}/hook"]
    config = notify_config(mosquitto, prefix, tmp_path / "state", urls)
    first = publisher.build()
    async with running(config):
        event_id = await publisher.send(first)
        await receiver.wait_for(lambda r: r.accepted_ids() == [event_id])
    # While the worker is stopped its session queues a second copy (the daemon sends one after
    # a crash between the broker's PUBACK and its outbox delete), a bad message and a marker:
    # the restarted worker knows the copy from its store alone.
    await publisher.send(first)
    await publisher.client.publish(publisher.builder.topics.events("BTC"), b"{", qos=1)
    marker = await publisher.change("ETH")
    async with running(config) as notifier:
        await receiver.wait_for(lambda r: marker in r.accepted_ids())
    assert receiver.accepted_ids() == [event_id, marker]
    assert notifier.counts["duplicates"] == 1
    assert notifier.counts["malformed"] == 1


@pytest.mark.slow
async def test_two_workers_on_one_shared_subscription_deliver_each_event_once(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path, receiver: Receiver, publisher: Publisher
) -> None:
    urls = [f"json://127.0.0.1:{receiver.port}/hook"]
    config = notify_config(mosquitto, prefix, tmp_path / "state", urls)
    ids: list[str] = []
    async with running(config, "w2") as w2:
        async with running(config, "w1") as w1:
            for i in range(20):
                ids.append(await publisher.change("BTC" if i % 2 else "ETH", since=SINCE + i))
            await receiver.wait_for(lambda r: len(r.accepted_ids()) >= len(ids))
            split = (w1.counts["sent"], w2.counts["sent"])
        # w1 is down: what is published now reaches w2, or waits in w1's session until w1 is
        # back; either way each event arrives once.
        for i in range(6):
            ids.append(await publisher.change("SOL", since=SINCE + 100 + i))
        async with running(config, "w1"):
            await receiver.wait_for(lambda r: len(r.accepted_ids()) >= len(ids))
    assert sorted(receiver.accepted_ids()) == sorted(ids), "each event once overall"
    assert all(n > 0 for n in split), f"the broker split the load: {split}"
    assert not any(h.repeat for h in receiver.hits)
