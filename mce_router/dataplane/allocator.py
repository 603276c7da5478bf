"""glibc malloc settings for a process that proxies large bodies (the sidecar sets them).

Every read of a large body becomes a bytes object of up to 256 KiB (uvloop's read size).
glibc's defaults serve such blocks from the heap only after its *dynamic* mmap threshold has
grown past them, and then give the top of the heap back to the kernel whenever more than twice
that threshold (about 512 KiB) is free there. A proxy with a few 1 MiB bodies in flight frees
and allocates that much all the time, so the heap shrinks and grows again per request, and each
regrown page costs a page fault and a zeroed page. Measured with 1 MiB bodies posted to an nginx
origin (benchmarks/results/large-body-perf.md): about 5 % more MB/s with the settings below.

The settings are process-wide, so the library never applies them by itself: ``mce-router
serve`` does, and a host process that embeds the router may call :func:`tune_allocator`.
"""

from __future__ import annotations

import ctypes
import os
from typing import Final

# mallopt() parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3

#: Blocks below this come from the heap: every piece of a body (uvloop reads at most 256 KiB at
#: a time), and anything up to a whole body at the 6 MiB invocation limit in one block.
MMAP_THRESHOLD: Final = 8 * 1024 * 1024
#: Free memory at the top of the heap kept for reuse instead of returned to the kernel: what
#: the router may hold after a burst of large requests beyond what it needs at rest.
TRIM_THRESHOLD: Final = 64 * 1024 * 1024

#: glibc reads these at start-up; when the operator set any of them, their choice stands.
_OPERATOR_SETTINGS: Final = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
    "GLIBC_TUNABLES",
)


def tune_allocator() -> str:
    """Apply the settings above to this process; returns what was done, for the log."""
    chosen = [name for name in _OPERATOR_SETTINGS if name in os.environ]
    if chosen:
        return f"left as set by {', '.join(chosen)}"
    try:
        # The symbols the interpreter is linked with, libc's among them: no library search
        # (ctypes.util.find_library runs ldconfig in a subprocess).
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "unchanged: not glibc (no mallopt)"
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; setting either value also turns glibc's dynamic threshold
    # off, so both are set explicitly.
    refused = [
        name
        for name, param, value in (
            ("M_MMAP_THRESHOLD", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        )
        if mallopt(param, value) != 1
    ]
    if refused:
        return f"mallopt refused {', '.join(refused)}"
    return (
        f"glibc malloc: blocks under {MMAP_THRESHOLD >> 20} MiB from the heap, up to "
        f"{TRIM_THRESHOLD >> 20} MiB of free heap kept for reuse"
    )
