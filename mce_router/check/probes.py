"""What the checker observes of a running container: its sockets, its accept queue, its CPU and
memory, and its answers over HTTP. Everything is read from the kernel (``/proc``, through psutil
where psutil has it) or asked over a real socket; nothing is taken from the container's word."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

#: ``st`` of a listening socket in /proc/net/tcp.
_TCP_LISTEN = "0A"


def process_tree(root_pid: int) -> list[psutil.Process]:
    """The process and every descendant that still exists."""
    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def listening_ports(root_pid: int) -> set[int]:
    """TCP ports on which the process tree holds a listening socket (any address)."""
    ports: set[int] = set()
    for process in process_tree(root_pid):
        with contextlib.suppress(psutil.Error):
            for conn in process.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr:
                    ports.add(conn.laddr.port)
    return ports


def accept_queue_length(root_pid: int, port: int) -> int | None:
    """Connections the kernel completed on ``port`` that the program has not accepted yet.

    For a listening socket, /proc/net/tcp's ``rx_queue`` is the current length of its accept
    queue; read from the process's own network namespace. None when no listener is found.
    """
    found: int | None = None
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{root_pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 5 or fields[3] != _TCP_LISTEN:
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) != port:
                continue
            found = (found or 0) + int(fields[4].split(":")[1], 16)
    return found


async def time_to_accept(host: str, port: int, root_pid: int, timeout: float) -> float:
    """Seconds from the start of a TCP connect until the program has accepted the connection.

    The connection is closed afterwards without a request, which servers see as an idle client.
    Raises TimeoutError when it is not accepted within ``timeout``.
    """
    started = time.monotonic()
    deadline = started + timeout
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
            while True:
                queued = accept_queue_length(root_pid, port)
                if queued == 0 or queued is None:
                    # None: the listener is not visible in this namespace (remote engine);
                    # the completed handshake is then the best evidence there is.
                    return time.monotonic() - started
                if time.monotonic() >= deadline:
                    raise TimeoutError
                await asyncio.sleep(0.002)
    finally:
        sock.close()


# The kernel reports a process's user and system time in whole clock ticks (10 ms at the usual
# USER_HZ of 100), so a difference of two readings is off by up to a tick each per process.
CPU_TICK_SECONDS = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Usage:
    cpu_seconds: float
    rss_bytes: int
    processes: int = 0


def usage(root_pid: int) -> Usage:
    """CPU time (user + system) and resident memory summed over the process tree."""
    cpu = 0.0
    rss = 0
    processes = 0
    for process in process_tree(root_pid):
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            cpu += times.user + times.system
            rss += process.memory_info().rss
            processes += 1
    return Usage(cpu, rss, processes)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str | None
    seconds: float


async def http_call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    timeout: float,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One request on a fresh connection (as the router's health checker opens them)."""
    started = time.monotonic()
    async with session.request(
        method,
        url,
        data=body,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as response:
        data = await response.read()
        return Answer(
            response.status,
            data,
            response.headers.get("Content-Type"),
            time.monotonic() - started,
        )


class CpuAndMemoryDuring:
    """Samples the tree's memory every ``interval`` while a block runs: peak RSS and CPU%.

    ``cpu_percent`` is the measured share; ``cpu_percent_floor`` is the least the tree can
    have used given the kernel's tick granularity, which is what a limit is judged against:
    over a 3 ms request one tick alone reads as 300 %.
    """

    def __init__(self, root_pid: int, interval: float = 0.02) -> None:
        self._root = root_pid
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.peak_rss = 0
        self.cpu_percent = 0.0
        self.cpu_percent_floor = 0.0
        self._start = Usage(0.0, 0)
        self._started_at = 0.0

    async def __aenter__(self) -> CpuAndMemoryDuring:
        self._start = usage(self._root)
        self._started_at = time.monotonic()
        self.peak_rss = self._start.rss_bytes
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    async def _sample(self) -> None:
        while True:
            self.peak_rss = max(self.peak_rss, usage(self._root).rss_bytes)
            await asyncio.sleep(self._interval)

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        end = usage(self._root)
        self.peak_rss = max(self.peak_rss, end.rss_bytes)
        wall = max(time.monotonic() - self._started_at, 1e-6)
        used = max(end.cpu_seconds - self._start.cpu_seconds, 0.0)
        # user and system time each round to a tick, in every process of either reading
        uncertainty = 2 * CPU_TICK_SECONDS * max(end.processes, self._start.processes, 1)
        self.cpu_percent = 100.0 * used / wall
        self.cpu_percent_floor = 100.0 * max(used - uncertainty, 0.0) / wall
