"""Memory with full 90-day baselines for three assets, and the checkpoint's save and load times.

    .venv/bin/python bench/memory.py [--assets BTC,ETH,SOL] [--live 75] [--first-start]

1. In this process: the daemon's pipeline (``Pipeline.for_session`` on config.yaml with the
   assets), every z-score baseline of every asset filled with 90 days of one-minute synthetic
   samples through ``Baseline.fill`` (the start-up backfill's entry point; with real history,
   ``liquidations_usd`` and ``depth_usd_1pct`` would stay empty until live data fills them: here
   they are full too, the steady state after 90 days of running) and the 8-day OI/price
   history through ``BucketWindow.fill``. Reports RSS, then times the checkpoint as the daemon
   writes it (``engine.checkpoint()`` + ``monitor.state.save_checkpoint``, fsync included) and
   reads it (``load_checkpoint`` + ``engine.restore``), and the minute close of every baseline
   (their moments are recomputed when a one-minute bucket closes).
2. ``--live S`` (default 75, so that the first periodic checkpoint save falls in): a child
   process runs the real ``Daemon`` on that checkpoint (it restores it at start) against the
   simulator (its own process, ``calm`` at 1x: about 250 frames/s for three assets) and a
   Mosquitto of its own for S seconds, and reports its RSS.
3. ``--first-start``: instead of 2, the daemon starts without a checkpoint and backfills 90 days
   from the simulator (about 3 minutes, Coinbase candles are rate-limited); reports peak RSS.

RSS is ``VmRSS`` of /proc/self/status, peak ``VmHWM``; ``RssAnon`` is the process's own heap
(Python objects and numpy arrays), ``RssFile`` the mapped code of the interpreter and libraries.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from _support import Mosquitto, SimulatorProcess, fill_synthetic

from monitor.config import Config, config_from_dict, deep_merge
from monitor.health import Health
from monitor.pipeline import Pipeline
from monitor.state import load_checkpoint, save_checkpoint
from streams.units import MINUTE_MS

REPO = Path(__file__).resolve().parent.parent
INSTANCE = "bench"
RSS_BUDGET_MB = 200.0
CHECKPOINT_BUDGET_S = 1.0


def memory() -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def show(label: str, mem: dict[str, float]) -> None:
    print(
        f"  {label:<44} RSS {mem['VmRSS']:6.1f} MB (anon {mem['RssAnon']:5.1f}, "
        f"file {mem['RssFile']:5.1f}), peak {mem['VmHWM']:6.1f} MB"
    )


def engine_config(
    assets: list[str], state_dir: Path, extra: dict[str, Any] | None = None
) -> Config:
    data = yaml.safe_load((REPO / "config.yaml").read_text())
    over = {
        "instance": INSTANCE,
        "state": {"dir": str(state_dir)},
        "signals": {"backfill": False},
    }
    data = deep_merge(deep_merge(data, over), extra or {})
    data["assets"] = {
        a: {"binance_spot": f"{a}USDT", "binance_usdm": f"{a}USDT", "coinbase": f"{a}-USD"}
        for a in assets
    }
    return config_from_dict(data, env={})


def minute_closes(pipeline: Pipeline, end_ms: int, minutes: int = 5) -> list[float]:
    """ms for one minute close of every baseline (what the first publish tick of a minute
    does): ``observe`` in a new minute closes the old one and recomputes the moments."""
    baselines = [b for s in pipeline.engine.assets.values() for b in s.baselines.values()]
    for b in baselines:
        b.observe(end_ms, 0.5)
    times = []
    for i in range(1, minutes + 1):
        t0 = time.perf_counter()
        for b in baselines:
            b.observe(end_ms + i * MINUTE_MS, 0.5)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def timed(fn: Any, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def seconds(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):.3f} s, min {min(values):.3f}, "
        f"max {max(values):.3f} ({len(values)} runs)"
    )


def engine_phase(assets: list[str], state_dir: Path) -> Path:
    print("1. the pipeline alone, in this process")
    show("after imports", memory())
    config = engine_config(assets, state_dir)
    pipeline = Pipeline.for_session(config, "bench", "0", 0, Health())
    show(f"pipeline for {len(assets)} assets, baselines empty", memory())
    end_ms = time.time_ns() // 1_000_000 // MINUTE_MS * MINUTE_MS
    t0 = time.perf_counter()
    added = fill_synthetic(pipeline, end_ms)
    fill_s = time.perf_counter() - t0
    n_obs = {b.n_obs for s in pipeline.engine.assets.values() for b in s.baselines.values()}
    count = sum(len(s.baselines) for s in pipeline.engine.assets.values())
    print(f"  filled {count} baselines with {added:,} samples in {fill_s:.1f} s (n_obs {n_obs})")
    show("baselines full", memory())
    arrays = pipeline.engine.checkpoint()
    raw = sum(a.nbytes for a in arrays.values())
    print(f"  checkpoint: {len(arrays)} arrays, {raw / 2**20:.1f} MB of numpy data")
    closes = minute_closes(pipeline, end_ms)
    print(
        f"  a minute close of all {count} baselines: median {statistics.median(closes):.1f} ms "
        f"(min {min(closes):.1f}, max {max(closes):.1f})"
    )

    path = state_dir / f"{INSTANCE}.npz"
    meta = {"instance": INSTANCE, "session": "bench", "saved_ms": end_ms}
    saves = timed(lambda: save_checkpoint(path, pipeline.engine.checkpoint(), meta), 5)
    size = path.stat().st_size
    print(f"  save (checkpoint() + write + fsync): {seconds(saves)}; file {size / 2**20:.1f} MB")
    loads = timed(lambda: load_checkpoint(path), 5)
    print(f"  load (read + parse): {seconds(loads)}")

    def restore() -> None:
        fresh = Pipeline.for_session(config, "bench", "0", 0, Health())
        skipped = fresh.engine.restore(load_checkpoint(path)[0])
        assert not skipped, skipped

    restores = timed(restore, 5)
    print(f"  load + restore into a fresh pipeline: {seconds(restores)}")
    worst = max(*saves, *restores)
    verdict = "met" if worst <= CHECKPOINT_BUDGET_S else "MISSED"
    print(f"  budget: checkpoint save/load ≤ {CHECKPOINT_BUDGET_S:g} s: {verdict}")
    return path


# -- the daemon, in a child process ----------------------------------------------------------
async def daemon_child(state_dir: Path, assets: list[str], run_s: float, first_start: bool) -> None:
    from monitor.daemon import Daemon

    report: dict[str, Any] = {"imported": memory()}
    broker = Mosquitto(state_dir)
    sim = SimulatorProcess(state_dir, 1.0, assets, scenario="calm")
    try:
        data = deep_merge(
            yaml.safe_load(sim.config.read_text()),
            {
                "instance": INSTANCE,
                "mqtt": {"url": broker.url, "prefix": "bench/v1", "broker": "external"},
                "state": {"dir": str(state_dir)},
                "signals": {"backfill": first_start},
                "log_level": "warning",
            },
        )
        daemon = Daemon(config_from_dict(data, env={}))
        report["restored"] = memory()
        report["n_obs"] = sorted(
            {b.n_obs for s in daemon.pipeline.engine.assets.values() for b in s.baselines.values()}
        )
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        t0 = time.monotonic()
        samples: list[tuple[float, float]] = []  # (seconds since the start, RSS MB)
        while True:
            await asyncio.sleep(1.0)
            samples.append((time.monotonic() - t0, memory()["VmRSS"]))
            backfilling = any(t.get_name() == "backfill" for t in daemon._tasks)
            if first_start and not backfilling and time.monotonic() - t0 > 5:
                break
            if not first_start and time.monotonic() - t0 >= run_s:
                break
        report["seconds"] = round(time.monotonic() - t0, 1)
        report["running"] = memory()
        interval = daemon.config.state.checkpoint_interval
        report["rss_samples"] = {
            "at 5 s": next((rss for t, rss in samples if t >= 5), samples[-1][1]),
            f"before the first checkpoint save ({interval:g} s)": max(
                (rss for t, rss in samples if t < interval), default=None
            ),
            "max": max(rss for _, rss in samples),
            "end": samples[-1][1],
        }
        report["frames_per_s"] = sum(daemon.health.frames.values()) / report["seconds"]
        report["n_obs_end"] = sorted(
            {b.n_obs for s in daemon.pipeline.engine.assets.values() for b in s.baselines.values()}
        )
        report["gc_objects"] = len(gc.get_objects())
        t1 = time.perf_counter()
        gc.collect()
        report["gc_full_ms"] = (time.perf_counter() - t1) * 1000
        stop.set()
        await asyncio.wait_for(task, 30)
    finally:
        sim.stop()
        broker.stop()
    print(json.dumps(report))


def daemon_phase(state_dir: Path, assets: list[str], run_s: float, first_start: bool) -> None:
    if first_start:
        print("3. the daemon's first start: no checkpoint, 90-day backfill from the simulator")
        (state_dir / f"{INSTANCE}.npz").unlink(missing_ok=True)
    else:
        print(f"2. the daemon on that checkpoint, {run_s:g} s of the simulator's calm at 1x")
    args = [sys.executable, __file__, "--child", str(state_dir), "--assets", ",".join(assets)]
    args += ["--live", str(run_s)] + (["--first-start"] if first_start else [])
    limit = 900 if first_start else run_s + 120
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=limit, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the daemon child failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    show("after imports (daemon, MQTT, simulator config)", r["imported"])
    show(f"daemon built, checkpoint restored (n_obs {r['n_obs']})", r["restored"])
    show(f"after {r['seconds']:g} s running, {r['frames_per_s']:,.0f} frames/s", r["running"])
    sampled = ", ".join(f"{k} {v:.1f}" for k, v in r["rss_samples"].items() if v is not None)
    print(f"  RSS sampled each second, MB: {sampled}")
    print(
        f"  n_obs at the end {r['n_obs_end']}; {r['gc_objects']:,} objects tracked by gc, "
        f"a full collection takes {r['gc_full_ms']:.0f} ms"
    )
    peak = r["running"]["VmHWM"]
    verdict = "met" if peak <= RSS_BUDGET_MB else "MISSED"
    print(f"  budget: RSS ≤ {RSS_BUDGET_MB:g} MB: {verdict} (peak {peak:.1f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--assets", default="BTC,ETH,SOL", help="comma-separated assets [BTC,ETH,SOL]"
    )
    parser.add_argument(
        "--live", type=float, default=75.0, help="seconds of the daemon, 0: none [75]"
    )
    parser.add_argument(
        "--first-start",
        action="store_true",
        help="instead of --live: a daemon without checkpoint backfills 90 days (peak RSS)",
    )
    parser.add_argument("--child", metavar="STATE_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    assets = args.assets.split(",")
    if args.child:
        import uvloop

        uvloop.run(daemon_child(Path(args.child), assets, args.live, args.first_start))
        return
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, numpy {np.__version__}"
    )
    with tempfile.TemporaryDirectory(prefix="tapewatch-memory-") as tmp:
        state_dir = Path(tmp)
        engine_phase(assets, state_dir)
        if args.live > 0 or args.first_start:
            daemon_phase(state_dir, assets, args.live, args.first_start)


if __name__ == "__main__":
    main()
