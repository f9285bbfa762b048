"""A restart neither invents nor forgets a regime (issue 9, item 7).

The regime engine's state survives a checkpoint (pure tests); a daemon killed after a regime
change but before its checkpoint learns the change from the outbox (real daemon objects, real
SQLite); and end to end, a daemon SIGKILLed mid-regime and restarted keeps the retained regime,
sends no second entry and later publishes the exit of that same regime (simulator, daemon
processes, real Mosquitto).
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from monitor.config import Config, config_from_dict, deep_merge
from monitor.daemon import Daemon
from monitor.state import load_checkpoint
from signals.engine import SignalSnapshot
from signals.regimes import NEUTRAL, Condition, Reason, RegimeEngine, RegimeRule
from tests.conftest import REPO, Mosquitto, Subscriber, free_port

SELLERS = RegimeRule(
    name="seller_dominance",
    description="sellers",
    all=(Condition("taker_buy_sell_ratio", "below", 0.8, 0.9),),
    any=(),
    min_dwell=5.0,
    cooldown=30.0,
)
HOLD_MS = 20_000


def snap(t_s: float, ratio: float | None) -> SignalSnapshot:
    return SignalSnapshot("BTC", int(t_s * 1000), {"taker_buy_sell_ratio": ratio})


def through_json(state: dict[str, Any] | None) -> dict[str, Any]:
    """What a checkpoint's JSON metadata gives back."""
    assert state is not None
    return orjson.loads(orjson.dumps(state))


def seller_dominance_entered() -> RegimeEngine:
    engine = RegimeEngine("BTC", (SELLERS,))
    engine.evaluate(snap(0, 1.0))  # the session's first regime: neutral
    change = engine.evaluate(snap(10, 0.7))
    assert change is not None and change.regime == "seller_dominance"
    return engine


# -- the regime engine's state ----------------------------------------------------------------
def test_a_restored_regime_is_neither_entered_again_nor_forgotten() -> None:
    before = seller_dominance_entered()
    after = RegimeEngine("BTC", (SELLERS,))
    after.restore(through_json(before.state()), HOLD_MS)
    assert after.in_force() == before.in_force()
    assert (after.current, after.since) == ("seller_dominance", 10_000)
    # Hours later (event time) it still holds: nothing to announce.
    assert after.evaluate(snap(3600, 0.85)) is None
    change = after.evaluate(snap(3601, 0.95))
    assert change is not None
    assert (change.regime, change.previous, change.since) == (
        NEUTRAL,
        "seller_dominance",
        3_601_000,
    )
    assert change.reasons == (Reason("taker_buy_sell_ratio", 0.95, ">=", 0.9),)


def test_the_restart_warm_up_does_not_end_a_restored_regime_but_the_hold_is_bounded() -> None:
    engine = RegimeEngine("BTC", (SELLERS,))
    engine.restore(through_json(seller_dominance_entered().state()), HOLD_MS)
    # Empty windows after the restart: the signal is missing, which decides nothing yet.
    assert engine.evaluate(snap(100, None)) is None
    assert engine.evaluate(snap(100 + HOLD_MS / 1000 - 1, None)) is None
    # Still missing once the warm-up is over: that is an exit, as without a restart.
    change = engine.evaluate(snap(100 + HOLD_MS / 1000, None))
    assert change is not None and change.previous == "seller_dominance"
    assert change.reasons == (Reason("taker_buy_sell_ratio", None, "missing", None),)


def test_the_first_complete_snapshot_decides() -> None:
    engine = RegimeEngine("BTC", (SELLERS,))
    engine.restore(through_json(seller_dominance_entered().state()), HOLD_MS)
    assert engine.evaluate(snap(100, None)) is None
    change = engine.evaluate(snap(101, 1.0))  # the market moved on while the daemon was down
    assert change is not None
    assert (change.regime, change.previous, change.since) == (NEUTRAL, "seller_dominance", 101_000)
    # Once decided, a missing value ends a regime at once again (no hold after the first).
    assert engine.evaluate(snap(200, 0.7)) is not None
    assert engine.evaluate(snap(206, None)) is not None


def test_cooldowns_survive_a_restart() -> None:
    engine = seller_dominance_entered()
    engine.evaluate(snap(20, 1.0))  # ends at t=20; cooldown 30 s
    restored = RegimeEngine("BTC", (SELLERS,))
    restored.restore(through_json(engine.state()))
    assert restored.current == NEUTRAL
    assert restored.evaluate(snap(40, 0.7)) is None  # still cooling down
    change = restored.evaluate(snap(50, 0.7))
    assert change is not None and change.regime == "seller_dominance"


