"""The start-up history and the restored checkpoint as tape records, so that a replay of a
stateful session repeats what its engine was given, in the same order.

Live, the history fetch hands the pipeline each asset's whole history so far after every round
(``HistoryItem``, queued among the frames). On the tape that would repeat the same rows up to
90 times, so the recorder writes only the rows that are new or changed since the asset's last
record (``HistoryDeltas``), and the replay merges them back (``HistoryReader``): the pipeline
receives the same ``AssetHistory`` either way. Rows are JSON numbers, which round-trip floats
exactly; NaN (a venue that gives no taker split) is written as null.

Pure: data in, data out.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from signals.backfill import AssetHistory
from streams.events import Bars, Points

HISTORY = "history"  # the ``ctl`` kind of a history record
RESTORE = "restore"  # the ``ctl`` kind of the restored-state record
SOURCE = "tapewatch"  # the ``src`` of both: no venue sent them

Data = Bars | Points
KINDS = tuple(f.name for f in fields(AssetHistory) if f.name != "complete_from_ms")
_EMPTY = AssetHistory()


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """An asset's fetched history so far, queued among the frames."""

    ts_recv_ms: int
    asset: str
    history: AssetHistory
    final: bool = False  # the last of the fetch: every venue group is done
    venue: str = SOURCE


class HistoryDeltas:
    """Recorder side: each history record holds what changed since the asset's last one."""

    def __init__(self) -> None:
        self._written: dict[tuple[str, str], Data] = {}

    def ctl(self, item: HistoryItem) -> dict[str, Any]:
        rows: dict[str, dict[str, list[Any]]] = {}
        for kind in KINDS:
            data: Data = getattr(item.history, kind)
            new = _changed(self._written.get((item.asset, kind)), data)
            if len(new):
                rows[kind] = {f.name: _encode(getattr(new, f.name)) for f in fields(new)}
            self._written[item.asset, kind] = data
        return {
            "kind": HISTORY,
            "asset": item.asset,
            "complete_from_ms": item.history.complete_from_ms,
            "final": item.final,
            "rows": rows,
        }


class HistoryReader:
    """Replay side: rebuilds each asset's ``AssetHistory`` from its records."""

    def __init__(self) -> None:
        self._have: dict[str, AssetHistory] = {}

    def read(self, ctl: dict[str, Any]) -> tuple[str, AssetHistory, bool]:
        """(asset, its history, final); raises ``ValueError`` on a record of another shape."""
        asset, rows, complete = ctl.get("asset"), ctl.get("rows"), ctl.get("complete_from_ms")
        if not isinstance(asset, str) or not isinstance(rows, dict):
            raise ValueError("history record without asset or rows")
        if complete is not None and not isinstance(complete, int):
            raise ValueError(f"history record with complete_from_ms {complete!r}")
        old = self._have.get(asset, _EMPTY)
        merged: dict[str, Data] = {}
        for kind in KINDS:
            data: Data = getattr(old, kind)
            if kind in rows:
                data = data.merged(_decode(type(data), rows[kind]))  # type: ignore[arg-type]
            merged[kind] = data
        history = AssetHistory(**merged, complete_from_ms=complete)  # type: ignore[arg-type]
        self._have[asset] = history
        return asset, history, bool(ctl.get("final"))


def _changed(old: Data | None, new: Data) -> Data:
    """The rows of ``new`` that ``old`` lacks or holds with other values."""
    if old is None or not len(old):
        return new
    columns = [getattr(new, f.name) for f in fields(new)]
    old_columns = [getattr(old, f.name) for f in fields(old)]
    times, old_times = columns[0], old_columns[0]
    at = np.minimum(np.searchsorted(old_times, times), len(old_times) - 1)
    same = old_times[at] == times
    for column, old_column in zip(columns[1:], old_columns[1:], strict=True):
        theirs = old_column[at]
        same &= (column == theirs) | (np.isnan(column) & np.isnan(theirs))
    keep = ~same
    return type(new)(*(column[keep] for column in columns))


def _encode(column: np.ndarray) -> list[Any]:
    if column.dtype.kind == "f":
        return [None if v != v else v for v in column.tolist()]  # NaN -> null
    return column.tolist()


def _decode(cls: type[Data], rows: dict[str, list[Any]]) -> Data:
    columns = []
    for i, f in enumerate(fields(cls)):
        raw = rows.get(f.name)
        if not isinstance(raw, list):
            raise ValueError(f"history rows without {f.name}")
        if i == 0:
            columns.append(np.array(raw, dtype=np.int64))
        else:
            columns.append(np.array([np.nan if v is None else v for v in raw], dtype=float))
    if len({len(c) for c in columns}) != 1:
        raise ValueError("history rows of unequal length")
    return cls.empty().merged(cls(*columns))
