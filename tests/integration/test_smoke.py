from __future__ import annotations

from typing import Any

from conftest import deploy, direct_model, invoke, running_router, runtime_client


async def test_direct_echo_through_boto3(config_factory: Any) -> None:
    async with running_router(config_factory()) as router:
        endpoint = await deploy(router, direct_model("smoke", ["a", "b"]))
        client = runtime_client(router)
        response = await invoke(
            client,
            EndpointName=endpoint,
            TargetContainerHostname="b",
            ContentType="text/csv; charset=utf-8",
            Body=b"1,2,3",
            CustomAttributes="trace=1",
        )
        assert response["Body"] == b"1,2,3"
        assert response["ContentType"] == "text/csv; charset=utf-8"
        assert response["InvokedProductionVariant"] == "AllTraffic"
        assert response["CustomAttributes"] == "trace=1"


async def test_endpoint_names_ignore_case_on_the_runtime_api(config_factory: Any) -> None:
    """The control plane treats names case-insensitively (as SageMaker does); so does routing."""
    async with running_router(config_factory()) as router:
        await deploy(router, direct_model("CaseName", ["a"]))
        client = runtime_client(router)
        for spelling in ("CaseName", "casename", "CASENAME"):
            response = await invoke(
                client, EndpointName=spelling, TargetContainerHostname="a", Body=b"x"
            )
            assert response["Body"] == b"x"
