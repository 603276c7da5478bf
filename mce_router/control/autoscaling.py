"""Application Auto Scaling's objects for SageMaker endpoint variants: scalable targets, scaling
policies and scaling activities, validated as AWS validates them and kept in the state file.

One scalable target per variant (``ServiceNamespace`` ``sagemaker``, ``ResourceId``
``endpoint/<EndpointName>/variant/<VariantName>``, ``ScalableDimension``
``sagemaker:variant:DesiredInstanceCount``); its policies are target tracking
(``SageMakerVariantInvocationsPerInstance``, or a ``CustomizedMetricSpecification`` on the
router's own metrics, see :data:`CUSTOM_METRICS`) or step scaling (stored and described; no
CloudWatch alarm exists to fire it). The decisions are
:mod:`mce_router.endpoints.scaling`'s; this module only keeps what the API says and the
activities the scaler reports, and asks the :class:`ScalableResources` it is given whether a
variant exists and to change its capacity.

Each Describe* answers newest activities first and targets and policies in the order they were
created; ``NextToken`` is the opaque key of the last object of the page.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ..errors import InvalidNextToken, ObjectNotFound, ValidationError
from .store import Store

SERVICE_NAMESPACE: Final = "sagemaker"
DIMENSION: Final = "sagemaker:variant:DesiredInstanceCount"
PREDEFINED_METRIC: Final = "SageMakerVariantInvocationsPerInstance"
#: Namespace of the router's own metrics that SageMaker does not have.
ROUTER_NAMESPACE: Final = "MceRouter"
#: (Namespace, MetricName) a CustomizedMetricSpecification may name, and which dimensions
#: besides EndpointName and VariantName it takes.
CUSTOM_METRICS: Final[Mapping[tuple[str, str], frozenset[str]]] = {
    ("AWS/SageMaker", "Invocations"): frozenset({"ContainerName"}),
    ("AWS/SageMaker", "InvocationsPerInstance"): frozenset({"ContainerName"}),
    ("/aws/sagemaker/Endpoints", "CPUUtilization"): frozenset({"ContainerName"}),
    # The per-container answer to the multi-container warning: the CPU of the busiest container
    # per instance, so a mix shifted toward a CPU-heavy container scales at the same rate.
    (ROUTER_NAMESPACE, "HottestContainerCPUUtilization"): frozenset(),
}
STATISTICS: Final = ("Average", "Minimum", "Maximum", "SampleCount", "Sum")
POLICY_TYPES: Final = ("StepScaling", "TargetTrackingScaling", "PredictiveScaling")
ADJUSTMENT_TYPES: Final = ("ChangeInCapacity", "PercentChangeInCapacity", "ExactCapacity")
MAX_RESULTS: Final = 50
#: Activities kept per scalable target (AWS keeps six weeks of them).
ACTIVITIES_KEPT: Final = 500
_RESOURCE_ID = re.compile(r"endpoint/([^/]+)/variant/([^/]+)")
_POLICY_NAME = re.compile(r"[\x20-\x7e]{1,256}")
_MAX_COOLDOWN = 86400


class ScalableResources(Protocol):
    """What autoscaling needs of the endpoints (the endpoint manager provides it)."""

    def desired_instance_count(self, endpoint: str, variant: str) -> int:
        """The variant's DesiredInstanceCount; ValidationError when there is no such variant."""
        ...

    def set_desired_instance_count(self, endpoint: str, variant: str, count: int) -> None: ...


@dataclass(frozen=True, slots=True)
class TargetKey:
    endpoint: str
    variant: str

    @property
    def resource_id(self) -> str:
        return f"endpoint/{self.endpoint}/variant/{self.variant}"

    @property
    def key(self) -> str:
        return f"{self.resource_id}|{DIMENSION}"


def _missing(member: str) -> ValidationError:
    wire = member[0].lower() + member[1:]
    return ValidationError(
        f"1 validation error detected: Value null at '{wire}' failed to satisfy constraint: "
        "Member must not be null",
        field=member,
    )


def _constraint(member: str, value: Any, constraint: str) -> ValidationError:
    wire = member[0].lower() + member[1:]
    return ValidationError(
        f"1 validation error detected: Value '{value}' at '{wire}' failed to satisfy "
        f"constraint: {constraint}",
        field=member,
    )


