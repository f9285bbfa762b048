"""The Binance parser on real recorded frames and on every kind of malformed frame."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streams import binance
from streams.binance import (
    combined_stream_url,
    parse_depth_frame,
    parse_frame,
    parse_rest,
    parse_trade_frame,
    stream_name,
)
from streams.events import (
    BINANCE_SPOT,
    BINANCE_USDM,
    BUY,
    SELL,
    BookTicker,
    DepthDiff,
    DepthSnapshot,
    Event,
    Liquidation,
    LongShortRatio,
    MarkPrice,
    OpenInterest,
    Trade,
)
from streams.frames import IgnoredFrame, MalformedFrame
from streams.tape import read_tape
from tests.conftest import DATA

TAPES = {
    "binance-usdm-2024-07-18-btc-eth-90s.tape.jsonl.zst": BINANCE_USDM,
    "binance-usdm-2021-07-22-alts.tape.jsonl.zst": BINANCE_USDM,
    "binance-spot-2024-08-08-btc-eth-60s.tape.jsonl.zst": BINANCE_SPOT,
    "binance-spot-2021-10-11-alts.tape.jsonl.zst": BINANCE_SPOT,
}


@pytest.mark.parametrize("name", sorted(TAPES))
def test_every_recorded_frame_parses_or_is_ignored_with_a_reason(name: str) -> None:
    outcomes: Counter[str] = Counter()
    for rec in read_tape(DATA / name):
        if rec.url is not None:
            continue
        try:
            events = parse_frame(TAPES[name], rec.msg, 0)
            outcomes.update(type(e).__name__ for e in events)
        except IgnoredFrame as skip:
            outcomes[f"ignored:{skip.detail or skip.kind}"] += 1
        except MalformedFrame as bad:  # pragma: no cover - the assertion below reports it
            pytest.fail(f"real frame rejected as malformed ({bad}): {rec.msg[:200]}")
    assert outcomes["Trade"] > 0 and outcomes["DepthDiff"] > 0 and outcomes["BookTicker"] > 0
    # Everything not turned into events is a known stream we do not collect.
    assert {k for k in outcomes if k.startswith("ignored:")} <= {"ignored:kline"}


@pytest.mark.parametrize("name", sorted(TAPES))
def test_every_recorded_rest_body_parses_or_is_ignored_with_a_reason(name: str) -> None:
    snapshots = 0
    for rec in read_tape(DATA / name):
        if rec.url is None:
            continue
        try:
            events = parse_rest(TAPES[name], rec.url, rec.msg, 0)
        except IgnoredFrame as skip:
            assert skip.kind == "rest_not_collected", rec.url  # exchangeInfo
            continue
        [snap] = events
        assert isinstance(snap, DepthSnapshot)
        raw = orjson.loads(rec.msg)
        assert snap.symbol in rec.url and snap.last_id == raw["lastUpdateId"]
        assert len(snap.bids) == len(raw["bids"]) and len(snap.asks) == len(raw["asks"])
        assert snap.bids[0] == (float(raw["bids"][0][0]), float(raw["bids"][0][1]))
        snapshots += 1
    assert snapshots >= 2


def test_real_usdm_depth_diff_and_book_tickers() -> None:
    diff = ticker = None
    for rec in read_tape(DATA / "binance-usdm-2024-07-18-btc-eth-90s.tape.jsonl.zst"):
        if rec.url is None and diff is None and '"btcusdt@depth@0ms"' in rec.msg:
            diff = rec.msg
        if rec.url is None and ticker is None and '"btcusdt@bookTicker"' in rec.msg:
            ticker = rec.msg
    assert diff is not None and ticker is not None
    raw = orjson.loads(diff)["data"]
    [d] = parse_frame(BINANCE_USDM, diff, 9)
    assert isinstance(d, DepthDiff)
    assert (d.first_id, d.last_id, d.prev_last_id) == (raw["U"], raw["u"], raw["pu"])
    assert d.ts_event == raw["E"] and len(d.bids) == len(raw["b"]) and len(d.asks) == len(raw["a"])
    assert d.bids[0] == (float(raw["b"][0][0]), float(raw["b"][0][1]))
    raw_t = orjson.loads(ticker)["data"]
    [t] = parse_frame(BINANCE_USDM, ticker, 9)
    assert isinstance(t, BookTicker) and t.ts_event == raw_t["E"]
    assert (t.bid, t.ask) == (float(raw_t["b"]), float(raw_t["a"]))


def test_spot_book_ticker_has_no_time_so_receive_time_stands_in() -> None:
    frame = (
        '{"stream":"bnbusdt@bookTicker","data":{"u":400900217,"s":"BNBUSDT","b":"25.35190000",'
        '"B":"31.21000000","a":"25.36520000","A":"40.66000000"}}'
    )
    [t] = parse_frame(BINANCE_SPOT, frame, 777)
    assert t == BookTicker(BINANCE_SPOT, "BNBUSDT", 777, 777, 25.3519, 31.21, 25.3652, 40.66)


def test_force_order_documented_shape() -> None:
    frame = (
        '{"stream":"btcusdt@forceOrder","data":{"e":"forceOrder","E":1568014460893,"o":{'
        '"s":"BTCUSDT","S":"SELL","o":"LIMIT","f":"IOC","q":"0.014","p":"9910","ap":"9910",'
        '"X":"FILLED","l":"0.014","z":"0.014","T":1568014460893}}}'
    )
    [liq] = parse_frame(BINANCE_USDM, frame, 1)
    # SELL liquidation order: the exchange sells to close a long.
    assert liq == Liquidation(BINANCE_USDM, "BTCUSDT", 1568014460893, 1, SELL, 9910.0, 0.014)


def test_polled_rest_bodies_documented_shapes() -> None:
    [oi] = parse_rest(
        BINANCE_USDM,
        "/fapi/v1/openInterest?symbol=BTCUSDT",
        '{"openInterest":"10659.509","symbol":"BTCUSDT","time":1589437530011}',
        5,
    )
    assert oi == OpenInterest(BINANCE_USDM, "BTCUSDT", 1589437530011, 5, 10659.509)
    [ls] = parse_rest(
        BINANCE_USDM,
        "/futures/data/globalLongShortAccountRatio?symbol=BTCUSDT&period=5m&limit=1",
        '[{"symbol":"BTCUSDT","longShortRatio":"0.1960","longAccount":"0.6622",'
        '"shortAccount":"0.3378","timestamp":"1583139600000"}]',
        5,
    )
    assert ls == LongShortRatio(BINANCE_USDM, "BTCUSDT", 1583139600000, 5, 0.196, 0.6622, 0.3378)
    # Polled once, never read by a signal: no longer collected, and counted so when a tape
    # from before holds it.
    with pytest.raises(IgnoredFrame, match="rest_not_collected"):
        parse_rest(
            BINANCE_USDM,
            "/futures/data/takerlongshortRatio?symbol=BTCUSDT&period=5m&limit=1",
            '[{"buySellRatio":"1.5586","buyVol":"387.3300","sellVol":"248.5030",'
            '"timestamp":1585614900000}]',
            5,
        )
    trades = parse_rest(
        BINANCE_SPOT,
        "/api/v3/aggTrades?symbol=BTCUSDT&fromId=26129&limit=2",
        '[{"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,'
        '"T":1498793709153,"m":true,"M":true},{"a":26130,"p":"0.01633103","q":"1","f":27782,'
        '"l":27782,"T":1498793709160,"m":false,"M":true}]',
        5,
    )
    assert [(t.trade_id, t.taker_side, t.symbol) for t in trades] == [
        (26129, SELL, "BTCUSDT"),
        (26130, BUY, "BTCUSDT"),
    ]


@pytest.mark.parametrize(
    ("url", "body", "outcome"),
    [
        ("/fapi/v1/depth?symbol=BTCUSDT", "<html>", "not_json"),
        ("/fapi/v1/depth?symbol=BTCUSDT", '{"code":-1121,"msg":"Invalid symbol."}', "rest_error"),
        ("/fapi/v1/depth", '{"lastUpdateId":1,"bids":[],"asks":[]}', "missing_field"),
        (
            "/fapi/v1/depth?symbol=X",
            '{"lastUpdateId":1,"bids":[["1","NaN"]],"asks":[]}',
            "bad_value",
        ),
        ("/fapi/v1/openInterest?symbol=X", '{"openInterest":"-1","time":1}', "bad_value"),
        ("/fapi/v1/exchangeInfo", "{}", "rest_not_collected"),
    ],
)
def test_bad_rest_bodies_are_classified(url: str, body: str, outcome: str) -> None:
    with pytest.raises((MalformedFrame, IgnoredFrame)) as info:
        parse_rest(BINANCE_USDM, url, body, 0)
    assert info.value.kind == outcome


def test_stream_name_read_from_the_frame_prefix() -> None:
    assert stream_name('{"stream":"btcusdt@depth@100ms","data":{}}') == "btcusdt@depth@100ms"
    assert stream_name(b'{"stream":"ethusdt@markPrice@1s","data":{}}') == "ethusdt@markPrice@1s"
    assert stream_name('{"e":"aggTrade"}') is None


def test_trade_fields_and_taker_side_from_real_frame() -> None:
    # The first BTC @trade frame of the USDⓈ-M recording, field by field.
    for rec in read_tape(DATA / "binance-usdm-2024-07-18-btc-eth-90s.tape.jsonl.zst"):
        if rec.url is None and '"btcusdt@trade"' in rec.msg:
            raw = orjson.loads(rec.msg)["data"]
            break
    [trade] = parse_frame(BINANCE_USDM, rec.msg, 123)
    assert isinstance(trade, Trade)
    assert trade.symbol == "BTCUSDT"
    assert trade.price == float(raw["p"]) and trade.qty == float(raw["q"])
    assert trade.ts_event == raw["T"] and trade.ts_recv == 123 and trade.trade_id == raw["t"]
    # m == true: the buyer was the maker, so the taker sold.
    assert trade.taker_side == (SELL if raw["m"] else BUY)


def test_aggtrade_and_mark_price_documented_shapes() -> None:
    agg = (
        '{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1771000000100,"s":"BTCUSDT",'
        '"a":5933014,"p":"78000.10","q":"0.250","nq":"0.250","f":100,"l":105,'
        '"T":1771000000095,"m":false}}'
    )
    [t] = parse_frame(BINANCE_USDM, agg, 1)
    assert t == Trade(BINANCE_USDM, "BTCUSDT", 1771000000095, 1, 78000.10, 0.25, BUY, 5933014)
    assert math.isclose(t.notional, 19500.025)

    mark = (
        '{"stream":"btcusdt@markPrice@1s","data":{"e":"markPriceUpdate","E":1562305380000,'
        '"s":"BTCUSDT","p":"11794.15000000","i":"11784.62659091","P":"11784.25641265",'
        '"r":"-0.00038167","T":1562306400000}}'
    )
    [m] = parse_frame(BINANCE_USDM, mark, 2)
    assert m == MarkPrice(
        BINANCE_USDM,
        "BTCUSDT",
        1562305380000,
        2,
        11794.15,
        11784.62659091,
        -0.00038167,
        1562306400000,
    )


def test_raw_mode_payload_without_envelope() -> None:
    raw = '{"e":"trade","E":1,"s":"ETHUSDT","t":7,"p":"3000","q":"1","T":1,"m":true}'
    [t] = parse_frame(BINANCE_USDM, raw, 0)
    assert (t.symbol, t.taker_side, t.trade_id) == ("ETHUSDT", SELL, 7)


GOOD = {"e": "aggTrade", "E": 1, "s": "BTCUSDT", "a": 1, "p": "1", "q": "1", "T": 1, "m": True}


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        ("{not json", "not_json"),
        ("[1,2]", "not_object"),
        ("", "not_json"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "p"}).decode(), "missing_field"),
        (orjson.dumps({**GOOD, "p": [1]}).decode(), "bad_type"),
        (orjson.dumps({**GOOD, "m": "yes"}).decode(), "bad_type"),
        (orjson.dumps({**GOOD, "T": "1"}).decode(), "bad_type"),
        (orjson.dumps({**GOOD, "p": "NaN"}).decode(), "bad_value"),
        (orjson.dumps({**GOOD, "p": "-5"}).decode(), "bad_value"),
        (orjson.dumps({**GOOD, "q": "0"}).decode(), "bad_value"),
        (orjson.dumps({**GOOD, "p": "abc"}).decode(), "bad_type"),
        (orjson.dumps({**GOOD, "e": "bogus"}).decode(), "unknown_event"),
        (orjson.dumps({**GOOD, "e": []}).decode(), "bad_type"),  # was a TypeError
        (orjson.dumps({**GOOD, "e": 5}).decode(), "bad_type"),
        (
            '{"stream":"x","data":{"e":"markPriceUpdate","E":1,"s":"BTCUSDT","p":"inf"}}',
            "bad_value",
        ),
    ],
)
def test_malformed_frames_are_classified(frame: str, kind: str) -> None:
    with pytest.raises(MalformedFrame) as info:
        parse_frame(BINANCE_USDM, frame, 0)
    assert info.value.kind == kind


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        ('{"result":null,"id":1}', "control_reply"),
        ('{"error":{"code":2,"msg":"Invalid request"},"id":3}', "error_reply"),
        ('{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1}}', "server_shutdown"),
    ],
)
def test_control_frames_are_ignored_with_a_reason(frame: str, kind: str) -> None:
    with pytest.raises(IgnoredFrame) as info:
        parse_frame(BINANCE_USDM, frame, 0)
    assert info.value.kind == kind


def test_combined_stream_url_lowercases_symbols() -> None:
    url = combined_stream_url(
        "ws://h:1/market/", ["BTCUSDT", "ETHUSDT"], ("aggTrade", "markPrice@1s")
    )
    assert url == (
        "ws://h:1/market/stream?streams=btcusdt@aggTrade/btcusdt@markPrice@1s/"
        "ethusdt@aggTrade/ethusdt@markPrice@1s"
    )


@pytest.mark.parametrize("name", sorted(TAPES))
def test_the_fast_depth_decoder_gives_what_the_strict_parser_gives(name: str) -> None:
    venue, seen = TAPES[name], 0
    for rec in read_tape(DATA / name):
        if rec.url is None and rec.ctl is None and "@depth" in rec.msg[:40]:
            assert parse_depth_frame(venue, rec.msg, 7) == parse_frame(venue, rec.msg, 7)
            binance._DEPTH_DECODER.decode(rec.msg)  # the fast path took it (no fallback)
            seen += 1
    assert seen > 100, "the tape holds depth frames"


DEPTH_FRAME = (
    '{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT",'
    '"U":1,"u":2,"pu":0,%s}}'
)
TRADE_FRAME = (
    '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","T":1,"m":true,%s}}'
)
BAD_FIELDS = [
    (DEPTH_FRAME, parse_depth_frame, fields)
    for fields in (
        '"b":[["NaN","1"]],"a":[]',  # NaN fails every bound the fast decoder checks
        '"b":[["-1","1"]],"a":[]',
        '"b":[["1","-2"]],"a":[]',
        '"b":[["1e400","1"]],"a":[]',
        '"b":[["1","2","3"]],"a":[]',
        '"b":[["x","1"]],"a":[]',
        '"b":[],"a":[["1","inf"]]',
        '"b":[]',
    )
] + [
    (TRADE_FRAME, parse_trade_frame, fields)
    for fields in (
        '"p":"NaN","q":"1","t":1',
        '"p":"-1","q":"1","t":1',
        '"p":"1","q":"0","t":1',
        '"p":"1e400","q":"1","t":1',
        '"p":"x","q":"1","t":1',
        '"p":"1","q":"1"',  # no id
        '"p":"1","q":"1","a":1',  # an aggTrade id on a trade
        '"p":"1","q":"1","t":"x"',
    )
]


@pytest.mark.parametrize(("frame", "fast_parser", "fields"), BAD_FIELDS)
def test_a_bad_frame_is_malformed_the_same_way_on_the_fast_path(
    frame: str, fast_parser: Callable[[str, str, int], list[Event]], fields: str
) -> None:
    raw = frame % fields
    with pytest.raises(MalformedFrame) as strict:
        parse_frame(BINANCE_USDM, raw, 1)
    with pytest.raises(MalformedFrame) as fast:
        fast_parser(BINANCE_USDM, raw, 1)
    assert (fast.value.kind, fast.value.detail) == (strict.value.kind, strict.value.detail)


@pytest.mark.parametrize("name", sorted(TAPES))
def test_the_fast_trade_decoder_gives_what_the_strict_parser_gives(name: str) -> None:
    venue, seen = TAPES[name], 0
    for rec in read_tape(DATA / name):
        head = "" if rec.url is not None or rec.ctl is not None else rec.msg[:40]
        if "@trade" in head or "@aggTrade" in head:
            assert parse_trade_frame(venue, rec.msg, 7) == parse_frame(venue, rec.msg, 7)
            binance._TRADE_DECODER.decode(rec.msg)  # the fast path took it (no fallback)
            seen += 1
    assert seen > 0, "the tape holds trade frames"


def test_an_agg_trade_frame_takes_its_id_from_a_on_the_fast_path() -> None:
    raw = (
        '{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":5,"s":"BTCUSDT","a":42,'
        '"p":"100.5","q":"2","f":1,"l":3,"T":4,"m":false}}'
    )
    assert parse_trade_frame(BINANCE_USDM, raw, 9) == [
        Trade(BINANCE_USDM, "BTCUSDT", 4, 9, 100.5, 2.0, BUY, 42)
    ]
    assert parse_trade_frame(BINANCE_USDM, raw, 9) == parse_frame(BINANCE_USDM, raw, 9)


# -- trade frames read in C (streams/_trade_frame.c) ------------------------------------------
@contextmanager
def fallback_calls() -> Iterator[list[str]]:
    """The C reader of trade frames (which the install builds: its absence is a failure here,
    not a skip) with a fallback that records the frames it was handed."""
    from streams import _trade_frame

    assert binance.read_trade_frame is _trade_frame.parse
    handed: list[str] = []

    def spy(venue: str, raw: str | bytes, ts_recv: int) -> list[Event]:
        handed.append(str(raw))
        return parse_trade_frame(venue, raw, ts_recv)

    _trade_frame.setup(Trade, BUY, SELL, spy)
    try:
        yield handed
    finally:
        _trade_frame.setup(Trade, BUY, SELL, parse_trade_frame)


def outcome(parse: Callable[[str, str | bytes, int], list[Event]], raw: str | bytes) -> object:
    """What a parser makes of a frame: its events, or the kind and detail of what it raised."""
    try:
        return parse(BINANCE_USDM, raw, 3)
    except (MalformedFrame, IgnoredFrame) as exc:
        return type(exc).__name__, exc.kind, exc.detail


@pytest.mark.parametrize("name", sorted(TAPES))
def test_the_c_reader_takes_every_recorded_trade_frame_as_the_strict_parser_does(
    name: str,
) -> None:
    venue, seen = TAPES[name], 0
    with fallback_calls() as handed:
        for rec in read_tape(DATA / name):
            head = "" if rec.url is not None or rec.ctl is not None else rec.msg[:40]
            if "@trade" in head or "@aggTrade" in head:
                assert binance.read_trade_frame(venue, rec.msg, 7) == parse_frame(venue, rec.msg, 7)
                assert binance.read_trade_frame(venue, rec.msg.encode(), 7) == parse_frame(
                    venue, rec.msg, 7
                )
                seen += 1
    assert seen > 0, "the tape holds trade frames"
    assert handed == [], "every recorded frame was read in C"


@pytest.mark.parametrize(("frame", "fast_parser", "fields"), BAD_FIELDS)
def test_a_bad_frame_handed_to_the_c_reader_is_malformed_the_same_way(
    frame: str, fast_parser: Callable[[str, str, int], list[Event]], fields: str
) -> None:
    raw = frame % fields
    assert outcome(binance.read_trade_frame, raw) == outcome(parse_frame, raw)


DIGITS = st.text("0123456789", min_size=0, max_size=26)


@settings(max_examples=3000, deadline=None)
@given(whole=DIGITS, frac=st.none() | DIGITS, qty=st.sampled_from(["1", "0.001", "12.5"]))
@example(whole="0", frac="0" * 22 + "1", qty="1")  # 22 decimals: 1e22 is exact
@example(whole="0", frac="0" * 22 + "3", qty="1")  # 23: 1e23 is not, CPython converts it
@example(whole="0", frac="0" * 22 + "7", qty="1")
@example(whole="9" * 15, frac=None, qty="1")  # 15 significant digits: exact
@example(whole="9007199254740993", frac=None, qty="1")  # 2**53 + 1, 16 digits: not
def test_the_c_reader_converts_decimal_strings_exactly_as_float_does(
    whole: str, frac: str | None, qty: str
) -> None:
    """Up to 15 significant digits and 22 decimals by one exact division, beyond that by
    CPython's own conversion: the price is float()'s to the last bit, or the frame is the
    Python parser's to judge."""
    price = whole if frac is None else f"{whole}.{frac}"
    raw = TRADE_FRAME % f'"p":"{price}","q":"{qty}","t":1'
    with fallback_calls() as handed:
        got = outcome(binance.read_trade_frame, raw)
    assert got == outcome(parse_trade_frame, raw)
    if any(c.isdigit() for c in price) and float(price) > 0:
        assert handed == [], "a plain decimal is read in C"
        assert isinstance(got, list) and got[0].price == float(price)


