"""The hop log: the last N failing Serial requests, stage by stage (``GET /hop-log`` on the
admin port). Kept in memory only; the failing stage's input only when configured so."""

from __future__ import annotations

import base64
import collections
import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from ..dataplane.proxy import Invocation
from ..errors import RouterError, wire_error


@dataclass(frozen=True, slots=True)
class StageRecord:
    """One container call of a pipeline: what it was sent, what it answered."""

    container: str
    #: The container's HTTP status, 0 when it gave none (refused, broken, timed out).
    status: int
    latency_seconds: float
    input_size: int
    input_content_type: str | None
    output_size: int | None
    output_content_type: str | None


class HopLog:
    """A ring of the last ``size`` failing Serial requests.

    :param capture_input_bytes: keep up to this many bytes of the failing stage's input; None
        keeps none (the default, and always with authentication on unless explicitly allowed:
        request data can be sensitive).
    """

    def __init__(self, size: int, *, capture_input_bytes: int | None = None) -> None:
        self.size = size
        self.capture_input_bytes = capture_input_bytes
        self._entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self.recorded = 0

    def record(
        self,
        invocation: Invocation,
        stages: list[StageRecord],
        started_at: float,
        status: int,
        error: RouterError,
    ) -> None:
        wire = wire_error(error, "runtime")
        chain = invocation.chain
        failed = invocation.stage
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(started_at, dt.UTC).isoformat(),
            "endpoint": chain[0].endpoint_name,
            "variant": invocation.variant.name,
            "trace_id": _trace_id(invocation.trace_block),
            "status": status,
            "error_code": wire.code,
            "message": wire.message,
            "failed_stage": failed,
            "failed_container": chain[failed].container_name,
            "pipeline": [upstream.container_name for upstream in chain],
            "stages": [asdict(stage) for stage in stages],
        }
        if self.capture_input_bytes is not None:
            # Serial: the failing stage's input is still the invocation's body (it is replaced
            # only when a stage succeeds).
            data = b"".join(invocation.body)
            kept = data[: self.capture_input_bytes]
            entry["failed_stage_input"] = {
                "content_type": _text(invocation.content_type),
                "size": len(data),
                "truncated": len(kept) < len(data),
                "base64": base64.b64encode(kept).decode("ascii"),
            }
        self._entries.append(entry)
        self.recorded += 1

    def entries(self) -> list[dict[str, Any]]:
        """Oldest first."""
        return list(self._entries)


def _trace_id(block: bytes) -> str | None:
    # b"traceparent: 00-<32 hex>-..." (proxy.Invocation.trace_block)
    return block[16:48].decode("ascii") if block.startswith(b"traceparent: 00-") else None


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None
