"""The chart page's server side against a real aiohttp listener and store, and the static
report opened in a real browser (Chromium from the Debian packages, driven by Playwright).

The page against a daemon running the simulator's tour is in tests/test_web_e2e.py."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest

from monitor.http_server import HttpServer
from monitor.series import COLUMNS, ROW_DTYPE, ChartItems, Sample
from monitor.signal_store import SignalStore
from monitor.web import CHARTED, LIVE_QUEUE, MAX_POINTS, PANELS, RANGES, LiveFeed, add_routes
from streams.units import DAY_MS, MINUTE_MS
from tests.conftest import DATA, REPO, free_port
from tests.test_signal_store import assert_runs_hold_their_extremes

CROSS_TAPE = DATA / "sim-cross-venue-btc-160s.tape.jsonl.zst"
RULES = ["deleveraging_cascade", "seller_dominance"]
BASE = 1_790_000_000_000 // DAY_MS * DAY_MS


def chromium() -> str:
    """Debian's Chromium; .ci/run installs it (a missing browser fails, never skips)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "the browser tests need Chromium: apt-get install chromium"
    return path


def row(**values: float) -> np.ndarray:
    out = np.full(len(COLUMNS), np.nan, dtype=ROW_DTYPE)
    for name, value in values.items():
        out[COLUMNS.index(name)] = value
    return out


def change(asset: str, since: int, regime: str, previous: str | None) -> dict[str, Any]:
    return {
        "id": f"s:{asset}:{since}",
        "type": "regime_change",
        "asset": asset,
        "regime": regime,
        "previous": previous,
        "since": since,
        "description": f"{regime} for the test",
        "reasons": [{"signal": "taker_imbalance_z", "value": -2.5, "op": "<", "threshold": -2.0}],
        "ts_event": since,
    }


@pytest.fixture
def store(tmp_path: Path) -> SignalStore:
    """Two days of BTC minutes (price = minute index) and three regime changes."""
    s = SignalStore(tmp_path / "signals.sqlite", retention_ms=90 * DAY_MS)
    minutes = BASE + MINUTE_MS * np.arange(2 * 1440)
    s.add_samples(
        [
            Sample("BTC", int(m), row(price=float(i), taker_imbalance_z=(i % 50) / 10 - 2.5))
            for i, m in enumerate(minutes)
        ]
    )
    for since, regime, previous in (
        (BASE, "neutral", None),
        (BASE + 30 * 3_600_000, "seller_dominance", "neutral"),
        (BASE + 40 * 3_600_000, "neutral", "seller_dominance"),
    ):
        s.add_change("BTC", since, regime, orjson.dumps(change("BTC", since, regime, previous)))
    s.flush()
    return s


@pytest.fixture
async def served(store: SignalStore) -> AsyncIterator[tuple[str, LiveFeed]]:
    live = LiveFeed()
    server = HttpServer("127.0.0.1", free_port())
    add_routes(server.app, store, ["BTC", "ETH"], RULES, live)
    await server.start()
    yield f"http://{server.address}", live
    await server.stop()
    store.close()


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as resp:
        return resp.status, await resp.json()


async def test_assets_lists_the_page_s_assets_regimes_panels_and_ranges(
    served: tuple[str, LiveFeed], http: aiohttp.ClientSession
) -> None:
    base, _ = served
    status, meta = await get_json(http, f"{base}/api/assets")
    assert status == 200
    assert meta["assets"] == ["BTC", "ETH"]
    assert meta["regimes"] == [*RULES, "neutral"]
    assert [p["key"] for p in meta["panels"]] == [p.key for p in PANELS]
    assert meta["ranges"] == list(RANGES) and meta["history"] is True


