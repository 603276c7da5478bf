"""The contract checker's CPU reading against a real spinning process.

The kernel counts CPU time in clock ticks, so over a request of a few milliseconds the measured
share is mostly rounding (one 10 ms tick in a 3 ms window reads as 300 %). The checker judges
the ``resources`` rule on the floor, which must never exceed what the process can really use.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pytest

from mce_router.check import probes


@pytest.fixture
def spinner() -> Iterator[subprocess.Popen[bytes]]:
    # one thread, so it cannot use more than one core: 100 % is its ceiling
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


async def test_a_short_window_never_reads_above_what_one_thread_can_use(
    spinner: subprocess.Popen[bytes],
) -> None:
    await asyncio.sleep(0.05)  # past interpreter start-up
    readings = []
    for _ in range(30):
        async with probes.CpuAndMemoryDuring(spinner.pid) as window:
            await asyncio.sleep(0.003)
        readings.append((window.cpu_percent, window.cpu_percent_floor))
    assert all(floor <= 100.0 for _, floor in readings), readings
    assert all(floor <= measured for measured, floor in readings), readings


async def test_a_long_window_shows_a_busy_process_as_busy(
    spinner: subprocess.Popen[bytes],
) -> None:
    async with probes.CpuAndMemoryDuring(spinner.pid) as window:
        await asyncio.sleep(0.5)
    # two ticks of rounding are 4 % of half a second: a process that had even a seventh of a
    # core (a busy CI machine) shows as busy
    assert window.cpu_percent_floor >= 10.0, (window.cpu_percent, window.cpu_percent_floor)
    rounding_percent = 2 * probes.CPU_TICK_SECONDS / 0.5 * 100
    assert window.cpu_percent - window.cpu_percent_floor <= rounding_percent + 1e-6
