"""RouterConfig.from_mapping / from_file: values land where they belong, every error names the
field it is about."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mce_router import ConfigError, RouterConfig
from mce_router.config import (
    SAGEMAKER_PAYLOAD_LIMIT,
    ExternalImage,
    Limits,
    ProcessImage,
    parse_external_url,
)


def test_defaults() -> None:
    config = RouterConfig.from_mapping({})
    assert config.limits.max_request_body_bytes == SAGEMAKER_PAYLOAD_LIMIT == 6291456
    assert config.limits.max_containers_per_model == 15
    assert config.limits.invocation_timeout_seconds == 60.0
    assert config.health.startup_timeout_seconds == 480.0
    assert config.health.ping_timeout_seconds == 2.0
    assert config.process.stop_grace_seconds == 30.0
    assert config.listener.port == 8080 and config.listener.admin_port == 8081
    assert config.models == config.endpoint_configs == config.endpoints == ()


def test_full_mapping(tmp_path: Path) -> None:
    raw: dict[str, Any] = {
        "images": {
            "local/model:1": {
                "command": ["python", "-m", "model"],
                "environment": {"THREADS": 4},
                "working_dir": "work",
            },
            "remote/model:1": {"url": "http://10.0.0.5:9000"},
        },
        "listen": {"host": "0.0.0.0", "port": 0, "admin_port": 9001},
        "limits": {"invocation_timeout_seconds": 5, "max_containers_per_model": 4},
        "health": {"startup_timeout_seconds": 30},
        "process": {"stop_grace_seconds": 0},
        "state_dir": "state",
        "region": "eu-west-1",
        "account_id": "123456789012",
        # Declared resources are checked as CreateX bodies when the config loads.
        "models": [{"ModelName": "m", "Containers": [{"Image": "local/model:1"}]}],
        "endpoint_configs": [
            {
                "EndpointConfigName": "c",
                "ProductionVariants": [{"VariantName": "v", "ModelName": "m"}],
            }
        ],
        "endpoints": [{"EndpointName": "e", "EndpointConfigName": "c"}],
    }
    config = RouterConfig.from_mapping(raw, base_dir=tmp_path)
    local = config.images["local/model:1"]
    assert isinstance(local, ProcessImage)
    assert local.command == ("python", "-m", "model")
    assert dict(local.environment) == {"THREADS": "4"}
    assert local.working_dir == str(tmp_path / "work")
    remote = config.images["remote/model:1"]
    assert remote == ExternalImage(url="http://10.0.0.5:9000", host="10.0.0.5", port=9000)
    assert config.listener.host == "0.0.0.0" and config.listener.admin_port == 9001
    # Integers are accepted for float settings and become floats.
    assert config.limits.invocation_timeout_seconds == 5.0
    assert isinstance(config.limits.invocation_timeout_seconds, float)
    assert config.limits.max_containers_per_model == 4
    assert config.health.startup_timeout_seconds == 30.0
    assert config.process.stop_grace_seconds == 0.0
    assert config.state_dir == (tmp_path / "state").resolve()
    assert (config.region, config.account_id) == ("eu-west-1", "123456789012")
    assert config.models == ({"ModelName": "m", "Containers": [{"Image": "local/model:1"}]},)
    assert config.endpoints == ({"EndpointName": "e", "EndpointConfigName": "c"},)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([], "config: the top level must be a mapping"),
        ({"limit": {}}, "config.limit: unknown setting 'limit'; did you mean 'limits'?"),
        ({"limits": []}, "config.limits: must be a mapping"),
        ({"limits": {"bogus": 1}}, "config.limits.bogus: unknown setting"),
        (
            {"limits": {"invocation_timeout_seconds": "soon"}},
            "config.limits.invocation_timeout_seconds: expected float, got 'soon'",
        ),
        (
            {"limits": {"max_containers_per_model": True}},
            "config.limits.max_containers_per_model: expected int, got True",
        ),
        (
            {"limits": {"max_containers_per_model": 2.5}},
            "config.limits.max_containers_per_model: expected int, got 2.5",
        ),
        (
            {"limits": {"max_request_body_bytes": 0}},
            "config.limits.max_request_body_bytes: must be greater than 0 (got 0)",
        ),
        (
            {"health": {"ping_interval_seconds": -1}},
            "config.health.ping_interval_seconds: must be greater than 0",
        ),
        (
            {"process": {"stop_grace_seconds": -1}},
            "config.process.stop_grace_seconds: must be 0 or more",
        ),
        (
            {"process": {"safe_port_range_start": 80}},
            "config.process: safe port ranges must lie within 1024..65535",
        ),
        ({"listen": {"port": 70000}}, "config.listen.port: must be 0..65535"),
        ({"listen": {"admin_port": -1}}, "config.listen.admin_port: must be 0..65535"),
        ({"listen": {"host": 1}}, "config.listen.host: expected str, got 1"),
        ({"images": ["x"]}, "config.images: must map an image URI"),
        ({"images": {"a": "python"}}, "config.images['a']: must be a mapping"),
        ({"images": {"a": {}}}, "config.images['a']: needs 'command'"),
        ({"images": {"a": {"command": "python x.py"}}}, "config.images['a'].command: must be"),
        ({"images": {"a": {"command": []}}}, "config.images['a'].command: must be"),
        ({"images": {"a": {"command": ["python", 1]}}}, "config.images['a'].command: must be"),
        (
            {"images": {"a": {"command": ["x"], "environment": ["A=1"]}}},
            "config.images['a'].environment: must map names to values",
        ),
        (
            {"images": {"a": {"command": ["x"], "cwd": "/"}}},
            "config.images['a'].cwd: unknown setting 'cwd'; "
            "valid settings: command, environment, working_dir",
        ),
        (
            {"images": {"a": {"url": "http://h:1", "command": ["x"]}}},
            "config.images['a']: an external image takes only 'url', not ['command']",
        ),
        ({"images": {"a": {"url": "https://h:1"}}}, "config.images['a'].url: must look like"),
        ({"images": {"a": {"url": "http://h:1/path"}}}, "config.images['a'].url: must look like"),
        ({"images": {"a": {"url": "http://h:99999"}}}, "config.images['a'].url: bad port"),
        ({"models": {"ModelName": "m"}}, "config.models: must be a list of request bodies"),
        ({"endpoints": ["e"]}, "config.endpoints: must be a list of request bodies"),
    ],
)
def test_errors_name_the_field(raw: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RouterConfig.from_mapping(raw)
    assert expected in caught.value.message, caught.value.message
    assert str(caught.value) == caught.value.message


def test_python_construction_is_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"config\.limits\.invocation_timeout_seconds"):
        RouterConfig(limits=Limits(invocation_timeout_seconds=0))
    config = RouterConfig()
    with pytest.raises(ConfigError, match=r"config\.listen\.port"):
        config.replace(listener=config.listener.__class__(port=65536))


def test_external_url_default_port() -> None:
    assert parse_external_url("http://example.internal", "x").port == 80
    assert parse_external_url("http://127.0.0.1:8080/", "x").port == 8080


def test_from_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "router.yaml"
    path.parent.mkdir()
    path.write_text("state_dir: st\nlimits:\n  invocation_timeout_seconds: 2\n")
    config = RouterConfig.from_file(path)
    assert config.state_dir == (tmp_path / "conf" / "st").resolve()
    assert config.limits.invocation_timeout_seconds == 2.0

    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert RouterConfig.from_file(empty).limits == Limits()

    with pytest.raises(ConfigError, match="cannot read"):
        RouterConfig.from_file(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("limits: [unclosed\n")
    with pytest.raises(
        ConfigError, match=r"broken.yaml:2:1: YAML syntax error: while parsing a flow sequence"
    ):
        RouterConfig.from_file(broken)


def test_declared_resources_are_checked_at_load_naming_resource_field_and_closest_name() -> None:
    model = {"ModelName": "m1", "Containers": [{"Image": "i", "Enviroment": {}}]}
    with pytest.raises(ConfigError) as caught:
        RouterConfig.from_mapping({"models": [model]})
    assert caught.value.message.startswith("config.models[0] (ModelName 'm1'): ")
    assert "'Containers[0].Enviroment'" in caught.value.message
    assert "did you mean 'Containers[0].Environment'?" in caught.value.message

    variantless = {"EndpointConfigName": "c1"}
    with pytest.raises(ConfigError) as caught:
        RouterConfig.from_mapping({"endpoint_configs": [variantless]})
    assert caught.value.message == (
        "config.endpoint_configs[0] (EndpointConfigName 'c1'): 1 validation error detected: "
        "Value null at 'ProductionVariants' failed to satisfy constraint: Member must not be null"
    )


def test_bind_port_range_stays_below_32768_and_apart_from_the_safe_ranges() -> None:
    with pytest.raises(ConfigError, match=r"must lie within 1024..32767"):
        RouterConfig.from_mapping({"process": {"bind_port_range_start": 40000}})
    with pytest.raises(ConfigError, match="overlaps the safe port ranges"):
        RouterConfig.from_mapping(
            {"process": {"bind_port_range_start": 25000, "bind_port_range_size": 10}}
        )


def test_tracing_and_emf_sections_load_and_are_validated() -> None:
    config = RouterConfig.from_mapping(
        {
            "tracing": {
                "sample_new_traces": False,
                "otel_enabled": True,
                "otel_endpoint": "http://127.0.0.1:4318/v1/traces",
                "hop_log_enabled": True,
                "hop_log_size": 7,
            },
            "metrics": {"emf_enabled": True, "emf_path": "-", "emf_interval_seconds": 5},
        }
    )
    assert config.tracing.otel_enabled and not config.tracing.sample_new_traces
    assert config.tracing.hop_log_size == 7 and config.tracing.hooks_enabled
    assert config.metrics.emf_enabled and config.metrics.emf_interval_seconds == 5.0
    assert not RouterConfig().tracing.hooks_enabled  # nothing on the hot path by default
    for raw, expected in (
        ({"tracing": {"otel_enabled": True, "otel_endpoint": "ftp://x"}}, "otel_endpoint"),
        ({"tracing": {"hop_log_size": 0}}, "tracing.hop_log_size"),
        ({"tracing": {"hop_log_input_max_bytes": 2 * 1024 * 1024}}, "hop_log_input_max_bytes"),
        ({"tracing": {"hop_log": True}}, "hop_log"),
        ({"metrics": {"emf_path": ""}}, "emf_path"),
        ({"metrics": {"emf_interval_seconds": 0}}, "emf_interval_seconds"),
    ):
        with pytest.raises(ConfigError, match=expected):
            RouterConfig.from_mapping(raw)
