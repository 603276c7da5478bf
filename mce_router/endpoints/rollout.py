"""Safe deployments: UpdateEndpoint's ``DeploymentConfig.BlueGreenUpdatePolicy``.

Once the new fleet passed its health checks, traffic moves from the old fleet to it in steps
(ALL_AT_ONCE, CANARY, LINEAR) by weight: each step swaps in one immutable route whose variants
are both fleets' with their weights scaled by the share each fleet gets. Between steps, and
for ``TerminationWaitInSeconds`` after the last one, the alarms named by
``AutoRollbackConfiguration`` watch the new fleet's own calls (AWS names CloudWatch alarms; here
they are defined in the router config, ``alarms:``). An alarm that fires, or the whole shift
outlasting ``MaximumExecutionTimeoutInSeconds``, rolls back: the old fleet's route takes all
traffic again in one swap, and the caller stops the new fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import AlarmSpec
from ..dataplane.proxy import EndpointRoute, RuntimeServer, VariantRoute
from ..dataplane.stats import CallStats
from ..errors import ValidationError
from ..shapes import invalid_value, missing_value
from .deployment import Deployment

log = logging.getLogger(__name__)

TRAFFIC_TYPES = ("ALL_AT_ONCE", "CANARY", "LINEAR")
CAPACITY_TYPES = ("INSTANCE_COUNT", "CAPACITY_PERCENT")
_WHERE = "deploymentConfig.blueGreenUpdatePolicy"


@dataclass(frozen=True, slots=True)
class CapacitySize:
    kind: str
    value: int

    def share(self, instances: int) -> float:
        """The part of the traffic this size moves, of a fleet of ``instances``."""
        if self.kind == "CAPACITY_PERCENT":
            return min(1.0, self.value / 100)
        return min(1.0, self.value / max(1, instances))


@dataclass(frozen=True, slots=True)
class BlueGreenPlan:
    """A validated BlueGreenUpdatePolicy with the alarms its AutoRollbackConfiguration names."""

    traffic: str
    wait_seconds: int
    step: CapacitySize | None
    termination_wait_seconds: int
    max_execution_seconds: int
    alarms: tuple[AlarmSpec, ...]
    #: The DeploymentConfig as given: DescribeEndpoint's LastDeploymentConfig.
    request: Mapping[str, Any]

    def shares(self, instances: int) -> list[float]:
        """The new fleet's share of the traffic at each step, the last one 1."""
        if self.traffic == "ALL_AT_ONCE" or self.step is None:
            return [1.0]
        first = self.step.share(instances)
        if self.traffic == "CANARY":
            return [first, 1.0] if first < 1 else [1.0]
        steps = max(1, math.ceil(1 / first - 1e-9))
        return [min(1.0, first * (i + 1)) for i in range(steps)]


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        invalid_value(where, value, "Member must be a structure")
    return value


def _integer(raw: Mapping[str, Any], key: str, where: str, low: int, high: int | None) -> int:
    value = raw.get(key)
    path = f"{where}.{key[0].lower()}{key[1:]}"
    if value is None:
        missing_value(path)
    if isinstance(value, bool) or not isinstance(value, int):
        invalid_value(path, value, "Member must be an integer")
    if value < low:
        invalid_value(path, value, f"Member must have value greater than or equal to {low}")
    if high is not None and value > high:
        invalid_value(path, value, f"Member must have value less than or equal to {high}")
    return value


def _type(raw: Mapping[str, Any], where: str, allowed: Sequence[str]) -> str:
    """The structure's ``Type``: present and one of ``allowed``."""
    kind = raw.get("Type")
    if kind is None:
        missing_value(f"{where}.type")
    if kind not in allowed:
        invalid_value(
            f"{where}.type", kind, f"Member must satisfy enum value set: [{', '.join(allowed)}]"
        )
    return str(kind)


def _capacity(raw: Any, where: str) -> CapacitySize:
    size = _mapping(raw, where)
    kind = _type(size, where, CAPACITY_TYPES)
    value = _integer(size, "Value", where, 1, 100 if kind == "CAPACITY_PERCENT" else None)
    return CapacitySize(kind, value)


