"""The embedded MQTT broker, so ``tapewatch run`` works on a machine with no broker installed.

``mqtt.broker: auto`` (the default) first asks the configured address whether an MQTT broker
answers, with the configured credentials and TLS: a real CONNECT/CONNACK, not just an open port.
It starts amqtt in-process there only when nothing listens at all (the TCP connection itself is
refused) and the URL is one the embedded broker can honestly stand in for: plain ``mqtt://``, a
loopback address, no credentials. Everything else means a real broker belongs there, perhaps a
secured one that is down or refuses us: starting an anonymous broker on its port would squat it
(the real one could not start, and anyone could read the topics), so the daemon leaves the port
alone and its publisher keeps retrying. ``embedded`` always starts it and ``external`` never
does. Subscribers connect to the embedded broker like to any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
from dataclasses import dataclass

import aiomqtt
from aiomqtt import ProtocolVersion

from monitor.config import MqttConfig

log = logging.getLogger("tapewatch.broker")

STOP_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 5.0


class BrokerError(Exception):
    pass


class Answer(enum.Enum):
    ACCEPTED = "accepted"  # CONNACK: accepted
    REFUSED = "refused"  # a broker answered and refused the CONNECT (credentials, authorisation)
    NOTHING = "nothing"  # the TCP connection was refused: nothing listens on that port
    # Something listens but gave no CONNACK (a TLS failure, silence), or the address is unreachable.
    UNCLEAR = "unclear"


@dataclass(frozen=True, slots=True)
class Probe:
    answer: Answer
    detail: str = ""


async def probe(config: MqttConfig, timeout: float = PROBE_TIMEOUT_S) -> Probe:
    """What listens at the configured address, asked the way the publisher will ask: with the
    configured credentials and TLS (an anonymous, plain probe gets refused by a secured broker
    and would take it for absent)."""
    # A plain TCP connect first: only "connection refused" proves that nothing listens. The
    # MQTT client below folds every socket error into one message-only MqttError.
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await asyncio.open_connection(config.host, config.port)
    except ConnectionRefusedError as exc:
        return Probe(Answer.NOTHING, str(exc))
    except (OSError, TimeoutError) as exc:
        return Probe(Answer.UNCLEAR, str(exc) or type(exc).__name__)
    writer.close()
    with contextlib.suppress(OSError):  # reset on close: it was there, all we wanted to know
        await writer.wait_closed()
    try:
        # MQTT 3.1.1: every broker answers it (the publisher finds MQTT 5 by itself later).
        async with aiomqtt.Client(
            config.host,
            config.port,
            identifier=None,
            username=config.username,
            password=config.password,
            tls_context=config.ssl_context(),
            protocol=ProtocolVersion.V311,
            timeout=timeout,
        ):
            return Probe(Answer.ACCEPTED)
    except aiomqtt.MqttCodeError as exc:
        # A CONNACK with an error code (bad credentials, not authorised, ...): a broker IS there.
        return Probe(Answer.REFUSED, str(exc))
    except aiomqtt.MqttError as exc:
        return Probe(Answer.UNCLEAR, str(exc))


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def why_not_embedded(config: MqttConfig) -> str | None:
    """Why ``auto`` must not put an embedded broker at this URL; None when it may.

    The embedded broker is anonymous and plain: it may only stand in for a broker that would be
    the same (loopback, no TLS, no credentials). A URL with TLS or credentials names a secured
    broker, which may just be down, and whose port must stay free for it."""
    if config.tls:
        return "it uses TLS (mqtts://)"
    if config.username is not None or config.password is not None:
        return "credentials are configured (TAPEWATCH_MQTT_USERNAME)"
    if not _is_local(config.host):
        return "it is not a loopback address"
    return None


class EmbeddedBroker:
    """amqtt running in this process's event loop, anonymous access, one TCP listener."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._broker = None

    async def start(self) -> None:
        from amqtt.broker import Broker  # imported lazily: only needed when we host the broker

        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        self._broker = Broker(config)
        try:
            await self._broker.start()
        except Exception as exc:  # amqtt wraps bind errors in its own types
            raise BrokerError(
                f"could not start the embedded MQTT broker on {self.host}:{self.port}: {exc}"
            ) from exc
        log.info("embedded MQTT broker listening on mqtt://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._broker is not None:
            broker, self._broker = self._broker, None
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await broker.shutdown()
            except TimeoutError:
                log.warning("embedded MQTT broker did not shut down within %ss", STOP_TIMEOUT_S)


async def ensure_broker(config: MqttConfig) -> EmbeddedBroker | None:
    """Start the embedded broker if the config asks for one; None when an external one is used
    (the publisher then connects, and keeps retrying, on its own)."""
    if config.broker == "external":
        return None
    if config.broker == "embedded":
        if config.tls:
            raise BrokerError("the embedded broker does not serve TLS: use an mqtt:// URL")
        broker = EmbeddedBroker(config.host, config.port)
        await broker.start()
        return broker
    found = await probe(config)
    if found.answer is Answer.ACCEPTED:
        log.info("using the MQTT broker already answering at %s", config.url)
        return None
    if found.answer is Answer.REFUSED:
        log.warning(
            "the MQTT broker at %s refused tapewatch's CONNECT (%s): check "
            "TAPEWATCH_MQTT_USERNAME/TAPEWATCH_MQTT_PASSWORD and the broker's ACL; no embedded "
            "broker is started beside a running one, tapewatch keeps retrying it",
            config.url,
            found.detail,
        )
        return None
    if found.answer is Answer.UNCLEAR:
        log.warning(
            "no MQTT answer from %s (%s); something may be listening there, so no embedded "
            "broker is started: tapewatch keeps retrying it",
            config.url,
            found.detail,
        )
        return None
    reason = why_not_embedded(config)
    if reason is not None:
        log.warning(
            "no MQTT broker listens at %s yet; broker: auto starts an embedded broker only for "
            "a plain mqtt:// loopback URL without credentials, and here %s: tapewatch keeps "
            "retrying until that broker is up",
            config.url,
            reason,
        )
        return None
    broker = EmbeddedBroker(config.host, config.port)
    try:
        await broker.start()
    except BrokerError as exc:
        # The port was free a moment ago: a broker started meanwhile. It is theirs: use it.
        log.warning("%s; a broker started there meanwhile: tapewatch connects to it", exc)
        return None
    return broker
