"""The default regime rules against the simulator's seed narratives: a diagonal confusion table.

Each narrative scenario (``simulator/scenarios.py``) runs in the pure market model for
its calm baseline plus the narrative; its ticks become wire frames through the simulator's own
encoders (``binance_wire``, ``coinbase_feed``) and go through ``Pipeline`` with the rules of the
shipped ``config.yaml``, exactly as the daemon would feed them: depth snapshots answer the
pipeline's own requests from the published book, open interest is polled every 10 s as REST
bodies. No sockets, no wall clock.

What is scaled is the signal windows only (``WINDOWS``): narratives are compressed to minutes,
so the flow window is 2 min instead of 1 h and the volume window 5 min instead of 24 h. The
rules, thresholds, dwell and cooldown are the shipped ones.

The table: every narrative scenario (calm for ``BASELINE_MS``, then the narrative held for
``HOLD_MS``) enters its own regime after the baseline and no other; nothing is entered during
the calm; ``tour`` enters the five in its order, each while its narrative plays. One seed, one
process per run (two at a time), about 45 s in all.

Baselines. The z-scores need a baseline, and the one a daemon really has is the start-up
backfill: ``AssetSignals.backfill`` is given 7 days of the simulator's own history
(``simulator/history.py``, the bars, funding and open-interest rows its REST endpoints
serve), so ``taker_imbalance``, ``net_taker_usd``, ``perp_spot_volume_ratio``,
``coinbase_premium_pct``, ``funding_rate`` and ``oi_change_pct_24h`` are scored against days of
history with sell-offs in them, as live. Liquidations and depth have no history anywhere, so
their baselines grow from the calm stretch, in 10 s buckets with a 3 min minimum
(``baseline_min_history``), as they would over a daemon's first day. (A baseline built from the
calm stretch alone would make every narrative an extreme z-score and test nothing about the
thresholds; the history's sell-off days are what give the seeds' z values their scale.)

Only the streams the signals read are fed (aggregate trades, mark price, liquidations, the perp
book; Coinbase trades): Binance spot's book, the book tickers and Coinbase's level2 feed change
no signal and would only cost time.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import yaml

from monitor.config import Config, config_from_dict, deep_merge
from monitor.pipeline import Pipeline, SnapshotRequest
from signals.backfill import AssetHistory
from signals.regimes import NEUTRAL
from simulator import binance_wire, coinbase_wire
from simulator.coinbase_feed import CoinbaseFeed, CoinbaseSession
from simulator.history import MarketHistory, ModelBars
from simulator.market import (
    FUNDING_INTERVAL_MS,
    DepthTick,
    LiquidationTick,
    MarketModel,
    MarkTick,
    TradeTick,
)
from simulator.published import PublishedBook
from simulator.scenarios import (
    BASELINE_MS,
    NARRATIVE_HISTORY_DAYS,
    NARRATIVE_WINDOWS,
    NARRATIVES,
    TOUR,
    TOUR_GAP_MS,
    tour_schedule,
)
from streams.events import BINANCE_SPOT, BINANCE_USDM, COINBASE, Bars, Points
from streams.units import DAY_MS, MINUTE_MS
from tests.conftest import REPO

START_MS = 1_780_000_020_000  # Thursday 2026-05-28 20:27:00 UTC
SEED = 7
SYMBOL, PRODUCT = "BTCUSDT", "BTC-USD"
HOLD_MS = 4 * 60_000  # how long a single scenario's narrative runs here
POLL_OI_MS = 10_000  # collector.open_interest_poll
HISTORY_DAYS = NARRATIVE_HISTORY_DAYS
WINDOWS = NARRATIVE_WINDOWS  # the same windows `tapewatch simulate --scenario <narrative>` sets
# Signals shown next to a failing table: the ones the default rules read.
TRACED = (
    "liquidations_usd_z",
    "taker_imbalance_z",
    "oi_z",
    "depth_z",
    "taker_imbalance_spot",
    "taker_imbalance_perp",
    "perp_spot_volume_ratio_z",
    "funding_rate",
    "oi_change_pct_1h",
    "taker_intensity_z",
    "taker_sell_ratio",
    "coinbase_premium_pct",
    "book_imbalance_1pct",
)


def shipped_config() -> Config:
    """config.yaml with its rules, one asset and the windows scaled to the scenarios."""
    data = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    data = deep_merge(data, {"signals": WINDOWS})
    data["assets"] = {"BTC": {"binance_spot": SYMBOL, "binance_usdm": SYMBOL, "coinbase": PRODUCT}}
    return config_from_dict(data, env={})


# -- history: what the start-up backfill would have fetched --------------------------------------
def _bars(raw: ModelBars, taker: bool = True) -> Bars:
    buy = raw.taker_buy_quote if taker else np.full(len(raw), np.nan)  # candles: no taker side
    return Bars(raw.open_ms.astype(np.int64), raw.close, raw.quote_volume, buy)


def backfill_history(model: MarketModel) -> AssetHistory:
    """The last ``HISTORY_DAYS`` (+1 for the day-old open interest) before the scenario, from
    the history the simulator's REST endpoints serve."""
    start = model.start_ms
    history = MarketHistory(
        model.assets, model.specs, model.seed, start, model.calm_premium
    ).by_binance[SYMBOL]
    first = (start - (HISTORY_DAYS + 1) * DAY_MS) // MINUTE_MS
    count = start // MINUTE_MS - first  # whole minutes before the start
    first_settlement = first * MINUTE_MS // FUNDING_INTERVAL_MS + 1
    settlements = start // FUNDING_INTERVAL_MS - first_settlement + 1
    times, rates, _ = history.funding(first_settlement, settlements)
    rows = [r for r in model.position_rows(SYMBOL) if r.timestamp_ms <= start]
    return AssetHistory(
        perp=_bars(history.bars(BINANCE_USDM, first, count)),
        spot=_bars(history.bars(BINANCE_SPOT, first, count)),
        coinbase=_bars(history.bars(COINBASE, first, count), taker=False),
        funding=Points(times.astype(np.int64), rates),
        open_interest=Points(
            np.array([r.timestamp_ms for r in rows], dtype=np.int64),
            np.array([r.oi_value for r in rows]),
        ),
    )