async def test_history_holds_the_range_s_minutes_and_the_regime_it_opens_in(
    served: tuple[str, LiveFeed], http: aiohttp.ClientSession
) -> None:
    base, _ = served
    status, data = await get_json(http, f"{base}/api/history?asset=BTC&range=6h")
    assert status == 200
    end = BASE + (2 * 1440 - 1) * MINUTE_MS  # the newest minute held, not the wall clock
    assert (data["start"], data["end"]) == (end - 6 * 3_600_000, end)
    assert data["t"] == list(range(data["start"], end + 1, MINUTE_MS))  # 361 rows: no downsampling
    first = (data["start"] - BASE) // MINUTE_MS
    assert data["values"]["price"] == [float(first + i) for i in range(len(data["t"]))]
    assert data["values"]["funding_rate"] == [None] * len(data["t"])  # missing stays missing
    assert set(data["values"]) == set(CHARTED)
    # The regime in force at the start (neutral since hour 40), nothing after it.
    assert [c["regime"] for c in data["changes"]] == ["neutral"]

    status, data = await get_json(http, f"{base}/api/history?asset=BTC&range=7d")
    assert data["minutes"] == 2 * 1440 and len(data["t"]) <= MAX_POINTS
    # Downsampled by runs, each keeping its extremes: the first and last prices survive.
    assert data["values"]["price"][0] == 0.0 and max(data["values"]["price"]) == 2 * 1440 - 1
    assert [c["regime"] for c in data["changes"]] == ["neutral", "seller_dominance", "neutral"]

    status, data = await get_json(http, f"{base}/api/history?asset=ETH&range=24h")
    assert status == 200 and data["t"] == [] and data["changes"] == []


async def test_a_change_newer_than_the_newest_minute_is_in_the_range(
    served: tuple[str, LiveFeed], store: SignalStore, http: aiohttp.ClientSession
) -> None:
    base, _ = served
    newest = BASE + (2 * 1440 - 1) * MINUTE_MS
    since = newest + 90_000  # entered after the last closed minute
    store.add_change(
        "BTC",
        since,
        "seller_dominance",
        orjson.dumps(change("BTC", since, "seller_dominance", "neutral")),
    )
    status, data = await get_json(http, f"{base}/api/history?asset=BTC&range=6h")
    assert status == 200
    assert data["end"] == since and data["t"][-1] == newest
    assert [c["regime"] for c in data["changes"]] == ["neutral", "seller_dominance"]


async def test_the_90_day_view_is_each_run_s_extremes_with_its_spike_and_gaps(
    served: tuple[str, LiveFeed], store: SignalStore, http: aiohttp.ClientSession
) -> None:
    """90 days of ETH minutes as the page asks for them: each pair of rows sent is the minimum
    and maximum of its run of the minutes written (numpy over them), a one-minute spike
    included; minutes never written and values missing stay gaps."""
    base, _ = served
    n = 90 * 1440
    minutes = BASE - 60 * DAY_MS + MINUTE_MS * np.arange(n)
    rng = np.random.default_rng(3)
    rows = np.full((n, len(COLUMNS)), np.nan, dtype=ROW_DTYPE)
    rows[:, COLUMNS.index("price")] = 3_000 + np.cumsum(rng.normal(size=n))
    rows[:, COLUMNS.index("liquidations_usd_long")] = rng.random(n) * 1e4
    rows[77_777, COLUMNS.index("liquidations_usd_long")] = 5e8  # one minute of liquidations
    rows[:, COLUMNS.index("funding_rate")] = rng.normal(size=n) * 1e-4
    rows[100_000:104_000, COLUMNS.index("funding_rate")] = np.nan  # no funding for 3 days
    held = np.ones(n, dtype=bool)
    held[30_030:31_000] = False  # the daemon was down for 16 hours
    store.add_history("ETH", minutes[held], rows[held])

    status, data = await get_json(http, f"{base}/api/history?asset=ETH&range=90d")
    assert status == 200
    assert (data["start"], data["end"]) == (minutes[0], minutes[-1])
    assert data["minutes"] == held.sum() and len(data["t"]) == MAX_POINTS
    names = ["price", "liquidations_usd_long", "funding_rate", "depth_usd_1pct_bid"]
    columns = {name: rows[held, COLUMNS.index(name)] for name in names}
    assert_runs_hold_their_extremes(data, minutes[held], columns)
    assert max(data["values"]["liquidations_usd_long"]) == 5e8
    assert not set(data["t"]) & set(minutes[~held].tolist())
    assert set(data["values"]["depth_usd_1pct_bid"]) == {None}  # never recorded: never 0


