#!/usr/bin/env python3
"""The fault container plus two forked processes that spin forever: a container whose process
tree burns up to two cores (the forks share its process group, so the router stops them too).

Used by the metrics tests to check CPUUtilization over a whole process tree; everything else
is fault_container.py.
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path

for _ in range(2):
    if os.fork() == 0:
        while True:
            pass

runpy.run_path(str(Path(__file__).with_name("fault_container.py")), run_name="__main__")
