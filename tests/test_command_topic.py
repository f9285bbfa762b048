"""The command topic is bounded: a flood of rebirth requests or a few huge payloads on
``<prefix>/cmd/rebirth`` cost the daemon a few rebirths, a few log lines and no memory (real
Mosquitto, real simulator, the daemon as a real process whose RSS is read from /proc).

Everything here is loopback-only and bounded: a fixed number of messages from one client that
stops by itself, a few payloads of a fixed size.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from monitor.config import MqttConfig, deep_merge
from monitor.messages import OutMessage
from monitor.mqtt import MAX_COMMAND_BYTES, REBIRTH_MIN_INTERVAL_S, Publisher
from streams.tasks import stop_tasks
from tests.conftest import Mosquitto, Subscriber, free_port
from tests.test_mqtt_protocol import running
from tests.test_outbox import builder, make_publisher

FLOOD = 50_000  # rebirth commands in the burst (unbounded, this took a daemon from 67 to 275 MB)
BIG_BYTES = 40 * 1024 * 1024  # each oversized payload
BIG_COUNT = 3
RSS_GROWTH_MAX_KB = 20 * 1024
# The rebirth flood, handled, leaves the daemon's RSS up by ~20 MB, more on a slower host
# (20.5 and 21.6 MB on 2026-12-05's VM, before and after that day's publisher change; 0.2 MB over
# the same time without the flood): far from the 208 MB of an unbounded queue.
FLOOD_RSS_GROWTH_MAX_KB = 40 * 1024
# A real flood's log: the rebirth lines (one per rebirth) and a few others, never one a message.
LOG_LINES_MAX = 30


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def cpu_s(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (reported, not asserted: it depends on the
    machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# A separate process sends the payloads, so the bytes it builds are not in our memory (the
# in-process test measures its own RSS) and the test's event loop stays free.
SENDER = """
import asyncio, sys
import aiomqtt

async def main(port: int, topic: str, size: int, count: int, then_small: int) -> None:
    async with aiomqtt.Client("127.0.0.1", port, timeout=120) as client:
        for _ in range(count):
            await client.publish(topic, b"x" * size, qos=1, timeout=120)
        for _ in range(then_small):
            await client.publish(topic, b"", qos=1)

asyncio.run(main(int(sys.argv[1]), sys.argv[2], *map(int, sys.argv[3:])))
"""


def send(port: int, topic: str, size: int, count: int, then_small: int = 0) -> None:
    """``count`` payloads of ``size`` bytes, then ``then_small`` empty ones, in that order (one
    connection, QoS 1: the broker delivers them to each subscriber in the order sent)."""
    subprocess.run(
        [sys.executable, "-c", SENDER, str(port), topic, str(size), str(count), str(then_small)],
        check=True,
        timeout=300,
    )


async def flood(port: int, topic: str, count: int) -> None:
    """``count`` rebirth commands as fast as one client sends them, then stop. QoS 0, as a
    careless or hostile client would: nothing paces it (the broker delivers them at QoS 0 too,
    so nothing paces the daemon's reading either)."""
    async with aiomqtt.Client("127.0.0.1", port, timeout=60) as client:
        for _ in range(count):
            await client.publish(topic, b"", qos=0)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """Our own Mosquitto (the flood must not slow other tests' broker). It queues without limit
    for a slow client, so the test knows every command reaches the daemon; a production broker
    would drop beyond its ``max_queued_messages`` (1000 by default), which only helps."""
    own = Mosquitto(
        tmp_path / "mosquitto",
        port=free_port(),
        listener_conf="allow_anonymous true\nmax_queued_messages 0\n",
    )
    own.workdir.mkdir()
    own.start()
    yield own
    own.stop()


@contextlib.asynccontextmanager
async def subscriber(broker: Mosquitto, *topics: str) -> AsyncIterator[Subscriber]:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)
        sub = Subscriber(client)
        pump = asyncio.create_task(sub._pump())
        try:
            yield sub
        finally:
            await stop_tasks([pump])


