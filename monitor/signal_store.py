"""The signal history store: one-minute samples of every signal and every regime change, per
asset, for the charts (SQLite in ``state.dir``).

One row per asset and minute holds the minute's ``monitor.series.COLUMNS`` as float32 (160
bytes for 40 columns); 90 days of 3 assets is 388,800 rows, about 80 MB on disk with SQLite's
keys and pages (``bench/history_store.py`` measures it). Rows older than the retention (the
baseline window) are pruned as new minutes come in. A row written by a live snapshot replaces
one the start-up history wrote for the same minute; history never replaces a live row.

The column layout of each row is recorded (table ``layouts``), so a later version that adds a
signal reads the rows of earlier ones by name instead of starting over.

Every statement runs on one thread of the store's own, in call order (``monitor.outbox`` does
the same): the event loop hands rows over and never waits for the disk, and a read sees every
write asked for before it. Writes are not fsync'd one by one (``synchronous=NORMAL`` in WAL
mode): a power cut may lose the last moments of chart history, never corrupt it. A file that is
not a readable store is moved aside (``<name>.corrupt-<UTC time>``) and a fresh one started.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from monitor.outbox import move_aside, unreadable
from monitor.series import COLUMNS, ROW_DTYPE, ChartItems, Sample, downsample

log = logging.getLogger("tapewatch.history")

SCHEMA_VERSION = 1
_TABLES = {"layouts", "samples", "changes"}
_CREATE = (
    """CREATE TABLE IF NOT EXISTS layouts (
        id INTEGER PRIMARY KEY,
        columns TEXT NOT NULL UNIQUE
    )""",
    """CREATE TABLE IF NOT EXISTS samples (
        asset TEXT NOT NULL,
        minute INTEGER NOT NULL,
        layout INTEGER NOT NULL,
        live INTEGER NOT NULL,
        row BLOB NOT NULL,
        PRIMARY KEY (asset, minute)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS changes (
        asset TEXT NOT NULL,
        ts_event INTEGER NOT NULL,
        regime TEXT NOT NULL,
        payload BLOB NOT NULL,
        PRIMARY KEY (asset, ts_event)
    ) WITHOUT ROWID""",
)
_LIVE = """INSERT INTO samples VALUES (?, ?, ?, 1, ?)
ON CONFLICT (asset, minute) DO UPDATE SET layout = excluded.layout, live = 1, row = excluded.row"""
_HISTORY = "INSERT OR IGNORE INTO samples VALUES (?, ?, ?, 0, ?)"
# The newest change before the cut survives it: it says which regime the oldest minutes are in.
_PRUNE_CHANGES = """DELETE FROM changes WHERE ts_event < ? AND ts_event < (
    SELECT max(c.ts_event) FROM changes c WHERE c.asset = changes.asset AND c.ts_event < ?)"""

T = TypeVar("T")


class UnreadableStore(Exception):
    """The file is not a signal history SQLite can read."""


class SignalStore:
    def __init__(self, path: str | Path, retention_ms: int) -> None:
        self.path = Path(path)
        self.retention_ms = retention_ms
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = _open(self.path)
        except UnreadableStore as exc:
            aside = move_aside(self.path)
            log.error("signal history %s is unreadable (%s): moved it to %s", self.path, exc, aside)
            self._db = _open(self.path)
        self._layouts: dict[tuple[str, ...], int] = {}  # columns -> layout id, for writing
        self._newest: dict[str, int] = {}  # asset -> newest minute written, for pruning
        self._pruned_to = 0
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tapewatch-history")

    # -- from any thread: queued, in call order ------------------------------------------------
    def _submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        return self._worker.submit(fn, *args)

    def add_samples(self, samples: Sequence[Sample]) -> Future[None]:
        """Live minutes (they replace history's rows for the same minutes)."""
        return self._submit(self._add_samples, list(samples))

    def add_history(self, asset: str, minutes: np.ndarray, rows: np.ndarray) -> Future[int]:
        """Past minutes from the start-up history, where no row exists yet; returns how many
        were added."""
        return self._submit(self._add_history, asset, minutes, rows)

    def add_change(self, asset: str, ts_event: int, regime: str, payload: bytes) -> Future[None]:
        """A regime change: ``payload`` is its ``events`` message as published."""
        return self._submit(self._add_change, asset, ts_event, regime, payload)

    def run_soon(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """``fn(self, *args)`` on the worker thread, after every write asked for before: how
        the event loop reads (``series``, ``changes``) without waiting for the disk."""
        return self._submit(fn, self, *args)

    def flush(self) -> None:
        """Wait for every write asked for so far."""
        self._submit(_nothing).result()

    def close(self) -> None:
        self._submit(self._db.close).result()
        self._worker.shutdown(wait=True)

    # -- on the worker thread (or, before any call was queued, the caller's) --------------------
    def _layout(self, columns: tuple[str, ...]) -> int:
        layout = self._layouts.get(columns)
        if layout is None:
            text = orjson.dumps(columns).decode()
            self._db.execute("INSERT OR IGNORE INTO layouts (columns) VALUES (?)", (text,))
            (layout,) = self._db.execute(
                "SELECT id FROM layouts WHERE columns = ?", (text,)
            ).fetchone()
            self._layouts[columns] = layout
        return layout

    def _add_samples(self, samples: list[Sample]) -> None:
        if not samples:
            return
        layout = self._layout(COLUMNS)
        with self._db:
            self._db.executemany(
                _LIVE,
                [(s.asset, s.minute, layout, s.row.astype(ROW_DTYPE).tobytes()) for s in samples],
            )
        for s in samples:
            if s.minute > self._newest.get(s.asset, -1):
                self._newest[s.asset] = s.minute
        self._prune()

    def _add_history(self, asset: str, minutes: np.ndarray, rows: np.ndarray) -> int:
        newest = int(minutes.max()) if len(minutes) else None
        if newest is None:
            return 0
        keep = minutes > max(newest, self._newest.get(asset, newest)) - self.retention_ms
        minutes, rows = minutes[keep], rows[keep].astype(ROW_DTYPE)
        layout = self._layout(COLUMNS)
        before = self._db.total_changes
        with self._db:
            self._db.executemany(
                _HISTORY,
                [(asset, int(m), layout, r.tobytes()) for m, r in zip(minutes, rows, strict=True)],
            )
        return self._db.total_changes - before

    def _add_change(self, asset: str, ts_event: int, regime: str, payload: bytes) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO changes VALUES (?, ?, ?, ?)",
                (asset, ts_event, regime, payload),
            )

    def _prune(self) -> None:
        """Drop what fell out of the retention, at most once per retention / 1000 of event
        time (a few minutes for 90 days): deleting is cheap only in batches."""
        if not self._newest:
            return
        cut = max(self._newest.values()) - self.retention_ms
        if cut - self._pruned_to < self.retention_ms // 1000:
            return
        with self._db:
            self._db.execute("DELETE FROM samples WHERE minute <= ?", (cut,))
            self._db.execute(_PRUNE_CHANGES, (cut, cut))
        self._pruned_to = cut

    # -- reads (on the worker via run_soon, or directly once no writer is running) ----------------
    def series(
        self, asset: str, start_ms: int, end_ms: int, names: Sequence[str], max_points: int
    ) -> dict[str, Any]:
        """The minutes of [start_ms, end_ms] of ``names`` (columns of ``COLUMNS``), at most
        ``max_points`` rows (``monitor.series.downsample``): {"t": minute opens, "values":
        {name: list, NaN as None}, "minutes": rows before downsampling}."""
        wanted = [n for n in names if n in COLUMNS]
        layouts = {
            layout: orjson.loads(text)
            for layout, text in self._db.execute("SELECT id, columns FROM layouts")
        }
        # One query per layout, fetched whole (a Python loop over 129,600 rows of a 90-day
        # range cost 0.4 s; this is C until the join).
        times: list[np.ndarray] = []
        parts: list[np.ndarray] = []
        for layout, columns in layouts.items():
            found = self._db.execute(
                "SELECT minute, row FROM samples WHERE asset = ? AND layout = ?"
                " AND minute BETWEEN ? AND ? ORDER BY minute",
                (asset, layout, start_ms, end_ms),
            ).fetchall()
            if not found:
                continue
            minutes, blobs = zip(*found, strict=True)
            rows = np.frombuffer(b"".join(blobs), dtype=ROW_DTYPE).reshape(len(blobs), -1)
            part = np.full((len(blobs), len(wanted)), np.nan, dtype=ROW_DTYPE)
            for j, name in enumerate(wanted):
                if name in columns and columns.index(name) < rows.shape[1]:
                    part[:, j] = rows[:, columns.index(name)]
            times.append(np.array(minutes, dtype=np.int64))
            parts.append(part)
        if times:
            order = np.argsort(np.concatenate(times), kind="stable")
            all_times = np.concatenate(times)[order]
            values = np.concatenate(parts)[order]
        else:
            all_times = np.zeros(0, dtype=np.int64)
            values = np.zeros((0, len(wanted)), dtype=ROW_DTYPE)
        t, v = downsample(all_times, values, max_points)
        return {
            "t": t.tolist(),
            "values": {name: _nullable(v[:, j]) for j, name in enumerate(wanted)},
            "minutes": len(all_times),
        }

    def changes(self, asset: str, start_ms: int, end_ms: int) -> list[Any]:
        """The ``events`` payloads of [start_ms, end_ms], oldest first, with the newest change
        before ``start_ms`` first (the regime the range opens in), if there is one."""
        before = self._db.execute(
            "SELECT payload FROM changes WHERE asset = ? AND ts_event < ?"
            " ORDER BY ts_event DESC LIMIT 1",
            (asset, start_ms),
        ).fetchall()
        within = self._db.execute(
            "SELECT payload FROM changes WHERE asset = ? AND ts_event BETWEEN ? AND ?"
            " ORDER BY ts_event",
            (asset, start_ms, end_ms),
        ).fetchall()
        return [orjson.loads(p) for (p,) in (*before, *within)]

    def assets(self) -> list[str]:
        return [a for (a,) in self._db.execute("SELECT DISTINCT asset FROM samples ORDER BY 1")]

    def span(self, asset: str) -> tuple[int, int] | None:
        """(oldest, newest) minute held for ``asset``."""
        # Two queries: SQLite answers a lone min() or max() from the key, both at once by a scan.
        (lo,) = self._db.execute(
            "SELECT min(minute) FROM samples WHERE asset = ?", (asset,)
        ).fetchone()
        (hi,) = self._db.execute(
            "SELECT max(minute) FROM samples WHERE asset = ?", (asset,)
        ).fetchone()
        return None if lo is None else (lo, hi)


def store_chart(store: SignalStore, items: ChartItems) -> None:
    """Hand what the pipeline kept for the charts to ``store`` (queued, never waited for)."""
    if items.samples:
        store.add_samples(items.samples)
    for change, payload in items.changes:
        store.add_change(change.asset, change.since, change.regime, orjson.dumps(payload))
    for asset, minutes, rows in items.history:
        store.add_history(asset, minutes, rows)


def _nullable(column: np.ndarray) -> list[float | None]:
    return [None if x != x else x for x in column.astype(float).tolist()]


def _nothing() -> None:
    return None


def _open(path: Path) -> sqlite3.Connection:
    # Used by the worker thread only once the store is built (never two threads at once).
    db = sqlite3.connect(path, timeout=1.0, check_same_thread=False)
    try:
        (check,) = db.execute("PRAGMA quick_check(1)").fetchone()
        if check != "ok":
            raise UnreadableStore(f"integrity check: {check}")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if tables - _TABLES:
            raise UnreadableStore(f"not a signal history: it holds {sorted(tables)}")
        if tables and version != SCHEMA_VERSION:
            raise UnreadableStore(f"schema version {version}, expected {SCHEMA_VERSION}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        with db:
            for statement in _CREATE:
                db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except sqlite3.DatabaseError as exc:
        db.close()
        if unreadable(exc):
            raise UnreadableStore(str(exc)) from exc
        raise  # a lock, permissions: the file may be fine, so it is left alone
    except UnreadableStore:
        db.close()
        raise
    return db
