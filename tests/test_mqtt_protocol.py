"""MQTT 5 extras when the broker speaks it (Mosquitto), plain 3.1.1 when it does not (amqtt)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from aiomqtt import ProtocolVersion

from monitor.broker import EmbeddedBroker
from monitor.config import ConfigError, config_from_dict
from monitor.daemon import HEALTH_EXPIRY_S, Daemon
from monitor.messages import OutMessage
from monitor.mqtt import Publisher
from streams.tasks import stop_tasks
from tests.conftest import Mosquitto, free_port
from tests.test_broker_auto import PASSWORD, USER, secured_mosquitto
from tests.test_daemon import daemon_config
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


@pytest.fixture
def secure_broker(tmp_path: Path) -> Any:
    """Mosquitto with TLS (a private CA) and a password file: anonymous clients refused."""
    broker = secured_mosquitto(tmp_path / "secure", tls=True)
    broker.start()
    yield broker
    broker.stop()


async def test_tls_and_credentials_come_from_the_environment(
    secure_broker: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    ca = str(secure_broker.workdir / "ca.crt")
    env = {
        "TAPEWATCH_MQTT_URL": f"mqtts://127.0.0.1:{secure_broker.port}",
        "TAPEWATCH_MQTT_USERNAME": USER,
        "TAPEWATCH_MQTT_PASSWORD": PASSWORD,
        "TAPEWATCH_MQTT_CA_FILE": ca,
    }
    mqtt = config_from_dict(
        minimal_config(prefix),
        env=env,
    ).mqtt
    assert mqtt.tls and mqtt.username == USER and PASSWORD not in repr(mqtt)
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
            username=USER,
            password=PASSWORD,
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


async def test_the_clean_stop_offline_status_carries_the_content_type(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    """As the will does: a v5 consumer sees one content type on the status topic, whichever
    way the daemon went offline."""
    publisher = make_publisher(mosquitto.port, prefix, "stop", tmp_path / "outbox.sqlite")
    async with running(publisher):
        await publisher.close()
    message = await first_message(mosquitto.port, publisher.will.topic, ProtocolVersion.V5)
    assert orjson.loads(message.payload)["state"] == "offline"  # type: ignore[arg-type]
    assert message.retain
    assert message.properties is not None
    assert message.properties.ContentType == "application/json"


async def test_the_daemons_retained_health_expires_and_its_offline_says_json(
    start_simulator: Any, mosquitto: Mosquitto, prefix: str
) -> None:
    """A daemon that died leaves no health that looks current: the retained health carries a
    message expiry of three report intervals, which the broker counts down."""
    sim = await start_simulator(scenario="calm", speed=5.0, seed=3)
    config = daemon_config(sim, mosquitto.url, prefix)
    daemon = Daemon(config)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        health = await first_message(
            mosquitto.port, f"{prefix}/health/{config.instance}", ProtocolVersion.V5
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert orjson.loads(health.payload)["instance"] == config.instance  # type: ignore[arg-type]
    assert health.properties is not None
    assert health.properties.ContentType == "application/json"
    assert 0 < health.properties.MessageExpiryInterval <= HEALTH_EXPIRY_S == 30
    status = await first_message(
        mosquitto.port, f"{prefix}/status/{config.instance}", ProtocolVersion.V5
    )
    assert orjson.loads(status.payload)["state"] == "offline"  # type: ignore[arg-type]
    assert status.properties is not None
    assert status.properties.ContentType == "application/json"
