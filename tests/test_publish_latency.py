"""``publish_latency_ms`` in health: receive of the causing frame → the broker's PUBACK."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from monitor.health import Health, LatencyWindow, percentile
from monitor.messages import OutMessage
from streams.tasks import stop_tasks
from tests.conftest import Mosquitto
from tests.test_outbox import builder, make_publisher, regime_flips


def test_percentiles_are_nearest_rank_over_the_recent_samples() -> None:
    assert percentile([], 50) is None
    values = [float(v) for v in range(1, 201)]  # 1 .. 200
    assert percentile(values, 50) == 100.0
    assert percentile(values, 99) == 198.0
    assert percentile(values[:10], 99) == 10.0  # under 100 samples p99 is the maximum
    window = LatencyWindow(size=3)
    assert window.report() == {"count": 0, "p50": None, "p99": None, "max": None}
    for ms in (9.0, 1.0, 2.0, 3.0):  # the 9 ms falls out of the window, the count keeps it
        window.add(ms)
    assert window.report() == {"count": 4, "p50": 2.0, "p99": 3.0, "max": 3.0}
    assert Health().report(0)["publish_latency_ms"]["count"] == 0


async def test_latency_runs_from_the_frames_receive_to_the_brokers_ack(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    publisher = make_publisher(mosquitto.port, prefix, "lat", tmp_path / "outbox.sqlite")
    task = asyncio.create_task(publisher.run())
    try:
        await asyncio.wait_for(publisher.connected.wait(), 30)
        regime, event = regime_flips(builder(prefix, "lat"), 1)  # one change: state, event
        received = time.time_ns() // 1_000_000 - 40  # the causing frame came 40 ms ago
        publisher.publish(regime, received)
        publisher.publish(event, received)
        # Not measured: no receive time, or QoS 0 (signals and health are coalesced).
        publisher.publish(OutMessage(f"{prefix}/BTC/regime", {"seq": 9}, qos=1, retain=True))
        publisher.publish(OutMessage(f"{prefix}/BTC/signals", {}, qos=0, retain=True), received)
        await asyncio.wait_for(publisher.drained(), 10)
    finally:
        await stop_tasks([task])
    assert publisher.latency.count == 2
    first, second = publisher.latency.samples
    assert 40 <= first <= second < 5_000  # the event waits for the state message's PUBACK


async def test_acknowledged_waits_for_the_regime_change_not_for_the_signals(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    """What the daemon's consumer waits on after a regime change: every QoS 1 message has its
    PUBACK. Signals (QoS 0, coalesced) may still be queued."""
    publisher = make_publisher(mosquitto.port, prefix, "ack", tmp_path / "outbox.sqlite")
    task = asyncio.create_task(publisher.run())
    try:
        await asyncio.wait_for(publisher.connected.wait(), 30)
        await asyncio.wait_for(publisher.acknowledged(), 1)  # nothing queued: at once
        regime, event = regime_flips(builder(prefix, "ack"), 1)
        publisher.publish(regime)
        publisher.publish(event)
        waiting = asyncio.ensure_future(publisher.acknowledged())
        assert not waiting.done()  # both are queued, neither sent yet
        await asyncio.wait_for(waiting, 10)
        assert publisher.published >= 2 and publisher.outbox is not None
        # The event's outbox write may still be under way (the send does not wait for it);
        # once it has reported, its row is deleted.
        await asyncio.wait_for(publisher.drained(), 10)
        assert len(publisher.outbox) == 0  # both acknowledged, so both left the outbox
    finally:
        await stop_tasks([task])


async def test_the_publishers_socket_sends_each_packet_at_once(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    """TCP_NODELAY: with Nagle's algorithm a regime change written while a small packet (a
    signals message) is unacknowledged waits for the broker's delayed ACK: 15-25 ms of a
    5 ms budget in bench/latency.py."""
    publisher = make_publisher(mosquitto.port, prefix, "nodelay", tmp_path / "outbox.sqlite")
    task = asyncio.create_task(publisher.run())
    try:
        await asyncio.wait_for(publisher.connected.wait(), 30)
        client = publisher._client
        assert client is not None
        sock = client._client.socket()  # aiomqtt's paho client: the connected TCP socket
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        await stop_tasks([task])
