"""W3C traceparent through the proxy: the client's reaches every container (Direct, and each
Serial stage), a new one is started when it is absent or malformed."""

from __future__ import annotations

import json
import re
from contextlib import closing
from typing import Any

from conftest import (
    container,
    deploy,
    direct_model,
    headers_report,
    invoke,
    multi_model,
    running_router,
    runtime_client,
    send_extra_headers,
)

from mce_router.config import TracingSettings

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
_FORMAT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$")


def _trace_headers(report: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in report["headers"]:
        if name.lower() in ("traceparent", "tracestate"):
            found.setdefault(name.lower(), []).append(value)
    return found


async def test_serial_forwards_the_client_traceparent_to_every_stage(config_factory: Any) -> None:
    model = multi_model(
        "traced", [container("first"), container("second"), container("third")], "Serial"
    )
    async with running_router(config_factory()) as router:
        endpoint = await deploy(router, model)
        with closing(runtime_client(router)) as client:
            send_extra_headers(client, {"traceparent": TRACEPARENT, "tracestate": "vendor=opaque"})
            response = await invoke(
                client, EndpointName=endpoint, CustomAttributes="action=headers", Body=b"x"
            )
    third = json.loads(response["Body"])
    second = json.loads(third["body"])
    first = json.loads(second["body"])
    for report in (first, second, third):
        assert _trace_headers(report) == {
            "traceparent": [TRACEPARENT],
            "tracestate": ["vendor=opaque"],
        }


async def test_direct_starts_a_trace_when_none_or_a_malformed_one_is_sent(
    config_factory: Any,
) -> None:
    config = config_factory(tracing=TracingSettings(sample_new_traces=False))
    async with running_router(config) as router:
        endpoint = await deploy(router, direct_model("direct-traced", ["alpha"]))
        seen: list[str] = []
        for extra in ({}, {}, {"traceparent": "00-zz-bad", "tracestate": "leak=1"}):
            with closing(runtime_client(router)) as client:
                send_extra_headers(client, extra)
                report = await headers_report(
                    client, EndpointName=endpoint, TargetContainerHostname="alpha"
                )
            found = _trace_headers(report)
            assert "tracestate" not in found, found  # it belonged to the dropped traceparent
            (value,) = found["traceparent"]
            assert _FORMAT.match(value), value
            assert value.endswith("-00")  # sample_new_traces: false
            seen.append(value)
        # New random ids each time, never the malformed value.
        assert len({value.split("-")[1] for value in seen}) == 3
        assert len({value.split("-")[2] for value in seen}) == 3
