"""Ping health checks: the startup window, and the pings that keep watching a serving container.

Pings use a fresh connection each time (``Connection: close``), separate from the data-plane
pool, so a ping never queues behind invocations and a broken pooled connection cannot make a
healthy container look dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from ..config import HealthSettings
from ..runtime.base import RunningContainer


async def ping(host: str, port: int, timeout: float) -> str | None:
    """``GET /ping``; None when the container answered 200, otherwise why it is unhealthy."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                b"GET /ping HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n"
                % (host.encode(), port)
            )
            status_line = await reader.readline()
    except TimeoutError:
        return f"no answer to GET /ping within {timeout:g} s"
    except OSError as exc:
        return f"GET /ping failed: {exc.strerror or exc}"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        return "GET /ping got an invalid HTTP answer"
    if parts[1] != b"200":
        return f"GET /ping answered {parts[1].decode('latin-1')}"
    return None


async def wait_until_healthy(
    container: RunningContainer, window_seconds: float, settings: HealthSettings
) -> str | None:
    """Ping until the first 200 within the startup window; None on success, else the reason.

    A container whose process exits fails at once instead of waiting out the window.
    """
    deadline = time.monotonic() + window_seconds
    interval = settings.startup_ping_interval_seconds
    last_reason = "no ping was answered"
    while True:
        status = container.exit_status()
        if status is not None:
            return f"its process exited with code {status} before answering /ping"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return f"not healthy within {window_seconds:g} s; last: {last_reason}"
        reason = await ping(
            container.host, container.port, min(settings.ping_timeout_seconds, remaining)
        )
        if reason is None:
            return None
        last_reason = reason
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        # Back off gently: slow models (minutes to load) need not be pinged ten times a second.
        interval = min(interval * 1.5, 1.0)
