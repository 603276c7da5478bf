from __future__ import annotations

from typing import Any

from conftest import (
    FAULT_IMAGE,
    call_raising,
    deploy,
    direct_model,
    invoke,
    running_router,
    runtime_client,
)


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


async def test_each_variant_routes_by_its_own_models_mode(config_factory: Any) -> None:
    """An endpoint whose variants deploy a Direct and a Serial model: the Direct rules apply to
    the Direct variant only (the mode belongs to the variant's model, not to the endpoint)."""
    async with running_router(config_factory()) as router:
        router.create_model(direct_model("mixed-direct", ["a"]))
        router.create_model({"ModelName": "mixed-serial", "Containers": [{"Image": FAULT_IMAGE}]})
        router.create_endpoint_config(
            {
                "EndpointConfigName": "mixed",
                "ProductionVariants": [
                    {"VariantName": "Direct", "ModelName": "mixed-direct"},
                    {"VariantName": "Serial", "ModelName": "mixed-serial"},
                ],
            }
        )
        await router.create_endpoint({"EndpointName": "mixed", "EndpointConfigName": "mixed"})
        client = runtime_client(router)
        direct = await invoke(
            client,
            EndpointName="mixed",
            TargetVariant="Direct",
            TargetContainerHostname="a",
            Body=b"d",
        )
        assert (direct["Body"], direct["InvokedProductionVariant"]) == (b"d", "Direct")
        serial = await invoke(client, EndpointName="mixed", TargetVariant="Serial", Body=b"s")
        assert (serial["Body"], serial["InvokedProductionVariant"]) == (b"s", "Serial")
        error = await call_raising(
            client, EndpointName="mixed", TargetVariant="Direct", Body=b"no target"
        )
        assert isinstance(error, client.exceptions.ValidationError)
        error = await call_raising(
            client,
            EndpointName="mixed",
            TargetVariant="Serial",
            TargetContainerHostname="a",
            Body=b"target on serial",
        )
        assert isinstance(error, client.exceptions.ValidationError)