def test_a_state_the_rules_cannot_take_is_refused_and_changes_nothing() -> None:
    state = through_json(seller_dominance_entered().state())
    other = RegimeEngine("BTC", (RegimeRule("other", "", SELLERS.all, (), 0.0, 0.0),))
    with pytest.raises(ValueError, match="no longer among the rules"):
        other.restore(state)
    with pytest.raises(ValueError, match="unreadable"):
        other.restore({**state, "regime": "other", "since": "soon"})
    assert other.current is None and other.in_force() is None


# -- a daemon killed between a regime change and its checkpoint ---------------------------------
def quiet_config(tmp_path: Path) -> Config:
    """The shipped config with the simulator's demo rule; no broker answers on its port (the
    publisher never runs here: these daemons are only built, as a restarted process is)."""
    data = yaml.safe_load((REPO / "config.yaml").read_text())
    over = {
        "instance": "restart",
        "mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}", "broker": "external"},
        "state": {"dir": str(tmp_path / "state")},
        "regimes": [
            {
                "name": "seller_dominance",
                "description": "sellers",
                "all": [{"signal": "taker_buy_sell_ratio", "below": 0.8, "exit_below": 0.9}],
                "min_dwell": "5s",
                "cooldown": "30s",
            }
        ],
    }
    return config_from_dict(deep_merge(data, over), env={})


def drive(daemon: Daemon, t_s: float, ratio: float) -> list[Any]:
    """One snapshot through the daemon's own regime engine, message builder and publisher
    (what ``Pipeline.feed_event`` does with a snapshot), to the outbox."""
    pipeline, publisher = daemon.pipeline, daemon.publisher
    assert publisher is not None
    change = pipeline.regimes["BTC"].evaluate(snap(t_s, ratio))
    msgs = pipeline.builder.regime(change, int(t_s * 1000)) if change else []
    for msg in msgs:
        publisher.publish(msg)
    return msgs


def killed(daemon: Daemon) -> None:
    """What SIGKILL leaves: the files as they are (the outbox's last transaction committed)."""
    assert daemon.publisher is not None and daemon.publisher.outbox is not None
    daemon.publisher.outbox.close()


@pytest.mark.parametrize("delivered", [False, True], ids=["pending", "delivered"])
async def test_a_change_after_the_last_checkpoint_is_taken_from_the_outbox(
    tmp_path: Path, delivered: bool
) -> None:
    config = quiet_config(tmp_path)
    first = Daemon(config)
    drive(first, 0, 1.0)
    first.save_checkpoint()  # says: neutral
    entered = drive(first, 10, 0.7)  # seller_dominance; killed before the next checkpoint
    event = entered[-1].payload
    outbox = first.publisher.outbox if first.publisher else None
    assert outbox is not None and event["id"].endswith(":BTC:1")
    if delivered:  # the broker had it: it left the outbox's queue, not its memory
        [(row, _)] = outbox.peek(5)
        outbox.ack(row)
        assert len(outbox) == 0
    _, meta = load_checkpoint(first.checkpoint_path)
    assert meta["regimes"]["BTC"]["regime"] == NEUTRAL
    killed(first)

    second = Daemon(config)
    engine = second.pipeline.regimes["BTC"]
    assert (engine.current, engine.since) == ("seller_dominance", 10_000)
    [restored] = second.restored_regimes
    assert restored.regime == "seller_dominance" and restored.previous == NEUTRAL
    assert [r.signal for r in restored.reasons] == ["taker_buy_sell_ratio"]
    assert second.pipeline.builder.last_event_id["BTC"] == event["id"]
    # Still selling: no event. Then the exit is the exit of the regime entered before the kill.
    assert drive(second, 20, 0.7) == []
    [state, exit_event] = drive(second, 30, 1.0)
    assert state.retain and state.payload["regime"] == exit_event.payload["regime"] == NEUTRAL
    assert exit_event.payload["previous"] == "seller_dominance"
    killed(second)


async def test_a_checkpoint_newer_than_the_outbox_wins(tmp_path: Path) -> None:
    config = quiet_config(tmp_path)
    first = Daemon(config)
    drive(first, 0, 1.0)
    drive(first, 10, 0.7)
    drive(first, 20, 1.0)  # ends at 20 s: cooldown until 50 s
    first.save_checkpoint()
    killed(first)

    second = Daemon(config)
    engine = second.pipeline.regimes["BTC"]
    assert (engine.current, engine.since) == (NEUTRAL, 20_000)
    assert drive(second, 40, 0.7) == []  # the cooldown came through the restart too
    assert drive(second, 50, 0.7)[-1].payload["regime"] == "seller_dominance"
    killed(second)


