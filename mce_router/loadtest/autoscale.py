"""The seed's autoscaling warning, computed from a mixed run.

SageMaker's docs warn that ``InvocationsPerInstance`` autoscaling on a multi-container endpoint
assumes every container costs about the same per request: if traffic shifts toward a costlier
container while the call volume stays the same, the metric does not move, the endpoint does
not scale out, and the instance overloads.

From the run we know each container's CPU per request (core-seconds, from the router's
CPUUtilization over the run divided by the requests it served). An instance with ``cores``
cores at a utilisation target ``u`` carries ``cores*u / cost(mix)`` requests per second, where
``cost(mix)`` is the mix-weighted CPU per request. The run's rate ``T`` per instance looked fine
to ``InvocationsPerInstance``; at that same rate, shifting a share ``f`` of the traffic to the
costliest container (the rest keeping its proportions) costs ``f*c_max + (1-f)*c_rest`` per
request, which passes ``cores*u`` at ``f = (cores*u/T - c_rest) / (c_max - c_rest)``. The safe
per-instance target, whatever the mix, is ``cores*u / c_max``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Costs this close to each other raise no warning (measurement noise, not a real difference).
SIMILAR = 1.2


def analyse(
    requests: Mapping[str, float],
    cpu_seconds_per_request: Mapping[str, float],
    *,
    invocations_per_instance: float,
    cores: float,
    cpu_target: float,
) -> dict[str, Any] | None:
    """``requests``: each container's share of the run (any unit); ``cpu_seconds_per_request``:
    core-seconds per request of each container; ``invocations_per_instance``: the run's rate
    per instance. ``None`` when under two containers."""
    names = [n for n in requests if n in cpu_seconds_per_request and requests[n] > 0]
    if len(names) < 2:
        return None
    total = sum(requests[n] for n in names)
    share = {n: requests[n] / total for n in names}
    cost = {n: cpu_seconds_per_request[n] for n in names}
    mix_cost = sum(share[n] * cost[n] for n in names)
    capacity = cores * cpu_target
    costliest = max(names, key=cost.__getitem__)
    cheapest = min(names, key=cost.__getitem__)
    c_max = cost[costliest]
    result: dict[str, Any] = {
        "cores": cores,
        "invocations_per_instance": invocations_per_instance,
        "cpu_target": cpu_target,
        "cpu_ms_per_request": {n: cost[n] * 1000.0 for n in names},
        "mix": share,
        "costliest": costliest,
        "cheapest": cheapest,
        "instance_rps_at_measured_mix": capacity / mix_cost if mix_cost > 0 else None,
        "safe_invocations_per_instance": capacity / c_max if c_max > 0 else None,
        "breaking_share_of_costliest": None,
        "warning": None,
    }
    if mix_cost <= 0 or c_max <= 0 or cost[cheapest] * SIMILAR >= c_max:
        return result
    rest = [n for n in names if n != costliest]
    rest_share = sum(share[n] for n in rest)
    c_rest = sum(share[n] * cost[n] for n in rest) / rest_share if rest_share else c_max
    target = invocations_per_instance
    safe = capacity / c_max
    if c_max <= c_rest or target <= safe:
        return result  # even all traffic on the costliest container fits at this rate
    breaking = (capacity / target - c_rest) / (c_max - c_rest)
    breaking = min(max(breaking, 0.0), 1.0)
    result["breaking_share_of_costliest"] = breaking
    result["warning"] = (
        f"containers differ in CPU per request ({costliest} {cost[costliest] * 1000:.3g} ms, "
        f"{cheapest} {cost[cheapest] * 1000:.3g} ms): at this run's {target:.0f} invocations/s "
        f"per instance, which InvocationsPerInstance autoscaling considers fine, the instance "
        f"passes {cpu_target:.0%} of {cores:g} cores once {costliest} gets {breaking:.0%} of the "
        f"traffic (now {share[costliest]:.0%}); an InvocationsPerInstance target of {safe:.0f}/s "
        f"is safe for any mix"
    )
    return result
