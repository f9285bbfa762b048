"""Checkpoints of engine state in the state directory: atomic, versioned, never fatal.

A checkpoint is one ``.npz`` file (numpy arrays, no pickle) with a JSON ``meta`` entry carrying
the format version and whatever the caller adds. Writes go to a temporary file in the same
directory, are fsynced, then renamed over the old checkpoint, so a crash mid-write leaves the
previous checkpoint intact. Loading a missing, corrupt or version-mismatched file raises
``StateError`` with the reason; the daemon logs it and starts fresh instead of crashing.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

STATE_VERSION = 1


class StateError(Exception):
    """The checkpoint cannot be used; the message says why."""


def save_checkpoint(path: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> int:
    """Atomically replace ``path``; returns the bytes written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"version": STATE_VERSION, **meta})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, __meta__=np.array(header), **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path.stat().st_size


def load_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise StateError(f"{path}: no checkpoint")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise StateError(f"{path}: unreadable checkpoint ({exc})") from None
    raw = arrays.pop("__meta__", None)
    try:
        meta = json.loads(str(raw)) if raw is not None else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise StateError(f"{path}: checkpoint has no readable metadata")
    if meta.get("version") != STATE_VERSION:
        raise StateError(
            f"{path}: checkpoint format {meta.get('version')!r}, this tapewatch reads "
            f"{STATE_VERSION}; ignoring it"
        )
    return arrays, meta
