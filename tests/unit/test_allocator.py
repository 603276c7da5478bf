"""The sidecar's glibc malloc settings (dataplane/allocator.py), checked by their effect in a
fresh interpreter: they are process-wide, so never applied to the test process itself."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the settings are glibc's (mallopt, mallinfo2)"
)

# Allocates a 1 MiB block with malloc and reports how many blocks glibc then serves by mmap
# (mallinfo2().hblks): with its defaults a block that size is mapped on its own, with the
# sidecar's settings it comes from the heap.
_PROBE = """
import ctypes, json, sys
from mce_router.dataplane.allocator import tune_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
outcome = tune_allocator() if sys.argv[1] == "tune" else "defaults"
before = libc.mallinfo2().hblks
block = libc.malloc(1 << 20)
mapped = libc.mallinfo2().hblks - before
libc.free(block)
print(json.dumps({"outcome": outcome, "mapped": mapped}))
"""


def _probe(mode: str, **env: str) -> dict[str, object]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"
    }
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_defaults_map_a_one_mib_block_on_its_own() -> None:
    assert _probe("defaults") == {"outcome": "defaults", "mapped": 1}


def test_tuned_process_serves_body_sized_blocks_from_the_heap() -> None:
    result = _probe("tune")
    assert result["mapped"] == 0
    assert result["outcome"] == (
        "glibc malloc: blocks under 8 MiB from the heap, up to 64 MiB of free heap kept for reuse"
    )


def test_operator_settings_are_left_alone() -> None:
    result = _probe("tune", MALLOC_TRIM_THRESHOLD_="131072")
    assert result["outcome"] == "left as set by MALLOC_TRIM_THRESHOLD_"
    # Setting MALLOC_TRIM_THRESHOLD_ fixes glibc's thresholds at their start values, so the
    # 1 MiB block is still mapped: the router changed nothing.
    assert result["mapped"] == 1
