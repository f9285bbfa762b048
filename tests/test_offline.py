"""A first run without network: one line per host, a backfill that waits, venues down in health.

The pure part checks the falling-rate reporter with an injected clock and the short
descriptions of connect errors. The end-to-end part runs ``tapewatch run`` as a subprocess
against hosts that cannot be resolved (the ``.invalid`` TLD never resolves) and loopback ports
where nothing listens, publishing health to a real Mosquitto, and reads its stderr as an
operator would.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.connection import LinkStats
from streams.reporting import (
    HostReporter,
    describe_connect_error,
    duration,
    host_of,
    venues_report,
)
from tests.conftest import REPO, Mosquitto

# -- the falling-rate reporter (pure) ----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def reporter(clock: Clock, **kw: Any) -> HostReporter:
    # Wall time derived from the same clock: since_ms is then exact.
    return HostReporter(
        logging.getLogger("test.reporting"), clock=clock, wall=lambda: round(clock.t * 1000), **kw
    )


DNS = "cannot resolve fapi.binance.com (gaierror: no network or DNS?)"


def test_first_failure_is_one_line_then_reports_fall_to_every_30_minutes() -> None:
    clock = Clock()
    r = reporter(clock)
    start = clock.t
    said: list[tuple[float, str]] = []
    # One attempt a second for three hours, as a reconnect loop at its cap might make.
    for _ in range(3 * 3600):
        line = r.failed("fapi.binance.com", DNS)
        if line is not None:
            said.append((clock.t - start, line))
        clock.t += 1.0
    assert said[0] == (0.0, f"{DNS}; retrying, next report in 1 min")
    # Reports at 0, then 1, 2, 4, 8, 16 minutes apart, then every 30 minutes.
    gaps = [round(b[0] - a[0]) for a, b in itertools.pairwise(said)]
    assert gaps == [60, 120, 240, 480, 960, 1800, 1800, 1800, 1800]  # 10 lines, not 10,800
    assert said[1][1] == (f"{DNS}; still failing after 1 min (61 attempts), next report in 2 min")
    assert said[-1][1].endswith("next report in 30 min")
    assert all(len(line) < 200 for _, line in said)
    outage = r.outages["fapi.binance.com"]
    assert outage.failures == 3 * 3600 and outage.since_ms == round(start * 1000)


def test_recovery_is_one_line_and_a_new_outage_is_said_at_once() -> None:
    clock = Clock()
    r = reporter(clock)
    assert r.ok("api.coinbase.com") is None  # nothing to recover from: silent
    r.failed("api.coinbase.com", "cannot resolve api.coinbase.com (x)")
    clock.t += 150
    r.failed("api.coinbase.com", "cannot resolve api.coinbase.com (x)")
    clock.t += 30
    assert r.ok("api.coinbase.com") == (
        "api.coinbase.com reachable again after 3 min (2 failed attempt(s))"
    )
    assert r.ok("api.coinbase.com") is None
    assert "api.coinbase.com" not in r.outages
    # The next outage starts over: said at once, next report a minute later.
    line = r.failed("api.coinbase.com", "127.0.0.1:9 refused")
    assert line == "127.0.0.1:9 refused; retrying, next report in 1 min"


def test_hosts_are_reported_independently() -> None:
    clock = Clock()
    r = reporter(clock, initial=10.0, cap=40.0)
    assert r.failed("a", "a down") is not None
    assert r.failed("b", "b down") is not None
    assert r.failed("a", "a down") is None
    clock.t += 10
    assert r.failed("a", "a down") == (
        "a down; still failing after 10 s (3 attempts), next report in 20 s"
    )
    assert r.ok("b") is not None
    assert set(r.outages) == {"a"}
    with pytest.raises(ValueError):
        HostReporter(initial=0.0)


def test_connect_errors_are_short_sentences_naming_host_and_class() -> None:
    host = "fstream.binance.com"
    gai = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert describe_connect_error(gai, host) == (
        "cannot resolve fstream.binance.com (gaierror: no network or DNS?)"
    )
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 9)")
    assert describe_connect_error(refused, "127.0.0.1:9") == (
        "127.0.0.1:9 refused the connection (ConnectionRefusedError: nothing listens there)"
    )
    # asyncio joins the failures of ::1 and 127.0.0.1 into one OSError without an errno.
    both = OSError(
        "Multiple exceptions: [Errno 111] Connect call failed ('::1', 9, 0, 0), "
        "[Errno 111] Connect call failed ('127.0.0.1', 9)"
    )
    assert "refused the connection" in (describe_connect_error(both, "localhost:9") or "")
    unreachable = OSError(errno.ENETUNREACH, "Network is unreachable")
    assert describe_connect_error(unreachable, host) == (
        "cannot reach fstream.binance.com (OSError: Network is unreachable; no network?)"
    )
    assert describe_connect_error(TimeoutError(), host) == (
        "fstream.binance.com did not answer in time (TimeoutError)"
    )
    long = OSError(errno.EIO, "x" * 500)
    described = describe_connect_error(long, host) or ""
    assert described.startswith("cannot connect to fstream.binance.com (OSError: xxx")
    assert len(described) < 150
    assert describe_connect_error(ValueError("not a connect error"), host) is None


def test_host_of_names_the_port_only_when_the_url_does() -> None:
    assert host_of("wss://fstream.binance.com/market") == "fstream.binance.com"
    assert host_of("https://fapi.binance.com") == "fapi.binance.com"
    assert host_of("ws://127.0.0.1:8765/spot") == "127.0.0.1:8765"
    assert host_of("ws://[::1]:9/x") == "[::1]:9"
    assert [duration(s) for s in (0, 44.6, 60, 89, 3600, 3900)] == [
        "0 s",
        "45 s",
        "1 min",
        "1 min",
        "1 h",
        "1 h 5 min",
    ]


@dataclass
class Rest:
    requests: int = 0
    reachable: bool | None = None
    state_since_ms: int | None = None
    last_error: str | None = None
    unreachable_reason: str | None = None


@dataclass
class Sock:
    venue: str
    health: LinkStats


def test_venues_report_says_which_venue_is_down_since_when_and_why() -> None:
    market = LinkStats("binance-usdm/market", since_ms=2_000, last_error="cannot resolve f")
    public = LinkStats("binance-usdm/public", since_ms=1_000, last_error="cannot resolve p")
    spot = LinkStats("binance-spot", connected=True, since_ms=5_000)
    coinbase = LinkStats("coinbase")  # no attempt has ended yet
    links = [
        Sock("binance-usdm", market),
        Sock("binance-usdm", public),
        Sock("binance-spot", spot),
        Sock("coinbase", coinbase),
    ]
    rest = {
        "binance-usdm": Rest(
            3, False, 1_500, "binance-usdm GET /x: cannot resolve f", "cannot res f"
        ),
        "binance-spot": Rest(1, True, 7_000),
        "coinbase": Rest(0),
        "unused": Rest(0),
    }
    report = venues_report(links, rest)
    assert set(report) == {"binance-usdm", "binance-spot", "coinbase"}
    assert report["binance-usdm"] == {
        "up": False,
        "since_ms": 1_000,  # the first part to fail
        "error": "cannot resolve p",
        "sockets": 2,
        "sockets_connected": 0,
        "rest_reachable": False,
    }
    assert report["binance-spot"] == {
        "up": True,
        "since_ms": 7_000,  # the last part to come up
        "error": None,
        "sockets": 1,
        "sockets_connected": 1,
        "rest_reachable": True,
    }
    assert report["coinbase"]["up"] is False and report["coinbase"]["error"] == "connecting"
    assert report["coinbase"]["rest_reachable"] is None  # never asked
    # Sockets up and REST down: the venue is down, with the REST error.
    market.connected = public.connected = True
    usdm = venues_report(links, rest)["binance-usdm"]
    assert usdm["up"] is False and usdm["error"] == "cannot res f"  # without the request
    assert usdm["since_ms"] == 1_500


# -- end to end: `tapewatch run` without network ----------------------------------------------

# Lines the daemon prints start "2026-12-03 09:10:05,248 WARNING tapewatch.network: ".
LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+)\s+(?P<logger>[\w.]+): (?P<msg>.*)$")


class Stderr:
    """The daemon's stderr, read line by line in a thread, waited on by condition."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self.closed = False  # the process closed it: every line is in
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def matching(self, logger: str) -> list[str]:
        out = []
        for line in self.lines:
            m = LINE.match(line)
            if m and m["logger"] == logger:
                out.append(m["msg"])
        return out

    async def wait_for(self, predicate: Any, timeout: float) -> None:
        def wait() -> bool:
            with self._changed:
                return self._changed.wait_for(lambda: predicate(self), timeout)

        assert await asyncio.to_thread(wait), "\n".join(self.lines)


