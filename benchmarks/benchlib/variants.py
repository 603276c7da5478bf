"""Router features measured on versus off once they exist.

Each variant is a top-level router config section. Until the router knows the key it refuses
the config (``config: unknown keys ['metrics']``, exit status 2); the harness then prints
"not available in this build" and skips the variant, so no change is needed here when the
feature lands *with this shape*. If it lands with another shape, the router names the wrong
setting and the harness says so: adjust ``on``/``off`` below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Variant:
    name: str
    #: The top-level config key the feature adds.
    key: str
    #: Config sections merged into a Direct-only router config for the "on" and "off" routers.
    on: dict[str, Any]
    off: dict[str, Any]
    #: Requests must carry a SigV4 signature (computed with botocore for each run).
    sign: bool = False


#: Credentials the "auth on" router is configured with and wrk signs with.
BENCH_ACCESS_KEY = "AKIDMCEBENCHMARK0001"
BENCH_SECRET_KEY = "mce-router-benchmark-secret-not-a-real-key"
BENCH_REGION = "us-east-1"

VARIANTS: tuple[Variant, ...] = (
    Variant(
        name="metrics",
        key="metrics",
        on={"metrics": {"enabled": True}},
        off={"metrics": {"enabled": False}},
    ),
    Variant(
        name="auth",
        key="auth",
        on={
            "auth": {
                "mode": "sigv4",
                "credentials": [
                    {
                        "access_key_id": BENCH_ACCESS_KEY,
                        "secret_access_key": BENCH_SECRET_KEY,
                        # IAM evaluation is part of what "auth on" costs: one Allow statement.
                        "policies": [
                            {
                                "Version": "2012-10-17",
                                "Statement": [
                                    {
                                        "Effect": "Allow",
                                        "Action": "sagemaker:InvokeEndpoint",
                                        "Resource": "*",
                                    }
                                ],
                            }
                        ],
                    }
                ],
            }
        },
        # Off = no auth section at all: the router as it runs without the feature configured.
        off={},
        sign=True,
    ),
)


def sigv4_headers(url: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
    """Authorization and X-Amz-Date for one request, as boto3 would send them."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    SigV4Auth(Credentials(BENCH_ACCESS_KEY, BENCH_SECRET_KEY), "sagemaker", BENCH_REGION).add_auth(
        request
    )
    return {
        name: value
        for name, value in request.headers.items()
        if name.lower() in ("authorization", "x-amz-date", "x-amz-security-token")
    }
