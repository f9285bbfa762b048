"""Running as a systemd service: sd_notify over real unix datagram sockets (a path and the
abstract namespace), the real ``tapewatch run`` process notifying a socket the test binds, the
journald log format, and the unit file (``systemd-analyze verify``)."""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor import service
from monitor.config import deep_merge
from monitor.service import DaemonStatus, JournalFormatter, Notifier
from simulator.server import Simulator
from tests.conftest import REPO, Mosquitto
from tests.test_cli import cut_plain_tape

UNIT = REPO / "packaging" / "systemd" / "tapewatch.service"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
JOURNAL_LINE = re.compile(r"<([2-7])>(CRITICAL|ERROR|WARNING|INFO|DEBUG) [\w.]+: ")


# -- a socket in systemd's place ------------------------------------------------------------
class Manager:
    """The service manager's side of NOTIFY_SOCKET: every datagram, with its arrival time."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # as NOTIFY_SOCKET names it
        self.received: list[tuple[float, list[str]]] = []
        self._changed = asyncio.Condition()

    async def pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 65536)
            async with self._changed:
                self.received.append((time.monotonic(), data.decode().split("\n")))
                self._changed.notify_all()

    def with_line(self, line: str) -> list[tuple[float, list[str]]]:
        return [(t, lines) for t, lines in self.received if line in lines]

    def statuses(self) -> list[str]:
        return [x[7:] for _, lines in self.received for x in lines if x.startswith("STATUS=")]

    async def wait_for(self, predicate: Callable[[Manager], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self))


@contextlib.asynccontextmanager
async def manager(abstract: bool = False) -> AsyncIterator[Manager]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    # A short directory: a unix socket path must fit in 108 bytes, and pytest's may not.
    directory = tempfile.mkdtemp(prefix="tw-notify-", dir="/tmp")
    if abstract:
        name = f"tapewatch-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        address = "@" + name
    else:
        address = os.path.join(directory, "notify")
        sock.bind(address)
    mgr = Manager(sock, address)
    task = asyncio.create_task(mgr.pump())
    try:
        yield mgr
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


# -- sd_notify, piece by piece --------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@/org/freedesktop/systemd1/notify/42", "\0/org/freedesktop/systemd1/notify/42"),
        ("", None),
        (None, None),
        ("vsock:2:1234", None),  # a virtual machine's manager: not spoken here
    ],
)
def test_notify_address(value: str | None, address: str | None) -> None:
    assert service.notify_address(value) == address


@pytest.mark.parametrize(
    ("env", "seconds"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    env: dict[str, str], seconds: float | None
) -> None:
    assert service.watchdog_interval(env, pid=4242) == seconds


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
async def test_a_notification_is_one_datagram_of_lines(abstract: bool) -> None:
    async with manager(abstract) as mgr:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": mgr.address})
        assert notifier.enabled and notifier.watchdog_s is None
        assert notifier.ready("up: all good")
        assert notifier.status("busy")
        assert notifier.stopping()
        assert not notifier.status("busy again")  # "stopping" stays the last word
        await mgr.wait_for(lambda m: len(m.received) == 3, 5)
        notifier.close()
    assert [lines for _, lines in mgr.received] == [
        ["READY=1", "STATUS=up: all good"],
        ["STATUS=busy"],
        ["STOPPING=1", "STATUS=stopping"],
    ]


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier.from_env({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_s is None  # no manager, nobody to ping
    assert not notifier.ready("x") and not notifier.status("x") and not notifier.stopping()
    assert notifier.failures == 0


def test_a_manager_that_is_gone_is_logged_once_and_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    with caplog.at_level(logging.WARNING, logger="tapewatch.service"):
        assert not notifier.ready("x")
        assert not notifier.status("y")
    assert notifier.failures == 2
    warnings = [r for r in caplog.records if r.name == "tapewatch.service"]
    assert len(warnings) == 1 and "cannot notify systemd" in warnings[0].getMessage()


def test_status_text() -> None:
    up = DaemonStatus("mqtt://b:1883", True, sockets=4, sockets_up=4, frames=10, outbox=0)
    assert (
        service.status_text(up, 912.4)
        == "mqtt connected (mqtt://b:1883); sockets 4/4 up; 912 frames/s; outbox 0"
    )
    down = DaemonStatus("mqtt://b:1883", False, sockets=4, sockets_up=3, frames=0, outbox=7)
    assert (
        service.status_text(down, None)
        == "mqtt down, retrying mqtt://b:1883; sockets 3/4 up; outbox 7"
    )
    recording = DaemonStatus(None, False, sockets=1, sockets_up=1, frames=0, outbox=0)
    assert service.status_text(recording, 1234.0) == (
        "not publishing; sockets 1/1 up; 1,234 frames/s; outbox 0"
    )


class Counting:
    """A daemon whose sockets receive 100 frames between two looks."""

    def __init__(self) -> None:
        self.frames = 0

    def __call__(self) -> DaemonStatus:
        status = DaemonStatus("mqtt://b:1883", True, 2, 2, self.frames, 0)
        self.frames += 100
        return status


async def test_supervise_says_ready_then_pings_the_watchdog_with_the_status() -> None:
    async with manager() as mgr:
        notifier = Notifier(mgr.address, watchdog_s=0.05)
        task = asyncio.create_task(service.supervise(notifier, Counting()))
        await mgr.wait_for(lambda m: len(m.received) >= 4, 10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    first, *later = (lines for _, lines in mgr.received)
    assert first == ["READY=1", "STATUS=mqtt connected (mqtt://b:1883); sockets 2/2 up; outbox 0"]
    for lines in later:
        assert lines[0] == "WATCHDOG=1"
        assert re.fullmatch(
            r"STATUS=mqtt connected \(mqtt://b:1883\); sockets 2/2 up; [\d,]+ frames/s; outbox 0",
            lines[1],
        ), lines


async def test_supervise_without_a_watchdog_sends_status_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service, "STATUS_EVERY_S", 0.05)
    async with manager() as mgr:
        notifier = Notifier(mgr.address, watchdog_s=None)
        task = asyncio.create_task(service.supervise(notifier, Counting()))
        await mgr.wait_for(lambda m: len(m.received) >= 3, 10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert mgr.received[0][1][0] == "READY=1"
    for _, lines in mgr.received[1:]:
        assert len(lines) == 1 and lines[0].startswith("STATUS="), lines


# -- logs for journald ----------------------------------------------------------------------
def record(level: int, message: str, exc_info: Any = None) -> logging.LogRecord:
    return logging.LogRecord("tapewatch.test", level, __file__, 1, message, None, exc_info)


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.CRITICAL, "<2>CRITICAL"),
        (logging.ERROR, "<3>ERROR"),
        (logging.WARNING, "<4>WARNING"),
        (logging.INFO, "<6>INFO"),
        (logging.DEBUG, "<7>DEBUG"),
    ],
)
def test_journal_lines_carry_the_syslog_priority_and_no_time(level: int, prefix: str) -> None:
    line = JournalFormatter().format(record(level, "the message"))
    assert line == f"{prefix} tapewatch.test: the message"


def test_every_line_of_a_traceback_keeps_its_records_priority() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    text = JournalFormatter().format(record(logging.ERROR, "failed\nsecond line", exc_info))
    lines = text.split("\n")
    assert len(lines) > 4  # the message's two lines and a traceback
    assert all(line.startswith("<3>") for line in lines), lines
    assert lines[:2] == ["<3>ERROR tapewatch.test: failed", "<3>second line"]
    assert lines[-1] == "<3>ValueError: boom"


def test_the_journal_is_recognised_by_its_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "journal", "w") as journal, open(tmp_path / "other", "w") as other:
        st = os.fstat(journal.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert service.stream_is_journal(env, journal)
        assert not service.stream_is_journal(env, other)  # inherited, stderr elsewhere
        assert not service.stream_is_journal({}, journal)
        assert not service.stream_is_journal({"JOURNAL_STREAM": "8:x"}, journal)
        assert not service.stream_is_journal({"INVOCATION_ID": "abc"}, journal)


@pytest.mark.parametrize("case", ["journal", "elsewhere", "invocation-id-only"])
def test_the_command_line_logs_for_journald_when_stderr_is_the_journal(
    tmp_path: Path, case: str
) -> None:
    """A real command that logs a WARNING (a replay of a cut tape), its stderr a file: with
    JOURNAL_STREAM naming that file, the line has the priority prefix and no time stamp."""
    cut_plain_tape(tmp_path, 0)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TAPEWATCH_", "JOURNAL_STREAM", "INVOCATION_ID"))
    }
    with open(tmp_path / "stderr", "w") as stderr, open(tmp_path / "other", "w") as other:
        st = os.fstat((stderr if case == "journal" else other).fileno())
        if case == "invocation-id-only":
            env["INVOCATION_ID"] = uuid.uuid4().hex
        else:
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run(
            [sys.executable, "-m", "monitor", "replay", "killed.tape.jsonl", "--out", "o.jsonl"],
            cwd=tmp_path,
            env=env,
            stderr=stderr,
            stdout=subprocess.DEVNULL,
            check=True,
            timeout=90,
        )
    lines = (tmp_path / "stderr").read_text().splitlines()
    warning = next(line for line in lines if "cut short" in line)
    assert "killed.tape.jsonl: line" in warning
    if case == "journal":
        assert warning.startswith("<4>WARNING ") and JOURNAL_LINE.match(warning), warning
        assert not TIMESTAMP.search(warning)
    else:
        assert TIMESTAMP.match(warning) and " WARNING " in warning, warning
        assert not warning.startswith("<")


# -- the daemon under systemd's environment --------------------------------------------------
def daemon_yaml(sim: Simulator, mqtt_url: str, prefix: str, tmp: Path) -> Path:
    data = sim.config_for(yaml.safe_load((REPO / "config.yaml").read_text()))
    over = {
        "mqtt": {"url": mqtt_url, "prefix": prefix, "broker": "external"},
        "signals": {"backfill": False},
        "state": {"dir": str(tmp / "state")},
    }
    path = tmp / "daemon.yaml"
    path.write_text(yaml.safe_dump(deep_merge(data, over)))
    return path


WATCHDOG_USEC = 2_000_000  # pings every second


@pytest.mark.slow
async def test_tapewatch_run_notifies_ready_watchdog_status_and_stopping(
    start_simulator: Any,
    mosquitto: Mosquitto,
    prefix: str,
    tmp_path: Path,
) -> None:
    sim = await start_simulator(scenario="calm")
    config = daemon_yaml(sim, mosquitto.url, prefix, tmp_path)
    journal_path = tmp_path / "journal"
    async with manager() as mgr:
        with open(journal_path, "w") as journal:
            st = os.fstat(journal.fileno())
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("TAPEWATCH_", "WATCHDOG_", "NOTIFY_SOCKET"))
            }
            env |= {
                "NOTIFY_SOCKET": mgr.address,
                "WATCHDOG_USEC": str(WATCHDOG_USEC),
                "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
            }
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "monitor",
                "run",
                "--config",
                str(config),
                cwd=tmp_path,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=journal,
            )
        try:
            await mgr.wait_for(lambda m: bool(m.with_line("READY=1")), 60)
            # Ready means running: the daemon had logged its start before it said so.
            assert "session" in journal_path.read_text()
            await mgr.wait_for(lambda m: len(m.with_line("WATCHDOG=1")) >= 3, 30)
            # The status follows the daemon: the broker connected, every socket up.
            await mgr.wait_for(
                lambda m: any(
                    s.startswith(f"mqtt connected ({mosquitto.url}); sockets 4/4 up; ")
                    for s in m.statuses()
                ),
                60,
            )
            proc.send_signal(signal.SIGTERM)
            await mgr.wait_for(lambda m: bool(m.with_line("STOPPING=1")), 30)
            assert await asyncio.wait_for(proc.wait(), 60) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    ready = mgr.with_line("READY=1")
    pings = [t for t, _ in mgr.with_line("WATCHDOG=1")]
    stopping = mgr.with_line("STOPPING=1")
    assert len(ready) == 1 and len(stopping) == 1
    assert ready[0][0] >= started
    assert all(t > ready[0][0] for t in pings)  # no ping before READY=1
    assert stopping[0][0] > ready[0][0]
    assert mgr.statuses()[-1].startswith("stopping"), mgr.statuses()[-3:]
    # Every ping within the watchdog's interval of the one before: systemd would not kill it.
    gaps = [b - a for a, b in zip([ready[0][0], *pings], pings, strict=False)]
    assert max(gaps) < WATCHDOG_USEC / 1e6, gaps

    lines = [line for line in journal_path.read_text().splitlines() if line]
    assert lines, "the daemon logged nothing"
    for line in lines:
        assert JOURNAL_LINE.match(line), line
        assert not TIMESTAMP.search(line[:40]), line
    assert "<6>INFO tapewatch.daemon: stopping" in lines


# -- the unit file --------------------------------------------------------------------------
def unit_sections() -> configparser.ConfigParser:
    # systemd's syntax is close to INI: repeated keys (kept last here), % specifiers.
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_file_is_what_the_service_needs() -> None:
    unit = unit_sections()
    assert unit.sections() == ["Unit", "Service", "Install"]
    svc = unit["Service"]
    expected = {
        "Type": "notify",
        "ExecStart": "/opt/tapewatch/bin/tapewatch run --config /etc/tapewatch/config.yaml",
        "Restart": "on-failure",
        "DynamicUser": "yes",
        "StateDirectory": "tapewatch",
        "WorkingDirectory": "/var/lib/tapewatch",
        "EnvironmentFile": "-/etc/tapewatch/env",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
    }
    assert {k: svc.get(k) for k in expected} == expected
    assert svc["WatchdogSec"].endswith("s") and int(svc["WatchdogSec"][:-1]) >= 10
    # The journal and NOTIFY_SOCKET are unix sockets: the daemon must keep AF_UNIX.
    assert "AF_UNIX" in svc["RestrictAddressFamilies"].split()
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    """``systemd-analyze verify``, which also checks that ExecStart's program exists: the copy
    points at this venv's, as an install points it at its own. .ci/run installs systemd (for
    this tool; nothing runs it as PID 1) when the machine lacks it: a missing tool fails."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "the unit's test needs systemd-analyze: apt-get install systemd"
    program = Path(sys.executable).parent / "tapewatch"
    assert program.exists(), program
    copy = tmp_path / "tapewatch.service"
    copy.write_text(UNIT.read_text().replace("/opt/tapewatch/bin/tapewatch", str(program)))
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    # Unknown keys are only warnings (exit 0): any line about the unit is a failure here.
    about_unit = [line for line in result.stderr.splitlines() if copy.name in line]
    assert result.returncode == 0 and not about_unit, result.stderr


def test_the_readme_installs_the_paths_the_unit_uses() -> None:
    readme = (REPO / "README.md").read_text()
    operations = readme.split("## Operations", 1)[1].split("\n## ", 1)[0]
    for path in (
        "packaging/systemd/tapewatch.service",
        "/opt/tapewatch",
        "/etc/tapewatch/config.yaml",
        "/etc/tapewatch/env",
        "systemctl enable --now tapewatch",
        "journalctl -u tapewatch",
        "run --check",
    ):
        assert path in operations, path
