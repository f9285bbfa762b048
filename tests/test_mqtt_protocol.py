"""MQTT 5 extras when the broker speaks it (Mosquitto), plain 3.1.1 when it does not (amqtt)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from aiomqtt import ProtocolVersion

from monitor.broker import EmbeddedBroker
from monitor.config import ConfigError, config_from_dict
from monitor.messages import OutMessage
from monitor.mqtt import Publisher
from streams.tasks import stop_tasks
from tests.conftest import Mosquitto, free_port
from tests.test_outbox import builder, make_publisher


async def first_message(port: int, topic: str, protocol: ProtocolVersion) -> aiomqtt.Message:
    async with aiomqtt.Client("127.0.0.1", port, protocol=protocol) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(20):
            async for message in client.messages:
                return message
    raise AssertionError("no message")


@contextlib.asynccontextmanager
async def running(publisher: Publisher) -> Any:
    task = asyncio.create_task(publisher.run())
    try:
        await asyncio.wait_for(publisher.connected.wait(), 30)
        yield publisher
    finally:
        await stop_tasks([task])


async def test_mqtt5_broker_gets_content_type_and_signal_expiry(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    publisher = make_publisher(mosquitto.port, prefix, "v5", tmp_path / "outbox.sqlite")
    async with running(publisher):
        assert publisher.protocol == ProtocolVersion.V5
        topic = f"{prefix}/BTC/signals"
        publisher.publish(OutMessage(topic, {"seq": 1}, qos=0, retain=True, expiry=30))
        # Retained: a subscriber arriving afterwards gets it, with the v5 properties.
        message = await first_message(mosquitto.port, topic, ProtocolVersion.V5)
    assert orjson.loads(message.payload) == {"seq": 1}  # type: ignore[arg-type]
    assert message.properties is not None
    assert message.properties.ContentType == "application/json"
    # The broker counts the expiry down while it holds the message: at most what was set.
    assert 0 < message.properties.MessageExpiryInterval <= 30


async def test_a_broker_without_mqtt5_is_spoken_to_in_3_1_1(prefix: str, tmp_path: Path) -> None:
    broker = EmbeddedBroker("127.0.0.1", free_port())
    await broker.start()
    try:
        publisher = make_publisher(broker.port, prefix, "v311", tmp_path / "outbox.sqlite")
        publisher.prefer_v311()  # what the daemon does for its embedded broker
        async with running(publisher):
            assert publisher.protocol == ProtocolVersion.V311
            topic = f"{prefix}/ETH/regime"
            publisher.publish(OutMessage(topic, {"regime": "neutral"}, qos=1, retain=True))
            message = await first_message(broker.port, topic, ProtocolVersion.V311)
        assert orjson.loads(message.payload) == {"regime": "neutral"}  # type: ignore[arg-type]
    finally:
        await broker.stop()


async def test_without_the_hint_the_publisher_finds_3_1_1_by_itself(
    prefix: str, tmp_path: Path
) -> None:
    broker = EmbeddedBroker("127.0.0.1", free_port())
    await broker.start()
    try:
        publisher = make_publisher(broker.port, prefix, "probe", tmp_path / "outbox.sqlite")
        async with running(publisher):
            assert publisher.protocol == ProtocolVersion.V311
    finally:
        await broker.stop()


def minimal_config(prefix: str, url: str = "mqtt://x") -> dict[str, Any]:
    return {
        "instance": "t",
        "assets": {"BTC": {"binance_usdm": "BTCUSDT"}},
        "regimes": [],
        "mqtt": {"url": url, "prefix": prefix},
    }


def _run(command: str, cwd: Path) -> None:
    subprocess.run(command.split(), cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def secure_broker(tmp_path: Path) -> Any:
    """Mosquitto with TLS (a private CA) and a password file: anonymous clients refused."""
    d = tmp_path / "secure"
    d.mkdir()
    _run(
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 "
        "-subj /CN=tapewatch-test-CA",
        d,
    )
    _run(
        "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr "
        "-subj /CN=127.0.0.1",
        d,
    )
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _run(
        "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
        "-out server.crt -days 2 -extfile ext.cnf",
        d,
    )
    _run("mosquitto_passwd -b -c passwd tapewatch s3cret", d)
    broker = Mosquitto(
        d,
        port=free_port(),
        listener_conf=(
            # As root, Mosquitto drops to user "mosquitto", who cannot read pytest's private
            # tmp dirs: stay root (a non-root run already owns the files).
            ("user root\n" if os.geteuid() == 0 else "")
            + f"allow_anonymous false\npassword_file {d / 'passwd'}\n"
            f"cafile {d / 'ca.crt'}\ncertfile {d / 'server.crt'}\nkeyfile {d / 'server.key'}\n"
        ),
    )
    broker.start()
    yield broker
    broker.stop()


async def test_tls_and_credentials_come_from_the_environment(
    secure_broker: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    ca = str(secure_broker.workdir / "ca.crt")
    env = {
        "TAPEWATCH_MQTT_URL": f"mqtts://127.0.0.1:{secure_broker.port}",
        "TAPEWATCH_MQTT_USERNAME": "tapewatch",
        "TAPEWATCH_MQTT_PASSWORD": "s3cret",
        "TAPEWATCH_MQTT_CA_FILE": ca,
    }
    mqtt = config_from_dict(
        minimal_config(prefix),
        env=env,
    ).mqtt
    assert mqtt.tls and mqtt.username == "tapewatch" and "s3cret" not in repr(mqtt)
    build = builder(prefix, "tls")
    publisher = Publisher(
        mqtt,
        client_id="tw-tls",
        birth=build.status("online"),
        will=build.status("offline"),
        rebirth_topic=build.topics.rebirth(),
    )
    async with running(publisher):
        topic = f"{prefix}/BTC/regime"
        publisher.publish(OutMessage(topic, {"regime": "neutral"}, qos=1, retain=True))
        async with aiomqtt.Client(
            "127.0.0.1",
            secure_broker.port,
            username="tapewatch",
            password="s3cret",
            tls_context=ssl.create_default_context(cafile=ca),
        ) as client:
            await client.subscribe(topic, qos=1)
            async with asyncio.timeout(20):
                async for message in client.messages:
                    assert orjson.loads(message.payload) == {"regime": "neutral"}  # type: ignore[arg-type]
                    break
    # The broker really does refuse a client without credentials.
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            "127.0.0.1", secure_broker.port, tls_context=ssl.create_default_context(cafile=ca)
        ):
            pass


def test_a_missing_ca_file_is_a_config_error(prefix: str) -> None:
    with pytest.raises(ConfigError, match="TAPEWATCH_MQTT_CA_FILE"):
        config_from_dict(
            minimal_config(prefix, "mqtts://x"),
            env={"TAPEWATCH_MQTT_CA_FILE": "/nonexistent/ca.pem"},
        )
