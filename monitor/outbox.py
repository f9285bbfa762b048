"""The durable outbox: messages that must survive a broker outage and a daemon restart.

One SQLite file (WAL mode, ``synchronous=FULL``) with one table; rows leave it in insertion order
and only when ``ack`` says the broker acknowledged them. Every call is one short transaction on
the caller's thread: the outbox holds regime events, a few per hour, so this never matters to
the event loop.

Delivery is at-least-once: a process killed after the broker's PUBACK but before ``ack``
delivers that message again on its next start. Event payloads carry a unique ``id`` so
consumers can drop the duplicate.

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
from pathlib import Path

from monitor.messages import OutMessage

log = logging.getLogger("tapewatch.outbox")

SCHEMA_VERSION = 1
COLUMNS = ["id", "topic", "payload", "qos", "retain", "created_ms"]
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
# SQLite's result codes for "this file is not (or no longer) a readable database".
_UNREADABLE_CODES = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


class UnreadableOutbox(Exception):
    """The file is not an outbox SQLite can read; its contents cannot be trusted."""


class Outbox:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.moved_aside: Path | None = None  # where an unreadable file went, if one did
        try:
            self._db = self._open()
        except UnreadableOutbox as exc:
            self.moved_aside = self._move_aside()
            log.error(
                "outbox %s is unreadable (%s): moved it to %s and started an empty outbox; "
                "any undelivered messages it held are in the moved file",
                self.path,
                exc,
                self.moved_aside,
            )
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        # Autocommit: each statement is its own short transaction unless BEGIN says otherwise.
        db = sqlite3.connect(self.path, isolation_level=None, timeout=1.0)
        try:
            (check,) = db.execute("PRAGMA quick_check(1)").fetchone()
            if check != "ok":
                raise UnreadableOutbox(f"integrity check: {check}")
            # Look before changing anything, so that a foreign file is moved aside unchanged.
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            columns = [row[1] for row in db.execute("PRAGMA table_info(outbox)")]
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if tables - {"outbox", "sqlite_sequence"}:
                raise UnreadableOutbox(f"not an outbox: it holds {sorted(tables)}")
            if columns and columns != COLUMNS:
                raise UnreadableOutbox(f"unexpected table layout {columns}")
            if version not in (0, SCHEMA_VERSION):
                raise UnreadableOutbox(f"schema version {version}, expected {SCHEMA_VERSION}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a committed append survives a power cut
            if not columns or version == 0:
                db.execute("BEGIN IMMEDIATE")
                db.execute(_CREATE)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            db.close()
            if getattr(exc, "sqlite_errorname", "").startswith(_UNREADABLE_CODES):
                raise UnreadableOutbox(str(exc)) from exc
            raise
        except UnreadableOutbox:
            db.close()
            raise
        return db

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        # The -wal and -shm files belong to the old database: left behind, SQLite would apply
        # the old WAL to the fresh file. They keep their suffixes so the pair stays readable.
        for suffix in ("-wal", "-shm", ""):
            part = self.path.with_name(self.path.name + suffix)
            if part.exists():
                part.rename(aside.with_name(aside.name + suffix))
        return aside

    def append(self, msg: OutMessage) -> int:
        """Store ``msg`` durably; returns its id (ids rise in insertion order)."""
        cur = self._db.execute(
            "INSERT INTO outbox (topic, payload, qos, retain, created_ms) VALUES (?, ?, ?, ?, ?)",
            (msg.topic, msg.payload_bytes(), msg.qos, int(msg.retain), time.time_ns() // 1_000_000),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def peek(self, n: int) -> list[tuple[int, OutMessage]]:
        """The ``n`` oldest messages, oldest first, without removing them."""
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

    def ack(self, msg_id: int) -> None:
        """The broker has the message: forget it."""
        self._db.execute("DELETE FROM outbox WHERE id = ?", (msg_id,))

    def __len__(self) -> int:
        (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(count)

    def close(self) -> None:
        """Close the file; safe to call twice. Later calls raise ``sqlite3.ProgrammingError``."""
        self._db.close()
