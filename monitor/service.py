"""Running under systemd: readiness, watchdog and status (``sd_notify``), and logs for journald.

The unit (``packaging/systemd/tapewatch.service``) is ``Type=notify``: systemd counts the service
as started when the daemon says ``READY=1``, restarts it when the watchdog pings stop, and shows
the last ``STATUS=`` line in ``systemctl status``.

``sd_notify`` is one datagram of newline-separated ``KEY=value`` lines sent to the unix socket
named by ``$NOTIFY_SOCKET``: a path, or ``@name`` for the abstract namespace. That is a dozen
lines of ``socket``, so no library is pulled in for it: ``python-systemd`` builds against
libsystemd's headers (a C toolchain on every install, for one ``sendto``), and the small pure
Python packages are these same lines. Without ``$NOTIFY_SOCKET`` (started from a shell, or by a
unit of another type) every call is a no-op, and a failed send is logged, never raised: a
notification is worth less than the daemon that sends it.

Logs: journald stamps every line itself and reads a ``<N>`` syslog priority prefix on each line
(sd-daemon(3)), so ``journalctl -p warning`` filters by level. The journal format is used only
when stderr really is the journal: systemd sets ``$JOURNAL_STREAM`` to the device and inode of
the stream it connected, and that is compared with stderr's own, as systemd.exec(5) advises.
``$INVOCATION_ID`` alone does not say it (a unit may send stderr to a file or a terminal, which
want the time stamps), and both variables are inherited by whatever a service starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TextIO

log = logging.getLogger("tapewatch.service")

# The format off systemd (a terminal, a file): journald's own stamp replaces the asctime.
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"

# Without a watchdog, STATUS= is refreshed this often (with one, at every ping).
STATUS_EVERY_S = 10.0


# -- sd_notify ------------------------------------------------------------------------------
def notify_address(value: str | None) -> str | None:
    """The socket address ``$NOTIFY_SOCKET`` names, as ``socket.sendto`` takes it; None when
    unset or of a kind this does not speak (``vsock:``, for a virtual machine's manager)."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]  # the abstract namespace: a leading NUL, no file
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings, half of ``$WATCHDOG_USEC`` as sd_watchdog_enabled(3)
    advises; None without a watchdog, or when ``$WATCHDOG_PID`` names another process (the
    variables were inherited from a parent that is the one being watched)."""
    owner = env.get("WATCHDOG_PID")
    if owner is not None and owner.strip() != str(pid):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


class Notifier:
    """Sends ``sd_notify`` datagrams to the service manager; every call is a no-op without one."""

    def __init__(self, address: str | None, watchdog_s: float | None = None) -> None:
        self.address = address
        # Pings only make sense towards a manager that listens.
        self.watchdog_s = watchdog_s if address is not None else None
        self._sock: socket.socket | None = None
        self._failed = False  # the first failed send is logged, the rest only counted
        self.failures = 0
        self._stopping = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        env = os.environ if env is None else env
        address = notify_address(env.get("NOTIFY_SOCKET"))
        return cls(address, watchdog_interval(env, os.getpid() if pid is None else pid))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """One datagram with ``assignments`` (``"READY=1"``, ``"STATUS=..."``); True if sent."""
        if self.address is None:
            return False
        data = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                # Never block the event loop: a ping the manager cannot take now is dropped,
                # and the next one comes at half the watchdog interval.
                self._sock.setblocking(False)
            self._sock.sendto(data, self.address)
        except OSError as exc:
            self.failures += 1
            if not self._failed:
                self._failed = True
                log.warning("cannot notify systemd at %r: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        """The periodic STATUS= (with WATCHDOG=1 when watched); nothing once stopping, when
        systemd no longer watches and the "stopping" status must stay."""
        if self._stopping:
            return False
        assignments = ["WATCHDOG=1"] if self.watchdog_s is not None else []
        return self.send(*assignments, f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> bool:
        self._stopping = True
        return self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# -- STATUS= --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """What ``systemctl status`` shows of a running daemon."""

    mqtt_url: str | None  # None: not publishing (``tapewatch record``)
    mqtt_connected: bool
    sockets: int
    sockets_up: int
    frames: int  # frames received since the start, all sockets
    outbox: int  # regime events waiting for the broker's acknowledgement


def status_text(status: DaemonStatus, frames_per_s: float | None) -> str:
    """One short line: broker, sockets, throughput, outbox."""
    if status.mqtt_url is None:
        mqtt = "not publishing"
    elif status.mqtt_connected:
        mqtt = f"mqtt connected ({status.mqtt_url})"
    else:
        mqtt = f"mqtt down, retrying {status.mqtt_url}"
    parts = [mqtt, f"sockets {status.sockets_up}/{status.sockets} up"]
    if frames_per_s is not None:
        parts.append(f"{frames_per_s:,.0f} frames/s")
    parts.append(f"outbox {status.outbox}")
    return "; ".join(parts)


async def supervise(
    notifier: Notifier,
    status: Callable[[], DaemonStatus],
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """``READY=1`` at once, then ``WATCHDOG=1`` (when systemd set a watchdog) and ``STATUS=``
    every interval, until cancelled.

    The pings come from this task, on the event loop, on purpose: a loop held by a runaway
    computation or a blocking call stops pinging, and systemd restarts the daemon (its SIGABRT
    finds faulthandler on, which writes every thread's Python stack to the journal first)."""
    if notifier.watchdog_s is not None:
        # A stderr without a file descriptor (tests capture it) only loses the stacks.
        with contextlib.suppress(AttributeError, OSError, RuntimeError, ValueError):
            faulthandler.enable()
    first = status()
    notifier.ready(status_text(first, None))
    interval = notifier.watchdog_s or STATUS_EVERY_S
    frames, at = first.frames, clock()
    while True:
        await asyncio.sleep(interval)
        now_status, now = status(), clock()
        rate = (now_status.frames - frames) / (now - at) if now > at else None
        frames, at = now_status.frames, now
        notifier.status(status_text(now_status, rate))


# -- logs -----------------------------------------------------------------------------------
def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level: 2 crit, 3 err, 4 warning, 6 info, 7 debug."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class JournalFormatter(logging.Formatter):
    """No time stamp (journald adds its own), and the priority prefix on every line: journald
    takes each line of a stream as an entry of its own, so a traceback's lines keep their
    record's priority too."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def stream_is_journal(env: Mapping[str, str], stream: TextIO) -> bool:
    """Whether ``stream`` is the journal stream systemd connected (``$JOURNAL_STREAM`` is
    ``<device>:<inode>`` of it)."""
    value = env.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        expected = (int(device), int(inode))
        found = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):  # unset, garbled, or no file descriptor
        return False
    return (found.st_dev, found.st_ino) == expected


def log_formatter(
    env: Mapping[str, str] | None = None, stream: TextIO | None = None
) -> logging.Formatter:
    env = os.environ if env is None else env
    stream = sys.stderr if stream is None else stream
    return JournalFormatter() if stream_is_journal(env, stream) else logging.Formatter(TEXT_FORMAT)


def configure_logging(
    level: str, env: Mapping[str, str] | None = None, stream: TextIO | None = None
) -> None:
    """Log to stderr at ``level``: for journald when stderr is the journal, else time-stamped."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(log_formatter(env, stream))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
