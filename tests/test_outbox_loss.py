"""Lost outbox contents are never silent (issue 9, item 8).

The outbox's marks (last id, pending ids, highest acknowledged id) go into the checkpoint; at the
next start, events that left the outbox without the broker's acknowledgement (the file removed,
emptied, replaced) are an ERROR naming how many, and the health topic carries the number. Real
SQLite files throughout; the last test runs the daemon against the simulator and Mosquitto.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from monitor.daemon import Daemon
from monitor.messages import OutMessage
from monitor.outbox import SCHEMA_VERSION, Loss, Outbox, OutboxMarks, lost_since
from tests.conftest import Mosquitto, free_port, sim_config
from tests.test_daemon import RunningDaemon
from tests.test_outbox import builder, events, regime_flips

STRANDED = 12  # the "12 events never arrive"


def remove(path: Path) -> None:
    """The outbox file gone, with its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def fill(path: Path, n: int, session: str = "s1") -> tuple[Outbox, list[int]]:
    outbox = Outbox(path)
    ids = [outbox.append(m) for m in events(regime_flips(builder("p/v1", session), n))]
    return outbox, ids


def sql(path: Path, statement: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(statement)
        db.commit()


# -- the outbox's marks -------------------------------------------------------------------------
def test_marks_round_trip_through_checkpoint_data(tmp_path: Path) -> None:
    outbox, ids = fill(tmp_path / "o.sqlite", 6)
    outbox.ack(ids[0])
    outbox.ack(ids[1])
    marks = outbox.marks()
    assert marks == OutboxMarks(last_id=6, pending=(3, 4, 5, 6), acked=2)
    assert marks.as_data() == {"last_id": 6, "pending": [[3, 6]], "acked": 2}
    assert OutboxMarks.from_data(marks.as_data()) == marks
    with pytest.raises(ValueError):
        OutboxMarks.from_data({"last_id": 6})
    outbox.close()


def test_a_removed_outbox_is_a_loss_of_what_it_held(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    outbox, _ = fill(path, STRANDED)
    saved = outbox.marks()
    outbox.close()
    remove(path)
    fresh = Outbox(path)
    loss = lost_since(saved, fresh.marks())
    assert loss is not None and loss.count == STRANDED
    assert "removed or replaced" in loss.why
    fresh.close()


def test_an_emptied_outbox_is_a_loss_of_what_it_held(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    outbox, _ = fill(path, STRANDED)
    saved = outbox.marks()
    outbox.close()
    sql(path, "DELETE FROM outbox")
    again = Outbox(path)
    assert lost_since(saved, again.marks()) == Loss(STRANDED, "event ids 1-12 left it undelivered")
    again.close()


def test_events_delivered_after_the_checkpoint_are_not_a_loss(tmp_path: Path) -> None:
    outbox, ids = fill(tmp_path / "o.sqlite", STRANDED)
    saved = outbox.marks()
    for i in ids:  # the broker came back and had them all
        outbox.ack(i)
    more = outbox.append(events(regime_flips(builder("p/v1", "s2"), 1))[0])
    assert lost_since(saved, outbox.marks()) is None
    outbox.ack(more)
    assert lost_since(saved, outbox.marks()) is None
    outbox.close()


def test_only_what_left_undelivered_counts(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    outbox, ids = fill(path, 8)
    saved = outbox.marks()
    for i in ids[:3]:
        outbox.ack(i)  # 1-3 delivered
    later = [outbox.append(m) for m in events(regime_flips(builder("p/v1", "s2"), 3))]
    outbox.close()
    # One pending at the checkpoint and one appended after it vanish without a PUBACK.
    sql(path, f"DELETE FROM outbox WHERE id IN ({ids[5]}, {later[1]})")
    again = Outbox(path)
    assert lost_since(saved, again.marks()) == Loss(2, "event ids 6, 10 left it undelivered")
    again.close()


def test_a_version_1_outbox_is_upgraded_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
            "payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, "
            "created_ms INTEGER NOT NULL)"
        )
        db.execute("PRAGMA user_version=1")
        msg = events(regime_flips(builder("p/v1", "old"), 1))[0]
        db.execute(
            "INSERT INTO outbox (topic, payload, qos, retain, created_ms) VALUES (?, ?, 1, 0, 0)",
            (msg.topic, msg.payload_bytes()),
        )
        db.commit()
    outbox = Outbox(path)
    assert outbox.moved_aside is None
    assert outbox.peek(5) == [(1, msg)]
    outbox.ack(1)
    assert outbox.latest([msg.topic]) == {msg.topic: (1, msg.payload)}
    outbox.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_latest_is_the_newest_message_per_topic_delivered_or_not(tmp_path: Path) -> None:
    outbox, ids = fill(tmp_path / "o.sqlite", 3)
    eth = OutMessage("p/v1/ETH/events", {"id": "s1:ETH:1"}, 1, False)
    eth_id = outbox.append(eth)
    outbox.ack(eth_id)
    outbox.ack(ids[1])
    outbox.ack(ids[0])  # acknowledged out of order: the newer one stays the topic's last
    got = outbox.latest(["p/v1/BTC/events", "p/v1/ETH/events", "p/v1/SOL/events"])
    assert {t: i for t, (i, _) in got.items()} == {"p/v1/BTC/events": ids[2], eth.topic: eth_id}
    outbox.ack(ids[2])
    assert outbox.latest(["p/v1/BTC/events"])["p/v1/BTC/events"][1]["id"] == "s1:BTC:3"
    outbox.close()


# -- the daemon at start ------------------------------------------------------------------------
def strand(daemon: Daemon, n: int) -> None:
    """``n`` events published while no broker answers: they wait in the outbox; then the
    checkpoint is written and the process dies (files left as they are)."""
    assert daemon.publisher is not None and daemon.publisher.outbox is not None
    for msg in regime_flips(daemon.pipeline.builder, n):
        daemon.publisher.publish(msg)
    assert len(daemon.publisher.outbox) == n
    daemon.save_checkpoint()
    daemon.publisher.outbox.close()


async def test_a_removed_outbox_is_an_error_at_start_and_on_the_health_topic(
    start_simulator: Any,
    mosquitto: Mosquitto,
    prefix: str,
    subscribe: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = await start_simulator(scenario="calm", speed=5.0, seed=3)
    broker = {"prefix": prefix, "broker": "external"}
    away = sim_config(sim, mqtt={**broker, "url": f"mqtt://127.0.0.1:{free_port()}"})
    first = Daemon(away)
    strand(first, STRANDED)
    assert first.publisher is not None and first.publisher.outbox is not None
    remove(first.publisher.outbox.path)

    caplog.set_level(logging.ERROR, logger="tapewatch.daemon")
    config = sim_config(sim, mqtt={**broker, "url": mosquitto.url})
    health = f"{prefix}/health/{config.instance}"
    sub = await subscribe(health)
    running = RunningDaemon(config)
    try:
        assert running.daemon.outbox_lost == STRANDED
        [record] = [r for r in caplog.records if "may be lost" in r.getMessage()]
        assert record.levelno == logging.ERROR
        assert f"{STRANDED} regime event(s) may be lost" in record.getMessage()
        await sub.wait_for(lambda s: s.on(health), timeout=20)
        assert sub.on(health)[-1]["outbox_lost"] == STRANDED
    finally:
        await running.close()


async def test_an_intact_outbox_is_no_error(
    start_simulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sim = await start_simulator(scenario="calm", speed=5.0, seed=3)
    config = sim_config(sim, mqtt={"url": f"mqtt://127.0.0.1:{free_port()}"})
    strand(Daemon(config), STRANDED)
    caplog.set_level(logging.WARNING, logger="tapewatch.daemon")
    again = Daemon(config)
    assert again.outbox_lost == 0 and not caplog.records
    assert again.publisher is not None and again.publisher.pending == STRANDED  # still to send
    assert again.publisher.outbox is not None
    again.publisher.outbox.close()
