"""``tapewatch run --check`` against real endpoints: the simulator's websockets and REST, a real
Mosquitto, closed ports, and servers that misbehave (silent, or speaking something else). The
whole command runs as a subprocess, as an operator runs it; the bounds on time are checked
in-process with short timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve

from monitor import check
from monitor.config import Config, config_from_dict, deep_merge
from monitor.defaults import default_config_data
from simulator.server import Simulator
from tests.conftest import REPO, Mosquitto

RUN_TIMEOUT_S = 60  # the check bounds itself at 10 s; the rest is interpreter start-up
# Every line of a passing check of the simulator's config (all three venues), in order.
ALL_CHECKS = [
    "config",
    "state",
    "mqtt broker",
    "binance-spot websocket",
    "binance-spot REST",
    "binance-usdm/market websocket",
    "binance-usdm/public websocket",
    "binance-usdm REST",
    "coinbase websocket",
    "coinbase REST",
]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (nobody else takes it), not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def sim_data(sim: Simulator, mqtt_url: str, tmp: Path, **over: Any) -> dict[str, Any]:
    data = sim.config_for(yaml.safe_load((REPO / "config.yaml").read_text()))
    base = {
        "mqtt": {"url": mqtt_url, "broker": "external"},
        "state": {"dir": str(tmp / "state")},
    }
    return deep_merge(deep_merge(data, base), over)


def clean_env() -> dict[str, str]:
    """This environment without TAPEWATCH_* (a developer's broker URL must not leak in) and
    without systemd's variables (the journal format is tested in test_service.py)."""
    drop = ("TAPEWATCH_", "JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHDOG_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


async def run_check(tmp: Path, *args: str) -> tuple[int, list[str], str]:
    """``python -m monitor run --check ARGS``: (exit status, stdout lines, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "monitor",
        "run",
        "--check",
        *args,
        cwd=tmp,
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines(), err.decode()


def parse(lines: list[str]) -> dict[str, tuple[str, str]]:
    """check name -> (ok or FAIL, the whole line), from the report (summary line apart)."""
    found: dict[str, tuple[str, str]] = {}
    for line in lines[:-1]:
        verdict = line.split()[0]
        name = next(n for n in sorted(ALL_CHECKS, key=len, reverse=True) if f"  {n}  " in line)
        assert name not in found, lines
        found[name] = (verdict, line)
    return found


async def test_every_check_passes_against_the_simulator_and_mosquitto(
    start_simulator: Any, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    sim = await start_simulator()
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(sim_data(sim, mosquitto.url, tmp_path)))

    code, lines, stderr = await run_check(tmp_path, "--config", str(path))

    assert stderr == ""
    assert code == 0, lines
    found = parse(lines)
    assert list(found) == ALL_CHECKS, lines  # one line each, in this order
    assert all(verdict == "ok" for verdict, _ in found.values()), lines
    assert lines[-1] == "all ok"
    ws, http = sim.base_ws, sim.base_http
    # Where each line says it went: the configured endpoints, and the paths the venues serve.
    expected = {
        "config": str(path),
        "state": str(tmp_path / "state"),
        "mqtt broker": mosquitto.url,
        "binance-spot websocket": f"{ws}/spot/stream:",
        "binance-spot REST": f"{http}/spot/api/v3/klines:",
        "binance-usdm/market websocket": f"{ws}/market/stream:",
        "binance-usdm/public websocket": f"{ws}/public/stream:",
        "binance-usdm REST": f"{http}/fapi/v1/klines:",
        "coinbase websocket": f"{ws}/coinbase:",
        "coinbase REST": f"{http}/coinbase/api/v3/brokerage/market/products/BTC-USD/candles:",
    }
    for name, where in expected.items():
        assert where in found[name][1], (name, found[name][1])
    assert "market data after" in found["coinbase websocket"][1]
    assert "HTTP 200 for BTCUSDT" in found["binance-usdm REST"][1]


async def test_a_dead_broker_fails_its_line_and_the_check(
    start_simulator: Any, tmp_path: Path, closed_port: int
) -> None:
    sim = await start_simulator()
    dead = f"mqtt://127.0.0.1:{closed_port}"
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(sim_data(sim, dead, tmp_path)))

    code, lines, stderr = await run_check(tmp_path, "--config", str(path))

    assert code == 1
    assert "Traceback" not in stderr + "\n".join(lines)
    found = parse(lines)
    verdict, line = found["mqtt broker"]
    assert verdict == "FAIL" and dead in line and "nothing listens" in line, line
    assert [n for n, (v, _) in found.items() if v != "ok"] == ["mqtt broker"], lines
    assert lines[-1] == f"{len(ALL_CHECKS) - 1} ok, 1 failed"


async def test_a_venue_on_a_closed_port_fails_the_lines_that_use_it(
    start_simulator: Any, mosquitto: Mosquitto, tmp_path: Path, closed_port: int
) -> None:
    sim = await start_simulator()
    spot_ws = f"ws://127.0.0.1:{closed_port}/spot"
    coinbase_rest = f"http://127.0.0.1:{closed_port}/coinbase"
    venues = {"binance_spot": {"ws": spot_ws}, "coinbase": {"rest": coinbase_rest}}
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(sim_data(sim, mosquitto.url, tmp_path, venues=venues)))

    code, lines, stderr = await run_check(tmp_path, "--config", str(path))

    assert code == 1
    assert "Traceback" not in stderr + "\n".join(lines)
    found = parse(lines)
    failed = {n: line for n, (v, line) in found.items() if v == "FAIL"}
    assert sorted(failed) == ["binance-spot websocket", "coinbase REST"], lines
    assert spot_ws in failed["binance-spot websocket"]
    assert coinbase_rest in failed["coinbase REST"]
    for line in failed.values():
        assert f"127.0.0.1:{closed_port} refused the connection" in line, line
    assert lines[-1] == f"{len(ALL_CHECKS) - 2} ok, 2 failed"


@pytest.mark.parametrize(
    ("setup", "args", "fragments"),
    [
        (None, ("--config", "missing.yaml"), ("FAIL", "config", "missing.yaml", "no such file")),
        ("bad", ("--config", "bad.yaml"), ("FAIL", "config", "bad.yaml", "invalid", "mqtt.url")),
    ],
    ids=["missing", "invalid"],
)
async def test_a_config_that_cannot_work_is_one_fail_line(
    tmp_path: Path, setup: str | None, args: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    if setup == "bad":
        data = default_config_data()
        data["mqtt"]["url"] = "http://broker"
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    code, lines, stderr = await run_check(tmp_path, *args)
    assert code == 1 and stderr == ""
    assert len(lines) == 2 and lines[1] == "0 ok, 1 failed", lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


async def test_check_with_record_is_one_line_on_stderr(tmp_path: Path) -> None:
    code, lines, stderr = await run_check(tmp_path, "--record", "x.tape.jsonl.zst")
    assert code == 1 and lines == []
    assert stderr.count("\n") == 1 and "tapewatch run" in stderr and "--record" in stderr


# -- bounds and misbehaving endpoints, in-process -----------------------------------------------
def spot_only(ws: str, rest: str, mqtt_url: str) -> Config:
    """One asset on Binance spot alone, at ``ws``/``rest``: nothing else is contacted."""
    data = default_config_data()
    data["assets"] = {"BTC": {"binance_spot": "BTCUSDT"}}
    data["venues"] = {"binance_spot": {"ws": ws, "rest": rest}}
    data["mqtt"] = {**data["mqtt"], "url": mqtt_url, "broker": "external"}
    return config_from_dict(data, env={})


@contextlib.asynccontextmanager
async def tcp_server(handler: Any) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts, reads, never answers: a host that swallows the handshake."""
    with contextlib.suppress(Exception):
        await reader.read()
    writer.close()


@contextlib.asynccontextmanager
async def ws_server(send: list[str]) -> AsyncIterator[int]:
    """A websocket server that sends ``send`` on each connection, then nothing more."""

    async def handler(ws: ServerConnection) -> None:
        for text in send:
            await ws.send(text)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        yield next(iter(server.sockets)).getsockname()[1]


@contextlib.asynccontextmanager
async def http_server(body: str, content_type: str) -> AsyncIterator[int]:
    async def handle(_: web.Request) -> web.Response:
        return web.Response(text=body, content_type=content_type)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def test_each_check_is_bounded_by_its_timeout(mosquitto: Mosquitto) -> None:
    async with tcp_server(_silent) as silent, ws_server([]) as mute:
        config = spot_only(f"ws://127.0.0.1:{mute}", f"http://127.0.0.1:{silent}", mosquitto.url)
        started = time.monotonic()
        results = await check.run_checks(config, timeout=0.5, total=5.0)
        took = time.monotonic() - started
    by_name = {r.name: r for r in results}
    assert [r.name for r in results] == [
        "mqtt broker",
        "binance-spot websocket",
        "binance-spot REST",
    ]
    assert by_name["mqtt broker"].ok
    # A websocket that opens and says nothing (Binance's retired paths do that).
    ws = by_name["binance-spot websocket"]
    assert not ws.ok and ws.detail == "connected, no market data in 0.5 s", ws
    assert ws.url == f"ws://127.0.0.1:{mute}/stream"
    rest = by_name["binance-spot REST"]
    assert not rest.ok and "timed out after 0.5s" in rest.detail, rest
    assert rest.url == f"http://127.0.0.1:{silent}/api/v3/klines"
    assert took < 3.0, took  # each waited its 0.5 s, at the same time


async def test_all_checks_are_bounded_by_the_total(mosquitto: Mosquitto) -> None:
    async with tcp_server(_silent) as silent:
        config = spot_only(f"ws://127.0.0.1:{silent}", f"http://127.0.0.1:{silent}", mosquitto.url)
        started = time.monotonic()
        results = await check.run_checks(config, timeout=30.0, total=1.0)
        took = time.monotonic() - started
    assert took < 3.0, took
    by_name = {r.name: r for r in results}
    for name in ("binance-spot websocket", "binance-spot REST"):
        assert not by_name[name].ok
        assert by_name[name].detail == "no answer within 1 s (all checks)", by_name[name]


async def test_a_websocket_that_speaks_something_else_fails(mosquitto: Mosquitto) -> None:
    async with ws_server(["hello, I am not Binance"]) as port:
        config = spot_only(f"ws://127.0.0.1:{port}", "http://127.0.0.1:1", mosquitto.url)
        venue = config.adapters()["binance-spot"]
        sock = venue.sockets(["BTCUSDT"])[0]
        result = await check.websocket(venue, sock, 5.0)
    assert not result.ok
    assert result.detail.startswith("sends what binance-spot does not:"), result


async def test_a_rest_api_that_answers_something_else_fails(mosquitto: Mosquitto) -> None:
    """A base URL that reaches some web page (a proxy's login, a typo'd host): HTTP 200, and
    still no venue."""
    async with http_server("<html>Welcome</html>", "text/html") as port:
        config = spot_only("ws://127.0.0.1:1", f"http://127.0.0.1:{port}", mosquitto.url)
        venue = config.adapters()["binance-spot"]
        result = await check.rest(venue, "BTCUSDT", 5.0)
    assert not result.ok
    assert result.detail.startswith("answered, but not as binance-spot does:"), result


@pytest.mark.parametrize(
    ("mode", "env", "ok", "fragment"),
    [
        ("external", {}, False, "nothing listens (connection refused)"),
        ("auto", {}, True, "starts its embedded broker (broker: auto)"),
        ("auto", {"TAPEWATCH_MQTT_USERNAME": "u"}, False, "credentials are configured"),
        ("embedded", {}, True, "free: tapewatch run starts its embedded broker"),
    ],
)
async def test_the_broker_line_follows_the_broker_mode_on_a_free_port(
    closed_port: int, mode: str, env: dict[str, str], ok: bool, fragment: str
) -> None:
    """What the daemon would do there: ``auto`` on a free loopback port starts the embedded
    broker (ok), unless credentials say a secured broker belongs there."""
    data = default_config_data()
    data["mqtt"] = {**data["mqtt"], "url": f"mqtt://127.0.0.1:{closed_port}", "broker": mode}
    config = config_from_dict(data, env=env)
    result = await check.broker(config.mqtt, 5.0)
    assert result.ok is ok and fragment in result.detail, result


@pytest.mark.parametrize(("mode", "ok"), [("external", True), ("auto", True), ("embedded", False)])
async def test_the_broker_line_on_a_running_broker(
    mosquitto: Mosquitto, mode: str, ok: bool
) -> None:
    data = deep_merge(default_config_data(), {"mqtt": {"url": mosquitto.url, "broker": mode}})
    result = await check.broker(config_from_dict(data, env={}).mqtt, 5.0)
    expected = (
        "accepted the CONNECT"
        if ok
        else "something listens there already (broker: embedded cannot bind)"
    )
    assert result.ok is ok and result.detail == expected, result


def test_the_state_line(tmp_path: Path) -> None:
    data = default_config_data()
    data["state"] = {"dir": str(tmp_path / "a" / "b")}
    made = check.state_dir(config_from_dict(data, env={}))
    assert made.ok and made.detail == f"will be created in {tmp_path}, writable"
    (tmp_path / "ro").mkdir(mode=0o500)
    data["state"] = {"dir": str(tmp_path / "ro" / "state")}
    denied = check.state_dir(config_from_dict(data, env={}))
    if os.geteuid() == 0:  # root writes anywhere: the check says what the service would see
        assert denied.ok
    else:
        assert not denied.ok and "is not writable by uid" in denied.detail
