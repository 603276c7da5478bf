"""Liveness versus readiness on the admin port: ``GET /ping`` answers 200 while the router
runs at all (SageMaker's liveness), ``GET /ready`` only while every declared endpoint serves and
the router is not draining, as a load balancer's or Kubernetes' readiness probe expects."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from conftest import (
    container,
    endpoint_config,
    free_port,
    http_get,
    multi_model,
    until_invoked,
    wait_until,
)

from mce_router import Router
from mce_router.config import Listener


async def _probe(port: int, path: str) -> tuple[int, Any]:
    try:
        status, body = await http_get(port, path)
    except OSError:
        return 0, None
    return status, json.loads(body) if path == "/ready" else body


async def test_ready_only_when_declared_endpoints_serve_and_not_while_draining(
    config_factory: Any,
) -> None:
    admin_port = free_port()
    config = config_factory(
        listener=Listener(host="127.0.0.1", port=0, admin_port=admin_port),
        # The container takes a second and a half before it listens.
        models=(multi_model("slow", [container("a", FAULT_STARTUP="delay:1.5")], "Direct"),),
        endpoint_configs=(endpoint_config("slow", "slow"),),
        endpoints=({"EndpointName": "slow", "EndpointConfigName": "slow"},),
    )
    router = Router(config)
    starting = asyncio.ensure_future(router.start())
    try:

        async def admin_up() -> bool:
            return (await _probe(admin_port, "/ping"))[0] == 200

        await wait_until(admin_up, 10, "the admin listener")
        # Alive, not ready: the declared endpoint is still being created.
        status, body = await _probe(admin_port, "/ready")
        assert not starting.done()
        assert status == 503, body
        assert body["ready"] is False
        assert body["reason"] == "declared endpoints not serving: slow"
        assert body["endpoints"]["slow"] in ("NotCreated", "Creating")

        await starting
        status, body = await _probe(admin_port, "/ready")
        assert (status, body) == (200, {"ready": True, "endpoints": {"slow": "InService"}})

        # Draining: a request keeps the drain waiting; readiness goes at once, liveness stays.
        reader, writer = await asyncio.open_connection("127.0.0.1", router.runtime_port)
        writer.write(
            b"POST /endpoints/slow/invocations HTTP/1.1\r\nHost: x\r\n"
            b"X-Amzn-SageMaker-Target-Container-Hostname: a\r\n"
            b"X-Amzn-SageMaker-Custom-Attributes: action=sleep:2\r\nContent-Length: 0\r\n\r\n"
        )
        await writer.drain()
        await until_invoked(router, "slow", "a", 1)
        stopping = asyncio.ensure_future(router.stop(drain_seconds=10))
        await asyncio.sleep(0.3)
        assert not stopping.done()
        status, body = await _probe(admin_port, "/ready")
        assert (status, body["reason"]) == (503, "the router is draining")
        assert (await _probe(admin_port, "/ping"))[0] == 200
        answer = await reader.readline()
        assert answer.startswith(b"HTTP/1.1 200"), answer  # the drain let it finish
        writer.close()
        await stopping
    finally:
        if not starting.done():
            starting.cancel()
        await router.stop(drain_seconds=0)
