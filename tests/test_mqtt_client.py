"""The publisher's MQTT client writes each packet in the call that queues it (a real Mosquitto)."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from typing import Any

import aiomqtt
import pytest

from monitor.mqtt_client import Client
from tests.conftest import Mosquitto


async def next_payload(watcher: aiomqtt.Client) -> bytes:
    async with asyncio.timeout(30):
        async for message in watcher.messages:
            assert isinstance(message.payload, bytes)
            return message.payload
    raise AssertionError("the subscription ended")


async def test_a_publish_is_written_without_a_turn_of_the_event_loop(
    mosquitto: Mosquitto, prefix: str
) -> None:
    """Stepped once, a QoS 0 publish is complete: its packet went to the socket in the call.
    aiomqtt's own client leaves the write to the loop, so there the step suspends."""
    topic = f"{prefix}/now"
    async with (
        aiomqtt.Client(mosquitto.host, mosquitto.port) as watcher,
        Client(mosquitto.host, mosquitto.port) as client,
        aiomqtt.Client(mosquitto.host, mosquitto.port) as stock,
    ):
        await watcher.subscribe(topic, qos=1)

        step = client.publish(topic, b"at once", qos=0)
        with pytest.raises(StopIteration):
            step.send(None)
        assert await next_payload(watcher) == b"at once"

        deferred = stock.publish(topic, b"on a later turn", qos=0)
        waiting = deferred.send(None)  # suspended: the packet waits for the loop's writer
        assert isinstance(waiting, asyncio.Future)
        await asyncio.wait({waiting}, timeout=30)  # the loop's writer sends it
        with pytest.raises(StopIteration):
            deferred.send(None)
        assert await next_payload(watcher) == b"on a later turn"


async def test_what_the_socket_does_not_take_at_once_is_sent_by_the_writer(
    mosquitto: Mosquitto, prefix: str
) -> None:
    """A payload far bigger than the socket's send buffer (made small): the first write takes
    part of it, the loop's writer the rest, and a QoS 1 publish queued behind it still arrives,
    after it."""
    topic = f"{prefix}/big"
    big = bytes(range(256)) * (4 * 1024 * 1024 // 256)  # 4 MiB
    small_buffer = ((socket.SOL_SOCKET, socket.SO_SNDBUF, 4096),)
    async with (
        aiomqtt.Client(mosquitto.host, mosquitto.port, timeout=60) as watcher,
        Client(mosquitto.host, mosquitto.port, timeout=60, socket_options=small_buffer) as client,
    ):
        await watcher.subscribe(topic, qos=1)
        await asyncio.gather(
            client.publish(topic, big, qos=1),
            client.publish(topic, b"after", qos=1),
        )
        got = await next_payload(watcher)
        assert len(got) == len(big)
        assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest()
        assert await next_payload(watcher) == b"after"


async def test_aiomqtt_calls_the_hook_that_acknowledges_a_puback_at_once_for_each(
    mosquitto: Mosquitto, prefix: str
) -> None:
    """``Client._on_publish`` (where ``TCP_QUICKACK`` is set) runs once per PUBACK. The option's
    effect, a burst's later PUBACKs up to 40 ms sooner, is measured by bench/latency.py."""
    seen: list[int] = []

    class Counting(Client):
        def _on_publish(self, *args: Any) -> None:
            super()._on_publish(*args)
            seen.append(args[2])

    async with Counting(mosquitto.host, mosquitto.port) as client:
        await asyncio.gather(*(client.publish(f"{prefix}/q", b"x", qos=1) for _ in range(3)))
    assert len(seen) == 3
    assert len(set(seen)) == 3  # one per message id


async def test_publish_soon_completes_on_the_puback_and_fails_without_a_connection(
    mosquitto: Mosquitto, prefix: str
) -> None:
    topic = f"{prefix}/soon"
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as watcher:
        await watcher.subscribe(topic, qos=1)
        async with Client(mosquitto.host, mosquitto.port) as client:
            sent = client.publish_soon(topic, b"one", 1, False, None)
            assert not sent.done()  # written, but the PUBACK is read on a later turn
            await asyncio.wait_for(sent, 30)
            written = client.publish_soon(topic, b"two", 0, False, None)
            assert written.done() and written.exception() is None  # QoS 0: on the socket
        assert await next_payload(watcher) == b"one"
        assert await next_payload(watcher) == b"two"
    refused = client.publish_soon(topic, b"three", 1, False, None)
    assert isinstance(refused.exception(), aiomqtt.MqttCodeError)


async def test_packets_queued_together_leave_when_the_block_ends_uncorked(
    mosquitto: Mosquitto, prefix: str
) -> None:
    """Inside ``together`` nothing is written (a QoS 0 publish, done once written, is not done);
    at its end everything leaves in order, and the socket is uncorked again: a packet after
    it leaves at once."""
    topic = f"{prefix}/together"
    async with (
        aiomqtt.Client(mosquitto.host, mosquitto.port) as watcher,
        Client(mosquitto.host, mosquitto.port) as client,
    ):
        await watcher.subscribe(topic, qos=1)
        with client.together():
            first = client.publish_soon(topic, b"one", 1, False, None)
            second = client.publish_soon(topic, b"two", 0, False, None)
            assert not second.done()  # queued, not written
        assert second.done()  # written as the block ended
        await asyncio.wait_for(first, 30)
        sock = client._client.socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 0
        after = client.publish_soon(topic, b"three", 0, False, None)
        assert after.done()
        assert [await next_payload(watcher) for _ in range(3)] == [b"one", b"two", b"three"]
