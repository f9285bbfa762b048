"""The ``tour`` scenario through the daemon and a real Mosquitto: which regimes are entered.

    .venv/bin/python bench/tour.py [--speed 40] [--assets BTC,ETH] [--margin 30] [--pace]
                                   [--trace]

What ``tapewatch simulate --scenario tour --speed 40`` with ``tapewatch run`` on the config it
writes does, in three processes on loopback: the simulator (not paced, as ``simulate`` runs it;
``--pace``: its event clock waits while the daemon is more than 2,000 frames behind, as in the
tests) in a child process, a Mosquitto of the bench's own on a free port, and the real
``Daemon`` in this process under uvloop, with the start-up backfill of the simulator's history,
as the written config asks. A ``mosquitto_sub`` records every ``regime`` message. The run ends
when the daemon's event time has passed the tour's end, or at the latest when the tour would be
over at the nominal speed plus ``--margin`` wall seconds (three times that with ``--pace``).

It prints, per asset, the regimes entered in order; the daemon's ``queue dropped``; the largest
frame-queue depth seen; socket reconnects and guard rejections; how often the engine marked a
trade venue silent, and how far each venue's newest trade was behind the publish boundary at
each snapshot; which events crossed the boundaries; and, per signal the five rules read, how
many snapshots had it missing (null): a null in a rule's condition keeps that rule out. It
wraps, in this process only, the pipeline's ``feed_event`` and ``fill_history`` and each
asset's ``_mark_silences``. This is a measurement, not a test: on a 2-core machine its outcome
depends on the load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import uvloop
import yaml
from _support import Mosquitto, SimulatorProcess, cpu_seconds, machine_line

from monitor.config import config_from_dict, deep_merge
from monitor.daemon import Daemon
from monitor.messages import OutMessage
from simulator.scenarios import TOUR, TOUR_GAP_MS, tour_schedule

PREFIX = "tour/v1"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--speed", type=float, default=40.0, help="simulator speed [40]")
    parser.add_argument("--assets", default="BTC,ETH", help="simulated assets [BTC,ETH]")
    parser.add_argument("--seed", type=int, default=1, help="simulator seed [1]")
    parser.add_argument(
        "--trace", action="store_true", help="print the queue and each venue's lag every second"
    )
    parser.add_argument(
        "--margin", type=float, default=30.0, help="wall seconds allowed past the tour's end [30]"
    )
    parser.add_argument(
        "--pace", action="store_true", help="hold the simulator's clock for a slow daemon"
    )
    return parser.parse_args()


class SignalNulls:
    """Counts, per signal a rule reads, the snapshots in which it was missing (through the
    pipeline's ``feed_event``: the messages it returns, in this process only)."""

    def __init__(self, daemon: Daemon) -> None:
        self.watched = {c.signal for rule in daemon.config.regimes for c in rule.all}
        self.snapshots = 0
        self.nulls: Counter[str] = Counter()
        self.max_queue = 0
        pipeline, queue = daemon.pipeline, daemon.queue
        feed_event = pipeline.feed_event

        def counted(event: Any, now: int | None = None) -> list[OutMessage]:
            out = feed_event(event, now)
            self.max_queue = max(self.max_queue, len(queue))
            if out:
                self.tickers[f"{type(event).__name__}/{getattr(event, 'venue', '?')}"] += 1
            for msg in out:
                if msg.topic.endswith("/signals"):
                    self.snapshots += 1
                    values = msg.payload.get("signals", {})
                    for name in self.watched:
                        # ``x_z`` conditions read the z-score of signal ``x``.
                        base = name[:-2] if name.endswith("_z") and name not in values else None
                        entry = values.get(base or name) or {}
                        if entry.get("z" if base else "value") is None:
                            self.nulls[name] += 1
            return out

        pipeline.feed_event = counted  # type: ignore[method-assign]

        # Silences: a venue's trade socket unheard for ``silence_timeout`` of event time, its
        # windows marked missing from then on (signals/engine.py ``_mark_silences``).
        self.silences: Counter[str] = Counter()
        self.tickers: Counter[str] = Counter()  # the kind of event that crossed a boundary
        # venue -> at each snapshot, event ms since its trade socket was last heard
        self.unheard: dict[str, list[int]] = defaultdict(list)
        for state in pipeline.engine.assets.values():
            mark = state._mark_silences

            def marked(boundary_ms: int, state: Any = state, mark: Any = mark) -> None:
                for venue, heard in state.heard_ms.items():
                    self.unheard[venue].append(boundary_ms - heard)
                before = dict(state._silence_marked)
                mark(boundary_ms)
                for venue, at in state._silence_marked.items():
                    if before.get(venue) != at:
                        self.silences[f"{state.asset}/{venue}"] += 1

            state._mark_silences = marked

        # Time the consumer spends on each start-up history item (the backfill's rounds).
        self.history_ms: list[float] = []
        fill = pipeline.fill_history

        def timed_fill(*args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            fill(*args, **kwargs)
            self.history_ms.append((time.perf_counter() - start) * 1000)

        pipeline.fill_history = timed_fill  # type: ignore[method-assign]


_last_cpu: list[float] = []


def trace(daemon: Daemon, pid: int) -> None:
    """One line: wall s, daemon CPU over the last second, queue depth, and for the first asset
    each venue's newest trade event time behind the engine's newest boundary (event s)."""
    cpu = cpu_seconds(pid)
    used = cpu - _last_cpu[-1] if _last_cpu else 0.0
    _last_cpu.append(cpu)
    engine = daemon.pipeline.engine
    state = next(iter(engine.assets.values()))
    boundary = engine._last_boundary or 0
    lags = " ".join(f"{v} {(boundary - t) / 1000:6.0f}" for v, t in sorted(state.heard_ms.items()))
    print(f"{time.monotonic():9.1f} cpu {used:4.0%} queue {len(daemon.queue):5d} behind: {lags}")


async def run_until(daemon: Daemon, end_ms: int, deadline: float, traced: bool) -> str:
    """Wait until the daemon's event time passes ``end_ms`` ("event time") or the monotonic
    clock passes ``deadline`` ("wall time"); which one came first."""
    engine = daemon.pipeline.engine
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(1.0, left))
        if traced:
            trace(daemon, os.getpid())
        if (engine._last_boundary or 0) >= end_ms:
            return "event time"
    return "wall time"


async def main() -> None:
    args = parse_args()
    assets = args.assets.split(",")
    tour_ms = tour_schedule()[-1][2] + TOUR_GAP_MS
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="tapewatch-tour-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work)
        sim: SimulatorProcess | None = None
        sub: subprocess.Popen[str] | None = None
        try:
            sim = SimulatorProcess(
                work, args.speed, assets, scenario="tour", seed=args.seed, pace=args.pace
            )
            over = {
                "mqtt": {"url": broker.url, "prefix": PREFIX, "broker": "external"},
                "state": {"dir": str(work / "state")},
                "log_level": "warning",
            }
            data = deep_merge(yaml.safe_load(sim.config.read_text()), over)
            config = config_from_dict(data, env={})
            mosquitto_sub = shutil.which("mosquitto_sub")
            if mosquitto_sub is None:
                raise SystemExit("mosquitto_sub is not installed")
            sub = subprocess.Popen(
                [
                    mosquitto_sub,
                    "-p",
                    str(broker.port),
                    "-q",
                    "1",
                    "-v",
                    "-t",
                    f"{PREFIX}/+/regime",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            daemon = Daemon(config)
            nulls = SignalNulls(daemon)
            pids = {"daemon": os.getpid(), "simulator": sim.proc.pid}
            cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
            stop = asyncio.Event()
            started = time.monotonic()
            # The simulator's clock starts with the daemon's first request, a moment from now.
            tour_end_ms = int(time.time() * 1000) + tour_ms
            task = asyncio.create_task(daemon.run(stop))
            # The tour's event time at `speed`, the backfill before it, and a margin.
            wall_cap = (tour_ms / 1000 / args.speed + args.margin) * (3 if args.pace else 1)
            ended = await run_until(daemon, tour_end_ms, started + wall_cap, args.trace)
            wall = time.monotonic() - started
            cpu = {k: (cpu_seconds(p) - cpu0[k]) / wall for k, p in pids.items()}
            stop.set()
            await asyncio.wait_for(task, 30)
        finally:
            if sub is not None:
                sub.terminate()
            if sim is not None:
                sim.stop()
            broker.stop()
        lines = sub.communicate()[0].splitlines() if sub is not None else []
    entered: dict[str, list[str]] = {a: [] for a in assets}
    for line in lines:
        topic, _, payload = line.partition(" ")
        asset = topic.split("/")[-2]
        regime = json.loads(payload)["regime"]
        if asset in entered and (not entered[asset] or entered[asset][-1] != regime):
            entered[asset].append(regime)
    print(
        f"tour at {args.speed:g}x{' paced' if args.pace else ''}, {args.assets}, seed "
        f"{args.seed}: {wall:.0f} s wall, ended by {ended}; CPU, share of one core: "
        + ", ".join(f"{k} {v:.0%}" for k, v in cpu.items())
    )
    print(
        f"queue dropped {daemon.queue.dropped}; largest frame-queue depth seen "
        f"{nulls.max_queue} (of {config.collector.queue_size})"
    )
    for asset, regimes in entered.items():
        got = [r for r in TOUR if r in regimes]
        print(f"{asset}: {len(got)} of {len(TOUR)} tour regimes entered: {' → '.join(regimes)}")
    links = ", ".join(
        f"{name} {s.frames} frames/{s.reconnects} reconnects/{s.stalls} stalls"
        for name, s in sorted(daemon.health.streams.items())
    )
    print(f"sockets: {links}")
    report = daemon.pipeline.health_report(int(time.time() * 1000))
    print(f"rejected: {report['rejected']}; malformed: {report['malformed']}")
    print(f"trades: {report['trades']}")
    print(f"silences marked (a trade venue unheard past silence_timeout): {dict(nulls.silences)}")
    for venue, gaps in sorted(nulls.unheard.items()):
        g = sorted(gaps)
        print(
            f"  {venue}: event ms since last heard at a snapshot: p50 {g[len(g) // 2]}, "
            f"p90 {g[len(g) * 9 // 10]}, max {g[-1]}"
        )
    print(f"events that crossed a publish boundary: {dict(nulls.tickers)}")
    history = sorted(nulls.history_ms)
    spent = (
        f"median {history[len(history) // 2]:.0f}, max {history[-1]:.0f}, sum {sum(history):.0f}"
        if history
        else "-"
    )
    print(f"start-up history items: {len(history)}, consumer ms each: {spent}")
    print(f"signals missing, of {nulls.snapshots} snapshots (all assets, the whole run):")
    for name in sorted({*nulls.watched, *nulls.nulls}):
        print(f"  {name:<36}{nulls.nulls[name]:>8}")


if __name__ == "__main__":
    uvloop.run(main())
