"""The durable outbox: SQLite on its own, then a Publisher whose broker is down, restarted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest

from monitor.config import MqttConfig
from monitor.delivery import Entry
from monitor.messages import MessageBuilder, OutMessage, Topics
from monitor.mqtt import Publisher
from monitor.outbox import Outbox, OutboxMarks
from signals.regimes import Reason, RegimeChange
from streams.tasks import stop_tasks
from tests.conftest import REPO, Mosquitto, free_port

T0 = 1_795_460_400_000
INSTANCE = "tapewatch"


def builder(prefix: str, session: str) -> MessageBuilder:
    return MessageBuilder(Topics(prefix, INSTANCE), session, "0.0.0-test", T0)


def regime_flips(build: MessageBuilder, n: int) -> list[OutMessage]:
    """What the pipeline publishes for ``n`` BTC regime changes: per change the retained
    ``regime`` state, then its ``events`` message (QoS 1, not retained, unique ``id``)."""
    names = ["neutral", "seller_dominance"]
    out: list[OutMessage] = []
    for i in range(n):
        reason = Reason("taker_buy_sell_ratio", 0.7 + i / 100, "<", 0.8)
        since = T0 + 1000 * i
        change = RegimeChange("BTC", names[(i + 1) % 2], names[i % 2], since, (reason,), "test")
        out += build.regime(change, ts_pub=since + 3)
    return out


def events(msgs: list[OutMessage]) -> list[OutMessage]:
    return [m for m in msgs if m.topic.endswith("/events")]


def stored(path: Path) -> list[tuple[str, str]]:
    """(topic, id) of each row in the outbox file, read with plain sqlite3, oldest first."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT topic, payload FROM outbox ORDER BY id").fetchall()
    return [(topic, orjson.loads(payload)["id"]) for topic, payload in rows]


def make_publisher(port: int, prefix: str, session: str, outbox_path: Path) -> Publisher:
    build = builder(prefix, session)
    return Publisher(
        MqttConfig(url=f"mqtt://127.0.0.1:{port}", prefix=prefix, broker="external"),
        client_id=f"tw-test-{session}",
        birth=build.status("online"),
        will=build.status("offline"),
        rebirth_topic=build.topics.rebirth(),
        outbox_path=outbox_path,
    )


