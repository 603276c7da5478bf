"""Instances that come and go: the desired instance count of each variant, reached one change at
a time, and target tracking that sets it from the router's own metrics.

Scale-out starts whole instances (every container of the variant's model) beside the serving
ones; an instance joins the routing table only once each of its containers passed ``/ping``,
by swapping in a new immutable route. Scale-in swaps in a route without the newest instance,
waits until none of its containers has a request in flight (``limits.drain_timeout_seconds`` at
most), then stops it (SIGTERM, ``process.stop_grace_seconds``, SIGKILL). A request therefore
always runs on an instance that stays up until it is answered.

Target tracking follows Application Auto Scaling: one datapoint per ``autoscaling.period_seconds``
(60 in AWS); ``autoscaling.scale_out_datapoints`` (3) consecutive datapoints above the target
scale out, ``autoscaling.scale_in_datapoints`` (15) below 90 % of it scale in; the new capacity
is ``ceil(current * metric / target)`` within Min/MaxCapacity; ScaleOutCooldown blocks further
scale-out and any scale-in, ScaleInCooldown further scale-in; DisableScaleIn and the target's
SuspendedState are honoured. ``InvocationsPerInstance`` is SageMaker's: invocations per minute
divided by the instances of the variant, whatever the period.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import RouterConfig
from ..control.autoscaling import ROUTER_NAMESPACE, AutoScaling, TargetKey, TargetTracking
from ..control.store import AutoscalingKind, Store
from ..control.validation import check_name
from ..dataplane.proxy import RuntimeServer
from ..errors import ValidationError
from ..metrics import ProcessTreeSampler, RouterMetrics
from .deployment import Deployment
from .manager import EndpointManager
from .state import EndpointStatus

log = logging.getLogger(__name__)

#: Scale-in fires below this share of the target value (AWS's low alarm).
SCALE_IN_RATIO = 0.9


@dataclass(slots=True)
class _PolicyState:
    datapoints: collections.deque[float] = field(default_factory=collections.deque)
    last_scale_out: float = -math.inf
    last_scale_in: float = -math.inf


class Scaler:
    """Desired instance counts and weights of every variant, and the target tracking loop.
    It is the :class:`~mce_router.control.autoscaling.ScalableResources` of autoscaling."""

    def __init__(
        self,
        config: RouterConfig,
        endpoints: EndpointManager,
        server: RuntimeServer,
        metrics: RouterMetrics | None,
        store: Store,
    ) -> None:
        self._config = config
        self._store = store
        self._endpoints = endpoints
        self._server = server
        self._metrics = metrics
        self.autoscaling: AutoScaling | None = None
        #: (endpoint lower-cased, variant) -> the fleet and the instance count asked of it (a
        #: fleet replaced by UpdateEndpoint starts again from its InitialInstanceCount).
        self._desired: dict[tuple[str, str], tuple[Deployment, int]] = {}
        self._changing: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._policy_state: dict[tuple[str, str], _PolicyState] = {}
        self._last_counts: dict[tuple[str, ...], int] = {}
        self._sampler = ProcessTreeSampler()
        #: Seconds from the datapoint that crossed the threshold to the new instances serving,
        #: for each scale-out (newest last); what the README's figure is measured from.
        self.scale_out_latencies: list[float] = []

    # --- ScalableResources -------------------------------------------------------------------

    def _fleet(self, endpoint: str, variant: str) -> tuple[str, Deployment]:
        state = self._endpoints.get(check_name(endpoint, "EndpointName"))
        fleet = state.deployment
        if fleet is None or state.status not in (
            EndpointStatus.IN_SERVICE,
            EndpointStatus.UPDATING,
        ):
            raise ValidationError(
                f"Endpoint {state.name} is {state.status}; its capacity can change only while "
                "it is InService."
            )
        if state.traffic_shift is not None:
            # A scale swap would put the old fleet's own route back over the split one.
            raise ValidationError(
                f"Endpoint {state.name} is shifting traffic to a new fleet (UpdateEndpoint "
                "with DeploymentConfig); its capacity can change once it is InService again."
            )
        names = [v.variant_name for v in fleet.endpoint_config.variants]
        if variant not in names:
            raise ValidationError(
                f'The variant "{variant}" is not present in endpoint "{state.name}"; its '
                f"variants are: {', '.join(names)}.",
                field="VariantName",
            )
        return state.name, fleet

    def desired_instance_count(self, endpoint: str, variant: str) -> int:
        name, fleet = self._fleet(endpoint, variant)
        return self._wanted(name, variant, fleet)

    def _wanted(self, endpoint: str, variant: str, fleet: Deployment) -> int:
        asked = self._desired.get((endpoint.lower(), variant))
        return (
            asked[1] if asked is not None and asked[0] is fleet else fleet.instance_count(variant)
        )

    def set_desired_instance_count(self, endpoint: str, variant: str, count: int) -> None:
        name, fleet = self._fleet(endpoint, variant)
        self._check_capacity(fleet, variant, count)
        key = (name.lower(), variant)
        self._remember(name, variant, DesiredInstanceCount=count)
        self._desired[key] = (fleet, count)
        task = self._changing.get(key)
        if task is None or task.done():
            self._changing[key] = asyncio.get_running_loop().create_task(
                self._reconcile(name, variant), name=f"scale {name}/{variant}"
            )

    def _remember(self, endpoint: str, variant: str, **values: float) -> None:
        """Keep a variant's desired count and weight in the state file: a restart brings the
        endpoint back with them (the endpoint's CreationTime tells a recreated one apart)."""
        key = f"{endpoint.lower()}|{variant}"
        state = self._endpoints.get(endpoint)
        origin = {"CreationTime": state.created_at, "EndpointConfigName": state.config_name}
        stored = dict(self._stored_capacities().get(key, {}))
        if any(stored.get(k) != v for k, v in origin.items()):
            stored = origin
        stored.update(values)
        if not self._store.closed:
            self._store.for_change().change_autoscaling(put=[("capacity", key, stored)])

    def _stored_capacities(self) -> dict[str, dict[str, Any]]:
        return dict(self._store.list_autoscaling("capacity"))

    def restore(self) -> None:
        """At start, once the endpoints are back: apply the stored weights and counts, and
        forget those of endpoints that are gone (or were created anew)."""
        stale: list[tuple[AutoscalingKind, str]] = []
        for key, stored in self._stored_capacities().items():
            name, _, variant = key.partition("|")
            state = self._endpoints.endpoints.get(name)
            if (
                state is None
                or state.created_at != stored.get("CreationTime")
                or state.config_name != stored.get("EndpointConfigName")
            ):
                stale.append(("capacity", key))
                continue
            fleet = state.deployment
            if fleet is None or variant not in {
                v.variant_name for v in fleet.endpoint_config.variants
            }:
                continue
            if "DesiredWeight" in stored:
                self._server.set_table(
                    self._server.table.with_endpoint(
                        fleet.set_weight(variant, float(stored["DesiredWeight"]))
                    )
                )
            if "DesiredInstanceCount" in stored:
                self.set_desired_instance_count(
                    state.name, variant, int(stored["DesiredInstanceCount"])
                )
        if stale:
            self._store.change_autoscaling(delete=stale)

    def _check_capacity(self, fleet: Deployment, variant: str, count: int) -> None:
        per_instance = len(
            next(
                fleet.models[v.model_name].containers
                for v in fleet.endpoint_config.variants
                if v.variant_name == variant
            )
        )
        extra = (count - fleet.instance_count(variant)) * per_instance
        running = sum(len(d.slots) for s in self._endpoints.endpoints.values() for d in s.fleets())
        limit = self._config.limits.max_running_containers
        if extra > 0 and running + extra > limit:
            raise ValidationError(
                f"{count} instances of variant {variant} would run {running + extra} containers, "
                f"beyond limits.max_running_containers ({limit})."
            )

    def is_changing(self, endpoint: str) -> bool:
        return any(
            key[0] == endpoint.lower() and not task.done() for key, task in self._changing.items()
        )

    def _routed(self, endpoint: str, fleet: Deployment) -> bool:
        """Whether ``fleet`` is what the routing table serves for the endpoint: not replaced by
        UpdateEndpoint, not being deleted (a swap must never bring it back)."""
        state = self._endpoints.endpoints.get(endpoint)
        return (
            state is not None
            and state.deployment is fleet
            and state.status in (EndpointStatus.IN_SERVICE, EndpointStatus.UPDATING)
        )

    async def _reconcile(self, endpoint: str, variant: str) -> None:
        key = (endpoint.lower(), variant)
        while True:
            state = self._endpoints.endpoints.get(endpoint)
            fleet = None if state is None else state.deployment
            if fleet is None or fleet.route is None or not self._routed(endpoint, fleet):
                return
            current = fleet.instance_count(variant)
            desired = self._wanted(endpoint, variant, fleet)
            if desired > current:
                results = await asyncio.gather(
                    *(fleet.start_instance(variant) for _ in range(desired - current)),
                    return_exceptions=True,
                )
                if fleet.route is not None and self._routed(endpoint, fleet):
                    self._server.set_table(self._server.table.with_endpoint(fleet.route))
                failed = [r for r in results if isinstance(r, BaseException)]
                for error in failed:
                    if isinstance(error, asyncio.CancelledError):
                        raise error
                    log.error("scale-out of %s/%s failed: %s", endpoint, variant, error)
                if failed:
                    # What did start serves; the count asked for becomes what runs, so that
                    # DescribeEndpoint does not promise instances that will not come.
                    self._desired[key] = (fleet, fleet.instance_count(variant))
                    return
                log.info("%s/%s scaled out to %d instances", endpoint, variant, desired)
            elif desired < current:
                route, slots = fleet.detach_instance(variant)
                self._server.set_table(self._server.table.with_endpoint(route))
                drain = self._config.limits.drain_timeout_seconds
                if not await fleet.stop_instance(slots, drain):
                    log.warning(
                        "%s/%s: requests still in flight after %.1f s on the instance scaled "
                        "in; stopped anyway",
                        endpoint,
                        variant,
                        drain,
                    )
            else:
                return

    # --- UpdateEndpointWeightsAndCapacities --------------------------------------------------

    def update_weights_and_capacities(self, params: Mapping[str, Any]) -> dict[str, Any]:
        name = params.get("EndpointName")
        if not isinstance(name, str):
            raise ValidationError("EndpointName is required.", field="EndpointName")
        state = self._endpoints.get(check_name(name, "EndpointName"))
        changes = params.get("DesiredWeightsAndCapacities")
        if not isinstance(changes, list) or not changes:
            raise ValidationError(
                "DesiredWeightsAndCapacities must list at least one variant.",
                field="DesiredWeightsAndCapacities",
            )
        if state.status is not EndpointStatus.IN_SERVICE or self.is_changing(state.name):
            raise ValidationError(
                f'Cannot update in-progress endpoint "{self._endpoints.arn(state.name)}".'
            )
        plan: list[tuple[str, float | None, int | None]] = []
        for change in changes:
            if not isinstance(change, Mapping) or not isinstance(change.get("VariantName"), str):
                raise ValidationError("Each entry needs a VariantName.", field="VariantName")
            variant = change["VariantName"]
            self._fleet(state.name, variant)
            weight, count = change.get("DesiredWeight"), change.get("DesiredInstanceCount")
            if weight is not None and (
                not isinstance(weight, int | float) or isinstance(weight, bool) or weight < 0
            ):
                raise ValidationError("DesiredWeight must be a number of at least 0.")
            if count is not None and (
                not isinstance(count, int) or isinstance(count, bool) or count < 1
            ):
                raise ValidationError("DesiredInstanceCount must be an integer of at least 1.")
            if weight is None and count is None:
                raise ValidationError(
                    f"Variant {variant}: give DesiredWeight, DesiredInstanceCount or both."
                )
            plan.append((variant, None if weight is None else float(weight), count))
        fleet = state.deployment
        assert fleet is not None
        for variant, weight, count in plan:
            if weight is not None:
                self._remember(state.name, variant, DesiredWeight=weight)
                self._server.set_table(
                    self._server.table.with_endpoint(fleet.set_weight(variant, weight))
                )
            if count is not None:
                self.set_desired_instance_count(state.name, variant, count)
        return {"EndpointArn": self._endpoints.arn(state.name)}

    def describe(self, name: str, described: dict[str, Any]) -> dict[str, Any]:
        """DescribeEndpoint with the live counts and weights, Updating while they change."""
        state = self._endpoints.get(name)
        fleet = state.deployment
        if fleet is None:
            return described
        for summary in described.get("ProductionVariants", []):
            variant = summary["VariantName"]
            current = fleet.instance_count(variant)
            summary["CurrentInstanceCount"] = current
            summary["DesiredInstanceCount"] = self._wanted(state.name, variant, fleet)
            if variant in fleet.weights:
                summary["CurrentWeight"] = summary["DesiredWeight"] = fleet.weights[variant]
        if self.is_changing(state.name) and described["EndpointStatus"] == "InService":
            described["EndpointStatus"] = "Updating"
        return described

    # --- target tracking ---------------------------------------------------------------------

    async def run(self) -> None:
        """One evaluation per period, until cancelled."""
        period = self._config.autoscaling.period_seconds
        next_at = time.monotonic() + period
        self._snapshot_counts()
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += period
            try:
                await self.evaluate(period)
            except Exception:
                log.exception("target tracking evaluation failed")

    def _call_count(self, endpoint: str, variant: str, container: str | None) -> int:
        metrics = self._metrics
        if metrics is None:
            return 0
        if container is not None:
            stats = metrics.containers.get((endpoint, variant, container))
            return 0 if stats is None else stats.count
        serial = metrics.variants.get((endpoint, variant))
        if serial is not None:
            return serial.count
        return sum(
            s.count for k, s in metrics.containers.items() if k[0] == endpoint and k[1] == variant
        )

    def _snapshot_counts(self) -> dict[tuple[str, ...], int]:
        """Invocations since the previous snapshot, per (endpoint, variant[, container])."""
        deltas: dict[tuple[str, ...], int] = {}
        if self._metrics is None:
            return deltas
        keys: set[tuple[str, ...]] = set(self._metrics.containers)
        keys.update(k[:2] for k in self._metrics.containers)
        for key in keys:
            count = self._call_count(key[0], key[1], key[2] if len(key) == 3 else None)
            deltas[key] = count - self._last_counts.get(key, count)
            self._last_counts[key] = count
        return deltas

    def _cpu(self) -> dict[tuple[str, str, str, str], float]:
        """CPU percent per (endpoint, variant, instance, container) since the last call."""
        found: dict[tuple[str, str, str, str], float] = {}
        for state in self._endpoints.endpoints.values():
            fleet = state.deployment
            if fleet is None:
                continue
            for slot in fleet.slots:
                if slot.container is None:
                    continue
                sample = self._sampler.sample(slot.container.pids())
                launch = slot.launch
                found[
                    (
                        launch.endpoint_name,
                        launch.variant_name,
                        launch.instance_id,
                        launch.container_name,
                    )
                ] = 0.0 if sample is None else sample[0]
        return found

    async def evaluate(self, period: float) -> None:
        scaling = self.autoscaling
        deltas = self._snapshot_counts()
        cpu = await asyncio.to_thread(self._cpu)
        if scaling is None:
            return
        for policy in scaling.target_tracking_policies():
            state = self._endpoints.endpoints.get(policy.target.endpoint)
            if state is None or state.deployment is None:
                continue
            fleet = state.deployment
            if self._metrics is None and policy.namespace == "AWS/SageMaker":
                # metrics.enabled false: no invocation is counted, and zeros must not read as
                # idle (that would scale in); CPU policies still work (sampled here).
                continue
            instances = max(1, fleet.instance_count(policy.target.variant))
            value = _metric_value(policy, state.name, instances, deltas, cpu, period)
            self._track(policy, state.name, fleet.instance_count(policy.target.variant), value)

    def _track(self, policy: TargetTracking, endpoint: str, current: int, value: float) -> None:
        scaling = self.autoscaling
        assert scaling is not None
        target = scaling.target(policy.target)
        if target is None:
            return
        key = (policy.target.key, policy.name)
        memory = self._policy_state.setdefault(key, _PolicyState())
        settings = self._config.autoscaling
        keep = max(settings.scale_out_datapoints, settings.scale_in_datapoints)
        memory.datapoints.append(value)
        log.debug("policy %s of %s: datapoint %g", policy.name, policy.target.resource_id, value)
        while len(memory.datapoints) > keep:
            memory.datapoints.popleft()
        points = list(memory.datapoints)
        now = time.monotonic()
        if self.is_changing(endpoint):
            return
        low, high = int(target["MinCapacity"]), int(target["MaxCapacity"])
        suspended = target.get("SuspendedState", {})
        wanted = min(high, max(low, math.ceil(current * value / policy.target_value)))
        above = points[-settings.scale_out_datapoints :]
        if (
            len(above) == settings.scale_out_datapoints
            and all(p > policy.target_value for p in above)
            and wanted > current
            and now - memory.last_scale_out >= policy.scale_out_cooldown
            and not suspended.get("DynamicScalingOutSuspended")
        ):
            memory.last_scale_out = now
            memory.datapoints.clear()
            self._scale(policy, current, wanted, value, "AlarmHigh", "greater than", now)
            return
        below = points[-settings.scale_in_datapoints :]
        if (
            len(below) == settings.scale_in_datapoints
            and all(p < policy.target_value * SCALE_IN_RATIO for p in below)
            and wanted < current
            and not policy.disable_scale_in
            and now - memory.last_scale_in >= policy.scale_in_cooldown
            and now - memory.last_scale_out >= policy.scale_out_cooldown
            and not suspended.get("DynamicScalingInSuspended")
        ):
            memory.last_scale_in = now
            memory.datapoints.clear()
            self._scale(policy, current, wanted, value, "AlarmLow", "less than", now)

    def _scale(
        self,
        policy: TargetTracking,
        current: int,
        wanted: int,
        value: float,
        side: str,
        comparison: str,
        crossed_at: float,
    ) -> None:
        scaling = self.autoscaling
        assert scaling is not None
        points = (
            self._config.autoscaling.scale_out_datapoints
            if side == "AlarmHigh"
            else self._config.autoscaling.scale_in_datapoints
        )
        alarm = f"TargetTracking-{policy.target.resource_id}-{side}"
        cause = (
            f"monitor alarm {alarm} in state ALARM triggered policy {policy.name} "
            f"({points} datapoints {comparison} the threshold {policy.target_value:g}; last "
            f"{value:g}) changing the desired capacity from {current} to {wanted}"
        )
        activity = scaling.scale(policy.target, current, wanted, cause)
        if side == "AlarmHigh" and activity["StatusCode"] == "Successful":
            task = self._changing.get((policy.target.endpoint.lower(), policy.target.variant))
            if task is not None:
                task.add_done_callback(
                    lambda t: (
                        None
                        if t.cancelled() or t.exception() is not None
                        else self.scale_out_latencies.append(time.monotonic() - crossed_at)
                    )
                )

    async def stop(self) -> None:
        tasks = list(self._changing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _metric_value(
    policy: TargetTracking,
    endpoint: str,
    instances: int,
    deltas: Mapping[tuple[str, ...], int],
    cpu: Mapping[tuple[str, str, str, str], float],
    period: float,
) -> float:
    variant = policy.target.variant
    container = policy.dimensions.get("ContainerName")
    per_minute = 60.0 / period
    if policy.namespace == "AWS/SageMaker":
        key = (endpoint, variant) if container is None else (endpoint, variant, container)
        invocations = deltas.get(key, 0) * per_minute
        if policy.metric_name == "InvocationsPerInstance":
            return invocations / instances
        return invocations
    # CPU: per instance, the container named (or all containers summed), then Average/Max/...
    by_instance: dict[str, dict[str, float]] = {}
    for (ep, var, instance, name), percent in cpu.items():
        if ep == endpoint and var == variant:
            by_instance.setdefault(instance, {})[name] = percent
    if not by_instance:
        return 0.0
    if policy.namespace == ROUTER_NAMESPACE:  # HottestContainerCPUUtilization
        names = {n for per in by_instance.values() for n in per}
        return max(
            sum(per.get(n, 0.0) for per in by_instance.values()) / len(by_instance) for n in names
        )
    values = [
        per.get(container, 0.0) if container is not None else sum(per.values())
        for per in by_instance.values()
    ]
    statistic = policy.statistic
    if statistic == "Maximum":
        return max(values)
    if statistic == "Minimum":
        return min(values)
    if statistic == "Sum":
        return sum(values)
    if statistic == "SampleCount":
        return float(len(values))
    return sum(values) / len(values)


__all__ = ["Scaler", "TargetKey"]
