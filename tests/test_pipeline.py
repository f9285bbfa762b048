"""The pipeline on real frames: books, trade continuity and backfill, outages, Coinbase gaps.

Each test edits a copy of a real recording (drops, duplicates, inserts) and checks what the
pipeline asks for and what it concludes, against the untouched recording.
"""

from __future__ import annotations

from typing import Any

import orjson

from monitor.config import Config, config_from_dict
from monitor.messages import OutMessage
from monitor.pipeline import Pipeline, RefetchRequest, ResubscribeRequest, SnapshotRequest
from streams.continuity import TradeGap
from streams.events import BINANCE_USDM, COINBASE, Event, FeedGap
from streams.tape import TapeRecord, read_tape
from tests.conftest import DATA, USDM_TAPE

COINBASE_TAPE = DATA / "coinbase-2026-08-09-btc-eth.tape.jsonl.zst"


def make_config(**assets: dict[str, str]) -> Config:
    return config_from_dict(
        {
            "instance": "test",
            "assets": assets,
            "regimes": [],
            "signals": {"flow_window": "10m", "flow_min_coverage": 0.0},
            "mqtt": {"url": "mqtt://127.0.0.1", "prefix": "tw/v1"},
        },
        env={},
    )


USDM = make_config(BTC={"binance_usdm": "BTCUSDT"}, ETH={"binance_usdm": "ETHUSDT"})


def run(
    records: list[TapeRecord], config: Config = USDM, kind: type[Pipeline] = Pipeline
) -> tuple[Pipeline, list[OutMessage]]:
    p = kind.for_session(config, "t", "t", 0)
    out: list[OutMessage] = []
    for rec in records:
        ts = round(rec.ts * 1000)
        if rec.ctl is not None:
            out += p.control(rec.src, rec.ctl)
        elif rec.url is not None:
            out += p.feed_rest(rec.src, rec.url, rec.msg, ts)
        else:
            out += p.feed_frame(rec.src, rec.msg, ts)
    return p, out


def btc_signals(out: list[OutMessage]) -> list[dict[str, Any]]:
    return [m.payload["signals"] for m in out if m.topic.endswith("BTC/signals")]


def is_btc_trade(rec: TapeRecord) -> bool:
    return rec.url is None and rec.msg.startswith('{"stream":"btcusdt@trade"')


def test_books_sync_from_recorded_snapshots_and_ask_once_per_symbol() -> None:
    p = Pipeline.for_session(USDM, "t", "t", 0)
    asked: list[object] = []
    for rec in read_tape(USDM_TAPE):
        if rec.url is not None:
            p.feed_rest(rec.src, rec.url, rec.msg, round(rec.ts * 1000))
        else:
            p.feed_frame(rec.src, rec.msg, round(rec.ts * 1000))
        asked += p.take_requests()
    assert asked == [
        SnapshotRequest(BINANCE_USDM, "BTCUSDT"),
        SnapshotRequest(BINANCE_USDM, "ETHUSDT"),
    ] or asked == [
        SnapshotRequest(BINANCE_USDM, "ETHUSDT"),
        SnapshotRequest(BINANCE_USDM, "BTCUSDT"),
    ]
    for symbol in ("BTCUSDT", "ETHUSDT"):
        book = p.books[BINANCE_USDM, symbol]
        assert book.synced and book.gaps == 0 and book.crossed == 0
    report = p.health_report(0)
    assert report["books"]["binance-usdm/BTCUSDT"]["synced"] is True


def _outage(records: list[TapeRecord], first: int, count: int) -> tuple[list[TapeRecord], ...]:
    """Cut ``count`` BTC trades starting at the ``first``-th, as a dropped socket would; return
    (records with a link_lost where the cut starts, the cut trades)."""
    btc = [i for i, r in enumerate(records) if is_btc_trade(r)]
    cut_idx = set(btc[first : first + count])
    cut = [records[i] for i in sorted(cut_idx)]
    edited: list[TapeRecord] = []
    for i, rec in enumerate(records):
        if i == btc[first]:
            ctl = {"kind": "link_lost", "stream": "binance-usdm/market", "trades": True}
            edited.append(TapeRecord(rec.ts, BINANCE_USDM, "", ctl=ctl))
        if i not in cut_idx:
            edited.append(rec)
    return edited, cut


