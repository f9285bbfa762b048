"""The chart page: regimes over time and the signals behind them, served on the HTTP listener
(``http.listen``) from the signal history store, and the same page as one self-contained file
for a replayed tape (``tapewatch report``).

Routes (all GET, JSON unless said otherwise):
- ``/``: the page (``web_static/index.html``); ``/static/<file>``: its script, styles and uPlot.
- ``/api/assets``: the assets, the regime names in rule order, the panels and the ranges.
- ``/api/history?asset=BTC&range=24h``: the minutes of the range (ending at the newest minute
  held: event time, so a simulator or a replay charts as well as a live daemon), downsampled to
  at most ``MAX_POINTS`` rows, and the regime changes in it (with the one in force at its start).
- ``/api/live``: Server-Sent Events while the page is open: ``sample`` (a closed minute's
  panel values) and ``regime`` (a change's events payload). One stream per page; each client
  has a bounded queue (oldest dropped), so a stalled page never holds the daemon back.

The page is static: the browser asks for one range at a time, then listens; nothing polls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from monitor.series import COLUMNS, ChartItems
from monitor.signal_store import SignalStore
from streams.units import DAY_MS, HOUR_MS

log = logging.getLogger("tapewatch.web")

RANGES: dict[str, int] = {"6h": 6 * HOUR_MS, "24h": DAY_MS, "7d": 7 * DAY_MS, "90d": 90 * DAY_MS}
DEFAULT_RANGE = "24h"
MAX_POINTS = 1500  # rows per response: about one per pixel of a wide chart
END_OF_TIME = 2**62  # ms: later than any event
LIVE_QUEUE = 256  # events waiting per page before the oldest are dropped
KEEPALIVE_S = 15.0  # an SSE comment this often, so proxies keep the stream open
STATIC = resources.files("monitor") / "web_static"
_CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}


@dataclass(frozen=True, slots=True)
class Panel:
    """One chart under the price: ``series`` on the left axis, ``z`` (if any) on the right one
    with its ±2 band."""

    key: str
    title: str
    series: tuple[str, ...]
    z: str | None = None


PANELS: tuple[Panel, ...] = (
    Panel("imbalance", "Taker imbalance, all venues", ("taker_imbalance",), "taker_imbalance_z"),
    Panel(
        "imbalance_venues",
        "Taker imbalance by venue",
        ("taker_imbalance_perp", "taker_imbalance_spot", "taker_imbalance_coinbase"),
    ),
    Panel("buy_sell", "Taker buy/sell ratio (perp)", ("taker_buy_sell_ratio",)),
    Panel(
        "volume_ratio",
        "Perp/spot volume ratio",
        ("perp_spot_volume_ratio",),
        "perp_spot_volume_ratio_z",
    ),
    Panel("premium", "Coinbase premium, %", ("coinbase_premium_pct",), "coinbase_premium_pct_z"),
    Panel("funding", "Funding rate", ("funding_rate",), "funding_rate_z"),
    Panel("oi", "Open interest, USD", ("open_interest_usd",)),
    Panel(
        "oi_change", "Open interest change 24 h, %", ("oi_change_pct_24h",), "oi_change_pct_24h_z"
    ),
    Panel(
        "liquidations",
        "Liquidations, USD (flow window)",
        ("liquidations_usd_long", "liquidations_usd_short"),
        "liquidations_usd_z",
    ),
    Panel(
        "depth", "Depth ±1 %, USD", ("depth_usd_1pct_bid", "depth_usd_1pct_ask"), "depth_usd_1pct_z"
    ),
    Panel("book_imbalance", "Book imbalance ±1 %", ("book_imbalance_1pct",)),
)
CHARTED: tuple[str, ...] = (
    "price",
    *dict.fromkeys(name for p in PANELS for name in (*p.series, *((p.z,) if p.z else ())) if name),
)
assert set(CHARTED) <= set(COLUMNS), set(CHARTED) - set(COLUMNS)


class LiveFeed:
    """Fans the pipeline's chart items out to the open pages (each a bounded queue)."""

    def __init__(self) -> None:
        self._clients: set[asyncio.Queue[bytes]] = set()
        self.dropped = 0  # events a slow page did not take in time

    @property
    def watching(self) -> int:
        return len(self._clients)

    def push(self, items: ChartItems) -> None:
        if not self._clients:
            return
        for sample in items.samples:
            values = {name: _finite(sample.row[COLUMNS.index(name)]) for name in CHARTED}
            self._send("sample", {"asset": sample.asset, "minute": sample.minute, "values": values})
        for _change, payload in items.changes:
            self._send("regime", payload)

    def _send(self, event: str, data: Any) -> None:
        frame = b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
        for queue in self._clients:
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(frame)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        queue: asyncio.Queue[bytes] = asyncio.Queue(LIVE_QUEUE)
        self._clients.add(queue)
        try:
            await response.write(b": tapewatch live\n\n")
            while True:
                try:
                    frame = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    frame = b": keepalive\n\n"
                await response.write(frame)
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the page went away, or the daemon is stopping
        finally:
            self._clients.discard(queue)
        return response


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if value == value else None  # NaN: missing


