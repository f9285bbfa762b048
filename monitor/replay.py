"""Replay tapes through the live pipeline at full speed, on the event-time clock.

Output is what the daemon would have published: the status birth, then every signals, regime
and events message, in order. ``ts_pub`` is event time and the session id is fixed, so replaying
the same tapes twice gives byte-identical output.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import orjson

from monitor import __version__
from monitor.config import Config
from monitor.guards import UNKNOWN_SYMBOL
from monitor.health import Health
from monitor.messages import OutMessage
from monitor.pipeline import Pipeline, asset_symbols
from streams.tape import TapeRecord, merge

REPLAY_SESSION = "replay"


class Replay:
    """One replay: the pipeline it runs and what the command reports afterwards."""

    def __init__(self, config: Config, health: Health | None = None) -> None:
        self.config = config
        self.health = health or Health()
        self.pipeline: Pipeline | None = None  # made at the first record (its time starts it)

    def messages(self, records: Iterable[TapeRecord]) -> Iterator[OutMessage]:
        for rec in records:
            ts_ms = round(rec.ts * 1000)
            pipeline = self.pipeline
            if pipeline is None:
                pipeline = self.pipeline = Pipeline.for_session(
                    self.config, REPLAY_SESSION, __version__, ts_ms, self.health
                )
                yield pipeline.builder.status("online")
            if rec.ctl is not None:
                yield from pipeline.control(rec.src, rec.ctl)
            elif rec.url is not None:
                yield from pipeline.feed_rest(rec.src, rec.url, rec.msg, ts_ms)
            else:
                yield from pipeline.feed_frame(rec.src, rec.msg, ts_ms)
            pipeline.requests.clear()  # the tape already holds whatever the live session fetched

    def to_jsonl(self, records: Iterable[TapeRecord], out: IO[bytes]) -> int:
        """Write each message as a JSON line; returns how many."""
        n = 0
        for msg in self.messages(records):
            out.write(orjson.dumps(msg.as_record()) + b"\n")
            n += 1
        return n

    def heard_configured(self) -> bool:
        """Whether any event of a configured symbol passed the guards: a trade, a mark price,
        open interest or a book that synced, the stuff every signal is made of. False after a
        tape of other symbols, whose events the guards all rejected as ``unknown_symbol``."""
        pipeline = self.pipeline
        if pipeline is None:
            return False
        return any(
            state.last_trade or state.mark is not None or state.open_interest is not None
            for state in pipeline.engine.assets.values()
        ) or any(sync.synced for sync in pipeline.books.values())

    def unknown_symbol_events(self) -> int:
        return sum(n for (_, kind), n in self.health.rejected.items() if kind == UNKNOWN_SYMBOL)

    def configured_symbols(self) -> list[str]:
        """Each configured venue symbol once, in config order (BTCUSDT, BTC-USD, ...)."""
        symbols = (s for venues in asset_symbols(self.config).values() for s in venues.values())
        return list(dict.fromkeys(symbols))


def replay_messages(
    records: Iterable[TapeRecord], config: Config, health: Health | None = None
) -> Iterator[OutMessage]:
    return Replay(config, health).messages(records)


def replay_to_jsonl(paths: Iterable[str | Path], config: Config, out: IO[bytes]) -> Health:
    replay = Replay(config)
    replay.to_jsonl(merge(paths), out)
    return replay.health
