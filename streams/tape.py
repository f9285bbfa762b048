"""Tape v1: recorded raw traffic, one JSON object per line, optionally zstd-compressed.

Line 1 is the header ``{"tape": 1, ...}``. Then websocket frames
``{"ts": <receive time, unix seconds>, "src": <venue>, "msg": <raw text>}``, REST bodies,
which add ``"url": "<path?query>"``, and collector control records ``{"ts", "src", "msg": "",
"ctl": {"kind": "link_lost" | "refetch_done", ...}}``: what the collector concluded (a socket
dropped, the refetch of a trade gap finished), so a replay reaches the same conclusions as the
live session (readers that predate them may skip any line carrying ``ctl``). Readers yield
records in file order; ``merge`` interleaves several tapes by receive time, the order a live
collector would have seen them in.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
import zstandard

TAPE_VERSION = 1

log = logging.getLogger("tapewatch.tape")


class TapeError(Exception):
    """The file is not a readable tape (bad header, not JSON, missing keys)."""


@dataclass(frozen=True, slots=True)
class TapeRecord:
    ts: float  # receive time, unix seconds
    src: str  # venue name (streams.events.VENUES)
    msg: str  # raw frame or REST body, byte for byte as received
    url: str | None = None  # set for REST bodies only
    ctl: dict[str, Any] | None = None  # set for collector control records only


# What a tape's first bytes may be. zstd is read whatever the file is called; the others are
# named in the error, because "line 1 is not JSON" says nothing useful about a .gz.
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
OTHER_COMPRESSIONS = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
}
CHUNK = 1 << 16
HEADER_MAX = 1 << 20  # a tape header is a few hundred bytes


class _Source:
    """A tape file's bytes, decompressed when zstd, in chunks.

    ``truncated`` is set once the chunks are exhausted if the file ended inside a zstd frame:
    what a recorder killed mid-write leaves, and which zstd itself does not report.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.truncated = False

    def _open(self) -> IO[bytes]:
        try:
            return self.path.open("rb")
        except IsADirectoryError:
            raise TapeError(
                f"{self.path}: is a directory, not a tape (pass the tape files in it)"
            ) from None
        except FileNotFoundError:
            raise TapeError(f"{self.path}: no such file") from None
        except OSError as exc:
            raise TapeError(f"{self.path}: cannot read it: {exc.strerror or exc}") from None

    def chunks(self) -> Iterator[bytes]:
        with self._open() as raw:
            head = raw.read(CHUNK)
            if head.startswith(ZSTD_MAGIC):
                yield from self._zstd(head, raw)
                return
            for magic, name in OTHER_COMPRESSIONS.items():
                if head.startswith(magic):
                    raise TapeError(
                        f"{self.path}: {name}-compressed, not a tape: tapes are JSON Lines, "
                        f"plain or zstd-compressed (.zst); decompress it first"
                    )
            if self.path.suffix == ".zst" and head:
                raise TapeError(f"{self.path}: not zstd data, although named .zst")
            while head:
                yield head
                head = raw.read(CHUNK)

    def _zstd(self, head: bytes, raw: IO[bytes]) -> Iterator[bytes]:
        dctx = zstandard.ZstdDecompressor()
        frame = dctx.decompressobj()
        in_frame = False  # bytes of the current frame fed, and its end not reached yet
        chunk = head
        while chunk:
            while chunk:
                try:
                    out = frame.decompress(chunk)
                except zstandard.ZstdError as exc:
                    raise TapeError(f"{self.path}: corrupt zstd data ({exc})") from None
                if out:
                    yield out
                if frame.eof:  # several frames may follow each other (concatenated files)
                    chunk, frame, in_frame = frame.unused_data, dctx.decompressobj(), False
                else:
                    chunk, in_frame = b"", True
            chunk = raw.read(CHUNK)
        self.truncated = in_frame


def _lines(chunks: Iterable[bytes]) -> Iterator[tuple[bytes, bool]]:
    """(line without its newline, whether the newline was there), in file order."""
    rest = b""
    header = True  # no line yet
    for chunk in chunks:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield line, True
        header = header and not lines
        if header and len(rest) > HEADER_MAX:
            # A large file without a single newline (an image, an archive) is no tape: say so
            # now rather than read all of it into memory looking for the end of line 1.
            yield rest[:HEADER_MAX], False
            return
    if rest:
        yield rest, False


def _header(path: Path, line: bytes | None) -> dict[str, Any]:
    if line is None:
        raise TapeError(f"{path}: empty file, not a tape")
    try:
        header = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise TapeError(
            f"{path}: not a tape: line 1 is not a JSON tape header "
            f'(a tape starts with {{"tape": {TAPE_VERSION}, ...}})'
        ) from None
    if not isinstance(header, dict) or header.get("tape") != TAPE_VERSION:
        shown = line[:80].decode("utf-8", "replace")
        raise TapeError(f"{path}: not a tape v{TAPE_VERSION} file (header {shown!r})")
    return header


def _record(line: bytes) -> TapeRecord:
    obj = orjson.loads(line)
    return TapeRecord(float(obj["ts"]), obj["src"], obj["msg"], obj.get("url"), obj.get("ctl"))


def read_tape(path: str | Path) -> Iterator[TapeRecord]:
    """The records of one tape, in file order.

    A tape whose end is cut (a recorder killed mid-write: a last line without its newline that
    does not parse, or a zstd stream that stops inside a frame) yields every complete record
    and logs one WARNING; any other unreadable line is a ``TapeError``.
    """
    path = Path(path)
    source = _Source(path)
    lines = _lines(source.chunks())
    first = next(lines, None)
    _header(path, None if first is None else first[0])
    lineno = 1
    cut: bytes | None = None
    for lineno, (line, complete) in enumerate(lines, start=2):
        if not line.strip():
            continue
        try:
            record = _record(line)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            if not complete:  # only the very last line can lack its newline
                cut = line
                break
            raise TapeError(f"{path}:{lineno}: bad tape record ({exc})") from None
        yield record
    if cut is not None:
        ends = " and the zstd stream ends inside a frame" if source.truncated else ""
        log.warning(
            "%s: line %d is cut short (%d bytes without an end of line%s), as a recording "
            "stopped mid-write leaves it; it is skipped and the lines before it are read",
            path,
            lineno,
            len(cut),
            ends,
        )
    elif source.truncated:
        log.warning(
            "%s: the zstd stream ends inside a frame after line %d, as a recording stopped "
            "mid-write leaves it; the lines up to there are read",
            path,
            lineno,
        )


def read_header(path: str | Path) -> dict[str, Any]:
    """The header of a tape; ``TapeError`` if the file is not one."""
    path = Path(path)
    chunks = _Source(path).chunks()
    try:
        first = next(_lines(chunks), None)
    finally:
        chunks.close()  # closes the file now, not whenever the generator is collected
    return _header(path, None if first is None else first[0])


def _segment(path: str | Path) -> int:
    segment = read_header(path).get("segment", 0)
    if not isinstance(segment, int) or isinstance(segment, bool):
        raise TapeError(f"{path}: header has segment {segment!r}, not a whole number")
    return segment


def merge(paths: Iterable[str | Path]) -> Iterator[TapeRecord]:
    """Records of all tapes in receive-time order. Equal times keep input order, and segments
    of one rotated recording are put in segment order first, however a shell glob sorted them.
    Every header is read here, so a file that is not a tape fails before any record is read."""
    ordered = sorted(paths, key=_segment)
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
