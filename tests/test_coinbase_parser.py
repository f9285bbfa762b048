"""The Coinbase Advanced Trade parser and sequence tracker on the real recording and on every
kind of malformed frame."""

from __future__ import annotations

import contextlib
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.coinbase import (
    SequenceTracker,
    events_from,
    parse_envelope,
    parse_frame,
    rfc3339_ms,
    subscribe_messages,
)
from streams.events import BUY, COINBASE, SELL, DepthDiff, DepthSnapshot, Heartbeat, Trade
from streams.frames import IgnoredFrame, MalformedFrame, SkippedFrame
from streams.tape import TapeRecord, TapeWriter, read_tape
from tests.conftest import DATA

TAPE = DATA / "coinbase-2026-08-09-btc-eth.tape.jsonl.zst"


def frames(path: Path = TAPE) -> list[TapeRecord]:
    """The websocket frames of a tape (its REST bodies are not socket traffic)."""
    return [rec for rec in read_tape(path) if rec.url is None]


def first_frame(channel: str, kind: str) -> tuple[str, dict[str, Any]]:
    for rec in frames():
        msg = orjson.loads(rec.msg)
        if msg["channel"] == channel and msg["events"][0].get("type") == kind:
            return rec.msg, msg
    raise AssertionError(f"no {channel} {kind} frame in the recording")


def test_every_recorded_frame_parses_or_is_ignored_with_a_reason() -> None:
    per_channel: Counter[str] = Counter()
    outcomes: Counter[tuple[str, str]] = Counter()
    for rec in frames():
        channel = orjson.loads(rec.msg)["channel"]
        per_channel[channel] += 1
        try:
            events = parse_frame(COINBASE, rec.msg, 0)
            outcomes.update((channel, type(e).__name__) for e in events)
        except IgnoredFrame as skip:
            outcomes[(channel, f"ignored:{skip.detail or skip.kind}")] += 1
        except MalformedFrame as bad:  # pragma: no cover - the assertion below reports it
            pytest.fail(f"real frame rejected as malformed ({bad}): {rec.msg[:200]}")
    assert per_channel == {
        "l2_data": 775,
        "ticker": 160,
        "market_trades": 59,
        "heartbeats": 25,
        "candles": 6,
        "subscriptions": 5,
    }
    assert outcomes == {
        ("l2_data", "DepthSnapshot"): 2,  # one per product
        ("l2_data", "DepthDiff"): 773,
        ("ticker", "BookTicker"): 160,
        ("market_trades", "Trade"): 279,  # 59 frames, several trades each
        ("heartbeats", "Heartbeat"): 25,  # a sign of life, no market data
        ("candles", "ignored:candles"): 6,
        ("subscriptions", "ignored:subscriptions"): 5,
    }


def trade_frame(side: str) -> str:
    trade = {
        "product_id": "BTC-USD",
        "trade_id": "42",
        "price": "65000.5",
        "size": "0.25",
        "time": "2026-08-09T21:05:51.426861Z",
        "side": side,
    }
    return orjson.dumps(
        {
            "channel": "market_trades",
            "timestamp": "2026-08-09T21:05:51.452192913Z",
            "sequence_num": 7,
            "events": [{"type": "update", "trades": [trade]}],
        }
    ).decode()


@pytest.mark.parametrize(("maker_side", "taker_side"), [("SELL", BUY), ("BUY", SELL)])
def test_side_is_the_makers_so_the_taker_is_the_opposite(maker_side: str, taker_side: str) -> None:
    [trade] = parse_frame(COINBASE, trade_frame(maker_side), 5)
    assert trade == Trade(COINBASE, "BTC-USD", 1786309551426, 5, 65000.5, 0.25, taker_side, 42)


def test_real_trade_fields_one_by_one() -> None:
    frame, msg = first_frame("market_trades", "update")
    raw = msg["events"][0]["trades"][0]
    trades = parse_frame(COINBASE, frame, 123)
    [trade] = [t for t in trades if isinstance(t, Trade) and t.trade_id == int(raw["trade_id"])]
    assert trade.venue == COINBASE and trade.symbol == raw["product_id"] == "BTC-USD"
    assert trade.price == float(raw["price"]) and trade.qty == float(raw["size"])
    # Independent of rfc3339_ms: this recorded time has 6 digits, which fromisoformat reads.
    exact = datetime.fromisoformat(raw["time"]) - datetime(1970, 1, 1, tzinfo=UTC)
    assert trade.ts_event == exact // timedelta(milliseconds=1)
    assert trade.ts_recv == 123
    assert trade.taker_side == (BUY if raw["side"] == "SELL" else SELL)