# A trade payload's fields as Binance sends them, and odd values any of them may be given.
PAYLOAD = {
    "e": ['"trade"', '"aggTrade"'],
    "E": ["1721347022708"],
    "s": ['"BTCUSDT"', '"ETHUSDT"'],
    "t": ["4217896584"],
    "a": ["42"],
    "p": ['"65000.10"', '"0.5"', '"3424.98"', '"1.000000000000000001"'],
    "q": ['"0.007"', '"12"', '"0.00000000000000000000001"'],
    "T": ["1721347022707"],
    "m": ["true", "false"],
    "X": ['"MARKET"'],
}
ODD = [
    *("null", "1.5", "1e3", "-7", "01", "0", "true", "false"),
    *("999999999999999999", "9999999999999999999", "99999999999999999999"),  # 18, 19, 20 digits
    *("[]", "{}", '{"a":1}', '""', '"x\\"y"', '"\\u0041"', '"É"', '"1e5"', '" 1"', '"-1"'),
    *('"inf"', '"NaN"', '"1_0"', '".5"', '"5."', '"."', '"1.2.3"', '"0x10"', '"+1"', '"1,5"'),
]
ENVELOPES = [
    '{"stream":"%s","data":{%s}}',
    '{"stream":"%s", "data":{%s}}',
    '{"stream":"%s","data":{%s}} ',
    '{"stream":"%s","data":{%s}',
    '{"stream":"%s","data":{%s}}}',
    '{"stream":"%s","data":{%s},"x":1}',
    ' {"stream":"%s","data":{%s}}',
]


