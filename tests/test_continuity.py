"""Trade-id continuity on hand-worked sequences."""

from __future__ import annotations

from streams.continuity import (
    MAX_REFETCH_IDS,
    SUSPECT_TTL_MS,
    TradeContinuity,
    TradeGap,
)
from streams.events import BUY, Trade

V, S = "binance-usdm", "BTCUSDT"


def trade(trade_id: int, symbol: str = S, ts: int | None = None) -> Trade:
    at = 1_000 * trade_id if ts is None else ts
    return Trade(V, symbol, at, at, 100.0, 1.0, BUY, trade_id)


def ids(c: TradeContinuity, trade_id: int, **kw: object) -> tuple[list[int], TradeGap | None]:
    """Admit one trade; the ids counted now and the gap revealed."""
    counted, gap = c.admit(trade(trade_id, **kw))  # type: ignore[arg-type]
    return [t.trade_id for t in counted], gap


def run(c: TradeContinuity, *trade_ids: int) -> list[int]:
    """Every id counted, in the order counted."""
    return [i for trade_id in trade_ids for i in ids(c, trade_id)[0]]


def test_gap_is_reported_once_confirmed_then_filled_in_any_order() -> None:
    c = TradeContinuity()
    assert run(c, 1, 2) == [1, 2]
    assert ids(c, 6) == ([], None)  # a jump is held until the stream confirms it
    assert ids(c, 7) == ([6, 7], TradeGap(V, S, 3, 5))
    assert ids(c, 4) == ([4], None)  # backfilled, fills the middle
    assert c.symbols[V, S].open_gaps == [[3, 3, 3], [5, 5, 3]]
    assert run(c, 5, 3) == [5, 3]
    state = c.symbols[V, S]
    assert (state.gaps, state.recovered_gaps, state.recovered_trades, state.missing) == (1, 1, 3, 0)


def test_duplicates_are_rejected() -> None:
    c = TradeContinuity()
    run(c, 10, 11, 12)
    assert ids(c, 11) == ([], None)
    assert ids(c, 12) == ([], None)
    assert c.symbols[V, S].duplicates == 2


def test_give_up_counts_lost_only_what_is_still_missing() -> None:
    c = TradeContinuity()
    run(c, 1, 2, 10, 11)  # gap 3..9, confirmed by 11
    run(c, 5)
    assert c.give_up(V, S, 3, 9) == 6
    state = c.symbols[V, S]
    assert (state.missing, state.lost_trades, state.recovered_gaps) == (0, 6, 0)
    assert ids(c, 3) == ([], None)  # given up: a late copy is not counted any more


def test_a_gap_too_wide_to_backfill_is_lost_once_confirmed() -> None:
    c = TradeContinuity()
    run(c, 1, 2)
    jump = MAX_REFETCH_IDS + 4  # ids 3 .. MAX_REFETCH_IDS + 3 missed
    assert ids(c, jump) == ([], None)
    counted, gap = ids(c, jump + 1)
    assert counted == [jump, jump + 1]
    assert gap is not None and not gap.refetchable
    assert c.symbols[V, S].lost_trades == MAX_REFETCH_IDS + 1
    assert c.symbols[V, S].open_gaps == []


def test_symbols_are_independent() -> None:
    c = TradeContinuity()
    run(c, 1)
    assert ids(c, 100, symbol="ETHUSDT") == ([100], None)
    assert ids(c, 2) == ([2], None)
    assert ids(c, 101, symbol="ETHUSDT") == ([101], None)


def test_an_id_a_billion_ahead_is_never_believed() -> None:
    """One forged frame must not turn the real trades after it into duplicates."""
    c = TradeContinuity()
    run(c, 1, 2, 3)
    assert ids(c, 3 + 10**9, ts=3_500) == ([], None)
    assert run(c, *range(4, 40)) == list(range(4, 40))  # the real sequence goes on
    state = c.symbols[V, S]
    assert (state.lost_trades, state.duplicates, state.gaps, state.missing) == (0, 0, 0, 0)
    assert len(state.suspects) == 1  # held, not yet discarded
    # Once the real sequence has outlived it for SUSPECT_TTL_MS, it is dropped and counted.
    assert ids(c, 40, ts=3_500 + SUSPECT_TTL_MS + 1) == ([40], None)
    assert (len(state.suspects), state.suspects_dropped, state.lost_trades) == (0, 1, 0)


def test_an_id_50_ahead_is_dropped_when_the_real_trade_of_that_id_arrives() -> None:
    c = TradeContinuity()
    run(c, 100, 101)
    assert ids(c, 151) == ([], None)  # forged: 50 ahead
    assert run(c, *range(102, 160)) == list(range(102, 160))  # nothing dropped, nothing held
    state = c.symbols[V, S]
    assert (state.lost_trades, state.duplicates, state.gaps, state.suspects_dropped) == (
        0,
        0,
        0,
        1,
    )
    assert state.suspects == []


def test_reordered_frames_are_all_counted() -> None:
    c = TradeContinuity()
    assert run(c, 1, 2, 4, 3, 5, 6) == [1, 2, 3, 4, 5, 6]
    state = c.symbols[V, S]
    assert (state.gaps, state.duplicates, state.suspects_dropped) == (0, 0, 0)


def test_a_reconnect_gap_with_a_dropped_frame_after_it() -> None:
    """After the jump the stream skips one more id: the first jump is confirmed by a trade
    close beyond it, and the second waits for its own confirmation."""
    c = TradeContinuity()
    run(c, 1, 2)
    assert ids(c, 500) == ([], None)
    assert ids(c, 502) == ([500], TradeGap(V, S, 3, 499))
    assert ids(c, 503) == ([502, 503], TradeGap(V, S, 501, 501))


def test_a_forged_first_id_is_replaced_by_the_real_sequence() -> None:
    c = TradeContinuity()
    assert ids(c, 10**9) == ([10**9], None)  # nothing to compare the first with
    assert ids(c, 7) == ([7], None)  # an older id next: the first was no sequence
    assert run(c, 8, 9) == [8, 9]
    state = c.symbols[V, S]
    assert (state.duplicates, state.lost_trades, state.suspects_dropped) == (0, 0, 1)


def test_a_forged_low_first_id_opens_no_billion_wide_gap() -> None:
    c = TradeContinuity()
    assert ids(c, 5) == ([5], None)
    assert ids(c, 10**9) == ([], None)
    assert ids(c, 10**9 + 1) == ([10**9, 10**9 + 1], None)
    state = c.symbols[V, S]
    assert (state.lost_trades, state.gaps, state.suspects_dropped) == (0, 0, 1)


def test_rest_rows_only_fill_gaps() -> None:
    c = TradeContinuity()
    run(c, 1, 2, 6, 7)  # gap 3..5
    assert c.admit(trade(4), live=False)[0] == (trade(4),)
    assert c.admit(trade(9), live=False) == ((), None)  # ahead of the stream: it comes live
    assert ids(c, 8) == ([8], None)
    assert ids(c, 9) == ([9], None)