def test_a_batch_comes_out_oldest_first() -> None:
    # Coinbase lists trades newest first; the snapshot holds dozens of them.
    frame, msg = first_frame("market_trades", "snapshot")
    ids = [int(t["trade_id"]) for t in msg["events"][0]["trades"]]
    assert ids == sorted(ids, reverse=True)
    trades = parse_frame(COINBASE, frame, 0)
    assert [t.trade_id for t in trades if isinstance(t, Trade)] == sorted(ids)
    assert [t.ts_event for t in trades] == sorted(t.ts_event for t in trades)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        # Worked by hand: 2019-01-01 is day 17897; Aug 14 is 225 days later; 20:42:27 = 74547 s.
        ("2019-08-14T20:42:27.265Z", 1565815347265),
        # 2023-01-01 = 1672531200 s; + 39 days + 20:19:35; 8 fractional digits truncate to .396.
        ("2023-02-09T20:19:35.39625135Z", 1675973975396),
        # 2026-01-01 = 1767225600 s; + 220 days + 21:05:48 = 1786309548 s (the recording's day).
        ("2026-08-09T21:05:48.228568804Z", 1786309548228),
        ("2026-08-09T21:05:48.999999999Z", 1786309548999),  # truncated, never rounded up
        ("2026-08-09T21:05:48Z", 1786309548000),  # no fraction
        ("2026-08-09T21:05:48.5Z", 1786309548500),  # 1 digit is tenths
        ("2026-08-09T21:05:48.25Z", 1786309548250),
        ("2026-08-09T21:05:48.2500Z", 1786309548250),
        ("2026-08-09T21:05:48.228+00:00", 1786309548228),
        ("2026-08-09T23:05:48.228+02:00", 1786309548228),
        ("2026-08-09T15:35:48.228-05:30", 1786309548228),
        ("2026-08-10T00:30:00+01:00", 1786318200000),  # the offset crosses midnight
        ("2024-02-29T00:00:00Z", 1709164800000),  # leap day: 2024-01-01 = 1704067200 + 59 days
        ("1970-01-01T00:00:00Z", 0),  # the snapshot placeholder
    ],
)
def test_rfc3339_to_ms(text: str, ms: int) -> None:
    assert rfc3339_ms(text) == ms


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2026-08-09T21:05:48",  # no zone
        "2026-08-09T21:05:48.Z",  # a dot without digits
        "2026-08-09T21:05:48.123+0000",
        "2026-8-9T21:05:48Z",
        "2026-08-09T21:05:48Z ",
        "2026-08-09 21:05:48.854840045 +0000 UTC m=+41691.260485341",  # heartbeat current_time
        "٢٠٢٦-08-09T21:05:48Z",  # non-ASCII digits, which int() would accept
        "2026-02-30T00:00:00Z",
        "2026-08-09T24:00:00Z",
        "2026-08-09T21:60:00Z",
        "2026-08-09T21:05:60Z",
        "2026-08-09T21:05:48+24:00",
    ],
)
def test_rfc3339_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        rfc3339_ms(text)


@pytest.mark.parametrize("product", ["BTC-USD", "ETH-USD"])
def test_real_l2_snapshot_levels_match_the_raw_json(product: str) -> None:
    for rec in frames():
        msg = orjson.loads(rec.msg)
        if msg["channel"] == "l2_data" and msg["events"][0]["product_id"] == product:
            break
    [event] = msg["events"]
    assert event["type"] == "snapshot"
    [snap] = parse_frame(COINBASE, rec.msg, 9)
    assert isinstance(snap, DepthSnapshot) and snap.symbol == product and snap.last_id is None
    raw_sides = Counter(u["side"] for u in event["updates"])
    assert set(raw_sides) == {"bid", "offer"}
    assert len(snap.bids) == raw_sides["bid"] and len(snap.asks) == raw_sides["offer"]
    first_offer = next(u for u in event["updates"] if u["side"] == "offer")
    assert snap.asks[0] == (float(first_offer["price_level"]), float(first_offer["new_quantity"]))
    # The recorded snapshot carries the book's real time, not the documented 1970 placeholder.
    assert snap.ts_event == rfc3339_ms(event["updates"][0]["event_time"])
    assert snap.ts_event < rfc3339_ms(msg["timestamp"])


