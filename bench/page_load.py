"""The chart page with 90 days x 3 assets of one-minute history: store size, and load time in a
real browser.

    .venv/bin/python bench/page_load.py [--runs 3] [--days 90] [--assets BTC,ETH,SOL]

Fills a signal history store (monitor/signal_store.py) in a temporary directory with synthetic
minutes (a random walk for the price, noise with missing stretches for every other column) and
a regime change every ~10 hours per asset, reports its size on disk, then serves the page from
it (monitor/web.py on an aiohttp listener, as the daemon does) and opens it in Chromium
(Debian's, through Playwright) for each asset and range. "load" is the browser's own clock,
from the start of navigation to the page saying it is ready (every chart drawn:
``window.tapewatch.readyAt``); "history" is the server side of the same request alone (the
store's read and downsampling, on its thread). Stops by itself.

Then the charting library on its own: one 100,000-point series drawn by the vendored uPlot,
and by Chart.js too when ``--chartjs FILE`` names its ``chart.umd.min.js`` (not a dependency:
a comparison for the choice, e.g. from ``npm pack chart.js``).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from _support import free_port, machine_line
from playwright.async_api import async_playwright

from monitor.defaults import default_config
from monitor.http_server import HttpServer
from monitor.series import COLUMNS, ROW_DTYPE, Sample
from monitor.signal_store import SignalStore
from monitor.web import CHARTED, MAX_POINTS, RANGES, STATIC, LiveFeed, add_routes, history
from streams.units import DAY_MS, MINUTE_MS

RULES = [rule.name for rule in default_config(env={}).regimes]  # the shipped rules


def fill(store: SignalStore, assets: list[str], days: int, end_ms: int) -> int:
    rng = np.random.default_rng(1)
    n = days * 1440
    minutes = end_ms - MINUTE_MS * np.arange(n)[::-1]
    for k, asset in enumerate(assets):
        rows = rng.normal(size=(n, len(COLUMNS))).astype(ROW_DTYPE)
        rows[rng.random((n, len(COLUMNS))) < 0.02] = np.nan
        walk = np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
        rows[:, COLUMNS.index("price")] = 60_000 / (k + 1) * walk
        for start in range(0, n, 50_000):  # in batches, as a daemon's minutes would come
            stop = min(n, start + 50_000)
            store.add_samples([Sample(asset, int(minutes[i]), rows[i]) for i in range(start, stop)])
        previous = None
        for i in range(0, n, 600):
            regime = "neutral" if (i // 600) % 2 == 0 else RULES[(i // 1200) % len(RULES)]
            since = int(minutes[i])
            payload = {"asset": asset, "regime": regime, "previous": previous, "since": since}
            store.add_change(asset, since, regime, orjson.dumps({**payload, "reasons": []}))
            previous = regime
    store.flush()
    return n * len(assets)


DRAW_UPLOT = """(() => {
  const n = 100000, x = new Float64Array(n), y = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    x[i] = 1.7e9 + 60 * i;
    y[i] = Math.sin(i / 500) + Math.random() * 0.1;
  }
  const el = document.createElement("div");
  document.body.append(el);
  const t0 = performance.now();
  new uPlot({width: 1200, height: 300, series: [{}, {stroke: "blue"}]}, [x, y], el);
  return performance.now() - t0;
})()"""
DRAW_CHARTJS = """(() => {
  const n = 100000, pts = new Array(n);
  for (let i = 0; i < n; i++) {
    pts[i] = {x: 1.7e12 + 60000 * i, y: Math.sin(i / 500) + Math.random() * 0.1};
  }
  const c = document.createElement("canvas");
  c.width = 1200;
  c.height = 300;
  document.body.append(c);
  const t0 = performance.now();
  new Chart(c, {type: "line", data: {datasets: [{data: pts, pointRadius: 0, borderWidth: 1}]},
    options: {animation: false, responsive: false, parsing: false, normalized: true,
              scales: {x: {type: "linear"}}}});
  return performance.now() - t0;
})()"""


async def draw_100k(browser: Any, chartjs: Path | None) -> None:
    """ms to draw one 100,000-point line, median of 5, per library."""
    libraries = [("uPlot 1.6.32", STATIC / "uPlot.iife.min.js", DRAW_UPLOT)]
    if chartjs is not None:
        libraries.append((f"Chart.js ({chartjs.name})", chartjs, DRAW_CHARTJS))
    for name, script, draw in libraries:
        times = []
        for _ in range(5):
            page = await browser.new_page()
            await page.add_script_tag(content=Path(str(script)).read_text())
            times.append(await page.evaluate(draw))
            await page.close()
        size = Path(str(script)).stat().st_size / 1024
        shown = ", ".join(f"{t:.1f}" for t in times)
        median = statistics.median(times)
        print(f"{name}: {size:.0f} KB; a 100,000-point line drawn in {median:.1f} ms ({shown})")


def disk_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 2**20


async def measure(store: SignalStore, assets: list[str], runs: int, chartjs: Path | None) -> None:
    live = LiveFeed()
    server = HttpServer("127.0.0.1", free_port())
    add_routes(server.app, store, assets, RULES, live)
    await server.start()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("page_load.py needs Chromium: apt-get install chromium")
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            print(f"{'asset':6} {'range':6} {'rows':>6} {'load ms (runs)':>28} {'history ms':>12}")
            for span in RANGES:
                for asset in assets:
                    loads = []
                    for _ in range(runs):
                        page = await browser.new_page(viewport={"width": 1400, "height": 1800})
                        await page.goto(f"http://{server.address}/?asset={asset}&range={span}")
                        await page.wait_for_function("window.tapewatch.ready", timeout=60_000)
                        loads.append(await page.evaluate("window.tapewatch.readyAt"))
                        points = await page.evaluate("window.tapewatch.panels")
                        await page.close()
                    t0 = time.perf_counter()
                    data = history(store, asset, RANGES[span])
                    server_ms = (time.perf_counter() - t0) * 1000
                    assert len(data["t"]) <= MAX_POINTS and any(points.values())
                    shown = ", ".join(f"{x:.0f}" for x in loads)
                    print(
                        f"{asset:6} {span:6} {len(data['t']):>6} "
                        f"{statistics.median(loads):>8.0f} ({shown:>16}) {server_ms:>12.1f}"
                    )
            await draw_100k(browser, chartjs)
            await browser.close()
    finally:
        await server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="page loads per asset and range [3]")
    ap.add_argument("--days", type=int, default=90, help="days of minutes per asset [90]")
    ap.add_argument("--assets", default="BTC,ETH,SOL", help="assets [BTC,ETH,SOL]")
    ap.add_argument("--chartjs", type=Path, help="Chart.js's chart.umd.min.js, to compare")
    args = ap.parse_args()
    assets = args.assets.split(",")
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="tapewatch-page-") as tmp:
        path = Path(tmp) / "bench.signals.sqlite"
        store = SignalStore(path, retention_ms=args.days * DAY_MS)
        end = (time.time_ns() // 1_000_000) // MINUTE_MS * MINUTE_MS
        t0 = time.perf_counter()
        rows = fill(store, assets, args.days, end)
        print(
            f"store: {rows:,} minutes ({args.days} days x {len(assets)} assets, {len(COLUMNS)} "
            f"columns, {len(CHARTED)} charted) written in {time.perf_counter() - t0:.1f} s; "
            f"{disk_mb(path):.1f} MB on disk"
        )
        asyncio.run(measure(store, assets, args.runs, args.chartjs))
        store.close()


if __name__ == "__main__":
    main()
