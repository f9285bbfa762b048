"""What ``tapewatch notify`` has sent: one SQLite row per (event id, target), kept for good.

A target is one Apprise URL, named by a hash of it (the URL holds tokens, so it is not stored).
A row goes through ``sending`` (written, and synced to disk, before each HTTP attempt) to
``sent`` or ``failed`` (after the give-up time, with the error). The worker acknowledges an
event to the broker only once every target's row is ``sent`` or ``failed``; a redelivered event
whose rows are finished is acknowledged without sending.

A ``sending`` row found at receipt is an attempt whose outcome nobody knows: the process died
(or the connection failed) during the request. Its owner sends it again, and the message says
it is a retry. A ``sending`` row of another worker (workers of one group on one machine share
the file) is left to that worker, whose own MQTT session still holds the event, unless the row
is older than ``stale_ms``: then that worker is taken to be gone and this one takes it over.

Every statement runs on one thread of the store's own, in call order, so the event loop never
waits for an fsync; the file is in WAL mode with ``synchronous=FULL`` and a busy timeout, so
several worker processes can share it.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")
State = Literal["sending", "sent", "failed"]

_CREATE = """
CREATE TABLE IF NOT EXISTS deliveries (
    event_id TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('sending', 'sent', 'failed')),
    owner TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    first_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    error TEXT,
    PRIMARY KEY (event_id, target)
)
"""
# A new attempt: a new row, or one more attempt on a row still ``sending`` (never a finished one).
_BEGIN = """
INSERT INTO deliveries (event_id, target, state, owner, attempts, first_ms, updated_ms)
VALUES (?, ?, 'sending', ?, 1, ?, ?)
ON CONFLICT (event_id, target) DO UPDATE SET
    attempts = attempts + 1, owner = excluded.owner, updated_ms = excluded.updated_ms
WHERE deliveries.state = 'sending'
"""
_FINISH = """
UPDATE deliveries SET state = ?, error = ?, updated_ms = ?
WHERE event_id = ? AND target = ? AND state = 'sending'
"""


def target_key(url: str) -> str:
    """A stable name for an Apprise URL that does not reveal it."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Row:
    event_id: str
    target: str
    state: State
    owner: str
    attempts: int
    updated_ms: int
    error: str | None


class NotifyStore:
    """The SQLite file; ``open`` it, call the coroutines, ``close`` it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notify-store")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- on the store's thread --------------------------------------------------------------------
    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(_CREATE)
        self._db = db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        assert self._db is not None, "store not open"
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _rows(self, event_ids: list[str]) -> list[Row]:
        assert self._db is not None, "store not open"
        marks = ",".join("?" * len(event_ids))
        cur = self._db.execute(
            "SELECT event_id, target, state, owner, attempts, updated_ms, error "
            f"FROM deliveries WHERE event_id IN ({marks})",
            event_ids,
        )
        return [Row(*r) for r in cur.fetchall()]

    def _begin(self, pairs: list[tuple[str, str]], owner: str, now_ms: int) -> None:
        with self._tx() as db:
            db.executemany(_BEGIN, [(e, t, owner, now_ms, now_ms) for e, t in pairs])

    def _finish(
        self, pairs: list[tuple[str, str]], state: State, error: str | None, now_ms: int
    ) -> None:
        with self._tx() as db:
            db.executemany(_FINISH, [(state, error, now_ms, e, t) for e, t in pairs])

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- from the event loop ----------------------------------------------------------------------
    async def open(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    async def rows(self, event_ids: Iterable[str]) -> list[Row]:
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return []
        rows: list[Row] = []
        for i in range(0, len(ids), 500):  # SQLite's bound on ? parameters
            rows += await self._run(self._rows, ids[i : i + 500])
        return rows

    async def begin(self, pairs: Iterable[tuple[str, str]], owner: str, now_ms: int) -> None:
        """Record an attempt for each (event id, target) before it is made (synced to disk)."""
        await self._run(self._begin, list(pairs), owner, now_ms)

    async def finish(
        self, pairs: Iterable[tuple[str, str]], state: State, error: str | None, now_ms: int
    ) -> None:
        """Record the outcome: ``sent``, or ``failed`` with its error."""
        await self._run(self._finish, list(pairs), state, error, now_ms)


def read_rows(path: str | Path) -> list[Row]:
    """Every row of a store file, for ``tapewatch notify`` tests and inspection (blocking)."""
    db = sqlite3.connect(path, timeout=30.0)
    try:
        cur = db.execute(
            "SELECT event_id, target, state, owner, attempts, updated_ms, error FROM deliveries"
        )
        return [Row(*r) for r in cur.fetchall()]
    finally:
        db.close()