# -- one run ---------------------------------------------------------------------------------------
@dataclass
class Run:
    scenario: str
    entered: list[tuple[int, str]] = field(default_factory=list)  # (ms after start, regime)
    trace: list[tuple[int, dict[str, float | None]]] = field(default_factory=list)
    frames: int = 0

    def regimes(self, lo: int = 0, hi: int | None = None) -> list[str]:
        """Regimes entered (neutral left out) in [lo, hi) ms after the start, in order."""
        return [
            name
            for at, name in self.entered
            if name != NEUTRAL and at >= lo and (hi is None or at < hi)
        ]


def _binance_frames(tick: Any, spec: Any) -> list[tuple[str, str]]:
    """(venue, combined-stream frame) of the streams the signals read."""
    base = tick.symbol.lower()
    if isinstance(tick, MarkTick):
        stream, payload, venue = f"{base}@markPrice@1s", binance_wire.mark_payload(tick), None
    elif isinstance(tick, LiquidationTick):
        stream, venue = f"{base}@forceOrder", None
        payload = binance_wire.force_order_payload(tick, spec)
    elif isinstance(tick, TradeTick):
        stream, venue = f"{base}@aggTrade", tick.venue
        payload = binance_wire.agg_trade_payload(tick, spec)
    elif isinstance(tick, DepthTick) and tick.venue == BINANCE_USDM:
        stream, venue = f"{base}@{binance_wire.DEPTH_STREAM}", tick.venue
        payload = binance_wire.depth_payload(tick, spec)
    else:
        return []
    raw = binance_wire.envelope(stream, binance_wire.dumps(payload))
    return [(venue or BINANCE_USDM, raw)]


def run_scenario(scenario: str, end_ms: int, seed: int = SEED, trace_every_ms: int = 30_000) -> Run:
    """Run ``scenario`` for ``end_ms`` of event time through the shipped rules."""
    model = MarketModel({SYMBOL: 78_000.0}, scenario, seed, start_ms=START_MS)
    pipeline = Pipeline.for_session(shipped_config(), "test", "test", START_MS)
    pipeline.engine.assets["BTC"].backfill(backfill_history(model))
    run = Run(scenario)
    books = {key: PublishedBook(model.book(*key), START_MS) for key in model.specs}
    coinbase_specs = {sym: spec for (venue, sym), spec in model.specs.items() if venue == COINBASE}
    feed = CoinbaseFeed(coinbase_specs, {s: books[(COINBASE, s)] for s in coinbase_specs})
    session = CoinbaseSession(frozenset(coinbase_specs), Counter())

    def record(messages: list[Any]) -> None:
        for msg in messages:
            if msg.topic.endswith("/BTC/regime"):
                run.entered.append((msg.payload["since"] - START_MS, msg.payload["regime"]))

    # Snapshots for the trace, every `trace_every_ms` of event time.
    regime_engine = pipeline.regimes["BTC"]
    evaluate = regime_engine.evaluate

    def traced(snap: Any) -> Any:
        if (snap.ts_event - START_MS) % trace_every_ms == 0:
            values = snap.lookup()
            run.trace.append((snap.ts_event - START_MS, {k: values.get(k) for k in TRACED}))
        return evaluate(snap)

    regime_engine.evaluate = traced  # type: ignore[method-assign]

    def frame(venue: str, raw: str, at: int) -> None:
        run.frames += 1
        record(pipeline.feed_frame(venue, raw, at))
        for request in pipeline.take_requests():
            if isinstance(request, SnapshotRequest):
                book = books[(request.venue, request.symbol)]
                bids, asks = book.top(1000)
                spec = model.specs[(request.venue, request.symbol)]
                body = binance_wire.depth_snapshot(
                    request.venue, book.last_update_id, bids, asks, spec, at
                )
                url = "/fapi/v1/depth" if request.venue == BINANCE_USDM else "/api/v3/depth"
                record(
                    pipeline.feed_rest(
                        request.venue,
                        f"{url}?symbol={request.symbol}&limit=1000",
                        binance_wire.dumps(body),
                        at,
                    )
                )

    def coinbase_due(now: int) -> None:
        for _product, batch_end, events in feed.due_batches(now):
            stamp = coinbase_wire.rfc3339_ms(batch_end)
            frame(COINBASE, session.frame("market_trades", stamp, events), batch_end)

    for now in range(START_MS + 1000, START_MS + end_ms + 1, 1000):
        for tick in model.advance(now):
            coinbase_due(tick.event_ms)
            if isinstance(tick, DepthTick):
                books[(tick.venue, tick.symbol)].apply(tick)
            if isinstance(tick, TradeTick) and tick.venue == COINBASE:
                feed.on_trade(tick)
                continue
            if getattr(tick, "venue", BINANCE_USDM) == COINBASE:
                continue
            spec = model.specs.get((getattr(tick, "venue", BINANCE_USDM), tick.symbol))
            for venue, raw in _binance_frames(tick, spec):
                frame(venue, raw, tick.event_ms)
        coinbase_due(now)
        if (now - START_MS) % POLL_OI_MS == 0:
            body = {
                "openInterest": f"{model.open_interest(SYMBOL):.3f}",
                "symbol": SYMBOL,
                "time": now,
            }
            record(
                pipeline.feed_rest(
                    BINANCE_USDM,
                    f"/fapi/v1/openInterest?symbol={SYMBOL}",
                    binance_wire.dumps(body),
                    now,
                )
            )
    return run


