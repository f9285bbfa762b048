"""The chart page of a daemon running against the simulator's tour, in a real browser.

Simulator (real websockets and REST, the ``tour``: five seed narratives between calm
stretches, at 20x) → daemon with the shipped rules, the start-up backfill and ``http.listen``
→ real Mosquitto; Chromium (Debian's, driven by Playwright) opens the page once the tour has
entered all five regimes. Checked: each regime of the tour is shaded on the price chart, in the
tour's order; every panel holds data; a click on a shaded span shows that change's event; a
live update arrives while the page is open. Screenshots go to the test's directory, and to
``TAPEWATCH_SCREENSHOTS`` (a directory) when that is set.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright

from monitor.signal_store import SignalStore
from simulator.scenarios import BASELINE_MS, tour_schedule
from tests.conftest import Mosquitto, free_port
from tests.test_daemon import RunningDaemon, daemon_config
from tests.test_web import chromium

SPEED = 20.0  # as the narratives' end-to-end tests: passes with the other core busy
SEED = 7
TOUR = [name for name, _start, _end in tour_schedule()]
# Event time by which the tour's last regime must have been entered (its narrative ends then).
DEADLINE_MS = BASELINE_MS + tour_schedule()[-1][2] + 60_000
SAFETY_S = 900.0  # wall seconds: only a net against a hang (about 3 min on an idle machine)


def screenshot_dirs(tmp_path: Path) -> list[Path]:
    extra = os.environ.get("TAPEWATCH_SCREENSHOTS")
    return [tmp_path, *([Path(extra)] if extra else [])]


@pytest.mark.slow
@pytest.mark.timeout(1500)
async def test_the_page_charts_the_tour_and_updates_live(
    start_simulator: Any, mosquitto: Mosquitto, prefix: str, subscribe: Any, tmp_path: Path
) -> None:
    sim = await start_simulator(
        scenario="tour", speed=SPEED, seed=SEED, symbols={"BTCUSDT": 78_000.0}
    )
    port = free_port()
    config = daemon_config(
        sim,
        mosquitto.url,
        prefix,
        signals={"backfill": True},
        http={"listen": f"127.0.0.1:{port}"},
    )
    regime = f"{prefix}/BTC/regime"
    sub = await subscribe(regime, f"{prefix}/BTC/signals")  # signals: wake the wait per second
    running = RunningDaemon(config)

    def entered(s: Any) -> list[str]:
        return [p["regime"] for p in s.on(regime)]

    await sub.wait_for(
        lambda s: set(TOUR) <= set(entered(s)) or sim.elapsed_ms() > DEADLINE_MS, timeout=SAFETY_S
    )
    assert set(TOUR) <= set(entered(sub)), f"the tour entered {entered(sub)}"
    store = running.daemon.signal_store
    assert store is not None

    async def stored() -> set[str]:
        changes = await asyncio.wrap_future(store.run_soon(SignalStore.changes, "BTC", 0, 2**62))
        return {c["regime"] for c in changes}

    # The consumer hands a batch's changes to the store after the batch, the broker may have
    # them sooner: wait (bounded) until the store holds the tour's last change too.
    async with asyncio.timeout(60):
        while not set(TOUR) <= await stored():
            await asyncio.sleep(0.1)  # a poll of the condition, bounded by the timeout

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1400, "height": 1800})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.wait_for_function("window.tapewatch.ready", timeout=60_000)
        # The tour is an hour of event time after 7 days of backfilled calm: 6 h shows it.
        await page.click("#ranges button:text-is('6h')")
        await page.wait_for_function(
            "window.tapewatch.ready && window.tapewatch.range === '6h'", timeout=60_000
        )
        state = await page.evaluate("window.tapewatch")
        for directory in screenshot_dirs(tmp_path):
            directory.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(directory / "page-tour.png"), full_page=True)

        shaded = [b["regime"] for b in state["bands"] if b["regime"] != "neutral"]
        assert [r for r in dict.fromkeys(shaded) if r in TOUR] == TOUR, shaded
        empty = [key for key, points in state["panels"].items() if points == 0]
        assert not empty, f"panels without data: {empty}"

        # A click on seller_dominance's span shows its event.
        band = next(b for b in state["bands"] if b["regime"] == "seller_dominance")
        canvas = await page.locator("#price canvas").bounding_box()
        over = await page.locator("#price .u-over").bounding_box()
        assert canvas is not None and over is not None
        ratio = await page.evaluate("window.devicePixelRatio")
        x = canvas["x"] + (band["left"] + band["right"]) / 2 / ratio
        await page.mouse.move(x, over["y"] + 20)
        await page.mouse.click(x, over["y"] + 20)
        await page.wait_for_selector("#event:not([hidden])", timeout=10_000)
        shown = await page.evaluate("window.tapewatch.shown")
        assert shown["regime"] == "seller_dominance" and shown["previous"] == "neutral"
        assert shown["reasons"] and shown["id"].endswith(f":BTC:{shown['seq']}")

        # Live: the next closed minute (3 s of wall time at 20x) reaches the open page.
        updates = state["updates"]
        await page.wait_for_function(
            f"window.tapewatch.updates > {updates}", timeout=SAFETY_S * 1000
        )
        for directory in screenshot_dirs(tmp_path):
            await page.screenshot(path=str(directory / "page-tour-live.png"), full_page=False)
        await browser.close()
    await running.close()
    assert errors == []