@pytest.mark.parametrize(
    ("query", "status", "says"),
    [
        ("asset=XRP&range=24h", 404, "no asset 'XRP'"),
        ("asset=BTC&range=1y", 400, "no range '1y'"),
        ("range=24h", 404, "configured: BTC, ETH"),
    ],
)
async def test_history_refuses_what_it_does_not_have_with_a_reason(
    served: tuple[str, LiveFeed], http: aiohttp.ClientSession, query: str, status: int, says: str
) -> None:
    base, _ = served
    got, body = await get_json(http, f"{base}/api/history?{query}")
    assert got == status and says in body["error"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/", 200),
        ("/static/app.js", 200),
        ("/static/uPlot.iife.min.js", 200),
        ("/static/uPlot.LICENSE", 404),  # not a served type
        ("/static/..%2Fweb.py", 404),
        ("/static/.hidden.js", 404),
        ("/static/missing.js", 404),
    ],
)
async def test_static_files_are_served_from_the_package_and_nothing_else(
    served: tuple[str, LiveFeed], http: aiohttp.ClientSession, path: str, status: int
) -> None:
    base, _ = served
    async with http.get(f"{base}{path}") as resp:
        assert resp.status == status
        if status == 200:
            body = await resp.read()
            name = "index.html" if path == "/" else path.rsplit("/", 1)[1]
            assert body == (REPO / "monitor" / "web_static" / name).read_bytes()


async def test_live_sends_samples_and_changes_to_an_open_page(
    served: tuple[str, LiveFeed], http: aiohttp.ClientSession
) -> None:
    base, live = served
    async with http.get(f"{base}/api/live") as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert (await resp.content.readuntil(b"\n\n")).startswith(b": tapewatch live")
        assert live.watching == 1
        minute = BASE + 2 * DAY_MS
        moved = change("BTC", minute, "seller_dominance", "neutral")
        items = ChartItems([Sample("BTC", minute, row(price=42.5))], [(None, moved)], [])  # type: ignore[list-item]
        live.push(items)
        event, data = (await resp.content.readuntil(b"\n\n")).split(b"\n", 1)
        assert event == b"event: sample"
        sample = orjson.loads(data.removeprefix(b"data: "))
        assert (sample["asset"], sample["minute"]) == ("BTC", minute)
        assert sample["values"]["price"] == 42.5 and sample["values"]["funding_rate"] is None
        event, data = (await resp.content.readuntil(b"\n\n")).split(b"\n", 1)
        assert event == b"event: regime"
        assert orjson.loads(data.removeprefix(b"data: ")) == moved
    # The page went away: its queue goes too, once the handler's next write finds the
    # connection closed.
    async with asyncio.timeout(10):
        while live.watching:
            live.push(ChartItems([Sample("BTC", BASE, row(price=1.0))], [], []))
            await asyncio.sleep(0.01)  # a poll of the condition, bounded by the timeout


def test_a_page_that_does_not_read_loses_its_oldest_events_not_the_daemon_s_time() -> None:
    live = LiveFeed()
    queue: asyncio.Queue[bytes] = asyncio.Queue(LIVE_QUEUE)
    live._clients.add(queue)
    for i in range(LIVE_QUEUE + 10):
        live.push(ChartItems([Sample("BTC", i * MINUTE_MS, row(price=float(i)))], [], []))
    assert queue.qsize() == LIVE_QUEUE and live.dropped == 10
    oldest = orjson.loads(queue.get_nowait().split(b"data: ", 1)[1])
    assert oldest["minute"] == 10 * MINUTE_MS


# -- the static report, in a real browser ---------------------------------------------------
def test_report_is_one_self_contained_page_that_charts_the_tape(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    out = tmp_path / "report.html"
    done = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "report", str(CROSS_TAPE), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"written to {out}" in done.stderr
    html = out.read_text()
    assert "window.TAPEWATCH_REPORT" in html and 'src="/static' not in html  # nothing to fetch
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 1600})
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(out.as_uri())
        page.wait_for_function("window.tapewatch.ready", timeout=30_000)
        state = page.evaluate("window.tapewatch")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert requests == [out.as_uri()]  # offline: the page asks for nothing else
    assert state["asset"] == "BTC" and state["range"] == "all"
    # The tape's three minutes of BTC: price and the book panels hold data; its regime
    # (neutral throughout) spans the chart.
    assert [b["regime"] for b in state["bands"]] == ["neutral"]
    assert state["panels"]["depth"] > 0 and state["panels"]["book_imbalance"] > 0
    assert state["panels"]["imbalance"] == 0  # no taker data in this tape: nothing is drawn


def test_report_of_a_tape_without_the_configured_symbols_says_so(tmp_path: Path) -> None:
    tape = DATA / "binance-usdm-2021-07-22-alts.tape.jsonl.zst"
    done = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "report", str(tape), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith(
        "tapewatch report: the tape(s) hold none of the configured symbols"
    )
    assert not (tmp_path / "r").exists()