@st.composite
def trade_frames(draw: st.DrawFn) -> str:
    """A well-formed trade or aggTrade frame with up to three things wrong with it."""
    fields = {key: draw(st.sampled_from(values)) for key, values in PAYLOAD.items()}
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([*PAYLOAD, "M", "f"]))
        change = draw(st.sampled_from(["odd", "drop", "again"]))
        if change == "odd":
            fields[key] = draw(st.sampled_from(ODD))
        elif change == "drop":
            fields.pop(key, None)
        else:  # the key given twice, the second time with another value
            fields[f"{key} "] = draw(st.sampled_from(ODD + PAYLOAD.get(key, [])))
    items = draw(st.permutations(list(fields.items())))
    body = ",".join(f'"{key.strip()}":{value}' for key, value in items)
    stream = draw(st.sampled_from(["btcusdt@trade", "ethusdt@aggTrade", 'x\\"y']))
    if draw(st.integers(0, 3)):
        return ENVELOPES[0] % (stream, body)
    return draw(st.sampled_from(ENVELOPES)) % (stream, body)


@settings(max_examples=3000, deadline=None)
@given(raw=trade_frames(), as_bytes=st.booleans())
def test_the_c_reader_makes_of_any_frame_what_the_python_parser_makes_of_it(
    raw: str, as_bytes: bool
) -> None:
    frame: str | bytes = raw.encode() if as_bytes else raw
    assert outcome(binance.read_trade_frame, frame) == outcome(parse_trade_frame, frame)


@settings(max_examples=1000, deadline=None)
@given(raw=st.text(max_size=300) | st.binary(max_size=300))
def test_the_c_reader_hands_on_any_text_without_a_crash(raw: str | bytes) -> None:
    assert outcome(binance.read_trade_frame, raw) == outcome(parse_trade_frame, raw)


def test_the_c_reader_names_each_trades_symbol_among_many() -> None:
    """Its cache of symbol strings holds a few: more symbols than that, in turn, and one too
    long to be cached, each come back as their own."""
    symbols = [f"SYM{i}USDT" for i in range(50)] + ["X" * 40]
    with fallback_calls() as handed:
        for _ in range(3):
            for i, symbol in enumerate(symbols):
                raw = (
                    f'{{"stream":"x@trade","data":{{"e":"trade","s":"{symbol}","t":{i},'
                    f'"p":"1.5","q":"2","T":{i},"m":false}}}}'
                )
                assert binance.read_trade_frame(BINANCE_SPOT, raw, 1) == [
                    Trade(BINANCE_SPOT, symbol, i, 1, 1.5, 2.0, BUY, i)
                ]
    assert handed == []
