"""What a venue adapter is: the shapes every venue describes itself with.

An adapter holds everything tapewatch knows about one venue's interface (its sockets and stream
names, its REST endpoints with their weights and pagers, the polls, the start-up history series,
its book-sync rule) and nothing about what the data means. The daemon, the pipeline and the
history fetch ask the adapter; none of them names an endpoint or branches on a venue.

Everything here is data and pure functions: an adapter builds requests and reads answers, the
daemon sends them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from streams.book import BookRule
from streams.continuity import TradeGap
from streams.events import Bars, Event, Points

History = Bars | Points


@dataclass(frozen=True, slots=True)
class RestCall:
    """One REST request: a path on the venue's REST base, its query, and its cost in the
    venue's request weight (Binance) or requests (Coinbase: always 1)."""

    path: str
    params: Mapping[str, Any] = field(default_factory=dict)
    weight: int = 1


@dataclass(frozen=True, slots=True)
class RestLimits:
    """How fast a venue's REST API may be asked: a per-minute weight budget (Binance reports
    the weight used in a header) or a plain request rate (Coinbase)."""

    weight_limit: int | None = None
    requests_per_second: float | None = None


@dataclass(frozen=True, slots=True)
class Socket:
    """One websocket the venue is read through."""

    name: str  # label in logs and health, e.g. "binance-usdm/market"
    url: str
    subscribe: tuple[str, ...] = ()  # text messages sent, in order, once it is open
    # Streams that tick on a fixed cadence whatever the market does: silence on one of them
    # means the stream stopped, not the market.
    watched: tuple[str, ...] = ()
    stream_of: Callable[[str | bytes], str | None] | None = None  # a frame's stream, cheaply
    carries_trades: bool = True  # its loss can lose trades (the reconnect is then audited)


class Pace(Enum):
    """Which collector setting paces a poll."""

    OPEN_INTEREST = "open_interest_poll"
    RATIOS = "ratios_poll"


@dataclass(frozen=True, slots=True)
class Poll:
    """A REST request repeated for the life of the daemon."""

    call: RestCall
    pace: Pace


class Resync(Enum):
    """How a book that lost sync is seeded again."""

    SNAPSHOT = "snapshot"  # fetch a REST depth snapshot (``Venue.snapshot``)
    RESUBSCRIBE = "resubscribe"  # reconnect: the subscription starts with a snapshot


@dataclass(frozen=True, slots=True)
class HistorySeries:
    """One start-up history to fetch: where, how it pages, how to read it."""

    kind: str  # the role it fills (``signals.backfill.AssetHistory`` field)
    venue: str
    symbol: str
    path: str
    step_ms: int  # spacing of rows
    page_rows: int  # rows per request
    weight: int
    parse: Callable[[str | bytes], History]
    query: Callable[[int, int, int], dict[str, Any]]  # (start_ms, end_ms, rows) -> params
    points: bool = False  # rows are ``Points`` (one value each), else one-minute ``Bars``
    kept_ms: int | None = None  # the venue serves only this much history
    whole: bool = False  # small enough to fetch in one go in the first round
    # Rows before the baseline window are needed too: the first samples' rolling windows (flow,
    # volume, the 24 h open-interest change) reach back that far.
    lead: bool = False

    @property
    def page_ms(self) -> int:
        return self.step_ms * self.page_rows

    def call(self, start_ms: int, end_ms: int) -> RestCall:
        """The request for rows in [start_ms, end_ms)."""
        return RestCall(self.path, self.query(start_ms, end_ms, self.page_rows), self.weight)

    def empty(self) -> History:
        return Points.empty() if self.points else Bars.empty()


class FrameDecoder:
    """Turns one connection's frames into events; may keep per-connection state (Coinbase
    numbers every frame of a connection). Subclasses implement ``decode``."""

    # Frames of streams that are valid and read by no signal, skipped unparsed (health
    # ``ignored``: ``not_read``). Counted here, not raised: they can be most of a tape.
    not_read: int = 0
    # Frames went missing on the connection (the venue's books cannot be trusted): set by the
    # decoder, cleared by the reader once it has acted. An attribute, not a call: it is read
    # after every frame.
    frames_lost: bool = False

    def decode(self, raw: str | bytes, ts_recv: int) -> list[Event]:
        """Events of one frame; raises ``IgnoredFrame``/``MalformedFrame``, nothing else."""
        raise NotImplementedError

    def connection_lost(self) -> None:
        """The socket dropped: the next frame starts a new connection."""

    def health(self) -> dict[str, int]:
        """Counters for the health topic."""
        return {}


class Venue(ABC):
    """One venue's interface. Subclasses set the class attributes and the methods."""

    name: str  # the ``venue`` of its events, e.g. "binance-usdm"
    config_key: str  # its key under ``venues:`` and in each asset, e.g. "binance_usdm"
    limits: RestLimits
    book_rule: BookRule
    resync: Resync
    history_group: str  # venues sharing a group fetch history at one pace (one budget)

    def __init__(self, rest: str, **sockets: str) -> None:
        self.rest_url = rest
        self.socket_urls = sockets

    @abstractmethod
    def sockets(self, symbols: Sequence[str], trades_only: Sequence[str] = ()) -> list[Socket]:
        """The websockets for ``symbols``; ``trades_only`` symbols need trades and no book."""

    @abstractmethod
    def decoder(self) -> FrameDecoder:
        """A decoder for one stream of this venue's frames."""

    @abstractmethod
    def parse_rest(self, url: str, body: str | bytes, ts_recv: int) -> list[Event]:
        """Events of a REST answer (``url`` = path?query as recorded); raises like a decoder."""

    def snapshot(self, symbol: str, limit: int) -> RestCall | None:
        """The depth snapshot request (``Resync.SNAPSHOT`` venues)."""
        return None

    @abstractmethod
    def refetch(self, gap: TradeGap) -> RestCall:
        """The first request for the trades of an id gap."""

    def next_refetch(self, gap: TradeGap, events: list[Event]) -> RestCall | None:
        """The next page of a gap's trades after a page that gave ``events`` (None: done)."""
        return None

    def polls(self, symbol: str) -> list[Poll]:
        return []

    def history(self, symbol: str) -> list[HistorySeries]:
        """The start-up history series of one symbol."""
        return []
