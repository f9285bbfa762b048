"""Replay tapes through the live pipeline at full speed, on the event-time clock.

Output is what the daemon would have published: the status birth, then every signals, regime
and events message, in order. ``ts_pub`` is event time and the session id is fixed, so replaying
the same tapes twice gives byte-identical output.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from monitor import __version__
from monitor.config import Config
from monitor.guards import UNKNOWN_SYMBOL
from monitor.health import Health
from monitor.history_tape import RESTORE
from monitor.messages import OutMessage
from monitor.pipeline import Pipeline, asset_symbols
from monitor.restart import hold_ms, restore_regimes
from monitor.signal_store import SignalStore, store_chart
from monitor.state import StateError, load_checkpoint
from streams.tape import TapeRecord, merge

REPLAY_SESSION = "replay"


class ReplayError(Exception):
    """A tape that cannot be replayed as recorded (its restored state is missing or altered)."""


class Replay:
    """One replay: the pipeline it runs and what the command reports afterwards.

    ``base``: the directory of the tapes, where a stateful session's restored state lies."""

    def __init__(
        self,
        config: Config,
        health: Health | None = None,
        base: Path | None = None,
        store: SignalStore | None = None,
    ) -> None:
        """``store``: where the replay's one-minute samples and regime changes go, as a
        daemon's signal history (for ``tapewatch report`` and ``replay --signal-history``)."""
        self.config = config
        self.health = health or Health()
        self.base = base or Path()
        self.store = store
        self.pipeline: Pipeline | None = None  # made at the first record (its time starts it)

    def messages(self, records: Iterable[TapeRecord]) -> Iterator[OutMessage]:
        store = self.store
        for rec in records:
            ts_ms = round(rec.ts * 1000)
            pipeline = self.pipeline
            if pipeline is None:
                pipeline = self.pipeline = Pipeline.for_session(
                    self.config,
                    REPLAY_SESSION,
                    __version__,
                    ts_ms,
                    self.health,
                    chart=store is not None,
                )
                yield pipeline.builder.status("online")
            if store is not None and pipeline.chart_pending:
                store_chart(store, pipeline.take_chart())
            if rec.ctl is not None and rec.ctl.get("kind") == RESTORE:
                self._restore(pipeline, rec.ctl)
            elif rec.ctl is not None:
                yield from pipeline.control(rec.src, rec.ctl)
            elif rec.url is not None:
                yield from pipeline.feed_rest(rec.src, rec.url, rec.msg, ts_ms)
            else:
                yield from pipeline.feed_frame(rec.src, rec.msg, ts_ms)
            pipeline.requests.clear()  # the tape already holds whatever the live session fetched
        if store is not None and self.pipeline is not None:
            store_chart(store, self.pipeline.take_chart(final=True))

    def _restore(self, pipeline: Pipeline, ctl: dict[str, Any]) -> None:
        """The state the recorded session started from, loaded as the daemon loaded it."""
        path = self.base / str(ctl.get("file"))
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            arrays, _ = load_checkpoint(path)
        except (OSError, StateError) as exc:
            raise ReplayError(f"the tape starts from the state in {path}: {exc}") from None
        if digest != ctl.get("sha256"):
            raise ReplayError(f"{path} is not the state the tape was recorded from (sha256)")
        pipeline.engine.restore(arrays)
        regimes = ctl.get("regimes")
        if isinstance(regimes, dict):
            restore_regimes(pipeline, regimes, hold_ms(self.config))

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
    records: Iterable[TapeRecord],
    config: Config,
    health: Health | None = None,
    base: Path | None = None,
) -> Iterator[OutMessage]:
    return Replay(config, health, base).messages(records)


def replay_to_jsonl(paths: Iterable[str | Path], config: Config, out: IO[bytes]) -> Health:
    paths = [Path(p) for p in paths]
    replay = Replay(config, base=paths[0].parent if paths else None)
    replay.to_jsonl(merge(paths), out)
    return replay.health