def _string(params: Mapping[str, Any], member: str, *, required: bool = True) -> str | None:
    value = params.get(member)
    if value is None:
        if required:
            raise _missing(member)
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{member} must be a string, not {type(value).__name__}.")
    if not value or len(value) > 1600:
        raise _constraint(
            member,
            value,
            "Member must have length between 1 and 1600"
            if value
            else "Member must have length greater than or equal to 1",
        )
    return value


def _integer(params: Mapping[str, Any], member: str) -> int | None:
    value = params.get(member)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"{member} must be an integer, not {type(value).__name__}.")
    return value


def _number(params: Mapping[str, Any], member: str) -> float | None:
    value = params.get(member)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValidationError(f"{member} must be a number, not {type(value).__name__}.")
    return float(value)


def _string_list(params: Mapping[str, Any], member: str) -> list[str] | None:
    value = params.get(member)
    if value is not None and (
        not isinstance(value, list) or not all(isinstance(v, str) for v in value)
    ):
        raise ValidationError(f"{member} must be a list of strings.")
    return value


def _mapping(params: Mapping[str, Any], member: str) -> Mapping[str, Any] | None:
    value = params.get(member)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValidationError(f"{member} must be an object, not {type(value).__name__}.")
    return value


def parse_target(params: Mapping[str, Any], *, dimension_required: bool = True) -> TargetKey:
    """ServiceNamespace, ResourceId and ScalableDimension of a request, checked as AWS does."""
    namespace = _string(params, "ServiceNamespace")
    resource_id = _string(params, "ResourceId")
    dimension = _string(params, "ScalableDimension", required=dimension_required)
    _check_namespace(namespace)
    assert resource_id is not None
    return _target_key(resource_id, dimension)


def _check_namespace(namespace: str | None) -> None:
    if namespace != SERVICE_NAMESPACE:
        raise ValidationError(
            f"Unsupported service namespace {namespace}: this router scales SageMaker endpoint "
            f"variants only (ServiceNamespace {SERVICE_NAMESPACE})."
        )


def _target_key(resource_id: str, dimension: str | None) -> TargetKey:
    if dimension is not None and dimension != DIMENSION:
        raise ValidationError(
            f"Unsupported scalable dimension {dimension} for service namespace "
            f"{SERVICE_NAMESPACE}: use {DIMENSION}."
        )
    match = _RESOURCE_ID.fullmatch(resource_id)
    if match is None:
        raise ValidationError(
            f"Unsupported resource ID {resource_id}: a SageMaker variant's ResourceId is "
            "endpoint/<EndpointName>/variant/<VariantName>."
        )
    return TargetKey(match.group(1), match.group(2))


def _where(key: TargetKey) -> str:
    return (
        f"service namespace: {SERVICE_NAMESPACE}, resource ID: {key.resource_id}, "
        f"scalable dimension: {DIMENSION}"
    )


def _page(
    items: list[dict[str, Any]], keys: list[str], params: Mapping[str, Any], result_key: str
) -> dict[str, Any]:
    limit = _integer(params, "MaxResults")
    if limit is None:
        limit = MAX_RESULTS
    if limit > MAX_RESULTS or limit < 0:
        raise _constraint(
            "MaxResults",
            limit,
            f"Member must have value less than or equal to {MAX_RESULTS}"
            if limit > MAX_RESULTS
            else "Member must have value greater than or equal to 0",
        )
    token = params.get("NextToken")
    start = 0
    if token is not None:
        try:
            after = base64.urlsafe_b64decode(str(token).encode()).decode()
            start = keys.index(after) + 1
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidNextToken("Invalid token", field="NextToken") from None
    page = items[start : start + limit] if limit else []
    out: dict[str, Any] = {result_key: page}
    if start + len(page) < len(items) and page:
        last = keys[start + len(page) - 1]
        out["NextToken"] = base64.urlsafe_b64encode(last.encode()).decode()
    return out


@dataclass(frozen=True, slots=True)
class TargetTracking:
    """A target tracking policy as the scaler applies it."""

    target: TargetKey
    name: str
    target_value: float
    #: (Namespace, MetricName, extra dimensions, Statistic); the predefined metric is
    #: ("AWS/SageMaker", "InvocationsPerInstance", {}, "Sum").
    namespace: str
    metric_name: str
    dimensions: Mapping[str, str]
    statistic: str
    scale_out_cooldown: float
    scale_in_cooldown: float
    disable_scale_in: bool