def _agg_body(trades: list[TapeRecord]) -> str:
    """The cut trades as Binance would serve them from /fapi/v1/aggTrades."""
    rows = []
    for rec in trades:
        d = orjson.loads(rec.msg)["data"]
        rows.append(
            {
                "a": d["t"],
                "p": d["p"],
                "q": d["q"],
                "f": d["t"],
                "l": d["t"],
                "T": d["T"],
                "m": d["m"],
            }
        )
    return orjson.dumps(rows).decode()


def _after_reconnect(edited: list[TapeRecord]) -> int:
    """Index a little after the first BTC trade past the outage: where a backfill can answer."""
    lost = next(i for i, r in enumerate(edited) if r.ctl)
    return next(i for i in range(lost, len(edited)) if is_btc_trade(edited[i])) + 10


def test_outage_is_backfilled_exactly_and_signals_match_the_uncut_recording() -> None:
    records = list(read_tape(USDM_TAPE))
    edited, cut = _outage(records, first=200, count=25)
    cut_ids = [orjson.loads(r.msg)["data"]["t"] for r in cut]
    gap = TradeGap(BINANCE_USDM, "BTCUSDT", cut_ids[0], cut_ids[-1])

    # Pass 1: the pipeline asks for exactly the missing ids.
    p, _ = run(edited)
    assert RefetchRequest(gap) in p.requests
    assert p.continuity.symbols[BINANCE_USDM, "BTCUSDT"].missing == 25

    # Pass 2: the answer arrives shortly after the reconnect, then backfill_done.
    back = _after_reconnect(edited)
    url = f"/fapi/v1/aggTrades?symbol=BTCUSDT&fromId={gap.first_id}&limit=1000"
    done = {
        "kind": "refetch_done",
        "symbol": "BTCUSDT",
        "first_id": gap.first_id,
        "last_id": gap.last_id,
    }
    ts = edited[back].ts
    answered = [
        *edited[:back],
        TapeRecord(ts, BINANCE_USDM, _agg_body(cut), url=url),
        TapeRecord(ts, BINANCE_USDM, "", ctl=done),
        *edited[back:],
    ]
    p, out = run(answered)
    _, original = run(records)
    state = p.continuity.symbols[BINANCE_USDM, "BTCUSDT"]
    assert (state.gaps, state.recovered_gaps, state.missing, state.lost_trades) == (1, 1, 0, 0)
    # Nothing was lost, so nothing is marked missing, and once the backfill is in, every
    # snapshot equals the one computed from the untouched recording.
    assert p.engine.assets["BTC"].perp_flow.coverage() == 1.0
    assert btc_signals(out)[-20:] == btc_signals(original)[-20:]


def _unrecovered_outage() -> list[TapeRecord]:
    """The tape with 25 BTC trades cut by a dropped socket, and a refetch that brought none."""
    edited, cut = _outage(list(read_tape(USDM_TAPE)), first=200, count=25)
    first_id = orjson.loads(cut[0].msg)["data"]["t"]
    last_id = orjson.loads(cut[-1].msg)["data"]["t"]
    back = _after_reconnect(edited)
    done = {"kind": "refetch_done", "symbol": "BTCUSDT", "first_id": first_id, "last_id": last_id}
    return [*edited[:back], TapeRecord(edited[back].ts, BINANCE_USDM, "", ctl=done), *edited[back:]]


def test_unrecovered_outage_marks_its_span_missing() -> None:
    p, _ = run(_unrecovered_outage())
    state = p.continuity.symbols[BINANCE_USDM, "BTCUSDT"]
    assert (state.missing, state.lost_trades) == (0, 25)
    window = p.engine.assets["BTC"].perp_flow
    assert window.coverage() < 1.0  # the outage's buckets are excluded, not read as quiet
    assert p.engine.assets["ETH"].perp_flow.coverage() == 1.0  # other symbols untouched


