"""The start-up backfill against the simulator's REST history (real HTTP, real rate limits)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from monitor.config import Config, config_from_dict, deep_merge
from monitor.health import Health
from monitor.history_fetch import Fill, HistoryFetch
from monitor.pipeline import Pipeline
from signals.engine import SignalEngine
from simulator.server import Simulator
from streams.events import BINANCE_SPOT, BINANCE_USDM, COINBASE
from streams.reporting import HostReporter
from streams.rest import RestClient
from tests.conftest import REPO

MINUTE = 60_000
DAY = 86_400_000


def config_for(sim: Any, state: Path, window: str, coinbase: bool = True) -> Config:
    """The shipped config on the simulator's assets only, with a short baseline window."""
    data = sim.config_for(yaml.safe_load((REPO / "config.yaml").read_text()))
    data["assets"] = {
        name: {k: v for k, v in venues.items() if coinbase or k != "coinbase"}
        for name, venues in data["assets"].items()
    }
    signals = {"flow_window": "1h", "baseline_window": window, "baseline_min_history": "1h"}
    over = {"signals": signals, "state": {"dir": str(state)}}
    return config_from_dict(deep_merge(data, over), env={})


def engine_for(config: Config) -> SignalEngine:
    return Pipeline.for_session(config, "test", "0", 0, Health()).engine


def clients(config: Config, hosts: HostReporter | None = None) -> dict[str, RestClient]:
    return {name: RestClient.for_venue(v, hosts) for name, v in config.adapters().items()}


def filling(engine: SignalEngine) -> Fill:
    """What the daemon's pipeline does with each history the fetch hands over."""
    return lambda asset, history, final: engine.assets[asset].backfill(history)


