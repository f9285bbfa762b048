"""Shutdown is bounded even when a task swallows its cancellation (Python 3.11 wait_for race)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import Any

from streams.tasks import stop_tasks


async def _swallows_first_cancel(stopped: list[str]) -> None:
    # What a task does when asyncio.wait_for dropped the cancellation: it carries on waiting.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()
    try:
        await asyncio.Event().wait()
    finally:
        stopped.append("second cancel")


async def _ignores_cancellation(release: asyncio.Event) -> None:
    while not release.is_set():
        try:
            await release.wait()
        except asyncio.CancelledError:
            continue


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again() -> None:
    stopped: list[str] = []
    task = asyncio.create_task(_swallows_first_cancel(stopped), name="stubborn")
    await asyncio.sleep(0)  # let it reach its first await
    assert await stop_tasks([task], grace_s=5.0) == []
    assert task.cancelled()
    assert stopped == ["second cancel"]


async def test_a_task_that_never_stops_is_reported_after_the_grace_period() -> None:
    release = asyncio.Event()
    task = asyncio.create_task(_ignores_cancellation(release), name="runaway")
    plain = asyncio.create_task(asyncio.Event().wait(), name="plain")
    await asyncio.sleep(0)
    assert await stop_tasks([task, plain], grace_s=0.6) == ["runaway"]
    assert plain.cancelled()
    assert not task.done()
    release.set()
    await task


async def _fails(after: asyncio.Event) -> None:
    await after.wait()
    raise ConnectionError("the connection dropped")


async def test_the_exceptions_of_stopped_tasks_are_retrieved() -> None:
    # Two tasks on one connection: both fail when it drops. The caller re-raises one; the other
    # must not be reported as "never retrieved" (logged with a traceback) when it is collected.
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    dropped = asyncio.Event()
    first = asyncio.create_task(_fails(dropped), name="deliver")
    second = asyncio.create_task(_fails(dropped), name="listen")
    dropped.set()
    done, _ = await asyncio.wait([first, second], return_when=asyncio.ALL_COMPLETED)
    assert len(done) == 2
    with contextlib.suppress(ConnectionError):
        first.result()  # the caller's re-raise; ``second`` is left to stop_tasks
    assert await stop_tasks([first, second]) == []
    del first, second, done
    gc.collect()
    loop.set_exception_handler(None)
    assert reported == []
