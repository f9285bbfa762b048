"""Local order books on real depth diffs: µs per diff through ``BookSync.on_diff``.

    .venv/bin/python bench/book.py [--runs 7] [--against FILE] [TAPE ...]
    # default: the 90 s USDⓈ-M and 60 s spot slices in tests/data

Every depth frame and REST depth snapshot of a Binance tape is read with the venues' own
decoders. Each run builds fresh ``BookSync``s, syncs them on the tape's events up to its last
snapshot (untimed), then times ``on_diff`` on every diff after it (continuity check, ladder
updates, crossed check: the daemon's per-frame book work without the parsing), each frame
decoded just before its diff is applied, untimed, with a ``perf_counter`` pair around each
``on_diff``.

Reported per implementation: µs a diff and ns a level, as the sum over the diffs of each one's
fastest run (a diff is the same work in every run, so its fastest run is its cost without the
other processes' interruptions: the steadiest figure on a shared machine), beside the fastest
and the median whole run; the fixed cost of a diff (``on_diff`` of a diff without levels, on
a synced book); the depth band the engine takes once a second (``depth_band(1.0)``) on the
largest book at the tape's end and on a synthetic book of 10,000 levels a side; and a
fingerprint of what it did (every ``SyncResult``, the best levels after every diff, a band
every 50 events, the counters and the books at the end).

``--against FILE`` loads another copy of ``streams/book.py`` (say ``git show
HEAD:streams/book.py > /tmp/book_head.py``) and runs it and the working tree's round by round,
interleaved, so both see the same machine: it prints the ratio and whether the fingerprints
are the same.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from _support import machine_line

import streams.book
from monitor.config import config_from_dict
from streams.events import DepthDiff, DepthSnapshot, Event
from streams.frames import SkippedFrame
from streams.tape import read_tape
from streams.venues import BY_NAME

REPO = Path(__file__).resolve().parent.parent

DEFAULT_TAPES = [
    REPO / "tests/data/binance-usdm-2024-07-18-btc-eth-90s.tape.jsonl.zst",
    REPO / "tests/data/binance-spot-2024-08-08-btc-eth-60s.tape.jsonl.zst",
]
BAND_PCT = 1.0  # monitor/pipeline.py's DEPTH_BAND_PCT


Decode = Callable[[str, int], list[Event]]


@dataclass
class Tape:
    name: str
    events: list[DepthDiff | DepthSnapshot]  # tape order, every symbol
    split: int  # events[:split] sync the books (untimed); events[split:] are diffs, timed
    frames: list[tuple[Decode, str, int]]  # the raw frame of each timed diff, and its decoder

    @property
    def timed(self) -> list[DepthDiff]:
        return self.events[self.split :]  # type: ignore[return-value]


def load(path: Path) -> Tape:
    # The venue adapters as the daemon builds them from the shipped config.
    config = config_from_dict(yaml.safe_load((REPO / "config.yaml").read_text()), env={})
    venues = config.adapters()
    decoders: dict[str, Decode] = {}
    events: list[DepthDiff | DepthSnapshot] = []
    frames: list[tuple[Decode, str, int]] = []
    for rec in read_tape(path):
        venue = venues.get(rec.src)
        if venue is None or rec.msg == "":
            continue
        ts = round(rec.ts * 1000)
        try:
            if rec.url is not None:
                if "/depth?" not in rec.url:
                    continue
                decoded = venue.parse_rest(rec.url, rec.msg, ts)
            else:
                if "@depth" not in rec.msg[:60]:
                    continue
                decode = decoders.setdefault(rec.src, venue.decoder().decode)
                decoded = decode(rec.msg, ts)
        except SkippedFrame:
            continue
        for e in decoded:
            if isinstance(e, DepthSnapshot):
                frames.clear()  # only the diffs after the last snapshot are timed
            elif isinstance(e, DepthDiff):
                frames.append((decode, rec.msg, ts))
            else:
                continue
            events.append(e)
    split = max(i for i, e in enumerate(events) if isinstance(e, DepthSnapshot)) + 1
    assert len(frames) == len(events) - split, "one diff per depth frame"
    return Tape(path.name, events, split, frames)


def new_syncs(impl: ModuleType, tape: Tape) -> dict[str, Any]:
    syncs = {}
    for e in tape.events:
        if e.symbol not in syncs:
            # The rule by name: another copy of the module has its own enum class.
            rule = impl.BookRule[BY_NAME[e.venue].book_rule.name]
            syncs[e.symbol] = impl.BookSync(e.venue, e.symbol, rule)
    return syncs


def feed(syncs: dict[str, Any], events: list[DepthDiff | DepthSnapshot]) -> list[Any]:
    return [
        syncs[e.symbol].on_diff(e) if isinstance(e, DepthDiff) else syncs[e.symbol].on_snapshot(e)
        for e in events
    ]


def time_diffs(impl: ModuleType, tape: Tape) -> list[float]:
    """Seconds in ``on_diff`` of each timed diff, on books synced by the untimed prefix.

    Each frame is decoded just before its diff is applied, untimed, and only ``on_diff`` is
    timed (a ``perf_counter`` pair around each): the diff is then fresh in the CPU cache, as in
    the daemon. Applying a list of diffs decoded beforehand (750,000 levels, 80 MB of tuples
    and floats) reads every level from memory and made a level look twice as dear."""
    syncs = new_syncs(impl, tape)
    feed(syncs, tape.events[: tape.split])
    assert all(sync.synced for sync in syncs.values()), "a symbol without a snapshot"
    on_diff = {symbol: sync.on_diff for symbol, sync in syncs.items()}
    clock = time.perf_counter
    spent = []
    for decode, msg, ts in tape.frames:
        (diff,) = decode(msg, ts)
        apply = on_diff[diff.symbol]
        t0 = clock()
        apply(diff)
        spent.append(clock() - t0)
    return spent


def clock_pair() -> float:
    """Seconds of one empty ``perf_counter`` pair, as ``time_diffs`` pays it per diff."""
    clock = time.perf_counter
    best = float("inf")
    for _ in range(5):
        spent = 0.0
        for _ in range(100_000):
            t0 = clock()
            spent += clock() - t0
        best = min(best, spent / 100_000)
    return best


def time_bands(impl: ModuleType, tape: Tape, repeat: int = 200) -> tuple[float, int]:
    """Best µs of one ``depth_band`` on the largest synced book, and its level count."""
    syncs = new_syncs(impl, tape)
    feed(syncs, tape.events)
    book = max((s.book for s in syncs.values()), key=len)
    return _best_band(book, repeat), len(book)


def synthetic_book(impl: ModuleType, levels: int = 10_000) -> object:
    """10,000 levels a side around 60,000, one tick apart, then churned (slots reused)."""
    rng = random.Random(1)
    book = impl.OrderBook()
    book.load(
        [(60_000 - 0.1 * (k + 1), rng.uniform(0.001, 5)) for k in range(levels)],
        [(60_000 + 0.1 * k, rng.uniform(0.001, 5)) for k in range(levels)],
    )
    for _ in range(levels):
        k = rng.randrange(levels)
        qty = 0.0 if rng.random() < 0.5 else rng.uniform(0.001, 5)
        book.apply_levels([(60_000 - 0.1 * (k + 1), qty)], [(60_000 + 0.1 * (k + 1), qty)])
    return book


def _best_band(book: object, repeat: int) -> float:
    best = float("inf")
    clock = time.perf_counter
    for _ in range(repeat):
        t0 = clock()
        book.depth_band(BAND_PCT)  # type: ignore[attr-defined]
        best = min(best, clock() - t0)
    return best * 1e6


def fixed_cost(impl: ModuleType, venue: str, diffs: int = 20_000) -> float:
    """µs of ``on_diff`` on a diff without levels, continuing a synced book's ids."""
    rule = impl.BookRule[BY_NAME[venue].book_rule.name]
    sync = impl.BookSync(venue, "BTCUSDT", rule)
    sync.on_snapshot(DepthSnapshot(venue, "BTCUSDT", 0, 0, 1000, ((1.0, 1.0),), ((2.0, 1.0),)))
    # USDⓈ-M: the first diff spans the snapshot's id, then each pu is the previous u; spot:
    # each U is the book's id + 1.
    chained = rule.name == "PREVIOUS_ID"
    batch = [
        DepthDiff(
            venue,
            "BTCUSDT",
            0,
            0,
            1000 + i + (not chained),
            1001 + i,
            1000 + i if chained else None,
            (),
            (),
        )
        for i in range(diffs)
    ]
    on_diff = sync.on_diff
    t0 = time.perf_counter()
    for diff in batch:
        on_diff(diff)
    spent = time.perf_counter() - t0
    assert sync.synced and sync.last_id == 1000 + diffs
    return 1e6 * spent / diffs


