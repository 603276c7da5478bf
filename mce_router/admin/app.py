"""The admin listener's aiohttp app: the control plane at ``POST /`` (SageMaker's JSON 1.1, and
STS GetCallerIdentity for form-encoded bodies), ``GET /ping``, the Prometheus text at
``GET /metrics``, the CloudWatch datums at ``GET /metrics/cloudwatch`` and the hop log of
failing Serial requests at ``GET /hop-log`` (when configured).

One route per handler method of :class:`AdminApp`; :meth:`AdminApp.build` is the one place the
routes and the body limit are set.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from ..errors import RouterError, wire_error
from ..metrics import RouterMetrics, put_metric_data_requests
from ..security import Guard
from ..tracing import HopLog
from .sts import is_sts_request

#: Application Auto Scaling's X-Amz-Target prefix (SageMaker's is ``SageMaker.``).
AUTOSCALING_TARGET_PREFIX = "AnyScaleFrontendService."
#: The admin app's ``client_max_size``: larger control-plane bodies are refused unread.
MAX_BODY_BYTES = 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: ``(ready, details)``: details are the JSON body of ``GET /ready``.
Readiness = Callable[[], tuple[bool, Mapping[str, Any]]]


class AdminApp:
    """What the admin listener serves.

    :param control_plane: the handler of ``POST /`` (the SageMaker JSON 1.1 API).
    :param sts: the handler of ``POST /`` for STS's query protocol (form-encoded, no
        ``X-Amz-Target``).
    :param metrics: None when metrics are disabled (``/metrics`` answers 404 then).
    :param cloudwatch_namespaces: namespace renames for ``?format=put-metric-data``.
    :param readiness: what ``GET /ready`` reports (``/ping`` is liveness: 200 while the
        process serves at all).
    :param autoscaling: the handler of ``POST /`` with ``X-Amz-Target:
        AnyScaleFrontendService.<Operation>`` (Application Auto Scaling).
    :param hop_log: what ``GET /hop-log`` serves; None: 404.
    :param guard: with authentication on, ``GET /hop-log`` must be SigV4-signed (service
        ``sagemaker``) and allowed ``sagemaker:GetHopLog``, as the control plane's calls are.
    """

    def __init__(
        self,
        control_plane: Handler,
        sts: Handler,
        metrics: RouterMetrics | None,
        cloudwatch_namespaces: Mapping[str, str],
        readiness: Readiness,
        autoscaling: Handler | None = None,
        *,
        hop_log: HopLog | None = None,
        guard: Guard | None = None,
    ) -> None:
        self._hop_log = hop_log
        self._guard = guard
        self._control_plane = control_plane
        self._autoscaling = autoscaling
        self._sts = sts
        self._readiness = readiness
        self._metrics = metrics
        self._namespaces = dict(cloudwatch_namespaces)

    def build(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        # The SageMaker control plane (JSON 1.1): POST / with X-Amz-Target: SageMaker.<Op>;
        # STS (query protocol) shares the path, told apart by its form-encoded body.
        app.router.add_post("/", self.post_root)
        app.router.add_get("/ping", self.ping)
        app.router.add_get("/ready", self.ready)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/metrics/cloudwatch", self.cloudwatch)
        app.router.add_get("/hop-log", self.hop_log)
        return app

    async def post_root(self, request: web.Request) -> web.StreamResponse:
        if is_sts_request(request):
            return await self._sts(request)
        target = request.headers.get("X-Amz-Target", "")
        if self._autoscaling is not None and target.startswith(AUTOSCALING_TARGET_PREFIX):
            return await self._autoscaling(request)
        return await self._control_plane(request)

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def ready(self, request: web.Request) -> web.Response:
        """200 while the router should get traffic (a load balancer's or Kubernetes' readiness
        probe), else 503; the body says which endpoint is not serving, or that it drains."""
        ready, details = self._readiness()
        return web.Response(
            status=200 if ready else 503,
            body=orjson.dumps({"ready": ready, **details}),
            content_type="application/json",
        )

    def _enabled_metrics(self) -> RouterMetrics:
        if self._metrics is None:
            raise web.HTTPNotFound(text="metrics are disabled (config metrics.enabled: false)\n")
        return self._metrics

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(
            body=(await self._enabled_metrics().refreshed()).prometheus_text(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def cloudwatch(self, request: web.Request) -> web.Response:
        """``?include_current=true`` adds the unfinished minute; ``?since=EPOCH`` drops older
        minutes; ``?format=put-metric-data`` answers ready ``put_metric_data(**r)`` requests."""
        metrics = await self._enabled_metrics().refreshed()
        query = request.query
        try:
            since = float(query["since"]) if "since" in query else None
        except ValueError:
            raise web.HTTPBadRequest(text="since must be epoch seconds\n") from None
        datums = metrics.cloudwatch_datums(
            include_current=query.get("include_current", "").lower() in ("1", "true", "yes"),
            since=since,
        )
        if query.get("format") == "put-metric-data":
            payload: dict[str, Any] = {
                "PutMetricDataRequests": put_metric_data_requests(datums, self._namespaces)
            }
        else:
            payload = {"MetricData": datums}
        return web.Response(body=orjson.dumps(payload), content_type="application/json")

    async def hop_log(self, request: web.Request) -> web.Response:
        """The last failing Serial requests, oldest first: ``{"size", "recorded", "entries"}``."""
        if self._hop_log is None:
            raise web.HTTPNotFound(
                text="the hop log is off (config tracing.hop_log_enabled: false)\n"
            )
        guard = self._guard
        if guard is not None:
            path, _, query = request.raw_path.partition("?")
            try:
                credential = guard.authenticate(
                    request.method, path.encode(), query.encode(), request.raw_headers, b""
                )
                guard.authorize_operation(credential, "GetHopLog", {})
            except RouterError as exc:
                error = wire_error(exc, "control")
                return web.Response(
                    status=error.status,
                    body=orjson.dumps({"__type": error.code, "message": error.message}),
                    content_type="application/x-amz-json-1.1",
                )
        log = self._hop_log
        payload = {"size": log.size, "recorded": log.recorded, "entries": log.entries()}
        return web.Response(body=orjson.dumps(payload), content_type="application/json")
