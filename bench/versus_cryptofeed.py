"""tapewatch and cryptofeed side by side on the same tapes, in one sitting.

    .venv/bin/python bench/versus_cryptofeed.py --harness HARNESS --python CF_PYTHON \\
        --data DIR [--rounds 3] [--tapes usdm,spot]

cryptofeed (3.0.1, the feed handler people would pick instead) is a benchmark peer, never a
dependency: it needs Python >= 3.13, so it runs in a venv of its own (``CF_PYTHON``), driven by
its replay harness (``HARNESS``, a script that is not part of this repository: it feeds each
recorded frame to cryptofeed's own feed handler, trades + L2 book only, ``CF_NO_TICKER=1``).
``DIR`` holds the full recordings (the same files the harness reads).

The two alternate, round by round, each round one run of each; the tables give each figure's
range over the rounds. tapewatch is measured by ``bench/pipeline.py`` (whole tape with snapshots
on, the shipped config). This host's speed drifts by up to ~1.8x within seconds, more than the
alternation evens out, so the frame kinds are also compared best round against best round (each
side at the fastest the machine let it run). Not a fair yardstick here: each side's multiple of
its orjson floor, since the same orjson parses these frames ~25 % slower under Python 3.13 than
under 3.11 (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _support import machine_line

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import measure  # a sibling script, not a package

TAPES = {
    "usdm": "binance-usdm-2024-07-18-btc-eth.tape.jsonl.zst",
    "spot": "binance-spot-2024-08-08-btc-eth.tape.jsonl.zst",
}


def cryptofeed_round(args: argparse.Namespace, tapes: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cf.json"
        subprocess.run(
            [
                *(args.python, args.harness, "--runs", "1", "--data", str(args.data)),
                *("--tapes", ",".join(tapes), "--json", str(out)),
            ],
            check=True,
            env={**os.environ, "CF_NO_TICKER": "1"},
            stdout=subprocess.DEVNULL,
        )
        result: dict[str, Any] = json.loads(out.read_text())["tapes"]
        return result


def span(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{lo:{fmt}}–{hi:{fmt}}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--harness", required=True, help="the cryptofeed replay harness")
    parser.add_argument("--python", required=True, help="the Python of the cryptofeed venv")
    parser.add_argument("--data", required=True, type=Path, help="the recordings' directory")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tapes", default="usdm,spot")
    args = parser.parse_args()
    tapes = args.tapes.split(",")
    ours: dict[str, list[dict[str, Any]]] = {t: [] for t in tapes}
    theirs: dict[str, list[dict[str, Any]]] = {t: [] for t in tapes}
    machine = machine_line()  # before the rounds: the load average is the idle host's
    for r in range(args.rounds):
        print(f"round {r + 1} of {args.rounds}", file=sys.stderr)
        cf = cryptofeed_round(args, tapes)
        for tape in tapes:
            theirs[tape].append(cf[tape]["variants"])
            ours[tape].append(measure(args.data / TAPES[tape], runs=1))
    print(machine)
    print(
        "| tape | orjson floor (Python 3.11) | tapewatch, whole tape with snapshots "
        "| cryptofeed as recorded | cryptofeed, `@trade` renamed `aggTrade` "
        "| tapewatch ÷ cryptofeed (as recorded) |"
    )
    print("|---|---|---|---|---|---|")
    for tape in tapes:
        floor = [m["floor_s"] for m in ours[tape]]
        tw = [m["whole_s"] for m in ours[tape]]
        cf = [v["as-recorded"]["cryptofeed"]["seconds"] for v in theirs[tape]]
        cf_agg = [v["trade->aggTrade"]["cryptofeed"]["seconds"] for v in theirs[tape]]
        ratios = [a / b for a, b in zip(tw, cf, strict=True)]
        print(
            f"| {tape} | {span(floor, '.2f')} s | {span(tw, '.2f')} s | {span(cf, '.2f')} s "
            f"| {span(cf_agg, '.2f')} s | {span(ratios, '.2f')} |"
        )
    print()
    print("| tape, frames | tapewatch k/s | cryptofeed k/s | ratio, round by round | best ÷ best |")
    print("|---|---|---|---|---|")
    for tape in tapes:
        for kind, variant in (("depth", "as-recorded"), ("trade", "trade->aggTrade")):
            tw = [m["kinds"][kind]["frames"] / m["kinds"][kind]["seconds"] for m in ours[tape]]
            cf = [v[variant]["cryptofeed"]["by_kind"][kind]["frames_per_s"] for v in theirs[tape]]
            ratios = [a / b for a, b in zip(tw, cf, strict=True)]
            print(
                f"| {tape}, {kind} | {span([x / 1000 for x in tw], '.1f')} "
                f"| {span([x / 1000 for x in cf], '.1f')} | {span(ratios, '.2f')} "
                f"| {max(tw) / max(cf):.2f} |"
            )


if __name__ == "__main__":
    main()
