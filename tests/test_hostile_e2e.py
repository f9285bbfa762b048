"""Hostile and partial input end to end: the real daemon against the simulator, through a real
Mosquitto, asserting what subscribers receive.

- A venue that never connects (its URL on a closed port): its signals and the all-venue ones
  are published as null, never 0 or a sum of the venues that remain, and health names it.
- ``--fault hostile`` with a dead USDⓈ-M /market: forged timestamps, id jumps, absurd prices
  and 3,000 unknown symbols; nothing false is published and the health counters equal what the
  simulator injected.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from monitor.config import Config
from simulator.hostile import (
    ABSURD_PRICE,
    ABSURD_PRICE150,
    FUTURE_TS,
    HOSTILE_KINDS,
    ID_JUMP,
    ID_JUMP50,
    UNKNOWN_SYMBOL,
)
from simulator.server import Simulator
from tests.conftest import Mosquitto, Subscriber, free_port
from tests.test_daemon import RunningDaemon, daemon_config
from tests.test_hostile_input import COINBASE, COMBINED, PERP, SPOT
from tests.test_hostile_input import PERP_ONLY as PERP_SIGNALS


def values(sub: Subscriber, topic: str) -> list[dict[str, Any]]:
    return [p["signals"] for p in sub.on(topic)]


def latest_health(sub: Subscriber, prefix: str, config: Config) -> dict[str, Any] | None:
    reports = sub.on(f"{prefix}/health/{config.instance}")
    return reports[-1] if reports else None


@pytest.mark.parametrize(
    ("venue_key", "url_key", "dead_signals", "live_signal", "silent"),
    [
        (
            "binance_usdm",
            "market_ws",
            (*PERP_SIGNALS, *COMBINED),
            "taker_imbalance_spot",
            (f"{PERP}/market", f"{PERP}/BTCUSDT"),
        ),
        (
            "coinbase",
            "ws",
            ("taker_imbalance_coinbase", *COMBINED, "coinbase_premium_pct"),
            "taker_imbalance_perp",
            (COINBASE, f"{COINBASE}/BTC-USD"),
        ),
    ],
)
async def test_a_venue_that_never_connects_is_published_as_null(
    start_simulator: Any,
    mosquitto: Mosquitto,
    prefix: str,
    subscribe: Any,
    venue_key: str,
    url_key: str,
    dead_signals: tuple[str, ...],
    live_signal: str,
    silent: tuple[str, str],
) -> None:
    sim = await start_simulator(scenario="calm", speed=5.0, seed=5)
    closed = f"ws://127.0.0.1:{free_port()}/nothing-listens-here"
    config = daemon_config(
        sim,
        mosquitto.url,
        prefix,
        venues={venue_key: {url_key: closed}},
        collector={"silence_timeout": "3s"},  # marks the dead venue sooner, in event time too
    )
    sub = await subscribe(f"{prefix}/#")
    running = RunningDaemon(config)
    topic = f"{prefix}/BTC/signals"
    socket_name, feed = silent

    def settled(s: Subscriber) -> bool:
        live = sum(v[live_signal]["value"] is not None for v in values(s, topic))
        health = latest_health(s, prefix, config)
        return live >= 5 and health is not None and feed in health["silent_feeds"]

    await sub.wait_for(settled, timeout=60)
    await running.close()
    published = values(sub, topic)
    assert len(published) >= 5
    for snap in published:
        for name in dead_signals:
            assert snap[name]["value"] is None, (name, snap[name])
    health = latest_health(sub, prefix, config)
    assert health is not None
    assert socket_name in health["silent_streams"]
    assert health["streams"][socket_name]["frames"] == 0
    assert not health["streams"][socket_name]["connected"]


async def test_hostile_simulator_publishes_nothing_false(
    mosquitto: Mosquitto, prefix: str, subscribe: Any
) -> None:
    sim = Simulator(
        port=0,
        scenario="calm",
        speed=5.0,
        seed=11,
        faults=frozenset({"hostile"}),
        fault_every=0.4,
        hostile_rounds=1,
        unknown_symbols=3000,
        dead_venues={"binance-usdm/market"},
    )
    await sim.start()
    try:
        config = daemon_config(sim, mosquitto.url, prefix)
        sub = await subscribe(f"{prefix}/#")
        running = RunningDaemon(config)
        health = running.daemon.health
        pipeline = running.daemon.pipeline
        started_ms = time.time() * 1000
        injected = sim.fault_counts

        def rejected(venue: str, kind: str) -> int:
            return health.rejected[(venue, kind)]

        def every_kind_seen() -> bool:
            if not all(injected[f"hostile:{kind}"] for kind in HOSTILE_KINDS):
                return False
            trades = pipeline.continuity.report()
            jumps = injected[f"hostile:{SPOT}:{ID_JUMP}"] + injected[f"hostile:{SPOT}:{ID_JUMP50}"]
            return (
                rejected(SPOT, FUTURE_TS) == injected[f"hostile:{SPOT}:{FUTURE_TS}"] > 0
                and rejected(SPOT, UNKNOWN_SYMBOL) == injected[f"hostile:{SPOT}:{UNKNOWN_SYMBOL}"]
                and trades[f"{SPOT}/BTCUSDT"]["suspects_dropped"] == jumps > 0
            )

        # The id_jump forgery is dropped once the real sequence outlived it by a minute of
        # event time: 12 s of wall time at 5x.
        await sub.wait_for(lambda s: every_kind_seen(), timeout=90)
        await running.close()

        # Every injected frame is counted under its own kind, on every venue that received it.
        for venue in (SPOT, COINBASE):
            assert rejected(venue, FUTURE_TS) == injected[f"hostile:{venue}:{FUTURE_TS}"] > 0
            absurd = sum(injected[f"hostile:{venue}:{k}"] for k in (ABSURD_PRICE, ABSURD_PRICE150))
            assert rejected(venue, "notional") == absurd > 0
        assert rejected(SPOT, UNKNOWN_SYMBOL) == injected[f"hostile:{SPOT}:{UNKNOWN_SYMBOL}"] > 0
        assert rejected(PERP, UNKNOWN_SYMBOL) == injected[f"hostile:{PERP}:{UNKNOWN_SYMBOL}"] > 0
        assert running.daemon.queue.dropped == 0
        # No state for them: the continuity and the books know the configured symbols only.
        configured = {(v, s) for v, s in pipeline.books} | {(COINBASE, "USDT-USD")}
        assert set(pipeline.continuity.symbols) <= configured
        for name, counts in pipeline.continuity.report().items():
            assert (counts["lost"], counts["missing"]) == (0, 0), (name, counts)

        # Nothing false was published: a calm market enters no regime, every value is finite
        # and plausible, no time stamp comes from the future, and the dead venue reads null.
        assert all(r["regime"] == "neutral" for r in sub.on(f"{prefix}/BTC/regime"))
        assert sub.on(f"{prefix}/BTC/events") == []
        published = sub.on(f"{prefix}/BTC/signals")
        assert len(published) > 10
        event_limit = started_ms + 3_600_000  # 5x for a minute and a half is far less than that
        for message in published:
            assert message["ts_event"] < event_limit
            snap = message["signals"]
            for name, entry in snap.items():
                value = entry["value"]
                assert value is None or math.isfinite(value), (name, value)
            for name in (*PERP_SIGNALS, *COMBINED):
                assert snap[name]["value"] is None, (name, snap[name])
            price = snap["price"]["value"]
            assert price is None or 50_000 < price < 110_000  # the simulator's BTC is ~78,000
        assert any(s["signals"]["taker_imbalance_spot"]["value"] is not None for s in published)
        report = latest_health(sub, prefix, config)
        assert report is not None
        assert f"{PERP}/market" in report["silent_streams"]
        assert "FAKE0001USDT" not in str(report)  # one counter per venue, no entry per symbol
    finally:
        await sim.stop()
