"""Replay of a long two-venue tape: what the per-second snapshots cost over days of event time.

    .venv/bin/python bench/long_replay.py [--hours 51] [--tape PATH]

Writes (once; kept at ``--tape``) a synthetic tape of Binance USDⓈ-M and spot for BTC and ETH
over ``--hours`` of event time, as the daemon records it: a markPrice frame per symbol each
second and a trade per venue and symbol every two seconds, prices on a random walk. Then
replays it with ``tapewatch replay``'s code (``monitor.replay.Replay``, the shipped config:
snapshots every second, Coinbase configured and silent) and reports the wall time, frames and
messages. The frames are few on purpose: over days, the fixed cost of each second (signals of
every asset, z-score baselines, regimes, messages) is what a long replay pays for.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from _support import machine_line

from monitor.config import load_config
from monitor.replay import Replay
from streams.events import BINANCE_SPOT, BINANCE_USDM
from streams.tape import TapeRecord, TapeWriter, read_tape
from streams.units import HOUR_MS, SECOND_MS

REPO = Path(__file__).resolve().parent.parent
START_MS = 1_721_260_800_000  # 2024-07-18 00:00 UTC
SYMBOLS = {"BTCUSDT": 64_000.0, "ETHUSDT": 3_400.0}


def _frame(stream: str, data: dict[str, object]) -> str:
    return orjson.dumps({"stream": stream, "data": data}).decode()


def write_tape(path: Path, hours: float) -> int:
    rng = random.Random(7)
    price = dict(SYMBOLS)
    trade_id = {(v, s): 1 for v in (BINANCE_USDM, BINANCE_SPOT) for s in SYMBOLS}
    n = 0
    with TapeWriter(path, note=f"bench/long_replay.py: {hours} h synthetic") as tape:
        for ts in range(START_MS, START_MS + round(hours * HOUR_MS), SECOND_MS):
            for symbol in SYMBOLS:
                price[symbol] *= 1 + rng.gauss(0, 2e-4)
                p = f"{price[symbol]:.2f}"
                mark = {"e": "markPriceUpdate", "E": ts, "s": symbol, "p": p, "i": p}
                mark |= {"r": "0.00010000", "T": ts - ts % (8 * HOUR_MS) + 8 * HOUR_MS}
                frames = [(BINANCE_USDM, _frame(f"{symbol.lower()}@markPrice@1s", mark))]
                if ts // SECOND_MS % 2 == 0:
                    for venue in (BINANCE_USDM, BINANCE_SPOT):
                        key = (venue, symbol)
                        trade = {"e": "trade", "E": ts, "T": ts, "s": symbol, "t": trade_id[key]}
                        trade |= {"p": p, "q": "0.0100", "m": rng.random() < 0.5}
                        trade_id[key] += 1
                        frames.append((venue, _frame(f"{symbol.lower()}@trade", trade)))
                for venue, msg in frames:
                    tape.write(TapeRecord(ts=(ts + 20) / 1000, src=venue, msg=msg))
                    n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hours", type=float, default=51.0)
    parser.add_argument("--tape", type=Path, default=Path("/tmp/tapewatch-long-replay.tape.zst"))
    args = parser.parse_args()
    if not args.tape.exists():
        t0 = time.perf_counter()
        n = write_tape(args.tape, args.hours)
        print(
            f"wrote {n:,} frames over {args.hours} h to {args.tape} in "
            f"{time.perf_counter() - t0:.1f} s"
        )
    config = load_config(REPO / "config.yaml")
    replay = Replay(config)
    span: dict[str, Any] = {"frames": 0, "first": None, "last": 0.0}

    def records() -> Iterator[TapeRecord]:
        for rec in read_tape(args.tape):
            span["frames"] += 1
            span["first"] = rec.ts if span["first"] is None else span["first"]
            span["last"] = rec.ts
            yield rec

    t0 = time.perf_counter()
    messages = sum(1 for _ in replay.messages(records()))
    wall = time.perf_counter() - t0
    frames, first, last = span["frames"], span["first"] or 0.0, span["last"]
    hours = (last - first) / 3600
    print(machine_line())
    print(
        f"replayed {frames:,} frames over {hours:.1f} h of event time in {wall:.1f} s "
        f"({messages:,} messages; {1000 * wall / (hours * 3600):.2f} ms per second of "
        f"event time, {len(config.assets)} assets)"
    )


if __name__ == "__main__":
    main()
