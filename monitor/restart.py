"""What a restarted daemon takes over from the process before it: the regime in force per asset,
and an account of the outbox.

Regimes. The checkpoint keeps each asset's regime state (``RegimeEngine.state`` plus the id of
the event that entered it). A checkpoint is written periodically, so a process killed after a
regime change leaves a checkpoint older than that change. The change is in the outbox, though
(``Outbox.latest``: pending or the last one delivered per topic), appended before it was
published; an outbox event newer than the checkpoint (a higher id than the checkpoint's outbox
marks) therefore wins over the checkpoint's state. So a change needs no checkpoint of its own:
one would copy every 90-day baseline on the event loop (25-60 ms) right when the change is being
published. What the outbox cannot give back is the cooldown of a regime that ended before the
asset's latest change since the checkpoint (two or more changes of one asset within a checkpoint
interval): that cooldown starts afresh. The restored regime is republished retained,
unchanged, and is not entered again; the first complete snapshot decides whether it still holds
(see ``signals.regimes``).

Outbox. The checkpoint keeps the outbox's marks (last id, pending ids, highest acknowledged id);
at the next start, events that left the outbox without being delivered are an ERROR in the log,
and their number goes to the health topic (``outbox_lost``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monitor.config import Config
from monitor.outbox import Outbox, OutboxMarks, lost_since
from monitor.pipeline import Pipeline
from signals.regimes import NEUTRAL, RegimeChange

log = logging.getLogger("tapewatch.daemon")

# A restored regime waits for its signals at most the flow windows' warm-up plus this much event
# time: the first REST answers (open interest, ratios) and book snapshots after a start.
HOLD_SLACK_S = 60.0


def hold_ms(config: Config) -> int:
    """How long (event ms) a restored regime may wait for signals the restart left missing."""
    sig = config.signals
    return round((sig.flow_window * sig.flow_min_coverage + HOLD_SLACK_S) * 1000)


def regime_states(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    """Per asset, its regime state for the checkpoint, with the id of the event that entered
    it (None for a session's first regime, which no event announced)."""
    out: dict[str, dict[str, Any]] = {}
    for asset, engine in pipeline.regimes.items():
        state = engine.state()
        if state is not None:
            out[asset] = {**state, "event_id": pipeline.builder.last_event_id.get(asset)}
    return out


def outbox_marks(outbox: Outbox | None) -> OutboxMarks | None:
    """The outbox's marks for the checkpoint; None without a usable outbox."""
    if outbox is None:
        return None
    try:
        return outbox.marks()
    except sqlite3.Error as exc:  # closed at shutdown, or the disk failed: no marks this time
        log.warning("outbox: could not read its marks for the checkpoint: %s", exc)
        return None


def audit_outbox(outbox: Outbox | None, saved: object, checkpoint: Path) -> int:
    """Compare the outbox with the marks the checkpoint saved; log an ERROR naming how many
    events may be lost, and return that number (0: nothing missing, or nothing to compare)."""
    now = outbox_marks(outbox)
    if now is None or saved is None:
        return 0
    try:
        marks = OutboxMarks.from_data(saved) if isinstance(saved, Mapping) else None
    except ValueError:
        marks = None
    if marks is None:
        log.warning("%s: unreadable outbox marks; the outbox is not checked", checkpoint)
        return 0
    loss = lost_since(marks, now)
    if loss is None:
        return 0
    assert outbox is not None
    log.error(
        "outbox %s: %d regime event(s) may be lost: %s since the checkpoint %s, which saw %d "
        "undelivered%s",
        outbox.path,
        loss.count,
        loss.why,
        checkpoint,
        len(marks.pending),
        f"; the unreadable file was moved to {outbox.moved_aside}" if outbox.moved_aside else "",
    )
    return loss.count


def regimes_to_take_over(
    pipeline: Pipeline, saved: Mapping[str, Any] | None, outbox: Outbox | None
) -> dict[str, Any]:
    """asset -> the regime state to continue (see the module docstring). ``saved``: the
    checkpoint's metadata if one was trusted, ``{}`` if there was no checkpoint at all, None if
    one existed but was not used (then the outbox cannot be placed against it either, and
    regimes start afresh)."""
    if saved is None:
        return {}
    regimes = saved.get("regimes")
    states = dict(regimes) if isinstance(regimes, Mapping) else {}
    for asset, (event_id, payload) in _journal(pipeline, saved, outbox).items():
        states[asset] = _state_from_event(payload, states.get(asset))
        log.info("%s: the outbox has regime event %s, newer than the checkpoint", asset, event_id)
    return states


def restore_regimes(pipeline: Pipeline, states: Mapping[str, Any], hold: int) -> list[RegimeChange]:
    """Put each asset's state into its regime engine; returns the regimes now in force."""
    restored = []
    for asset, state in states.items():
        change = _restore(pipeline, asset, state, hold)
        if change is not None:
            restored.append(change)
    return restored


def _journal(
    pipeline: Pipeline, saved: Mapping[str, Any], outbox: Outbox | None
) -> dict[str, tuple[int, dict[str, Any]]]:
    """asset -> (outbox id, payload) of its newest event, for events the checkpoint missed."""
    if outbox is None:
        return {}
    after = _outbox_position(saved, outbox)
    if after is None:
        return {}
    topics = {pipeline.builder.topics.events(asset): asset for asset in pipeline.regimes}
    try:
        latest = outbox.latest(topics)
    except sqlite3.Error as exc:
        log.warning("outbox: could not read its latest events: %s", exc)
        return {}
    return {topics[t]: (i, p) for t, (i, p) in latest.items() if i > after}


def _outbox_position(saved: Mapping[str, Any], outbox: Outbox) -> int | None:
    """The last outbox id the checkpoint had seen (0: no checkpoint); None when the outbox
    cannot be placed against it (no marks beside saved regimes, or a different file)."""
    if not saved:
        return 0
    try:
        marks = OutboxMarks.from_data(saved["outbox"])
        now = outbox.marks()
    except (KeyError, TypeError, ValueError, sqlite3.Error):
        return None if saved.get("regimes") else 0
    return marks.last_id if now.last_id >= marks.last_id else None


def _state_from_event(payload: Mapping[str, Any], saved: object) -> dict[str, Any]:
    """A regime state from an events payload: the regime it entered, and the cooldown of the
    one it ended on top of the checkpoint's cooldowns."""
    cooldowns = saved.get("ended_at") if isinstance(saved, Mapping) else None
    ended = dict(cooldowns) if isinstance(cooldowns, Mapping) else {}
    previous = payload.get("previous")
    if isinstance(previous, str) and previous != NEUTRAL:
        ended[previous] = payload.get("since")  # checked, with the rest, by ``restore``
    return {
        "regime": payload.get("regime"),
        "previous": previous,
        "since": payload.get("since"),
        "reasons": payload.get("reasons"),
        "description": payload.get("description"),
        "ended_at": ended,
        "event_id": payload.get("id"),
    }


def _restore(pipeline: Pipeline, asset: str, state: Any, hold: int) -> RegimeChange | None:
    engine = pipeline.regimes.get(asset)
    if engine is None or not isinstance(state, Mapping):
        return None  # an asset no longer configured
    try:
        engine.restore(state, hold)
    except ValueError as exc:
        log.warning("%s; its regime starts afresh", exc)
        return None
    event_id = state.get("event_id")
    if event_id:
        pipeline.builder.last_event_id[asset] = str(event_id)
    change = engine.in_force()
    assert change is not None
    log.info(
        "%s: regime %s (since %d, entered by event %s) restored; kept until its signals decide",
        asset,
        change.regime,
        change.since,
        event_id or "none: the session's first regime",
    )
    return change
