"""Two asyncio helpers the lifecycle code needs in several places, so that none of it leaves a
task behind (the tests assert that an embedded router leaves no task when it stops)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancelled(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has finished."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def finished_before(
    work: asyncio.Future[Any], event: asyncio.Event, timeout: float | None = None
) -> bool:
    """Wait until ``work`` is done, ``event`` is set or ``timeout`` passes, whichever is first;
    True when ``work`` is done. ``work`` itself is left running otherwise."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((work, waiter), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancelled(waiter)
    return work.done()