def page_meta(assets: Sequence[str], regimes: Sequence[str]) -> dict[str, Any]:
    """What the page needs before any data: assets, regime names (rule order, neutral last:
    the colours), panels and ranges."""
    return {
        "assets": list(assets),
        "regimes": [*regimes, "neutral"],
        "panels": [asdict(p) for p in PANELS],
        "ranges": list(RANGES),
        "default_range": DEFAULT_RANGE,
    }


def history(store: SignalStore, asset: str, range_ms: int | None) -> dict[str, Any]:
    """The chart data of ``asset`` over the last ``range_ms`` it holds (None: all of it)."""
    span = store.span(asset)
    if span is None:
        return {"asset": asset, "start": None, "end": None, "t": [], "values": {}, "changes": []}
    lo, newest = span
    start = lo if range_ms is None else max(lo, newest - range_ms)
    data = store.series(asset, start, newest, CHARTED, MAX_POINTS)
    # A change newer than the newest closed minute (entered a moment ago) is shown too: the
    # range then ends at it.
    changes = store.changes(asset, start, END_OF_TIME)
    end = max([newest, *(c["since"] for c in changes if isinstance(c.get("since"), int))])
    data.update(asset=asset, start=start, end=end, changes=changes)
    return data


def add_routes(
    app: web.Application,
    store: SignalStore | None,
    assets: Sequence[str],
    regimes: Sequence[str],
    live: LiveFeed,
) -> None:
    """The page's routes on ``app``; without a store (``state.signal_history: false``) the page
    says so instead of charting."""
    meta = page_meta(assets, regimes)
    meta["history"] = store is not None

    async def index(request: web.Request) -> web.Response:
        return _static_response("index.html")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if "/" in name or name.startswith(".") or name == "index.html":
            raise web.HTTPNotFound()
        return _static_response(name)

    async def api_assets(request: web.Request) -> web.Response:
        return _json(meta)

    async def api_history(request: web.Request) -> web.Response:
        asset = request.query.get("asset", "")
        span = request.query.get("range", DEFAULT_RANGE)
        if asset not in assets:
            return _json({"error": f"no asset {asset!r}; configured: {', '.join(assets)}"}, 404)
        if span not in RANGES:
            return _json({"error": f"no range {span!r}; one of {', '.join(RANGES)}"}, 400)
        if store is None:
            return _json({"error": "signal history is off (state.signal_history)"}, 404)
        # On the store's own thread: a 90-day read must not hold the event loop.
        data = await asyncio.wrap_future(store.run_soon(history, asset, RANGES[span]))
        return _json(data)

    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/assets", api_assets)
    app.router.add_get("/api/history", api_history)
    app.router.add_get("/api/live", live.stream)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _static_response(name: str) -> web.Response:
    path = STATIC / name
    suffix = name[name.rfind(".") :] if "." in name else ""
    if suffix not in _CONTENT_TYPES or not path.is_file():
        raise web.HTTPNotFound()
    return web.Response(body=path.read_bytes(), content_type=_CONTENT_TYPES[suffix])


def report_html(
    store: SignalStore, assets: Sequence[str], regimes: Sequence[str], title: str
) -> str:
    """The page as one file, for a replayed tape: uPlot, styles, script and every asset's whole
    history inlined (no server, no network: it opens from disk and can be mailed)."""
    meta = page_meta(assets, regimes)
    meta.update(history=True, report=title, ranges=["all"], default_range="all")
    data = {asset: history(store, asset, None) for asset in assets}
    # "</" cannot end the script early: JSON never needs it unescaped.
    payload = orjson.dumps({"meta": meta, "data": data}).decode().replace("</", "<\\/")
    page = (STATIC / "index.html").read_text()
    css = "".join((STATIC / n).read_text() for n in ("uPlot.min.css", "app.css"))
    js = "".join((STATIC / n).read_text() for n in ("uPlot.iife.min.js",))
    inline = (
        f"<style>{css}</style>\n<script>{js}</script>\n"
        f"<script>window.TAPEWATCH_REPORT = {payload};</script>\n"
        f"<script>{(STATIC / 'app.js').read_text()}</script>"
    )
    head, _, rest = page.partition("<!-- assets -->")
    _, _, tail = rest.partition("<!-- /assets -->")
    return head + inline + tail
