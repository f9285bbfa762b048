"""The signal history store: one-minute samples of every signal and every regime change, per
asset, for the charts (SQLite in ``state.dir``).

Minutes are kept an hour to a row (table ``blocks``): the hour's 60 rows of
``monitor.series.COLUMNS`` as float32 (9,600 bytes for 40 columns; NaN where a value is
missing) and one byte per minute saying whether that minute is absent, from the start-up
history or live. A 90-day range is then 2,161 rows to read, not 129,600: with a row per minute,
SQLite's row loop and unpacking the rows in Python were most of a 90-day chart's time
(``bench/page_load.py``: 0.3-0.5 s, now 0.06-0.14 s). 90 days of 3 assets is 6,483 blocks,
73 MB on disk with the WAL. The price is paid on writing, where it is cheap: a live minute
rewrites its hour's block (10 KB per asset and minute).

Minutes older than the retention (the baseline window) are pruned as new minutes come in, to the
minute. A live minute replaces one the start-up history wrote; history never replaces a live
minute.

The column layout of each block is recorded (table ``layouts``), so a later version that adds a
signal reads the blocks of earlier ones by name instead of starting over; a block is rewritten
in the current layout when a minute is added to it. A store of the first schema (one row per
asset and minute, table ``samples``) is rebuilt into blocks when it is opened, once, in one
transaction.

Every statement runs on one thread of the store's own, in call order (``monitor.outbox`` does
the same): the event loop hands rows over and never waits for the disk, and a read sees every
write asked for before it. Writes are not fsync'd one by one (``synchronous=NORMAL`` in WAL
mode): a power cut may lose the last moments of chart history, never corrupt it. A file that is
not a readable store is moved aside (``<name>.corrupt-<UTC time>``) and a fresh one started.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from monitor.outbox import move_aside, unreadable
from monitor.series import COLUMNS, ROW_DTYPE, ChartItems, Sample, downsample
from streams.units import HOUR_MS, MINUTE_MS

log = logging.getLogger("tapewatch.history")

SCHEMA_VERSION = 2
MINUTE_ROWS_VERSION = 1  # the first schema: a row per asset and minute, rebuilt when opened
SLOTS = HOUR_MS // MINUTE_MS  # minutes per block
ABSENT, HISTORY, LIVE = 0, 1, 2  # what a block holds at each of its minutes
_TABLES = {"layouts", "blocks", "changes"}
_CREATE = (
    """CREATE TABLE IF NOT EXISTS layouts (
        id INTEGER PRIMARY KEY,
        columns TEXT NOT NULL UNIQUE
    )""",
    # A rowid table, unlike the small rows of ``changes``: a 10 KB row spills to overflow pages,
    # and a rowid table packs them tighter (20 % smaller for 90 days, and a little faster read).
    """CREATE TABLE IF NOT EXISTS blocks (
        asset TEXT NOT NULL,
        hour INTEGER NOT NULL,
        layout INTEGER NOT NULL,
        kinds BLOB NOT NULL,
        rows BLOB NOT NULL,
        PRIMARY KEY (asset, hour)
    )""",
    """CREATE TABLE IF NOT EXISTS changes (
        asset TEXT NOT NULL,
        ts_event INTEGER NOT NULL,
        regime TEXT NOT NULL,
        payload BLOB NOT NULL,
        PRIMARY KEY (asset, ts_event)
    ) WITHOUT ROWID""",
)
_PUT = """INSERT INTO blocks VALUES (?, ?, ?, ?, ?) ON CONFLICT (asset, hour)
DO UPDATE SET layout = excluded.layout, kinds = excluded.kinds, rows = excluded.rows"""
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
        self._layout_columns: dict[int, tuple[str, ...]] = {}  # layout id -> columns
        self._newest: dict[str, int] = {}  # asset -> newest minute written, for pruning
        self._pruned_to = 0
        if _has_table(self._db, "samples"):
            self._rebuild_minute_rows()
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

    def _by_name(self, layout: int, blob: bytes, names: Sequence[str]) -> np.ndarray:
        """The rows in ``blob`` (float32, ``layout``'s columns) as columns ``names``, one
        array row per name (each column's minutes side by side in memory: what ``downsample``
        reduces fastest); NaN for a name the layout lacks (a signal added since)."""
        columns = self._layout_columns.get(layout)
        if columns is None:
            (text,) = self._db.execute(
                "SELECT columns FROM layouts WHERE id = ?", (layout,)
            ).fetchone()
            columns = self._layout_columns[layout] = tuple(orjson.loads(text))
        raw = np.frombuffer(blob, dtype=ROW_DTYPE).reshape(-1, len(columns))
        out = np.full((len(names), len(raw)), np.nan, dtype=ROW_DTYPE)
        pairs = [(j, columns.index(name)) for j, name in enumerate(names) if name in columns]
        if pairs:
            to, source = zip(*pairs, strict=True)
            out[list(to)] = raw.T[list(source)]
        return out

    def _block(self, asset: str, hour: int) -> tuple[np.ndarray, np.ndarray]:
        """The block of ``hour``, to modify: (kinds, rows of ``COLUMNS``), empty if none."""
        found = self._db.execute(
            "SELECT layout, kinds, rows FROM blocks WHERE asset = ? AND hour = ?", (asset, hour)
        ).fetchone()
        if found is None:
            return np.zeros(SLOTS, np.uint8), np.full((SLOTS, len(COLUMNS)), np.nan, ROW_DTYPE)
        layout, kinds, rows = found
        return np.frombuffer(kinds, np.uint8).copy(), self._by_name(layout, rows, COLUMNS).T

    def _put(self, asset: str, hour: int, kinds: np.ndarray, rows: np.ndarray) -> None:
        """Write a block back; one with no minute left is deleted (so every block holds one:
        ``span`` relies on it)."""
        if kinds.any():
            self._db.execute(
                _PUT, (asset, hour, self._layout(COLUMNS), kinds.tobytes(), rows.tobytes())
            )
        else:
            self._db.execute("DELETE FROM blocks WHERE asset = ? AND hour = ?", (asset, hour))

    def _merge(self, asset: str, minutes: np.ndarray, rows: np.ndarray, kind: int) -> int:
        """Write ``rows`` (of ``COLUMNS``) at ``minutes`` into their hours' blocks, in the
        caller's transaction: a live minute replaces what is there, a history minute only
        fills an absent one. Returns how many minutes were written."""
        # Sorted, and of a minute given twice the last row, as writing them one by one would.
        last = len(minutes) - 1 - np.unique(minutes[::-1], return_index=True)[1]
        minutes, rows = minutes[last].astype(np.int64), rows[last].astype(ROW_DTYPE)
        hours = minutes - minutes % HOUR_MS
        written = 0
        for part in np.split(np.arange(len(minutes)), np.flatnonzero(np.diff(hours)) + 1):
            if not len(part):  # no minutes at all: np.split still gives one, empty, part
                continue
            hour = int(hours[part[0]])
            kinds, block = self._block(asset, hour)
            slots = (minutes[part] - hour) // MINUTE_MS
            if kind == HISTORY:
                free = kinds[slots] == ABSENT
                slots, part = slots[free], part[free]
            if len(part):
                block[slots] = rows[part]
                kinds[slots] = kind
                self._put(asset, hour, kinds, block)
                written += len(part)
        return written

    def _add_samples(self, samples: list[Sample]) -> None:
        by_asset: dict[str, list[Sample]] = {}
        for s in samples:
            by_asset.setdefault(s.asset, []).append(s)
        with self._db:
            for asset, mine in by_asset.items():
                minutes = np.array([s.minute for s in mine], dtype=np.int64)
                self._merge(asset, minutes, np.stack([s.row for s in mine]), LIVE)
                self._newest[asset] = max(self._newest.get(asset, -1), int(minutes.max()))
        if samples:
            self._prune()

    def _add_history(self, asset: str, minutes: np.ndarray, rows: np.ndarray) -> int:
        if not len(minutes):
            return 0
        newest = int(minutes.max())
        keep = minutes > max(newest, self._newest.get(asset, newest)) - self.retention_ms
        with self._db:
            return self._merge(asset, minutes[keep], rows[keep], HISTORY)

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
        hour = cut - cut % HOUR_MS  # the block the cut falls in: its minutes up to the cut go
        with self._db:
            self._db.execute("DELETE FROM blocks WHERE hour < ?", (hour,))
            cutting = self._db.execute("SELECT asset FROM blocks WHERE hour = ?", (hour,))
            for (asset,) in cutting.fetchall():
                kinds, rows = self._block(asset, hour)
                gone = hour + MINUTE_MS * np.arange(SLOTS) <= cut
                kinds[gone] = ABSENT
                rows[gone] = np.nan
                self._put(asset, hour, kinds, rows)
            self._db.execute(_PRUNE_CHANGES, (cut, cut))
        self._pruned_to = cut

    def _rebuild_minute_rows(self) -> None:
        """A store of the first schema (a row per asset and minute) as blocks, in one
        transaction: if it is interrupted, the store is left as it was and rebuilt next time."""
        t0 = time.monotonic()
        (count,) = self._db.execute("SELECT count(*) FROM samples").fetchone()
        log.info("signal history %s: rebuilding %d minute rows as hour blocks", self.path, count)
        with self._db:
            self._db.execute("BEGIN")
            groups = self._db.execute("SELECT DISTINCT asset, layout FROM samples").fetchall()
            for asset, layout in groups:
                found = self._db.execute(
                    "SELECT minute, live, row FROM samples WHERE asset = ? AND layout = ?",
                    (asset, layout),
                ).fetchall()
                minutes = np.array([m for m, _, _ in found], dtype=np.int64)
                live = np.array([bool(x) for _, x, _ in found])
                rows = self._by_name(layout, b"".join(r for _, _, r in found), COLUMNS).T
                self._merge(asset, minutes[live], rows[live], LIVE)
                self._merge(asset, minutes[~live], rows[~live], HISTORY)
            self._db.execute("DROP TABLE samples")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        # The minute rows' pages back to the file system; VACUUM goes through the WAL, which
        # would otherwise stay the size of the whole store for as long as the daemon runs.
        self._db.execute("VACUUM")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (blocks,) = self._db.execute("SELECT count(*) FROM blocks").fetchone()
        log.info(
            "signal history %s: rebuilt as %d hour blocks in %.1f s",
            self.path,
            blocks,
            time.monotonic() - t0,
        )

    # -- reads (on the worker via run_soon, or directly once no writer is running) ----------------
    def series(
        self, asset: str, start_ms: int, end_ms: int, names: Sequence[str], max_points: int
    ) -> dict[str, Any]:
        """The minutes of [start_ms, end_ms] of ``names`` (columns of ``COLUMNS``), at most
        ``max_points`` rows (``monitor.series.downsample``): {"t": minute opens, "values":
        {name: list, NaN as None}, "minutes": rows before downsampling}."""
        wanted = [n for n in names if n in COLUMNS]
        found = self._db.execute(
            "SELECT hour, layout, kinds, rows FROM blocks WHERE asset = ?"
            " AND hour BETWEEN ? AND ? ORDER BY hour",
            (asset, start_ms - start_ms % HOUR_MS, end_ms),
        ).fetchall()
        hours, layouts, kinds, blobs = zip(*found, strict=True) if found else ((), (), (), ())
        times = (np.array(hours, np.int64)[:, None] + MINUTE_MS * np.arange(SLOTS)).reshape(-1)
        held = np.frombuffer(b"".join(kinds), np.uint8) != ABSENT
        # The blocks of each layout converted at once: there is one layout but for the hours
        # written before an upgrade that added a signal.
        columns = np.empty((len(wanted), len(times)), ROW_DTYPE)
        for layout in set(layouts):
            mine = [i for i, of in enumerate(layouts) if of == layout]
            part = self._by_name(layout, b"".join(blobs[i] for i in mine), wanted)
            if len(mine) == len(found):
                columns = part
            else:
                by_block = columns.reshape(len(wanted), len(found), SLOTS)
                by_block[:, mine] = part.reshape(len(wanted), len(mine), SLOTS)
        keep = held & (times >= start_ms) & (times <= end_ms)
        # np.compress keeps each column's minutes side by side (a boolean index would not).
        t, v = downsample(times[keep], np.compress(keep, columns, axis=1).T, max_points)
        return {
            "t": t.tolist(),
            "values": {name: _nullable(v[:, j]) for j, name in enumerate(wanted)},
            "minutes": int(keep.sum()),
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
        return [a for (a,) in self._db.execute("SELECT DISTINCT asset FROM blocks ORDER BY 1")]

    def span(self, asset: str) -> tuple[int, int] | None:
        """(oldest, newest) minute held for ``asset``."""
        ends = []
        for order, at in (("ASC", 0), ("DESC", -1)):
            found = self._db.execute(
                f"SELECT hour, kinds FROM blocks WHERE asset = ? ORDER BY hour {order} LIMIT 1",
                (asset,),
            ).fetchone()
            if found is None:
                return None
            hour, kinds = found
            ends.append(hour + MINUTE_MS * int(np.flatnonzero(np.frombuffer(kinds, np.uint8))[at]))
        return ends[0], ends[1]


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


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return db.execute(query, (name,)).fetchone() is not None


def _open(path: Path) -> sqlite3.Connection:
    # Used by the worker thread only once the store is built (never two threads at once).
    db = sqlite3.connect(path, timeout=1.0, check_same_thread=False)
    try:
        (check,) = db.execute("PRAGMA quick_check(1)").fetchone()
        if check != "ok":
            raise UnreadableStore(f"integrity check: {check}")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        (version,) = db.execute("PRAGMA user_version").fetchone()
        # A store of the first schema keeps its version until its rows are rebuilt as blocks.
        minute_rows = version == MINUTE_ROWS_VERSION and "samples" in tables
        if tables - _TABLES - ({"samples"} if minute_rows else set()):
            raise UnreadableStore(f"not a signal history: it holds {sorted(tables)}")
        if tables and version != SCHEMA_VERSION and not minute_rows:
            raise UnreadableStore(f"schema version {version}, expected {SCHEMA_VERSION}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        with db:
            for statement in _CREATE:
                db.execute(statement)
            if not minute_rows:
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