class GapRecorder(Pipeline):
    """A pipeline that keeps the feed gaps it hands the engine."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gaps: list[FeedGap] = []

    def feed_event(self, event: Event, now_ms: int | None = None) -> list[OutMessage]:
        if isinstance(event, FeedGap):
            self.gaps.append(event)
        return super().feed_event(event, now_ms)


def test_an_unrecovered_outage_runs_from_the_venues_last_trade_to_the_first_after() -> None:
    """The span marked missing starts at the newest trade the venue delivered before its socket
    dropped (any symbol's) and ends at the first trade of the symbol after the reconnect."""
    failed = _unrecovered_outage()
    p, _ = run(failed, kind=GapRecorder)
    assert isinstance(p, GapRecorder)
    lost = next(i for i, r in enumerate(failed) if r.ctl)
    trade_times = [
        orjson.loads(r.msg)["data"]["T"]
        for r in failed[:lost]
        if r.ctl is None and r.url is None and '@trade"' in r.msg[:40]
    ]
    first_after = next(r for r in failed[lost + 1 :] if is_btc_trade(r))
    assert [(g.symbol, g.ts_event, g.ts_end) for g in p.gaps] == [
        ("BTCUSDT", max(trade_times), orjson.loads(first_after.msg)["data"]["T"])
    ]


def test_duplicated_frames_are_not_counted_twice() -> None:
    records = list(read_tape(USDM_TAPE))
    doubled: list[TapeRecord] = []
    for i, rec in enumerate(records):
        doubled.append(rec)
        if is_btc_trade(rec) and i % 7 == 0:
            doubled.append(rec)
    p, out = run(doubled)
    _, original = run(records)
    assert btc_signals(out) == btc_signals(original)
    assert p.continuity.symbols[BINANCE_USDM, "BTCUSDT"].duplicates > 10


COINBASE_CONFIG = make_config(BTC={"coinbase": "BTC-USD"}, ETH={"coinbase": "ETH-USD"})


def sequence_gaps(p: Pipeline) -> int:
    return p.decoders[COINBASE].health()["coinbase_sequence_gaps"]


def test_coinbase_books_sync_and_a_sequence_gap_asks_for_a_resubscribe() -> None:
    records = list(read_tape(COINBASE_TAPE))
    p, _ = run(records, COINBASE_CONFIG)
    assert p.books[COINBASE, "BTC-USD"].synced and p.books[COINBASE, "ETH-USD"].synced
    assert sequence_gaps(p) == 0 and p.take_requests() == []

    # Drop one frame in the middle: sequence_num jumps, every Coinbase book is invalidated.
    middle = len(records) // 2
    p, _ = run(records[:middle] + records[middle + 1 :], COINBASE_CONFIG)
    assert sequence_gaps(p) == 1
    assert p.take_requests() == [ResubscribeRequest(COINBASE, "sequence_gap")]
    assert not p.books[COINBASE, "BTC-USD"].synced


def test_a_coinbase_reconnect_resets_the_sequence_baseline() -> None:
    records = list(read_tape(COINBASE_TAPE))
    lost = TapeRecord(
        records[300].ts,
        COINBASE,
        "",
        ctl={"kind": "link_lost", "stream": "coinbase", "trades": True},
    )
    # After a reconnect the new connection starts numbering afresh: not a gap.
    p, _ = run([*records[:300], lost, *records[400:]], COINBASE_CONFIG)
    assert sequence_gaps(p) == 0


def test_bad_control_records_are_counted_not_fatal() -> None:
    p = Pipeline.for_session(USDM, "t", "t", 0)
    assert p.control(BINANCE_USDM, {"kind": "refetch_done", "symbol": "BTCUSDT"}) == []
    assert p.control(BINANCE_USDM, {"kind": "backfill_done", "first_id": "x"}) == []
    assert p.control(BINANCE_USDM, {"kind": "mystery"}) == []
    assert p.control(BINANCE_USDM, ["not", "a", "mapping"]) == []  # type: ignore[arg-type]
    assert p.health.malformed[BINANCE_USDM, "bad_control"] == 3
    assert p.health.ignored[BINANCE_USDM, "unknown_control"] == 1
