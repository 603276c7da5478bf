"""What the control plane keeps about each resource, and how Describe and List show it.

Models and endpoint configs are immutable once created (as in SageMaker), so their records are
frozen. An endpoint deploys a :class:`FleetSnapshot`: its endpoint config and the models it
names, copied when the fleet was requested, so deleting the model or config later (which
SageMaker allows) changes nothing about the endpoint, before or after a restart.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ..spec import EndpointConfigSpec, ModelSpec

_MODEL_SHAPE = ("PrimaryContainer", "Containers", "InferenceExecutionConfig")
#: Members of the CreateModel request that DescribeModel's output has too (Tags is not one).
_MODEL_OUTPUT_EXTRAS = (
    "ExecutionRoleArn",
    "VpcConfig",
    "EnableNetworkIsolation",
    "DeploymentRecommendation",
)
#: The same for CreateEndpointConfig / DescribeEndpointConfig.
_ENDPOINT_CONFIG_OUTPUT_EXTRAS = (
    "DataCaptureConfig",
    "KmsKeyId",
    "AsyncInferenceConfig",
    "ExplainerConfig",
    "ShadowProductionVariants",
    "ExecutionRoleArn",
    "VpcConfig",
    "EnableNetworkIsolation",
    "MetricsConfig",
)
#: SageMaker's FailureReason is at most 1024 characters.
FAILURE_REASON_MAX = 1024

_Value = TypeVar("_Value")


class NameMap(MutableMapping[str, _Value]):
    """A dict keyed by resource name where names compare ignoring case (as SageMaker's do);
    iteration yields each name as it was first written."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[str, _Value]] = {}

    def __getitem__(self, name: str) -> _Value:
        return self._items[name.lower()][1]

    def __setitem__(self, name: str, value: _Value) -> None:
        existing = self._items.get(name.lower())
        self._items[name.lower()] = (existing[0] if existing else name, value)

    def __delitem__(self, name: str) -> None:
        del self._items[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"NameMap({ {name: value for name, value in self._items.values()}!r})"


@dataclass(frozen=True, slots=True)
class ModelRecord:
    spec: ModelSpec
    created: float

    def describe(self, model_arn: str) -> dict[str, Any]:
        request = self.spec.to_request()
        described: dict[str, Any] = {"ModelName": self.spec.name, "ModelArn": model_arn}
        # As given: PrimaryContainer (mode only when Direct) or Containers with the mode.
        described.update({k: request[k] for k in _MODEL_SHAPE if k in request})
        described["CreationTime"] = self.created
        described.update({k: request[k] for k in _MODEL_OUTPUT_EXTRAS if k in request})
        return described

    def summary(self, model_arn: str) -> dict[str, Any]:
        return {"ModelName": self.spec.name, "ModelArn": model_arn, "CreationTime": self.created}


@dataclass(frozen=True, slots=True)
class EndpointConfigRecord:
    spec: EndpointConfigSpec
    created: float

    def describe(self, config_arn: str) -> dict[str, Any]:
        request = self.spec.to_request()
        described: dict[str, Any] = {
            "EndpointConfigName": self.spec.name,
            "EndpointConfigArn": config_arn,
            "ProductionVariants": request["ProductionVariants"],
            "CreationTime": self.created,
        }
        described.update({k: request[k] for k in _ENDPOINT_CONFIG_OUTPUT_EXTRAS if k in request})
        return described

    def summary(self, config_arn: str) -> dict[str, Any]:
        return {
            "EndpointConfigName": self.spec.name,
            "EndpointConfigArn": config_arn,
            "CreationTime": self.created,
        }


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """An endpoint config and its models as they were when a fleet was requested; ``models``
    is keyed by each variant's ``ModelName`` exactly as the config spells it."""

    config: EndpointConfigSpec
    models: Mapping[str, ModelSpec]
    #: When the images were resolved (DescribeEndpoint's ``ResolutionTime``).
    at: float

    @property
    def container_count(self) -> int:
        """Containers this fleet runs: every container of every instance of every variant."""
        return sum(
            variant.initial_instance_count * len(self.models[variant.model_name].containers)
            for variant in self.config.variants
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config.to_request(),
            "models": {name: model.to_request() for name, model in self.models.items()},
            "at": self.at,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> FleetSnapshot:
        # A lowered container limit does not take away an endpoint that already runs.
        return cls(
            config=EndpointConfigSpec.from_request(raw["config"]),
            models={name: ModelSpec.from_stored(body) for name, body in raw["models"].items()},
            at=float(raw["at"]),
        )

    def variant_summaries(self, *, running: bool) -> list[dict[str, Any]]:
        """DescribeEndpoint's ``ProductionVariants`` (``running``: the fleet serves) or the
        ``ProductionVariants`` of its ``PendingDeploymentSummary`` (not serving yet)."""
        summaries = []
        for variant in self.config.variants:
            model = self.models[variant.model_name]
            images = list(dict.fromkeys(container.image for container in model.containers))
            summary: dict[str, Any] = {
                "VariantName": variant.variant_name,
                "DeployedImages": [
                    {"SpecifiedImage": image, "ResolvedImage": image, "ResolutionTime": self.at}
                    for image in images
                ],
                "CurrentWeight": variant.initial_variant_weight if running else 0.0,
                "DesiredWeight": variant.initial_variant_weight,
                "CurrentInstanceCount": variant.initial_instance_count if running else 0,
                "DesiredInstanceCount": variant.initial_instance_count,
            }
            instance_type = variant.extra.get("InstanceType")
            if not running and isinstance(instance_type, str):
                summary["InstanceType"] = instance_type
            summaries.append(summary)
        return summaries


def truncate_reason(reason: str) -> str:
    if len(reason) <= FAILURE_REASON_MAX:
        return reason
    return reason[: FAILURE_REASON_MAX - 3] + "..."