# -- end to end: SIGKILL mid-regime -------------------------------------------------------------
SPEED = 4.0


def delivered_id(path: Path, topic: str) -> str | None:
    """The event id of ``topic``'s newest acknowledged outbox message (None: none yet)."""
    if not path.exists():
        return None
    uri = f"file:{path}?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=5) as db:
        try:
            row = db.execute("SELECT payload FROM delivered WHERE topic = ?", (topic,)).fetchone()
        except sqlite3.OperationalError:  # created, no table yet
            return None
    return None if row is None else orjson.loads(row[0]).get("id")


async def wait_until(check: Any, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        await asyncio.sleep(0.1)


@pytest.mark.timeout(120)
async def test_sigkill_mid_regime_then_restart_keeps_the_regime_and_sends_its_exit(
    start_simulator: Any, mosquitto: Mosquitto, prefix: str, subscribe: Any, tmp_path: Path
) -> None:
    # sell_wave: calm 0-10 s, sellers 10-50 s, calm to 100 s (event time); the simulator's demo
    # rule enters seller_dominance on a 30 s taker buy/sell ratio below 0.8 and leaves above 0.9.
    sim = await start_simulator(scenario="sell_wave", speed=SPEED, seed=3)
    data = sim.config_for(yaml.safe_load((REPO / "config.yaml").read_text()))
    data = deep_merge(
        data,
        {
            "mqtt": {"url": mosquitto.url, "prefix": prefix, "broker": "external"},
            "signals": {"backfill": False},
            "collector": {"backoff_initial": "100ms", "backoff_max": "1s"},
        },
    )
    config_path = tmp_path / "sim.yaml"
    config_path.write_text(yaml.safe_dump(data))
    state = tmp_path / data["state"]["dir"]
    outbox = state / f"{data['instance']}.outbox.sqlite"
    regime, events = f"{prefix}/BTC/regime", f"{prefix}/BTC/events"
    sub: Subscriber = await subscribe(regime, events)
    procs: list[subprocess.Popen[bytes]] = []

    def start(n: int) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"daemon-{n}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "monitor", "run", "--config", str(config_path)],
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        procs.append(proc)
        return proc, log

    def entries(s: Subscriber) -> list[dict[str, Any]]:
        return [e for e in s.on(events) if e["regime"] == "seller_dominance"]

    try:
        first, log1 = start(1)
        await sub.wait_for(lambda s: entries(s), timeout=45)
        [entry] = entries(sub)
        # The entry is durable (its outbox row is committed and acknowledged); then kill -9 at
        # once, whether or not a checkpoint behind it has been written yet. Seeing the entry on
        # the broker is not enough: the row is written while the message is being delivered.
        await wait_until(
            lambda: delivered_id(outbox, events) == entry["id"], 10, "the entry's PUBACK", log1
        )
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        before = len(sub.messages)

        second, log2 = start(2)

        def after_restart(s: Subscriber) -> list[dict[str, Any]]:
            return [p for t, p, _ in s.messages[before:] if t in (regime, events)]

        def exited(s: Subscriber) -> bool:
            return any(
                p.get("type") == "regime_change" and p["previous"] == "seller_dominance"
                for p in after_restart(s)
            )

        await sub.wait_for(exited, timeout=60)
        assert second.poll() is None, log2.read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    later = after_restart(sub)
    session = later[0]["session"]
    assert session != entry["session"]
    # The retained regime after the restart: the same regime, same since and reasons, as a
    # state message (no previous: null, no event), before anything else of the new session.
    republished = later[0]
    assert "id" not in republished
    assert republished["regime"] == "seller_dominance"
    assert republished["since"] == entry["since"]
    assert republished["previous"] == entry["previous"] == NEUTRAL
    assert republished["reasons"] == entry["reasons"]
    # No second entry under a new id; the exit is that regime's, from the new session.
    assert {e["id"] for e in entries(sub)} == {entry["id"]}
    new_events = [p for p in later if p.get("type") == "regime_change"]
    assert [(e["regime"], e["previous"], e["session"]) for e in new_events] == [
        (NEUTRAL, "seller_dominance", session)
    ]
    assert new_events[0]["since"] > entry["since"]
    assert all(p["previous"] is not None for p in later)
