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

from streams import coinbase
from streams.coinbase import (
    SequenceTracker,
    events_from,
    parse_envelope,
    parse_frame,
    rfc3339_ms,
    subscribe_messages,
)
from streams.events import (
    BUY,
    COINBASE,
    SELL,
    DepthDiff,
    DepthSnapshot,
    Event,
    Heartbeat,
    Trade,
)
from streams.frames import IgnoredFrame, MalformedFrame, SkippedFrame
from streams.tape import TapeRecord, TapeWriter, read_tape
from streams.venues.coinbase import CoinbaseDecoder
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


def replaced(base: dict[str, Any], path: list[int], value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with one entry, found by walking ``path`` down its containers,
    replaced by ``value``."""
    frame = orjson.loads(orjson.dumps(base))
    node: Any = frame
    for step in path[:-1]:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        child = node[keys[step % len(keys)]] if keys else None
        if not isinstance(child, dict | list):
            break
        node = child
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    if keys:
        node[keys[path[-1] % len(keys)]] = value
    result: dict[str, Any] = frame
    return result


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
    frame = replaced(base, path, value)
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


# -- the fast path (msgspec) against the strict path (orjson + events_from) --------------------
# Both tapes in tests/data that carry Coinbase frames: the real recording and the simulator's.
FAST_TAPES = [TAPE, DATA / "sim-cross-venue-btc-160s.tape.jsonl.zst"]
FAST_CHANNELS = ("l2_data", "market_trades")


class StrictDecoder(CoinbaseDecoder):
    """The decoder without the fast path: every frame through orjson and ``events_from``."""

    def decode(self, raw: str | bytes, ts_recv: int) -> list[Event]:
        msg = parse_envelope(raw)
        if self.sequence.observe(msg):
            self.frames_lost = True
        return events_from(self.venue, msg, ts_recv)


Outcome = list[Event] | tuple[str, str, str]


def outcome(decoder: CoinbaseDecoder, raw: str | bytes) -> Outcome:
    """Events, or the skip's class, kind and detail."""
    try:
        return decoder.decode(raw, 7)
    except SkippedFrame as skip:
        return (type(skip).__name__, skip.kind, skip.detail)


def tracker_state(decoder: CoinbaseDecoder) -> tuple[object, ...]:
    s = decoder.sequence
    return (s.last, s.gaps, s.missed, s.stale, decoder.frames_lost)


def assert_same_on_both_paths(raw: str | bytes, after: int | None = None) -> None:
    """A fresh fast decoder and a fresh strict one (each having seen ``sequence_num``
    ``after`` first, if given) give the same outcome for ``raw`` and end in the same state."""
    fast, strict = CoinbaseDecoder(COINBASE), StrictDecoder(COINBASE)
    if after is not None:
        for decoder in (fast, strict):
            decoder.sequence.observe_number(after)
    assert outcome(fast, raw) == outcome(strict, raw)
    assert tracker_state(fast) == tracker_state(strict)


def coinbase_frames(path: Path) -> list[str]:
    return [r.msg for r in read_tape(path) if r.src == COINBASE and r.url is None and not r.ctl]


@pytest.mark.parametrize("path", FAST_TAPES, ids=lambda p: p.name)
def test_the_fast_decoder_gives_what_the_strict_path_gives(path: Path) -> None:
    seen: Counter[str] = Counter()
    for raw in coinbase_frames(path):
        channel = orjson.loads(raw)["channel"]
        fast = coinbase.decode_fast(COINBASE, raw, 7)
        if channel not in FAST_CHANNELS:
            assert fast is None  # the strict path's, heartbeats and tickers included
            continue
        assert fast is not None, f"the fast path refused a real frame: {raw[:200]}"
        msg = parse_envelope(raw)
        assert fast == (msg["sequence_num"], events_from(COINBASE, msg, 7))
        seen[channel] += 1
    assert seen["l2_data"] > 100 and seen["market_trades"] > 10, seen


@pytest.mark.parametrize("path", FAST_TAPES, ids=lambda p: p.name)
def test_the_decoder_gives_the_same_outcomes_and_sequence_on_a_whole_tape(path: Path) -> None:
    fast, strict = CoinbaseDecoder(COINBASE), StrictDecoder(COINBASE)
    raws = coinbase_frames(path)
    # One l2_data frame dropped: the tracker, fed by the fast path, must see the jump.
    dropped = next(i for i, raw in enumerate(raws) if i > 20 and '"l2_data"' in raw[:30])
    for i, raw in enumerate(raws):
        if i == dropped:
            continue
        assert outcome(fast, raw) == outcome(strict, raw)
        assert tracker_state(fast) == tracker_state(strict)
    assert fast.sequence.gaps == 1 and fast.sequence.missed == 1 and fast.frames_lost


def test_the_fast_path_takes_bytes_and_leaves_non_ascii_bytes_to_orjson() -> None:
    raw = l2_frame("update", [level("bid", "10", "1")])
    assert coinbase.decode_fast(COINBASE, raw.encode(), 7) == coinbase.decode_fast(COINBASE, raw, 7)
    # msgspec does not check the UTF-8 of a field it skips; orjson rejects the whole frame.
    bad = raw.encode().replace(b'"sequence_num"', b'"x":"\xff","sequence_num"')
    assert coinbase.decode_fast(COINBASE, bad, 7) is None
    fast, strict = CoinbaseDecoder(COINBASE), StrictDecoder(COINBASE)
    assert (
        outcome(fast, bad) == outcome(strict, bad) == ("MalformedFrame", "not_json", repr(bad[:80]))
    )
    # Other buffers orjson reads go the strict way whole.
    for other in (bytearray(raw.encode()), memoryview(raw.encode())):
        assert coinbase.decode_fast(COINBASE, other, 7) is None
        assert outcome(CoinbaseDecoder(COINBASE), other) == outcome(StrictDecoder(COINBASE), other)


def book_variant(**fields: object) -> str:
    """A one-level l2_data update with level fields replaced (None removes the field)."""
    good = level("bid", "10", "1", "2026-08-09T21:05:48.1234Z")
    return l2_frame("update", [{k: v for k, v in {**good, **fields}.items() if v is not None}])


def frame_variant(base: str, **fields: object) -> str:
    """``base`` with top-level or first-event fields replaced ("event." prefix for the event)."""
    msg = orjson.loads(base)
    for key, value in fields.items():
        node, name = (msg["events"][0], key[6:]) if key.startswith("event_") else (msg, key)
        if value is None:
            node.pop(name)
        else:
            node[name] = value
    return orjson.dumps(msg).decode()


L2_UPDATE = book_variant()
SNAPSHOT = l2_frame("snapshot", [level("bid", "10", "1"), level("offer", "11", "2")])
BAD_BOOK = [
    book_variant(price_level="NaN"),
    book_variant(price_level="-1"),
    book_variant(price_level="0"),
    book_variant(price_level="1e400"),
    book_variant(price_level="inf"),
    book_variant(price_level="x"),
    book_variant(price_level=""),
    book_variant(price_level=True),
    book_variant(price_level=[1]),
    book_variant(new_quantity="NaN"),
    book_variant(new_quantity="-1"),
    book_variant(new_quantity="-1e-300"),
    book_variant(new_quantity="1e309"),
    book_variant(new_quantity=None),
    book_variant(price_level=None),
    book_variant(side=None),
    book_variant(side="middle"),
    book_variant(side="Bid"),
    book_variant(side=1),
    book_variant(side=""),
    book_variant(event_time=None),
    book_variant(event_time=""),
    book_variant(event_time=1786309548123),
    book_variant(event_time="2026-08-09T21:05:48.1234"),  # no zone
    book_variant(event_time="2026-08-09T21:05:48.Z"),
    book_variant(event_time="2026-08-09T21:05:48.12٣Z"),  # a non-ASCII digit in the fraction
    book_variant(event_time="2026-08-09T21:05:48.12²Z"),
    book_variant(event_time="2026-13-09T21:05:48.1Z"),
    book_variant(event_time="2026-08-09T25:05:48.1Z"),
    book_variant(event_time="2026-08-09T21:05:48.1+24:00"),
    book_variant(event_time="2026-08-09T21:05:48"),
    book_variant(event_time="2026-08-09T21:05:4Z"),
    book_variant(event_time="yesterday"),
    frame_variant(L2_UPDATE, event_type="delta"),
    frame_variant(L2_UPDATE, event_type=None),
    frame_variant(L2_UPDATE, event_product_id=""),
    frame_variant(L2_UPDATE, event_product_id=None),
    frame_variant(L2_UPDATE, event_product_id=7),
    frame_variant(L2_UPDATE, event_updates=None),
    frame_variant(L2_UPDATE, event_updates={}),
    frame_variant(L2_UPDATE, event_updates=[1]),
    frame_variant(L2_UPDATE, events=None),
    frame_variant(L2_UPDATE, events=[1]),
    frame_variant(L2_UPDATE, events={"type": "update"}),
    # A snapshot with the 1970 placeholder needs the frame's timestamp.
    frame_variant(
        l2_frame("snapshot", [level("bid", "1", "1", "1970-01-01T00:00:00Z")]), timestamp=None
    ),
    frame_variant(
        l2_frame("snapshot", [level("bid", "1", "1", "1970-01-01T00:00:00Z")]), timestamp=5
    ),
    frame_variant(l2_frame("snapshot", []), timestamp="2026-08-09T21:05:48"),
    # The second of two levels is the bad one, or carries a bad second time.
    l2_frame("update", [level("bid", "10", "1"), level("offer", "11", "-2")]),
    l2_frame(
        "update", [level("bid", "10", "1"), level("offer", "11", "2", "2026-02-30T00:00:00Z")]
    ),
]
BAD_TRADES = [
    with_trade(price="NaN"),
    with_trade(price="-5"),
    with_trade(price="0"),
    with_trade(price="1e400"),
    with_trade(price="abc"),
    with_trade(price=[1]),
    with_trade(size="0"),
    with_trade(size="-0"),
    with_trade(size="inf"),
    with_trade(size="1e309"),
    with_trade(side="HOLD"),
    with_trade(side="sell"),
    with_trade(side=1),
    with_trade(trade_id=42),
    with_trade(trade_id="12a"),
    with_trade(trade_id="-1"),
    with_trade(trade_id=""),
    with_trade(trade_id="١٢"),  # digits, but not ASCII ones
    with_trade(trade_id="1" * 20),
    with_trade(time="2026-02-30T00:00:00Z"),
    with_trade(time="2026-08-09T21:05:51.426861"),
    with_trade(time=1786309551426),
    with_trade(product_id=""),
    *(with_trade(**{name: None}) for name in GOOD_TRADE),
    frame_variant(with_trade(), events=None),
    frame_variant(with_trade(), events=[{"type": "update"}]),
    frame_variant(with_trade(), events=[{"type": "update", "trades": {}}]),
]


@pytest.mark.parametrize("raw", BAD_BOOK + BAD_TRADES)
def test_a_bad_frame_is_malformed_the_same_way_on_the_fast_path(raw: str) -> None:
    assert coinbase.decode_fast(COINBASE, raw, 7) is None  # left to the strict path
    fast, strict = CoinbaseDecoder(COINBASE), StrictDecoder(COINBASE)
    seq = orjson.loads(raw)["sequence_num"]
    for decoder in (fast, strict):
        decoder.sequence.observe_number(seq - 1)  # the frame follows on: no gap
    got, want = outcome(fast, raw), outcome(strict, raw)
    assert got == want
    assert want[0] == "MalformedFrame"  # type: ignore[index]
    # A frame malformed in its body still counts for continuity.
    assert tracker_state(fast) == tracker_state(strict) == (seq, 0, 0, 0, False)


EPOCH = "1970-01-01T00:00:00Z"
ODD_BUT_VALID = [
    SNAPSHOT,
    l2_frame("snapshot", [level("bid", "10", "1", EPOCH), level("ask", "11", "2", EPOCH)]),
    l2_frame("snapshot", []),  # an empty book: the frame's timestamp
    l2_frame("snapshot", [level("bid", "10", "1", "1969-12-31T23:59:59.5Z")]),  # before 1970
    l2_frame("update", []),  # IgnoredFrame("empty"), left to the strict path
    frame_variant(L2_UPDATE, events=[]),
    book_variant(new_quantity="0"),
    # float() reads these and msgspec does not: the fast path leaves them to the strict one.
    book_variant(price_level=" 1"),
    book_variant(price_level="1_0"),
    with_trade(price="+1"),
    book_variant(new_quantity="-0"),  # 0.0 on the fast path, -0.0 on the strict one: equal
    book_variant(price_level=5, new_quantity=0.5),  # JSON numbers, not strings
    L2_UPDATE.replace('"price_level":"10"', '"price_level":123456789012345678901234567890'),
    book_variant(price_level="1e-320"),  # subnormal, still > 0
    book_variant(price_level="1.7976931348623157e308"),
    book_variant(price_level="0.1000000000000000055511151231257827"),
    book_variant(event_time="2026-08-09T21:05:48Z"),
    book_variant(event_time="2026-08-09T21:05:48.123456789123Z"),
    book_variant(event_time="2026-08-09T23:05:48.1+02:00"),
    book_variant(event_time="2026-08-09t21:05:48.1z"),
    book_variant(event_time="2026-08-09 21:05:48.1Z"),
    book_variant(extra={"nested": [1, 2.5, None, "é"]}),
    l2_frame(
        "update",
        [
            level("offer", "11", "2", "2026-08-09T21:05:48.3Z"),
            level("bid", "10", "0"),
            level("ask", "12", "1"),
        ],
    ),
    frame_variant(L2_UPDATE, sequence_num="3"),  # not a number: the tracker ignores it
    frame_variant(L2_UPDATE, sequence_num=3.0),
    frame_variant(L2_UPDATE, sequence_num=True),
    frame_variant(L2_UPDATE, sequence_num=None),
    frame_variant(L2_UPDATE, sequence_num=[3]),
    L2_UPDATE.replace('"sequence_num":3', '"sequence_num":18446744073709551615'),
    L2_UPDATE.replace('"sequence_num":3', '"sequence_num":18446744073709551616'),  # a float
    L2_UPDATE.replace('"sequence_num":3', '"sequence_num":-9223372036854775809'),
    L2_UPDATE.replace('"channel":"l2_data"', '"channel":"l2_data","channel":"ticker"'),
    L2_UPDATE.replace('"side":"bid"', '"side":"bid","side":"offer"'),  # orjson keeps the last
    L2_UPDATE.replace('"price_level":"10"', '"price_level":"10","price_level":"-1"'),
    frame_variant(L2_UPDATE, timestamp=None),  # an update never reads it
    # The channel not first, or spaced: left to the strict path.
    L2_UPDATE.replace('{"channel":"l2_data",', "{").replace(
        '"events"', '"channel":"l2_data","events"'
    ),
    L2_UPDATE.replace('{"channel":"l2_data"', '{ "channel": "l2_data"'),
    frame_variant(L2_UPDATE, client_id=""),
    with_trade(),
    with_trade(side="BUY"),
    with_trade(price=65000, size=1),
    with_trade(trade_id="0"),
    with_trade(trade_id="9" * 19),
    with_trade(time="2026-08-09T21:05:51Z"),
    with_trade(time="2026-08-09T23:05:51.4+02:00"),
    frame_variant(with_trade(), events=[]),  # IgnoredFrame("empty")
    frame_variant(with_trade(), sequence_num="7"),
    with_trade().replace('"channel":"market_trades"', '"channel":"market_trades","channel":"x"'),
    first_frame("market_trades", "snapshot")[0],
]


@pytest.mark.parametrize("raw", ODD_BUT_VALID)
def test_an_odd_frame_gives_the_same_outcome_and_sequence_on_both_paths(raw: str) -> None:
    assert_same_on_both_paths(raw, after=1)  # a baseline: a counted number is a gap of 1


TIMES = [
    "2026-08-09T21:05:48.228568804Z",
    "2026-08-09T21:05:48Z",
    "2026-08-09T21:05:48.5Z",
    "2026-08-09T23:05:48.228+02:00",
    "2026-08-09T15:35:48.228-05:30",
    "2026-08-09t21:05:48.1z",
    "2026-08-09 21:05:48.1Z",
    "1970-01-01T00:00:00Z",
    "2024-02-29T00:00:00Z",
    "",
    "Z",
    "2026-08-09T21:05:48",
    "2026-08-09T21:05:48.",
    "2026-08-09T21:05:48.Z",
    "2026-08-09T21:05:48.1",
    "2026-08-09T21:05:48.1ZZ",
    "2026-08-09T21:05:48.1 Z",
    "2026-08-09T21:05:48.+1Z",
    "2026-08-09T21:05:48.٣Z",
    "2026-02-30T00:00:00Z",
    "2026-08-09T24:00:00Z",
    "2026-08-09T21:05:48+24:00",
    "2026-08-09 21:05:48.854840045 +0000 UTC m=+41691.260485341",
]


@pytest.mark.parametrize("text", TIMES)
def test_the_fast_time_reader_agrees_with_rfc3339_ms(text: str) -> None:
    try:
        want: int | None = rfc3339_ms(text)
    except ValueError:
        want = None
    assert coinbase._wire_ms(text) == want
    assert coinbase._wire_ms(text) == want  # again, from the cached second


@settings(max_examples=300, deadline=None)
@given(
    price=st.from_regex(r"-?[0-9]{0,4}(\.[0-9]{0,12})?([eE][+-]?[0-9]{1,3})?", fullmatch=True)
    | st.floats(allow_nan=False).map(repr)
    | TEXT,
    time=st.from_regex(
        r"20[0-9]{2}-[0-1][0-9]-[0-3][0-9][Tt ][0-2][0-9]:[0-5][0-9]:[0-6][0-9](\.[0-9]{0,10})?"
        r"([Zz]|[+-][0-2][0-9]:[0-6][0-9])?",
        fullmatch=True,
    ),
    side=st.sampled_from(["bid", "offer", "ask", "BUY", "SELL", "sell", ""]),
)
def test_any_level_or_trade_gives_the_same_outcome_on_both_paths(
    price: str, time: str, side: str
) -> None:
    frames = [
        book_variant(price_level=price, new_quantity=price, event_time=time, side=side),
        with_trade(price=price, size=price, time=time, side=side),
    ]
    for raw in frames:
        assert_same_on_both_paths(raw)


FAST_BASES = [orjson.loads(L2_UPDATE), orjson.loads(SNAPSHOT), GOOD]


@settings(max_examples=400, deadline=None)
@given(
    base=st.sampled_from(FAST_BASES),
    path=st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=6),
    value=JSON,
)
def test_any_field_replaced_by_any_json_gives_the_same_outcome_on_both_paths(
    base: dict[str, Any], path: list[int], value: Any
) -> None:
    frame = replaced(base, path, value)
    assert_same_on_both_paths(orjson.dumps(frame))