def narrative_end(name: str) -> int:
    """How long a single scenario's run lasts: its baseline, its lead-in phases, HOLD_MS."""
    return BASELINE_MS + sum(duration for _, duration in NARRATIVES[name][:-1]) + HOLD_MS


TOUR_END_MS = tour_schedule()[-1][2] + TOUR_GAP_MS


def _job(scenario: str) -> Run:
    end = TOUR_END_MS if scenario == "tour" else narrative_end(scenario)
    return run_scenario(scenario, end)


# Six scenario runs of up to an hour of event time each, in two processes: about 45 s on an
# idle machine, several times that when the other core is busy. Only a hang should time out.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def runs() -> dict[str, Run]:
    jobs = ["tour", *TOUR]  # the longest first, so the two workers finish together
    # Each run is independent and deterministic (one seed, no wall clock): two processes.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        return dict(zip(jobs, pool.map(_job, jobs), strict=True))


def table(runs: dict[str, Run]) -> str:
    """The confusion table: rows = scenarios, columns = how often each regime was entered."""
    names = [*TOUR]
    head = f"{'scenario':<26}" + "".join(f"{n[:14]:>16}" for n in names) + f"{'other':>8}"
    lines = [head]
    for scenario in (*TOUR, "tour"):
        counts = Counter(runs[scenario].regimes())
        other = sum(v for k, v in counts.items() if k not in names)
        lines.append(f"{scenario:<26}" + "".join(f"{counts[n]:>16}" for n in names) + f"{other:>8}")
    return "\n".join(lines)


def explain(run: Run) -> str:
    lines = [f"{run.scenario}: entered {run.entered}"]
    for at, values in run.trace:
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
        )
        lines.append(f"  {at / 60_000:5.1f} min  {shown}")
    return "\n".join(lines)


def test_confusion_table_is_diagonal(runs: dict[str, Run]) -> None:
    problems = []
    for scenario in TOUR:
        run = runs[scenario]
        if run.regimes(0, BASELINE_MS):
            problems.append(f"{scenario}: a regime during the calm baseline: {run.entered}")
        entered = set(run.regimes(BASELINE_MS))
        if entered != {scenario}:
            problems.append(f"{scenario}: entered {sorted(entered)}, expected [{scenario}]")
    if problems:
        detail = "\n\n".join(explain(runs[s]) for s in TOUR)
        pytest.fail("\n".join([table(runs), *problems, detail]))


def test_tour_passes_through_every_narrative_in_order(runs: dict[str, Run]) -> None:
    run = runs["tour"]
    seen = run.regimes()
    schedule = tour_schedule()
    problems = []
    if seen != list(TOUR):
        problems.append(f"tour entered {seen}, expected {list(TOUR)}")
    for name, start, end in schedule:
        # Each regime is entered while its narrative plays (not before it, not in the calm).
        at = [t for t, n in run.entered if n == name]
        if not at or not start <= at[0] < end:
            problems.append(f"{name} entered at {at}, its narrative plays [{start}, {end})")
    if problems:
        pytest.fail("\n".join([*problems, explain(run)]))
