#!/usr/bin/env python3
"""The fault container with a thread that spins forever: a container that burns one core.

Used by the metrics tests to check CPUUtilization; everything else is fault_container.py.
"""

from __future__ import annotations

import runpy
import threading
from pathlib import Path


def _spin() -> None:
    while True:
        pass


threading.Thread(target=_spin, daemon=True).start()
runpy.run_path(str(Path(__file__).with_name("fault_container.py")), run_name="__main__")
