"""Serial pipelines: every container in order, body and Content-Type handed from stage to stage,
the client's Accept only at the last stage, and a failing stage stops the chain."""

from __future__ import annotations

import json
from contextlib import closing
from typing import Any

from conftest import (
    FAULT_IMAGE,
    call_raising,
    container,
    container_stats,
    deploy,
    invoke,
    multi_model,
    running_router,
    runtime_client,
    slot_of,
)


def _pipeline(name: str, with_hostnames: bool) -> dict[str, Any]:
    roles = ["preprocess", "model", "postprocess"]
    return multi_model(
        name,
        [container(role if with_hostnames else None, f"example/{role}:latest") for role in roles],
        "Serial",
    )


async def test_serial_example_pipeline_csv_in_labels_out(config_factory: Any) -> None:
    async with running_router(config_factory()) as router:
        endpoint = await deploy(router, _pipeline("pipeline", with_hostnames=True))
        with closing(runtime_client(router)) as client:
            # Default weights 0.5, 0.25: 1*0.5 + 2*0.25 = 1.0 (positive), 0.2*0.5 = 0.1.
            as_json = await invoke(
                client,
                EndpointName=endpoint,
                ContentType="text/csv",
                Accept="application/json",
                Body=b"1,2\n0.2,0\n",
            )
            assert json.loads(as_json["Body"]) == {"labels": ["positive", "negative"]}
            assert as_json["ContentType"] == "application/json"
            assert as_json["InvokedProductionVariant"] == "AllTraffic"

            # Without Accept the last stage answers CSV; the Accept it got was the client's.
            as_csv = await invoke(
                client, EndpointName=endpoint, ContentType="text/csv", Body=b"1,2\n0.2,0\n"
            )
            assert as_csv["Body"] == b"1.0,positive\n0.1,negative\n"
            assert as_csv["ContentType"] == "text/csv"


async def test_serial_pipeline_without_hostnames(config_factory: Any) -> None:
    """SageMaker Python SDK v2's PipelineModel: no hostnames, no InferenceExecutionConfig."""
    model = _pipeline("sdkv2", with_hostnames=False)
    del model["InferenceExecutionConfig"]
    async with running_router(config_factory()) as router:
        endpoint = await deploy(router, model)
        with closing(runtime_client(router)) as client:
            response = await invoke(
                client,
                EndpointName=endpoint,
                ContentType="text/csv",
                Accept="application/json",
                Body=b"4,0\n",
            )
        assert json.loads(response["Body"]) == {"labels": ["positive"]}
        names = [s.launch.container_name for s in router.endpoints[endpoint].deployment.slots]  # type: ignore[union-attr]
        assert names == ["container-1", "container-2", "container-3"]


async def test_serial_hands_content_type_on_and_accept_to_last_stage(config_factory: Any) -> None:
    """Each stage reports what it received (``headers`` action) and the reports nest: the final
    answer shows all three requests."""
    model = multi_model(
        "handoff",
        [
            container("first", FAULT_RESPONSE_CONTENT_TYPE="application/x-from-first"),
            container("second", FAULT_RESPONSE_CONTENT_TYPE="application/x-from-second"),
            container("third"),
        ],
        "Serial",
    )
    async with running_router(config_factory()) as router:
        endpoint = await deploy(router, model)
        with closing(runtime_client(router)) as client:
            response = await invoke(
                client,
                EndpointName=endpoint,
                ContentType="text/csv; charset=utf-8",
                Accept="application/x-client-accept",
                CustomAttributes="action=headers",
                Body=b"1,2,3",
            )
        # The client gets the last stage's answer: its Content-Type and custom attributes.
        assert response["ContentType"] == "application/json"
        assert response["CustomAttributes"] == "action=headers"

        def headers(report: dict[str, Any]) -> dict[str, str]:
            return {name.lower(): value for name, value in report["headers"]}

        third = json.loads(response["Body"])
        second = json.loads(third["body"])
        first = json.loads(second["body"])
        assert first["body"] == "1,2,3"

        assert headers(first)["content-type"] == "text/csv; charset=utf-8"
        assert headers(second)["content-type"] == "application/x-from-first"
        assert headers(third)["content-type"] == "application/x-from-second"

        assert "accept" not in headers(first), first["headers"]
        assert "accept" not in headers(second), second["headers"]
        assert headers(third)["accept"] == "application/x-client-accept"

        for report in (first, second, third):
            assert headers(report)["x-amzn-sagemaker-custom-attributes"] == "action=headers"
            assert int(headers(report)["content-length"]) == report["body_length"]


async def test_failing_stage_stops_the_chain_and_is_named(config_factory: Any) -> None:
    model = multi_model(
        "stops",
        [
            container("first"),
            container("second", FAULT_DEFAULT_ACTION="status:503"),
            container("third"),
        ],
        "Serial",
    )
    async with running_router(config_factory()) as router:
        endpoint = await deploy(router, model)
        with closing(runtime_client(router)) as client:
            error = await call_raising(client, EndpointName=endpoint, Body=b"data")
            assert isinstance(error, client.exceptions.ModelError), repr(error)
        response: dict[str, Any] = error.response  # type: ignore[attr-defined]
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
        assert response["OriginalStatusCode"] == 503
        assert response["OriginalMessage"] == "error 503"
        message = response["Error"]["Message"]
        assert "(503) from second" in message, message
        assert "first" not in message.split("See the container log")[0], message
        assert "third" not in message.split("See the container log")[0], message
        instance = slot_of(router, endpoint, "second").launch.instance_id
        assert response["LogStreamArn"].endswith(f":log-stream:AllTraffic/{instance}/second")

        assert (await container_stats(router, endpoint, "first"))["invocations"] == 1
        assert (await container_stats(router, endpoint, "second"))["invocations"] == 1
        assert (await container_stats(router, endpoint, "third"))["invocations"] == 0


async def test_failing_example_stage_is_named(config_factory: Any) -> None:
    """The model stage refuses CSV (415) when the preprocess stage is skipped: a Serial model
    whose first stage is the model itself fails at container-1, the rest never runs."""
    model = multi_model(
        "wrongorder",
        [
            container(None, "example/model:latest"),
            container(None, FAULT_IMAGE),
        ],
        "Serial",
    )
    async with running_router(config_factory()) as router:
        endpoint = await deploy(router, model)
        with closing(runtime_client(router)) as client:
            error = await call_raising(
                client, EndpointName=endpoint, ContentType="text/csv", Body=b"1,2"
            )
            assert isinstance(error, client.exceptions.ModelError), repr(error)
        response: dict[str, Any] = error.response  # type: ignore[attr-defined]
        assert response["OriginalStatusCode"] == 415
        assert "model accepts application/json" in response["OriginalMessage"]
        assert "(415) from container-1" in response["Error"]["Message"]
        assert (await container_stats(router, endpoint, "container-2"))["invocations"] == 0
