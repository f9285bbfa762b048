"""Every seed narrative end to end: simulator (real websockets and REST) → daemon with the
shipped rules → real Mosquitto → subscriber.

The simulator plays the narrative (10 min of calm, then the narrative held) at 20x, so the calm
takes 30 s of wall time; the daemon backfills a 7-day baseline from the simulator's history, as
a fresh install would from the exchanges, and runs config.yaml's five rules with the compressed
signal windows of ``NARRATIVE_WINDOWS``. One asset (BTC) keeps the load under one core.

What a dashboard and an alert worker rely on is checked for each narrative: the retained
``<prefix>/BTC/regime`` becomes the narrative's regime, entered from ``neutral`` for the
reasons its rule names; nothing else is entered on the way; there is exactly one ``events``
message per change, with unique ids; a subscriber connecting afterwards gets the regime at
once. (Every narrative against every rule, without sockets: tests/test_scenario_regimes.py.)
"""

from __future__ import annotations

from typing import Any

import pytest

from simulator.scenarios import BASELINE_MS, NARRATIVES
from tests.conftest import Mosquitto
from tests.test_daemon import RunningDaemon, daemon_config

# Not faster: the simulator needs most of a core at 40x with two assets, and this suite must
# pass with the other core busy. (The engine's event-time bounds are widened by the speed in
# the simulator's config, so time compression alone no longer empties the signals.)
SPEED = 20.0
SEED = 7
# Event time by which the narrative's regime must be on the topic: 10 min of calm, then at most
# ~10 min of the narrative (distribution rallies for 3 min first). The simulator is paced, so on
# a busy machine the market slows down with the daemon: the test waits on event time.
DEADLINE_MS = BASELINE_MS + 13 * 60_000
# Wall seconds: only a safety net against a hang (about 40 s are needed on an idle machine).
SAFETY_S = 600.0


@pytest.mark.timeout(900)
@pytest.mark.parametrize("narrative", sorted(NARRATIVES))
async def test_each_narrative_reaches_its_regime_over_mqtt(
    narrative: str, start_simulator: Any, mosquitto: Mosquitto, prefix: str, subscribe: Any
) -> None:
    sim = await start_simulator(
        scenario=narrative, speed=SPEED, seed=SEED, symbols={"BTCUSDT": 78_000.0}
    )
    config = daemon_config(sim, mosquitto.url, prefix, signals={"backfill": True})
    rules = {rule.name: rule for rule in config.regimes}
    assert list(config.assets) == ["BTC"] and narrative in rules  # the shipped seed rules
    regime, events = f"{prefix}/BTC/regime", f"{prefix}/BTC/events"
    # The signals (one message per second of event time) wake the wait below as time passes.
    sub = await subscribe(regime, events, f"{prefix}/BTC/signals")
    running = RunningDaemon(config)

    def entered(s: Any) -> list[str]:
        return [p["regime"] for p in s.on(regime)]

    await sub.wait_for(
        lambda s: narrative in entered(s) or sim.elapsed_ms() > DEADLINE_MS, timeout=SAFETY_S
    )
    assert narrative in entered(sub), (
        f"{narrative} not entered by {sim.elapsed_ms() / 60_000:.1f} min of event time: "
        f"{entered(sub)}"
    )
    await sub.wait_for(lambda s: narrative in [e["regime"] for e in s.on(events)])
    await running.close()

    history = sub.on(regime)
    assert history[0]["regime"] == "neutral" and history[0]["previous"] is None
    first = next(p for p in history if p["regime"] == narrative)
    assert first["previous"] == "neutral"
    # The reasons are the rule's conditions, each with the value that met it.
    conditions = {c.signal for c in rules[narrative].all}
    assert {r["signal"] for r in first["reasons"]} == conditions
    assert all(r["value"] is not None for r in first["reasons"])
    # Up to the narrative's regime, nothing but neutral was entered (the calm stays calm, and
    # no other seed rule fires on the way in).
    assert set(entered(sub)[: entered(sub).index(narrative)]) == {"neutral"}
    # Exactly one events message per change, in order, each id once.
    changes = [p for p in history if p["previous"] is not None]
    got = sub.on(events)
    assert [(e["regime"], e["previous"]) for e in got] == [
        (c["regime"], c["previous"]) for c in changes
    ]
    assert len({e["id"] for e in got}) == len(got)

    # A subscriber connecting now gets the regime at once: retained, and the last one published.
    late = await subscribe(regime)
    await late.wait_for(lambda s: s.on(regime))
    assert late.on(regime)[-1]["regime"] == history[-1]["regime"]
    assert late.messages[0][2]  # the retain flag
