"""Helpers of the mce_router performance benchmark (``python benchmarks/run.py``).

``procs``  process groups, CPU pinning, free ports, installing missing tools, cleanup
``stack``  the processes under test: origin nginx, proxy nginx, example container, routers
``load``   wrk runs (Lua script, JSON results) with CPU/RSS sampling of the proxy under test
``report`` medians, derived ratios, targets (PASS/MISS), markdown, JSON and the PNG chart
"""
