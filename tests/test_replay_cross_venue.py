"""Cross-venue replay golden test: one recording of Binance spot, Binance USDⓈ-M and Coinbase
(the simulator, recorded by ``tapewatch record``; see tests/data/README.md) replays to
``perp_spot_volume_ratio``, ``coinbase_premium_usd`` and ``coinbase_premium_pct`` equal to an
independent numpy computation on the raw frames.

The reference reads the tape's JSON by hand (no tapewatch parser or signal code) and follows
the README's definitions: every event moves event time; the snapshot at boundary B covers the
events with time < B that had arrived before the first event whose time reached B; the volume
window is whole minutes; the premium compares the latest trade (by event time) of each venue,
each at most 10 s old at B.
"""

from __future__ import annotations

import calendar
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml

from monitor.config import Config, config_from_dict
from monitor.replay import replay_to_jsonl
from streams.tape import TapeRecord, TapeWriter, read_tape
from tests.conftest import DATA, REPO

TAPE = DATA / "sim-cross-venue-btc-160s.tape.jsonl.zst"
SPOT, PERP, COINBASE = "binance-spot", "binance-usdm", "coinbase"
BTC_SYMBOLS = {SPOT: "BTCUSDT", PERP: "BTCUSDT", COINBASE: "BTC-USD"}
MINUTE_MS = 60_000
PREMIUM_MAX_AGE_MS = 10_000
SIGNALS = ("perp_spot_volume_ratio", "coinbase_premium_usd", "coinbase_premium_pct")
QUOTE_KEYS = ("best_bid", "best_bid_quantity", "best_ask", "best_ask_quantity")
Event = tuple[int, str, float, float]  # (event time, venue of a BTC trade or "", price, qty)
Reference = dict[int, tuple[float | None, float | None, float | None]]


def make_config(**signals: Any) -> Config:
    data = yaml.safe_load((REPO / "config.yaml").read_text())
    data["signals"].update(signals)
    # The recording ran at 8x: its event time runs ahead of its receive time (README "Guards").
    data["guards"] = {"max_ahead": "40s"}
    return config_from_dict(data, env={})


def btc_signals(config: Config, tape: Path) -> list[dict[str, Any]]:
    out = io.BytesIO()
    replay_to_jsonl([tape], config, out)
    records = [orjson.loads(line) for line in out.getvalue().splitlines()]
    return [r["payload"] for r in records if r["topic"] == "tapewatch/v1/BTC/signals"]


# -- the independent side ------------------------------------------------------------------------
def iso_ms(text: str) -> int:
    """Coinbase RFC 3339 UTC time ("...T22:37:39.841Z", up to 9 digits) -> ms, truncated."""
    assert text.endswith("Z"), text
    whole, _, fraction = text[:-1].partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1000 + int((fraction + "000")[:3])