class DaemonProcess:
    """``tapewatch run`` as a child process on the simulator and ``broker``; its log in a file."""

    def __init__(self, sim: Any, broker: Mosquitto, tmp_path: Path) -> None:
        self.prefix = f"cmd-{os.getpid()}/v1"
        self.instance = "cmd"
        config = deep_merge(
            sim.config_overrides(),
            {
                "instance": self.instance,
                "mqtt": {"url": broker.url, "prefix": self.prefix, "broker": "external"},
                "signals": {"backfill": False},
                "state": {"dir": str(tmp_path / "state")},
            },
        )
        path = tmp_path / "daemon.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log_path = tmp_path / "daemon.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(path)],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    @property
    def status(self) -> str:
        return f"{self.prefix}/status/{self.instance}"

    @property
    def health(self) -> str:
        return f"{self.prefix}/health/{self.instance}"

    @property
    def rebirth(self) -> str:
        return f"{self.prefix}/cmd/rebirth"

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
async def daemon(start_simulator: Any, broker: Mosquitto, tmp_path: Path) -> AsyncIterator[Any]:
    # A calm market: no regime changes, so every status message after the start is a rebirth.
    sim = await start_simulator(scenario="calm", speed=5.0, seed=3)
    running = DaemonProcess(sim, broker, tmp_path)
    yield running
    running.close()


def reports(sub: Subscriber, daemon: DaemonProcess) -> list[dict[str, Any]]:
    """The daemon's own health reports, in order (a rebirth republishes an old one: skipped)."""
    out: list[dict[str, Any]] = []
    for report in sub.on(daemon.health):
        if not out or report["seq"] > out[-1]["seq"]:
            out.append(report)
    return out


async def warmed_up(sub: Subscriber, daemon: DaemonProcess) -> dict[str, Any]:
    """Wait until the daemon runs steadily (online, two health reports: the collectors and the
    engine have allocated what they keep), and return its latest health report."""
    await sub.wait_for(lambda s: s.on(daemon.status) and len(reports(s, daemon)) >= 3, 90)
    assert sub.on(daemon.status)[-1]["state"] == "online"
    return reports(sub, daemon)[-1]


async def report_where(
    sub: Subscriber, daemon: DaemonProcess, check: Any, timeout: float
) -> dict[str, Any]:
    """The first health report for which ``check(report)`` holds (waiting for it)."""
    await sub.wait_for(lambda s: any(check(r) for r in reports(s, daemon)), timeout)
    return next(r for r in reports(sub, daemon) if check(r))


async def test_a_burst_of_rebirth_commands_costs_a_few_rebirths_and_no_memory(
    daemon: DaemonProcess, broker: Mosquitto
) -> None:
    async with subscriber(broker, daemon.status, daemon.health) as sub:
        base = (await warmed_up(sub, daemon))["commands"]
        rss_before, cpu_before = rss_kb(daemon.proc.pid), cpu_s(daemon.proc.pid)
        lines_before = len(daemon.log_lines())
        statuses_before = len(sub.on(daemon.status))
        started = time.monotonic()
        await flood(broker.port, daemon.rebirth, FLOOD)
        sent_in = time.monotonic() - started
        # Every command reached the daemon (our broker drops none), and it counted each.
        done = await report_where(
            sub, daemon, lambda r: r["commands"]["received"] >= base["received"] + FLOOD, 120
        )
        handled_in = time.monotonic() - started
        rss_after, cpu_after = rss_kb(daemon.proc.pid), cpu_s(daemon.proc.pid)
        # The next report comes after the last coalesced rebirth (at most one window after the
        # last command, a report interval is longer): its rebirth count is final.
        final = await report_where(sub, daemon, lambda r: r["seq"] > done["seq"], 60)
        rebirths = final["commands"]["rebirths"] - base["rebirths"]
        await sub.wait_for(lambda s: len(s.on(daemon.status)) >= statuses_before + rebirths, 30)
        republished = len(sub.on(daemon.status)) - statuses_before
        lines = daemon.log_lines()[lines_before:]
    print(
        f"\n{FLOOD} rebirth commands sent in {sent_in:.1f}s, handled in {handled_in:.1f}s: "
        f"{rebirths} rebirth(s), {republished} status republished, {len(lines)} log line(s), "
        f"daemon CPU {cpu_after - cpu_before:.2f}s, RSS {rss_before} -> {rss_after} kB"
    )
    assert final["commands"]["received"] - base["received"] == FLOOD
    assert final["commands"]["ignored"] == base["ignored"]
    # At most one rebirth per window while they came, plus the coalesced one at the end.
    assert 1 <= rebirths <= 2 + handled_in / REBIRTH_MIN_INTERVAL_S
    assert republished == rebirths
    assert all(p["state"] == "online" for p in sub.on(daemon.status))
    assert len(lines) <= LOG_LINES_MAX, lines
    assert rss_after - rss_before < FLOOD_RSS_GROWTH_MAX_KB
    assert daemon.proc.poll() is None


