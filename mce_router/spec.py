"""SageMaker resource shapes: models, endpoint configs and endpoints, parsed and validated.

The request bodies of CreateModel, CreateEndpointConfig and CreateEndpoint (dicts as boto3
sends them as JSON) become frozen dataclasses. Every rule broken raises
:class:`~mce_router.errors.ValidationError` whose ``field`` is the wire path in boto3's
parameter names (``Containers[1].ContainerHostname``, 0-based), whose ``rule`` states the
constraint, and whose message reads like SageMaker's::

    1 validation error detected: Value 'bad_name' at 'Containers[1].ContainerHostname'
    failed to satisfy constraint: Member must satisfy regular expression pattern: ...

Only the first broken rule is reported. Parameters this module does not interpret
(ExecutionRoleArn, Tags, ModelDataUrl, InstanceType, ServerlessConfig, ...) are kept in
``extra`` so Describe calls can echo them; they are deep-copied into read-only structures
(mappings become ``MappingProxyType``, lists become tuples) and turned back into plain
dicts and lists by ``to_request()``.

Choices where SageMaker is silent or where this router differs on purpose:

* ``PrimaryContainer`` is accepted as a single-container model, served exactly as if it were
  ``Containers=[PrimaryContainer]`` (errors still name ``PrimaryContainer.*``). SageMaker
  describes a model with what it was given, so ``to_request()`` answers ``PrimaryContainer``
  for such a model (``primary``), with ``InferenceExecutionConfig`` only when the mode is
  Direct; bodies stored before ``primary`` existed have ``Containers`` and read back as
  before. Giving both is refused.
* ``ContainerHostname`` values must be unique compared case-insensitively, because they
  behave like DNS labels; ``VariantName`` values likewise, because they end up in log
  stream and metric names. :meth:`ModelSpec.container` looks names up exactly
  (case-sensitively), as IAM's ``StringLike`` on ``sagemaker:TargetContainerHostname`` does:
  routing ``Special`` to ``special`` would step around a Deny written for ``special*``.
* In Serial mode with some but not all hostnames given, the error names the first
  container without one.
* Serial containers without hostnames are named ``container-1``, ``container-2``, ... by
  their 1-based position, the names SageMaker uses in its error messages.
* A parameter name that differs from a known one only in letter case (``containerHostname``,
  ``inferenceExecutionConfig``) is refused instead of being kept as an extra, because
  keeping it would silently change the meaning (a Direct model would become Serial).
  ``InferenceExecutionConfig`` accepts no member but ``Mode`` for the same reason.
* A JSON ``null`` for an optional parameter counts as absent.
* ``Environment`` is echoed by ``to_request()`` only when it has entries.
* ``InitialInstanceCount`` is capped at :data:`MAX_INSTANCE_COUNT`: every instance is a full
  set of local containers.

:data:`NAME_PATTERN` ends in ``$``, which also matches before a final newline: test names
with ``NAME_PATTERN.fullmatch``, never ``match``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from mce_router.errors import ConfigError

from .shapes import (
    as_int,
    as_list,
    as_number,
    as_str,
    check_length,
    check_unique,
    fail,
    invalid_value,
    join_path,
    missing_value,
    require_mapping,
    required,
    split_known,
    thaw_mapping,
)

__all__ = [
    "DEFAULT_MAX_CONTAINERS",
    "MAX_INSTANCE_COUNT",
    "MAX_VARIANTS",
    "NAME_PATTERN",
    "ContainerSpec",
    "EndpointConfigSpec",
    "EndpointSpec",
    "ExecutionMode",
    "ModelSpec",
    "ProductionVariantSpec",
]


class ExecutionMode(enum.StrEnum):
    """``InferenceExecutionConfig.Mode``: one container per request, or all in sequence."""

    DIRECT = "Direct"
    SERIAL = "Serial"


#: ModelName, EndpointConfigName, EndpointName, VariantName and ContainerHostname.
#: The length limit is checked separately: hyphen runs let the pattern exceed 63 characters.
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
NAME_MAX_LENGTH = 63
#: SageMaker's documented limit of containers per model; the router config may change it.
DEFAULT_MAX_CONTAINERS = 15
MAX_VARIANTS = 10
MAX_INSTANCE_COUNT = 10
IMAGE_MAX_LENGTH = 255
ENVIRONMENT_MAX_ENTRIES = 100
ENVIRONMENT_VALUE_MAX_LENGTH = 1024
ENVIRONMENT_KEY_PATTERN = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,1023}$")
HEALTH_CHECK_TIMEOUT_RANGE = (60, 3600)

# SageMaker prints patterns without the trailing '$'; keep messages identical to its own.
_NAME_PATTERN_TEXT = NAME_PATTERN.pattern.removesuffix("$")
_IMAGE_PATTERN = re.compile(r"\S+")


def _check_name(value: Any, field_path: str) -> str:
    name = as_str(value, field_path)
    if len(name) > NAME_MAX_LENGTH:
        invalid_value(
            field_path, name, f"Member must have length less than or equal to {NAME_MAX_LENGTH}"
        )
    if NAME_PATTERN.fullmatch(name) is None:
        invalid_value(
            field_path,
            name,
            f"Member must satisfy regular expression pattern: {_NAME_PATTERN_TEXT}",
        )
    return name


# --- models -------------------------------------------------------------------------------

_CONTAINER_KEYS = frozenset({"Image", "ContainerHostname", "Environment"})
_MODEL_KEYS = frozenset({"ModelName", "Containers", "PrimaryContainer", "InferenceExecutionConfig"})
_EXECUTION_CONFIG_KEYS = frozenset({"Mode"})


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """One entry of CreateModel's ``Containers``.

    ``hostname`` is ``ContainerHostname`` as given (``None`` when absent); ``name`` is the
    hostname or, for Serial models without hostnames, ``container-<1-based position>``.
    ``environment`` and ``extra`` (every other container parameter) are read-only.
    """

    image: str
    hostname: str | None
    name: str
    environment: Mapping[str, str]
    extra: Mapping[str, Any]

    def to_request(self) -> dict[str, Any]:
        """The container as CreateModel takes it and DescribeModel returns it."""
        request: dict[str, Any] = {}
        if self.hostname is not None:
            request["ContainerHostname"] = self.hostname
        request["Image"] = self.image
        if self.environment:
            request["Environment"] = dict(self.environment)
        request.update(thaw_mapping(self.extra))
        return request


def _parse_environment(value: Any, field_path: str) -> Mapping[str, str]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        invalid_value(field_path, value, "Member must be a JSON object")
    check_length(value, field_path, 0, ENVIRONMENT_MAX_ENTRIES)
    environment: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or ENVIRONMENT_KEY_PATTERN.fullmatch(key) is None:
            invalid_value(
                field_path,
                key,
                "Map keys must satisfy regular expression pattern: "
                + ENVIRONMENT_KEY_PATTERN.pattern,
                "environment variable names are letters, digits and '_', not starting "
                "with a digit, up to 1024 characters",
            )
        item_path = f"{field_path}.{key}"
        text = as_str(item, item_path)
        if len(text) > ENVIRONMENT_VALUE_MAX_LENGTH:
            invalid_value(
                item_path,
                text,
                f"Member must have length less than or equal to {ENVIRONMENT_VALUE_MAX_LENGTH}",
            )
        environment[key] = text
    return MappingProxyType(environment)


def _parse_container(body: Any, field_path: str, position: int) -> ContainerSpec:
    container = require_mapping(body, field_path)
    image_path = join_path(field_path, "Image")
    image = as_str(required(container, "Image", image_path), image_path)
    if len(image) > IMAGE_MAX_LENGTH:
        invalid_value(
            image_path, image, f"Member must have length less than or equal to {IMAGE_MAX_LENGTH}"
        )
    if _IMAGE_PATTERN.fullmatch(image) is None:
        invalid_value(image_path, image, r"Member must satisfy regular expression pattern: [\S]+")
    hostname_path = join_path(field_path, "ContainerHostname")
    raw_hostname = container.get("ContainerHostname")
    hostname = None if raw_hostname is None else _check_name(raw_hostname, hostname_path)
    return ContainerSpec(
        image=image,
        hostname=hostname,
        # Unnamed Serial containers get the names SageMaker uses for them in error messages.
        name=hostname if hostname is not None else f"container-{position}",
        environment=_parse_environment(
            container.get("Environment"), join_path(field_path, "Environment")
        ),
        extra=split_known(container, _CONTAINER_KEYS, field_path, "ContainerDefinition"),
    )


def _split_unknown_refused(body: Mapping[str, Any], known: frozenset[str], prefix: str) -> None:
    for key in body:
        if key not in known:
            invalid_value(
                join_path(prefix, str(key)),
                key,
                f"{prefix} has no member but {', '.join(sorted(known))}",
            )


def _parse_mode(body: Mapping[str, Any]) -> ExecutionMode:
    raw_config = body.get("InferenceExecutionConfig")
    if raw_config is None:
        return ExecutionMode.SERIAL
    config = require_mapping(raw_config, "InferenceExecutionConfig")
    _split_unknown_refused(config, _EXECUTION_CONFIG_KEYS, "InferenceExecutionConfig")
    raw_mode = config.get("Mode")
    if raw_mode is None:
        return ExecutionMode.SERIAL
    mode_path = "InferenceExecutionConfig.Mode"
    mode = as_str(raw_mode, mode_path)
    try:
        return ExecutionMode(mode)
    except ValueError:
        invalid_value(mode_path, mode, "Member must satisfy enum value set: [Serial, Direct]")


def _container_sources(body: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(field path, container body) pairs from ``Containers`` or ``PrimaryContainer``."""
    containers = body.get("Containers")
    primary = body.get("PrimaryContainer")
    if containers is not None and primary is not None:
        invalid_value(
            "PrimaryContainer",
            primary,
            "Member must be absent when Containers is given",
            "multi-container models list every container in Containers",
        )
    if primary is not None:
        return [("PrimaryContainer", primary)]
    if containers is None:
        missing_value(
            "Containers",
            "multi-container models list their containers in Containers; "
            "PrimaryContainer is accepted for a single container",
        )
    return [
        (f"Containers[{index}]", item)
        for index, item in enumerate(as_list(containers, "Containers"))
    ]


