"""The durable outbox: messages that must survive a broker outage and a daemon restart.

One SQLite file (WAL mode, ``synchronous=FULL``) with one table; rows leave it in insertion order
and only when ``ack`` says the broker acknowledged them.

Every statement runs on one thread of the outbox's own, in the order the calls were made: a
commit with ``synchronous=FULL`` waits for an fsync (well under a millisecond on an idle SSD,
tens of milliseconds on a busy disk), which the event loop must not wait for. The publisher
uses ``append_soon``/``ack_soon`` and is told when the write is done; it sends an event without
waiting for its write, and asks for the delete of one the broker acknowledged meanwhile once
the write gives its id (why that is safe: ``monitor/delivery.py``). The other methods wait for
their result, and since calls run in order, a read sees every write asked for before it (a
checkpoint's ``marks`` include the event just published). They are for start-up, checkpoints,
the health report and tests: on the event loop such a read waits only for the writes still
queued, one or two when a regime changes.

Delivery is at-least-once: a process killed after the broker's PUBACK but before ``ack``
delivers that message again on its next start. Event payloads carry a unique ``id`` so
consumers can drop the duplicate.

The outbox also keeps, per topic, the last message the broker acknowledged (table
``delivered``, written in the same transaction as the delete). With the pending rows that is the
newest event of every asset, delivered or not: a restarted daemon whose checkpoint predates its
last regime change learns that change here. Ids rise by one per append and never go back
(AUTOINCREMENT), and messages are acknowledged in id order, so ``marks`` (last id, pending ids,
highest acknowledged id) tell whether rows left without an acknowledgement: the daemon keeps
the marks in its checkpoint and ``lost_since`` compares them at the next start.

A file SQLite cannot read (not a database, failed integrity check, foreign table layout) is
renamed aside to ``<name>.corrupt-<UTC time>`` together with its ``-wal``/``-shm`` files (those
SQLite has not already discarded as unusable), with an error in the log, and a fresh outbox is
started: the daemon keeps running, and the old rows stay in the renamed file for inspection.
Other errors (permissions, a lock held by another process) are raised as ``sqlite3.Error`` or
``OSError``: the file may well be fine, so it is left alone.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from monitor.messages import OutMessage
from monitor.state import aside_name

log = logging.getLogger("tapewatch.outbox")

SCHEMA_VERSION = 2  # 2 added ``delivered``; a version 1 file is upgraded in place
COLUMNS = ["id", "topic", "payload", "qos", "retain", "created_ms"]
DELIVERED_COLUMNS = ["topic", "id", "payload"]
_TABLES = {"outbox", "delivered", "sqlite_sequence"}
_CREATE = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
)
"""
_CREATE_DELIVERED = """
CREATE TABLE IF NOT EXISTS delivered (
    topic TEXT PRIMARY KEY,
    id INTEGER NOT NULL,
    payload BLOB NOT NULL
)
"""
# Keep the newest acknowledged message per topic (acks may come out of order after a retry).
_REMEMBER = """
INSERT INTO delivered (topic, id, payload) SELECT topic, id, payload FROM outbox WHERE id = ?
ON CONFLICT (topic) DO UPDATE SET id = excluded.id, payload = excluded.payload
WHERE excluded.id > delivered.id
"""
# SQLite's result codes for "this file is not (or no longer) a readable database".
_UNREADABLE_CODES = ("SQLITE_CORRUPT", "SQLITE_NOTADB")

T = TypeVar("T")


class UnreadableOutbox(Exception):
    """The file is not an outbox SQLite can read; its contents cannot be trusted."""


