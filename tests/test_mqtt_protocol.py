"""MQTT 5 extras when the broker speaks it (Mosquitto), plain 3.1.1 when it does not (amqtt)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
from aiomqtt import ProtocolVersion

from monitor.broker import EmbeddedBroker
from monitor.messages import OutMessage
from monitor.mqtt import Publisher
from streams.tasks import stop_tasks
from tests.conftest import Mosquitto, free_port
from tests.test_outbox import make_publisher


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
