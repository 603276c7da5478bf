"""Ping health checks: the startup window, and the pings that keep watching a serving container.

Pings use a fresh connection each time (``Connection: close``), separate from the data-plane
pool, so a ping never queues behind invocations and a broken pooled connection cannot make a
healthy container look dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import HealthSettings
from ..runtime.base import RunningContainer, exit_detail

#: How much of a container's own output a failure reason quotes.
LOG_TAIL_LINES = 5
LOG_TAIL_CHARS = 600


def describe_exit(status: int) -> str:
    """``exited with code 3`` / ``was killed by SIGKILL`` for a process's return code."""
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with code {status}"


def log_tail(path: Path) -> str:
    """The last lines a container wrote, on one line (`` | `` between them), or ``""``."""
    try:
        with path.open("rb") as log_file:
            log_file.seek(0, 2)
            size = log_file.tell()
            log_file.seek(max(0, size - 16 * 1024))
            text = log_file.read().decode("utf-8", "replace")
    except OSError:
        return ""
    # The router's own "=== starting ..." banner lines say nothing about the failure.
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("===")
    ]
    tail = " | ".join(lines[-LOG_TAIL_LINES:])
    return tail if len(tail) <= LOG_TAIL_CHARS else "..." + tail[-LOG_TAIL_CHARS:]


def exit_reason(container: RunningContainer, when: str) -> str:
    """Why a container that stopped is unhealthy: its exit and the last lines of its log."""
    status = container.exit_status()
    reason = f"its process {describe_exit(status if status is not None else 0)} {when}"
    if detail := exit_detail(container):  # e.g. a container engine's OOM kill
        reason += f" ({detail})"
    tail = log_tail(container.launch.log_path)
    return f"{reason}; last log lines: {tail}" if tail else f"{reason}; its log is empty"


@dataclass(frozen=True, slots=True)
class PingFailure:
    """Why one ``GET /ping`` failed; ``timed_out`` when the container did not answer in time."""

    reason: str
    timed_out: bool = False

    def __str__(self) -> str:
        return self.reason


async def ping(host: str, port: int, timeout: float) -> PingFailure | None:
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
        return PingFailure(f"no answer to GET /ping within {timeout:g} s", timed_out=True)
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            return PingFailure(
                f"connection refused on port {port} (nothing listens there yet; the container "
                "must listen on SAGEMAKER_BIND_TO_PORT)"
            )
        return PingFailure(f"GET /ping to port {port} failed: {exc.strerror or exc}")
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        return PingFailure("GET /ping got an invalid HTTP answer")
    if parts[1] != b"200":
        return PingFailure(f"GET /ping answered {parts[1].decode('latin-1')}")
    return None


async def wait_until_healthy(
    container: RunningContainer, window_seconds: float, settings: HealthSettings
) -> str | None:
    """Ping until the first 200 within the startup window; None on success, else the reason.

    A container whose process exits fails at once instead of waiting out the window.
    """
    deadline = time.monotonic() + window_seconds
    interval = settings.startup_ping_interval_seconds
    last_failure: PingFailure | None = None
    while True:
        if container.exit_status() is not None:
            return exit_reason(container, "before answering /ping")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            found = last_failure or "no ping was answered"
            return f"not healthy within {window_seconds:g} s; last: {found}"
        timeout = min(settings.ping_timeout_seconds, remaining)
        failure = await ping(container.host, container.port, timeout)
        if failure is None:
            return None
        # A ping timed out only because the window's end cut it short says nothing about the
        # container: keep what the pings before it found (e.g. connection refused).
        cut_short = failure.timed_out and timeout < settings.ping_timeout_seconds
        if not cut_short or last_failure is None:
            last_failure = failure
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        # Back off gently: slow models (minutes to load) need not be pinged ten times a second.
        interval = min(interval * 1.5, 1.0)
