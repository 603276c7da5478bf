"""One data-plane worker process: ``python -m mce_router.workers.worker FD JOURNAL_FD``,
started by :class:`~mce_router.workers.pool.WorkerPool` with its end of a socket pair as FD and
the shared memory of its call journal as JOURNAL_FD.

It serves the runtime port (its own listening socket, SO_REUSEPORT: the kernel spreads new
connections over the workers) with the same hot path as a single-process router, routes by the
copy of the table the router sends, and reports what it served. It owns no container: when the
router process goes away (the socket pair closes), it drains briefly and exits.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import signal
import socket
import sys
import time
from typing import Any

from ..dataplane.proxy import (
    EndpointRoute,
    InstanceRoute,
    RoutingTable,
    RuntimeServer,
    Upstream,
    VariantRoute,
)
from ..dataplane.stats import (
    JOURNAL_BYTES,
    JOURNAL_CALL,
    JOURNAL_STREAM,
    JOURNAL_VARIANT,
    CallJournal,
    CallStats,
    RouterAnswers,
)
from ..dataplane.streaming import StreamInvocation
from ..errors import ServiceUnavailable
from ..security import Guard
from ..tracing import build_hooks
from .protocol import (
    EncodedTable,
    Report,
    UpstreamFields,
    WorkerSpec,
    read_message,
    write_message,
)

log = logging.getLogger(__name__)

#: How long in-flight requests may finish when the router process disappeared.
ORPHANED_DRAIN_SECONDS = 5.0


class WorkerTables:
    """This worker's copy of the routing state. Containers and variants are kept by slot
    across tables, so their keep-alive connections and counters carry over; those that left
    the table stay until their last call ended and was reported."""

    def __init__(
        self, spec: WorkerSpec, server: RuntimeServer, journal: CallJournal | None = None
    ) -> None:
        self._spec = spec
        self._server = server
        self._journal = journal
        self.upstreams: dict[int, Upstream] = {}
        self._retiring: set[int] = set()
        #: Variant slot -> the route object current in the table, and its observer.
        self._variants: dict[int, VariantRoute] = {}
        self._variant_stats: dict[int, CallStats] = {}
        #: Route objects replaced while requests were in flight in them (they count down).
        self._old_variants: dict[int, list[VariantRoute]] = {}
        self._last_in_flight: dict[int, int] = {}
        self._last_busy: dict[int, int] = {}

    def apply_table(self, encoded: EncodedTable) -> None:
        endpoints = []
        current: set[int] = set()
        variants_now: dict[int, VariantRoute] = {}
        for name, variants in encoded.endpoints:
            routes = []
            for vslot, vname, weight, direct, instances in variants:
                route = self._variants.get(vslot)
                if route is None:
                    chains = []
                    for instance_id, slots in instances:
                        chain = tuple(self._upstream(s, encoded.upstreams[s]) for s in slots)
                        chains.append(
                            InstanceRoute(instance_id, chain, {u.container_name: u for u in chain})
                        )
                    route = VariantRoute(
                        vname, weight, tuple(chains), direct, observer=self._observer(vslot, direct)
                    )
                route.slot = vslot
                variants_now[vslot] = route
                routes.append(route)
                current.update(s for _, slots in instances for s in slots)
            endpoints.append(EndpointRoute(name, tuple(routes)))
        for vslot, old in self._variants.items():
            if vslot not in variants_now and old.in_flight:
                self._old_variants.setdefault(vslot, []).append(old)
        self._variants = variants_now
        for slot in set(self.upstreams) - current:
            self.upstreams[slot].pool.close_idle()
            self._retiring.add(slot)
        self._retiring -= current
        self._server.table = RoutingTable(endpoints)

    def _upstream(self, slot: int, fields: UpstreamFields) -> Upstream:
        found = self.upstreams.get(slot)
        if found is not None:
            return found
        endpoint, variant, instance, container, host, port, stream_arn, log_path, up, why = fields
        upstream = Upstream(
            endpoint_name=endpoint,
            variant_name=variant,
            instance_id=instance,
            container_name=container,
            host=host,
            port=port,
            log_stream_arn=stream_arn,
            log_path=log_path,
            limits=self._spec.limits,
            loop=self._server.loop,
        )
        upstream.slot = slot
        if self._spec.metrics_enabled:
            upstream.observer = self._journaled(
                CallStats(endpoint, variant, container), JOURNAL_CALL, slot
            )
            upstream.stream_observer = self._journaled(
                CallStats(endpoint, variant, container), JOURNAL_STREAM, slot
            )
        if up:
            upstream.mark_available()
        else:
            upstream.mark_unavailable(why)
        self.upstreams[slot] = upstream
        return upstream

    def _observer(self, vslot: int, direct: bool) -> CallStats | None:
        # A Direct variant's numbers are its containers' (as in RouterMetrics.direct_variant).
        if direct or not self._spec.metrics_enabled:
            return None
        stats = self._variant_stats.get(vslot)
        if stats is None:
            stats = self._variant_stats[vslot] = self._journaled(
                CallStats(), JOURNAL_VARIANT, vslot
            )
        return stats

    def _journaled(self, stats: CallStats, kind: int, slot: int) -> CallStats:
        stats.journal, stats.journal_kind, stats.journal_slot = self._journal, kind, slot
        return stats

    def set_available(self, slot: int, available: bool, reason: str) -> None:
        upstream = self.upstreams.get(slot)
        if upstream is None:
            return
        if available:
            upstream.mark_available()
            return
        upstream.mark_unavailable(reason)
        upstream.pool.fail_waiting(
            ServiceUnavailable(
                f"Container {upstream.container_name} of endpoint {upstream.endpoint_name} is "
                f"not available ({reason}). Retry later."
            )
        )

    def report(self, *, forced: bool) -> Report | None:
        """The calls since the last report and the counts now; None when nothing changed."""
        report = Report()
        for slot, upstream in self.upstreams.items():
            if upstream.observer is not None and (delta := upstream.observer.take()):
                report.calls[slot] = delta
            if upstream.stream_observer is not None and (delta := upstream.stream_observer.take()):
                report.streams[slot] = delta
            busy = upstream.pool.busy_count
            if busy:
                report.busy[slot] = busy
        for vslot, stats in self._variant_stats.items():
            if delta := stats.take():
                report.variants[vslot] = delta
        for vslot, route in self._variants.items():
            if route.in_flight:
                report.in_flight[vslot] = route.in_flight
        for vslot, olds in list(self._old_variants.items()):
            olds[:] = [old for old in olds if old.in_flight]
            if not olds:
                del self._old_variants[vslot]
                continue
            report.in_flight[vslot] = report.in_flight.get(vslot, 0) + sum(
                old.in_flight for old in olds
            )
        answers = self._server.answers
        report.answers = answers.take() if answers is not None else None
        # Read in the same step as the takes: every record before it is in this report.
        report.journal_count = self._journal.count if self._journal is not None else 0
        self._retire_idle(report)
        changed = (
            report.calls
            or report.streams
            or report.variants
            or report.answers
            or report.in_flight != self._last_in_flight
            or report.busy != self._last_busy
        )
        self._last_in_flight, self._last_busy = report.in_flight, report.busy
        return report if changed or forced else None

    def _retire_idle(self, report: Report) -> None:
        for slot in list(self._retiring):
            upstream = self.upstreams[slot]
            upstream.pool.close_idle()
            if upstream.pool.open_count == 0 and upstream.pool.waiting_count == 0:
                upstream.pool.close()
                del self.upstreams[slot]
                self._retiring.discard(slot)
        live = {v.slot for v in self._variants.values()} | set(self._old_variants)
        for vslot in [v for v in self._variant_stats if v not in live]:
            del self._variant_stats[vslot]


class Worker:
    def __init__(
        self,
        spec: WorkerSpec,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        journal: CallJournal | None = None,
    ) -> None:
        self.spec = spec
        self._reader = reader
        self._writer = writer
        loop = asyncio.get_running_loop()
        auth_guard = Guard.from_config(spec.auth)
        self.server = RuntimeServer(
            spec.limits,
            loop,
            account_id=spec.account_id,
            guard=auth_guard,
            answers=RouterAnswers() if spec.metrics_enabled else None,
            hooks=build_hooks(spec.tracing, auth_enabled=auth_guard is not None),
            sample_new_traces=spec.tracing.sample_new_traces,
            stream_type=StreamInvocation,
        )
        if self.server.answers is not None:
            self.server.answers.journal = journal
        self.tables = WorkerTables(spec, self.server, journal)
        self._abort = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(
            self.server.protocol_factory,
            self.spec.host,
            self.spec.port,
            backlog=4096,
            reuse_address=True,
            reuse_port=True,
            ssl=self.spec.listener.ssl_context(),
        )
        reporter = loop.create_task(self._report_periodically(), name="worker reports")
        try:
            self._send(("ready", os.getpid()))
            drain = await self._follow()
            await self._drain(listener, drain)
            self._send_report(forced=True)
            self._send(("bye",))
            await self._writer.drain()
        finally:
            reporter.cancel()
            self.server.close()
            self.server.abort_all()

    async def _follow(self) -> float:
        """Apply the router's messages until it says stop (its drain time) or goes away."""
        while True:
            message = await read_message(self._reader)
            if message is None:
                log.warning("worker %d: the router process is gone; draining", self.spec.index)
                return ORPHANED_DRAIN_SECONDS
            kind = message[0]
            if kind == "table":
                self.tables.apply_table(message[2])
            elif kind == "available":
                self.tables.set_available(message[2], message[3], message[4])
            elif kind == "report":
                self._send_report(forced=True)
            elif kind == "stop":
                asyncio.get_running_loop().create_task(self._watch_abort())
                self._send(("ack", message[1]))
                return float(message[2])
            if kind in ("table", "available"):
                # Before the ack: the router drains what left the table by these counts, so
                # they must be as of this change, not of the last periodic report.
                self._send_report(forced=True)
            if kind != "abort":
                self._send(("ack", message[1]))

    async def _watch_abort(self) -> None:
        while (message := await read_message(self._reader)) is not None:
            if message[0] == "abort":
                break
        self._abort.set()

    async def _drain(self, listener: asyncio.Server, seconds: float) -> None:
        listener.close()
        self.server.accepting = False
        self.server.close_idle_connections()
        deadline = time.monotonic() + seconds
        while self.server.in_flight and time.monotonic() < deadline and not self._abort.is_set():
            await asyncio.sleep(0.01)
            self.server.close_idle_connections()

    async def _report_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.spec.report_seconds)
            self._send_report(forced=False)

    def _send_report(self, *, forced: bool) -> None:
        report = self.tables.report(forced=forced)
        if report is not None:
            self._send(("report", report))

    def _send(self, message: tuple[Any, ...]) -> None:
        if not self._writer.is_closing():
            write_message(self._writer, message)


async def _main(fd: int, journal_fd: int) -> None:
    journal = CallJournal(mmap.mmap(journal_fd, JOURNAL_BYTES))
    os.close(journal_fd)  # the mapping outlives it
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    spec = await read_message(reader)
    if not isinstance(spec, WorkerSpec):
        raise SystemExit("mce_router.workers.worker: expected a WorkerSpec first")
    logging.basicConfig(
        level=spec.log_level,
        format=f"%(asctime)s %(levelname)s worker {spec.index} %(name)s: %(message)s",
    )
    try:
        await Worker(spec, reader, writer, journal).run()
    finally:
        writer.close()


def main() -> None:
    import uvloop

    # The router process decides when its workers stop (after it stopped routing to them and
    # they drained): a Ctrl-C or SIGTERM sent to the whole process group is its to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    if len(sys.argv) != 3 or not all(arg.isdigit() for arg in sys.argv[1:]):
        raise SystemExit(
            "usage: python -m mce_router.workers.worker FD JOURNAL_FD (started by the router)"
        )
    uvloop.run(_main(int(sys.argv[1]), int(sys.argv[2])))


if __name__ == "__main__":
    main()
