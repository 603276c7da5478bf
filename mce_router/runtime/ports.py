"""Ports handed to containers: ``SAGEMAKER_BIND_TO_PORT`` and ``SAGEMAKER_SAFE_PORT_RANGE``.

Both come from fixed ranges below Linux's ephemeral range (32768-60999), never from the kernel's
port 0: model servers in common use (the Java one many SageMaker framework containers are built
on) refuse ports above 32767, and ephemeral ports are also what the router's own outgoing
connections use, so a container could find "its" port taken. The two ranges never overlap
(config validation), ports in use by anyone are skipped, and allocation goes round the range
so that a port just released is not handed out again at once.
"""

from __future__ import annotations

import random
import socket

from ..errors import RouterError


class PortsExhausted(RouterError):
    """Every block of a port range is taken or in use by another program."""


class PortBlocks:
    """Hands out disjoint blocks of ``size`` consecutive ports from ``count`` blocks starting
    at ``start``, skipping any block in which some port is in use on ``host``."""

    def __init__(self, *, host: str, start: int, size: int, count: int, what: str) -> None:
        self._host = host
        self._start = start
        self._size = size
        self._count = count
        self._what = what
        self._taken: set[int] = set()
        # Each router starts at its own random block: a port found free here is not reserved
        # until its container binds it, so two routers (or test sessions) on one host that
        # both began at the first block would hand out the same ports at the same moment.
        self._next = random.randrange(count) if count > 0 else 0

    def allocate(self) -> tuple[int, int]:
        """The first and last port of a free block, now reserved until :meth:`release`."""
        for offset in range(self._count):
            block = (self._next + offset) % self._count
            if block in self._taken:
                continue
            first = self._start + block * self._size
            last = first + self._size - 1
            if all(port_is_free(self._host, port) for port in range(first, last + 1)):
                self._taken.add(block)
                self._next = (block + 1) % self._count
                return first, last
        raise PortsExhausted(
            f"no free {self._what} left: all {self._count} blocks from port {self._start} are "
            "taken or in use; widen the range in the router config's process section"
        )

    def reserve(self, first: int) -> None:
        """Keep the block starting at ``first`` (a restarted container asks for its old port)."""
        block, rest = divmod(first - self._start, self._size)
        if rest == 0 and 0 <= block < self._count:
            self._taken.add(block)

    def release(self, first: int) -> None:
        self._taken.discard((first - self._start) // self._size)


def allocate_ports(
    bind_ports: PortBlocks, safe_ranges: PortBlocks, port: int | None
) -> tuple[int, tuple[int, int]]:
    """A ``SAGEMAKER_BIND_TO_PORT`` and a ``SAGEMAKER_SAFE_PORT_RANGE`` block for one
    container; ``port`` keeps a restarted container's port (the upstream pool and routing
    table know it). Nothing stays reserved when either allocation fails."""
    if port is None:
        bind_port, _ = bind_ports.allocate()
    else:
        bind_port = port
        bind_ports.reserve(port)
    try:
        return bind_port, safe_ranges.allocate()
    except BaseException:
        bind_ports.release(bind_port)
        raise


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
