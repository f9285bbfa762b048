"""The venue adapters build the requests and sockets each venue documents (see
docs/exchange-protocols.md), and page a trade refetch on real answers."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from monitor.config import config_from_dict
from monitor.defaults import default_config_data
from streams.book import BookRule
from streams.continuity import TradeGap
from streams.events import BINANCE_SPOT, BINANCE_USDM, COINBASE, Trade
from streams.frames import MalformedFrame
from streams.units import DAY_MS, MINUTE_MS
from streams.venues import ADAPTERS, BY_NAME, BinanceSpot, BinanceUsdm, Coinbase, Pace, Resync

SPOT = BinanceSpot("wss://spot.example/", "https://spot.example")
USDM = BinanceUsdm("wss://fut.example/market", "wss://fut.example/public", "https://fut.example")
CB = Coinbase("wss://cb.example", "https://cb.example")


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def test_binance_sockets_carry_the_streams_read_and_nothing_else() -> None:
    (spot,) = SPOT.sockets(["BTCUSDT", "ETHUSDT"])
    assert spot.url == (
        "wss://spot.example/stream?streams="
        "btcusdt@aggTrade/btcusdt@depth@100ms/ethusdt@aggTrade/ethusdt@depth@100ms"
    )
    assert spot.name == BINANCE_SPOT and spot.carries_trades and spot.subscribe == ()
    assert spot.watched == ("btcusdt@depth@100ms", "ethusdt@depth@100ms")
    market, public = USDM.sockets(["BTCUSDT"])
    assert market.url == (
        "wss://fut.example/market/stream?streams="
        "btcusdt@aggTrade/btcusdt@markPrice@1s/btcusdt@forceOrder"
    )
    assert public.url == "wss://fut.example/public/stream?streams=btcusdt@depth@100ms"
    assert (market.name, public.name) == ("binance-usdm/market", "binance-usdm/public")
    assert market.carries_trades and not public.carries_trades
    assert market.watched == ("btcusdt@markPrice@1s",)
    # No bookTicker anywhere: no signal reads it.
    assert "bookTicker" not in spot.url + market.url + public.url


def test_binance_splits_symbols_over_sockets_at_200_streams() -> None:
    symbols = [f"S{i}USDT" for i in range(150)]
    sockets = USDM.sockets(symbols)
    market = [s for s in sockets if "/market/" in s.url]
    # 3 streams per symbol: 66 symbols (198 streams) per socket.
    assert [len(s.url.split("=", 1)[1].split("/")) for s in market] == [198, 198, 54]
    assert [s.name for s in market] == [
        "binance-usdm/market",
        "binance-usdm/market#2",
        "binance-usdm/market#3",
    ]


def test_coinbase_subscribes_one_channel_per_message_with_the_reference_on_trades() -> None:
    assert CB.sockets([]) == []
    (socket,) = CB.sockets(["BTC-USD"], trades_only=["USDT-USD"])
    messages = [orjson.loads(m) for m in socket.subscribe]
    assert [(m["channel"], m["product_ids"]) for m in messages] == [
        ("heartbeats", ["BTC-USD"]),
        ("market_trades", ["BTC-USD", "USDT-USD"]),
        ("level2", ["BTC-USD"]),
    ]
    assert socket.url == "wss://cb.example" and socket.watched == ("heartbeats",)


@pytest.mark.parametrize(
    ("venue", "path", "weights"),
    [
        (SPOT, "/api/v3/depth", [5, 5, 5, 5, 5, 25, 50]),
        (USDM, "/fapi/v1/depth", [2, 2, 2, 2, 5, 10, 20]),
    ],
)
def test_depth_snapshots_at_the_documented_weights(
    venue: BinanceSpot | BinanceUsdm, path: str, weights: list[int]
) -> None:
    limits = [5, 10, 20, 50, 100, 500, 1000]
    calls = [venue.snapshot("BTCUSDT", limit) for limit in limits]
    assert [c.weight for c in calls] == weights
    assert {c.path for c in calls} == {path}
    assert calls[-1].params == {"symbol": "BTCUSDT", "limit": 1000}
    assert venue.resync is Resync.SNAPSHOT
    assert CB.snapshot("BTC-USD", 1000) is None and CB.resync is Resync.RESUBSCRIBE


def test_book_rules_and_names() -> None:
    assert [SPOT.book_rule, USDM.book_rule, CB.book_rule] == [
        BookRule.FIRST_ID,
        BookRule.PREVIOUS_ID,
        BookRule.IN_STREAM,
    ]
    assert set(ADAPTERS) == {"binance_spot", "binance_usdm", "coinbase"}
    assert {name: cls.config_key for name, cls in BY_NAME.items()} == {
        BINANCE_SPOT: "binance_spot",
        BINANCE_USDM: "binance_usdm",
        COINBASE: "coinbase",
    }


def agg_trades(first: int, count: int) -> str:
    rows = [
        {"a": i, "p": "100.5", "q": "0.1", "f": i, "l": i, "T": 1_700_000_000_000 + i, "m": False}
        for i in range(first, first + count)
    ]
    return orjson.dumps(rows).decode()


def test_binance_refetch_pages_by_id_until_the_gap_is_covered() -> None:
    gap = TradeGap(BINANCE_USDM, "BTCUSDT", 5_000, 7_100)
    call = USDM.refetch(gap)
    assert (call.path, call.weight) == ("/fapi/v1/aggTrades", 20)
    assert call.params == {"symbol": "BTCUSDT", "fromId": 5_000, "limit": 1000}
    pages = 0
    while call is not None:
        body = agg_trades(int(call.params["fromId"]), int(call.params["limit"]))
        url = f"{call.path}?symbol=BTCUSDT&fromId={call.params['fromId']}&limit=1000"
        events = USDM.parse_rest(url, body, 1)
        assert all(isinstance(e, Trade) for e in events)
        pages += 1
        call = USDM.next_refetch(gap, events)
    assert pages == 3  # 5000-5999, 6000-6999, 7000-7999 covers 7100
    # An empty page ends it too (the venue has nothing more).
    assert USDM.next_refetch(gap, []) is None
    assert SPOT.refetch(TradeGap(BINANCE_SPOT, "BTCUSDT", 1, 2)).weight == 4


def test_coinbase_refetch_asks_for_the_gap_and_a_margin_at_most_1000() -> None:
    small = CB.refetch(TradeGap(COINBASE, "BTC-USD", 10, 19))
    assert small.path == "/api/v3/brokerage/market/products/BTC-USD/ticker"
    assert small.params == {"limit": 110}
    assert CB.refetch(TradeGap(COINBASE, "BTC-USD", 1, 5_000)).params == {"limit": 1000}
    assert CB.next_refetch(TradeGap(COINBASE, "BTC-USD", 1, 5), []) is None


def test_usdm_polls_open_interest_and_the_long_short_ratio_only() -> None:
    polls = USDM.polls("BTCUSDT")
    assert [(p.call.path, p.pace) for p in polls] == [
        ("/fapi/v1/openInterest", Pace.OPEN_INTEREST),
        ("/futures/data/globalLongShortAccountRatio", Pace.RATIOS),
    ]
    assert SPOT.polls("BTCUSDT") == [] and CB.polls("BTC-USD") == []


def test_history_series_and_their_queries() -> None:
    start, end = 1_700_000_000_000 - 1_700_000_000_000 % DAY_MS, 0
    end = start + DAY_MS
    perp, funding, oi = USDM.history("BTCUSDT")
    assert (perp.kind, perp.path, perp.page_rows, perp.weight) == (
        "perp",
        "/fapi/v1/klines",
        1000,
        5,
    )
    assert perp.call(start, end).params == {
        "symbol": "BTCUSDT",
        "startTime": start,
        "endTime": end - 1,  # Binance's endTime is inclusive
        "limit": 1000,
        "interval": "1m",
    }
    assert funding.whole and funding.points and funding.path == "/fapi/v1/fundingRate"
    assert (
        oi.call(start, end).params["period"] == "5m" and oi.kept_ms == 30 * DAY_MS - 5 * MINUTE_MS
    )
    (spot,) = SPOT.history("BTCUSDT")
    assert (spot.kind, spot.path, spot.weight) == ("spot", "/api/v3/klines", 2)
    (candles,) = CB.history("BTC-USD")
    assert candles.path == "/api/v3/brokerage/market/products/BTC-USD/candles"
    assert candles.call(start, end).params == {
        "start": str(start // 1000),
        "end": str((end - 1) // 1000),
        "granularity": "ONE_MINUTE",
        "limit": 350,
    }


def test_the_config_builds_every_adapter_on_its_urls() -> None:
    config = config_from_dict(default_config_data(), env={})
    venues = config.adapters()
    assert set(venues) == {BINANCE_SPOT, BINANCE_USDM, COINBASE}
    assert venues[BINANCE_USDM].rest_url == config.venues.binance_usdm.rest
    market, _public = venues[BINANCE_USDM].sockets(["BTCUSDT"])
    assert market.url.startswith(config.venues.binance_usdm.market_ws + "/stream?")
    assert "streams=btcusdt@aggTrade" in market.url
    assert query(market.url)["streams"] == [
        "btcusdt@aggTrade/btcusdt@markPrice@1s/btcusdt@forceOrder"
    ]


def test_frames_of_streams_no_signal_reads_are_skipped_unparsed() -> None:
    decoder = USDM.decoder()
    # The prefix decides: the rest of a bookTicker frame is never parsed (here it is not JSON);
    # it gives no event and is counted.
    for raw in ('{"stream":"btcusdt@bookTicker","data":{not json', b'{"stream":"x@ticker",'):
        assert decoder.decode(raw, 1) == []
    assert decoder.not_read == 2
    # Every variant of a stream that is read is parsed: @trade as well as @aggTrade, @depth@0ms
    # (as the 2024 tapes recorded it) as well as @depth@100ms.
    trade = '{"e":"trade","E":2,"T":1,"s":"BTCUSDT","t":7,"p":"100","q":"1","m":true}'
    depth = '{"e":"depthUpdate","E":1,"T":1,"s":"BTCUSDT","U":1,"u":2,"pu":0,"b":[],"a":[]}'
    for stream, data in (("trade", trade), ("depth@0ms", depth), ("depth@100ms", depth)):
        (event,) = decoder.decode(f'{{"stream":"btcusdt@{stream}","data":{data}}}', 1)
        assert event.symbol == "BTCUSDT"
    # A frame without the combined-stream prefix is parsed as before.
    (event,) = decoder.decode(trade, 1)
    assert isinstance(event, Trade)


def test_a_stream_nobody_knows_is_parsed_and_found_malformed_not_skipped() -> None:
    frame = '{"stream":"btcusdt@mysteryStream","data":{"e":"mysteryUpdate","E":1,"s":"BTCUSDT"}}'
    with pytest.raises(MalformedFrame, match="unknown_event"):
        SPOT.decoder().decode(frame, 1)


def test_a_frames_parser_depends_on_its_stream_name_alone_whatever_its_head() -> None:
    """The decoder remembers a stream's parser by the frame's first characters (its head): only
    a head holding the whole stream name is remembered, and never more than a bound of them."""
    from streams.venues._binance import FRAME_HEAD, MAX_CACHED_STREAMS

    decoder = SPOT.decoder()
    trade = '{"e":"trade","E":2,"T":1,"s":"BTCUSDT","t":7,"p":"100","q":"1","m":true}'
    (event,) = decoder.decode(f'{{"stream":"btcusdt@trade","data":{trade}}}', 1)
    assert isinstance(event, Trade)
    # Same head, broken body: the strict parser still says what is wrong.
    with pytest.raises(MalformedFrame, match="not_json"):
        decoder.decode('{"stream":"btcusdt@trade","data":{"e":"trade",', 1)
    # A name too long for the head: routed by the name every time, never remembered.
    long_name = "x" * FRAME_HEAD + "usdt"
    for _ in range(2):
        assert decoder.decode(f'{{"stream":"{long_name}@bookTicker","data":{{}}}}', 1) == []
        (event,) = decoder.decode(f'{{"stream":"{long_name}@trade","data":{trade}}}', 1)
        assert isinstance(event, Trade)
    assert decoder.not_read == 2
    assert not any(long_name[:8] in str(head) for head in decoder._parsers)
    # Bytes frames are read alike.
    (event,) = decoder.decode(f'{{"stream":"btcusdt@trade","data":{trade}}}'.encode(), 1)
    assert isinstance(event, Trade)
    # Heads of made-up streams (or of one stream whose payloads start differently) are bounded.
    for i in range(MAX_CACHED_STREAMS + 100):
        decoder.decode(f'{{"stream":"s{i}@bookTicker","data":{{}}}}', 1)
    assert len(decoder._parsers) == MAX_CACHED_STREAMS
