"""``tapewatch tail``: subscribe to a tapewatch prefix and print regimes and signals as they come.

It is an ordinary MQTT subscriber (the same thing any user writes), used by ``tapewatch demo``.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from datetime import UTC, datetime
from typing import Any, TextIO

import aiomqtt
import orjson

# Signals shown on the one-line summary, in this order.
KEY_SIGNALS = ("taker_imbalance_perp", "taker_buy_sell_ratio", "funding_rate", "mark_price")


def _clock(ms: int | None) -> str:
    if ms is None:
        return "--:--:--"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S")


def _num(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_message(topic: str, payload: dict[str, Any], prefix: str) -> str | None:
    """One terminal line for one tapewatch message (None for topics not shown)."""
    parts = topic[len(prefix) + 1 :].split("/")
    if parts[0] == "status" and len(parts) == 2:
        return f"[status]  {parts[1]} {payload.get('state')} (session {payload.get('session')})"
    if len(parts) != 2:
        return None
    asset, kind = parts
    if kind == "regime":
        reasons = "; ".join(
            f"{r['signal']} {_num(r['value'])} {r['op']} {_num(r['threshold'])}"
            for r in payload.get("reasons", [])
        )
        was = payload.get("previous")
        return (
            f"[regime]  {asset} {payload.get('regime')}"
            + (f" (was {was})" if was else "")
            + f" since {_clock(payload.get('since'))}"
            + (f" — {reasons}" if reasons else "")
        )
    if kind == "signals":
        sig = payload.get("signals", {})
        shown = " ".join(f"{k}={_num(sig[k]['value'])}" for k in KEY_SIGNALS if k in sig)
        return f"[signals] {asset} {_clock(payload.get('ts_event'))} {shown}"
    return None


async def tail(
    host: str,
    port: int,
    prefix: str,
    asset: str = "+",
    out: TextIO = sys.stdout,
    counts: Counter[str] | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Print until cancelled. ``counts`` tallies messages per kind (used by ``demo``)."""
    counts = counts if counts is not None else Counter()
    async with aiomqtt.Client(host, port) as client:
        for pattern in (
            f"{prefix}/{asset}/regime",
            f"{prefix}/{asset}/signals",
            f"{prefix}/status/+",
        ):
            await client.subscribe(pattern, qos=1)
        if ready is not None:
            ready.set()
        async for message in client.messages:
            topic = str(message.topic)
            try:
                payload = orjson.loads(message.payload)  # type: ignore[arg-type]
            except orjson.JSONDecodeError:
                continue
            kind = topic.rsplit("/", 1)[-1] if "/status/" not in topic else "status"
            counts[kind] += 1
            line = format_message(topic, payload, prefix)
            if line:
                print(line, file=out, flush=True)