def test_real_l2_update_keeps_zero_quantities_and_takes_the_newest_event_time() -> None:
    for rec in frames():
        msg = orjson.loads(rec.msg)
        if msg["channel"] == "l2_data" and msg["sequence_num"] == 17:
            break
    [diff] = parse_frame(COINBASE, rec.msg, 0)
    assert diff == DepthDiff(
        venue=COINBASE,
        symbol="BTC-USD",
        ts_event=rfc3339_ms("2026-08-09T21:05:48.407682Z"),
        ts_recv=0,
        first_id=None,
        last_id=None,
        prev_last_id=None,
        bids=((56948.21, 0.01321935),),
        asks=((65106.54, 0.0),),  # "offer" with quantity "0": remove the level
    )


def l2_frame(kind: str, updates: list[dict[str, object]]) -> str:
    return orjson.dumps(
        {
            "channel": "l2_data",
            "timestamp": "2026-08-09T21:05:48.507547362Z",
            "sequence_num": 3,
            "events": [{"type": kind, "product_id": "ETH-USD", "updates": updates}],
        }
    ).decode()


def level(
    side: str, price: str, qty: str, time: str = "2026-08-09T21:05:48.1Z"
) -> dict[str, object]:
    return {"side": side, "event_time": time, "price_level": price, "new_quantity": qty}


def test_l2_documented_shapes() -> None:
    # Documented snapshot: 1970 placeholder event_time, so the frame's timestamp stands in.
    epoch = "1970-01-01T00:00:00Z"
    [snap] = parse_frame(
        COINBASE,
        l2_frame("snapshot", [level("bid", "10", "1", epoch), level("ask", "11", "2", epoch)]),
        0,
    )
    assert isinstance(snap, DepthSnapshot)
    assert snap.ts_event == rfc3339_ms("2026-08-09T21:05:48.507547362Z")
    assert (snap.bids, snap.asks) == (((10.0, 1.0),), ((11.0, 2.0),))  # "ask" accepted too
    # An update's time is its newest level's, whatever the order of the levels.
    updates = [level("bid", "10", "0", "2026-08-09T21:05:48.3Z"), level("offer", "11", "3")]
    [diff] = parse_frame(COINBASE, l2_frame("update", updates), 0)
    assert diff.ts_event == rfc3339_ms("2026-08-09T21:05:48.3Z")
    # An empty book is a real state; an empty update says nothing.
    [empty] = parse_frame(COINBASE, l2_frame("snapshot", []), 0)
    assert isinstance(empty, DepthSnapshot) and empty.bids == empty.asks == ()
    with pytest.raises(IgnoredFrame, match="empty"):
        parse_frame(COINBASE, l2_frame("update", []), 0)


def test_real_ticker_gives_book_ticker_at_the_frame_time() -> None:
    frame, msg = first_frame("ticker", "update")
    [raw] = msg["events"][0]["tickers"]
    [bt] = parse_frame(COINBASE, frame, 4)
    assert (bt.symbol, bt.ts_event, bt.ts_recv) == (
        raw["product_id"],
        rfc3339_ms(msg["timestamp"]),
        4,
    )
    assert (bt.bid, bt.bid_qty, bt.ask, bt.ask_qty) == tuple(
        float(raw[k]) for k in ("best_bid", "best_bid_quantity", "best_ask", "best_ask_quantity")
    )


def test_sequence_tracker_sees_no_gap_in_the_recording() -> None:
    tracker = SequenceTracker()
    for rec in frames():
        msg = parse_envelope(rec.msg)
        assert tracker.observe(msg) is None
        with contextlib.suppress(IgnoredFrame):
            events_from(COINBASE, msg, 0)
    assert (tracker.last, tracker.gaps, tracker.missed, tracker.stale) == (1029, 0, 0, 0)


def test_sequence_tracker_finds_the_one_removed_frame(tmp_path: Path) -> None:
    records = list(read_tape(TAPE))
    # Drop a heartbeat: it yields no events, yet its number still counts.
    dropped = next(i for i, r in enumerate(records) if '"channel":"heartbeats"' in r.msg)
    edited = tmp_path / "edited.tape.jsonl"
    with TapeWriter(edited, sources=[COINBASE]) as out:
        for i, rec in enumerate(records):
            if i != dropped:
                out.write(rec)
    tracker = SequenceTracker()
    gaps = [(rec.msg, n) for rec in frames(edited) if (n := tracker.observe(rec.msg)) is not None]
    [(after, missed)] = gaps
    assert missed == 1
    assert (
        orjson.loads(after)["sequence_num"]
        == orjson.loads(records[dropped].msg)["sequence_num"] + 1
    )
    assert (tracker.gaps, tracker.missed, tracker.stale) == (1, 1, 0)


