"""Replay equals live with history on: a daemon that restored a checkpoint and fetched its
start-up history records both onto its tape (``run --record``), and the replay of that tape
publishes exactly the signals and regimes the live session published.

Two real sessions against the simulator (its REST history too) and a real Mosquitto: the first
leaves a checkpoint and a history cache; the second, recorded, restores the one and loads and
extends the other.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from monitor.config import Config
from monitor.daemon import Daemon
from monitor.history_tape import HISTORY, RESTORE
from monitor.recorder import Recorder
from monitor.replay import replay_messages
from streams.tape import TapeRecord, merge
from tests.conftest import Mosquitto, sim_config

ASSET = "BTC"


def config_for(sim: Any, mosquitto: Mosquitto, prefix: str, state: Path) -> Config:
    signals = {
        "backfill": True,
        "flow_window": "1h",
        "baseline_window": "2d",
        "baseline_min_history": "1h",
    }
    return sim_config(
        sim,
        signals=signals,
        state={"dir": str(state)},
        mqtt={"url": mosquitto.url, "prefix": prefix, "broker": "external"},
    )


async def run_until(daemon: Daemon, sub: Any, topic: str, count: int) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await sub.wait_for(lambda s: len(s.on(topic)) >= count, timeout=120)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def signals_of(messages: Any, topic: str) -> dict[int, dict[str, Any]]:
    return {m.payload["seq"]: m.payload for m in messages if m.topic == topic}


def with_z(payload: dict[str, Any]) -> int:
    return sum(1 for entry in payload["signals"].values() if entry.get("z") is not None)


async def test_the_replay_of_a_stateful_session_publishes_what_it_published(
    start_simulator: Any, mosquitto: Mosquitto, prefix: str, subscribe: Any, tmp_path: Path
) -> None:
    sim = await start_simulator(speed=5.0, seed=5, symbols={"BTCUSDT": 78_000.0})
    state = tmp_path / "state"
    config = config_for(sim, mosquitto, prefix, state)
    topic = f"{prefix}/{ASSET}/signals"

    # Session 1 leaves a checkpoint and a history cache behind.
    first = await subscribe(topic)
    await run_until(Daemon(config), first, topic, 10)
    ended = max(p["ts_event"] for p in first.on(topic))
    assert (state / f"{config.instance}.npz").exists()
    assert list((state / "history").glob("*.npz"))

    # Session 2 restores them, fetches the minutes since, and records.
    tape = tmp_path / "stateful.tape.jsonl.zst"
    events = f"{prefix}/{ASSET}/events"
    sub = await subscribe(topic, events)
    await run_until(Daemon(config, recorder=Recorder(tape)), sub, topic, 40)

    records = list(merge([tape]))
    kinds = [r.ctl.get("kind") for r in records if r.ctl is not None]
    assert kinds[0] == RESTORE  # the state comes first, before any frame
    assert records[0].ctl is not None and records[0].ctl["kind"] == RESTORE
    assert HISTORY in kinds

    # Session 1's last signals message is retained: it is not session 2's.
    live = {p["seq"]: p for p in sub.on(topic) if p["ts_event"] > ended}
    assert len(live) >= 30
    # The history reached the engine: z-scores are published from the start.
    assert max(with_z(p) for p in live.values()) >= 3

    replayed = signals_of(replay_messages(records, config, base=tmp_path), topic)
    for seq, payload in live.items():
        assert replayed[seq]["ts_event"] == payload["ts_event"], f"seq {seq}"
        assert replayed[seq]["signals"] == payload["signals"], f"seq {seq}"
    # Regime changes (the restored regime is republished live, but it is no change).
    live_changes = [(p["regime"], p["since"]) for p in sub.on(events)]
    replay_changes = [
        (m.payload["regime"], m.payload["since"])
        for m in replay_messages(records, config, base=tmp_path)
        if m.topic == events
    ]
    assert live_changes == replay_changes[: len(live_changes)]

    # Without the state and the history records the same frames give other numbers: the
    # comparison above depends on them.
    bare: list[TapeRecord] = [
        r for r in records if r.ctl is None or r.ctl.get("kind") not in (RESTORE, HISTORY)
    ]
    without = signals_of(replay_messages(bare, config), topic)
    assert any(without[seq]["signals"] != live[seq]["signals"] for seq in live if seq in without)