class AutoScaling:
    """The targets, policies and activities of one router; each method is one API operation
    (request body in, output body out)."""

    def __init__(
        self,
        store: Store,
        resources: ScalableResources,
        region: str,
        account_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._resources = resources
        self._region = region
        self._account = account_id
        self._clock = clock
        self.targets: dict[str, dict[str, Any]] = dict(store.list_autoscaling("target"))
        self.policies: dict[str, dict[str, Any]] = dict(store.list_autoscaling("policy"))
        self.activities: dict[str, dict[str, Any]] = dict(store.list_autoscaling("activity"))

    # --- scalable targets --------------------------------------------------------------------

    def register_scalable_target(self, params: Mapping[str, Any]) -> dict[str, Any]:
        key = parse_target(params)
        minimum = _integer(params, "MinCapacity")
        maximum = _integer(params, "MaxCapacity")
        suspended = _mapping(params, "SuspendedState")
        role = _string(params, "RoleARN", required=False)
        current = self._resources.desired_instance_count(key.endpoint, key.variant)
        existing = self.targets.get(key.key)
        if existing is None and (minimum is None or maximum is None):
            raise ValidationError(
                "MinCapacity and MaxCapacity are required to register a new scalable target."
            )
        target = dict(existing or {})
        low = minimum if minimum is not None else int(target["MinCapacity"])
        high = maximum if maximum is not None else int(target["MaxCapacity"])
        for member, value in (("MinCapacity", low), ("MaxCapacity", high)):
            if value < 1:
                raise _constraint(member, value, "a SageMaker variant needs at least 1 instance")
        if low > high:
            raise ValidationError(
                f"Maximum capacity cannot be less than minimum capacity (MinCapacity {low}, "
                f"MaxCapacity {high})."
            )
        if existing is None:
            target = {
                "ServiceNamespace": SERVICE_NAMESPACE,
                "ResourceId": key.resource_id,
                "ScalableDimension": DIMENSION,
                "RoleARN": role
                or f"arn:aws:iam::{self._account}:role/aws-service-role/"
                "sagemaker.application-autoscaling.amazonaws.com/"
                "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint",
                "CreationTime": self._clock(),
                "ScalableTargetARN": f"arn:aws:application-autoscaling:{self._region}:"
                f"{self._account}:scalable-target/{uuid.uuid4().hex[:28]}",
                "SuspendedState": {
                    "DynamicScalingInSuspended": False,
                    "DynamicScalingOutSuspended": False,
                    "ScheduledScalingSuspended": False,
                },
            }
        target["MinCapacity"], target["MaxCapacity"] = low, high
        if suspended is not None:
            state = dict(target["SuspendedState"])
            for member in state:
                if member in suspended:
                    state[member] = bool(suspended[member])
            target["SuspendedState"] = state
        self._store.for_change().change_autoscaling(put=[("target", key.key, target)])
        self.targets[key.key] = target
        # Bounds that exclude the capacity move it inside at once, as AWS does.
        if current < low:
            self.scale(key, current, low, f"minimum capacity was set to {low}")
        elif current > high:
            self.scale(key, current, high, f"maximum capacity was set to {high}")
        return {"ScalableTargetARN": target["ScalableTargetARN"]}

    def deregister_scalable_target(self, params: Mapping[str, Any]) -> dict[str, Any]:
        key = parse_target(params)
        if key.key not in self.targets:
            raise ObjectNotFound(f"No scalable target found for {_where(key)}")
        policies = [k for k in self.policies if k.startswith(key.key + "|")]
        self._store.for_change().change_autoscaling(
            delete=[("target", key.key), *(("policy", k) for k in policies)]
        )
        del self.targets[key.key]
        for k in policies:
            del self.policies[k]
        return {}

    def describe_scalable_targets(self, params: Mapping[str, Any]) -> dict[str, Any]:
        _check_namespace(_string(params, "ServiceNamespace"))
        dimension = _string(params, "ScalableDimension", required=False)
        ids = _string_list(params, "ResourceIds")
        keys = [
            k
            for k, t in self.targets.items()
            if (dimension is None or t["ScalableDimension"] == dimension)
            and (ids is None or not ids or t["ResourceId"] in ids)
        ]
        return _page([self.targets[k] for k in keys], keys, params, "ScalableTargets")

    def target(self, key: TargetKey) -> dict[str, Any] | None:
        return self.targets.get(key.key)

    # --- scaling policies --------------------------------------------------------------------

    def put_scaling_policy(self, params: Mapping[str, Any]) -> dict[str, Any]:
        name = _string(params, "PolicyName")
        assert name is not None
        if _POLICY_NAME.fullmatch(name) is None:
            raise _constraint(
                "PolicyName",
                name,
                "Member must satisfy regular expression "
                "pattern: \\p{Print}+ (at most 256 characters)",
            )
        key = parse_target(params)
        policy_type = params.get("PolicyType", "StepScaling")
        if policy_type not in POLICY_TYPES:
            raise _constraint(
                "PolicyType",
                policy_type,
                f"Member must satisfy enum value set: [{', '.join(POLICY_TYPES)}]",
            )
        if key.key not in self.targets:
            raise ObjectNotFound(f"No scalable target registered for {_where(key)}")
        policy: dict[str, Any] = {
            "PolicyName": name,
            "ServiceNamespace": SERVICE_NAMESPACE,
            "ResourceId": key.resource_id,
            "ScalableDimension": DIMENSION,
            "PolicyType": policy_type,
        }
        if policy_type == "TargetTrackingScaling":
            config = _mapping(params, "TargetTrackingScalingPolicyConfiguration")
            if config is None:
                raise ValidationError(
                    "TargetTrackingScalingPolicyConfiguration is required for a policy of type "
                    "TargetTrackingScaling."
                )
            policy["TargetTrackingScalingPolicyConfiguration"] = _target_tracking(config, key)
        elif policy_type == "StepScaling":
            config = _mapping(params, "StepScalingPolicyConfiguration")
            if config is None:
                raise ValidationError(
                    "StepScalingPolicyConfiguration is required for a policy of type StepScaling."
                )
            policy["StepScalingPolicyConfiguration"] = _step_scaling(config)
        else:
            raise ValidationError(
                "PredictiveScaling is not supported for service namespace sagemaker."
            )
        policy_key = f"{key.key}|{name}"
        existing = self.policies.get(policy_key)
        policy_id = existing["PolicyARN"].split(":")[6] if existing else str(uuid.uuid4())
        policy["PolicyARN"] = (
            f"arn:aws:autoscaling:{self._region}:{self._account}:scalingPolicy:{policy_id}:"
            f"resource/{SERVICE_NAMESPACE}/{key.resource_id}:policyName/{name}"
        )
        alarms = []
        if policy_type == "TargetTrackingScaling":
            for side in ("AlarmHigh", "AlarmLow"):
                alarm = f"TargetTracking-{key.resource_id}-{side}-{policy_id}"
                alarms.append(
                    {
                        "AlarmName": alarm,
                        "AlarmARN": f"arn:aws:cloudwatch:{self._region}:{self._account}:"
                        f"alarm:{alarm}",
                    }
                )
        policy["Alarms"] = alarms
        policy["CreationTime"] = existing["CreationTime"] if existing else self._clock()
        self._store.for_change().change_autoscaling(put=[("policy", policy_key, policy)])
        self.policies[policy_key] = policy
        return {"PolicyARN": policy["PolicyARN"], "Alarms": alarms}

    def delete_scaling_policy(self, params: Mapping[str, Any]) -> dict[str, Any]:
        name = _string(params, "PolicyName")
        key = parse_target(params)
        policy_key = f"{key.key}|{name}"
        if policy_key not in self.policies:
            raise ObjectNotFound(f"No scaling policy found for {_where(key)}, policy name: {name}")
        self._store.for_change().change_autoscaling(delete=[("policy", policy_key)])
        del self.policies[policy_key]
        return {}

    def describe_scaling_policies(self, params: Mapping[str, Any]) -> dict[str, Any]:
        _check_namespace(_string(params, "ServiceNamespace"))
        resource_id = _string(params, "ResourceId", required=False)
        dimension = _string(params, "ScalableDimension", required=False)
        names = _string_list(params, "PolicyNames")
        keys = [
            k
            for k, p in self.policies.items()
            if (resource_id is None or p["ResourceId"] == resource_id)
            and (dimension is None or p["ScalableDimension"] == dimension)
            and (not names or p["PolicyName"] in names)
        ]
        return _page([self.policies[k] for k in keys], keys, params, "ScalingPolicies")

    def target_tracking_policies(self) -> list[TargetTracking]:
        """Every target tracking policy, as the scaler applies them."""
        found = []
        for policy in self.policies.values():
            config = policy.get("TargetTrackingScalingPolicyConfiguration")
            if config is None:
                continue
            key = _target_key(policy["ResourceId"], DIMENSION)
            custom = config.get("CustomizedMetricSpecification")
            if custom is None:
                namespace, metric, dims, statistic = (
                    "AWS/SageMaker",
                    "InvocationsPerInstance",
                    {},
                    "Sum",
                )
            else:
                namespace, metric, statistic = (
                    custom["Namespace"],
                    custom["MetricName"],
                    custom["Statistic"],
                )
                dims = {
                    d["Name"]: d["Value"]
                    for d in custom.get("Dimensions", [])
                    if d["Name"] not in ("EndpointName", "VariantName")
                }
            found.append(
                TargetTracking(
                    key,
                    policy["PolicyName"],
                    float(config["TargetValue"]),
                    namespace,
                    metric,
                    dims,
                    statistic,
                    float(config.get("ScaleOutCooldown", 300)),
                    float(config.get("ScaleInCooldown", 300)),
                    bool(config.get("DisableScaleIn", False)),
                )
            )
        return found

    # --- activities --------------------------------------------------------------------------

    def scale(
        self, key: TargetKey, current: int, desired: int, cause: str, *, at: float | None = None
    ) -> dict[str, Any]:
        """Set the variant's capacity and record the activity, worded as AWS words it."""
        now = self._clock() if at is None else at
        activity: dict[str, Any] = {
            "ActivityId": str(uuid.uuid4()),
            "ServiceNamespace": SERVICE_NAMESPACE,
            "ResourceId": key.resource_id,
            "ScalableDimension": DIMENSION,
            "Description": f"Setting desired instance count to {desired}.",
            "Cause": f"{_cause_time(now)} {cause}",
            "StartTime": now,
        }
        try:
            self._resources.set_desired_instance_count(key.endpoint, key.variant, desired)
        except Exception as exc:
            activity.update(
                StatusCode="Failed",
                StatusMessage=f"Failed to set desired instance count to {desired}. Reason: "
                f"{getattr(exc, 'message', str(exc))}",
                EndTime=self._clock(),
            )
        else:
            activity.update(
                StatusCode="Successful",
                StatusMessage=f"Successfully set desired instance count to {desired}. Change "
                f"successfully fulfilled by {SERVICE_NAMESPACE}.",
                EndTime=self._clock(),
            )
        self.record_activity(key, activity)
        return activity

    def record_activity(self, key: TargetKey, activity: dict[str, Any]) -> None:
        mine = [k for k, a in self.activities.items() if a["ResourceId"] == key.resource_id]
        dropped = mine[: max(0, len(mine) + 1 - ACTIVITIES_KEPT)]
        activity_key = f"{activity['StartTime']:020.6f}|{activity['ActivityId']}"
        if not self._store.closed:
            self._store.change_autoscaling(
                put=[("activity", activity_key, activity)],
                delete=[("activity", k) for k in dropped],
            )
        for k in dropped:
            del self.activities[k]
        self.activities[activity_key] = activity

    def describe_scaling_activities(self, params: Mapping[str, Any]) -> dict[str, Any]:
        _check_namespace(_string(params, "ServiceNamespace"))
        resource_id = _string(params, "ResourceId", required=False)
        dimension = _string(params, "ScalableDimension", required=False)
        keys = sorted(
            (
                k
                for k, a in self.activities.items()
                if (resource_id is None or a["ResourceId"] == resource_id)
                and (dimension is None or a["ScalableDimension"] == dimension)
            ),
            reverse=True,
        )
        return _page([self.activities[k] for k in keys], keys, params, "ScalingActivities")


def _cause_time(at: float) -> str:
    """AWS starts a Cause with the time: ``at 2026-12-03T12:00:00Z``."""
    return "at " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _cooldown(config: Mapping[str, Any], member: str) -> None:
    value = _integer(config, member)
    if value is not None and not 0 <= value <= _MAX_COOLDOWN:
        raise _constraint(member, value, f"Member must have value between 0 and {_MAX_COOLDOWN}")


def _target_tracking(config: Mapping[str, Any], key: TargetKey) -> dict[str, Any]:
    value = _number(config, "TargetValue")
    if value is None:
        raise _missing("TargetValue")
    if not 8.515920e-109 <= value <= 6.174271e107:
        raise ValidationError(
            f"The target value {value} must be between 8.515920e-109 and 6.174271e+107."
        )
    for member in ("ScaleOutCooldown", "ScaleInCooldown"):
        _cooldown(config, member)
    disable = config.get("DisableScaleIn")
    if disable is not None and not isinstance(disable, bool):
        raise ValidationError("DisableScaleIn must be a boolean.")
    predefined = _mapping(config, "PredefinedMetricSpecification")
    custom = _mapping(config, "CustomizedMetricSpecification")
    if (predefined is None) == (custom is None):
        raise ValidationError(
            "Exactly one of PredefinedMetricSpecification and CustomizedMetricSpecification "
            "must be specified."
        )
    if predefined is not None:
        metric = predefined.get("PredefinedMetricType")
        if metric is None:
            raise _missing("PredefinedMetricType")
        if metric != PREDEFINED_METRIC:
            raise ValidationError(
                f"Unsupported metric type {metric} for service namespace {SERVICE_NAMESPACE} "
                f"and scalable dimension {DIMENSION}: use {PREDEFINED_METRIC}."
            )
    if custom is not None:
        _customized(custom, key)
    return dict(config)


def _customized(custom: Mapping[str, Any], key: TargetKey) -> None:
    if "Metrics" in custom:
        raise ValidationError(
            "CustomizedMetricSpecification.Metrics (metric math) is not supported by this "
            "router; name one metric with MetricName, Namespace, Dimensions and Statistic."
        )
    for member in ("MetricName", "Namespace", "Statistic"):
        if custom.get(member) is None:
            raise ValidationError(
                f"CustomizedMetricSpecification.{member} is required when Metrics is not given."
            )
    if custom["Statistic"] not in STATISTICS:
        raise _constraint(
            "Statistic",
            custom["Statistic"],
            f"Member must satisfy enum value set: [{', '.join(STATISTICS)}]",
        )
    metric = (str(custom["Namespace"]), str(custom["MetricName"]))
    extra = CUSTOM_METRICS.get(metric)
    if extra is None:
        known = ", ".join(f"{n} {m}" for n, m in CUSTOM_METRICS)
        raise ValidationError(
            f"Metric {metric[1]} in namespace {metric[0]} is not one this router measures; "
            f"it measures: {known}."
        )
    dimensions = custom.get("Dimensions") or []
    if not isinstance(dimensions, list):
        raise ValidationError("CustomizedMetricSpecification.Dimensions must be a list.")
    names: dict[str, str] = {}
    for dimension in dimensions:
        if (
            not isinstance(dimension, Mapping)
            or not isinstance(dimension.get("Name"), str)
            or not isinstance(dimension.get("Value"), str)
        ):
            raise ValidationError("Each dimension needs a Name and a Value (strings).")
        names[dimension["Name"]] = dimension["Value"]
    if names.get("EndpointName") != key.endpoint or names.get("VariantName") != key.variant:
        raise ValidationError(
            "The metric's dimensions must include EndpointName "
            f"{key.endpoint} and VariantName {key.variant}, the scalable target's variant."
        )
    unknown = set(names) - {"EndpointName", "VariantName"} - extra
    if unknown:
        raise ValidationError(
            f"Dimension {sorted(unknown)[0]} does not exist for metric {metric[1]} in "
            f"namespace {metric[0]}."
        )


def _step_scaling(config: Mapping[str, Any]) -> dict[str, Any]:
    adjustment = config.get("AdjustmentType")
    if adjustment is not None and adjustment not in ADJUSTMENT_TYPES:
        raise _constraint(
            "AdjustmentType",
            adjustment,
            f"Member must satisfy enum value set: [{', '.join(ADJUSTMENT_TYPES)}]",
        )
    steps = config.get("StepAdjustments")
    if not isinstance(steps, list) or not steps:
        raise ValidationError("StepAdjustments must contain at least one step adjustment.")
    for step in steps:
        if not isinstance(step, Mapping) or _integer(step, "ScalingAdjustment") is None:
            raise _missing("ScalingAdjustment")
    _cooldown(config, "Cooldown")
    return dict(config)