@dataclass(frozen=True, slots=True)
class OutboxMarks:
    """Where an outbox stood: its last id, the ids still pending, the highest acknowledged."""

    last_id: int
    pending: tuple[int, ...]
    acked: int

    def as_data(self) -> dict[str, Any]:
        """JSON-ready, for a checkpoint's metadata: pending ids as [first, last] runs."""
        return {"last_id": self.last_id, "pending": _runs(self.pending), "acked": self.acked}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> OutboxMarks:
        """The inverse of ``as_data``; raises ``ValueError`` on anything else."""
        try:
            pending = tuple(i for lo, hi in data["pending"] for i in range(int(lo), int(hi) + 1))
            return cls(int(data["last_id"]), pending, int(data["acked"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"unreadable outbox marks ({exc!r})") from None


@dataclass(frozen=True, slots=True)
class Loss:
    """Events that left the outbox without the broker's acknowledgement."""

    count: int
    why: str


def lost_since(saved: OutboxMarks, now: OutboxMarks) -> Loss | None:
    """What went missing between ``saved`` (a checkpoint's marks) and ``now``; None if nothing.

    Every id up to the highest acknowledged one was delivered (messages leave in id order), so
    an id above it that was pending at the checkpoint, or appended since, and is no longer in
    the outbox left without being delivered. A last id behind the checkpoint's means the file
    is not the one the checkpoint saw (removed, replaced, restored from a copy): the events
    pending then may all be lost, and so may any appended after the checkpoint."""
    if now.last_id < saved.last_id:
        if not saved.pending:
            return None
        why = (
            f"its last event id is {now.last_id}, the checkpoint saw {saved.last_id}: "
            "the file was removed or replaced"
        )
        return Loss(len(saved.pending), why)
    delivered = max(now.acked, saved.acked)
    expected = {i for i in saved.pending if i > delivered}
    expected.update(range(max(saved.last_id, delivered) + 1, now.last_id + 1))
    gone = sorted(expected - set(now.pending))
    if not gone:
        return None
    return Loss(len(gone), f"event ids {_describe(gone)} left it undelivered")


def _runs(ids: Iterable[int]) -> list[list[int]]:
    """Sorted ids as [first, last] runs of consecutive ids."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


def _describe(ids: list[int]) -> str:
    return ", ".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in _runs(ids))


class Outbox:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.moved_aside: Path | None = None  # where an unreadable file went, if one did
        # Opened here, on the caller's thread (at start, so an error surfaces to the caller);
        # used from then on only by the worker thread, one statement at a time.
        try:
            self._db = self._open()
        except UnreadableOutbox as exc:
            self.moved_aside = move_aside(self.path)
            log.error(
                "outbox %s is unreadable (%s): moved it to %s and started an empty outbox; "
                "any undelivered messages it held are in the moved file",
                self.path,
                exc,
                self.moved_aside,
            )
            self._db = self._open()
        # One worker: the calls run in the order they were made (an ack after its append, a
        # read after the writes before it). Its thread starts with the first call.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tapewatch-outbox")
        self._closed = False

    def _open(self) -> sqlite3.Connection:
        # Autocommit: each statement is its own short transaction unless BEGIN says otherwise.
        # Not tied to this thread: the worker thread uses it (only it, so never two at once).
        db = sqlite3.connect(self.path, isolation_level=None, timeout=1.0, check_same_thread=False)
        try:
            (check,) = db.execute("PRAGMA quick_check(1)").fetchone()
            if check != "ok":
                raise UnreadableOutbox(f"integrity check: {check}")
            # Look before changing anything, so that a foreign file is moved aside unchanged.
            # SQLite's own index of delivered's primary key is not a foreign object.
            tables = {
                row[0]
                for row in db.execute("SELECT name FROM sqlite_master")
                if not row[0].startswith("sqlite_autoindex_delivered")
            }
            columns = [row[1] for row in db.execute("PRAGMA table_info(outbox)")]
            delivered = [row[1] for row in db.execute("PRAGMA table_info(delivered)")]
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if tables - _TABLES:
                raise UnreadableOutbox(f"not an outbox: it holds {sorted(tables)}")
            if columns and columns != COLUMNS:
                raise UnreadableOutbox(f"unexpected table layout {columns}")
            if delivered and delivered != DELIVERED_COLUMNS:
                raise UnreadableOutbox(f"unexpected table layout {delivered}")
            if version not in (0, 1, SCHEMA_VERSION):
                raise UnreadableOutbox(f"schema version {version}, expected {SCHEMA_VERSION}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a committed append survives a power cut
            if not columns or not delivered or version != SCHEMA_VERSION:
                db.execute("BEGIN IMMEDIATE")
                db.execute(_CREATE)
                db.execute(_CREATE_DELIVERED)  # version 1 files gain it, their rows untouched
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            db.close()
            if unreadable(exc):
                raise UnreadableOutbox(str(exc)) from exc
            raise
        except UnreadableOutbox:
            db.close()
            raise
        return db

    # -- on the worker thread, in call order -----------------------------------------------
    def _submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on the worker, after every call made before."""
        try:
            return self._worker.submit(fn, *args)
        except RuntimeError:  # shut down: closed, like the connection
            failed: Future[T] = Future()
            failed.set_exception(sqlite3.ProgrammingError("Cannot operate on a closed outbox."))
            return failed

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return self._submit(fn, *args).result()

    def append_soon(self, msg: OutMessage) -> Future[int]:
        """Store ``msg`` durably, on the worker thread; the future gives its id (ids rise in
        call order) once it is committed, or the ``sqlite3.Error`` that prevented it."""
        return self._submit(self._append, msg, time.time_ns() // 1_000_000)

    def ack_soon(self, msg_id: int) -> Future[None]:
        """``ack`` on the worker thread; the future says when it is committed, or why not."""
        return self._submit(self._ack, msg_id)

    def append(self, msg: OutMessage) -> int:
        """Store ``msg`` durably; returns its id (ids rise in insertion order)."""
        return self.append_soon(msg).result()

    def ack(self, msg_id: int) -> None:
        """The broker has the message: it leaves the outbox, and stays its topic's last
        delivered message until a newer one is acknowledged."""
        self.ack_soon(msg_id).result()

    def flush(self) -> None:
        """Return once every write asked for so far is committed (or has failed)."""
        self._call(_nothing)

    def peek(self, n: int) -> list[tuple[int, OutMessage]]:
        """The ``n`` oldest messages, oldest first, without removing them."""
        return self._call(self._peek, n)

    def __len__(self) -> int:
        return self._call(self._count)

    def count_soon(self) -> Future[int]:
        """``len`` on the worker thread, for the event loop: its caller awaits the future
        rather than blocking the loop behind the writes queued before it (an fsync on a busy
        disk can take seconds, and the frames would wait for it)."""
        return self._submit(self._count)

    def marks(self) -> OutboxMarks:
        """Where the outbox stands now (``lost_since`` compares two of these)."""
        return self._call(self._marks)

    def latest(self, topics: Iterable[str]) -> dict[str, tuple[int, dict[str, Any]]]:
        """topic -> (id, payload) of the newest message on each of ``topics``, delivered or
        pending; topics with none (or only unreadable ones) are left out."""
        return self._call(self._latest, list(dict.fromkeys(topics)))

    def close(self) -> None:
        """Finish the writes asked for, then close the file; safe to call twice. Later calls
        raise ``sqlite3.ProgrammingError``."""
        if self._closed:
            return
        self._closed = True
        self._submit(self._db.close)
        self._worker.shutdown(wait=True)

    # -- the statements (worker thread) ------------------------------------------------------
    def _append(self, msg: OutMessage, created_ms: int) -> int:
        cur = self._db.execute(
            "INSERT INTO outbox (topic, payload, qos, retain, created_ms) VALUES (?, ?, ?, ?, ?)",
            (msg.topic, msg.payload_bytes(), msg.qos, int(msg.retain), created_ms),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _peek(self, n: int) -> list[tuple[int, OutMessage]]:
        rows = self._db.execute(
            "SELECT id, topic, payload, qos, retain FROM outbox ORDER BY id LIMIT ?", (n,)
        ).fetchall()
        out = []
        for row_id, topic, payload, qos, retain in rows:
            try:
                msg = OutMessage.from_payload_bytes(topic, bytes(payload), qos, bool(retain))
            except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
                log.error(
                    "outbox: message %d on %s is not valid JSON (%s): skipped", row_id, topic, exc
                )
                continue
            out.append((row_id, msg))
        return out

    def _ack(self, msg_id: int) -> None:
        with self._transaction():
            self._db.execute(_REMEMBER, (msg_id,))
            self._db.execute("DELETE FROM outbox WHERE id = ?", (msg_id,))

    def _count(self) -> int:
        (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(count)

    def _marks(self) -> OutboxMarks:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        pending = tuple(i for (i,) in self._db.execute("SELECT id FROM outbox ORDER BY id"))
        (acked,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM delivered").fetchone()
        return OutboxMarks(int(row[0]) if row else 0, pending, int(acked))

    def _latest(self, wanted: list[str]) -> dict[str, tuple[int, dict[str, Any]]]:
        if not wanted:
            return {}
        marks = ", ".join("?" * len(wanted))
        rows = self._db.execute(
            f"SELECT topic, id, payload FROM outbox WHERE topic IN ({marks}) "
            f"UNION ALL SELECT topic, id, payload FROM delivered WHERE topic IN ({marks}) "
            "ORDER BY id",
            (*wanted, *wanted),
        ).fetchall()
        out: dict[str, tuple[int, dict[str, Any]]] = {}
        for topic, row_id, payload in rows:
            try:
                out[topic] = (int(row_id), orjson.loads(bytes(payload)))
            except orjson.JSONDecodeError:
                continue  # ``peek`` logs unreadable rows; an older message stands in
        return out

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def _nothing() -> None:
    """A no-op call: its result comes once every call before it has run."""


def unreadable(exc: sqlite3.DatabaseError) -> bool:
    """Whether ``exc`` says the file is not (or no longer) a readable database."""
    return getattr(exc, "sqlite_errorname", "").startswith(_UNREADABLE_CODES)


def move_aside(path: Path) -> Path:
    """Rename an unreadable SQLite file to ``<name>.corrupt-<UTC time>``; returns the new name."""
    aside = aside_name(path, "corrupt")
    # The -wal and -shm files belong to the old database: left behind, SQLite would apply
    # the old WAL to the fresh file. They keep their suffixes so the pair stays readable.
    for suffix in ("-wal", "-shm", ""):
        part = path.with_name(path.name + suffix)
        if part.exists():
            part.rename(aside.with_name(aside.name + suffix))
    return aside