async def run_backfill(config: Config, engine: SignalEngine) -> HistoryFetch:
    rest = clients(config)
    try:
        backfill = HistoryFetch(config, filling(engine), rest, time.time_ns() // 1_000_000)
        await backfill.run()
    finally:
        for client in rest.values():
            await client.close()
    return backfill


def n_obs(engine: SignalEngine) -> dict[str, int]:
    return {name: b.n_obs for name, b in engine.assets["BTC"].baselines.items()}


async def test_backfill_fills_the_baselines_honestly_and_resumes_from_its_cache(
    start_simulator: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = await start_simulator(symbols={"BTCUSDT": 78_000.0})  # one asset keeps it quick
    config = config_for(sim, tmp_path / "state", "2d")
    engine = engine_for(config)
    caplog.set_level(logging.INFO, "tapewatch.backfill")
    first = await run_backfill(config, engine)
    window = 2 * DAY // MINUTE  # 2,880 one-minute samples make a full baseline

    got = n_obs(engine)
    # Prices from both venues exist for every minute of the window: a full baseline.
    assert got["coinbase_premium_pct"] == window
    # Rolling metrics: the bars before the window are fetched too, so every minute has a
    # whole flow (1 h) and volume (24 h) window.
    assert got["taker_imbalance"] == got["net_taker_usd"] == window
    assert got["perp_spot_volume_ratio"] == window
    # Funding: every minute up to the last settlement (the interval under way is live's).
    assert window - 8 * 60 <= got["funding_rate"] <= window
    # Open interest 24 h earlier is the row at the 5-minute mark that opened that bucket: the
    # first minutes of the window whose mark lies before the fetched lead (the window's start
    # less 24 h, when it is not on a mark) have none.
    off_mark = (first.window_start_ms - DAY) // MINUTE % 5
    assert got["oi_change_pct_24h"] == window - (5 - off_mark) % 5
    # No history exists for liquidations or book depth: they start from live data.
    assert got["liquidations_usd"] == got["depth_usd_1pct"] == 0

    state = engine.assets["BTC"]
    premium = state.baselines["coinbase_premium_pct"]
    z = premium.score(0.0)
    assert z.z is not None and not z.warmup and z.n_obs == window
    # 2 days of window and 1 of lead (the 24 h volume window of the first minutes).
    assert any("backfill binance: 3/3 day(s) done" in r.getMessage() for r in caplog.records)
    assert first.progress.failed == 0

    # The volume window and the 24 h price history are seeded too: the perp/spot ratio and the
    # 24 h change exist as soon as live data arrives.
    assert state.volume.filled() == pytest.approx(1.0, abs=2 / 1440)
    assert state.history.samples().shape[0] >= 8 * 288 // 4  # 2 of 8 days of 5-minute buckets

    # The same samples as an independent computation from the klines the simulator serves.
    samples = premium.window.samples()[:, 0]
    spot = first.stored["BTC"]["spot"].data
    cb = first.stored["BTC"]["coinbase"].data
    common, si, ci = np.intersect1d(spot.open_ms, cb.open_ms, return_indices=True)
    keep = common >= first.end_ms - 2 * DAY
    expected = (cb.close[ci] - spot.close[si]) / spot.close[si] * 100
    np.testing.assert_allclose(samples, expected[keep], rtol=1e-12)

    # A restart with the cache fetches only the minutes since the first run, and fills a
    # fresh engine to the same counts.
    again = engine_for(config)
    second = await run_backfill(config, again)
    assert second.progress.requests <= 2 * 5  # at most a page per series for the new minutes
    assert n_obs(again) == pytest.approx(got, abs=2)


async def test_open_interest_history_is_30_days_and_its_baseline_says_so(
    start_simulator: Any, tmp_path: Path
) -> None:
    sim = await start_simulator(symbols={"BTCUSDT": 78_000.0})
    config = config_for(sim, tmp_path / "state", "32d", coinbase=False)
    engine = engine_for(config)
    await run_backfill(config, engine)
    baselines = engine.assets["BTC"].baselines
    full = 32 * DAY // MINUTE
    assert baselines["perp_spot_volume_ratio"].n_obs == full
    # Binance serves 30 days of open interest (less one row here) and the 24 h change needs a
    # row a day older: 29 days of samples, and the score says the baseline is not full.
    oi = baselines["oi_change_pct_24h"]
    assert 29 * DAY // MINUTE - 10 <= oi.n_obs <= 29 * DAY // MINUTE
    score = oi.score(0.0)
    assert score.z is not None and score.warmup and score.n_obs == oi.n_obs
    assert not baselines["perp_spot_volume_ratio"].score(1.0).warmup


class Gate:
    """An injected sleep that waits until the test releases it, and records what was asked."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self.sleeping = 0
        self._release = asyncio.Event()
        self._changed = asyncio.Condition()

    async def sleep(self, seconds: float) -> None:
        release = self._release
        async with self._changed:
            self.asked.append(seconds)
            self.sleeping += 1
            self._changed.notify_all()
        await release.wait()

    async def wait_sleeping(self, n: int) -> None:
        async with asyncio.timeout(30), self._changed:
            await self._changed.wait_for(lambda: self.sleeping >= n)

    def release(self) -> None:
        self.sleeping = 0
        release, self._release = self._release, asyncio.Event()
        release.set()


async def test_an_unreachable_venue_stops_the_backfill_after_the_newest_day_until_it_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A simulator's config, and then its port with nothing listening: every request refused.
    first = Simulator(port=0, symbols={"BTCUSDT": 78_000.0})
    await first.start()
    config = config_for(first, tmp_path / "state", "2d")
    await first.stop()
    sim = Simulator(port=first.port, symbols={"BTCUSDT": 78_000.0})
    host = f"127.0.0.1:{first.port}"
    engine = engine_for(config)
    caplog.set_level(logging.DEBUG, "tapewatch")
    rest = clients(config, HostReporter())  # one reporter for all, as in the daemon
    gate = Gate()
    backfill = HistoryFetch(
        config, filling(engine), rest, time.time_ns() // 1_000_000, sleep=gate.sleep
    )
    task = asyncio.create_task(backfill.run())
    # The newest day's first request of each series: perp klines, funding and open interest
    # (USDⓈ-M), spot klines (binance group); Coinbase candles (coinbase group).
    per_pass = {BINANCE_SPOT: 1, BINANCE_USDM: 3, COINBASE: 1}
    failed_passes = 7
    try:
        for n in range(1, failed_passes + 1):
            await gate.wait_sleeping(2)  # both groups stopped and wait for their next pass
            # Each pass asked for the newest day only, once per series, without retrying.
            assert {v: c.requests for v, c in rest.items()} == {
                v: n * k for v, k in per_pass.items()
            }
            assert backfill.progress.requests == 0
            assert backfill.stopped.keys() == {"binance", "coinbase"}
            if n == failed_passes:
                await sim.start()
            gate.release()
        await asyncio.wait_for(task, 60)
    finally:
        task.cancel()
        await sim.stop()
        for client in rest.values():
            await client.close()
    # 1 min, doubling, up to 30 min, per group.
    assert sorted(gate.asked) == sorted(2 * [60.0, 120.0, 240.0, 480.0, 960.0, 1800.0, 1800.0])

    def said(level: int, logger: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == level]

    # Said once per venue group, however many passes failed ...
    assert sorted(said(logging.WARNING, "tapewatch.backfill")) == [
        f"backfill {group}: cannot reach {host}; stopped at day 1 of 3; retrying in 1 min, then "
        "up to every 30 min"
        for group in ("binance", "coinbase")
    ]
    assert len(said(logging.DEBUG, "tapewatch.backfill")) >= 2 * (failed_passes - 1)
    assert said(logging.WARNING, "tapewatch.network") == [
        f"{host} refused the connection (ConnectionRefusedError: nothing listens there); "
        "retrying, next report in 1 min"
    ]
    # ... and once when it resumes; the history is then complete.
    resumed = said(logging.INFO, "tapewatch.backfill")
    assert sum("answers again; resumed at day 1" in m for m in resumed) == 2
    recovered = said(logging.INFO, "tapewatch.network")
    assert [m.split(" after ")[0] for m in recovered] == [f"{host} reachable again"]
    assert n_obs(engine)["coinbase_premium_pct"] == 2 * DAY // MINUTE
    assert backfill.stopped == {} and backfill.finished.keys() == {"binance", "coinbase"}
