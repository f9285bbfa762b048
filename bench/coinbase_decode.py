"""CPU time per Coinbase frame through ``CoinbaseDecoder.decode``: the msgspec fast path
against the strict path (orjson + ``events_from``, what the decoder did before the fast path).

    .venv/bin/python bench/coinbase_decode.py [--runs 7] [TAPE ...]

Frames are loaded into memory first (no tape decompression in the figures). Each run decodes
every frame of a kind in tape order with a fresh decoder, timed with ``time.process_time``
around the whole batch; runs of the two paths alternate, so a noisy neighbour hits both alike.
Reported: µs per frame, best and worst of the runs, per kind (snapshots and updates of
l2_data and market_trades).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import time
from collections.abc import Callable
from pathlib import Path

from streams import coinbase
from streams.events import COINBASE, Event
from streams.frames import SkippedFrame
from streams.tape import read_tape
from streams.venues.coinbase import CoinbaseDecoder

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TAPE = REPO / "tests/data/coinbase-2026-08-09-btc-eth.tape.jsonl.zst"


class StrictDecoder(CoinbaseDecoder):
    """The decoder as it was before the fast path: every frame through orjson."""

    def decode(self, raw: str | bytes, ts_recv: int) -> list[Event]:
        msg = coinbase.parse_envelope(raw)
        if self.sequence.observe(msg):
            self.frames_lost = True
        return coinbase.events_from(self.venue, msg, ts_recv)


def kind_of(raw: str) -> str:
    """``<channel> snapshot`` or ``<channel> update`` (a snapshot is the first batch of a
    subscription: one per product, far bigger than an update)."""
    channel = coinbase.channel_name(raw) or "other"
    if channel in ("l2_data", "market_trades"):
        part = "snapshot" if '"type":"snapshot"' in raw[:200] else "update"
        return f"{channel} {part}"
    return channel


def run(make: Callable[[str], CoinbaseDecoder], frames: list[str]) -> float:
    decoder = make(COINBASE)
    decode = decoder.decode
    start = time.process_time()
    for raw in frames:
        with contextlib.suppress(SkippedFrame):
            decode(raw, 0)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tapes", nargs="*", type=Path, default=[DEFAULT_TAPE])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    by_kind: dict[str, list[str]] = {}
    for path in args.tapes:
        for rec in read_tape(path):
            if rec.url is None and rec.ctl is None:
                by_kind.setdefault(kind_of(rec.msg), []).append(rec.msg)
    print(f"{platform.python_version()} {platform.machine()}, {args.runs} runs, µs per frame")
    print(f"{'kind':<23}{'frames':>7}  {'strict (before)':>19}  {'fast (after)':>19}  speed-up")
    kinds = ("l2_data snapshot", "l2_data update", "market_trades snapshot", "market_trades update")
    for kind in kinds:
        frames = by_kind.get(kind, [])
        if not frames:
            continue
        times: dict[str, list[float]] = {"strict": [], "fast": []}
        for _ in range(args.runs):  # interleaved: before, after, before, after, ...
            times["strict"].append(run(StrictDecoder, frames) / len(frames) * 1e6)
            times["fast"].append(run(CoinbaseDecoder, frames) / len(frames) * 1e6)
        s, f = sorted(times["strict"]), sorted(times["fast"])
        print(
            f"{kind:<23}{len(frames):>7}  {s[0]:>8.1f} – {s[-1]:>8.1f}  {f[0]:>8.1f} – "
            f"{f[-1]:>8.1f}  {s[0] / f[0]:>6.1f}×"
        )


if __name__ == "__main__":
    main()