class LogSeen(logging.Handler):
    """Sets ``seen`` once a record containing ``text`` is logged: a condition to wait on."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text = text
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


# -- the outbox on its own ----------------------------------------------------------------------
def test_append_peek_and_ack_keep_insertion_order(tmp_path: Path) -> None:
    msgs = events(regime_flips(builder("p/v1", "s1"), 5))
    outbox = Outbox(tmp_path / "o.sqlite")
    ids = [outbox.append(m) for m in msgs]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert len(outbox) == 5

    head = outbox.peek(3)
    assert [i for i, _ in head] == ids[:3]
    # Byte for byte what was appended, with topic, QoS and retain flag.
    assert [(m.topic, m.payload_bytes(), m.qos, m.retain) for _, m in head] == [
        (m.topic, m.payload_bytes(), 1, False) for m in msgs[:3]
    ]
    assert [m for _, m in outbox.peek(10)] == msgs

    outbox.ack(ids[1])  # out of order: the rest keep their order
    outbox.ack(ids[0])
    assert [i for i, _ in outbox.peek(10)] == ids[2:]
    assert len(outbox) == 3
    outbox.close()


def test_outbox_persists_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "state" / "tapewatch.outbox.sqlite"  # the directory is created
    msgs = events(regime_flips(builder("p/v1", "s1"), 4))
    first = Outbox(path)
    ids = [first.append(m) for m in msgs]
    first.close()

    second = Outbox(path)
    assert second.peek(10) == list(zip(ids, msgs, strict=True))
    second.ack(ids[0])
    second.close()

    third = Outbox(path)
    assert [i for i, _ in third.peek(10)] == ids[1:]
    for i in ids[1:]:
        third.ack(i)
    assert len(third) == 0
    # Ids never go back, even once the table is empty: the order stays the insertion order.
    assert third.append(msgs[0]) > ids[-1]
    third.close()


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not an sqlite file\n" * 200)
    Path(f"{path}-wal").write_bytes(b"nor is this a wal\n" * 200)


def _damaged_page(path: Path) -> None:
    outbox = Outbox(path)
    for m in events(regime_flips(builder("p/v1", "s1"), 3)):
        outbox.append(m)
    outbox.close()
    data = bytearray(path.read_bytes())
    page = 4096  # page 2 holds the outbox table; the header (page 1) stays valid
    data[page : 2 * page] = b"\xff" * page
    path.write_bytes(bytes(data))


def _foreign_table(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE outbox (key TEXT, value TEXT)")
        db.commit()


def _other_database(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE users (name TEXT)")
        db.commit()


@pytest.mark.parametrize("damage", [_garbage, _damaged_page, _foreign_table, _other_database])
def test_an_unreadable_file_is_moved_aside_and_a_fresh_outbox_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Any
) -> None:
    path = tmp_path / "tapewatch.outbox.sqlite"
    damage(path)
    before = path.read_bytes()
    caplog.set_level(logging.ERROR, logger="tapewatch.outbox")

    outbox = Outbox(path)

    aside = outbox.moved_aside
    assert aside is not None and aside.name.startswith("tapewatch.outbox.sqlite.corrupt-")
    assert aside.read_bytes() == before  # kept for inspection, untouched
    [record] = caplog.records
    assert "unreadable" in record.getMessage() and str(aside) in record.getMessage()
    msg = events(regime_flips(builder("p/v1", "s1"), 1))[0]
    assert len(outbox) == 0
    msg_id = outbox.append(msg)
    assert outbox.peek(5) == [(msg_id, msg)]
    outbox.close()
    again = Outbox(path)
    assert again.moved_aside is None  # the fresh file is fine next time
    again.close()


def test_writes_run_on_the_outboxs_thread_in_call_order(tmp_path: Path) -> None:
    """``append_soon`` never waits for SQLite: here another process holds the file's write
    lock, as a slow disk would hold an fsync. Calls still take effect in the order made."""
    path = tmp_path / "o.sqlite"
    msgs = events(regime_flips(builder("p/v1", "s1"), 3))
    outbox = Outbox(path)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # the outbox's insert waits (its busy timeout: 1 s)
        written = [outbox.append_soon(m) for m in msgs]
        acked = outbox.ack_soon(1)
        assert not any(f.done() for f in (*written, acked))  # the caller did not wait
        other.execute("COMMIT")
    assert [f.result() for f in written] == [1, 2, 3]
    assert acked.result() is None
    # A read waits for the writes asked for before it.
    assert outbox.marks() == OutboxMarks(last_id=3, pending=(2, 3), acked=1)
    outbox.close()
    outbox.close()  # twice is fine; anything else after it is an error
    with pytest.raises(sqlite3.ProgrammingError):
        outbox.append_soon(msgs[0]).result()
    with pytest.raises(sqlite3.ProgrammingError):
        len(outbox)


def test_publisher_without_a_usable_outbox_keeps_publishing_from_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    caplog.set_level(logging.ERROR, logger="tapewatch.mqtt")
    pub = make_publisher(free_port(), "p/v1", "s1", blocker / "o.sqlite")
    assert pub.outbox is None
    assert any("kept in memory only" in r.getMessage() for r in caplog.records)
    for msg in regime_flips(builder("p/v1", "s1"), 2):
        pub.publish(msg)
    assert pub.pending == 4


# -- a Publisher whose broker is down, then the restarted daemon --------------------------------
async def test_events_kept_while_the_broker_is_down_are_delivered_in_order_after_a_restart(
    mosquitto: Mosquitto, prefix: str, subscribe: Any, tmp_path: Path
) -> None:
    path = tmp_path / "state" / f"{INSTANCE}.outbox.sqlite"

    # The first daemon: its broker never answers.
    first = make_publisher(free_port(), prefix, "first", path)
    refused = LogSeen("reconnecting in")
    logging.getLogger("tapewatch.mqtt").addHandler(refused)
    try:
        running = asyncio.create_task(first.run(), name="first-publisher")
        async with asyncio.timeout(10):
            await refused.seen.wait()  # it tried, and failed, to reach its broker
    finally:
        logging.getLogger("tapewatch.mqtt").removeHandler(refused)
    old = regime_flips(builder(prefix, "first"), 5)
    for msg in old:
        first.publish(msg)
    old_ids = [(m.topic, m.payload["id"]) for m in events(old)]
    # Written on the outbox's thread, not the event loop's: in the file once those writes are
    # done (before anything is sent). Only the events.
    assert first.outbox is not None
    first.outbox.flush()
    assert stored(path) == old_ids
    assert await stop_tasks([running]) == []  # the daemon goes away
    assert first.connects == 0 and not first.connected.is_set()
    assert stored(path) == old_ids

    # The restarted daemon, with a broker this time, and a change of its own.
    sub = await subscribe(f"{prefix}/#")
    second = make_publisher(mosquitto.port, prefix, "second", path)
    assert second.pending == 5
    new = regime_flips(builder(prefix, "second"), 1)
    for msg in new:
        second.publish(msg)
    running = asyncio.create_task(second.run(), name="second-publisher")
    try:
        events_topic = f"{prefix}/BTC/events"
        await sub.wait_for(lambda s: len(s.on(events_topic)) == 6, timeout=20)
        async with asyncio.timeout(10):
            await second.drained()
        # The earlier run's events first, in order; then this run's messages as published.
        arrived = [(t, p.get("id", p["seq"])) for t, p, _ in sub.messages if "/status/" not in t]
        assert arrived == [
            *old_ids,
            (f"{prefix}/BTC/regime", 1),
            (events_topic, "second:BTC:1"),
        ]
        assert [p["seq"] for p in sub.on(events_topic)] == [1, 2, 3, 4, 5, 1]
        assert second.outbox is not None
        second.outbox.flush()  # drained: every delete is asked for; now they are done
        assert stored(path) == []
    finally:
        assert await stop_tasks([running]) == []


async def test_an_event_is_sent_while_its_write_waits_and_its_row_is_deleted_once_written(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    """The send does not wait for the outbox: with the outbox's thread held up, the regime
    state and its event both reach the broker and are acknowledged. The event's row, written
    once the thread goes on, is then deleted (not leaked), and ``drained`` waits for that."""
    path = tmp_path / "outbox.sqlite"
    pub = make_publisher(mosquitto.port, prefix, "durable", path)
    assert pub.outbox is not None
    task = asyncio.create_task(pub.run())
    gate = threading.Event()
    try:
        await asyncio.wait_for(pub.connected.wait(), 30)
        on_disk: list[tuple[str, list[tuple[str, str]]]] = []
        write = pub._write

        def write_watched(client: Any, entry: Entry) -> None:
            on_disk.append((entry.msg.topic, stored(path)))
            write(client, entry)

        pub._write = write_watched  # type: ignore[method-assign]
        # The outbox runs its calls in order on one thread: the append waits behind this. (The
        # timeout only keeps a failing test from hanging the thread.)
        pub.outbox._submit(gate.wait, 30)
        state, event = regime_flips(builder(prefix, "durable"), 1)
        pub.publish(state)
        pub.publish(event)
        await asyncio.wait_for(pub.acknowledged(), 10)
        assert pub.queue.storing == 1  # both acknowledged, the event's write not even begun
        drained = asyncio.ensure_future(pub.drained())
        gate.set()
        await asyncio.wait_for(drained, 10)  # the write reported: its delete is asked for
        pub.outbox.flush()  # ... and done (calls run in order)
        assert stored(path) == []  # acknowledged, so deleted once written
        with contextlib.closing(sqlite3.connect(path)) as db:
            # It was written, then acknowledged: the topic's last delivered event.
            (payload,) = db.execute("SELECT payload FROM delivered").fetchone()
        assert orjson.loads(payload)["id"] == event.payload["id"]
    finally:
        gate.set()
        assert await stop_tasks([task]) == []
    assert on_disk == [(state.topic, []), (event.topic, [])]


async def test_while_connected_an_events_write_starts_after_its_puback(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    """Connected, the outbox write of each event starts once the broker acknowledged it (its
    thread would otherwise compete with the PUBACK's reading); the row is still written, then
    deleted, and the topic's last delivered event is kept. A broker that does not acknowledge
    gets the write after ``STORE_AFTER_S`` instead (the burst test below)."""
    path = tmp_path / "outbox.sqlite"
    pub = make_publisher(mosquitto.port, prefix, "after", path)
    task = asyncio.create_task(pub.run())
    acked_when_stored: list[bool] = []
    store = pub._store

    def store_watched(entry: Entry) -> None:
        acked_when_stored.append(entry.acked)
        store(entry)

    pub._store = store_watched  # type: ignore[method-assign]
    try:
        await asyncio.wait_for(pub.connected.wait(), 30)
        msgs = regime_flips(builder(prefix, "after"), 3)
        for state, event in zip(msgs[::2], msgs[1::2], strict=True):
            pub.publish_all((state, event))
            await asyncio.wait_for(pub.acknowledged(), 10)
        await asyncio.wait_for(pub.drained(), 10)
        assert pub.outbox is not None
        pub.outbox.flush()
        assert acked_when_stored == [True, True, True]
        assert stored(path) == []
        with contextlib.closing(sqlite3.connect(path)) as db:
            (payload,) = db.execute("SELECT payload FROM delivered").fetchone()
        assert orjson.loads(payload)["id"] == msgs[-1].payload["id"]
    finally:
        assert await stop_tasks([task]) == []


async def test_a_burst_in_flight_when_the_broker_dies_is_sent_again_on_the_next_connection(
    prefix: str, tmp_path: Path
) -> None:
    """Six QoS 1 messages written back to back to a broker that stopped reading: it dies with
    them unacknowledged. The publisher keeps running, and on the next connection sends them
    again, in order: the broker's retained regime is the newest, and the outbox empties."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = Mosquitto(workdir)
    broker.start()
    path = tmp_path / "outbox.sqlite"
    pub = make_publisher(broker.port, prefix, "burst", path)
    task = asyncio.create_task(pub.run())
    try:
        await asyncio.wait_for(pub.connected.wait(), 30)
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGSTOP)  # reads nothing, acknowledges nothing
        msgs = regime_flips(builder(prefix, "burst"), 3)
        for msg in msgs:
            pub.publish(msg)
        await wait_for_rows(path, 3)  # the events are in the outbox; their PUBACKs awaited
        assert not pub.queue.acknowledged
        broker.proc.kill()  # its sockets close: the connection is lost mid-burst
        broker.proc.wait(10)
        broker.proc = None
        broker.start()
        await asyncio.wait_for(pub.acknowledged(), 30)
        assert not task.done()
        assert pub.outbox is not None
        await asyncio.wait_for(pub.drained(), 10)
        pub.outbox.flush()
        assert stored(path) == []
        newest = msgs[-2]  # the last change's regime state (its events message follows)
        retained = await first_retained(broker.port, newest.topic)
        assert orjson.loads(retained) == newest.payload
    finally:
        assert await stop_tasks([task]) == []
        broker.stop()


