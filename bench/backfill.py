"""The start-up backfill against the simulator: 90 days for three assets, over real HTTP.

    .venv/bin/python bench/backfill.py [--days 90] [--assets BTC,ETH,SOL]

Starts the simulator in this process on a free loopback port, runs
``monitor.history_fetch.HistoryFetch``
into a fresh engine with a throw-away state directory, and reports how long the Binance and the
Coinbase parts took, the requests made, the peak Binance weight seen, and the samples per
baseline. Then runs it again on the cache it left, to show what a restart fetches.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import time
from pathlib import Path

import yaml

from monitor.config import config_from_dict, deep_merge
from monitor.health import Health
from monitor.history_fetch import HistoryFetch
from monitor.pipeline import Pipeline
from signals.backfill import AssetHistory
from simulator.server import Simulator
from streams.events import BINANCE_SPOT, BINANCE_USDM
from streams.rest import RestClient

REPO = Path(__file__).resolve().parent.parent
PRICES = {"BTC": 78_000.0, "ETH": 2_500.0, "SOL": 180.0, "XRP": 2.5}


async def once(sim: Simulator, days: int, state: Path) -> tuple[HistoryFetch, dict[str, int]]:
    data = sim.config_for(yaml.safe_load((REPO / "config.yaml").read_text()))
    over = {
        "signals": {"flow_window": "1h", "baseline_window": f"{days}d"},
        "state": {"dir": str(state)},
    }
    config = config_from_dict(deep_merge(data, over), env={})
    engine = Pipeline.for_session(config, "bench", "0", 0, Health()).engine
    rest = {name: RestClient.for_venue(v) for name, v in config.adapters().items()}
    peak = {BINANCE_SPOT: 0, BINANCE_USDM: 0}

    async def watch() -> None:
        while True:
            for venue in peak:
                peak[venue] = max(peak[venue], rest[venue].used_weight or 0)
            await asyncio.sleep(0.05)

    def fill(asset: str, history: AssetHistory, final: bool) -> None:
        engine.assets[asset].backfill(history)

    backfill = HistoryFetch(config, fill, rest, time.time_ns() // 1_000_000)
    watcher = asyncio.create_task(watch())
    try:
        await backfill.run()
    finally:
        watcher.cancel()
        for client in rest.values():
            await client.close()
    return backfill, peak


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=90, help="days of history to fetch [90]")
    parser.add_argument(
        "--assets", default="BTC,ETH,SOL", help="comma-separated simulated assets [BTC,ETH,SOL]"
    )
    args = parser.parse_args()
    symbols = {f"{a}USDT": PRICES.get(a, 100.0) for a in args.assets.split(",")}
    sim = Simulator(port=0, symbols=symbols)
    await sim.start()
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for label in ("first start", "restart on the cache"):
                bf, peak = await once(sim, args.days, Path(tmp))
                p = bf.progress
                print(
                    f"{label}: {args.days} days x {len(symbols)} assets: "
                    f"binance {bf.finished.get('binance', 0):.1f} s, "
                    f"coinbase {bf.finished.get('coinbase', 0):.1f} s, total {bf.elapsed:.1f} s; "
                    f"{p.requests} requests, {p.rows:,} rows, {p.failed} failed; peak weight "
                    f"spot {peak[BINANCE_SPOT]}/6000, usdm {peak[BINANCE_USDM]}/2400"
                )
            for asset, added in bf.engine.assets.items():
                counts = ", ".join(f"{n} {b.n_obs}" for n, b in added.baselines.items())
                print(f"  {asset} n_obs: {counts}")
    finally:
        await sim.stop()


if __name__ == "__main__":
    asyncio.run(main())
