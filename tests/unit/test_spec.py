"""Parsing and validation of CreateModel, CreateEndpointConfig and CreateEndpoint bodies."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from mce_router.errors import ConfigError, ValidationError, wire_error
from mce_router.spec import (
    DEFAULT_MAX_CONTAINERS,
    NAME_PATTERN,
    EndpointConfigSpec,
    EndpointSpec,
    ExecutionMode,
    ModelSpec,
)

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/myimage1:mytag"
NAME_RULE = r"Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}"
NOT_NULL = "Member must not be null"


def container(hostname: str | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"Image": IMAGE}
    if hostname is not None:
        body["ContainerHostname"] = hostname
    body.update(fields)
    return body


def model(*containers: Any, mode: str | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ModelName": "my-model", "Containers": list(containers)}
    if mode is not None:
        body["InferenceExecutionConfig"] = {"Mode": mode}
    body.update(fields)
    return body


def variant(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"VariantName": "AllTraffic", "ModelName": "my-model"}
    body.update(fields)
    return body


def endpoint_config(*variants: Any, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"EndpointConfigName": "my-config", "ProductionVariants": list(variants)}
    body.update(fields)
    return body


def refused(parse: Callable[[], object], field: str, rule: str) -> ValidationError:
    """Assert ``parse`` fails on ``field`` with ``rule``, and that the message names both."""
    with pytest.raises(ValidationError) as caught:
        parse()
    error = caught.value
    assert (error.field, error.rule) == (field, rule)
    assert error.message.startswith("1 validation error detected: ")
    assert rule in error.message
    if field:
        assert f"'{field}'" in error.message
    return error


# --- models: accepted shapes ----------------------------------------------------------------


def test_seed_direct_model_from_the_aws_guide() -> None:
    container1 = {
        "Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/myimage1:mytag",
        "ContainerHostname": "firstContainer",
    }
    container2 = {
        "Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/myimage2:mytag",
        "ContainerHostname": "secondContainer",
    }
    body = {
        "ModelName": "my-direct-mode-model-name",
        "InferenceExecutionConfig": {"Mode": "Direct"},
        "ExecutionRoleArn": "arn:aws:iam::123456789012:role/SageMakerRole",
        "Containers": [container1, container2],
    }

    spec = ModelSpec.from_request(body)

    assert spec.name == "my-direct-mode-model-name"
    assert spec.mode is ExecutionMode.DIRECT
    assert [c.name for c in spec.containers] == ["firstContainer", "secondContainer"]
    assert [c.hostname for c in spec.containers] == ["firstContainer", "secondContainer"]
    assert spec.containers[1].image.endswith("myimage2:mytag")
    assert spec.extra == {"ExecutionRoleArn": "arn:aws:iam::123456789012:role/SageMakerRole"}
    assert spec.container("secondContainer") is spec.containers[1]


def test_seed_placeholder_image_is_refused() -> None:
    # One copy of the guide writes 'Image': '' as a placeholder; SageMaker requires [\S]+.
    body = model(
        {"Image": "", "ContainerHostname": "firstContainer"},
        {"Image": "", "ContainerHostname": "secondContainer"},
        mode="Direct",
    )
    refused(
        lambda: ModelSpec.from_request(body),
        "Containers[0].Image",
        r"Member must satisfy regular expression pattern: [\S]+",
    )


@pytest.mark.parametrize(
    "execution_config",
    [None, {}, {"Mode": None}, {"Mode": "Serial"}],
    ids=["absent", "empty", "mode-null", "explicit"],
)
def test_mode_defaults_to_serial(execution_config: dict[str, Any] | None) -> None:
    body = model(container(), container())
    if execution_config is not None:
        body["InferenceExecutionConfig"] = execution_config

    assert ModelSpec.from_request(body).mode is ExecutionMode.SERIAL


def test_serial_containers_without_hostnames_are_named_by_position() -> None:
    spec = ModelSpec.from_request(model(container(), container(), container()))

    assert [c.name for c in spec.containers] == ["container-1", "container-2", "container-3"]
    assert all(c.hostname is None for c in spec.containers)
    assert spec.container("container-2") is spec.containers[1]


def test_serial_containers_with_hostnames_keep_them() -> None:
    spec = ModelSpec.from_request(model(container("pre"), container("model"), container("post")))

    assert [c.name for c in spec.containers] == ["pre", "model", "post"]


def test_container_lookup_is_exact() -> None:
    spec = ModelSpec.from_request(model(container("special"), mode="Direct"))

    assert spec.container("special") is spec.containers[0]
    assert spec.container("Special") is None
    assert spec.container("absent") is None


def test_environment_is_parsed_and_read_only() -> None:
    spec = ModelSpec.from_request(model(container(Environment={"A_B": "1", "_x9": ""})))

    environment = spec.containers[0].environment
    assert environment == {"A_B": "1", "_x9": ""}
    with pytest.raises(TypeError):
        environment["A_B"] = "2"  # type: ignore[index]


@pytest.mark.parametrize(
    "name",
    ["a", "A1", "a-b", "a--b", "x" * 63, "a" + "-" * 30 + "b"],
)
def test_names_accepted(name: str) -> None:
    spec = ModelSpec.from_request(model(container(name), mode="Direct", ModelName=name))
    assert (spec.name, spec.containers[0].name) == (name, name)


# --- models: container count ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "max_containers", "accepted"),
    [
        (1, DEFAULT_MAX_CONTAINERS, True),
        (15, DEFAULT_MAX_CONTAINERS, True),
        (16, DEFAULT_MAX_CONTAINERS, False),
        (3, 3, True),
        (4, 3, False),
        (20, 20, True),
        (1, 1, True),
        (2, 1, False),
    ],
)
def test_container_count_limit(count: int, max_containers: int, accepted: bool) -> None:
    body = model(*(container() for _ in range(count)))

    def parse() -> ModelSpec:
        return ModelSpec.from_request(body, max_containers=max_containers)

    if accepted:
        assert len(parse().containers) == count
    else:
        error = refused(
            parse,
            "Containers",
            f"Member must have length less than or equal to {max_containers}",
        )
        assert f"with {count} entries" in error.message


@pytest.mark.parametrize("max_containers", [0, -1, True, 2.0])
def test_invalid_max_containers_is_a_config_error(max_containers: Any) -> None:
    with pytest.raises(ConfigError):
        ModelSpec.from_request(model(container()), max_containers=max_containers)


# --- models: PrimaryContainer ---------------------------------------------------------------


def test_primary_container_is_a_single_container_model() -> None:
    body = {"ModelName": "single", "PrimaryContainer": container(ModelDataUrl="s3://b/m.tgz")}

    spec = ModelSpec.from_request(body)

    assert spec.mode is ExecutionMode.SERIAL
    assert len(spec.containers) == 1
    assert spec.containers[0].name == "container-1"
    assert spec.containers[0].extra == {"ModelDataUrl": "s3://b/m.tgz"}
    # Answered as given (SageMaker's DescribeModel does): PrimaryContainer, no mode when Serial.
    request = spec.to_request()
    assert request == body
    assert ModelSpec.from_request(request) == spec
    assert spec.primary
    # A body stored before `primary` existed (Containers + Serial) still reads back, as before.
    stored = {
        "ModelName": "single",
        "Containers": [container(ModelDataUrl="s3://b/m.tgz")],
        "InferenceExecutionConfig": {"Mode": "Serial"},
    }
    old = ModelSpec.from_stored(stored)
    assert not old.primary
    assert old.containers == spec.containers
    assert old.to_request() == stored


def test_primary_container_in_direct_mode_needs_its_hostname() -> None:
    body = {
        "ModelName": "single",
        "PrimaryContainer": container(),
        "InferenceExecutionConfig": {"Mode": "Direct"},
    }
    refused(lambda: ModelSpec.from_request(body), "PrimaryContainer.ContainerHostname", NOT_NULL)

    body["PrimaryContainer"] = container("only")
    spec = ModelSpec.from_request(body)
    assert spec.container("only") is not None
    assert spec.to_request() == body  # Direct: the mode is answered too


# --- models: refused ------------------------------------------------------------------------

LONG_NAME = "x" * 64
HYPHEN_RUN_NAME = "a" + "-b" * 32  # 65 characters that the pattern alone would accept
TOO_LONG = "Member must have length less than or equal to 63"
ENV_KEY_RULE = "Map keys must satisfy regular expression pattern: ^[a-zA-Z_][a-zA-Z0-9_]{0,1023}$"

MODEL_REFUSALS: list[tuple[str, Any, str, str]] = [
    ("body-not-object", [container()], "", "Member must be a JSON object"),
    ("model-name-missing", {"Containers": [container()]}, "ModelName", NOT_NULL),
    ("model-name-pattern", model(container(), ModelName="bad_name"), "ModelName", NAME_RULE),
    ("model-name-too-long", model(container(), ModelName=LONG_NAME), "ModelName", TOO_LONG),
    ("model-name-hyphen-run", model(container(), ModelName=HYPHEN_RUN_NAME), "ModelName", TOO_LONG),
    ("model-name-newline", model(container(), ModelName="abc\n"), "ModelName", NAME_RULE),
    ("model-name-leading-hyphen", model(container(), ModelName="-a"), "ModelName", NAME_RULE),
    (
        "model-name-not-string",
        model(container(), ModelName=7),
        "ModelName",
        "Member must be a string",
    ),
    (
        "containers-missing",
        {"ModelName": "m"},
        "Containers",
        NOT_NULL,
    ),
    (
        "containers-and-primary",
        model(container(), PrimaryContainer=container()),
        "PrimaryContainer",
        "Member must be absent when Containers is given",
    ),
    (
        "containers-not-list",
        model(Containers=container()),
        "Containers",
        "Member must be a JSON array",
    ),
    (
        "containers-empty",
        model(),
        "Containers",
        "Member must have length greater than or equal to 1",
    ),
    ("container-not-object", model("image"), "Containers[0]", "Member must be a JSON object"),
    ("image-missing", model({"ContainerHostname": "a"}), "Containers[0].Image", NOT_NULL),
    (
        "image-not-string",
        model(container(), container(Image=7)),
        "Containers[1].Image",
        "Member must be a string",
    ),
    (
        "image-whitespace",
        model(container(Image="my image")),
        "Containers[0].Image",
        r"Member must satisfy regular expression pattern: [\S]+",
    ),
    (
        "image-too-long",
        model(container(Image="i" * 256)),
        "Containers[0].Image",
        "Member must have length less than or equal to 255",
    ),
    (
        "primary-image-missing",
        {"ModelName": "m", "PrimaryContainer": {}},
        "PrimaryContainer.Image",
        NOT_NULL,
    ),
    (
        "hostname-pattern",
        model(container("good"), container("bad_name")),
        "Containers[1].ContainerHostname",
        NAME_RULE,
    ),
    (
        "hostname-too-long",
        model(container(LONG_NAME)),
        "Containers[0].ContainerHostname",
        TOO_LONG,
    ),
    (
        "hostname-not-string",
        model(container(ContainerHostname=["a"])),
        "Containers[0].ContainerHostname",
        "Member must be a string",
    ),
    (
        "environment-not-object",
        model(container(Environment=["A=1"])),
        "Containers[0].Environment",
        "Member must be a JSON object",
    ),
    (
        "environment-key-leading-digit",
        model(container(Environment={"1A": "x"})),
        "Containers[0].Environment",
        ENV_KEY_RULE,
    ),
    (
        "environment-key-dash",
        model(container(Environment={"MY-VAR": "x"})),
        "Containers[0].Environment",
        ENV_KEY_RULE,
    ),
    (
        "environment-key-too-long",
        model(container(Environment={"K" * 1025: "x"})),
        "Containers[0].Environment",
        ENV_KEY_RULE,
    ),
    (
        "environment-value-not-string",
        model(container(Environment={"WORKERS": 4})),
        "Containers[0].Environment.WORKERS",
        "Member must be a string",
    ),
    (
        "environment-value-too-long",
        model(container(Environment={"V": "v" * 1025})),
        "Containers[0].Environment.V",
        "Member must have length less than or equal to 1024",
    ),
    (
        "environment-too-many",
        model(container(Environment={f"K{i}": "" for i in range(101)})),
        "Containers[0].Environment",
        "Member must have length less than or equal to 100",
    ),
    (
        "mode-wrong-case",
        model(container("a"), mode="direct"),
        "InferenceExecutionConfig.Mode",
        "Member must satisfy enum value set: [Serial, Direct]",
    ),
    (
        "mode-unknown",
        model(container(), mode="Parallel"),
        "InferenceExecutionConfig.Mode",
        "Member must satisfy enum value set: [Serial, Direct]",
    ),
    (
        "mode-not-string",
        model(container(), InferenceExecutionConfig={"Mode": 1}),
        "InferenceExecutionConfig.Mode",
        "Member must be a string",
    ),
    (
        "execution-config-not-object",
        model(container(), InferenceExecutionConfig="Direct"),
        "InferenceExecutionConfig",
        "Member must be a JSON object",
    ),
    (
        "execution-config-unknown-member",
        model(container("a"), InferenceExecutionConfig={"Mode": "Direct", "Other": 1}),
        "InferenceExecutionConfig.Other",
        "InferenceExecutionConfig has no member but Mode",
    ),
    (
        "direct-first-missing-hostname",
        model(container("a"), container(), container(), mode="Direct"),
        "Containers[1].ContainerHostname",
        NOT_NULL,
    ),
    (
        "direct-no-hostnames",
        model(container(), mode="Direct"),
        "Containers[0].ContainerHostname",
        NOT_NULL,
    ),
    (
        "serial-some-hostnames",
        model(container("a"), container("b"), container()),
        "Containers[2].ContainerHostname",
        "In Serial mode ContainerHostname must be given for all containers or for none",
    ),
    (
        "serial-first-lacks-hostname",
        model(container(), container("b"), mode="Serial"),
        "Containers[0].ContainerHostname",
        "In Serial mode ContainerHostname must be given for all containers or for none",
    ),
    (
        "hostname-duplicate",
        model(container("a"), container("b"), container("a"), mode="Direct"),
        "Containers[2].ContainerHostname",
        "Member must be unique among ContainerHostname values, compared case-insensitively",
    ),
    (
        "hostname-duplicate-other-case",
        model(container("Model"), container("model")),
        "Containers[1].ContainerHostname",
        "Member must be unique among ContainerHostname values, compared case-insensitively",
    ),
    (
        "container-key-wrong-case",
        model(container(containerHostname="a")),
        "Containers[0].containerHostname",
        "Parameter names are case-sensitive",
    ),
    (
        "model-key-wrong-case",
        model(container("a"), inferenceExecutionConfig={"Mode": "Direct"}),
        "inferenceExecutionConfig",
        "Parameter names are case-sensitive",
    ),
]


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [case[1:] for case in MODEL_REFUSALS],
    ids=[case[0] for case in MODEL_REFUSALS],
)
def test_model_refusals(body: Any, field: str, rule: str) -> None:
    refused(lambda: ModelSpec.from_request(body), field, rule)


def test_hostname_message_reads_like_sagemaker() -> None:
    error = refused(
        lambda: ModelSpec.from_request(model(container("good"), container("bad_name"))),
        "Containers[1].ContainerHostname",
        NAME_RULE,
    )
    assert error.message == (
        "1 validation error detected: Value 'bad_name' at 'Containers[1].ContainerHostname' "
        "failed to satisfy constraint: " + NAME_RULE
    )


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (model(container("a"), container("A"), mode="Direct"), "'a' at 'Containers[0]"),
        (model(container("a"), container()), "'Containers[0].ContainerHostname' is 'a'"),
        (model(container(Environment=[])), "(a list with 0 entries)"),
        (model(container(), ExecutionRoleArn="r", containers=[]), "did you mean 'Containers'?"),
    ],
    ids=["duplicate-names-first", "serial-names-hostname", "summary-of-list", "suggests-name"],
)
def test_messages_say_what_to_fix(body: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ModelSpec.from_request(body)
    assert named in caught.value.message


def test_long_and_multiline_values_are_shortened_in_messages() -> None:
    with pytest.raises(ValidationError) as caught:
        ModelSpec.from_request(model(container(Image="line\n" * 2000)))
    assert "\n" not in caught.value.message
    assert len(caught.value.message) < 400


def test_validation_errors_reach_the_wire_as_validation_exceptions() -> None:
    with pytest.raises(ValidationError) as caught:
        ModelSpec.from_request(model(container("bad_name")))
    wire = wire_error(caught.value, "control")
    assert (wire.status, wire.code) == (400, "ValidationException")
    assert "Containers[0].ContainerHostname" in wire.message


# --- models: extras and round trip ----------------------------------------------------------


def full_model_body() -> dict[str, Any]:
    return {
        "ModelName": "pipeline",
        "ExecutionRoleArn": "arn:aws:iam::123456789012:role/SageMakerRole",
        "EnableNetworkIsolation": True,
        "Tags": [{"Key": "team", "Value": "ml"}],
        "VpcConfig": {"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1", "subnet-2"]},
        "InferenceExecutionConfig": {"Mode": "Direct"},
        "Containers": [
            {
                "ContainerHostname": "pre",
                "Image": IMAGE,
                "Environment": {"SAGEMAKER_PROGRAM": "pre.py"},
                "ModelDataUrl": "s3://bucket/pre.tar.gz",
                "Mode": "SingleModel",
                "ImageConfig": {"RepositoryAccessMode": "Platform"},
            },
            {"ContainerHostname": "model", "Image": IMAGE},
        ],
    }


def test_model_extras_are_kept_read_only_and_detached() -> None:
    body = full_model_body()
    spec = ModelSpec.from_request(body)

    assert set(spec.extra) == {"ExecutionRoleArn", "EnableNetworkIsolation", "Tags", "VpcConfig"}
    assert spec.extra["EnableNetworkIsolation"] is True
    assert spec.extra["VpcConfig"]["Subnets"] == ("subnet-1", "subnet-2")
    assert spec.containers[0].extra == {
        "ModelDataUrl": "s3://bucket/pre.tar.gz",
        "Mode": "SingleModel",
        "ImageConfig": {"RepositoryAccessMode": "Platform"},
    }
    assert spec.containers[1].extra == {}
    with pytest.raises(TypeError):
        spec.extra["Tags"] = []  # type: ignore[index]
    with pytest.raises(TypeError):
        spec.extra["VpcConfig"]["Subnets"] = []

    body["Tags"][0]["Value"] = "changed"
    body["Containers"][0]["Environment"]["SAGEMAKER_PROGRAM"] = "changed.py"
    assert spec.extra["Tags"][0]["Value"] == "ml"
    assert spec.containers[0].environment["SAGEMAKER_PROGRAM"] == "pre.py"


def test_model_to_request_gives_back_the_request() -> None:
    body = full_model_body()
    request = ModelSpec.from_request(copy.deepcopy(body)).to_request()

    assert request == body
    request["Tags"].append({"Key": "x", "Value": "y"})  # plain, mutable, detached from the spec


def test_model_to_request_writes_the_default_mode() -> None:
    request = ModelSpec.from_request(model(container())).to_request()

    assert request["InferenceExecutionConfig"] == {"Mode": "Serial"}
    assert request["Containers"] == [{"Image": IMAGE}]


ROUND_TRIP_BODIES: list[tuple[str, Callable[[Mapping[str, Any]], Any], dict[str, Any]]] = [
    ("model-full", ModelSpec.from_request, full_model_body()),
    ("model-serial-unnamed", ModelSpec.from_request, model(container(), container())),
    (
        "model-empty-environment",
        ModelSpec.from_request,
        model(container(Environment={}), Tags=[]),
    ),
    (
        "endpoint-config",
        EndpointConfigSpec.from_request,
        endpoint_config(
            variant(
                InstanceType="ml.m5.xlarge",
                InitialInstanceCount=2,
                InitialVariantWeight=0.5,
                ContainerStartupHealthCheckTimeoutInSeconds=600,
            ),
            variant(VariantName="Serverless", ServerlessConfig={"MemorySizeInMB": 2048}),
            KmsKeyId="key",
            Tags=[{"Key": "a", "Value": "b"}],
        ),
    ),
    (
        "endpoint",
        EndpointSpec.from_request,
        {
            "EndpointName": "my-endpoint",
            "EndpointConfigName": "my-config",
            "Tags": [{"Key": "a", "Value": "b"}],
            "DeploymentConfig": {"BlueGreenUpdatePolicy": {"TerminationWaitInSeconds": 0}},
        },
    ),
]


@pytest.mark.parametrize(
    ("parse", "body"),
    [case[1:] for case in ROUND_TRIP_BODIES],
    ids=[case[0] for case in ROUND_TRIP_BODIES],
)
def test_round_trip(parse: Callable[[Mapping[str, Any]], Any], body: dict[str, Any]) -> None:
    spec = parse(body)

    assert parse(spec.to_request()) == spec
    assert parse(copy.deepcopy(body)) == spec


def test_specs_are_frozen() -> None:
    spec = ModelSpec.from_request(model(container()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.containers[0].image = "other"  # type: ignore[misc]


def test_name_pattern_constant() -> None:
    assert NAME_PATTERN.fullmatch("firstContainer")
    assert NAME_PATTERN.fullmatch("a-b")
    assert not NAME_PATTERN.fullmatch("a-")
    assert not NAME_PATTERN.fullmatch("bad_name")


# --- endpoint configs -----------------------------------------------------------------------


def test_endpoint_config_defaults() -> None:
    spec = EndpointConfigSpec.from_request(endpoint_config(variant()))

    (only,) = spec.variants
    assert (only.variant_name, only.model_name) == ("AllTraffic", "my-model")
    assert only.initial_instance_count == 1
    assert only.initial_variant_weight == 1.0
    assert only.container_startup_health_check_timeout is None
    assert only.extra == {}
    assert spec.extra == {}


def test_endpoint_config_keeps_variant_extras() -> None:
    serverless = {"MemorySizeInMB": 2048, "MaxConcurrency": 5}
    spec = EndpointConfigSpec.from_request(
        endpoint_config(
            variant(InstanceType="ml.m5.xlarge", VolumeSizeInGB=30),
            variant(VariantName="Serverless", ServerlessConfig=serverless),
            DataCaptureConfig={"EnableCapture": False},
        )
    )

    assert spec.variants[0].extra == {"InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30}
    assert spec.variants[1].extra == {"ServerlessConfig": serverless}
    assert spec.extra == {"DataCaptureConfig": {"EnableCapture": False}}


@pytest.mark.parametrize(
    "fields",
    [
        {"InitialInstanceCount": 10},
        {"InitialVariantWeight": 0},
        {"InitialVariantWeight": 0.0},
        {"InitialVariantWeight": 3},
        {"ContainerStartupHealthCheckTimeoutInSeconds": 60},
        {"ContainerStartupHealthCheckTimeoutInSeconds": 3600},
        {"InitialInstanceCount": None, "InitialVariantWeight": None},
    ],
)
def test_variant_boundaries_accepted(fields: dict[str, Any]) -> None:
    (only,) = EndpointConfigSpec.from_request(endpoint_config(variant(**fields))).variants
    assert isinstance(only.initial_variant_weight, float)


def test_ten_variants_accepted() -> None:
    body = endpoint_config(*(variant(VariantName=f"v{i}") for i in range(10)))
    assert len(EndpointConfigSpec.from_request(body).variants) == 10


COUNT_PATH = "ProductionVariants[0].InitialInstanceCount"
WEIGHT_PATH = "ProductionVariants[0].InitialVariantWeight"
TIMEOUT_PATH = "ProductionVariants[0].ContainerStartupHealthCheckTimeoutInSeconds"
TIMEOUT = "ContainerStartupHealthCheckTimeoutInSeconds"

ENDPOINT_CONFIG_REFUSALS: list[tuple[str, Any, str, str]] = [
    ("body-not-object", "my-config", "", "Member must be a JSON object"),
    (
        "name-missing",
        {"ProductionVariants": [variant()]},
        "EndpointConfigName",
        NOT_NULL,
    ),
    (
        "name-pattern",
        endpoint_config(variant(), EndpointConfigName="my_config"),
        "EndpointConfigName",
        NAME_RULE,
    ),
    (
        "variants-missing",
        {"EndpointConfigName": "c"},
        "ProductionVariants",
        NOT_NULL,
    ),
    (
        "variants-not-list",
        endpoint_config(ProductionVariants=variant()),
        "ProductionVariants",
        "Member must be a JSON array",
    ),
    (
        "variants-empty",
        endpoint_config(),
        "ProductionVariants",
        "Member must have length greater than or equal to 1",
    ),
    (
        "variants-eleven",
        endpoint_config(*(variant(VariantName=f"v{i}") for i in range(11))),
        "ProductionVariants",
        "Member must have length less than or equal to 10",
    ),
    (
        "variant-not-object",
        endpoint_config(variant(), "AllTraffic"),
        "ProductionVariants[1]",
        "Member must be a JSON object",
    ),
    (
        "variant-name-missing",
        endpoint_config({"ModelName": "m"}),
        "ProductionVariants[0].VariantName",
        NOT_NULL,
    ),
    (
        "variant-name-pattern",
        endpoint_config(variant(VariantName="all traffic")),
        "ProductionVariants[0].VariantName",
        NAME_RULE,
    ),
    (
        "variant-model-missing",
        endpoint_config({"VariantName": "v"}),
        "ProductionVariants[0].ModelName",
        NOT_NULL,
    ),
    (
        "variant-model-pattern",
        endpoint_config(variant(ModelName="my.model")),
        "ProductionVariants[0].ModelName",
        NAME_RULE,
    ),
    (
        "variant-model-too-long",
        endpoint_config(variant(ModelName=LONG_NAME)),
        "ProductionVariants[0].ModelName",
        TOO_LONG,
    ),
    (
        "variant-name-duplicate",
        endpoint_config(variant(), variant(VariantName="alltraffic")),
        "ProductionVariants[1].VariantName",
        "Member must be unique among VariantName values, compared case-insensitively",
    ),
    (
        "count-zero",
        endpoint_config(variant(InitialInstanceCount=0)),
        COUNT_PATH,
        "Member must have value greater than or equal to 1",
    ),
    (
        "count-above-cap",
        endpoint_config(variant(InitialInstanceCount=11)),
        COUNT_PATH,
        "Member must have value less than or equal to 10",
    ),
    (
        "count-bool",
        endpoint_config(variant(InitialInstanceCount=True)),
        COUNT_PATH,
        "Member must be an integer",
    ),
    (
        "count-string",
        endpoint_config(variant(InitialInstanceCount="1")),
        COUNT_PATH,
        "Member must be an integer",
    ),
    (
        "count-float",
        endpoint_config(variant(InitialInstanceCount=1.0)),
        COUNT_PATH,
        "Member must be an integer",
    ),
    (
        "weight-negative",
        endpoint_config(variant(InitialVariantWeight=-0.1)),
        WEIGHT_PATH,
        "Member must have value greater than or equal to 0",
    ),
    (
        "weight-bool",
        endpoint_config(variant(InitialVariantWeight=True)),
        WEIGHT_PATH,
        "Member must be a number",
    ),
    (
        "weight-string",
        endpoint_config(variant(InitialVariantWeight="1")),
        WEIGHT_PATH,
        "Member must be a number",
    ),
    (
        "weight-infinite",
        endpoint_config(variant(InitialVariantWeight=float("inf"))),
        WEIGHT_PATH,
        "Member must be a finite number",
    ),
    (
        "weight-nan",
        endpoint_config(variant(InitialVariantWeight=float("nan"))),
        WEIGHT_PATH,
        "Member must be a finite number",
    ),
    (
        "timeout-below",
        endpoint_config(variant(**{TIMEOUT: 59})),
        TIMEOUT_PATH,
        "Member must have value greater than or equal to 60",
    ),
    (
        "timeout-above",
        endpoint_config(variant(**{TIMEOUT: 3601})),
        TIMEOUT_PATH,
        "Member must have value less than or equal to 3600",
    ),
    (
        "timeout-bool",
        endpoint_config(variant(**{TIMEOUT: True})),
        TIMEOUT_PATH,
        "Member must be an integer",
    ),
    (
        "timeout-float",
        endpoint_config(variant(**{TIMEOUT: 60.5})),
        TIMEOUT_PATH,
        "Member must be an integer",
    ),
    (
        "variant-key-wrong-case",
        endpoint_config(variant(initialInstanceCount=2)),
        "ProductionVariants[0].initialInstanceCount",
        "Parameter names are case-sensitive",
    ),
]


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [case[1:] for case in ENDPOINT_CONFIG_REFUSALS],
    ids=[case[0] for case in ENDPOINT_CONFIG_REFUSALS],
)
def test_endpoint_config_refusals(body: Any, field: str, rule: str) -> None:
    refused(lambda: EndpointConfigSpec.from_request(body), field, rule)


def test_variant_to_request_writes_defaults_out() -> None:
    spec = EndpointConfigSpec.from_request(endpoint_config(variant(InstanceType="ml.m5.large")))

    assert spec.to_request() == {
        "EndpointConfigName": "my-config",
        "ProductionVariants": [
            {
                "VariantName": "AllTraffic",
                "ModelName": "my-model",
                "InitialInstanceCount": 1,
                "InitialVariantWeight": 1.0,
                "InstanceType": "ml.m5.large",
            }
        ],
    }


# --- endpoints ------------------------------------------------------------------------------


def test_endpoint_parses() -> None:
    spec = EndpointSpec.from_request(
        {"EndpointName": "my-endpoint", "EndpointConfigName": "my-config", "Tags": []}
    )

    assert (spec.name, spec.config_name) == ("my-endpoint", "my-config")
    assert spec.extra == {"Tags": ()}
    assert spec.to_request() == {
        "EndpointName": "my-endpoint",
        "EndpointConfigName": "my-config",
        "Tags": [],
    }


ENDPOINT_REFUSALS: list[tuple[str, Any, str, str]] = [
    ("body-not-object", None, "", "Member must be a JSON object"),
    ("name-missing", {"EndpointConfigName": "c"}, "EndpointName", NOT_NULL),
    ("config-missing", {"EndpointName": "e"}, "EndpointConfigName", NOT_NULL),
    (
        "name-pattern",
        {"EndpointName": "my endpoint", "EndpointConfigName": "c"},
        "EndpointName",
        NAME_RULE,
    ),
    (
        "name-too-long",
        {"EndpointName": LONG_NAME, "EndpointConfigName": "c"},
        "EndpointName",
        TOO_LONG,
    ),
    (
        "config-pattern",
        {"EndpointName": "e", "EndpointConfigName": "c_1"},
        "EndpointConfigName",
        NAME_RULE,
    ),
    (
        "config-not-string",
        {"EndpointName": "e", "EndpointConfigName": {"Name": "c"}},
        "EndpointConfigName",
        "Member must be a string",
    ),
    (
        "key-wrong-case",
        {"EndpointName": "e", "EndpointConfigName": "c", "endpointName": "f"},
        "endpointName",
        "Parameter names are case-sensitive",
    ),
]


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [case[1:] for case in ENDPOINT_REFUSALS],
    ids=[case[0] for case in ENDPOINT_REFUSALS],
)
def test_endpoint_refusals(body: Any, field: str, rule: str) -> None:
    refused(lambda: EndpointSpec.from_request(body), field, rule)


def test_the_parameter_names_file_knows_every_member_botocore_knows() -> None:
    """mce_router/data/sagemaker_members.json refuses misspelled parameters; a parameter that
    botocore (and so boto3) can send must never be refused as unknown."""
    import json
    from importlib import resources

    import botocore.session

    recorded = json.loads(
        resources.files("mce_router").joinpath("data/sagemaker_members.json").read_text()
    )
    model = botocore.session.get_session().get_service_model("sagemaker")
    for shape, members in recorded.items():
        if shape.startswith("_"):
            continue
        missing = set(model.shape_for(shape).members) - set(members)
        assert not missing, f"{shape}: regenerate the file, botocore knows {sorted(missing)}"


def test_a_misspelled_parameter_is_refused_with_the_closest_name() -> None:
    body = {"ModelName": "m", "Containers": [{"Image": "i", "Enviroment": {"A": "1"}}]}
    with pytest.raises(ValidationError) as caught:
        ModelSpec.from_request(body)
    assert caught.value.field == "Containers[0].Enviroment"
    assert "did you mean 'Containers[0].Environment'?" in caught.value.message
    # Parameters SageMaker has and the router does not interpret are kept, as before.
    kept = ModelSpec.from_request({**body, "Containers": [{"Image": "i"}], "VpcConfig": {}})
    assert dict(kept.extra) == {"VpcConfig": {}}
    with pytest.raises(ValidationError, match="valid parameters: DeploymentConfig"):
        EndpointSpec.from_request({"EndpointName": "e", "EndpointConfigName": "c", "Zzz": 1})
