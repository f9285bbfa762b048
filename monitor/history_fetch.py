"""The start-up history fetch: REST history for the engine's baselines, newest day first.

Why newest first: a z-score needs ``baseline_min_history`` (one day) of samples before it is
published, so the most recent day is fetched first and z-scores work within seconds; older days
then deepen the baselines while the daemon already runs live. The work goes in rounds of one day
across every series of every asset, and after each round each asset's history so far goes to
``fill`` (the daemon queues it among the frames, so the pipeline backfills the baselines in the
order the recorder writes it; the backfill is idempotent: buckets that hold data are never
touched, see ``signals.backfill``).

What is fetched per asset (README "Backfill") is what its venues' adapters list
(``Venue.history``): Binance spot and USDⓈ-M 1-minute klines, Coinbase 1-minute candles, funding
history, and open-interest history (Binance keeps 30 days only, so
``oi_change_pct_24h`` has at most 30 days of backfilled samples: its ``n_obs`` and ``warmup`` say
so). Everything fetched is cached in ``<state.dir>/history/<instance>-<ASSET>.npz``; a restart
fetches only what the cache lacks: the time since the last run, then any older days still
missing. The cache records the venue endpoints it was fetched from: a cache from other endpoints
(the simulator's history, say) is set aside, never mixed into a real market's baselines.
Requests go through the venues' ``RestClient``s, which keep Binance's weight budget and
Coinbase's request rate.

A venue that cannot be reached (no network, DNS down: ``HostUnreachable``), or whose every
request of a round failed, ends that venue group's pass after that round, the newest day on a
first run: walking back through 90 days of requests that all fail would only make noise. The
group tries again after ``retry_initial`` seconds, doubling up to ``retry_cap``, says so once,
and says when it resumes; the cache makes the days already fetched cost nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monitor.config import Config
from monitor.state import (
    StateError,
    endpoint_differences,
    load_checkpoint,
    origin,
    put_aside,
    save_checkpoint,
)
from signals.backfill import AssetHistory
from streams.events import Bars, Points
from streams.frames import MalformedFrame
from streams.reporting import duration
from streams.rest import HostUnreachable, RestClient, RestError
from streams.units import DAY_MS, MINUTE_MS
from streams.venues import HistorySeries, Venue

log = logging.getLogger("tapewatch.backfill")

LEAD_KINDS = ("perp", "spot")  # the rolling metrics' inputs
SAVE_EVERY_S = 10.0  # cache writes: often enough to resume, rare enough to cost nothing
# A group whose venue cannot be reached tries again after 1 min, then 2, 4, ... up to 30 min.
RETRY_INITIAL_S = 60.0
RETRY_CAP_S = 1800.0

Data = Bars | Points
Fill = Callable[[str, AssetHistory, bool], None]  # (asset, its history so far, final)


@dataclass(slots=True)
class Stored:
    """A series' cached rows and the time range they cover, [lo, hi)."""

    data: Data
    lo: int
    hi: int

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """Parts of [start, end) not covered, newest first."""
        if self.hi <= self.lo:
            return [(start, end)] if start < end else []
        parts = [(max(start, self.hi), end), (start, min(end, self.lo))]
        return [(a, b) for a, b in parts if a < b]

    def extend(self, start: int, end: int) -> None:
        if self.hi <= self.lo:
            self.lo, self.hi = start, end
        else:
            self.lo, self.hi = min(self.lo, start), max(self.hi, end)


@dataclass
class Progress:
    requests: int = 0
    rows: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)


