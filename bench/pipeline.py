"""Throughput of the full pipeline on real frames, against the orjson-parse-only floor.

    .venv/bin/python bench/pipeline.py [--runs 5] [--json OUT] [TAPE ...]

Frames are loaded into memory first, so the figures exclude tape decompression. "floor" is
``orjson.loads`` on every frame; "pipeline" is parse → books / trade continuity → signals →
regimes → messages (the publisher is not involved), with the shipped config. The recorded REST
depth snapshots are fed in tape order with the frames, so the books sync and every diff is
applied to a live book, as in the daemon.

Reported per tape, best of ``--runs``:
- whole tape: every record in order, snapshots every second (the shipped config);
- per-frame path: the same with snapshots pushed outside the tape's span;
- per kind: frames/s of each stream kind on the per-frame path, timed frame by frame (a
  ``perf_counter`` pair around each) in a whole-tape pass, as the cryptofeed comparison harness
  times its own (snapshots are pushed out: they would land in the frame that crosses a second),
  and that time as a multiple of the orjson floor of the same frames, the two timed block by
  block in turn (``run_by_kind``), so the multiple holds while the machine's speed drifts;
- snapshots: their cost per second of event time.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml
from _support import machine_line

from monitor.config import Config, config_from_dict
from monitor.pipeline import Pipeline
from streams.tape import read_tape

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TAPE = REPO / "tests/data/binance-usdm-2024-07-18-btc-eth-90s.tape.jsonl.zst"

Frame = tuple[str, str | None, str, int]  # venue, REST url (None for a websocket frame), body, ms


def load(paths: list[Path]) -> list[Frame]:
    return [(r.src, r.url, r.msg, round(r.ts * 1000)) for p in paths for r in read_tape(p)]


def kind_of(frame: Frame) -> str:
    """``trade``, ``depth``, ``bookTicker``, ... from a combined stream's name; ``rest``."""
    if frame[1] is not None:
        return "rest"
    msg = frame[2]
    if not msg.startswith('{"stream":"'):
        return "other"
    name = msg[11 : msg.find('"', 11)]
    return name.partition("@")[2].partition("@")[0] or "other"


def configs() -> tuple[Config, Config]:
    """The shipped config, and the same with snapshots pushed outside any tape's span."""
    data = yaml.safe_load((REPO / "config.yaml").read_text())
    shipped = config_from_dict(data, env={})
    data["signals"]["publish_interval"] = "1d"
    return shipped, config_from_dict(data, env={})


def run(frames: list[Frame], config: Config) -> float:
    """Seconds for every frame through a fresh pipeline (construction not timed)."""
    p = Pipeline.for_session(config, "bench", "bench", 0)
    feed_frame, feed_rest = p.feed_frame, p.feed_rest
    t0 = time.perf_counter()
    for src, url, msg, ts in frames:
        if url is None:
            feed_frame(src, msg, ts)
        else:
            feed_rest(src, url, msg, ts)
    return time.perf_counter() - t0


# Records per block: the pipeline and the orjson floor take turns block by block.
BLOCK = 2000


def run_by_kind(frames: list[Frame], config: Config) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per frame kind, each frame timed on its own, in one whole-tape pass; and the
    orjson floor of each kind's frames, timed after each block of ``BLOCK`` records on that
    block's frames. The pairing is the cryptofeed harness's: this host's speed drifts by up to
    ~1.8x within seconds, and a figure and its floor taken block by block see the same speed."""
    p = Pipeline.for_session(config, "bench", "bench", 0)
    kinds = [kind_of(f) for f in frames]
    spent: dict[str, float] = defaultdict(float)
    floors: dict[str, float] = defaultdict(float)
    clock, loads = time.perf_counter, orjson.loads
    for start in range(0, len(frames), BLOCK):
        block = list(zip(frames[start : start + BLOCK], kinds[start : start + BLOCK], strict=True))
        for (src, url, msg, ts), kind in block:
            t0 = clock()
            if url is None:
                p.feed_frame(src, msg, ts)
            else:
                p.feed_rest(src, url, msg, ts)
            spent[kind] += clock() - t0
        texts: dict[str, list[str]] = defaultdict(list)
        for (_, url, msg, _), kind in block:
            if url is None:
                texts[kind].append(msg)
        for kind, msgs in texts.items():
            t0 = clock()
            for msg in msgs:
                loads(msg)
            floors[kind] += clock() - t0
    return dict(spent), dict(floors)


def floor(frames: list[Frame]) -> float:
    t0 = time.perf_counter()
    for _, _, msg, _ in frames:
        orjson.loads(msg)
    return time.perf_counter() - t0


def best(runs: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(runs))


def measure(path: Path, runs: int) -> dict[str, Any]:
    frames = load([path])
    shipped, no_snapshots = configs()
    counts: dict[str, int] = defaultdict(int)
    for f in frames:
        counts[kind_of(f)] += 1
    whole = best(runs, lambda: run(frames, shipped))
    per_frame = best(runs, lambda: run(frames, no_snapshots))
    passes = [run_by_kind(frames, no_snapshots) for _ in range(runs)]
    kinds: dict[str, dict[str, float]] = {}
    for k, n in sorted(counts.items()):
        row = {"frames": n, "seconds": min(spent.get(k, 0.0) for spent, _ in passes)}
        if k != "rest":
            # The median over passes of each pass's time ÷ its paired floor.
            ratios = sorted(spent[k] / floors[k] for spent, floors in passes)
            row["x_floor"] = ratios[len(ratios) // 2]
        kinds[k] = row
    span_s = (frames[-1][3] - frames[0][3]) / 1000
    return {
        "tape": path.name,
        "frames": len(frames),
        "span_s": span_s,
        "floor_s": best(runs, lambda: floor(frames)),
        "whole_s": whole,
        "per_frame_path_s": per_frame,
        "snapshots_ms_per_s": 1000 * (whole - per_frame) / span_s,
        "kinds": kinds,
    }


def report(m: dict[str, Any]) -> str:
    n = m["frames"]
    lines = [
        f"{m['tape']}: {n:,} records over {m['span_s']:.0f} s",
        f"  whole tape, snapshots on: {m['whole_s']:.3f} s ({n / m['whole_s'] / 1000:.0f}k/s, "
        f"{m['whole_s'] / m['floor_s']:.1f}x the orjson floor of {m['floor_s']:.3f} s)",
        f"  per-frame path (no snapshots): {m['per_frame_path_s']:.3f} s; snapshots "
        f"{m['snapshots_ms_per_s']:.2f} ms per second of event time",
    ]
    for kind, k in m["kinds"].items():
        rate = k["frames"] / k["seconds"] / 1000 if k["seconds"] else float("inf")
        paired = f"  {k['x_floor']:5.2f}x its orjson floor (paired)" if "x_floor" in k else ""
        lines.append(f"    {kind:>11} {k['frames']:8,d} frames {rate:8.1f}k/s{paired}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "tapes",
        nargs="*",
        type=Path,
        metavar="TAPE",
        help=f"tapes to measure, each on its own [{DEFAULT_TAPE.relative_to(REPO)}]",
    )
    parser.add_argument("--runs", type=int, default=5, help="best of this many [5]")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    print(machine_line())
    results = []
    for path in args.tapes or [DEFAULT_TAPE]:
        results.append(measure(path, args.runs))
        print(report(results[-1]))
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
