"""What the router process and its data-plane workers say to each other, over one Unix socket
pair per worker: length-prefixed pickles (both ends are this package, started by the router
itself; nothing else can reach the socket pair).

Router -> worker, in order (each but ``report-now`` and ``abort`` carries a sequence number the
worker acknowledges once it applied it):

- ``("table", seq, EncodedTable)``: route by this table from now on;
- ``("available", seq, slot, available, reason)``: a container became (un)available;
- ``("report", seq)``: send a report now (a metrics scrape is waiting for it);
- ``("stop", seq, drain_seconds)``: stop accepting, drain, send a last report, exit;
- ``("abort",)``: cut the drain short.

Worker -> router: ``("ready", pid)`` once listening, ``("ack", seq)``, and ``("report",
Report)`` every REPORT_SECONDS while anything changed (and before every ack of ``report`` and
``stop``), with the calls recorded since the last report, so nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass, field
from typing import Any, Final

from ..config import Limits, Listener, TracingSettings
from ..dataplane.proxy import RoutingTable, Upstream
from ..dataplane.stats import AnswersDelta, CallDelta
from ..security.config import AuthConfig

#: How often a worker reports its calls, requests in flight and busy connections: the lag of
#: autoscaling's and a drain's view of the workers (a worker killed outright loses none of its
#: calls: the router process reads the unreported ones from its CallJournal).
REPORT_SECONDS: Final = 0.1

_LENGTH: Final = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a worker needs from the router config (the first message it reads)."""

    index: int
    host: str
    port: int
    listener: Listener
    limits: Limits
    auth: AuthConfig
    tracing: TracingSettings
    account_id: str
    metrics_enabled: bool
    log_level: int
    #: How often it reports while anything changed (WorkerPool.report_seconds).
    report_seconds: float = REPORT_SECONDS


#: (endpoint, variant, instance id, container, host, port, log stream ARN, log path,
#: available, unavailable reason) of one container slot.
UpstreamFields = tuple[str, str, str, str, str, int, str, str, bool, str]
#: instance id and its containers' slots in pipeline order.
EncodedInstance = tuple[str, list[int]]
#: variant slot, name, weight, direct, instances.
EncodedVariant = tuple[int, str, float, bool, list[EncodedInstance]]


@dataclass(frozen=True, slots=True)
class EncodedTable:
    endpoints: list[tuple[str, list[EncodedVariant]]]
    upstreams: dict[int, UpstreamFields]


@dataclass(slots=True)
class Report:
    """A worker's calls since its last report (by container and variant slot), the errors it
    answered itself, and its requests in flight and busy connections now (whole maps)."""

    calls: dict[int, CallDelta] = field(default_factory=dict)
    streams: dict[int, CallDelta] = field(default_factory=dict)
    variants: dict[int, CallDelta] = field(default_factory=dict)
    answers: AnswersDelta | None = None
    in_flight: dict[int, int] = field(default_factory=dict)
    busy: dict[int, int] = field(default_factory=dict)
    #: The worker's CallJournal.count as of this report: the calls above are its records
    #: before that number (the router process replays the rest if the worker dies).
    journal_count: int = 0


def upstream_fields(upstream: Upstream) -> UpstreamFields:
    return (
        upstream.endpoint_name,
        upstream.variant_name,
        upstream.instance_id,
        upstream.container_name,
        upstream.host,
        upstream.port,
        upstream.log_stream_arn,
        upstream.log_path,
        upstream.available,
        upstream.unavailable_reason,
    )


def encode_table(table: RoutingTable) -> EncodedTable:
    """``table`` by slot numbers (assigned before: see WorkerPool.table_changed)."""
    upstreams: dict[int, UpstreamFields] = {}
    endpoints = []
    for endpoint in table.by_name.values():
        variants: list[EncodedVariant] = []
        for variant in endpoint.variants:
            instances: list[EncodedInstance] = []
            for instance in variant.instances:
                for upstream in instance.chain:
                    upstreams[upstream.slot] = upstream_fields(upstream)
                instances.append((instance.instance_id, [u.slot for u in instance.chain]))
            variants.append((variant.slot, variant.name, variant.weight, variant.direct, instances))
        endpoints.append((endpoint.name, variants))
    return EncodedTable(endpoints, upstreams)


def write_message(writer: asyncio.StreamWriter, message: tuple[Any, ...] | WorkerSpec) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_LENGTH.pack(len(data)) + data)


async def read_message(reader: asyncio.StreamReader) -> Any:
    """The next message; None when the other end closed the socket."""
    try:
        head = await reader.readexactly(_LENGTH.size)
        (size,) = _LENGTH.unpack(head)
        return pickle.loads(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