def _check_hostnames(mode: ExecutionMode, containers: list[tuple[str, ContainerSpec]]) -> None:
    """Apply the Direct and Serial hostname rules to (field path, container) pairs."""
    missing = [path for path, container in containers if container.hostname is None]
    if mode is ExecutionMode.DIRECT and missing:
        missing_value(
            join_path(missing[0], "ContainerHostname"),
            "every container needs a ContainerHostname when InferenceExecutionConfig.Mode "
            "is Direct",
        )
    if missing and len(missing) < len(containers):
        named_path, named = next(
            (path, container) for path, container in containers if container.hostname is not None
        )
        fail(
            join_path(missing[0], "ContainerHostname"),
            "null",
            "In Serial mode ContainerHostname must be given for all containers or for none",
            f"'{join_path(named_path, 'ContainerHostname')}' is '{named.hostname}'",
        )
    check_unique(
        (
            (join_path(path, "ContainerHostname"), container.hostname)
            for path, container in containers
            if container.hostname is not None
        ),
        "ContainerHostname",
    )


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A validated CreateModel request.

    ``mode`` is ``InferenceExecutionConfig.Mode`` (Serial when absent); ``extra`` holds the
    other top-level parameters (ExecutionRoleArn, Tags, VpcConfig, ...), read-only;
    ``primary``: the container was given as ``PrimaryContainer``.
    """

    name: str
    containers: tuple[ContainerSpec, ...]
    mode: ExecutionMode
    extra: Mapping[str, Any]
    primary: bool = False
    _by_name: Mapping[str, ContainerSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Direct invocations look a container up per request; pay for the index once.
        by_name = MappingProxyType({container.name: container for container in self.containers})
        object.__setattr__(self, "_by_name", by_name)

    @classmethod
    def from_request(
        cls, body: Mapping[str, Any], *, max_containers: int = DEFAULT_MAX_CONTAINERS
    ) -> ModelSpec:
        """Validate a CreateModel body; ``max_containers`` bounds ``Containers`` (default 15)."""
        if isinstance(max_containers, bool) or not isinstance(max_containers, int):
            raise ConfigError(f"max_containers must be an integer, not {max_containers!r}")
        if max_containers < 1:
            raise ConfigError(f"max_containers must be at least 1, not {max_containers}")
        request = require_mapping(body, "")
        name = _check_name(required(request, "ModelName", "ModelName"), "ModelName")
        mode = _parse_mode(request)
        sources = _container_sources(request)
        check_length(sources, "Containers", 1, max_containers)
        parsed = [
            (path, _parse_container(item, path, position))
            for position, (path, item) in enumerate(sources, 1)
        ]
        _check_hostnames(mode, parsed)
        containers = tuple(container for _path, container in parsed)
        extra = split_known(request, _MODEL_KEYS, "", "CreateModelInput")
        primary = request.get("PrimaryContainer") is not None
        return cls(name=name, containers=containers, mode=mode, extra=extra, primary=primary)

    @classmethod
    def from_stored(cls, body: Mapping[str, Any]) -> ModelSpec:
        """A body this router stored (state file, endpoint snapshot): validated when it was
        created, so the current container limit is not applied again (a lowered limit does not
        take away existing models)."""
        containers = body.get("Containers")
        stored = len(containers) if isinstance(containers, list) else 1
        return cls.from_request(body, max_containers=max(1, stored))

    def to_request(self) -> dict[str, Any]:
        """A CreateModel body that parses back into an equal ModelSpec, in the shape it was
        given (``PrimaryContainer`` or ``Containers``)."""
        request: dict[str, Any] = {"ModelName": self.name}
        if self.primary:
            request["PrimaryContainer"] = self.containers[0].to_request()
            if self.mode is ExecutionMode.DIRECT:
                request["InferenceExecutionConfig"] = {"Mode": self.mode.value}
        else:
            request["Containers"] = [container.to_request() for container in self.containers]
            request["InferenceExecutionConfig"] = {"Mode": self.mode.value}
        request.update(thaw_mapping(self.extra))
        return request

    def container(self, name: str) -> ContainerSpec | None:
        """The container called exactly ``name`` (case-sensitive), or ``None``."""
        return self._by_name.get(name)


# --- endpoint configs and endpoints -------------------------------------------------------

_VARIANT_KEYS = frozenset(
    {
        "VariantName",
        "ModelName",
        "InitialInstanceCount",
        "InitialVariantWeight",
        "ContainerStartupHealthCheckTimeoutInSeconds",
    }
)
_ENDPOINT_CONFIG_KEYS = frozenset({"EndpointConfigName", "ProductionVariants"})
_ENDPOINT_KEYS = frozenset({"EndpointName", "EndpointConfigName"})


@dataclass(frozen=True, slots=True)
class ProductionVariantSpec:
    """One entry of CreateEndpointConfig's ``ProductionVariants``.

    ``container_startup_health_check_timeout`` is
    ``ContainerStartupHealthCheckTimeoutInSeconds`` (``None`` when absent: the router's
    default window applies). ``extra`` holds InstanceType, VolumeSizeInGB, ServerlessConfig
    and the like, read-only.
    """

    variant_name: str
    model_name: str
    initial_instance_count: int
    initial_variant_weight: float
    container_startup_health_check_timeout: int | None
    extra: Mapping[str, Any]

    def to_request(self) -> dict[str, Any]:
        """The variant as CreateEndpointConfig takes it, defaults written out."""
        request: dict[str, Any] = {
            "VariantName": self.variant_name,
            "ModelName": self.model_name,
            "InitialInstanceCount": self.initial_instance_count,
            "InitialVariantWeight": self.initial_variant_weight,
        }
        if self.container_startup_health_check_timeout is not None:
            request["ContainerStartupHealthCheckTimeoutInSeconds"] = (
                self.container_startup_health_check_timeout
            )
        request.update(thaw_mapping(self.extra))
        return request


def _parse_variant(body: Any, field_path: str) -> ProductionVariantSpec:
    variant = require_mapping(body, field_path)
    name_path = join_path(field_path, "VariantName")
    variant_name = _check_name(required(variant, "VariantName", name_path), name_path)
    model_path = join_path(field_path, "ModelName")
    model_name = _check_name(required(variant, "ModelName", model_path), model_path)

    count_path = join_path(field_path, "InitialInstanceCount")
    raw_count = variant.get("InitialInstanceCount")
    count = 1 if raw_count is None else as_int(raw_count, count_path)
    if count < 1:
        invalid_value(count_path, count, "Member must have value greater than or equal to 1")
    if count > MAX_INSTANCE_COUNT:
        invalid_value(
            count_path,
            count,
            f"Member must have value less than or equal to {MAX_INSTANCE_COUNT}",
            "each instance runs a full set of the model's containers on this machine",
        )

    weight_path = join_path(field_path, "InitialVariantWeight")
    raw_weight = variant.get("InitialVariantWeight")
    weight = 1.0 if raw_weight is None else as_number(raw_weight, weight_path)
    if weight < 0:
        invalid_value(weight_path, raw_weight, "Member must have value greater than or equal to 0")

    timeout_path = join_path(field_path, "ContainerStartupHealthCheckTimeoutInSeconds")
    raw_timeout = variant.get("ContainerStartupHealthCheckTimeoutInSeconds")
    timeout = None if raw_timeout is None else as_int(raw_timeout, timeout_path)
    low, high = HEALTH_CHECK_TIMEOUT_RANGE
    if timeout is not None and timeout < low:
        invalid_value(
            timeout_path, timeout, f"Member must have value greater than or equal to {low}"
        )
    if timeout is not None and timeout > high:
        invalid_value(timeout_path, timeout, f"Member must have value less than or equal to {high}")

    return ProductionVariantSpec(
        variant_name=variant_name,
        model_name=model_name,
        initial_instance_count=count,
        initial_variant_weight=weight,
        container_startup_health_check_timeout=timeout,
        extra=split_known(variant, _VARIANT_KEYS, field_path, "ProductionVariant"),
    )


@dataclass(frozen=True, slots=True)
class EndpointConfigSpec:
    """A validated CreateEndpointConfig request: 1..10 variants with unique names."""

    name: str
    variants: tuple[ProductionVariantSpec, ...]
    extra: Mapping[str, Any]

    @classmethod
    def from_request(cls, body: Mapping[str, Any]) -> EndpointConfigSpec:
        """Validate a CreateEndpointConfig body."""
        request = require_mapping(body, "")
        name = _check_name(
            required(request, "EndpointConfigName", "EndpointConfigName"), "EndpointConfigName"
        )
        raw_variants = as_list(
            required(request, "ProductionVariants", "ProductionVariants"), "ProductionVariants"
        )
        check_length(raw_variants, "ProductionVariants", 1, MAX_VARIANTS)
        variants = tuple(
            _parse_variant(item, f"ProductionVariants[{index}]")
            for index, item in enumerate(raw_variants)
        )
        check_unique(
            (
                (f"ProductionVariants[{index}].VariantName", variant.variant_name)
                for index, variant in enumerate(variants)
            ),
            "VariantName",
        )
        extra = split_known(request, _ENDPOINT_CONFIG_KEYS, "", "CreateEndpointConfigInput")
        return cls(name=name, variants=variants, extra=extra)

    def to_request(self) -> dict[str, Any]:
        """A CreateEndpointConfig body that parses back into an equal spec."""
        request: dict[str, Any] = {
            "EndpointConfigName": self.name,
            "ProductionVariants": [variant.to_request() for variant in self.variants],
        }
        request.update(thaw_mapping(self.extra))
        return request


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """A validated CreateEndpoint request; ``extra`` holds Tags, DeploymentConfig, ..."""

    name: str
    config_name: str
    extra: Mapping[str, Any]

    @classmethod
    def from_request(cls, body: Mapping[str, Any]) -> EndpointSpec:
        """Validate a CreateEndpoint body."""
        request = require_mapping(body, "")
        name = _check_name(required(request, "EndpointName", "EndpointName"), "EndpointName")
        config_name = _check_name(
            required(request, "EndpointConfigName", "EndpointConfigName"), "EndpointConfigName"
        )
        extra = split_known(request, _ENDPOINT_KEYS, "", "CreateEndpointInput")
        return cls(name=name, config_name=config_name, extra=extra)

    def to_request(self) -> dict[str, Any]:
        """A CreateEndpoint body that parses back into an equal spec."""
        request: dict[str, Any] = {
            "EndpointName": self.name,
            "EndpointConfigName": self.config_name,
        }
        request.update(thaw_mapping(self.extra))
        return request
