"""What Binance spot and USDⓈ-M share: combined streams, stateless frames, depth snapshots, and
aggregate-trade refetch paged by id. The venue modules add their hosts, paths and weights."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from streams import binance
from streams.continuity import TradeGap
from streams.events import Event, Trade
from streams.units import MINUTE_MS
from streams.venues.base import FrameDecoder, HistorySeries, RestCall, Socket, Venue

# The book limits a snapshot may ask for: the only ones USDⓈ-M accepts (spot takes 1 to 5000).
DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)
AGG_TRADES_PAGE = 1000  # rows per aggTrades request (the most Binance serves)
KLINES_PAGE = 1000  # a page of 1000 klines weighs less than one of 1500 on both venues
# Frame heads whose parser a decoder remembers: a few per subscribed symbol.
MAX_CACHED_STREAMS = 4096
# A frame's first characters, the key its parser is remembered by: the envelope's opening and
# the stream name (whole if at most FRAME_HEAD - 12 characters long, as any real one is). Every
# frame of a stream starts the same way, so a stream has one head (two or three at most, if its
# payload's first field varies); slicing a fixed head costs a third of finding the name's end.
FRAME_HEAD = 40

Parser = Callable[[str, str | bytes, int], list[Event]]  # (venue, raw frame, ts_recv)


class BinanceDecoder(FrameDecoder):
    """Combined-stream frames, each sent to its stream kind's parser: depth and trades to the
    fast decoders, kinds no signal reads (``bookTicker`` on a tape recorded when it was
    subscribed: ``binance.UNREAD_STREAM_KINDS``) counted and skipped unparsed, anything else to
    the strict parser. The parser is looked up by the stream name in the frame's first bytes,
    remembered by the frame's head (``FRAME_HEAD``) for the names of known kinds, up to
    ``MAX_CACHED_STREAMS`` heads (so a hostile stream of made-up names cannot grow the cache)."""

    def __init__(self, venue: str) -> None:
        self.venue = venue
        # The class's defaults as instance attributes: read for every frame, and an instance's
        # own attribute is the cheaper read.
        self.frames_lost = False
        self.not_read = 0
        # The parsers are called with the venue, not bound to it by a ``partial``: that extra
        # call was ~5 % of a trade frame's decoding.
        self._strict: Parser = binance.parse_frame
        self._by_kind: dict[str, Parser] = {
            "depth": binance.parse_depth_frame,
            "trade": binance.read_trade_frame,
            "aggTrade": binance.read_trade_frame,
        }
        self._parsers: dict[str | bytes, Parser] = {}  # frame head -> its stream's parser
        self._cached = self._parsers.get

    def decode(self, raw: str | bytes, ts_recv: int) -> list[Event]:
        parse = self._cached(raw[:FRAME_HEAD])
        if parse is None:
            parse = self._parser(raw)
        return parse(self.venue, raw, ts_recv)

    def _parser(self, raw: str | bytes) -> Parser:
        """The parser of a frame's stream, remembered by the frame's head if the head holds the
        whole stream name (the parser depends on the name alone)."""
        name = binance.stream_name(raw)
        if name is None:
            return self._strict
        kind = binance.stream_kind(name)
        parse = self._by_kind.get(kind)
        if parse is None:
            if kind not in binance.UNREAD_STREAM_KINDS:
                return self._strict  # a kind nobody knows: parsed, and found malformed
            parse = self._skip
        # The name's closing quote (at 11 + its length) within the head: every frame with
        # this head names this stream.
        if 11 + len(name) < FRAME_HEAD and len(self._parsers) < MAX_CACHED_STREAMS:
            self._parsers[raw[:FRAME_HEAD]] = parse
        return parse

    def _skip(self, venue: str, raw: str | bytes, ts_recv: int) -> list[Event]:
        self.not_read += 1
        return []


class BinanceVenue(Venue):
    depth_path: str
    depth_limits: tuple[int, ...]  # the book limits the snapshot may ask for
    depth_weight: Callable[[int], int]  # the snapshot's weight, by limit
    agg_trades_path: str
    agg_trades_weight: int
    klines_path: str
    klines_weight: int  # of a page of KLINES_PAGE

    def combined(
        self, name: str, url: str, symbols: Sequence[str], streams: tuple[str, ...]
    ) -> list[Socket]:
        """Sockets for ``streams`` of each symbol, as many as the per-connection cap needs."""
        per_socket = max(1, binance.MAX_STREAMS_PER_CONNECTION // len(streams))
        out = []
        for i in range(0, len(symbols), per_socket):
            chunk = symbols[i : i + per_socket]
            watched = tuple(
                f"{sym.lower()}@{stream}"
                for sym in chunk
                for stream in streams
                if any(f"@{stream}".endswith(c) for c in binance.CADENCED_SUFFIXES)
            )
            out.append(
                Socket(
                    name if i == 0 else f"{name}#{i // per_socket + 1}",
                    binance.combined_stream_url(url, chunk, streams),
                    watched=watched,
                    stream_of=binance.stream_name,
                    carries_trades="aggTrade" in streams,
                )
            )
        return out

    def decoder(self) -> FrameDecoder:
        return BinanceDecoder(self.name)

    def parse_rest(self, url: str, body: str | bytes, ts_recv: int) -> list[Event]:
        return binance.parse_rest(self.name, url, body, ts_recv)

    def snapshot(self, symbol: str, limit: int) -> RestCall:
        return RestCall(
            self.depth_path, {"symbol": symbol, "limit": limit}, self.depth_weight(limit)
        )

    def refetch(self, gap: TradeGap) -> RestCall:
        return self._agg_trades(gap.symbol, gap.first_id)

    def next_refetch(self, gap: TradeGap, events: list[Event]) -> RestCall | None:
        ids = [e.trade_id for e in events if isinstance(e, Trade) and e.trade_id is not None]
        if not ids or max(ids) >= gap.last_id:
            return None
        return self._agg_trades(gap.symbol, max(ids) + 1)

    def _agg_trades(self, symbol: str, from_id: int) -> RestCall:
        params = {"symbol": symbol, "fromId": from_id, "limit": AGG_TRADES_PAGE}
        return RestCall(self.agg_trades_path, params, self.agg_trades_weight)

    def klines(self, kind: str, symbol: str) -> HistorySeries:
        """One-minute klines (spot and USDⓈ-M share the shape)."""
        return HistorySeries(
            kind,
            self.name,
            symbol,
            self.klines_path,
            step_ms=MINUTE_MS,
            page_rows=KLINES_PAGE,
            weight=self.klines_weight,
            parse=binance.parse_klines,
            query=lambda start, end, rows: {**window(symbol, start, end, rows), "interval": "1m"},
            lead=True,
        )


def window(symbol: str, start_ms: int, end_ms: int, rows: int) -> dict[str, Any]:
    """Binance's query for rows in [start_ms, end_ms) (its endTime is inclusive)."""
    return {"symbol": symbol, "startTime": start_ms, "endTime": end_ms - 1, "limit": rows}
