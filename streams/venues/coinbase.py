"""Coinbase Advanced Trade: one socket with one subscribe message per channel; books are seeded
by the ``level2`` subscription itself (a lost book means a fresh subscription); REST (public
market endpoints, no key) for the trades of a gap and one-minute candles."""

from __future__ import annotations

from collections.abc import Sequence

from streams import coinbase
from streams.book import BookRule
from streams.continuity import TradeGap
from streams.events import COINBASE, Event
from streams.units import MINUTE_MS
from streams.venues.base import (
    FrameDecoder,
    HistorySeries,
    RestCall,
    RestLimits,
    Resync,
    Socket,
    Venue,
)

TRADES_MAX = 1000  # most trades one ticker request returns
TRADES_SLACK = 100  # extra rows asked for: trades that arrived while the request was made
CANDLES_PAGE = 350  # most candles one request returns


class CoinbaseDecoder(FrameDecoder):
    """Frames of one connection: ``sequence_num`` counts every frame (heartbeats too)."""

    def __init__(self, venue: str) -> None:
        self.venue = venue
        self.sequence = coinbase.SequenceTracker()

    def decode(self, raw: str | bytes, ts_recv: int) -> list[Event]:
        # l2_data and market_trades, nearly all the work, are decoded in C; the fast path
        # hands back the frame's sequence_num so the tracker still sees every frame once.
        fast = coinbase.decode_fast(self.venue, raw, ts_recv)
        if fast is not None:
            seq, events = fast
            if self.sequence.observe_number(seq):
                self.frames_lost = True
            return events
        # Everything else (heartbeats, tickers, acks) and anything odd: the strict path, which
        # names the fault. The tracker sees the number before the body is judged.
        msg = coinbase.parse_envelope(raw)
        if self.sequence.observe(msg):
            self.frames_lost = True
        return coinbase.events_from(self.venue, msg, ts_recv)

    def connection_lost(self) -> None:
        self.sequence.reset()  # a new connection numbers from its own baseline

    def health(self) -> dict[str, int]:
        return {"coinbase_sequence_gaps": self.sequence.gaps}


class Coinbase(Venue):
    name = COINBASE
    config_key = "coinbase"
    limits = RestLimits(requests_per_second=10)
    book_rule = BookRule.IN_STREAM
    resync = Resync.RESUBSCRIBE
    history_group = "coinbase"

    def __init__(self, ws: str, rest: str) -> None:
        super().__init__(rest, ws=ws)

    def sockets(self, symbols: Sequence[str], trades_only: Sequence[str] = ()) -> list[Socket]:
        if not symbols:
            return []
        messages = coinbase.subscribe_messages(symbols, trades_only=trades_only)
        return [
            Socket(
                self.name,
                self.socket_urls["ws"],
                # One channel per message, all within Coinbase's 5 s; 3 messages stay under
                # its 8 messages/s limit.
                subscribe=tuple(messages),
                watched=("heartbeats",),
                stream_of=coinbase.channel_name,
            )
        ]

    def decoder(self) -> FrameDecoder:
        return CoinbaseDecoder(self.name)

    def parse_rest(self, url: str, body: str | bytes, ts_recv: int) -> list[Event]:
        return coinbase.parse_rest(self.name, url, body, ts_recv)

    def refetch(self, gap: TradeGap) -> RestCall:
        # One request: the newest trades, as many as the gap and a margin (Coinbase has no
        # query by trade id).
        limit = min(TRADES_MAX, gap.size + TRADES_SLACK)
        return RestCall(coinbase.TRADES_PATH.format(product=gap.symbol), {"limit": limit})

    def history(self, symbol: str) -> list[HistorySeries]:
        return [
            HistorySeries(
                "coinbase", self.name, symbol, coinbase.CANDLES_PATH.format(product=symbol),
                step_ms=MINUTE_MS, page_rows=CANDLES_PAGE, weight=1,
                parse=coinbase.parse_candles,
                query=lambda start, end, rows: {
                    "start": str(start // 1000),
                    "end": str((end - 1) // 1000),
                    "granularity": "ONE_MINUTE",
                    "limit": rows,
                },
            )
        ]  # fmt: skip