def tape_events(tape: Path) -> Iterator[Event]:
    """(event time, venue of a BTC trade or "", price, qty) of every event the raw frames
    carry, in arrival order. A trade id seen before on its symbol, or older than the first id
    seen, is not an event (the first Coinbase update repeats trades of the subscribe
    snapshot)."""
    seen: dict[tuple[str, str], set[int]] = {}
    first: dict[tuple[str, str], int] = {}

    def trade(
        venue: str, symbol: str, trade_id: int, ts: int, price: str, qty: str
    ) -> Iterator[Event]:
        ids = seen.setdefault((venue, symbol), set())
        if trade_id in ids or trade_id < first.setdefault((venue, symbol), trade_id):
            return
        ids.add(trade_id)
        btc = BTC_SYMBOLS[venue] == symbol
        yield ts, venue if btc else "", float(price), float(qty)

    def other(ts: int) -> Iterator[Event]:
        yield ts, "", 0.0, 0.0

    for rec in read_tape(tape):
        assert rec.ctl is None, "the recording has no outage"
        recv_ms = round(rec.ts * 1000)
        msg = orjson.loads(rec.msg)
        if rec.url is not None:
            path = rec.url.split("?")[0]
            if path in ("/api/v3/depth", "/fapi/v1/depth"):
                yield from other(msg.get("E", recv_ms))  # spot's has no time of its own
            elif path == "/fapi/v1/openInterest":
                yield from other(msg["time"])
            elif path.startswith("/futures/data/"):
                for row in msg:
                    yield from other(int(row["timestamp"]))
            else:
                raise AssertionError(f"unexpected REST body {rec.url}")
        elif rec.src == COINBASE:
            channel = msg["channel"]
            if channel == "market_trades":
                # Listed newest first; taken in (time, id) order, as a tape consumer must.
                rows = sorted(
                    (iso_ms(t["time"]), int(t["trade_id"]), t)
                    for event in msg["events"]
                    for t in event["trades"]
                )
                for ts, trade_id, t in rows:
                    yield from trade(COINBASE, t["product_id"], trade_id, ts, t["price"], t["size"])
            elif channel == "l2_data":
                for event in msg["events"]:
                    newest = max((iso_ms(u["event_time"]) for u in event["updates"]), default=0)
                    if event["type"] == "snapshot":
                        yield from other(newest or iso_ms(msg["timestamp"]))
                    elif event["updates"]:
                        yield from other(newest)
            elif channel == "ticker":
                for event in msg["events"]:
                    for t in event["tickers"]:
                        if any(t.get(key) not in (None, "") for key in QUOTE_KEYS):
                            yield from other(iso_ms(msg["timestamp"]))  # the frame's time
            else:
                assert channel in ("heartbeats", "subscriptions"), channel
        elif "stream" in msg:
            data = msg["data"]
            kind = data.get("e")
            if kind in ("aggTrade", "trade"):
                trade_id = data["a" if kind == "aggTrade" else "t"]
                yield from trade(rec.src, data["s"], trade_id, data["T"], data["p"], data["q"])
            elif kind == "forceOrder":
                yield from other(data["o"]["T"])
            elif kind in ("depthUpdate", "markPriceUpdate", "bookTicker"):
                yield from other(data["E"])
            else:
                assert kind is None and "B" in data, data  # spot bookTicker: no time at all
                yield from other(recv_ms)


