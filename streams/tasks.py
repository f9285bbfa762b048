"""Stopping asyncio tasks reliably.

``Task.cancel()`` once is not enough on Python 3.11: ``asyncio.wait_for`` swallows a cancellation
that arrives just as the awaited future completes (CPython gh-86296, fixed in 3.12). Libraries we
await use it (aiomqtt's ``publish`` does), so a task can survive its cancellation and run on, and
anything awaiting it (a ``TaskGroup``, ``asyncio.run``'s cleanup) waits forever. ``stop_tasks``
repeats the cancellation until the tasks are done and gives up, reporting them, after a grace
period, so shutdown is always bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

RECANCEL_EVERY_S = 0.25


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], grace_s: float = 5.0) -> list[str]:
    """Cancel ``tasks`` and wait until they finish, cancelling again any that swallowed it.
    Returns the names of tasks still running after ``grace_s`` (empty when all stopped).

    The exceptions of tasks that ended with one are retrieved and dropped: the caller has
    re-raised the one that ended its work, the others are its echoes (two tasks on one MQTT
    connection both fail when it drops). Left unretrieved, each would be logged with its
    traceback whenever the garbage collector reaches it; on Python 3.11 that traceback,
    formatted inside an unrelated ``ast.parse``, breaks the parse (a SystemError)."""
    tasks = list(tasks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    pending = {task for task in tasks if not task.done()}
    while pending:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_EVERY_S, remaining))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()
    return sorted(task.get_name() for task in pending)
