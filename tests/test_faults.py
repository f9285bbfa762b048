"""Collectors against the simulator with one fault injected per run.

Each test runs the real daemon (sockets, REST, books, continuity; no MQTT needed) against the
simulator and waits for what a user would look for in the health report: the fault seen, the
damage repaired, and the daemon still running.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from monitor.daemon import Daemon
from simulator.server import Simulator
from tests.conftest import sim_config

BACKOFF_MAX_S = 1.0


class Run:
    def __init__(self, sim: Simulator, daemon: Daemon) -> None:
        self.sim = sim
        self.daemon = daemon
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(daemon.run(self.stop))

    def report(self) -> dict[str, Any]:
        return self.daemon.pipeline.health_report(0)

    async def until(self, condition: Callable[[dict[str, Any]], bool], timeout: float = 30) -> None:
        """Wait for a condition on the health report (polled, bounded)."""
        async with asyncio.timeout(timeout):
            while not condition(self.report()):
                assert not self.task.done(), f"daemon died: {self.task.exception()!r}"
                await asyncio.sleep(0.05)


@pytest.fixture
async def run_with(start_simulator: Any) -> AsyncIterator[Callable[..., Any]]:
    runs: list[Run] = []

    async def start(*faults: str, **sim_kw: Any) -> Run:
        sim = await start_simulator(speed=2.0, seed=5, faults=frozenset(faults), **sim_kw)
        collector = {
            "backoff_initial": "100ms",
            "backoff_max": f"{BACKOFF_MAX_S}s",
            "stall_timeout": "2s",
            "silence_timeout": "5s",
            "book_limit": 100,
        }
        run = Run(sim, Daemon(sim_config(sim, collector=collector), publish=False))
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.stop.set()
        await asyncio.wait_for(run.task, 15)


def books(r: dict[str, Any]) -> dict[str, Any]:
    return r["books"]


def all_synced(r: dict[str, Any]) -> bool:
    return all(b["synced"] for b in r["books"].values())


def trades_complete(r: dict[str, Any]) -> bool:
    return all(t["missing"] == 0 for t in r["trades"].values())


async def test_baseline_every_book_syncs_and_no_trade_is_missing(run_with: Any) -> None:
    run = await run_with()
    # 6 books (BTC, ETH on three venues); trades also for Coinbase USDT-USD, the price of USDT
    # in USD behind the adjusted premium, which has no book.
    await run.until(lambda r: all_synced(r) and len(r["books"]) == 6 and len(r["trades"]) == 7)
    assert any(key.endswith("USDT-USD") for key in run.report()["trades"])
    r = run.report()
    assert all(b["gaps"] == 0 and b["crossed"] == 0 for b in r["books"].values()), r["books"]
    # Duplicates are allowed: Coinbase's snapshot of recent trades on subscribe may overlap the
    # first update batch, and de-duplication by id is exactly what absorbs it.
    bad = {k: t for k, t in r["trades"].items() if t["gaps"] or t["missing"] or t["lost"]}
    assert not bad, bad
    assert sum(r["malformed"].values()) == 0


async def test_dropped_connections_reconnect_and_every_missed_trade_is_backfilled(
    run_with: Any,
) -> None:
    run = await run_with("drop", fault_every=2.0)
    links = run.daemon.health.streams

    def recovered(r: dict[str, Any]) -> bool:
        # Every link lost and opened again (a count of reconnects alone is met while some are
        # still in their back-off, and a link still down has no trade gap to show yet).
        dropped = all(link.last_outage_s is not None for link in links.values())
        gaps = sum(t["gaps"] for t in r["trades"].values())
        return dropped and gaps > 0 and trades_complete(r) and all_synced(r)

    await run.until(recovered, timeout=45)
    r = run.report()
    for name, t in r["trades"].items():
        # Every gap the drops opened was filled from REST: ids are contiguous again.
        assert t["lost"] == 0 and t["recovered_gaps"] == t["gaps"], (name, t)
    # Every outage ended within the back-off budget: a capped wait plus a loopback connect.
    assert all(0 < link.max_outage_s <= BACKOFF_MAX_S + 1.0 for link in links.values()), {
        name: link.max_outage_s for name, link in links.items()
    }


async def test_a_stalled_stream_is_detected_and_healed(run_with: Any) -> None:
    run = await run_with("stall", fault_every=1.0, stall_seconds=4.0)
    links = run.daemon.health.streams
    await run.until(lambda r: any(link.stalls for link in links.values()), timeout=30)
    stalled = [link for link in links.values() if link.stalls]
    assert any("depth" in s or "heartbeats" in s for link in stalled for s in link.stalled)
    # Healed: after the reconnect the books are synced again.
    await run.until(all_synced, timeout=30)


async def test_a_skipped_depth_update_resyncs_that_symbol_only(run_with: Any) -> None:
    run = await run_with("skip_depth", fault_every=2.0, fault_symbol="BTCUSDT")

    def resynced(r: dict[str, Any]) -> bool:
        b = books(r)
        return (
            b["binance-usdm/BTCUSDT"]["gaps"] > 0
            and b["binance-spot/BTCUSDT"]["gaps"] > 0
            and all_synced(r)
        )

    await run.until(resynced, timeout=40)
    b = books(run.report())
    for other in ("binance-usdm/ETHUSDT", "binance-spot/ETHUSDT"):
        assert b[other]["gaps"] == 0 and b[other]["resyncs"] == 0, (other, b[other])


async def test_duplicated_and_reordered_frames_lose_and_double_nothing(run_with: Any) -> None:
    run = await run_with("duplicate", "reorder", fault_every=0.5, fault_symbol="BTCUSDT")

    def seen(r: dict[str, Any]) -> bool:
        dups = sum(t["duplicates"] for t in r["trades"].values())
        return dups >= 3 and trades_complete(r)

    await run.until(seen, timeout=40)
    assert all(t["lost"] == 0 for t in run.report()["trades"].values())


async def test_malformed_frames_are_counted_and_the_daemon_keeps_going(run_with: Any) -> None:
    run = await run_with("malformed", fault_every=0.2)
    await run.until(lambda r: sum(r["malformed"].values()) >= 10 and all_synced(r), timeout=40)
    frames_then = sum(run.daemon.health.frames.values())
    await run.until(lambda r: sum(run.daemon.health.frames.values()) > frames_then + 50)


@pytest.mark.parametrize("fault", ["rest_429", "rest_418"])
async def test_rate_limits_are_obeyed_and_books_still_sync(run_with: Any, fault: str) -> None:
    run = await run_with(fault, fault_every=0.5)
    rest = run.daemon.rest

    def limited_then_synced(r: dict[str, Any]) -> bool:
        hits = sum(c.rate_limited + c.banned for c in rest.values())
        return hits > 0 and all_synced(r)

    await run.until(limited_then_synced, timeout=45)
    counter = "rate_limited" if fault == "rest_429" else "banned"
    assert sum(getattr(c, counter) for c in rest.values()) > 0


async def test_a_coinbase_sequence_gap_resubscribes_and_rebuilds_the_books(
    run_with: Any,
) -> None:
    run = await run_with("skip_depth", fault_every=2.0, fault_symbol="BTC-USD")
    link = run.daemon.health.streams["coinbase"]

    def rebuilt(r: dict[str, Any]) -> bool:
        return r["coinbase_sequence_gaps"] > 0 and link.reconnects > 0 and all_synced(r)

    await run.until(rebuilt, timeout=40)
    assert "requested" in (link.last_error or "")