async def test_huge_payloads_never_reach_the_daemon_on_mqtt5(
    daemon: DaemonProcess, broker: Mosquitto
) -> None:
    async with subscriber(broker, daemon.status, daemon.health) as sub:
        base = (await warmed_up(sub, daemon))["commands"]
        rss_before = rss_kb(daemon.proc.pid)
        statuses_before = len(sub.on(daemon.status))
        # The huge ones, then one real command: it arrives after them (one connection, QoS 1).
        await asyncio.to_thread(send, broker.port, daemon.rebirth, BIG_BYTES, BIG_COUNT, 1)
        done = await report_where(
            sub, daemon, lambda r: r["commands"]["received"] > base["received"], 120
        )
        await sub.wait_for(lambda s: len(s.on(daemon.status)) > statuses_before, 30)
        rss_after = rss_kb(daemon.proc.pid)
    print(f"\n{BIG_COUNT} x {BIG_BYTES >> 20} MB: daemon RSS {rss_before} -> {rss_after} kB")
    # The broker kept them from us (our CONNECT announced a Maximum Packet Size): only the
    # small command arrived, and it was honoured.
    assert done["commands"]["received"] - base["received"] == 1
    assert done["commands"]["ignored"] == base["ignored"]
    assert sub.on(daemon.status)[-1]["state"] == "online"
    assert rss_after - rss_before < RSS_GROWTH_MAX_KB
    assert daemon.proc.poll() is None


def own_rss_kb() -> int:
    return rss_kb(os.getpid())


async def wait_until(check: Any, timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)  # polling a counter: no event to wait on
    assert check(), what


