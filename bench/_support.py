"""Shared by the benches: a Mosquitto of the bench's own on a free loopback port
(tests/conftest.py's helper, without pytest), the simulator in a child process (so that it has a
core of its own), CPU time of a process, and baselines filled with synthetic samples."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import numpy as np

from monitor.pipeline import Pipeline

REPO = Path(__file__).resolve().parent.parent


def machine_line() -> str:
    """What a bench prints first: the machine, how busy it was before the bench began, and
    how fast it runs Python now (VMs of one kind differed by 2x between sessions and within
    one night, so a figure is comparable only with its loop time)."""
    load = os.getloadavg()[0]
    return (
        f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"load average before: {load:.2f}; a bare loop of 10 M additions: {bare_loop_s():.2f} s"
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bare_loop_s() -> float:
    start = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """``mosquitto`` on 127.0.0.1:<free port>, no persistence; ``stop()`` ends it."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise SystemExit("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.port = free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
            "log_type information\n"  # its ' running' line is information
        )
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        # Ready when it says so; its log is read to the end, or a full pipe would block it.
        ready = threading.Event()
        threading.Thread(target=_watch, args=(self.proc.stderr, ready), daemon=True).start()
        if not ready.wait(10):
            self.stop()
            raise SystemExit("mosquitto did not start in 10 s")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def _watch(stream: IO[str], ready: threading.Event) -> None:
    for line in stream:
        if " running" in line:
            ready.set()


SIMULATOR = """
import os
import sys

# Before any import starts a thread (numpy's): threads inherit the policy and the CPUs.
if "idle" in sys.argv[8:]:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
for arg in sys.argv[8:]:
    if arg.startswith("cpu="):
        os.sched_setaffinity(0, {int(arg[4:])})

import uvloop
from simulator.server import Simulator, serve_forever

import simulator.server as server

speed, seed, scenario, symbols, config, tick = sys.argv[1:7]
if tick:  # the wall time between two advances of the market (frames go out in bursts)
    server.GENERATE_EVERY_S = float(tick)
prices = {"BTC": 78_000.0, "ETH": 2_500.0, "SOL": 180.0, "XRP": 2.5}
sim = Simulator(
    port=0,
    scenario=scenario,
    speed=float(speed),
    seed=int(seed),
    symbols={f"{a}USDT": prices.get(a, 100.0) for a in symbols.split(",")},
    pace="pace" in sys.argv[8:],
)
uvloop.run(serve_forever(sim, config, sys.argv[7]))
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steal_seconds() -> float:
    """CPU time the hypervisor gave to others while our CPUs wanted it, all CPUs together
    (Linux /proc/stat; 0 on bare metal). A VM's neighbours show up here, not in our load."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


class SimulatorProcess:
    """``simulator.server.Simulator`` in a child process; ``config`` is the config it
    wrote (config.yaml pointed at it, ``Simulator.config_for``)."""

    def __init__(
        self,
        workdir: Path,
        speed: float,
        assets: list[str],
        scenario: str = "sell_wave",
        seed: int = 3,
        tick: float | None = None,
        pace: bool = False,
        idle: bool = False,
        cpu: int | None = None,
    ) -> None:
        """``tick``: seconds between two advances of the simulated market, each sending its
        frames at once (None: the simulator's own, 50 ms); ``pace``: the event clock waits
        for a client that falls behind (``Simulator(pace=True)``) instead of cutting it off;
        ``idle``: the simulator runs under Linux's SCHED_IDLE policy, so it gets a core only
        when nothing else wants one. It stands in for exchanges that run on other machines:
        a latency measurement must not count the time the daemon, runnable, waited for the
        core the simulator was on (``perf sched`` showed waits of 2.5-3.9 ms). ``cpu``: the
        one CPU it runs on (the latency bench keeps the daemon off it: on Linux 6.6 and later
        SCHED_IDLE alone still let it run a whole 4-ms tick while the daemon waited)."""
        self.config = workdir / "simulator.yaml"
        args = [str(speed), str(seed), scenario, ",".join(assets), str(self.config)]
        args.append("" if tick is None else str(tick))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SIMULATOR,
                *args,
                str(REPO / "config.yaml"),
                *(["pace"] if pace else []),
                *(["idle"] if idle else []),
                *([f"cpu={cpu}"] if cpu is not None else []),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening" not in line:
            self.stop()
            raise SystemExit(f"the simulator did not start: {line!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def fill_synthetic(pipeline: Pipeline, end_ms: int) -> int:
    """Every z-score baseline of every asset full (one N(0, 1) sample per bucket over its whole
    window, ending with the last bucket closed before ``end_ms``) through ``Baseline.fill``, the
    backfill's entry point, and the 8-day OI/price history full. Returns the samples added."""
    rng = np.random.default_rng(7)
    added = 0
    for state in pipeline.engine.assets.values():
        for baseline in state.baselines.values():
            slots = baseline.window.slots
            last = end_ms // baseline.bucket_ms - 1
            ts = np.arange(last - slots + 1, last + 1, dtype=np.int64) * baseline.bucket_ms
            added += baseline.fill(ts, rng.normal(0.0, 1.0, slots))
        history = state.history  # channels: OI sum, OI samples, price sum, price samples
        last = end_ms // history.bucket_ms - 1
        buckets = np.arange(last - history.slots + 1, last + 1, dtype=np.int64)
        n = history.slots
        rows = np.column_stack(
            [
                rng.uniform(5e9, 6e9, n),
                np.full(n, 30.0),
                rng.uniform(7e4, 8e4, n),
                np.full(n, 300.0),
            ]
        )
        history.fill(buckets, rows)
    return added


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.parse_args()  # --help prints the above
    parser.exit(
        2,
        "bench/_support.py is not a bench: run pipeline.py, latency.py, memory.py or "
        "backfill.py (each takes --help)\n",
    )