def fingerprint(impl: ModuleType, tape: Tape) -> str:
    """What the implementation did with the tape: every SyncResult, and after every diff the
    best levels; at the end the counters, the books and their bands."""
    syncs = new_syncs(impl, tape)
    h = hashlib.sha256()
    for i, e in enumerate(tape.events):
        sync = syncs[e.symbol]
        r = sync.on_diff(e) if isinstance(e, DepthDiff) else sync.on_snapshot(e)
        book = sync.book
        h.update(repr((r.applied, r.gap, r.needs_snapshot, r.reason)).encode())
        h.update(repr((book.best_bid(), book.best_ask(), sync.last_id)).encode())
        if i % 50 == 0:
            h.update(repr(book.depth_band(BAND_PCT)).encode())
    for symbol, sync in sorted(syncs.items()):
        book = sync.book
        h.update(repr((symbol, sync.counters(), sync.state.value)).encode())
        h.update(repr((book.levels("bid"), book.levels("ask"), book.depth_band(BAND_PCT))).encode())
    return h.hexdigest()[:16]


def describe(tape: Tape) -> str:
    diffs = tape.timed
    levels = [(p, q) for d in diffs for side in (d.bids, d.asks) for p, q in side]
    removals = sum(q == 0 for _, q in levels)
    per = sorted(len(d.bids) + len(d.asks) for d in diffs)
    return (
        f"{tape.name}: {len(diffs):,} timed diffs, {len(levels):,} levels "
        f"({len(levels) / len(diffs):.1f} a diff, p50 {per[len(per) // 2]}, "
        f"p90 {per[len(per) * 9 // 10]}), {100 * removals / len(levels):.0f} % removals"
    )


