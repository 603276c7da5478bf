"""ListContexts (SageMaker ML Lineage Tracking): answered, always empty, in the shape botocore
expects; the router keeps no lineage graph (README "Control plane")."""

from __future__ import annotations

import asyncio
from contextlib import closing
from typing import Any

from conftest import control_client, deploy, direct_model, running_router, validate_output


async def test_list_contexts_is_empty_for_any_filter(config_factory: Any) -> None:
    async with running_router(config_factory()) as router:
        await deploy(router, direct_model("lineage", ["alpha"]))
        arn = router.describe_endpoint("lineage")["EndpointArn"]
        with closing(control_client(router.admin_url)) as sm:
            for kwargs in ({}, {"SourceUri": arn}, {"ContextType": "Endpoint", "MaxResults": 5}):
                response = await asyncio.to_thread(sm.list_contexts, **kwargs)
                validate_output(sm, "ListContexts", response)
                assert response["ContextSummaries"] == []
                assert "NextToken" not in response
            # Pagination ends at once.
            pages = await asyncio.to_thread(
                lambda: list(sm.get_paginator("list_contexts").paginate(SourceUri=arn))
            )
            assert [page["ContextSummaries"] for page in pages] == [[]]
