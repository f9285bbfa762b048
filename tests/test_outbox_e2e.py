"""Regime events survive a broker outage and a SIGKILL of the daemon (real Mosquitto, real
simulator, the daemon as a real process).

The subscriber keeps a persistent session (clean_session false, QoS 1) on a Mosquitto with
persistence, so what the daemon delivers while the subscriber is away waits for it at the broker:
the test then sees every event the daemon ever delivered, and checks that none is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
import yaml

from monitor.config import deep_merge
from tests.conftest import Mosquitto, free_port

OUTAGE_S = 30.0  # the "broker stopped for 30 s"
# Events flow again within this long of the broker's return (the publisher's reconnect back-off
# is capped at RECONNECT_MAX_S, 2 s; the rest is room for a busy machine).
BACK_WITHIN_S = 5.0


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    # As root, Mosquitto drops to user "mosquitto", who cannot write pytest's private tmp dirs:
    # its persistence file was then never written, so the subscriber's session (subscription
    # and queued events) did not survive the restart, and events the daemon delivered before
    # the subscriber was back were dropped. It stays root (a non-root run owns the files).
    own = Mosquitto(
        tmp_path / "mosquitto",
        port=free_port(),
        persistence=True,
        listener_conf=("user root\n" if os.geteuid() == 0 else "") + "allow_anonymous true\n",
    )
    own.workdir.mkdir()
    own.start()
    yield own
    own.stop()


class EventLog:
    """A persistent-session subscriber to every asset's events topic."""

    def __init__(self, broker: Mosquitto, prefix: str) -> None:
        self.broker = broker
        self.topic = f"{prefix}/+/events"
        self.events: list[dict[str, Any]] = []
        self.arrived: list[float] = []  # monotonic arrival time of each event
        self.connects: list[float] = []  # monotonic time of each (re)connect of this subscriber
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def _record(self, message: aiomqtt.Message) -> None:
        self.arrived.append(time.monotonic())
        self.events.append(orjson.loads(message.payload))  # type: ignore[arg-type]

    def _recording_queue(self) -> type[asyncio.Queue[aiomqtt.Message]]:
        """A message queue that records each message as the client hands it over, which paho
        does before it acknowledges it. Reading ``client.messages`` instead loses what is still
        queued when the connection drops (aiomqtt discards it): on a loaded machine those were
        events the broker had delivered, and they looked lost."""
        record = self._record

        class Recording(asyncio.Queue[aiomqtt.Message]):
            def put_nowait(self, item: aiomqtt.Message) -> None:
                record(item)
                super().put_nowait(item)

        return Recording

    async def _run(self) -> None:
        queue_type = self._recording_queue()
        while True:
            try:
                async with aiomqtt.Client(
                    self.broker.host,
                    self.broker.port,
                    identifier="e2e-events",
                    clean_session=False,
                    queue_type=queue_type,
                ) as client:
                    # Back from here: the broker sends the session's queued events at once,
                    # before the SUBSCRIBE below returns, and they are recorded on arrival.
                    self.connects.append(time.monotonic())
                    await client.subscribe(self.topic, qos=1)
                    self.connected.set()
                    async for _ in client.messages:  # recorded on arrival; this only waits
                        pass
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.2)  # reconnect back-off while the broker is down

    async def __aenter__(self) -> EventLog:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def wait_for(self, predicate: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.events):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; events so far: {self.events}")
            await asyncio.sleep(0.1)


def outbox_depth(path: Path) -> int:
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        try:
            return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])
        except sqlite3.OperationalError:  # created but no table yet
            return 0


async def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def assert_nothing_lost(events: list[dict[str, Any]]) -> None:
    """Per asset and session, event seqs run 1, 2, 3 ... with no gap and no reordering."""
    by_stream: dict[tuple[str, str], list[int]] = {}
    for e in events:
        by_stream.setdefault((e["asset"], e["id"].split(":")[0]), []).append(e["seq"])
    for stream, seqs in by_stream.items():
        unique = list(dict.fromkeys(seqs))  # at-least-once: a redelivery may repeat one
        assert unique == list(range(1, len(unique) + 1)), (stream, seqs)


