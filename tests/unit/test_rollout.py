"""The pure parts of blue/green rollouts: DeploymentConfig validation, the steps of a shift,
alarm datapoints, and the alarms section of the router config."""

from __future__ import annotations

from typing import Any

import pytest

from mce_router.config import AlarmSpec, RouterConfig
from mce_router.endpoints.rollout import (
    BlueGreenPlan,
    breaches,
    datapoint,
    parse_deployment_config,
)
from mce_router.errors import ConfigError, ValidationError

ALARM = AlarmSpec(name="errors")


def plan(routing: dict[str, Any], **policy: Any) -> BlueGreenPlan:
    parsed = parse_deployment_config(
        {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing, **policy}}, [ALARM]
    )
    assert parsed is not None
    return parsed


def test_steps_of_each_traffic_type() -> None:
    assert plan({"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}).shares(4) == [1.0]
    canary = {"Type": "INSTANCE_COUNT", "Value": 1}
    assert plan({"Type": "CANARY", "WaitIntervalInSeconds": 5, "CanarySize": canary}).shares(4) == [
        0.25,
        1.0,
    ]
    step = {"Type": "CAPACITY_PERCENT", "Value": 25}
    linear = plan({"Type": "LINEAR", "WaitIntervalInSeconds": 5, "LinearStepSize": step})
    assert linear.shares(1) == [0.25, 0.5, 0.75, 1.0]
    assert linear.termination_wait_seconds == 0
    assert linear.max_execution_seconds == 28800


def test_no_blue_green_policy_means_no_plan() -> None:
    assert parse_deployment_config(None, []) is None
    assert parse_deployment_config({}, []) is None


def test_rolling_update_and_unknown_alarm_are_refused() -> None:
    with pytest.raises(ValidationError, match="RollingUpdatePolicy is not supported"):
        parse_deployment_config({"RollingUpdatePolicy": {}}, [])
    with pytest.raises(ValidationError, match=r"alarm other named .* defined: errors"):
        parse_deployment_config(
            {"AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "other"}]}}, [ALARM]
        )


def test_datapoints_and_thresholds() -> None:
    before, after = (10, 0, 1, 1.0), (14, 1, 3, 1.4)
    assert datapoint(ALARM, before, after) == 2.0
    rate = AlarmSpec(name="r", statistic="Average")
    assert datapoint(rate, before, after) == 0.5
    latency = AlarmSpec(name="l", metric="ModelLatency", statistic="Average")
    assert datapoint(latency, before, after) == pytest.approx(100_000.0)
    assert datapoint(ALARM, after, after) is None  # no calls: missing data, no state change
    assert breaches(ALARM, 1.0) and not breaches(ALARM, 0.0)
    assert breaches(AlarmSpec(name="ge", comparison="GreaterThanOrEqualToThreshold"), 0.0)


def test_config_alarms_are_validated() -> None:
    config = RouterConfig.from_mapping(
        {
            "alarms": [
                {"name": "a", "metric": "ModelLatency", "threshold": 5, "statistic": "Average"}
            ]
        }
    )
    assert config.alarms == (
        AlarmSpec(name="a", metric="ModelLatency", threshold=5.0, statistic="Average"),
    )
    for bad, message in [
        ({"name": "a", "metric": "CPU"}, "alarms\\[0\\].metric: must be one of"),
        ({"name": ""}, "alarms\\[0\\].name"),
        ({"name": "a", "fleet": "old"}, "alarms\\[0\\].fleet"),
        ({"name": "a", "period_seconds": 0}, "period_seconds must be greater than 0"),
        ({"name": "a", "colour": "red"}, "colour"),
    ]:
        with pytest.raises(ConfigError, match=message):
            RouterConfig.from_mapping({"alarms": [bad]})
    with pytest.raises(ConfigError, match="defined twice"):
        RouterConfig.from_mapping({"alarms": [{"name": "a"}, {"name": "a"}]})
