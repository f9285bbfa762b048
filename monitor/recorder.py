"""Records everything the collectors hand the pipeline, in the order the pipeline saw it.

Writing from the consumer (not from each socket) is what makes a replay reproduce the live
session exactly: frames, REST bodies and link losses land on the tape in processing order.
Tapes rotate by size: ``rec.tape.jsonl.zst``, then ``rec.001.tape.jsonl.zst``, ... ; replay
them together (``tapewatch replay rec*.tape.jsonl.zst``), they merge by receive time.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from monitor.history_tape import RESTORE, SOURCE, HistoryDeltas, HistoryItem
from monitor.state import save_checkpoint
from streams.connection import Frame, QueueItem, RestBody
from streams.tape import TapeRecord, TapeWriter

log = logging.getLogger("tapewatch.recorder")


def segment_path(path: Path, n: int) -> Path:
    """``rec.tape.jsonl.zst`` → ``rec.003.tape.jsonl.zst`` (segment 0 is ``path`` itself)."""
    if n == 0:
        return path
    name = path.name
    stem, dot, rest = name.partition(".")
    return path.with_name(f"{stem}.{n:03d}{dot}{rest}" if dot else f"{name}.{n:03d}")


class Recorder:
    def __init__(self, path: str | Path, max_bytes: int = 256 * 2**20, note: str = "") -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes  # uncompressed bytes per segment
        self.note = note
        self.segment = 0
        self.frames = 0
        self.rest_bodies = 0
        self.bytes = 0
        self._segment_bytes = 0
        self._history = HistoryDeltas()
        self._writer = self._open()

    def _open(self) -> TapeWriter:
        path = segment_path(self.path, self.segment)
        writer = TapeWriter(
            path,
            note=self.note,
            sources=("binance-spot", "binance-usdm", "coinbase"),
            segment=self.segment,
        )
        log.info("recording to %s", path)  # once it is open: a path that fails says so alone
        return writer

    def restore_path(self) -> Path:
        """``rec.tape.jsonl.zst`` → ``rec.restore.npz``: the state a stateful session began with."""
        return self.path.with_name(f"{self.path.name.partition('.')[0]}.restore.npz")

    def write_restore(
        self, ts_ms: int, arrays: dict[str, np.ndarray], regimes: dict[str, Any]
    ) -> None:
        """The state the session's engine started from: the checkpoint's arrays it restored
        (written beside the tape) and the regimes it took over. A replay loads the same."""
        path = self.restore_path()
        save_checkpoint(path, arrays, {"note": "the restored state of a recorded session"})
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        ctl = {"kind": RESTORE, "file": path.name, "sha256": digest, "regimes": regimes}
        self._write(TapeRecord(ts_ms / 1000, SOURCE, "", ctl=ctl))

    def write(self, item: QueueItem | HistoryItem) -> None:
        if isinstance(item, HistoryItem):
            ctl = self._history.ctl(item)
            self._write(TapeRecord(item.ts_recv_ms / 1000, SOURCE, "", ctl=ctl))
            return
        if isinstance(item, Frame):
            raw = item.raw if isinstance(item.raw, str) else item.raw.decode()
            record = TapeRecord(item.ts_recv_ms / 1000, item.venue, raw)
            self.frames += 1
        elif isinstance(item, RestBody):
            record = TapeRecord(item.ts_recv_ms / 1000, item.venue, item.body, url=item.url)
            self.rest_bodies += 1
        else:
            record = TapeRecord(item.ts_recv_ms / 1000, item.venue, "", ctl=item.ctl)
        self._write(record)

    def _write(self, record: TapeRecord) -> None:
        size = self._writer.write(record)
        self.bytes += size
        self._segment_bytes += size
        if self._segment_bytes >= self.max_bytes:
            self._writer.close()
            self.segment += 1
            self._segment_bytes = 0
            self._writer = self._open()

    def close(self) -> None:
        self._writer.close()
