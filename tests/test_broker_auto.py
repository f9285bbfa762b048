"""``mqtt.broker: auto`` beside secured brokers (real Mosquitto with a password file, with TLS
from a private CA made by openssl): it asks with the configured credentials and TLS, never
starts its anonymous embedded broker beside a broker that refuses it, and never takes the port
of a secured broker that is down: the daemon keeps retrying, and connects when it is up."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
import yaml

from monitor.broker import Answer, EmbeddedBroker, ensure_broker, probe
from monitor.config import Config, MqttConfig, config_from_dict, deep_merge
from simulator.server import Simulator
from tests.conftest import REPO, Mosquitto, free_port
from tests.test_daemon import RunningDaemon

USER, PASSWORD = "tapewatch", "s3cret"


def _run(command: str, cwd: Path) -> None:
    subprocess.run(command.split(), cwd=cwd, check=True, capture_output=True)


def secured_mosquitto(workdir: Path, tls: bool, port: int | None = None) -> Mosquitto:
    """A Mosquitto (not started) that refuses anonymous clients: a password file with
    ``USER``/``PASSWORD`` and, with ``tls``, a server certificate for 127.0.0.1 signed by a
    private CA (``workdir/ca.crt``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    _run(f"mosquitto_passwd -b -c passwd {USER} {PASSWORD}", workdir)
    conf = f"allow_anonymous false\npassword_file {workdir / 'passwd'}\n"
    if tls:
        _run(
            "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 "
            "-subj /CN=tapewatch-test-CA",
            workdir,
        )
        _run(
            "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr "
            "-subj /CN=127.0.0.1",
            workdir,
        )
        (workdir / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
        _run(
            "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
            "-out server.crt -days 2 -extfile ext.cnf",
            workdir,
        )
        conf += (
            f"cafile {workdir / 'ca.crt'}\ncertfile {workdir / 'server.crt'}\n"
            f"keyfile {workdir / 'server.key'}\n"
        )
    # As root, Mosquitto drops to user "mosquitto", who cannot read pytest's private tmp dirs:
    # stay root (a non-root run already owns the files).
    root = "user root\n" if os.geteuid() == 0 else ""
    return Mosquitto(workdir, port=port or free_port(), listener_conf=root + conf)


def env_for(
    broker: Mosquitto, tls: bool, username: str | None = USER, password: str = PASSWORD
) -> dict[str, str]:
    env = {"TAPEWATCH_MQTT_URL": f"{'mqtts' if tls else 'mqtt'}://127.0.0.1:{broker.port}"}
    if username is not None:
        env |= {"TAPEWATCH_MQTT_USERNAME": username, "TAPEWATCH_MQTT_PASSWORD": password}
    if tls:
        env["TAPEWATCH_MQTT_CA_FILE"] = str(broker.workdir / "ca.crt")
    return env


def auto_config(sim: Simulator, prefix: str, env: dict[str, str]) -> Config:
    """The shipped config on ``sim``, ``broker: auto``, the broker's URL and secrets in ``env``."""
    data = sim.config_for(yaml.safe_load((REPO / "config.yaml").read_text()))
    over = {
        "signals": {"backfill": False},
        "mqtt": {"url": "mqtt://127.0.0.1:1", "prefix": prefix, "broker": "auto"},
        "collector": {"backoff_initial": "100ms", "backoff_max": "1s"},
    }
    return config_from_dict(deep_merge(data, over), env=env)


class Seen(logging.Handler):
    """The tapewatch log lines, to wait on (``await seen.line("...")``)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self._changed.set()

    async def line(self, text: str, timeout: float = 30.0) -> str:
        async with asyncio.timeout(timeout):
            while True:
                found = [line for line in self.lines if text in line]
                if found:
                    return found[0]
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def seen() -> Any:
    handler = Seen()
    logger = logging.getLogger("tapewatch")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


@pytest.fixture
async def sim(start_simulator: Any) -> Simulator:
    return await start_simulator(scenario="calm", speed=5.0, seed=3)


async def status_of(broker: Mosquitto, config: Config, tls: bool) -> dict[str, Any]:
    """The daemon's retained status, read with the broker's credentials (and TLS)."""
    topic = f"{config.mqtt.prefix}/status/{config.instance}"
    ca = str(broker.workdir / "ca.crt")
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        username=USER,
        password=PASSWORD,
        tls_context=ssl.create_default_context(cafile=ca) if tls else None,
    ) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(60):
            async for message in client.messages:
                return orjson.loads(message.payload)  # type: ignore[arg-type]
    raise AssertionError("no status")


async def refuses_anonymous(broker: Mosquitto, tls: bool) -> bool:
    ca = str(broker.workdir / "ca.crt")
    try:
        async with aiomqtt.Client(
            broker.host,
            broker.port,
            tls_context=ssl.create_default_context(cafile=ca) if tls else None,
        ):
            return False
    except aiomqtt.MqttCodeError:
        return True


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def test_the_probe_tells_nothing_from_refused_from_accepted(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    secured = secured_mosquitto(tmp_path / "secured", tls=False)
    secured.start()
    try:
        url = f"mqtt://127.0.0.1:{secured.port}"
        anonymous = MqttConfig(url, "p")
        wrong = MqttConfig(url, "p", username=USER, password="wrong")
        right = MqttConfig(url, "p", username=USER, password=PASSWORD)
        assert (await probe(anonymous)).answer is Answer.REFUSED
        assert (await probe(wrong)).answer is Answer.REFUSED
        assert (await probe(right)).answer is Answer.ACCEPTED
        assert (await probe(MqttConfig(mosquitto.url, "p"))).answer is Answer.ACCEPTED
        nothing = await probe(MqttConfig(f"mqtt://127.0.0.1:{free_port()}", "p"))
        assert nothing.answer is Answer.NOTHING
    finally:
        secured.stop()


async def test_a_tls_port_asked_in_plain_text_is_not_taken_for_absent(tmp_path: Path) -> None:
    secured = secured_mosquitto(tmp_path / "secured", tls=True)
    secured.start()
    try:
        plain = MqttConfig(f"mqtt://127.0.0.1:{secured.port}", "p", username=USER, password="x")
        assert (await probe(plain, timeout=5)).answer is Answer.UNCLEAR
    finally:
        secured.stop()


@pytest.mark.parametrize("tls", [False, True], ids=["password", "tls+password"])
async def test_auto_uses_a_secured_broker_with_the_configured_credentials_and_tls(
    sim: Simulator, prefix: str, tmp_path: Path, tls: bool, seen: Seen
) -> None:
    secured = secured_mosquitto(tmp_path / "secured", tls=tls)
    secured.start()
    try:
        config = auto_config(sim, prefix, env_for(secured, tls))
        running = RunningDaemon(config)
        await asyncio.wait_for(running.daemon.broker_ready.wait(), 30)
        assert running.daemon.broker is None  # no embedded broker: the real one answered
        assert (await status_of(secured, config, tls))["state"] == "online"
        await seen.line("using the MQTT broker already answering")
        await running.close()
    finally:
        secured.stop()


@pytest.mark.parametrize("password", [None, "wrong"], ids=["anonymous", "bad-password"])
async def test_auto_never_starts_a_broker_beside_one_that_refuses_it(
    sim: Simulator, prefix: str, tmp_path: Path, password: str | None, seen: Seen
) -> None:
    """The crash seen before (``address already in use``): the anonymous probe was refused, so
    auto took the broker for absent and tried to start one on its port."""
    secured = secured_mosquitto(tmp_path / "secured", tls=False)
    secured.start()
    try:
        env = env_for(secured, tls=False, username=None if password is None else USER)
        if password is not None:
            env["TAPEWATCH_MQTT_PASSWORD"] = password
        running = RunningDaemon(auto_config(sim, prefix, env))
        await asyncio.wait_for(running.daemon.broker_ready.wait(), 30)
        assert running.daemon.broker is None
        assert "refused tapewatch's CONNECT" in await seen.line("refused")
        # It keeps retrying the configured broker (and keeps running).
        await seen.line("(attempt 2,", timeout=60)
        assert not running.task.done()
        assert await refuses_anonymous(secured, tls=False)  # still the real broker's port
        await running.close()
    finally:
        secured.stop()


@pytest.mark.parametrize("tls", [False, True], ids=["password", "tls+password"])
async def test_a_secured_broker_that_is_down_keeps_its_port_and_gets_the_daemon_when_up(
    sim: Simulator, prefix: str, tmp_path: Path, tls: bool, seen: Seen
) -> None:
    """Before: an anonymous embedded broker took the port, the real Mosquitto could not start
    and anyone could read the topics."""
    secured = secured_mosquitto(tmp_path / "secured", tls=tls)  # not started yet
    config = auto_config(sim, prefix, env_for(secured, tls))
    running = RunningDaemon(config)
    try:
        await asyncio.wait_for(running.daemon.broker_ready.wait(), 30)
        assert running.daemon.broker is None
        line = await seen.line("no MQTT broker listens")
        assert "keeps retrying" in line
        await seen.line("(attempt 1,", timeout=60)  # the publisher is trying, and failing
        assert port_is_free(secured.port)
        secured.start()  # would fail if anything had taken its port
        assert (await status_of(secured, config, tls))["state"] == "online"
        assert await refuses_anonymous(secured, tls)
        await running.close()
    finally:
        secured.stop()


async def test_a_plain_loopback_url_without_credentials_gets_the_embedded_broker(
    prefix: str,
) -> None:
    """What auto is for: nothing listens at a plain loopback URL and no credentials are set."""
    port = free_port()
    broker = await ensure_broker(MqttConfig(f"mqtt://127.0.0.1:{port}", prefix))
    assert isinstance(broker, EmbeddedBroker)
    try:
        async with aiomqtt.Client("127.0.0.1", port):
            pass
    finally:
        await broker.stop()