def test_sequence_tracker_late_duplicate_and_reconnect() -> None:
    tracker = SequenceTracker()
    seen = [tracker.observe({"sequence_num": n}) for n in (0, 1, 4, 2, 4, 5)]
    assert seen == [None, None, 2, None, None, None]  # 2 arrived late; 4 twice
    assert (tracker.gaps, tracker.missed, tracker.stale) == (1, 2, 2)
    tracker.reset()  # a new connection numbers from 0 again
    assert tracker.observe('{"channel":"heartbeats","sequence_num":0,"events":[]}') is None
    assert tracker.observe({"type": "error", "message": "x"}) is None  # unnumbered
    assert tracker.observe({"sequence_num": True}) is None
    assert (tracker.last, tracker.gaps, tracker.stale) == (0, 1, 2)


GOOD = orjson.loads(trade_frame("SELL"))
GOOD_TRADE = GOOD["events"][0]["trades"][0]


def with_trade(**fields: Any) -> str:
    """GOOD with trade fields replaced (None removes the field)."""
    trade = {k: v for k, v in {**GOOD_TRADE, **fields}.items() if v is not None}
    return orjson.dumps({**GOOD, "events": [{"type": "update", "trades": [trade]}]}).decode()


TICKER = {
    "channel": "ticker",
    "timestamp": "2026-08-09T21:05:48.2Z",
    "sequence_num": 1,
    "events": [
        {
            "type": "update",
            "tickers": [
                {
                    "type": "ticker",
                    "product_id": "BTC-USD",
                    "price": "1",
                    "best_bid": "1",
                    "best_bid_quantity": "1",
                    "best_ask": "2",
                    "best_ask_quantity": "1",
                }
            ],
        }
    ],
}


def with_ticker(**fields: Any) -> str:
    [ticker] = TICKER["events"][0]["tickers"]  # type: ignore[index]
    changed = {k: v for k, v in {**ticker, **fields}.items() if v is not None}
    return orjson.dumps({**TICKER, "events": [{"type": "update", "tickers": [changed]}]}).decode()


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        ("{not json", "not_json"),
        ("", "not_json"),
        ("[1,2]", "not_object"),
        ('"market_trades"', "not_object"),
        ('{"timestamp":"2026-08-09T21:05:48Z","events":[]}', "missing_field"),
        ('{"channel":"market_trades"}', "missing_field"),
        (with_trade(price=None), "missing_field"),
        (with_trade(trade_id=None), "missing_field"),
        (with_trade(time=None), "missing_field"),
        (
            l2_frame("update", [{"side": "bid", "price_level": "1", "new_quantity": "1"}]),
            "missing_field",
        ),
        (with_ticker(best_ask_quantity=None), "missing_field"),  # half a quote is no quote
        ('{"channel":7,"events":[]}', "bad_type"),
        ('{"channel":"market_trades","events":{}}', "bad_type"),
        ('{"channel":"market_trades","events":[1]}', "bad_type"),
        (with_trade(price=[1]), "bad_type"),
        (with_trade(price="abc"), "bad_type"),
        (with_trade(trade_id=42), "bad_type"),  # Coinbase sends ids as strings
        (with_trade(trade_id="12a"), "bad_type"),
        (with_trade(trade_id="-1"), "bad_type"),
        (with_trade(time=1786309551426), "bad_type"),
        (with_trade(time="yesterday"), "bad_type"),
        (with_trade(side=1), "bad_type"),
        (l2_frame("update", [level("bid", "1", "x")]), "bad_type"),
        (l2_frame("update", [{**level("bid", "1", "1"), "side": 1}]), "bad_type"),
        (l2_frame("update", [{**level("bid", "1", "1"), "new_quantity": True}]), "bad_type"),
        (with_trade(price="NaN"), "bad_value"),
        (with_trade(price="-5"), "bad_value"),
        (with_trade(price="0"), "bad_value"),
        (with_trade(size="0"), "bad_value"),
        (with_trade(size="inf"), "bad_value"),
        (with_trade(side="HOLD"), "bad_value"),
        (with_trade(side="sell"), "bad_value"),
        (with_trade(trade_id="1" * 20), "bad_value"),
        (with_trade(time="2026-02-30T00:00:00Z"), "bad_value"),
        (l2_frame("update", [level("bid", "1", "-1")]), "bad_value"),
        (l2_frame("update", [level("bid", "1", "NaN")]), "bad_value"),
        (l2_frame("update", [level("bid", "0", "1")]), "bad_value"),
        (l2_frame("update", [level("middle", "1", "1")]), "bad_value"),
        (l2_frame("delta", [level("bid", "1", "1")]), "bad_value"),
        (with_ticker(best_bid="-1"), "bad_value"),
        ('{"channel":"level2","events":[]}', "unknown_channel"),  # subscribed name, not wire name
        ('{"channel":"user","events":[]}', "unknown_channel"),
    ],
)
def test_malformed_frames_are_classified(frame: str, kind: str) -> None:
    with pytest.raises(MalformedFrame) as info:
        parse_frame(COINBASE, frame, 0)
    assert info.value.kind == kind


