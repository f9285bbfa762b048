"""Trade-id continuity on hand-worked sequences."""

from __future__ import annotations

from streams.continuity import MAX_BACKFILL_IDS, TradeContinuity, TradeGap

V, S = "binance-usdm", "BTCUSDT"


def test_gap_is_reported_then_filled_in_any_order() -> None:
    c = TradeContinuity()
    assert c.admit(V, S, 1) == (True, None)
    assert c.admit(V, S, 2) == (True, None)
    assert c.admit(V, S, 6) == (True, TradeGap(V, S, 3, 5))
    assert c.admit(V, S, 4) == (True, None)  # backfilled, fills the middle
    assert c.symbols[V, S].open_gaps == [[3, 3, 3], [5, 5, 3]]
    assert c.admit(V, S, 5) == (True, None)
    assert c.admit(V, S, 3) == (True, None)
    state = c.symbols[V, S]
    assert (state.gaps, state.recovered_gaps, state.recovered_trades, state.missing) == (1, 1, 3, 0)


def test_duplicates_are_rejected() -> None:
    c = TradeContinuity()
    for trade_id in (10, 11, 12):
        c.admit(V, S, trade_id)
    assert c.admit(V, S, 11) == (False, None)
    assert c.admit(V, S, 12) == (False, None)
    assert c.symbols[V, S].duplicates == 2


def test_give_up_counts_lost_only_what_is_still_missing() -> None:
    c = TradeContinuity()
    c.admit(V, S, 1)
    c.admit(V, S, 10)  # gap 2..9
    c.admit(V, S, 5)
    assert c.give_up(V, S, 2, 9) == 7
    state = c.symbols[V, S]
    assert (state.missing, state.lost_trades, state.recovered_gaps) == (0, 7, 0)
    assert c.admit(V, S, 3) == (False, None)  # given up: a late copy is not counted any more


def test_a_gap_too_wide_to_backfill_is_lost_at_once() -> None:
    c = TradeContinuity()
    c.admit(V, S, 1)
    ok, gap = c.admit(V, S, MAX_BACKFILL_IDS + 3)
    assert ok and gap is not None and not gap.backfillable
    assert c.symbols[V, S].lost_trades == MAX_BACKFILL_IDS + 1
    assert c.symbols[V, S].open_gaps == []


def test_symbols_are_independent() -> None:
    c = TradeContinuity()
    c.admit(V, "BTCUSDT", 1)
    c.admit(V, "ETHUSDT", 100)
    assert c.admit(V, "BTCUSDT", 2) == (True, None)
    assert c.admit(V, "ETHUSDT", 101) == (True, None)
