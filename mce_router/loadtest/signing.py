"""Pre-built InvokeEndpoint requests, SigV4-signed by botocore when credentials are present.

A request is one ``bytes`` object (head and body). Unsigned, it is built once per payload. A
SigV4 signature covers ``X-Amz-Date`` (to the second), so a signed request is rebuilt at most
once a second per payload and reused for every send within that second: botocore's
``SigV4Auth`` (the signer boto3 uses) runs a few times a second instead of per request.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from .config import Credentials, LoadConfig, LoadTestError, Target

TARGET_HEADER = "X-Amzn-SageMaker-Target-Container-Hostname"
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"


def invocation_headers(target: Target) -> dict[str, str]:
    """The InvokeEndpoint headers of one target (as boto3 names them on the wire)."""
    headers = {"Content-Type": target.content_type}
    if target.accept is not None:
        headers["Accept"] = target.accept
    if target.container is not None:
        headers[TARGET_HEADER] = target.container
    if target.custom_attributes is not None:
        headers[CUSTOM_ATTRIBUTES_HEADER] = target.custom_attributes
    return headers


def resolve_credentials(config: LoadConfig) -> Credentials | None:
    """Explicit credentials, else botocore's chain (env, profile, instance role) if signing."""
    if config.sign == "off":
        return None
    if config.credentials is not None:
        return config.credentials
    import botocore.session  # only when signing: botocore costs ~0.3 s to import

    found = botocore.session.Session().get_credentials()
    if found is None:
        if config.sign == "on":
            raise LoadTestError("--sign on: no AWS credentials found (env, profile or role)")
        return None
    frozen = found.get_frozen_credentials()
    if not frozen.access_key or not frozen.secret_key:
        return None
    return Credentials(frozen.access_key, frozen.secret_key, frozen.token)


class RequestBuilder:
    def __init__(self, config: LoadConfig) -> None:
        self.config = config
        self.path = quote(config.invocation_path, safe="/")
        default_port = 443 if config.tls else 80
        self.host = config.host if config.port == default_port else f"{config.host}:{config.port}"
        self.credentials = resolve_credentials(config)
        self.signer: Any = None
        if self.credentials is not None:
            from botocore.auth import SigV4Auth
            from botocore.credentials import Credentials as BotoCredentials

            creds = self.credentials
            self.signer = SigV4Auth(
                BotoCredentials(creds.access_key, creds.secret_key, creds.token),
                "sagemaker",
                config.region,
            )
        self.unsigned = [
            [self._build(target, body, {}) for body in target.payloads]
            for target in config.mix.targets
        ]
        #: (target, payload) -> (epoch second, request bytes)
        self.signed: dict[tuple[int, int], tuple[int, bytes]] = {}
        self.signed_headers: dict[tuple[int, int], tuple[int, dict[str, str]]] = {}

    @property
    def signing(self) -> bool:
        return self.signer is not None

    def request(self, target: int, payload: int) -> bytes:
        if self.signer is None:
            return self.unsigned[target][payload]
        second = int(time.time())
        cached = self.signed.get((target, payload))
        if cached is not None and cached[0] == second:
            return cached[1]
        data = self._sign(target, payload)
        self.signed[(target, payload)] = (second, data)
        return data

    def headers(self, index: int, payload: int) -> dict[str, str]:
        """The request's headers, signed when signing (for clients that build requests
        themselves, such as the Locust user); the signature is cached for the second."""
        target = self.config.mix.targets[index]
        headers = invocation_headers(target)
        if self.signer is None:
            return headers
        second = int(time.time())
        cached = self.signed_headers.get((index, payload))
        if cached is None or cached[0] != second:
            cached = (second, self._signature(index, payload))
            self.signed_headers[(index, payload)] = cached
        return {**headers, **cached[1]}

    def _sign(self, index: int, payload: int) -> bytes:
        target = self.config.mix.targets[index]
        return self._build(target, target.payloads[payload], self._signature(index, payload))

    def _signature(self, index: int, payload: int) -> dict[str, str]:
        from botocore.awsrequest import AWSRequest

        target = self.config.mix.targets[index]
        scheme = "https" if self.config.tls else "http"
        request = AWSRequest(
            method="POST",
            url=f"{scheme}://{self.host}{self.path}",
            data=target.payloads[payload],
            headers=invocation_headers(target),
        )
        self.signer.add_auth(request)
        return {
            k: str(v)
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "x-amz-date", "x-amz-security-token")
        }

    def _build(self, target: Target, body: bytes, extra: dict[str, str]) -> bytes:
        lines = [f"POST {self.path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{k}: {v}" for k, v in invocation_headers(target).items()]
        lines += [f"{k}: {v}" for k, v in extra.items()]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
