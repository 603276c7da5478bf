"""The SageMaker Python SDK (v2, ``sagemaker<3``) pointed at the router: a PipelineModel deployed
with ``wait=False``, boto3's waiter, ``Predictor.predict``, then ``Predictor.update_endpoint``
(ListTags) and another prediction.

The SDK is in the ``test`` extra; without it installed this test is skipped (``-m "not sdk"``
deselects it explicitly). Nothing may leave the machine: every other AWS endpoint is pointed at
a loopback port that refuses connections, and every HTTP(S) client that honours the proxy
environment (botocore, requests: the SDK's telemetry uses it) is sent to a recording listener on
loopback instead of the internet; the test fails if anything went there.
"""

from __future__ import annotations

import asyncio
import importlib
from contextlib import closing
from typing import Any

import boto3
import pytest
from botocore.config import Config
from conftest import FAST_WAITER, nothing_leaves_the_machine, running_router

ROLE = "arn:aws:iam::000000000000:role/x"

pytestmark = pytest.mark.sdk


def _import_sdk(monkeypatch: pytest.MonkeyPatch) -> Any:
    # The v2 SDK warns about its deprecation on import (an error under filterwarnings=error)
    # unless told not to.
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    try:
        return importlib.import_module("sagemaker")
    except ImportError:
        pytest.skip("the SageMaker Python SDK is not installed: pip install 'sagemaker<3'")


async def test_sdk_pipeline_model_deploys_and_predicts(
    config_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with nothing_leaves_the_machine(monkeypatch):
        await _deploy_and_predict(config_factory, monkeypatch)


async def _deploy_and_predict(config_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sagemaker = _import_sdk(monkeypatch)
    from sagemaker.deserializers import CSVDeserializer
    from sagemaker.model import Model
    from sagemaker.pipeline import PipelineModel
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import CSVSerializer

    async with running_router(config_factory()) as router:
        boto_session = boto3.Session(
            region_name="us-east-1",
            aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        )
        no_retries = Config(retries={"max_attempts": 1, "mode": "standard"})
        sm = boto_session.client("sagemaker", endpoint_url=router.admin_url, config=no_retries)
        runtime = boto_session.client(
            "sagemaker-runtime", endpoint_url=router.runtime_url, config=no_retries
        )
        operations: list[str] = []
        sm.meta.events.register(
            "before-call.sagemaker", lambda model, **_: operations.append(model.name)
        )
        with closing(sm), closing(runtime):
            session = sagemaker.Session(
                boto_session=boto_session,
                sagemaker_client=sm,
                sagemaker_runtime_client=runtime,
            )

            def deploy_and_predict() -> Any:
                models = [
                    Model(image_uri=f"example/{role}:latest", role=ROLE, sagemaker_session=session)
                    for role in ("preprocess", "model", "postprocess")
                ]
                pipeline = PipelineModel(
                    models=models, role=ROLE, sagemaker_session=session, name="sdk-pipeline"
                )
                pipeline.deploy(
                    initial_instance_count=1,
                    instance_type="ml.m5.large",
                    endpoint_name="sdk-endpoint",
                    wait=False,
                )
                sm.get_waiter("endpoint_in_service").wait(
                    EndpointName="sdk-endpoint", WaiterConfig=FAST_WAITER
                )
                predictor = Predictor(
                    "sdk-endpoint",
                    sagemaker_session=session,
                    serializer=CSVSerializer(),
                    deserializer=CSVDeserializer(),
                )
                first = predictor.predict([[1, 2, 3], [4, 5, 6]])
                # Lineage (DescribeEndpoint, then ListContexts by the endpoint's ARN): the
                # router keeps none, so the SDK finds no context rather than failing.
                assert predictor.endpoint_context() is None
                # The SDK copies the endpoint config (DescribeEndpointConfig, ListTags of it,
                # CreateEndpointConfig) and updates the endpoint to the copy.
                predictor.update_endpoint(
                    initial_instance_count=1, instance_type="ml.m5.large", wait=False
                )
                sm.get_waiter("endpoint_in_service").wait(
                    EndpointName="sdk-endpoint", WaiterConfig=FAST_WAITER
                )
                assert predictor.predict([[1, 2, 3], [4, 5, 6]]) == first
                return first

            prediction = await asyncio.to_thread(deploy_and_predict)

        # preprocess -> model (weights 0.5, 0.25, 0.125) -> postprocess, as in the quickstart.
        assert prediction == [["1.375", "positive"], ["4.0", "positive"]]
        assert operations[:3] == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"]
        assert {"ListContexts", "ListTags", "UpdateEndpoint"} <= set(operations[3:])
        serving = router.describe_endpoint("sdk-endpoint")["EndpointConfigName"]
        assert serving != "sdk-endpoint"  # the SDK's copy of the config serves
        described = router.describe_model("sdk-pipeline")
        assert described["InferenceExecutionConfig"] == {"Mode": "Serial"}
        assert [c["Image"] for c in described["Containers"]] == [
            "example/preprocess:latest",
            "example/model:latest",
            "example/postprocess:latest",
        ]
        assert described["ExecutionRoleArn"] == ROLE
