"""Smoke: a Direct endpoint of two real images, through the router's own methods."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import deploy, direct_model, runtime_client
from enginelib import (  # the fixtures, too: a conftest.py here would shadow tests/conftest.py
    QUICKSTART_IMAGE,
    Engine,
    engine,
    engine_config,
    engine_router,
    invoke_target,
    no_container_left_behind,
)

pytestmark = pytest.mark.engine
__all__ = ["engine", "no_container_left_behind"]


async def test_direct_endpoint_of_real_images(engine: Engine, tmp_path: Path) -> None:
    async with engine_router(engine_config(engine, tmp_path)) as router:
        model = direct_model("smoke", ["pre", "model"], image=QUICKSTART_IMAGE)
        model["Containers"][0]["Environment"] = {"EXAMPLE_ROLE": "preprocess"}
        await router.check_model(model)
        await deploy(router, model)
        client = runtime_client(router)
        answer = await invoke_target(client, "smoke", "pre", b"1,2,3\n", "text/csv")
        assert answer == b'{"instances":[[1.0,2.0,3.0]]}'
        answer = await invoke_target(client, "smoke", "model", b'{"instances": [[1, 2, 3]]}')
        assert answer == b'{"predictions":[1.375]}'
