"""The simulator's own cost: its CPU with a bare client reading what the daemon reads.

    .venv/bin/python bench/simulator_cpu.py [--speed 40] [--seconds 60] [--assets BTC,ETH]

The simulator (``tour`` scenario, not paced) in a child process, as ``tour.py`` runs it, and in
this process four websockets subscribed to the daemon's streams (Binance spot aggTrade and
depth; USDⓈ-M aggTrade, markPrice@1s and forceOrder on /market, depth on /public; Coinbase
heartbeats, market_trades with USDT-USD, level2), counting frames and nothing else. It prints
the simulator's CPU (share of one core) and the frames per second delivered per socket: below
what the market makes at that speed, the simulator has fallen behind its clock.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import websockets
import yaml
from _support import SimulatorProcess, cpu_seconds, machine_line


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--speed", type=float, default=40.0, help="simulator speed [40]")
    parser.add_argument("--seconds", type=float, default=60.0, help="wall seconds measured [60]")
    parser.add_argument("--assets", default="BTC,ETH", help="simulated assets [BTC,ETH]")
    return parser.parse_args()


def sockets(venues: dict[str, Any], assets: list[str]) -> dict[str, tuple[str, list[bytes]]]:
    """Name -> (URL, subscribe messages) of the daemon's four sockets."""
    syms = [f"{a.lower()}usdt" for a in assets]

    def combined(base: str, kinds: tuple[str, ...]) -> str:
        return f"{base}/stream?streams=" + "/".join(f"{s}@{k}" for s in syms for k in kinds)

    products = [f"{a}-USD" for a in assets]
    coinbase = [
        {"type": "subscribe", "channel": "heartbeats"},
        {"type": "subscribe", "channel": "market_trades", "product_ids": [*products, "USDT-USD"]},
        {"type": "subscribe", "channel": "level2", "product_ids": products},
    ]
    usdm = venues["binance_usdm"]
    return {
        "spot": (combined(venues["binance_spot"]["ws"], ("aggTrade", "depth@100ms")), []),
        "market": (
            combined(usdm["market_ws"], ("aggTrade", "markPrice@1s", "forceOrder")),
            [],
        ),
        "public": (combined(usdm["public_ws"], ("depth@100ms",)), []),
        "coinbase": (venues["coinbase"]["ws"], [orjson.dumps(m) for m in coinbase]),
    }


async def read(name: str, url: str, subscribe: list[bytes], counts: Counter[str]) -> None:
    # The daemon's client offers permessage-deflate too (the websockets default).
    async with websockets.connect(url, max_size=None) as ws:
        for message in subscribe:
            await ws.send(message.decode())
        async for _ in ws:
            counts[name] += 1


async def main() -> None:
    args = parse_args()
    assets = args.assets.split(",")
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="tapewatch-sim-") as tmp:
        sim = SimulatorProcess(Path(tmp), args.speed, assets, scenario="tour", seed=1)
        try:
            venues = yaml.safe_load(sim.config.read_text())["venues"]
            counts: Counter[str] = Counter()
            cpu0, start = cpu_seconds(sim.proc.pid), time.monotonic()
            readers = [
                asyncio.create_task(read(name, url, subscribe, counts))
                for name, (url, subscribe) in sockets(venues, assets).items()
            ]
            await asyncio.sleep(args.seconds)
            wall = time.monotonic() - start
            cpu = (cpu_seconds(sim.proc.pid) - cpu0) / wall
            for task in readers:
                task.cancel()
        finally:
            sim.stop()
    rates = ", ".join(f"{name} {n / wall:,.0f}" for name, n in sorted(counts.items()))
    print(
        f"simulator at {args.speed:g}x, {args.assets}, {wall:.0f} s: CPU {cpu:.0%} of a core; "
        f"frames/s {sum(counts.values()) / wall:,.0f} ({rates})"
    )


if __name__ == "__main__":
    asyncio.run(main())