def parse_deployment_config(raw: Any, alarms: Sequence[AlarmSpec]) -> BlueGreenPlan | None:
    """UpdateEndpoint's DeploymentConfig, validated as SageMaker does; None when absent or
    without BlueGreenUpdatePolicy (then the update is all at once, with no wait)."""
    if raw is None:
        return None
    config = _mapping(raw, "deploymentConfig")
    if config.get("RollingUpdatePolicy") is not None:
        raise ValidationError(
            "RollingUpdatePolicy is not supported by this router; use BlueGreenUpdatePolicy.",
            field="DeploymentConfig",
        )
    named: list[AlarmSpec] = []
    rollback = config.get("AutoRollbackConfiguration")
    if rollback is not None:
        listed = _mapping(rollback, "deploymentConfig.autoRollbackConfiguration").get("Alarms")
        where = "deploymentConfig.autoRollbackConfiguration.alarms"
        if listed is not None:
            if not isinstance(listed, list) or not 1 <= len(listed) <= 10:
                invalid_value(where, listed, "Member must have length between 1 and 10")
            defined = {a.name: a for a in alarms}
            for entry in listed:
                name = _mapping(entry, where).get("AlarmName")
                if not isinstance(name, str) or not name.strip():
                    invalid_value(f"{where}.member.alarmName", name, "Member must not be blank")
                if name not in defined:
                    known = ", ".join(defined) or "none"
                    raise ValidationError(
                        f"The alarm {name} named in AutoRollbackConfiguration does not exist. "
                        f"This router evaluates alarms defined in its config (alarms:); "
                        f"defined: {known}.",
                        field="AlarmName",
                    )
                named.append(defined[name])
    policy_raw = config.get("BlueGreenUpdatePolicy")
    if policy_raw is None:
        return None
    policy = _mapping(policy_raw, _WHERE)
    where = f"{_WHERE}.trafficRoutingConfiguration"
    routing_raw = policy.get("TrafficRoutingConfiguration")
    if routing_raw is None:
        missing_value(where)
    routing = _mapping(routing_raw, where)
    traffic = _type(routing, where, TRAFFIC_TYPES)
    wait = _integer(routing, "WaitIntervalInSeconds", where, 0, 3600)
    step: CapacitySize | None = None
    for kind, key in (("CANARY", "CanarySize"), ("LINEAR", "LinearStepSize")):
        given = routing.get(key)
        if traffic == kind:
            if given is None:
                raise ValidationError(
                    f"TrafficRoutingConfiguration Type {kind} requires {key}.", field=key
                )
            step = _capacity(given, f"{where}.{key[0].lower()}{key[1:]}")
        elif given is not None:
            raise ValidationError(
                f"{key} is only valid with TrafficRoutingConfiguration Type {kind} "
                f"(got {traffic}).",
                field=key,
            )
    termination = (
        0
        if policy.get("TerminationWaitInSeconds") is None
        else _integer(policy, "TerminationWaitInSeconds", _WHERE, 0, 3600)
    )
    maximum = (
        28800
        if policy.get("MaximumExecutionTimeoutInSeconds") is None
        else _integer(policy, "MaximumExecutionTimeoutInSeconds", _WHERE, 600, 28800)
    )
    return BlueGreenPlan(traffic, wait, step, termination, maximum, tuple(named), dict(config))


# --- the fleet's own calls ------------------------------------------------------------------


class FleetWatch:
    """The calls of one fleet alone: each of its containers gets stats of its own that pass
    every call on to the shared (endpoint, variant, container) stats, so /metrics misses
    nothing while the alarms see only this fleet."""

    def __init__(self, fleet: Deployment) -> None:
        self._installed: list[tuple[Any, CallStats | None]] = []
        self.stats: list[CallStats] = []
        for slot in fleet.slots:
            upstream = slot.upstream
            if upstream is None:
                continue
            own = CallStats(upstream.endpoint_name, upstream.variant_name, upstream.container_name)
            own.tee = upstream.observer
            self._installed.append((upstream, upstream.observer))
            upstream.observer = own
            self.stats.append(own)

    def totals(self) -> tuple[int, int, int, float]:
        """(calls, 4XX, 5XX, latency seconds summed) so far."""
        return (
            sum(s.count for s in self.stats),
            sum(s.errors_4xx for s in self.stats),
            sum(s.errors_5xx for s in self.stats),
            sum(s.latency_sum for s in self.stats),
        )

    def remove(self) -> None:
        for upstream, shared in self._installed:
            upstream.observer = shared
        self._installed.clear()


def datapoint(
    alarm: AlarmSpec, before: tuple[int, int, int, float], after: tuple[int, int, int, float]
) -> float | None:
    """The alarm's statistic over one period; None without calls (CloudWatch's missing data,
    which changes no alarm state)."""
    calls = after[0] - before[0]
    if calls <= 0:
        return None
    if alarm.statistic == "SampleCount":
        return float(calls)
    if alarm.metric == "ModelLatency":
        total = (after[3] - before[3]) * 1e6  # microseconds, as SageMaker publishes it
        return total if alarm.statistic == "Sum" else total / calls
    if alarm.metric == "Invocations":
        return float(calls) if alarm.statistic == "Sum" else 1.0
    index = 2 if alarm.metric == "Invocation5XXErrors" else 1
    errors = float(after[index] - before[index])
    return errors if alarm.statistic == "Sum" else errors / calls


def breaches(alarm: AlarmSpec, value: float) -> bool:
    if alarm.comparison == "GreaterThanOrEqualToThreshold":
        return value >= alarm.threshold
    return value > alarm.threshold