def reference(tape: Path, volume_window_ms: int, min_coverage: float) -> Reference:
    """{B: (perp/spot volume ratio, premium USD, premium %)}, None where a value is missing."""
    rows = list(tape_events(tape))
    ts = np.array([r[0] for r in rows], dtype=np.int64)
    venue = np.array([r[1] for r in rows])
    price = np.array([r[2] for r in rows])
    notional = price * np.array([r[3] for r in rows])
    arrival = np.arange(len(rows))
    is_perp, is_spot, is_cb = venue == PERP, venue == SPOT, venue == COINBASE
    assert min(is_perp.sum(), is_spot.sum(), is_cb.sum()) > 500, "all three venues trade"

    # The clock: a boundary is published when an event's time reaches it, before that event.
    published: list[tuple[int, int]] = []  # (B, number of events that had arrived)
    next_boundary = (int(ts[0]) // 1000 + 1) * 1000
    for n in range(1, len(ts)):
        if ts[n] >= next_boundary:
            boundary = int(ts[n]) // 1000 * 1000
            published.append((boundary, n))
            next_boundary = boundary + 1000

    def latest_price(arrived: np.ndarray, venue_mask: np.ndarray, boundary: int) -> float | None:
        idx = np.flatnonzero(arrived & venue_mask)
        if len(idx) == 0:
            return None
        newest = idx[np.flatnonzero(ts[idx] == ts[idx].max())[-1]]  # a tie: the later arrival
        return float(price[newest]) if boundary - ts[newest] <= PREMIUM_MAX_AGE_MS else None

    slots = volume_window_ms // MINUTE_MS
    binance = np.flatnonzero(is_perp | is_spot)
    out: Reference = {}
    first_minute: int | None = None
    for boundary, n_arrived in published:
        arrived = arrival < n_arrived
        head = (boundary - 1) // MINUTE_MS  # the minute holding the last instant before B
        if first_minute is None:  # the window starts with its first trade or first snapshot
            first_minute = ts[binance[0]] // MINUTE_MS if binance[0] < n_arrived else head
        in_window = arrived & (ts // MINUTE_MS > head - slots)
        perp_vol = notional[in_window & is_perp].sum()
        spot_vol = notional[in_window & is_spot].sum()
        coverage = min(head - first_minute + 1, slots) / slots
        ratio = perp_vol / spot_vol if coverage >= min_coverage and spot_vol > 0 else None
        spot = latest_price(arrived, is_spot, boundary)
        cb = latest_price(arrived, is_cb, boundary)
        premium = cb - spot if cb is not None and spot is not None else None
        pct = premium / spot * 100 if premium is not None and spot is not None else None
        out[boundary] = (ratio, premium, pct)
    return out


def compare(signals: list[dict[str, Any]], ref: Reference) -> tuple[list[int], list[int]]:
    """Assert every snapshot equals the reference; returns (values, nulls) counted per signal."""
    assert [s["ts_event"] for s in signals] == sorted(ref)
    values, nulls = [0] * len(SIGNALS), [0] * len(SIGNALS)
    for s in signals:
        for i, name in enumerate(SIGNALS):
            got, want = s["signals"][name]["value"], ref[s["ts_event"]][i]
            if want is None:
                assert got is None, (s["ts_event"], name, got)
                nulls[i] += 1
            else:
                assert got == pytest.approx(want, rel=1e-9), (s["ts_event"], name)
                values[i] += 1
    return values, nulls


# -- the tests -----------------------------------------------------------------------------------
# 3 minutes at 2/3: missing during the first minute, present from the second (coverage equal
# to flow_min_coverage is enough).
@pytest.mark.parametrize(
    ("volume_window", "coverage"), [("2m", 0.0), ("3m", 2 / 3)], ids=["2m-0", "3m-2of3"]
)
def test_cross_venue_signals_equal_numpy(volume_window: str, coverage: float) -> None:
    """Every published BTC snapshot: the three values equal numpy, and are null exactly where
    numpy says they must be missing."""
    config = make_config(volume_window=volume_window, flow_min_coverage=coverage)
    signals = btc_signals(config, TAPE)
    ref = reference(TAPE, int(volume_window[:-1]) * MINUTE_MS, coverage)
    assert len(signals) > 150  # ~160 s of event time at one snapshot per second
    values, nulls = compare(signals, ref)
    assert min(values) > 130, values
    # Before Coinbase's first trade arrives there is no premium: missing, not zero.
    assert nulls[1] == nulls[2] > 0
    if coverage:
        assert nulls[0] >= 10
    assert {s["signals"][name]["unit"] for s in signals for name in SIGNALS} == {
        "ratio",
        "USD",
        "percent",
    }


def test_premium_is_missing_while_coinbase_trades_are_stale(tmp_path: Path) -> None:
    """An edited copy without 20 s of Coinbase trades: the premium goes missing once the last
    Coinbase price is older than 10 s, and comes back with the next trade."""
    records = list(read_tape(TAPE))
    start = min(
        iso_ms(t["time"])
        for r in records
        if r.src == COINBASE and r.url is None and '"market_trades"' in r.msg[:40]
        for e in orjson.loads(r.msg)["events"]
        for t in e["trades"]
    )
    cut = (start + 60_000, start + 80_000)

    def dropped(rec: TapeRecord) -> bool:
        if rec.src != COINBASE or '"market_trades"' not in rec.msg[:40]:
            return False
        times = [iso_ms(t["time"]) for e in orjson.loads(rec.msg)["events"] for t in e["trades"]]
        return all(cut[0] <= t < cut[1] for t in times)

    edited = tmp_path / "coinbase-silent.tape.jsonl"
    removed = 0
    with TapeWriter(edited, note="copy without 20 s of Coinbase trades") as w:
        for rec in records:
            if dropped(rec):
                removed += 1
            else:
                w.write(rec)
    assert removed >= 60  # 250 ms batches

    config = make_config(volume_window="2m", flow_min_coverage=0.0)
    ref = reference(edited, 2 * MINUTE_MS, 0.0)
    values, _ = compare(btc_signals(config, edited), ref)
    assert min(values) > 120, values
    stale = [b for b, (_, premium, _) in ref.items() if premium is None and b > cut[0]]
    assert len(stale) >= 8, stale
    # From 10 s after the last Coinbase trade before the cut until the first one after it.
    assert all(cut[0] + PREMIUM_MAX_AGE_MS - 1_000 < b <= cut[1] + 1_000 for b in stale), stale
    assert any(ref[b][1] is not None for b in ref if b > stale[-1])
