"""The MQTT client the publisher speaks through: aiomqtt's, with each packet written at once.

aiomqtt drives paho from the event loop and leaves every write to it: paho queues the packet
and asks for a writer, aiomqtt registers one with ``call_soon_threadsafe(add_writer)``, and the
packet leaves on the loop turn after next. With 5,000 frames/s flowing those turns are where a
regime change waits (bench/README.md, "Latency"). paho itself writes a packet at once when no
event loop asks for writes; ``Client`` does the same, as long as it is called from a task on the
loop, and leaves the rest to aiomqtt's writer:

- what the socket did not take (a full send buffer): the writer sends it when it can;
- a packet queued off the loop (paho queues the CONNECT on aiomqtt's connect thread);
- a packet queued outside any task: that is inside paho's own callbacks (a PUBACK for a
  command just read). paho runs its callbacks under a lock that a write which completes a
  QoS 0 publish takes again, so a write from there would deadlock.

The publisher sends a burst of QoS 1 messages back to back (``monitor/mqtt.py``). Brokers
leave Nagle's algorithm on (Mosquitto's ``set_tcp_nodelay`` is off by default), so the second
PUBACK waits until the broker has our TCP acknowledgement of the first, and Linux delays that
one by up to 40 ms. So the client asks for quick acknowledgements (``TCP_QUICKACK``) as a burst
leaves, and again after a PUBACK is read while more are awaited; elsewhere, where there is no
such option, the delay stays. Asked before the first PUBACK comes, the kernel acknowledges it on
arrival, and the broker's next PUBACK leaves as soon as the broker has written it, often before
the daemon has woken for the first (tcpdump on loopback: the second PUBACK 0.18 ms after the
burst at the median, against 0.33 ms when the acknowledgement waited for the daemon to read the
first). ``together`` holds the packets queued in a block and writes them as it ends, corked
(``TCP_CORK``): a burst reaches the broker in one segment and wakes it once.

Everything else is aiomqtt's, unchanged. Two of its methods are extended, the hooks it gives
paho for writes (``_on_socket_register_write``) and for a publish's completion (``_on_publish``),
and ``publish_soon`` calls its paho client (``_client``) as its own ``publish`` does. That is
why ``pyproject.toml`` keeps aiomqtt below 3, and ``tests/test_mqtt_client.py`` fails if a
release changes any of the three.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only
CORK: int | None = getattr(socket, "TCP_CORK", None)  # Linux only


class Client(aiomqtt.Client):
    """``aiomqtt.Client`` whose packets leave in the call that queues them, plus
    ``publish_soon``: a publish whose completion is a future."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks: dict[int, asyncio.Future[None]] = {}  # by message id, until the PUBACK
        self._together = False  # inside ``together``: packets wait for its end

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """The packets queued inside the block leave together when it ends, in one TCP
        segment where the socket can be corked (``TCP_CORK``): the broker is woken once for a
        burst, not once per packet."""
        if self._together:  # nested: the outer block writes
            yield
            return
        self._together = True
        try:
            yield
        finally:
            self._together = False
            client = self._client
            if client.want_write():
                sock = client.socket()
                corked = CORK is not None and isinstance(sock, socket.socket)
                if corked:
                    _set_tcp(sock, CORK, 1)
                try:
                    self._on_socket_register_write(client, None, sock)
                finally:
                    if corked:
                        _set_tcp(sock, CORK, 0)  # uncorked: what is queued leaves now
                if self._acks and QUICKACK is not None and isinstance(sock, socket.socket):
                    # Before the first PUBACK comes: see the module's docstring.
                    _set_tcp(sock, QUICKACK, 1)

    def publish_soon(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Properties | None,
    ) -> asyncio.Future[None]:
        """Publish without awaiting: called from a task, the packet is on the socket when this
        returns. The future is done at once for QoS 0 (written) and on the PUBACK for QoS >= 1,
        or fails with ``MqttCodeError`` when paho refuses the message (no connection). A lost
        connection leaves it pending: the caller bounds its wait.

        Why not aiomqtt's ``publish``: awaiting it costs three more turns of the event loop
        after the PUBACK is read (a task for ``wait_for``, its waiter, the caller), and several
        publishes in flight need a task each."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            done.set_exception(aiomqtt.MqttCodeError(info.rc, "Could not publish message"))
        elif info.is_published():  # QoS 0, written; or a PUBACK that came within the call
            done.set_result(None)
        else:
            self._acks[info.mid] = done
        return done

    def _on_socket_register_write(
        self,
        client: paho.Client,
        userdata: Any,
        sock: Any,
    ) -> None:
        if self._together:
            return  # written at the end of ``together``
        if _in_task():
            client.loop_write()
            if not client.want_write():
                return
            # The socket's send buffer is full: the writer sends the rest.
        super()._on_socket_register_write(client, userdata, sock)

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        super()._on_publish(client, userdata, mid, reason_code, properties)
        done = self._acks.pop(mid, None)
        if done is None:
            return  # a QoS 0 message written, or a publish awaited through aiomqtt's own
        if not done.done():
            done.set_result(None)
        sock = client.socket()
        if self._acks and QUICKACK is not None and isinstance(sock, socket.socket):
            _set_tcp(sock, QUICKACK, 1)  # more PUBACKs to come: see the module's docstring


def _set_tcp(sock: socket.socket, option: int, value: int) -> None:
    with contextlib.suppress(OSError):  # closed meanwhile: the reader reports that
        sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _in_task() -> bool:
    """On the event loop's thread and inside a task (not in a paho callback, which runs in a
    plain reader or writer callback of the loop)."""
    try:
        return asyncio.current_task() is not None
    except RuntimeError:  # no loop on this thread: aiomqtt's connect thread
        return False
