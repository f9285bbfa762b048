"""``tapewatch notify`` when things break: a service down for 30 s of wall time, and the worker
SIGKILLed while its request is held by the receiver, then started again.

What "exactly once" can mean with an HTTP receiver: the worker records an attempt (``sending``)
before the request and the outcome (``sent``) after it, and sends the PUBACK only then. A
request whose outcome is unknown (the worker died during it) is sent again after the restart,
and that copy says so (``REPEAT_NOTE``). So the receiver sees every id, sees again only an id
that was in flight, and may drop a copy only when it is marked as a retry of ids it already has.
These tests hold the receiver to exactly that contract.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
import yaml

from monitor.notify_store import read_rows
from tests.conftest import Mosquitto
from tests.test_notify_e2e import (
    SINCE,
    Hit,
    Publisher,
    Receiver,
    group_of,
    notify_config,
    notify_data,
    publisher_fixture,  # noqa: F401 (the fixture `publisher`)
    receiver_fixture,  # noqa: F401 (the fixture `receiver`)
    running,
    store_rows,
)

OUTAGE_S = 30.0


def once_by_contract(hits: list[Hit]) -> list[str]:
    """The ids a receiver keeps: a request whose ids it has all seen may be dropped only when
    it says it is a retry; anything else counts, duplicates included."""
    seen: list[str] = []
    for hit in hits:
        if hit.repeat and set(hit.ids) <= set(seen):
            continue
        seen += hit.ids
    return seen


@pytest.mark.slow
async def test_a_service_down_for_30_s_loses_nothing_and_sends_nothing_twice(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path, receiver: Receiver, publisher: Publisher
) -> None:
    loop = asyncio.get_running_loop()
    down_from: list[float] = []

    def status(_fields: object) -> int:  # 503 for 30 s of wall time from the first request
        now = loop.time()
        down_from[:] = down_from or [now]
        return 503 if now - down_from[0] < OUTAGE_S else 200

    receiver.status = status
    urls = [f"json://127.0.0.1:{receiver.port}/hook"]
    config = notify_config(
        mosquitto, prefix, tmp_path / "state", urls, retry_max="2s", give_up="5m"
    )
    async with running(config) as notifier:
        ids = [await publisher.change("BTC", since=SINCE + i) for i in range(3)]
        await receiver.wait_for(lambda r: sum(h.status == 503 for h in r.hits) >= 2)
        ids += [await publisher.change("ETH", since=SINCE + 10 + i) for i in range(3)]
        await receiver.wait_for(lambda r: len(r.accepted_ids()) >= 6, timeout=OUTAGE_S + 60)
    statuses = [h.status for h in receiver.hits]
    assert statuses.count(503) >= 10, "the worker kept retrying during the outage"
    first_ok = statuses.index(200)
    assert set(statuses[:first_ok]) == {503} and set(statuses[first_ok:]) == {200}
    accepted = receiver.accepted()
    # The change under way when the service failed, then everything that waited, as one digest.
    assert len(accepted) == 2
    assert sorted(receiver.accepted_ids()) == sorted(ids)
    assert accepted[0].repeat, "a retry after a failed request says it may be a repeat"
    assert notifier.counts["failed"] == 0
    rows = store_rows(config)
    assert sorted((r.event_id, r.state) for r in rows) == sorted((i, "sent") for i in ids)


@pytest.mark.slow
async def test_a_delivery_given_up_on_is_recorded_with_its_error_and_acked(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path, receiver: Receiver, publisher: Publisher
) -> None:
    doomed = publisher.build()
    event_id = str(doomed.payload["id"])
    receiver.status = lambda fields: 503 if event_id in str(fields.get("message")) else 200
    urls = [f"json://127.0.0.1:{receiver.port}/hook"]
    config = notify_config(mosquitto, prefix, tmp_path / "state", urls, give_up="2s")
    async with running(config) as notifier:
        await publisher.send(doomed)
        marker = await publisher.change("ETH")
        # Messages go one after the other: the marker is sent once the first was given up.
        await receiver.wait_for(lambda r: marker in r.accepted_ids())
    assert notifier.counts["failed"] == 1
    # It was acknowledged: the same worker's session gives nothing back to send.
    async with running(config) as again:
        marker2 = await publisher.change("SOL")
        await receiver.wait_for(lambda r: marker2 in r.accepted_ids())
    assert again.counts == {"sent": 1}
    assert receiver.accepted_ids() == [marker, marker2]
    (row,) = [r for r in store_rows(config) if r.event_id == event_id]
    assert row.state == "failed"
    assert row.error is not None and "503" in row.error
    assert row.attempts >= 2


# -- SIGKILL --------------------------------------------------------------------------------------
class NotifierProcess:
    """``python -m monitor notify`` as a user runs it; knows when it has subscribed."""

    def __init__(self, config: Path, worker: str, cwd: Path) -> None:
        self.argv = [sys.executable, "-m", "monitor", "notify", "--config", str(config)]
        self.argv += ["--worker", worker]
        self.cwd = cwd
        self.lines: list[str] = []
        self.subscribed = asyncio.Event()
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.subscribed.clear()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAPEWATCH_")}
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=self.cwd,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read(self.proc))
        try:
            await asyncio.wait_for(self.subscribed.wait(), 30)
        except TimeoutError:
            raise AssertionError("notify did not subscribe:\n" + "\n".join(self.lines)) from None

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if "notify: subscribed to" in line:
                self.subscribed.set()

    async def stop(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 10)
        return code


@pytest.mark.slow
async def test_sigkill_during_a_delivery_then_restart_delivers_each_id_once_by_the_contract(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path, receiver: Receiver, publisher: Publisher
) -> None:
    # One change per message (max_events 1), so the one in flight is known; rto=30: the held
    # request must not time out inside Apprise before the kill.
    urls = [f"json://127.0.0.1:{receiver.port}/hook?rto=30"]
    data = notify_data(mosquitto, prefix, tmp_path / "state", urls, max_events=1)
    (tmp_path / "notify.yaml").write_text(yaml.safe_dump(data))
    store = tmp_path / "state" / f"notify-{group_of(prefix)}.sqlite"
    worker = NotifierProcess(tmp_path / "notify.yaml", "w1", tmp_path)
    await worker.start()
    code: int | None = None
    try:
        ids = [await publisher.change("BTC", since=SINCE + i) for i in range(2)]
        await receiver.wait_for(lambda r: r.accepted_ids() == ids)
        receiver.hold = lambda hit: len(ids) > 2 and ids[2] in hit.ids
        ids.append(await publisher.change("ETH", since=SINCE + 2))
        await receiver.wait_for(lambda r: ids[2] in r.accepted_ids())
        # The attempt was recorded before the request went out.
        in_flight = {r.event_id: (r.state, r.attempts) for r in read_rows(store)}
        assert in_flight == {ids[0]: ("sent", 1), ids[1]: ("sent", 1), ids[2]: ("sending", 1)}
        assert await worker.stop(signal.SIGKILL) == -signal.SIGKILL
        # While it is dead its session queues what is published.
        ids += [await publisher.change("SOL", since=SINCE + 3 + i) for i in range(2)]
        receiver.hold = None
        receiver.release.set()
        await worker.start()
        # The broker gives the session its unacknowledged event first, then the queued ones.
        await receiver.wait_for(lambda r: set(ids[3:]) <= set(r.accepted_ids()))
    finally:
        if worker.proc is not None and worker.proc.returncode is None:
            code = await worker.stop(signal.SIGTERM)
    assert code == 0, "\n".join(worker.lines)
    assert not any("Traceback" in line for line in worker.lines), "\n".join(worker.lines)

    got = receiver.accepted_ids()
    # Only the id in flight at the kill came twice, and its second copy says it is a retry.
    assert sorted(got) == sorted([*ids, ids[2]])
    copies = [h for h in receiver.accepted() if ids[2] in h.ids]
    assert [h.repeat for h in copies] == [False, True]
    assert not any(h.repeat for h in receiver.accepted() if ids[2] not in h.ids)
    # Deduplicated as the contract allows: each id exactly once.
    assert sorted(once_by_contract(receiver.accepted())) == sorted(ids)
    rows = {r.event_id: (r.state, r.attempts) for r in read_rows(store)}
    assert rows == {i: ("sent", 2 if i == ids[2] else 1) for i in ids}
