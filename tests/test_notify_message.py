"""``tapewatch notify``'s pure core: reading events, filters, the exact text of a message and of
a digest, grouping bursts, retry spacing and what a stored row means for a redelivered event.
Expectations are written out by hand."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from monitor.notify import targets_to_send
from monitor.notify_message import (
    REPEAT_NOTE,
    BadEvent,
    Batcher,
    Event,
    EventFilter,
    Reason,
    format_digest,
    format_event,
    moves,
    number,
    parse_event,
    retry_delay,
    threshold,
    utc,
)
from monitor.notify_store import Row
from tests.conftest import REPO
from tests.test_layout import IO_MODULES, imports

SINCE = 1_796_289_024_000  # 2026-12-03 09:10:24 UTC
PAYLOAD = {
    "id": "123be16d5ac8:BTC:1",
    "type": "regime_change",
    "asset": "BTC",
    "regime": "seller_dominance",
    "previous": "neutral",
    "since": SINCE,
    "description": "Sellers in control.",
    "reasons": [
        {"signal": "taker_intensity_z", "value": -1.9305326408231585, "op": "<", "threshold": -1.5},
        {"signal": "taker_sell_ratio", "value": 0.5612, "op": ">", "threshold": 0.53},
        {"signal": "coinbase_premium_pct", "value": -0.0771, "op": "<", "threshold": -0.05},
    ],
    "session": "123be16d5ac8",
    "ts_event": SINCE,
    "ts_pub": SINCE + 12,
    "seq": 1,
}


def event(**over: object) -> Event:
    return parse_event(orjson.dumps({**PAYLOAD, **over}))


def test_the_pure_module_imports_no_io() -> None:
    found = {
        name
        for name in imports(REPO / "monitor/notify_message.py")
        if any(name == io or name.startswith(f"{io}.") for io in IO_MODULES)
    }
    assert not found


def test_an_event_is_read_with_every_reason() -> None:
    e = event()
    assert (e.id, e.asset, e.regime, e.previous, e.since) == (
        "123be16d5ac8:BTC:1",
        "BTC",
        "seller_dominance",
        "neutral",
        SINCE,
    )
    assert e.reasons[0] == Reason("taker_intensity_z", -1.9305326408231585, "<", -1.5)
    assert len(e.reasons) == 3


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "JSON object"),
        (orjson.dumps({**PAYLOAD, "type": "regime"}), "not 'regime_change'"),
        (orjson.dumps({k: v for k, v in PAYLOAD.items() if k != "id"}), "'id'"),
        (orjson.dumps({**PAYLOAD, "since": "yesterday"}), "'since'"),
        (orjson.dumps({**PAYLOAD, "reasons": [{"value": 1}]}), "reasons[0]"),
        (orjson.dumps({**PAYLOAD, "reasons": [{"signal": "x", "value": "1"}]}), "value"),
    ],
)
def test_a_bad_payload_is_named_in_one_line(payload: bytes, says: str) -> None:
    with pytest.raises(BadEvent) as err:
        parse_event(payload)
    assert says in str(err.value)
    assert "\n" not in str(err.value)


def test_moves_enter_and_leave() -> None:
    assert moves(event()) == [("entered", "seller_dominance")]
    assert moves(event(regime="neutral", previous="seller_dominance")) == [
        ("left", "seller_dominance")
    ]
    assert moves(event(regime="distribution", previous="seller_dominance")) == [
        ("entered", "distribution"),
        ("left", "seller_dominance"),
    ]


def test_filters_by_asset_regime_and_direction() -> None:
    enter_btc = event()
    leave_btc = event(regime="neutral", previous="seller_dominance")
    enter_eth = event(asset="ETH")
    other = event(regime="distribution")
    switch = event(regime="distribution", previous="seller_dominance")
    f = EventFilter(frozenset({"BTC"}), frozenset({"seller_dominance"}), frozenset({"entered"}))
    assert [f.wants(e) for e in (enter_btc, leave_btc, enter_eth, other, switch)] == [
        True,
        False,
        False,
        False,
        False,
    ]
    left = EventFilter(regimes=frozenset({"seller_dominance"}), directions=frozenset({"left"}))
    assert [left.wants(e) for e in (enter_btc, leave_btc, enter_eth, other, switch)] == [
        False,
        True,
        False,
        False,
        True,
    ]
    everything = EventFilter()
    assert all(everything.wants(e) for e in (enter_btc, leave_btc, enter_eth, other, switch))


def test_numbers_and_times_as_a_person_reads_them() -> None:
    assert utc(SINCE) == "2026-12-03 09:10:24 UTC"
    assert utc(SINCE + 999) == "2026-12-03 09:10:24 UTC"
    assert number(-1.9305326408231585) == "-1.931"
    assert number(-4.044e-05) == "-4.044e-05"
    assert number(None) == "null"
    assert threshold(0.53) == "0.53"
    assert threshold(2e-05) == "2e-05"
    assert threshold(0.1234567) == "0.1234567"


def test_the_message_of_one_change() -> None:
    m = format_event(event())
    assert m.title == "BTC: seller_dominance (was neutral)"
    assert m.body == (
        "BTC is in seller_dominance since 2026-12-03 09:10:24 UTC (was neutral).\n"
        "Sellers in control.\n"
        "\n"
        "Why:\n"
        "- taker_intensity_z = -1.931 (< -1.5)\n"
        "- taker_sell_ratio = 0.5612 (> 0.53)\n"
        "- coinbase_premium_pct = -0.0771 (< -0.05)\n"
        "\n"
        "id: 123be16d5ac8:BTC:1"
    )
    assert m.ids == ("123be16d5ac8:BTC:1",)


def test_the_message_of_a_return_to_neutral_and_of_a_retry() -> None:
    m = format_event(
        event(
            id="s:BTC:2",
            regime="neutral",
            previous="seller_dominance",
            description="",
            reasons=[
                {"signal": "taker_sell_ratio", "value": 0.51, "op": "<=", "threshold": 0.515},
                {"signal": "coinbase_premium_pct", "value": None, "op": "missing"},
            ],
        ),
        repeat=True,
    )
    assert m.title == "BTC: neutral (was seller_dominance)"
    assert m.body == (
        "BTC left seller_dominance at 2026-12-03 09:10:24 UTC: back to neutral.\n"
        "\n"
        "What stopped holding for seller_dominance:\n"
        "- taker_sell_ratio = 0.51 (<= 0.515)\n"
        "- coinbase_premium_pct: no value (missing)\n"
        "\n"
        "id: s:BTC:2\n" + REPEAT_NOTE
    )


def test_a_digest_lists_each_change_oldest_first() -> None:
    late = event(id="s:ETH:1", asset="ETH", since=SINCE + 61_000, reasons=[])
    early = event(id="s:BTC:1")
    m = format_digest([late, early])
    assert m.title == "tapewatch: 2 regime changes (BTC, ETH)"
    assert m.body == (
        "2 regime changes:\n"
        "\n"
        "- 2026-12-03 09:10:24 UTC BTC: seller_dominance (was neutral): taker_intensity_z = "
        "-1.931 (< -1.5); taker_sell_ratio = 0.5612 (> 0.53); coinbase_premium_pct = -0.0771 "
        "(< -0.05)\n"
        "- 2026-12-03 09:11:25 UTC ETH: seller_dominance (was neutral)\n"
        "\n"
        "ids: s:BTC:1, s:ETH:1"
    )
    assert m.ids == ("s:BTC:1", "s:ETH:1")
    assert format_digest([early]) == format_event(early)


def test_a_digest_line_shows_three_reasons_at_most() -> None:
    reasons = [
        {"signal": f"s{i}", "value": float(i), "op": ">", "threshold": 0.0} for i in range(5)
    ]
    m = format_digest([event(id="a", reasons=reasons), event(id="b")])
    assert "s0 = 0 (> 0); s1 = 1 (> 0); s2 = 2 (> 0); +2 more" in m.body


def test_a_burst_waits_for_the_window_then_goes_as_one() -> None:
    b: Batcher[str] = Batcher(window_ms=10_000, min_interval_ms=60_000, max_items=20)
    assert b.due_at() is None
    b.add("a", 1_000)
    b.add("b", 4_000)
    assert b.due_at() == 11_000
    assert b.take(10_999) == []
    b.add("c", 10_999)
    assert b.take(11_000) == ["a", "b", "c"]
    # The next message waits for min_interval after the last one, however early it arrives.
    b.add("d", 12_000)
    assert b.due_at() == 71_000
    b.add("e", 70_000)
    assert b.take(70_999) == []
    assert b.take(71_000) == ["d", "e"]
    b.add("f", 200_000)  # long after: only the window
    assert b.due_at() == 210_000


def test_a_full_batch_goes_at_once_and_the_rest_waits_its_turn() -> None:
    b: Batcher[int] = Batcher(window_ms=10_000, min_interval_ms=5_000, max_items=3)
    for i in range(5):
        b.add(i, 100 + i)
    assert b.due_at() == 100  # full: no reason to wait for more
    assert b.take(100) == [0, 1, 2]
    # Two left: they wait for their own window (from 103), and min_interval (from 100).
    assert b.due_at() == 10_103
    assert b.take(10_102) == []
    assert b.take(10_103) == [3, 4]
    assert len(b) == 0


def test_zero_window_and_interval_send_each_change_at_once() -> None:
    b: Batcher[str] = Batcher(window_ms=0, min_interval_ms=0, max_items=20)
    b.add("a", 5)
    assert b.take(5) == ["a"]
    b.add("b", 6)
    assert b.take(6) == ["b"]


def test_retries_double_up_to_the_cap() -> None:
    assert [retry_delay(a, 1.0, 10.0) for a in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert retry_delay(10_000, 0.5, 300.0) == 300.0


def row(state: str, owner: str = "me", updated_ms: int = 1_000, target: str = "t1") -> Row:
    return Row("e1", target, state, owner, 1, updated_ms, None)  # type: ignore[arg-type]


def test_what_a_stored_row_means_for_a_redelivered_event() -> None:
    keys = ["t1", "t2"]
    now, stale = 10_000, 5_000
    # Nothing stored: a first attempt everywhere.
    assert targets_to_send([], keys, "me", now, stale) == {"t1": False, "t2": False}
    # Finished rows are done; a target without a row still needs it.
    assert targets_to_send([row("sent"), row("failed", target="t2")], keys, "me", now, stale) == {}
    assert targets_to_send([row("sent")], keys, "me", now, stale) == {"t2": False}
    # My own attempt of unknown outcome goes again, marked as a retry.
    assert targets_to_send([row("sending")], ["t1"], "me", now, stale) == {"t1": True}
    # Another worker's attempt is its own, until it is older than `stale`.
    assert targets_to_send([row("sending", "w2", 9_000)], ["t1"], "me", now, stale) == {}
    assert targets_to_send([row("sending", "w2", 4_000)], ["t1"], "me", now, stale) == {"t1": True}


def test_events_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        event().asset = "ETH"  # type: ignore[misc]