class HistoryFetch:
    """Fetches history for every asset of ``config`` and hands it to ``fill`` as it goes."""

    def __init__(
        self,
        config: Config,
        fill: Fill,
        rest: dict[str, RestClient],
        now_ms: int,
        retry_initial: float = RETRY_INITIAL_S,
        retry_cap: float = RETRY_CAP_S,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.retry_initial = retry_initial
        self.retry_cap = retry_cap
        self._sleep = sleep  # the wait between passes; injectable, so tests need not wait
        self._fill = fill
        self.rest = rest
        self.span_ms = round(config.signals.baseline_window * 1000)
        # Only closed minutes: the bar under way is still changing.
        self.end_ms = now_ms // MINUTE_MS * MINUTE_MS
        sig = config.signals
        lead = max(sig.flow_window, sig.volume_window) * 1000
        lead_ms = -(-max(round(lead), DAY_MS) // MINUTE_MS) * MINUTE_MS
        self.window_start_ms = self.end_ms - self.span_ms
        self.start_ms = self.window_start_ms - lead_ms  # for the series that need a lead
        self.dir = Path(config.state.dir) / "history"
        venues = config.adapters()
        self.plans = {
            name: [
                series
                for key, venue in _by_key(venues).items()
                if (symbol := getattr(asset, key))
                for series in venue.history(symbol)
            ]
            for name, asset in config.assets.items()
        }
        self._group_of = {venue.name: venue.history_group for venue in venues.values()}
        self.origin = origin(config)
        self.stored = {name: self._load(name, series) for name, series in self.plans.items()}
        self.progress = Progress()
        self._saved_at = time.monotonic()
        self._saved_requests = 0  # progress.requests at the last save
        self._done: set[str] = set()  # venue groups whose rounds are all done
        self.finished: dict[str, float] = {}  # venue group -> seconds it took
        self.stopped: dict[str, str] = {}  # venue group -> why its pass stopped, until resumed

    # -- cache ----------------------------------------------------------------------------------
    def _path(self, asset: str) -> Path:
        return self.dir / f"{self.config.instance}-{asset}.npz"

    def _origin(self, asset: str) -> dict[str, Any]:
        """Where this asset's history comes from: the endpoints and the asset's symbols."""
        return {"venues": self.origin["venues"], "assets": {asset: self.origin["assets"][asset]}}

    def _load(self, asset: str, plans: list[HistorySeries]) -> dict[str, Stored]:
        fresh = {s.kind: Stored(s.empty(), 0, 0) for s in plans}
        path = self._path(asset)
        try:
            arrays, meta = load_checkpoint(path)
        except StateError as exc:
            if path.exists():
                log.warning("%s; fetching its history again", exc)
            return fresh
        differs = endpoint_differences(meta.get("origin"), self._origin(asset))
        if differs:
            # Another market's history (the simulator's, a testnet's) must not fill this one's
            # baselines; a changed symbol alone is handled per series below.
            log.warning(
                "history cache %s was fetched elsewhere (%s): %s; fetching %s's history again",
                path,
                "; ".join(differs),
                put_aside(path),
                asset,
            )
            return fresh
        for s in plans:
            entry = meta.get("series", {}).get(s.kind)
            if not entry or entry.get("symbol") != s.symbol:
                continue  # a new venue or a changed symbol: fetch it
            try:
                columns = [
                    arrays[f"{s.kind}/{i}"] for i in range(len(_columns(fresh[s.kind].data)))
                ]
                data = type(fresh[s.kind].data)(*columns)
            except (KeyError, TypeError):
                continue
            fresh[s.kind] = Stored(data, int(entry["lo"]), int(entry["hi"]))
        return fresh

    def save(self) -> None:
        for asset, stored in self.stored.items():
            # Keep what the window (and its lead) still needs: the cache never outgrows it.
            for entry in stored.values():
                if entry.hi > entry.lo and entry.lo < self.start_ms:
                    entry.data = entry.data.between(self.start_ms, self.end_ms)  # type: ignore[arg-type]
                    entry.lo = min(self.start_ms, entry.hi)
            arrays = {
                f"{kind}/{i}": column
                for kind, entry in stored.items()
                for i, column in enumerate(_columns(entry.data))
            }
            series = {
                s.kind: {"symbol": s.symbol, "lo": stored[s.kind].lo, "hi": stored[s.kind].hi}
                for s in self.plans[asset]
            }
            try:
                meta = {"series": series, "origin": self._origin(asset)}
                save_checkpoint(self._path(asset), arrays, meta)
            except OSError as exc:
                log.error("could not write the history cache %s: %s", self._path(asset), exc)
        self._saved_at = time.monotonic()
        self._saved_requests = self.progress.requests

    # -- running --------------------------------------------------------------------------------
    def rounds(self) -> list[tuple[int, int]]:
        """Day-long time ranges to make sure of, in order: forward from the cache's end to now
        (the time the daemon was away), then backward from there to the start of the baseline
        window. Ranges the cache covers cost nothing (see ``Stored.missing``)."""
        start = self.start_ms
        ends = [e.hi for entries in self.stored.values() for e in entries.values() if e.hi > e.lo]
        back = min([*ends, self.end_ms])
        out: list[tuple[int, int]] = []
        t = max(back, start)
        while t < self.end_ms:
            out.append((t, min(t + DAY_MS, self.end_ms)))
            t += DAY_MS
        t = back
        while t > start:
            out.append((max(start, t - DAY_MS), t))
            t -= DAY_MS
        return out

    async def run(self) -> None:
        rounds = self.rounds()
        log.info(
            "backfill: up to %d day(s) of history for %s (baseline window %.0f days)",
            len(rounds),
            ", ".join(self.plans),
            self.span_ms / DAY_MS,
        )
        # Each group (venues sharing a rate budget) goes at its own pace: Coinbase allows 10
        # requests/s and its candles come 350 to a page, so its part takes longer and must not
        # hold Binance back.
        await asyncio.gather(
            *(self._run_rounds(group, rounds) for group in sorted(set(self._group_of.values())))
        )
        self.save()
        log.info("backfill: history fetched in %.0fs", self.elapsed)

    async def _run_rounds(self, group: str, rounds: list[tuple[int, int]]) -> None:
        """The group's rounds; a pass that meets an unreachable venue is tried again later."""
        series = [
            (a, s)
            for a, plans in self.plans.items()
            for s in plans
            if self._group_of[s.venue] == group
        ]
        if not series:
            self._done.add(group)
            self.finished[group] = 0.0
            if self._done >= set(self._group_of.values()):
                self.fill()  # the other groups are done: say so
            return
        delay = self.retry_initial
        while True:
            why = await self._pass(group, rounds, series)
            if why is None:
                return
            level = logging.WARNING if group not in self.stopped else logging.DEBUG
            self.stopped[group] = why
            if self.progress.requests > self._saved_requests:
                self.save()  # the wait may be long: keep what was fetched until now
            log.log(
                level,
                "backfill %s: %s; retrying in %s, then up to every %s",
                group,
                why,
                duration(delay),
                duration(self.retry_cap),
            )
            await self._sleep(delay)
            delay = min(self.retry_cap, 2 * delay)

    async def _pass(
        self, group: str, rounds: list[tuple[int, int]], series: list[tuple[str, HistorySeries]]
    ) -> str | None:
        """The rounds in order; returns None when all ran, or why the pass stopped early."""
        for i, (start, end) in enumerate(rounds, 1):
            before, failed = self.progress.requests, self.progress.failed
            jobs = [self._fetch(a, s, start, end, first=i == 1) for a, s in series]
            errors = [e for e in await asyncio.gather(*jobs) if e is not None]
            # An unreachable host fails every older day the same way; so does a venue that
            # answered no request of the round. Other failures (one bad symbol) leave a hole in
            # that series only, fetched again at the next start. (The host reporter has said
            # why a host cannot be reached; failures of a venue that answered were logged.)
            unreachable = sorted({e.host for e in errors if isinstance(e, HostUnreachable)})
            why = None
            if unreachable:
                why = f"cannot reach {', '.join(unreachable)}; stopped at day {i} of {len(rounds)}"
            elif self.progress.failed > failed and self.progress.requests == before:
                why = f"no request of day {i} of {len(rounds)} succeeded; stopped there"
            elif group in self.stopped:
                del self.stopped[group]
                log.info("backfill %s: the venue answers again; resumed at day %d", group, i)
            last = i == len(rounds) and why is None
            if last:
                self._done.add(group)
                self.finished[group] = self.elapsed
            if self.progress.requests > before or last:
                self.fill()
                self._report(group, i, len(rounds))
            if time.monotonic() - self._saved_at >= SAVE_EVERY_S:
                self.save()
            if why is not None:
                return why
        return None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.progress.started

    async def _fetch(
        self, asset: str, s: HistorySeries, start: int, end: int, first: bool
    ) -> RestError | None:
        """Fetch what the series lacks of [start, end); returns the error that stopped it."""
        entry = self.stored[asset][s.kind]
        if s.whole:
            if not first:
                return None
            start = self.start_ms
        start = max(start, self.start_ms if s.lead else self.window_start_ms)
        if s.kept_ms is not None:
            start = max(start, self.end_ms - s.kept_ms)
        client = self.rest[s.venue]
        for lo, hi in entry.missing(start, end):
            # Pages grow the covered range from its edge, so an interruption leaves no hole.
            forward = entry.hi > entry.lo and lo >= entry.hi
            for page_lo, page_hi in _pages(lo, hi, s.page_ms, forward):
                try:
                    # An unreachable host is not retried here: the pass stops and the group
                    # tries again on its own, slower schedule.
                    call = s.call(page_lo, page_hi)
                    resp = await client.get_retrying(
                        call.path, call.params, weight=call.weight, retry_unreachable=False
                    )
                    rows = s.parse(resp.text)
                except (RestError, MalformedFrame) as exc:
                    # Leave the range uncovered: the next start (or pass) fetches it again.
                    self.progress.failed += 1
                    unreachable = isinstance(exc, HostUnreachable)  # the reporter said it
                    log.log(
                        logging.DEBUG if unreachable else logging.WARNING,
                        "backfill %s %s %s: %s",
                        asset,
                        s.kind,
                        s.symbol,
                        exc,
                    )
                    return exc if isinstance(exc, RestError) else RestError(str(exc))
                self.progress.requests += 1
                self.progress.rows += len(rows)
                entry.data = entry.data.merged(rows.between(page_lo, page_hi))  # type: ignore[arg-type]
                entry.extend(page_lo, page_hi)
        return None

    def history(self, asset: str) -> AssetHistory:
        """The asset's fetched history within the baseline window. Until the last round, the
        oldest fetched minutes lack the bars before them, so rolling metrics are computed only
        where their whole window was fetched (``complete_from_ms``)."""
        stored = self.stored[asset]
        data = {
            kind: entry.data.between(self.start_ms, self.end_ms) for kind, entry in stored.items()
        }
        bars = [e.lo for kind, e in stored.items() if kind in LEAD_KINDS and e.hi > e.lo]
        lead_groups = {self._group_of[s.venue] for s in self.plans[asset] if s.kind in LEAD_KINDS}
        complete_from = None if lead_groups <= self._done or not bars else max(bars)
        return AssetHistory(**data, complete_from_ms=complete_from)  # type: ignore[arg-type]

    def fill(self) -> None:
        """Hand each asset's history so far to ``fill``; ``final`` once every group is done."""
        final = self._done >= set(self._group_of.values())
        for asset in self.plans:
            self._fill(asset, self.history(asset), final)

    def _report(self, group: str, done: int, total: int) -> None:
        p = self.progress
        weights = ", ".join(
            f"{venue} weight {c.used_weight}/{c.weight_limit}"
            for venue, c in self.rest.items()
            if c.weight_limit is not None and c.used_weight is not None
        )
        log.info(
            "backfill %s: %d/%d day(s) done; in all %d requests, %d rows, %.0fs%s%s",
            group,
            done,
            total,
            p.requests,
            p.rows,
            time.monotonic() - p.started,
            f", {weights}" if weights else "",
            f", {p.failed} failed request(s)" if p.failed else "",
        )


def _by_key(venues: dict[str, Venue]) -> dict[str, Venue]:
    return {venue.config_key: venue for venue in venues.values()}


def _pages(lo: int, hi: int, size: int, forward: bool) -> list[tuple[int, int]]:
    """[lo, hi) cut into pages of ``size``, oldest first if ``forward`` else newest first."""
    if forward:
        return [(a, min(a + size, hi)) for a in range(lo, hi, size)]
    return [(max(lo, b - size), b) for b in range(hi, lo, -size)]


def _columns(data: Data) -> tuple[np.ndarray, ...]:
    if isinstance(data, Bars):
        return data.open_ms, data.close, data.quote_volume, data.taker_buy_quote
    return data.ts_ms, data.value
