"""The one :class:`~mce_router.dataplane.proxy.InvocationHooks` the router installs: spans and
the hop log share each request's bookkeeping (``Invocation.hook_state``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..config import TracingSettings
from ..dataplane.proxy import Invocation, Upstream, UpstreamResponse
from ..errors import ConfigError, RouterError
from .hoplog import HopLog, StageRecord

if TYPE_CHECKING:
    from .otel import OtelSpans


class _RequestState:
    """One request's spans and stage records (only what the enabled observers need)."""

    __slots__ = ("hop", "input_size", "input_type", "request", "stages", "started_at")

    def __init__(self) -> None:
        self.request: Any = None  # the request span
        self.hop: Any = None  # the span of the container call in progress
        self.stages: list[StageRecord] | None = None
        self.started_at = time.time()
        self.input_size = 0
        self.input_type: bytes | None = None


class TracingHooks:
    """Spans (``otel``) and/or the hop log (``hop_log``); either may be None, not both."""

    def __init__(self, otel: OtelSpans | None, hop_log: HopLog | None) -> None:
        self.otel = otel
        self.hop_log = hop_log

    def started(self, invocation: Invocation) -> None:
        state = _RequestState()
        if self.hop_log is not None and len(invocation.chain) > 1:
            state.stages = []
        if self.otel is not None:
            state.request = self.otel.start_request(invocation)
        invocation.hook_state = state

    def stage_started(self, invocation: Invocation, upstream: Upstream) -> bytes:
        state = invocation.hook_state
        assert isinstance(state, _RequestState)
        # What this stage is sent: the client's request, or the previous stage's answer.
        state.input_size = invocation.body_size
        state.input_type = invocation.content_type
        if self.otel is not None:
            return self.otel.start_hop(invocation, state, upstream)
        return invocation.trace_block

    def stage_ended(
        self,
        invocation: Invocation,
        upstream: Upstream,
        status: int,
        latency: float,
        response: UpstreamResponse | None,
    ) -> None:
        state = invocation.hook_state
        assert isinstance(state, _RequestState)
        if self.otel is not None:
            self.otel.end_hop(state, status, latency, response)
        if state.stages is not None:
            state.stages.append(
                StageRecord(
                    container=upstream.container_name,
                    status=status,
                    latency_seconds=latency,
                    input_size=state.input_size,
                    input_content_type=_text(state.input_type),
                    output_size=response.body_size if response is not None else None,
                    output_content_type=_text(response.content_type) if response else None,
                )
            )

    def finished(self, invocation: Invocation, status: int, error: RouterError | None) -> None:
        state = invocation.hook_state
        if not isinstance(state, _RequestState):
            return
        if self.otel is not None:
            self.otel.end_request(state, invocation, status, error)
        if state.stages is not None and error is not None and self.hop_log is not None:
            self.hop_log.record(invocation, state.stages, state.started_at, status, error)


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def build_hooks(
    settings: TracingSettings, *, auth_enabled: bool, tracer_provider: Any = None
) -> TracingHooks | None:
    """The hooks ``settings`` ask for, None when none (the hot path then calls nothing).
    ``tracer_provider``: an OpenTelemetry ``TracerProvider`` to use instead of the OTLP
    exporter the settings describe (tests pass one with an in-memory exporter)."""
    if not settings.hooks_enabled and tracer_provider is None:
        return None
    otel = None
    if settings.otel_enabled or tracer_provider is not None:
        try:
            from .otel import OtelSpans
        except ImportError as exc:
            raise ConfigError(
                "config.tracing.otel_enabled needs the OpenTelemetry packages of the 'otel' "
                f"extra: pip install 'mce-router[otel]' ({exc})"
            ) from exc
        otel = OtelSpans.from_settings(settings, tracer_provider)
    hop_log = None
    if settings.hop_log_enabled:
        hop_log = HopLog(
            settings.hop_log_size,
            capture_input_bytes=(
                settings.hop_log_input_max_bytes
                if settings.hop_log_capture_input
                and (not auth_enabled or settings.hop_log_capture_input_with_auth)
                else None
            ),
        )
    return TracingHooks(otel, hop_log)
