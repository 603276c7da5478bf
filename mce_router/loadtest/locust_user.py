"""A Locust user that sends SageMaker InvokeEndpoint requests with the harness's mix file, so
Locust's distributed mode (one master, many workers on many machines) carries the load when one
machine is not enough.

Import it from a locustfile (see examples/loadtest/locustfile.py)::

    from mce_router.loadtest.locust_user import SageMakerUser

    class Invoke(SageMakerUser):
        pass

and run ``locust -f locustfile.py --host http://127.0.0.1:8080 --mce-mix mix.yaml
--mce-endpoint NAME`` (or set ``MCE_LOADTEST_MIX`` / ``MCE_LOADTEST_ENDPOINT``). Requests are
SigV4-signed with botocore's credential chain when it finds credentials (``--mce-sign
auto|on|off``); each target container is a separate row in Locust's statistics, and a
non-2xx answer is a failure named by its status and SageMaker error code.

This module imports Locust, which monkey-patches the standard library with gevent at import
time: only Locust processes should import it, never the router or ``mce-router loadtest``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

from locust import events, task
from locust.contrib.fasthttp import FastHttpUser

from .config import LoadConfig, LoadTestError, Mix, parse_mix, read_document
from .engine import PLAN_LENGTH, error_code, plan
from .signing import RequestBuilder


def _arguments(parser: Any) -> None:
    parser.add_argument(
        "--mce-mix",
        default=os.environ.get("MCE_LOADTEST_MIX", ""),
        help="mce-router loadtest mix file (YAML/JSON): targets, weights, payloads",
    )
    parser.add_argument(
        "--mce-endpoint",
        default=os.environ.get("MCE_LOADTEST_ENDPOINT", ""),
        help="EndpointName to invoke",
    )
    parser.add_argument(
        "--mce-sign",
        default=os.environ.get("MCE_LOADTEST_SIGN", "auto"),
        choices=["auto", "on", "off"],
        help="SigV4 signing (auto: when botocore finds credentials)",
    )
    parser.add_argument(
        "--mce-region", default=os.environ.get("AWS_REGION", "us-east-1"), help="SigV4 region"
    )


events.init_command_line_parser.add_listener(_arguments)  # type: ignore[no-untyped-call]


class SageMakerUser(FastHttpUser):
    """One Locust user: invokes the endpoint back to back (add ``wait_time`` for think time),
    following the mix's weights exactly (the same smooth weighted round-robin as the harness)."""

    abstract = True
    #: The mix and the request builder are built once per process, shared by its users.
    _shared: ClassVar[
        dict[tuple[str, str, str, str, str], tuple[Mix, RequestBuilder, list[tuple[int, int]]]]
    ] = {}

    def on_start(self) -> None:
        options = self.environment.parsed_options
        mix_file = getattr(options, "mce_mix", "") or os.environ.get("MCE_LOADTEST_MIX", "")
        endpoint = getattr(options, "mce_endpoint", "") or os.environ.get(
            "MCE_LOADTEST_ENDPOINT", ""
        )
        if not mix_file or not endpoint:
            raise LoadTestError("set --mce-mix and --mce-endpoint (or MCE_LOADTEST_MIX/_ENDPOINT)")
        sign: Literal["auto", "on", "off"] = "auto"
        chosen = getattr(options, "mce_sign", "auto")
        if chosen in ("on", "off"):
            sign = "on" if chosen == "on" else "off"
        region = getattr(options, "mce_region", "us-east-1")
        host = str(self.host)
        key = (mix_file, endpoint, sign, region, host)
        if key not in self._shared:
            path = Path(mix_file)
            mix = parse_mix(read_document(path), path.parent)
            config = LoadConfig(url=host, endpoint=endpoint, mix=mix, sign=sign, region=region)
            self._shared[key] = (mix, RequestBuilder(config), plan(mix, 0))
        self.mix, self.builder, self.sequence = self._shared[key]
        # Each user starts at a random point of the sequence, so together they keep the mix.
        self.position = random.randrange(PLAN_LENGTH)

    @task
    def invoke(self) -> None:
        t, p = self.sequence[self.position]
        self.position = (self.position + 1) % PLAN_LENGTH
        target = self.mix.targets[t]
        with self.client.post(
            self.builder.path,
            # geventhttpclient sends bytes as they are; Locust's annotation only names str.
            data=cast(Any, target.payloads[p]),
            headers=self.builder.headers(t, p),
            name=target.name,
            catch_response=True,
        ) as response:
            status = response.status_code or 0
            if status < 200 or status >= 300:
                error_type = (
                    response.headers.get("x-amzn-ErrorType", "") if response.headers else ""
                )
                code = error_code(error_type.encode("latin-1"), [response.content or b""])
                response.failure(f"{status} {code}".strip())
