"""Tape v1: recorded raw traffic, one JSON object per line, optionally zstd-compressed.

Line 1 is the header ``{"tape": 1, ...}``. Then websocket frames
``{"ts": <receive time, unix seconds>, "src": <venue>, "msg": <raw text>}``, REST bodies,
which add ``"url": "<path?query>"``, and collector control records ``{"ts", "src", "msg": "",
"ctl": {"kind": "link_lost" | "backfill_done", ...}}``: what the collector concluded (a socket
dropped, a trade backfill finished), so a replay reaches the same conclusions as the live
session (readers that predate them may skip any line carrying ``ctl``). Readers yield records in
file order; ``merge`` interleaves several tapes by receive time, the order a live collector would
have seen them in.
"""

from __future__ import annotations

import heapq
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
import zstandard

TAPE_VERSION = 1


class TapeError(Exception):
    """The file is not a readable tape (bad header, not JSON, missing keys)."""


@dataclass(frozen=True, slots=True)
class TapeRecord:
    ts: float  # receive time, unix seconds
    src: str  # venue name (streams.events.VENUES)
    msg: str  # raw frame or REST body, byte for byte as received
    url: str | None = None  # set for REST bodies only
    ctl: dict[str, Any] | None = None  # set for collector control records only


def _open_text(path: Path) -> IO[str]:
    raw = path.open("rb")
    if path.suffix == ".zst":
        stream = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return io.TextIOWrapper(stream, encoding="utf-8")
    return io.TextIOWrapper(raw, encoding="utf-8")


def read_tape(path: str | Path) -> Iterator[TapeRecord]:
    path = Path(path)
    with _open_text(path) as fh:
        header_line = fh.readline()
        try:
            header = orjson.loads(header_line)
        except orjson.JSONDecodeError:
            raise TapeError(f"{path}: line 1 is not a JSON tape header") from None
        if not isinstance(header, dict) or header.get("tape") != TAPE_VERSION:
            raise TapeError(
                f"{path}: not a tape v{TAPE_VERSION} file (header {header_line[:80]!r})"
            )
        for lineno, line in enumerate(fh, start=2):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
                yield TapeRecord(
                    float(obj["ts"]), obj["src"], obj["msg"], obj.get("url"), obj.get("ctl")
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise TapeError(f"{path}:{lineno}: bad tape record ({exc})") from None


def read_header(path: str | Path) -> dict[str, Any]:
    with _open_text(Path(path)) as fh:
        try:
            header = orjson.loads(fh.readline())
        except orjson.JSONDecodeError:
            raise TapeError(f"{path}: line 1 is not a JSON tape header") from None
    if not isinstance(header, dict) or header.get("tape") != TAPE_VERSION:
        raise TapeError(f"{path}: not a tape v{TAPE_VERSION} file")
    return header


def merge(paths: Iterable[str | Path]) -> Iterator[TapeRecord]:
    """Records of all tapes in receive-time order. Equal times keep input order, and segments
    of one rotated recording are put in segment order first, however a shell glob sorted them."""
    ordered = sorted(paths, key=lambda p: int(read_header(p).get("segment", 0)))
    return heapq.merge(*(read_tape(p) for p in ordered), key=lambda r: r.ts)


class TapeWriter:
    """Appends records to a tape; ``.zst`` paths are compressed."""

    def __init__(
        self, path: str | Path, note: str = "", sources: Iterable[str] = (), segment: int = 0
    ) -> None:
        self.path = Path(path)
        self._raw = self.path.open("wb")
        self._out: IO[bytes] = (
            zstandard.ZstdCompressor(level=3).stream_writer(self._raw, closefd=False)
            if self.path.suffix == ".zst"
            else self._raw
        )
        header = {"tape": TAPE_VERSION, "note": note, "sources": sorted(sources)}
        if segment:
            header["segment"] = segment
        self._out.write(orjson.dumps(header) + b"\n")

    def write(self, record: TapeRecord) -> int:
        """Append one record; returns its uncompressed size in bytes."""
        obj: dict[str, object] = {"ts": record.ts, "src": record.src}
        if record.url is not None:
            obj["url"] = record.url
        if record.ctl is not None:
            obj["ctl"] = record.ctl
        obj["msg"] = record.msg
        line = orjson.dumps(obj) + b"\n"
        self._out.write(line)
        return len(line)

    def close(self) -> None:
        if self._out is not self._raw:
            self._out.close()
        self._raw.close()

    def __enter__(self) -> TapeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
