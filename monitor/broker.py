"""The embedded MQTT broker, so ``tapewatch run`` works on a machine with no broker installed.

``mqtt.broker: auto`` (the default) first asks the configured address whether an MQTT broker
answers (a real CONNECT/CONNACK, not just an open port); only if none does, and the address is
on this machine, does it start amqtt in-process there. ``embedded`` always starts it and
``external`` never does. Subscribers connect to the embedded broker like to any other.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

import aiomqtt

from monitor.config import MqttConfig

log = logging.getLogger("tapewatch.broker")

STOP_TIMEOUT_S = 5.0


class BrokerError(Exception):
    pass


async def broker_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        async with aiomqtt.Client(host, port, timeout=timeout, identifier=None):
            return True
    except aiomqtt.MqttError:
        return False


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    """Start the embedded broker if the config asks for one; None when an external one is used."""
    if config.broker == "external":
        return None
    if config.broker == "auto":
        if await broker_answers(config.host, config.port):
            log.info("using the MQTT broker already answering on %s:%d", config.host, config.port)
            return None
        if not _is_local(config.host):
            log.warning(
                "no MQTT broker answers on %s:%d yet; it is not a local address, so no embedded "
                "broker is started (waiting for it)",
                config.host,
                config.port,
            )
            return None
    if config.tls:
        raise BrokerError("the embedded broker does not serve TLS: use an mqtt:// URL")
    broker = EmbeddedBroker(config.host, config.port)
    await broker.start()
    return broker