async def wait_for_rows(path: Path, n: int) -> None:
    async with asyncio.timeout(20):
        while not (path.exists() and len(stored(path)) >= n):
            await asyncio.sleep(0.05)  # polling a file another thread writes: nothing to await


async def first_retained(port: int, topic: str) -> bytes:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(20):
            async for message in client.messages:
                assert message.retain and isinstance(message.payload, bytes)
                return message.payload
    raise AssertionError("no retained message")


CHILD = """
import asyncio, sys
from pathlib import Path
from tests.test_outbox import builder, make_publisher, regime_flips

async def main() -> None:
    port, prefix, path = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    pub = make_publisher(port, prefix, "killed", path)
    running = asyncio.create_task(pub.run())
    for msg in regime_flips(builder(prefix, "killed"), 5):
        pub.publish(msg)
    pub.outbox.flush()  # the writes run on the outbox's thread: on disk from here
    print("published", flush=True)
    await running

asyncio.run(main())
"""


async def test_events_survive_a_sigkill_of_the_publishing_process(
    mosquitto: Mosquitto, prefix: str, subscribe: Any, tmp_path: Path
) -> None:
    path = tmp_path / f"{INSTANCE}.outbox.sqlite"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(free_port()), prefix, str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 30)
        assert line.strip() == "published"
        child.send_signal(signal.SIGKILL)  # no clean-up of any kind
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    ids = [f"killed:BTC:{seq}" for seq in range(1, 6)]
    events_topic = f"{prefix}/BTC/events"
    assert stored(path) == [(events_topic, i) for i in ids]

    sub = await subscribe(events_topic)
    restarted = make_publisher(mosquitto.port, prefix, "restarted", path)
    running = asyncio.create_task(restarted.run(), name="restarted-publisher")
    try:
        await sub.wait_for(lambda s: len(s.on(events_topic)) == 5, timeout=20)
        async with asyncio.timeout(10):
            await restarted.drained()
        assert [p["id"] for p in sub.on(events_topic)] == ids
        assert restarted.outbox is not None
        restarted.outbox.flush()  # drained: every delete is asked for; now they are done
        assert stored(path) == []
    finally:
        assert await stop_tasks([running]) == []
