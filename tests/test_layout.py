"""The architecture, enforced: pure modules import no I/O, and imports only point downwards."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

# Modules that must stay pure: data in, data out.
PURE = [
    "streams/events.py",
    "streams/frames.py",
    "streams/binance.py",
    "simulator/market.py",
    "simulator/hostile.py",
    "signals/window.py",
    "signals/baseline.py",
    "signals/engine.py",
    "signals/regimes.py",
    "signals/catalogue.py",
    "monitor/messages.py",
    "monitor/pipeline.py",
    "monitor/guards.py",
    "monitor/dashboard.py",
    "signals/backfill.py",
    "streams/venues/base.py",
    "streams/venues/_binance.py",
    "streams/venues/binance_spot.py",
    "streams/venues/binance_usdm.py",
    "streams/venues/coinbase.py",
    "monitor/history_tape.py",
    "monitor/delivery.py",
    "monitor/series.py",
    "monitor/discovery.py",
    "monitor/notify_message.py",
]
# Optional modules that join PURE once they exist.
PURE_WHEN_PRESENT = ["streams/book.py", "streams/coinbase.py", "streams/continuity.py"]
IO_MODULES = {
    "asyncio",
    "socket",
    "ssl",
    "websockets",
    "aiohttp",
    "aiomqtt",
    "amqtt",
    "subprocess",
    "sqlite3",
    "urllib.request",
    "http.client",
    "http.server",
    "requests",
    "time",
    "os",
    "shutil",
    "zstandard",
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def pure_modules() -> list[str]:
    return PURE + [p for p in PURE_WHEN_PRESENT if (REPO / p).exists()]


@pytest.mark.parametrize("module", pure_modules())
def test_pure_modules_import_no_io(module: str) -> None:
    found = {
        name
        for name in imports(REPO / module)
        if any(name == io or name.startswith(f"{io}.") for io in IO_MODULES)
    }
    assert not found, f"{module} imports I/O modules {found}"


@pytest.mark.parametrize("package", ["signals", "streams"])
def test_lower_layers_never_import_monitor(package: str) -> None:
    for path in (REPO / package).rglob("*.py"):
        bad = {n for n in imports(path) if n == "monitor" or n.startswith("monitor.")}
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def _simulator_imports(names: set[str]) -> set[str]:
    return {n for n in names if n == "simulator" or n.startswith("simulator.")}


# The simulator sits above monitor (it writes daemon configs with monitor.config): only the
# `simulate` and `demo` commands may reach it, and only when they run.
SIMULATOR_CLIENTS = {"monitor/cli.py"}


@pytest.mark.parametrize("package", ["streams", "signals", "monitor"])
def test_only_the_cli_imports_the_simulator(package: str) -> None:
    for path in (REPO / package).rglob("*.py"):
        if path.relative_to(REPO).as_posix() in SIMULATOR_CLIENTS:
            continue
        bad = _simulator_imports(imports(path))
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_the_cli_imports_the_simulator_lazily() -> None:
    """Inside functions, never at module level: importing the CLI does not load the simulator."""
    for client in SIMULATOR_CLIENTS:
        tree = ast.parse((REPO / client).read_text())
        top: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                top.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                top.add(node.module)
        assert not _simulator_imports(top), f"{client} imports the simulator at module level"


def test_pipeline_loads_no_socket_code() -> None:
    """Transitively, not just directly: the replay path must not need the network stack."""
    import subprocess
    import sys

    code = (
        "import sys, monitor.pipeline, monitor.replay; "
        "net = ('websockets', 'aiohttp', 'aiomqtt', 'amqtt'); "
        "print(sorted(m for m in net if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_signals_see_only_events_from_streams() -> None:
    for path in (REPO / "signals").rglob("*.py"):
        from_streams = {n for n in imports(path) if n.startswith("streams")}
        allowed = {"streams.events", "streams.units"}
        assert from_streams <= allowed, f"{path.relative_to(REPO)}: {from_streams}"