def load_impl(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"book_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("tapes", nargs="*", type=Path, default=DEFAULT_TAPES)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--against", type=Path, help="another copy of streams/book.py")
    args = parser.parse_args()

    impls = {"tree": streams.book}
    if args.against is not None:
        impls = {"against": load_impl(args.against), **impls}
    print(machine_line())
    print(f"an empty perf_counter pair, in every diff's figure: {1e6 * clock_pair():.2f} µs")
    for path in args.tapes:
        tape = load(path)
        print(describe(tape))
        venue = tape.timed[0].venue
        n = len(tape.timed)
        levels = sum(len(d.bids) + len(d.asks) for d in tape.timed)
        prints = {name: fingerprint(impl, tape) for name, impl in impls.items()}
        totals: dict[str, list[float]] = {name: [] for name in impls}
        fastest: dict[str, list[float]] = {}  # each diff's fastest run
        fixed: dict[str, float] = {}
        for _ in range(args.runs):  # interleaved: each round runs every implementation once
            for name, impl in impls.items():
                spent = time_diffs(impl, tape)
                totals[name].append(sum(spent))
                fastest[name] = list(map(min, fastest.get(name, spent), spent))
                fixed[name] = min(fixed.get(name, math.inf), fixed_cost(impl, venue))
        for name, impl in impls.items():
            per_diff = sum(fastest[name])
            band_us, band_levels = time_bands(impl, tape)
            synthetic_us = _best_band(synthetic_book(impl), 50)
            print(
                f"  {name:>7}: {1e6 * per_diff / n:5.2f} µs a diff, "
                f"{1e9 * per_diff / levels:3.0f} ns a level (whole runs: fastest "
                f"{1e6 * min(totals[name]) / n:5.2f}, median "
                f"{1e6 * statistics.median(totals[name]) / n:5.2f}); "
                f"a diff without levels {fixed[name]:4.2f} µs\n"
                f"           depth band {band_us:4.1f} µs on {band_levels:,} levels, "
                f"{synthetic_us:4.1f} µs on 20,000; behaviour {prints[name]}"
            )
        if args.against is not None:
            ratio = sum(fastest["tree"]) / sum(fastest["against"])
            rounds = [t / a for a, t in zip(totals["against"], totals["tree"], strict=True)]
            same = "the same" if len(set(prints.values())) == 1 else "DIFFERENT"
            print(
                f"  tree / against: {ratio:.3f} (whole runs, round by round: "
                f"{min(rounds):.2f}-{max(rounds):.2f}); behaviour {same}"
            )


if __name__ == "__main__":
    main()