@pytest.mark.parametrize(
    ("frame", "kind", "detail"),
    [
        (
            '{"channel":"subscriptions","sequence_num":2,'
            '"events":[{"subscriptions":{"level2":["BTC-USD"]}}]}',
            "subscriptions",
            "",
        ),
        ('{"channel":"candles","sequence_num":3,"events":[]}', "not_collected", "candles"),
        ('{"channel":"status","sequence_num":3,"events":[]}', "not_collected", "status"),
        (
            '{"type":"error","message":"failure to subscribe"}',
            "error_reply",
            "failure to subscribe",
        ),
        (
            with_ticker(
                best_bid=None, best_bid_quantity=None, best_ask=None, best_ask_quantity=None
            ),
            "ticker_without_quotes",
            "",
        ),
        (
            with_ticker(best_bid="", best_bid_quantity="", best_ask="", best_ask_quantity=""),
            "ticker_without_quotes",
            "",
        ),
        (
            '{"channel":"market_trades","events":[{"type":"update","trades":[]}]}',
            "empty",
            "market_trades",
        ),
    ],
)
def test_control_and_unused_frames_are_ignored_with_a_reason(
    frame: str, kind: str, detail: str
) -> None:
    with pytest.raises(IgnoredFrame) as info:
        parse_frame(COINBASE, frame, 0)
    assert (info.value.kind, info.value.detail) == (kind, detail)


def test_ticker_batch_without_quotes_is_ignored_but_with_quotes_parses() -> None:
    batch = orjson.loads(with_ticker(best_bid=None, best_bid_quantity=None, best_ask=None))
    batch["channel"] = "ticker_batch"
    batch["events"][0]["tickers"][0].pop("best_ask_quantity")
    with pytest.raises(IgnoredFrame, match="ticker_without_quotes"):
        parse_frame(COINBASE, orjson.dumps(batch), 0)
    [bt] = parse_frame(COINBASE, orjson.dumps({**TICKER, "channel": "ticker_batch"}), 0)
    assert (bt.bid, bt.ask) == (1.0, 2.0)


TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # JSON-encodable
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
BASES = [GOOD, orjson.loads(l2_frame("update", [level("bid", "1", "1")])), TICKER]


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from(BASES),
    path=st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=5),
    value=JSON,
)
def test_any_field_replaced_by_any_json_only_raises_skipped_frames(
    base: dict[str, Any], path: list[int], value: Any
) -> None:
    frame = orjson.loads(orjson.dumps(base))  # a deep copy
    node: Any = frame
    for step in path[:-1]:  # walk down to some container, then replace one of its entries
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        child = node[keys[step % len(keys)]] if keys else None
        if not isinstance(child, dict | list):
            break
        node = child
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    if keys:
        node[keys[path[-1] % len(keys)]] = value
    with contextlib.suppress(SkippedFrame):  # anything else fails the test
        parse_frame(COINBASE, orjson.dumps(frame), 0)


def test_subscribe_messages_one_per_channel_exact_json() -> None:
    assert subscribe_messages(["BTC-USD", "ETH-USD"]) == [
        '{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channel":"heartbeats"}',
        '{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channel":"market_trades"}',
        '{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channel":"level2"}',
    ]
    assert subscribe_messages(("SOL-USD",), ("candles",)) == [
        '{"type":"subscribe","product_ids":["SOL-USD"],"channel":"candles"}'
    ]


def test_a_heartbeat_is_a_sign_of_life_at_the_frame_time() -> None:
    frame = (
        '{"channel":"heartbeats","timestamp":"2026-08-09T21:05:48.8Z","sequence_num":35,'
        '"events":[{"current_time":"x","heartbeat_counter":41691}]}'
    )
    # 2026-08-09T21:05:48.8Z by hand: 20674 days since the epoch, then 21:05:48.800.
    day_ms = 20674 * 86_400_000
    expected = day_ms + ((21 * 60 + 5) * 60 + 48) * 1000 + 800
    assert parse_frame(COINBASE, frame, 7) == [Heartbeat(COINBASE, None, expected, 7)]
