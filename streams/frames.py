"""What a parser says about a frame it cannot turn into events.

Parsers raise these instead of returning sentinels, so every frame ends in exactly one of three
outcomes: events, a deliberate skip with a reason, or a malformed frame with a kind. Callers
count both kinds by name (see ``monitor.health``); nothing is silently dropped.
"""

from __future__ import annotations

import math
import sys
from typing import Annotated

import msgspec
import orjson

# The fast decoders' numbers (msgspec in "lax" mode reads a numeric string as a float in C and
# checks these bounds as it reads): a price is finite and > 0, a trade size finite and > 0, a
# book level's size finite and >= 0 (0 removes the level). NaN fails every bound. A frame that
# breaks one goes the strict way, which names the fault.
Price = Annotated[float, msgspec.Meta(gt=0.0, le=sys.float_info.max)]
Size = Annotated[float, msgspec.Meta(gt=0.0, le=sys.float_info.max)]
LevelSize = Annotated[float, msgspec.Meta(ge=0.0, le=sys.float_info.max)]


class SkippedFrame(Exception):
    """Base: the frame produced no events. ``kind`` is a short, stable counter name."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


class IgnoredFrame(SkippedFrame):
    """A well-formed frame we deliberately do not use (acks, streams not collected)."""


class MalformedFrame(SkippedFrame):
    """A frame that breaks the venue's documented shape: not JSON, missing or mistyped fields,
    impossible values (NaN, negative prices)."""


def _required(payload: dict, key: str) -> object:
    try:
        return payload[key]
    except KeyError:
        raise MalformedFrame("missing_field", key) from None


def _finite(raw: object, key: str) -> float:
    """A venue decimal (string or number) as a finite float."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise MalformedFrame("bad_type", f"{key}={raw!r}")
    try:
        value = float(raw)
    except ValueError:
        raise MalformedFrame("bad_type", f"{key}={raw!r}") from None
    if not math.isfinite(value):
        raise MalformedFrame("bad_value", f"{key}={raw!r}")
    return value


def number(payload: dict, key: str) -> float:
    """A decimal that may take any finite value (a funding rate can be negative)."""
    return _finite(_required(payload, key), key)


def positive_number(payload: dict, key: str) -> float:
    """A price or trade size: finite and > 0."""
    value = _finite(_required(payload, key), key)
    if value <= 0.0:
        raise MalformedFrame("bad_value", f"{key}={payload[key]!r}")
    return value


def non_negative_number(payload: dict, key: str) -> float:
    """A book quantity: finite and >= 0 (0 removes the level)."""
    value = _finite(_required(payload, key), key)
    if value < 0.0:
        raise MalformedFrame("bad_value", f"{key}={payload[key]!r}")
    return value


def optional_number(payload: dict, key: str) -> float | None:
    """A decimal that may be absent or empty; when present it must be finite (may be <= 0)."""
    raw = payload.get(key)
    if raw is None or raw == "":
        return None
    return _finite(raw, key)


def integer(payload: dict, key: str) -> int:
    raw = _required(payload, key)
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise MalformedFrame("bad_type", f"{key}={raw!r}")
    return raw


def optional_integer(payload: dict, key: str) -> int | None:
    """An integer field some shapes of a message omit (spot bookTicker has no ``E``)."""
    raw = payload.get(key)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise MalformedFrame("bad_type", f"{key}={raw!r}")
    return raw


def string(payload: dict, key: str) -> str:
    raw = _required(payload, key)
    if not isinstance(raw, str) or not raw:
        raise MalformedFrame("bad_type", f"{key}={raw!r}")
    return raw


def boolean(payload: dict, key: str) -> bool:
    raw = _required(payload, key)
    if not isinstance(raw, bool):
        raise MalformedFrame("bad_type", f"{key}={raw!r}")
    return raw


def rest_rows(body: str | bytes, what: str, key: str | None = None) -> list:
    """A REST body that holds a list of rows (under ``key`` if given); a venue's error object
    (``{"code", "msg"}``) or any other shape is ``MalformedFrame``."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedFrame("not_json", f"{what}: {str(body)[:80]!r}") from None
    if isinstance(data, dict) and "code" in data and "msg" in data:
        raise MalformedFrame("rest_error", f"{what}: {data['code']} {data['msg']}"[:200])
    if isinstance(data, dict) and key is not None:
        data = data.get(key)
    if not isinstance(data, list):
        raise MalformedFrame("not_list", what)
    return data