@pytest.fixture
async def daemon_files(
    start_simulator: Any, broker: Mosquitto, tmp_path: Path
) -> AsyncIterator[Any]:
    sim = await start_simulator(scenario="sell_wave", speed=10.0, seed=5)
    prefix = "e2e/v1"
    config = deep_merge(
        sim.config_overrides(),
        {
            "instance": "e2e",
            "mqtt": {"url": broker.url, "prefix": prefix, "broker": "external"},
            "signals": {"backfill": False},
            "state": {"dir": str(tmp_path / "state")},
        },
    )
    path = tmp_path / "daemon.yaml"
    path.write_text(yaml.safe_dump(config))
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(path)],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        return proc

    yield start, prefix, tmp_path / "state" / "e2e.outbox.sqlite"
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def test_a_30_s_broker_outage_loses_no_regime_event(
    daemon_files: Any, broker: Mosquitto
) -> None:
    start, prefix, outbox = daemon_files
    async with EventLog(broker, prefix) as log:
        daemon = start()
        await log.wait_for(lambda ev: len(ev) >= 2, timeout=60)
        broker.stop()
        down_at = time.monotonic()
        # The subscriber's session is on disk: what the daemon delivers before the subscriber
        # is back waits for it there.
        assert (broker.workdir / "mosquitto.db").exists()
        # Regimes keep changing while the broker is away: the events wait in the outbox.
        await wait_until(lambda: outbox_depth(outbox) >= 2, 90, "events in the outbox")
        await wait_until(lambda: time.monotonic() - down_at >= OUTAGE_S, 60, "the outage")
        waiting = outbox_depth(outbox)
        broker.start()
        back = time.monotonic()  # the broker accepts connections from here on
        seen = len(log.events)
        await log.wait_for(lambda ev: len(ev) >= seen + waiting, timeout=60)
        # Back in seconds: the first event reached the subscriber within BACK_WITHIN_S of the
        # broker's return. The subscriber cannot receive before it has reconnected itself, and
        # what the daemon delivered meanwhile waits for it in its session: so the bound counts
        # from whichever came later, the broker's return or the subscriber's.
        first = log.arrived[seen]
        resubscribed = min(t for t in log.connects if t > down_at)
        print(
            f"\nbroker back: subscriber after {resubscribed - back:.2f}s, "
            f"first event after {first - back:.2f}s"
        )
        assert first - max(back, resubscribed) <= BACK_WITHIN_S, (
            f"first event {first - back:.1f}s after the broker's return "
            f"(subscriber back after {resubscribed - back:.1f}s)"
        )
        await wait_until(
            lambda: outbox_depth(outbox) == 0 or daemon.poll() is not None, 30, "drain"
        )
        assert daemon.poll() is None, "the daemon died during the outage"
        assert_nothing_lost(log.events)


async def test_events_in_the_outbox_are_delivered_after_a_sigkill_and_restart(
    daemon_files: Any, broker: Mosquitto
) -> None:
    start, prefix, outbox = daemon_files
    async with EventLog(broker, prefix) as log:
        daemon = start()
        await log.wait_for(lambda ev: len(ev) >= 1, timeout=60)
        broker.stop()
        await wait_until(lambda: outbox_depth(outbox) >= 2, 90, "events in the outbox")
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        stranded = outbox_depth(outbox)
        assert stranded >= 2
        seen = len(log.events)
        broker.start()
        start()  # the restarted daemon sends what the killed one left, first
        await wait_until(lambda: outbox_depth(outbox) == 0, 60, "the outbox to drain")
        await log.wait_for(lambda ev: len(ev) >= seen + stranded, timeout=30)
        killed = {e["id"].split(":")[0] for e in log.events[:seen]}
        later = log.events[seen:]
        # The stranded events come first, from the killed daemon's session, in order.
        assert all(e["id"].split(":")[0] in killed for e in later[:stranded]), later
        assert_nothing_lost(log.events)