class AlarmMonitor:
    """Evaluates each alarm once per its period while a rollout runs; ``fired`` says why."""

    def __init__(self, alarms: Sequence[AlarmSpec], watch: FleetWatch) -> None:
        self._alarms = tuple(alarms)
        self._watch = watch
        self.fired: str | None = None
        self.event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._alarms:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="alarms")

    async def _run(self) -> None:
        now = time.monotonic()
        due = {a.name: now + a.period_seconds for a in self._alarms}
        last = {a.name: self._watch.totals() for a in self._alarms}
        streak = dict.fromkeys(due, 0)
        while True:
            await asyncio.sleep(max(0.0, min(due.values()) - time.monotonic()))
            now = time.monotonic()
            for alarm in self._alarms:
                if now < due[alarm.name]:
                    continue
                due[alarm.name] += alarm.period_seconds
                totals = self._watch.totals()
                value = datapoint(alarm, last[alarm.name], totals)
                last[alarm.name] = totals
                if value is None:
                    continue
                streak[alarm.name] = streak[alarm.name] + 1 if breaches(alarm, value) else 0
                if streak[alarm.name] >= alarm.evaluation_periods:
                    self.fired = (
                        f"alarm {alarm.name} went into ALARM: {alarm.metric} {alarm.statistic} "
                        f"of the new fleet was {value:g} over {alarm.evaluation_periods} "
                        f"period(s) of {alarm.period_seconds:g} s, threshold {alarm.threshold:g}"
                    )
                    self.event.set()
                    return

    async def wait(self, seconds: float) -> str | None:
        """Sleep ``seconds`` unless an alarm fires first; why it fired, or None."""
        if self.fired is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), timeout=seconds)
        return self.fired

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


# --- the routes of a shift ------------------------------------------------------------------


def _scaled(route: EndpointRoute, share: float) -> tuple[VariantRoute, ...]:
    """The route's variants with weights that sum to ``share`` (same instances and upstreams:
    new VariantRoute objects, since each counts its own requests in flight)."""
    total = sum(v.weight for v in route.variants)
    count = len(route.variants)
    return tuple(
        VariantRoute(
            v.name,
            share * (v.weight / total if total > 0 else 1 / count),
            v.instances,
            v.direct,
            observer=v.observer,
        )
        for v in route.variants
    )


def split_route(old: Deployment, new: Deployment, share: float) -> EndpointRoute:
    """One route sending ``share`` of the traffic to the new fleet and the rest to the old. Old
    variants come last so that TargetVariant names the old fleet's variant (the one that stays
    if the rollout rolls back). Each fleet counts its part as a replaced route, so that its
    drain waits for the requests sent through it."""
    assert old.route is not None and new.route is not None
    old_part = _scaled(old.route, 1 - share)
    new_part = _scaled(new.route, share)
    old.replaced_routes.append(EndpointRoute(old.route.name, old_part))
    new.replaced_routes.append(EndpointRoute(new.route.name, new_part))
    return EndpointRoute(new.route.name, (*new_part, *old_part))


def instance_total(fleet: Deployment) -> int:
    return sum(fleet.instance_count(v.variant_name) for v in fleet.endpoint_config.variants)


async def shift_traffic(
    plan: BlueGreenPlan,
    old: Deployment,
    new: Deployment,
    server: RuntimeServer,
    on_step: Callable[[float], None] | None = None,
) -> str | None:
    """Move traffic from ``old`` to ``new`` as the plan says, watching its alarms through the
    termination wait. None when the new fleet has all the traffic and the old one may be
    retired; else why it rolled back (the old fleet then has all the traffic again)."""
    assert old.route is not None and new.route is not None
    watch = FleetWatch(new)
    monitor = AlarmMonitor(plan.alarms, watch)
    monitor.start()
    reason: str | None = None
    try:
        async with asyncio.timeout(plan.max_execution_seconds):
            shares = plan.shares(instance_total(new))
            for index, share in enumerate(shares):
                server.set_table(
                    server.table.with_endpoint(
                        new.route if share >= 1 else split_route(old, new, share)
                    )
                )
                if on_step is not None:
                    on_step(share)
                log.info(
                    "endpoint %s: %.0f %% of traffic on the new fleet",
                    new.endpoint_name,
                    share * 100,
                )
                last = index == len(shares) - 1
                wait = plan.termination_wait_seconds if last else plan.wait_seconds
                reason = await monitor.wait(wait)
                if reason is not None:
                    break
    except TimeoutError:
        reason = (
            f"the deployment did not finish within MaximumExecutionTimeoutInSeconds "
            f"({plan.max_execution_seconds} s)"
        )
    finally:
        await monitor.stop()
        watch.remove()
    if reason is not None:
        server.set_table(server.table.with_endpoint(old.route))
        if on_step is not None:
            on_step(0.0)
        log.warning("endpoint %s: rolled back (%s)", new.endpoint_name, reason)
    return reason


__all__ = [
    "AlarmMonitor",
    "BlueGreenPlan",
    "CapacitySize",
    "FleetWatch",
    "parse_deployment_config",
    "shift_traffic",
    "split_route",
]
