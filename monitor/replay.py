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
from monitor.health import Health
from monitor.messages import OutMessage
from monitor.pipeline import Pipeline
from streams.tape import TapeRecord, merge

REPLAY_SESSION = "replay"


def replay_messages(
    records: Iterable[TapeRecord], config: Config, health: Health | None = None
) -> Iterator[OutMessage]:
    pipeline: Pipeline | None = None
    health = health or Health()
    for rec in records:
        ts_ms = round(rec.ts * 1000)
        if pipeline is None:
            pipeline = Pipeline.for_session(config, REPLAY_SESSION, __version__, ts_ms, health)
            yield pipeline.builder.status("online")
        if rec.ctl is not None:
            yield from pipeline.control(rec.src, rec.ctl)
        elif rec.url is not None:
            yield from pipeline.feed_rest(rec.src, rec.url, rec.msg, ts_ms)
        else:
            yield from pipeline.feed_frame(rec.src, rec.msg, ts_ms)
        pipeline.requests.clear()  # the tape already holds whatever the live session fetched


def replay_to_jsonl(paths: Iterable[str | Path], config: Config, out: IO[bytes]) -> Health:
    health = Health()
    for msg in replay_messages(merge(paths), config, health):
        out.write(orjson.dumps(msg.as_record()) + b"\n")
    return health
