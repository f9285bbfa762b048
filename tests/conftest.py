"""Shared fixtures: a real Mosquitto broker on a free loopback port, MQTT helpers, data paths."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import orjson
import pytest
import yaml

from monitor.config import Config, config_from_dict, deep_merge
from simulator.server import Simulator

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent
USDM_TAPE = DATA / "binance-usdm-2024-07-18-btc-eth-90s.tape.jsonl.zst"


# The end-to-end tier: whole sessions through the simulator, the daemon and Mosquitto, or long
# pure runs of every scenario. `pytest -m "not slow"` is the quick tier; CI runs both.
SLOW_MODULES = frozenset(
    {
        "test_narratives_e2e",
        "test_scenario_regimes",
        "test_outbox_e2e",
        "test_faults",
        "test_hostile_e2e",
        "test_regime_restart",
        "test_state_origin",
        "test_daemon",
        "test_backfill",
        "test_simulator_faults",
        "test_broker_auto",
        "test_command_topic",
        "test_offline",
        "test_replay_stateful",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Mosquitto:
    """A mosquitto process we own; tests may stop and restart it on the same port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    proc: subprocess.Popen[str] | None = None
    # Keep sessions and queued QoS 1 messages across a restart (saved on SIGTERM).
    persistence: bool = False
    listener_conf: str = "allow_anonymous true\n"  # e.g. TLS files and a password file

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise RuntimeError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        conf = self.workdir / "mosquitto.conf"
        persistence = (
            f"persistence true\npersistence_location {self.workdir}/\n"
            if self.persistence
            else "persistence false\n"
        )
        conf.write_text(
            f"listener {self.port} {self.host}\n{self.listener_conf}{persistence}"
            "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
            "log_type information\n"
        )
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        # Ready when mosquitto says so on stderr (no sleeping, no guessing).
        deadline = time.monotonic() + timeout
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"mosquitto exited with {self.proc.wait()}")
            if " running" in line:
                # Keep reading its log so a full pipe never blocks the broker.
                threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()
                return
        raise RuntimeError("mosquitto did not start in time")

    @staticmethod
    def _drain(stream: Any) -> None:
        for _ in stream:
            pass

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


@pytest.fixture(autouse=True)
def _own_working_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own directory, so relative paths (the default ``state/`` of
    checkpoints) never touch the checkout or leak from one test into the next."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test's own, so tests sharing a broker never see each other."""
    return f"tw-test-{uuid.uuid4().hex[:8]}/v1"


class Subscriber:
    """Collects messages from a real broker; waits on conditions with a bounded timeout."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self._changed = asyncio.Condition()

    async def _pump(self) -> None:
        async for m in self.client.messages:
            payload = orjson.loads(m.payload)  # type: ignore[arg-type]
            async with self._changed:
                self.messages.append((str(m.topic), payload, bool(m.retain)))
                self._changed.notify_all()

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [p for t, p, _ in self.messages if t == topic]

    async def wait_for(self, predicate: Any, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self))


@pytest.fixture
async def subscribe(mosquitto: Mosquitto) -> AsyncIterator[Any]:
    """``sub = await subscribe("prefix/#")``: a running subscriber on the test broker."""
    stack: list[tuple[aiomqtt.Client, asyncio.Task[None]]] = []

    async def make(*patterns: str, port: int | None = None) -> Subscriber:
        client = aiomqtt.Client(mosquitto.host, port or mosquitto.port)
        await client.__aenter__()
        for pattern in patterns:
            await client.subscribe(pattern, qos=1)
        sub = Subscriber(client)
        stack.append((client, asyncio.create_task(sub._pump())))
        return sub

    yield make
    for client, task in stack:
        task.cancel()
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)


@pytest.fixture
async def start_simulator() -> AsyncIterator[Any]:
    """``sim = await start_simulator(speed=5.0, ...)``: a simulator on a free port, stopped at
    the end of the test. It is paced (``pace=True`` unless a test says otherwise): on a busy
    machine its event clock waits for the daemon instead of cutting it off, so tests depend on
    event time, not on how fast the machine runs."""
    started: list[Simulator] = []

    async def start(**kw: Any) -> Simulator:
        kw.setdefault("pace", True)
        sim = Simulator(port=0, **kw)
        await sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.stop()


def sim_config(sim: Simulator, **over: Any) -> Config:
    """The shipped config pointed at ``sim``, with ``over`` merged on top. The start-up backfill
    is off unless ``over`` turns it on: tests about it say so (tests/test_backfill.py)."""
    data = sim.config_for(yaml.safe_load((REPO / "config.yaml").read_text()))
    data = deep_merge(data, {"signals": {"backfill": False}})
    return config_from_dict(deep_merge(data, over), env={})


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any, dict[str, str]]:
    """A GET for REST tests: (status, JSON body, headers)."""
    async with http.get(url) as resp:
        return resp.status, await resp.json(), dict(resp.headers)
