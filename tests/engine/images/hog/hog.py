"""Allocates (and touches) 256 MiB at a time until killed; never listens."""

import sys
import time

held = []
print("hog: allocating", flush=True)
for _ in range(4096):  # bounded: 1 TiB, far beyond any instance type
    held.append(b"x" * (256 << 20))
    time.sleep(0.01)
sys.exit(0)
