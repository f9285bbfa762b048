"""Throughput of the full pipeline on real frames, against the orjson-parse-only floor.

    .venv/bin/python bench/pipeline.py [TAPE ...]

Frames are loaded into memory first, so the figures exclude tape decompression. "floor" is
``orjson.loads`` on every frame; "pipeline" is parse → events → signals → regimes → messages
(the publisher is not involved). Reports frames/s for trade frames alone and for all frames.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from monitor.config import config_from_dict
from monitor.pipeline import Pipeline
from streams.tape import read_tape

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TAPE = REPO / "tests/data/binance-usdm-2024-07-18-btc-eth-90s.tape.jsonl.zst"


Frame = tuple[str, str | None, str, int]  # venue, REST url (None for a websocket frame), body, ms


def _load(paths: list[Path]) -> list[Frame]:
    return [(r.src, r.url, r.msg, round(r.ts * 1000)) for p in paths for r in read_tape(p)]


def _best_of(n: int, fn) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "tapes",
        nargs="*",
        type=Path,
        metavar="TAPE",
        help=f"tapes to load [{DEFAULT_TAPE.relative_to(REPO)}]",
    )
    paths = parser.parse_args().tapes or [DEFAULT_TAPE]
    frames = _load(paths)
    trades = [f for f in frames if '@trade"' in f[2][:40] or '@aggTrade"' in f[2][:40]]
    # The recorded depth snapshots (REST bodies) come with the depth frames, in tape order, so
    # the books sync and the diffs are applied to them as live.
    depth = [f for f in frames if f[1] is not None or "@depth" in f[2][:40]]
    data = yaml.safe_load((REPO / "config.yaml").read_text())
    config = config_from_dict(data, env={})
    # Snapshots cost a fixed amount per second of event time, not per frame: measure the
    # per-frame path alone with snapshots pushed out of the tape's span, and report both.
    data["signals"]["publish_interval"] = "1d"
    no_snapshots = config_from_dict(data, env={})

    def floor(batch: list[Frame]) -> None:
        for _, _, msg, _ in batch:
            orjson.loads(msg)

    def pipeline(batch: list[Frame], cfg: Any = config) -> float:
        p = Pipeline.for_session(cfg, "bench", "bench", 0)  # construction is not timed
        t0 = time.perf_counter()
        for src, url, msg, ts in batch:
            if url is None:
                p.feed_frame(src, msg, ts)
            else:
                p.feed_rest(src, url, msg, ts)
        return time.perf_counter() - t0

    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, Python {platform.python_version()}")
    span_s = (frames[-1][3] - frames[0][3]) / 1000
    for label, batch in (("trade", trades), ("depth", depth), ("all", frames)):
        t_floor = _best_of(5, lambda b=batch: floor(b))
        t_frames = min(pipeline(batch, no_snapshots) for _ in range(5))
        t_full = min(pipeline(batch) for _ in range(5))
        n = len(batch)
        print(
            f"{label:>5} frames {n:6d} | floor {n / t_floor:10,.0f}/s | per-frame path "
            f"{n / t_frames:10,.0f}/s ({t_frames / t_floor:4.1f}x floor) | with snapshots "
            f"{n / t_full:10,.0f}/s"
        )
    t_snap = min(pipeline(frames) for _ in range(3)) - min(
        pipeline(frames, no_snapshots) for _ in range(3)
    )
    print(
        f"snapshots: {1000 * t_snap / span_s:.2f} ms per second of event time "
        f"({len(config.assets)} assets, z-score baselines included)"
    )


if __name__ == "__main__":
    main()