def closed_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports, free a moment ago: nothing listens there."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:  # held together, so the kernel cannot hand out one port twice
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.mark.slow
async def test_a_first_run_without_network_says_so_once_per_host(
    mosquitto: Mosquitto, prefix: str, subscribe: Any, tmp_path: Path
) -> None:
    # Three loopback ports where nothing listens (refused) and three names that never resolve.
    ws_port, usdm_rest_port, coinbase_rest_port = closed_ports(3)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(
        instance="offline",
        venues={
            "binance_spot": {
                "ws": "wss://spot-stream.invalid",
                "rest": "https://spot-api.invalid",
            },
            "binance_usdm": {
                "market_ws": f"ws://127.0.0.1:{ws_port}/market",
                "public_ws": f"ws://127.0.0.1:{ws_port}/public",
                "rest": f"http://127.0.0.1:{usdm_rest_port}",
            },
            "coinbase": {
                "ws": "wss://coinbase-ws.invalid",
                "rest": f"http://127.0.0.1:{coinbase_rest_port}",
            },
        },
        mqtt={"url": mosquitto.url, "prefix": prefix, "broker": "external"},
        state={"dir": str(tmp_path / "state")},
        log_level="info",
    )
    # Fast reconnects make many attempts within the run (each one used to log a line); one
    # poll per endpoint keeps the request count exact.
    config["collector"].update(
        backoff_initial="100ms",
        backoff_max="1s",
        open_interest_poll="1h",
        ratios_poll="1h",
    )
    config["signals"]["backfill"] = True
    path = tmp_path / "offline.yaml"
    path.write_text(yaml.safe_dump(config))
    hosts = {
        "spot-stream.invalid",
        "spot-api.invalid",
        "coinbase-ws.invalid",
        f"127.0.0.1:{ws_port}",
        f"127.0.0.1:{usdm_rest_port}",
        f"127.0.0.1:{coinbase_rest_port}",
    }

    sub = await subscribe(f"{prefix}/health/offline")
    # No TAPEWATCH_ overrides, and no proxy: through one, the names would be resolved (and
    # refused) by the proxy, not here.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TAPEWATCH_") and not k.lower().endswith("_proxy")
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "--config", str(path)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        err = Stderr(proc.stderr)

        def down(report: dict[str, Any]) -> bool:
            venues = report.get("venues", {})
            return set(venues) == {"binance-spot", "binance-usdm", "coinbase"} and all(
                not v["up"] and v["error"] not in (None, "connecting") for v in venues.values()
            )

        # The backfill's start and its two groups' stop lines.
        await err.wait_for(lambda e: len(e.matching("tapewatch.backfill")) >= 3, 60)
        seen_ms = time.time_ns() // 1_000_000
        # A health report taken after that (the next one, every 10 s): all the requests the
        # backfill made are in it.
        await sub.wait_for(
            lambda s: (
                bool(s.messages)
                and s.messages[-1][1]["ts_pub"] > seen_ms
                and down(s.messages[-1][1])
            ),
            60,
        )
        report = sub.messages[-1][1]
        proc.send_signal(signal.SIGINT)
        await asyncio.to_thread(proc.wait, 30)
        await err.wait_for(lambda e: e.closed, 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, "\n".join(err.lines)
    lines = err.lines
    text = "\n".join(lines)

    # Many attempts were made ...
    streams = report["streams"]
    assert all(streams[name]["reconnects"] >= 3 for name in streams), streams
    # ... and each host was named in exactly one line, which says what is wrong.
    network = err.matching("tapewatch.network")
    assert len(network) == len(hosts), text
    for host in hosts:
        said = [m for m in network if host in m]
        assert len(said) == 1, (host, network)
        if host.endswith(".invalid"):
            assert said[0].startswith(f"cannot resolve {host} (")
        else:
            assert said[0].startswith(f"{host} refused the connection (")
        assert said[0].endswith("; retrying, next report in 1 min")
    # Short single lines, no aiohttp reprs, no tracebacks, nothing else complaining.
    assert all(LINE.match(line) and len(line) < 200 for line in lines), text
    assert "ConnectionKey" not in text and "Traceback" not in text and "never retrieved" not in text
    warnings = [line for line in lines if " WARNING " in line or " ERROR " in line]
    assert len(warnings) == len(hosts) + 2, text  # the hosts, and the backfill's two groups

    # The backfill stopped after the newest day, once per venue group, naming the hosts.
    stopped = [m for m in err.matching("tapewatch.backfill") if "stopped at day 1 of" in m]
    assert sorted(stopped) == [
        f"backfill binance: cannot reach 127.0.0.1:{usdm_rest_port}, spot-api.invalid; stopped "
        "at day 1 of 91; retrying in 1 min, then up to every 30 min",
        f"backfill coinbase: cannot reach 127.0.0.1:{coinbase_rest_port}; stopped at day 1 of 91; "
        "retrying in 1 min, then up to every 30 min",
    ]
    # Requests: one per series of the newest day (2 assets: spot klines; perp klines, funding,
    # open interest; Coinbase candles) and one per poller (2 per perp: open interest and the
    # long/short ratio), nothing more.
    rest = report["rest"]
    assert {venue: rest[venue]["requests"] for venue in rest} == {
        "binance-spot": 2,
        "binance-usdm": 2 * 3 + 2 * 2,
        "coinbase": 2,
    }
    # Health names each venue as down, since when and why.
    venues = report["venues"]
    assert venues["binance-spot"]["error"].startswith("cannot resolve spot-stream.invalid")
    assert venues["binance-usdm"]["error"].startswith(f"127.0.0.1:{ws_port} refused")
    assert (
        venues["binance-usdm"]["sockets"] == 2 and venues["binance-usdm"]["sockets_connected"] == 0
    )
    assert venues["coinbase"]["error"].startswith("cannot resolve coinbase-ws.invalid")
    assert all(v["since_ms"] is not None and v["rest_reachable"] is False for v in venues.values())
    assert all(
        rest[v]["reachable"] is False and rest[v]["last_error"] and rest[v]["since_ms"]
        for v in rest
    )
