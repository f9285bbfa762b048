"""Checkpoints of engine state in the state directory: atomic, versioned, never fatal.

A checkpoint is one ``.npz`` file (numpy arrays, no pickle) with a JSON ``meta`` entry carrying
the format version and whatever the caller adds. Writes go to a temporary file in the same
directory, are fsynced, then renamed over the old checkpoint, so a crash mid-write leaves the
previous checkpoint intact. Loading a missing, corrupt or version-mismatched file raises
``StateError`` with the reason; the daemon logs it and starts fresh instead of crashing.

State files record where their data came from (``origin``: the venue endpoints and each
asset's symbols). State from other endpoints (the simulator's, say) is not restored: the file is
renamed aside (``set_aside``), never deleted, and the daemon starts fresh.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from monitor.config import ASSET_VENUES, Config

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


def origin(config: Config) -> dict[str, Any]:
    """Where ``config``'s data comes from: every venue endpoint (websocket and REST URLs) and
    each asset's symbol per venue. State files carry it in their metadata."""
    venues = {
        field.name: dataclasses.asdict(getattr(config.venues, field.name))
        for field in dataclasses.fields(config.venues)
    }
    assets = {
        name: {key: symbol for key in ASSET_VENUES if (symbol := getattr(asset, key))}
        for name, asset in config.assets.items()
    }
    return {"venues": venues, "assets": assets}


def endpoint_differences(recorded: object, current: Mapping[str, Any]) -> list[str]:
    """The endpoints of ``current`` (an ``origin``) that ``recorded`` (a file's) does not share,
    each as ``venues.<venue>.<key>: <file's> in the file, <config's> configured``."""
    if not isinstance(recorded, Mapping) or not isinstance(recorded.get("venues"), Mapping):
        return ["no venue endpoints recorded (written before tapewatch recorded them)"]
    out = []
    for venue, urls in current["venues"].items():
        theirs = recorded["venues"].get(venue)
        for key, url in urls.items():
            old = theirs.get(key) if isinstance(theirs, Mapping) else None
            if old != url:
                out.append(f"venues.{venue}.{key}: {old!r} in the file, {url!r} configured")
    return out


def asset_differences(recorded: object, current: Mapping[str, Any]) -> dict[str, str]:
    """asset -> what differs, for the assets of ``current`` (an ``origin``) that ``recorded``
    has under other symbols. Assets it lacks are not differences: they simply start fresh."""
    theirs = recorded.get("assets") if isinstance(recorded, Mapping) else None
    if not isinstance(theirs, Mapping):
        return {}
    return {
        asset: f"assets.{asset}: {theirs[asset]!r} in the file, {symbols!r} configured"
        for asset, symbols in current["assets"].items()
        if asset in theirs and theirs[asset] != symbols
    }


def set_aside(path: str | Path) -> Path:
    """Rename ``path`` to ``<name>.set-aside-<UTC time>`` (never overwriting) and return the new
    path: state that must not be used is kept for inspection, not deleted."""
    path = Path(path)
    aside = aside_name(path, "set-aside")
    path.rename(aside)
    return aside


def aside_name(path: Path, tag: str) -> Path:
    """A free name for ``path`` put aside: ``<name>.<tag>-<UTC time>[-n]``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.{tag}-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.{tag}-{stamp}-{n}")
        n += 1
    return aside


def put_aside(path: str | Path) -> str:
    """``set_aside`` for a log line: what became of the file. A file that cannot be renamed
    (permissions) is left where it is; the next save replaces it."""
    try:
        return f"set aside as {set_aside(path)}"
    except OSError as exc:
        return f"could not set it aside ({exc}); the next save replaces it"