async def test_on_mqtt_3_1_1_huge_payloads_are_read_and_dropped_without_a_trace(
    broker: Mosquitto, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """MQTT 3.1.1 has no packet limit to announce, so the client must read what the broker
    sends: the publisher drops it at once, keeps nothing and logs one line without it.

    "Keeps nothing" is measured with tracemalloc (the Python memory still held afterwards),
    not with this process's RSS: after a suite of other tests, whether the allocator hands a
    freed 40 MB read buffer back to the system is its own business."""
    publisher = make_publisher(broker.port, prefix, "v311", tmp_path / "outbox.sqlite")
    publisher.prefer_v311()
    caplog.set_level(logging.INFO, logger="tapewatch.mqtt")
    async with running(publisher), subscriber(broker, publisher.birth.topic) as sub:
        await sub.wait_for(lambda s: s.on(publisher.birth.topic))
        gc.collect()
        tracemalloc.start()
        try:
            held_before = tracemalloc.get_traced_memory()[0]
            await asyncio.to_thread(
                send, broker.port, publisher.rebirth_topic, BIG_BYTES, BIG_COUNT, 1
            )
            await wait_until(
                lambda: publisher.commands.received == BIG_COUNT + 1, 120, "all commands read"
            )
            await sub.wait_for(lambda s: len(s.on(publisher.birth.topic)) >= 2)  # the rebirth
            gc.collect()
            held_after, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    print(
        f"\nMQTT 3.1.1, {BIG_COUNT} x {BIG_BYTES >> 20} MB: Python memory held "
        f"{(held_after - held_before) >> 10} kB more after, peak {peak >> 20} MB"
    )
    assert publisher.commands.ignored == BIG_COUNT
    assert publisher.commands.rebirths == 1
    # The peak (reported) is paho's: it copies a packet a few times while reading it.
    assert held_after - held_before < RSS_GROWTH_MAX_KB * 1024
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    # One line for the first, the repeats go into a summary at the end of the window.
    assert ignored == [
        f"mqtt: ignored a command payload over {MAX_COMMAND_BYTES} bytes "
        f"({BIG_BYTES} bytes on {publisher.rebirth_topic})"
    ]


async def test_rebirths_are_coalesced_and_retained_commands_ignored(
    broker: Mosquitto, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = make_publisher(broker.port, prefix, "coalesce", tmp_path / "outbox.sqlite")
    caplog.set_level(logging.INFO, logger="tapewatch.mqtt")
    status = publisher.birth.topic
    async with running(publisher), subscriber(broker, status) as sub:
        await sub.wait_for(lambda s: s.on(status))
        started = time.monotonic()
        async with aiomqtt.Client(broker.host, broker.port) as client:
            for _ in range(50):
                await client.publish(publisher.rebirth_topic, b"", qos=1)
        await wait_until(lambda: publisher.commands.received == 50, 60, "50 commands")
        # The first at once, the other 49 in one more at the end of the window.
        await sub.wait_for(lambda s: len(s.on(status)) >= 3, 30)
        span = time.monotonic() - started
        rebirths = publisher.commands.rebirths
        # A retained command is an old one, replayed to every new subscription: ignored.
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.publish(publisher.rebirth_topic, b"now", qos=1, retain=True)
        # Sent live to a subscription that exists: a request like any other.
        await wait_until(lambda: publisher.commands.received == 51, 60, "the retained one")
        assert publisher.commands.ignored == 0
        late = make_publisher(broker.port, prefix, "late", tmp_path / "late.sqlite")
        async with running(late):
            await wait_until(lambda: late.commands.received == 1, 60, "the replayed one")
        assert late.commands.ignored == 1 and late.commands.rebirths == 0
        async with aiomqtt.Client(broker.host, broker.port) as client:  # clear it
            await client.publish(publisher.rebirth_topic, b"", qos=1, retain=True)
    assert 2 <= rebirths <= 2 + span / REBIRTH_MIN_INTERVAL_S
    lines = [r.getMessage() for r in caplog.records if "rebirth" in r.getMessage()]
    assert lines[0] == "mqtt: rebirth requested"
    assert lines[1] == "mqtt: rebirth: 49 requests coalesced into one"


# The README's ACL example (Operations), with the test's prefix for tapewatch/v1.
ACL = """\
# tapewatch: publishes everything under its prefix, reads its command topic
user tapewatch
topic write {prefix}/#
topic read {prefix}/cmd/#

# an operator: may send commands, reads everything
user operator
topic write {prefix}/cmd/#
topic read {prefix}/#

# everyone else who may log in (consumers, dashboards, tapewatch tail): read only
pattern read {prefix}/#
"""


async def test_the_readme_acl_lets_only_an_operator_command_and_only_tapewatch_publish(
    prefix: str, tmp_path: Path
) -> None:
    d = tmp_path / "acl"
    d.mkdir()
    users = {"tapewatch": "tw-pass", "operator": "op-pass", "consumer": "c-pass"}
    for i, (user, password) in enumerate(users.items()):
        create = "-c " if i == 0 else ""
        subprocess.run(
            f"mosquitto_passwd -b {create}passwd {user} {password}".split(), cwd=d, check=True
        )
    (d / "acl").write_text(ACL.format(prefix=prefix))
    secured = Mosquitto(
        d,
        port=free_port(),
        listener_conf=("user root\n" if os.geteuid() == 0 else "")
        + f"allow_anonymous false\npassword_file {d / 'passwd'}\nacl_file {d / 'acl'}\n",
    )
    secured.start()
    try:
        build = builder(prefix, "acl")
        publisher = Publisher(
            MqttConfig(secured.url, prefix, username="tapewatch", password=users["tapewatch"]),
            client_id="tw-acl",
            birth=build.status("online"),
            will=build.status("offline"),
            rebirth_topic=build.topics.rebirth(),
        )
        regime = f"{prefix}/BTC/regime"
        status = publisher.birth.topic

        def client(user: str) -> aiomqtt.Client:
            return aiomqtt.Client(secured.host, secured.port, username=user, password=users[user])

        async with running(publisher), client("consumer") as consumer:
            publisher.publish(OutMessage(regime, {"regime": "neutral"}, qos=1, retain=True))
            for topic in (status, regime):  # JSON topics only (commands are not JSON)
                await consumer.subscribe(topic, qos=1)
            sub = Subscriber(consumer)
            pump = asyncio.create_task(sub._pump())
            try:
                # Consumers read what tapewatch publishes.
                await sub.wait_for(lambda s: s.on(status) and s.on(regime))
                # They may neither command nor publish under the prefix (the broker drops it).
                await consumer.publish(publisher.rebirth_topic, b"", qos=1)
                await consumer.publish(regime, b'{"regime": "spoofed"}', qos=1, retain=True)
                # The operator may command: it arrives, after what the consumer sent.
                async with client("operator") as operator:
                    await operator.publish(publisher.rebirth_topic, b"", qos=1)
                await wait_until(lambda: publisher.commands.received >= 1, 30, "the command")
                await sub.wait_for(lambda s: len(s.on(status)) >= 2)  # its rebirth
            finally:
                await stop_tasks([pump])
        assert publisher.commands.received == 1  # the operator's only
        assert all(p["regime"] == "neutral" for p in sub.on(regime))
    finally:
        secured.stop()
