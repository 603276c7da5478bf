"""Data-plane worker processes: ``listen.workers: N`` (``--workers N``, ``auto``).

The router process keeps everything but the runtime listener: the control plane, health checks,
containers, the state file, metrics export and autoscaling. N worker processes
(:mod:`.worker`) each listen on the runtime port with SO_REUSEPORT, so the kernel spreads client
connections over them, and run the same hot path as a single-process router.

:class:`WorkerPool` is the RuntimeServer's :class:`~mce_router.dataplane.proxy.TableMirror`:
every routing change the endpoints make in this process (a table swapped, a container
(un)available) is sent to every worker in order, and :meth:`WorkerPool.synced` returns once all
of them applied it. The endpoints await it before they drain or stop what left the table, so no
worker routes a request to a container it was told is gone.

Metrics stay exact: each worker reports the calls it recorded since its last report (every
REPORT_SECONDS, and at once when a scrape asks), and they are added to this process's
counters, which are the ones exported: nothing is counted twice, and a worker that stops
sends its last report first. Each worker also writes every call it records to a
:class:`~mce_router.dataplane.stats.CallJournal` in memory shared with this process; when a
worker dies outright, the calls it recorded after its last report are replayed from there, so
its death loses no count (its in-flight requests fail with it, and were never counted). The
pool starts another in its place with the current table.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import mmap
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ..aio import cancelled, finished_before
from ..config import RouterConfig
from ..dataplane.proxy import RoutingTable, RuntimeServer, Upstream, VariantRoute
from ..dataplane.stats import (
    JOURNAL_ANSWER,
    JOURNAL_BYTES,
    JOURNAL_CALL,
    JOURNAL_STREAM,
    JOURNAL_VARIANT,
    CallJournal,
)
from ..errors import RouterStartupError
from .protocol import (
    REPORT_SECONDS,
    Report,
    WorkerSpec,
    encode_table,
    read_message,
    write_message,
)

log = logging.getLogger(__name__)

#: A worker that has not applied a routing change by then is killed (and replaced, with the
#: current table): the endpoint's drain and stop cannot wait for it forever.
SYNC_TIMEOUT_SECONDS: Final = 10.0
START_TIMEOUT_SECONDS: Final = 30.0
#: A worker that dies sooner after its start is restarted after a growing pause.
_STABLE_SECONDS: Final = 5.0
_PACKAGE_PARENT: Final = str(Path(__file__).resolve().parents[2])


@dataclass(eq=False)
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    started: float
    ready: asyncio.Future[int]
    journal: CallJournal
    reader: asyncio.Task[None] | None = None
    #: The journal count of the last report merged: records from it on are not counted yet.
    reported: int = 0
    acked: int = 0
    alive: bool = True
    in_flight: dict[int, int] = field(default_factory=dict)
    busy: dict[int, int] = field(default_factory=dict)


class WorkerPool:
    """``count`` worker processes serving ``config.listener``'s port for ``server``'s table."""

    #: The workers' periodic report interval (a test can make it long, so that only the
    #: journal can carry a killed worker's last calls).
    report_seconds: float = REPORT_SECONDS

    def __init__(self, config: RouterConfig, server: RuntimeServer, count: int) -> None:
        self._config = config
        self._server = server
        self.count = count
        #: Calls counted from the journals of workers that died before reporting them.
        self.replayed = 0
        self.port = 0
        #: Workers started in place of one that exited.
        self.restarts = 0
        self._seq = 0
        self._slots = itertools.count(1)
        self._upstreams: dict[int, Upstream] = {}
        self._variants: dict[int, VariantRoute] = {}
        #: Slots that left the table -> when they may be forgotten (their last calls reported).
        self._leaving: dict[int, float] = {}
        self._workers: dict[int, _Worker] = {}
        self._changed = asyncio.Condition()
        self._supervisors: list[asyncio.Task[None]] = []
        self._reservation: socket.socket | None = None
        self._stopping = False

    def pids(self) -> list[int]:
        """Process ids of the workers serving now (started and listening)."""
        return sorted(w.process.pid for w in self._workers.values() if w.alive and w.ready.done())

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Take the port, start every worker and wait until each listens."""
        listener = self._config.listener
        self._reservation = _reserve_port(listener.host, listener.port)
        self.port = int(self._reservation.getsockname()[1])
        try:
            for index in range(self.count):
                await self._spawn(index)
        except BaseException:
            await self._kill_all()
            self._reservation.close()
            raise
        _mention_request_migration()
        self._supervisors = [
            asyncio.get_running_loop().create_task(
                self._supervise(index), name=f"data-plane worker {index}"
            )
            for index in range(self.count)
        ]

    async def stop(self, drain_seconds: float, cut: asyncio.Event) -> None:
        """Every worker stops accepting, drains (up to ``drain_seconds``, or until ``cut``),
        sends its last report and exits; what has not exited by then is killed."""
        if self._stopping:
            return
        self._stopping = True
        self._broadcast("stop", drain_seconds)
        exited = asyncio.ensure_future(self._all_exited())
        try:
            if not await finished_before(exited, cut, drain_seconds + 5.0):
                self._send_all(("abort",))
                await asyncio.wait([exited], timeout=2.0)
        finally:
            await cancelled(exited)
            await self._kill_all()
            for task in self._supervisors:
                await cancelled(task)
            if self._reservation is not None:
                self._reservation.close()

    async def _all_exited(self) -> None:
        for worker in list(self._workers.values()):
            await worker.process.wait()
            if worker.reader is not None:
                await worker.reader

    async def _kill_all(self) -> None:
        for worker in list(self._workers.values()):
            if worker.process.returncode is None:
                worker.process.kill()
            await worker.process.wait()
            if worker.reader is not None:
                await cancelled(worker.reader)
            worker.writer.close()

    async def _spawn(self, index: int) -> _Worker:
        journal_fd = _shared_memory_fd(JOURNAL_BYTES)
        try:
            parent_end, child_end = socket.socketpair()
        except BaseException:
            os.close(journal_fd)
            raise
        try:
            journal = CallJournal(mmap.mmap(journal_fd, JOURNAL_BYTES))
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "mce_router.workers.worker",
                str(child_end.fileno()),
                str(journal_fd),
                pass_fds=(child_end.fileno(), journal_fd),
                stdin=asyncio.subprocess.DEVNULL,
                env=_worker_environment(),
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
            os.close(journal_fd)  # both mappings outlive it
        reader, writer = await asyncio.open_unix_connection(sock=parent_end)
        loop = asyncio.get_running_loop()
        worker = _Worker(index, process, writer, time.monotonic(), loop.create_future(), journal)
        # No await from the table's encoding to the worker joining the broadcasts: it must
        # not miss a change made in between.
        write_message(writer, self._spec(index))
        write_message(writer, ("table", self._seq, encode_table(self._assign_slots())))
        old = self._workers.get(index)
        self._workers[index] = worker
        worker.reader = loop.create_task(self._read(worker, reader))
        if old is not None:
            old.writer.close()
        waiter = asyncio.ensure_future(process.wait())
        try:
            await asyncio.wait(
                [worker.ready, waiter], timeout=START_TIMEOUT_SECONDS, return_when="FIRST_COMPLETED"
            )
        finally:
            await cancelled(waiter)
        if not worker.ready.done():
            if process.returncode is None:
                process.kill()
            status = await process.wait()
            raise RouterStartupError(
                f"runtime API listener: data-plane worker {index} did not start listening on "
                f"{self._config.listener.host}:{self.port} (exit status {status}; its log is "
                "above)"
            )
        return worker

    def _spec(self, index: int) -> WorkerSpec:
        config = self._config
        return WorkerSpec(
            index=index,
            host=config.listener.host,
            port=self.port,
            listener=config.listener,
            limits=config.limits,
            auth=config.auth,
            tracing=config.tracing,
            account_id=config.account_id,
            metrics_enabled=config.metrics.enabled,
            log_level=logging.getLogger().getEffectiveLevel(),
            report_seconds=self.report_seconds,
        )

    async def _supervise(self, index: int) -> None:
        """Start another worker whenever this one exits (not while the pool stops)."""
        pause = 0.5
        while True:
            worker = self._workers[index]
            status = await worker.process.wait()
            if worker.reader is not None:
                await worker.reader
            if self._stopping:
                return
            log.warning(
                "data-plane worker %d (pid %d) exited with status %s; starting another",
                index,
                worker.process.pid,
                status,
            )
            if time.monotonic() - worker.started < _STABLE_SECONDS:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)
            else:
                pause = 0.5
            while not self._stopping:
                try:
                    await self._spawn(index)
                    self.restarts += 1
                    break
                except (OSError, RouterStartupError) as exc:
                    log.error("data-plane worker %d: %s; retrying in %.1f s", index, exc, pause)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 10.0)

    # --- what the workers say ----------------------------------------------------------------

    async def _read(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        try:
            while (message := await read_message(reader)) is not None:
                kind = message[0]
                if kind == "ack":
                    worker.acked = message[1]
                    async with self._changed:
                        self._changed.notify_all()
                elif kind == "report":
                    self._merge(worker, message[1])
                elif kind == "ready" and not worker.ready.done():
                    worker.ready.set_result(message[1])
        finally:
            worker.alive = False
            worker.in_flight, worker.busy = {}, {}
            try:
                # The socket pair closes when the worker exits: every report it sent is merged.
                self._replay_unreported(worker)
            finally:
                self._recount()
                async with self._changed:
                    self._changed.notify_all()

    def _merge(self, worker: _Worker, report: Report) -> None:
        now = time.time()
        for slot, delta in report.calls.items():
            upstream = self._upstreams.get(slot)
            if upstream is not None and upstream.observer is not None:
                upstream.observer.merge(delta, now)
        for slot, delta in report.streams.items():
            upstream = self._upstreams.get(slot)
            if upstream is not None and upstream.stream_observer is not None:
                upstream.stream_observer.merge(delta, now)
        for slot, delta in report.variants.items():
            variant = self._variants.get(slot)
            if variant is not None and variant.observer is not None:
                variant.observer.merge(delta, now)
        answers = self._server.answers
        if report.answers is not None and answers is not None:
            answers.merge(report.answers, self._is_endpoint)
        worker.in_flight, worker.busy = report.in_flight, report.busy
        worker.reported = max(worker.reported, report.journal_count)
        self._recount()

    def _is_endpoint(self, name: str) -> bool:
        return name.lower() in self._server.table.by_name

    def _replay_unreported(self, worker: _Worker) -> None:
        """Count what a worker that is gone recorded after its last report (nothing, when it
        stopped as asked: its last report came first)."""
        records, overwritten = worker.journal.records_since(worker.reported)
        worker.reported += overwritten + len(records)
        if overwritten:
            log.error(
                "data-plane worker %d: %d calls were recorded but are not counted (the journal "
                "keeps the last %d)", worker.index, overwritten, len(records),
            )  # fmt: skip
        if not records:
            return
        keys = worker.journal.answer_keys()
        answers = self._server.answers
        for kind, slot, status, latency, overhead, now in records:
            if kind == JOURNAL_ANSWER:
                if answers is not None and slot < len(keys):
                    endpoint, known, variant, code = keys[slot]
                    answers.record(endpoint, known, variant, status, code)
                continue
            observer = None
            if kind == JOURNAL_VARIANT:
                variant_route = self._variants.get(slot)
                observer = variant_route.observer if variant_route is not None else None
            elif (upstream := self._upstreams.get(slot)) is not None:
                if kind == JOURNAL_CALL:
                    observer = upstream.observer
                elif kind == JOURNAL_STREAM:
                    observer = upstream.stream_observer
            if observer is not None:
                observer.record(status, latency, overhead, now)
        self.replayed += len(records)
        log.info(
            "data-plane worker %d: counted %d calls it recorded after its last report",
            worker.index, len(records),
        )  # fmt: skip

    def _recount(self) -> None:
        """Each variant's requests in flight and each container's busy calls: the workers'."""
        workers = [w for w in self._workers.values() if w.alive]
        for slot, variant in self._variants.items():
            variant.in_flight = sum(w.in_flight.get(slot, 0) for w in workers)
        for slot, upstream in self._upstreams.items():
            upstream.remote_busy = sum(w.busy.get(slot, 0) for w in workers)

    # --- TableMirror -------------------------------------------------------------------------

    def table_changed(self, table: RoutingTable) -> None:
        self._broadcast_table(table)

    def availability_changed(self, upstream: Upstream) -> None:
        if upstream.slot:
            self._broadcast(
                "available", upstream.slot, upstream.available, upstream.unavailable_reason
            )

    async def synced(self) -> None:
        """Return once every live worker applied every change sent so far; one that has not
        within SYNC_TIMEOUT_SECONDS is killed (its replacement starts from the current table)."""
        target = self._seq

        def applied() -> bool:
            return all(w.acked >= target or not w.alive for w in self._workers.values())

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(applied), SYNC_TIMEOUT_SECONDS)
                return
            except TimeoutError:
                pass
        for worker in self._workers.values():
            if worker.alive and worker.acked < target:
                log.error(
                    "data-plane worker %d (pid %d) did not apply a routing change within %.0f s; "
                    "killing it",
                    worker.index,
                    worker.process.pid,
                    SYNC_TIMEOUT_SECONDS,
                )
                worker.process.kill()

    async def refresh(self) -> None:
        """Have every worker report now (before a metrics export) and wait for it."""
        self._broadcast("report")
        await self.synced()

    def _broadcast_table(self, table: RoutingTable) -> None:
        self._assign_slots(table)
        self._broadcast("table", encode_table(table))

    def _broadcast(self, kind: str, *fields: Any) -> None:
        self._seq += 1
        self._send_all((kind, self._seq, *fields))

    def _send_all(self, message: tuple[Any, ...]) -> None:
        for worker in self._workers.values():
            if worker.alive and not worker.writer.is_closing():
                write_message(worker.writer, message)

    def _assign_slots(self, table: RoutingTable | None = None) -> RoutingTable:
        """Number the table's variants and containers (once each) and watch the containers'
        availability; forget those that left the table long enough ago."""
        table = table if table is not None else self._server.table
        now = time.monotonic()
        present: set[int] = set()
        for endpoint in table.by_name.values():
            for variant in endpoint.variants:
                if not variant.slot:
                    variant.slot = next(self._slots)
                    self._variants[variant.slot] = variant
                present.add(variant.slot)
                for instance in variant.instances:
                    for upstream in instance.chain:
                        if not upstream.slot:
                            upstream.slot = next(self._slots)
                            upstream.mirror = self
                            self._upstreams[upstream.slot] = upstream
                        present.add(upstream.slot)
        limits = self._config.limits
        linger = limits.invocation_timeout_seconds + limits.drain_timeout_seconds + 60.0
        for slot in itertools.chain(self._upstreams, self._variants):
            if slot in present:
                self._leaving.pop(slot, None)
            else:
                self._leaving.setdefault(slot, now + linger)
        for slot, until in list(self._leaving.items()):
            if until < now:
                del self._leaving[slot]
                self._upstreams.pop(slot, None)
                self._variants.pop(slot, None)
        return table


#: Linux 5.14+: 1 makes the kernel move the connections queued on a closed SO_REUSEPORT
#: listener (a worker that died) to another listener of the port, instead of resetting them.
TCP_MIGRATE_REQ: Final = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def _mention_request_migration() -> None:
    try:
        value = TCP_MIGRATE_REQ.read_text(encoding="ascii").strip()
    except OSError:
        return  # not Linux, or older than 5.14: nothing to suggest
    if value == "0":
        log.info(
            "net.ipv4.tcp_migrate_req is 0: connections the kernel has queued for a worker that "
            "dies are reset; with 1 (sysctl -w net.ipv4.tcp_migrate_req=1, per network "
            "namespace) it hands them to the other workers"
        )


def _shared_memory_fd(size: int) -> int:
    """A file descriptor of ``size`` zeroed bytes of memory, for a worker to map too."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("mce-router-call-journal", 0)  # inheritable: passed to the worker
    else:  # not Linux: an unlinked temporary file (its pages are written back, rarely)
        import tempfile

        with tempfile.TemporaryFile() as file:
            fd = os.dup(file.fileno())
        os.set_inheritable(fd, True)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT and never listening: it holds the port
    (port 0 picks one) for the workers' listeners, also while one is being replaced, and gets
    none of the connections (the kernel gives those to listening sockets only)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _worker_environment() -> dict[str, str]:
    """This process's environment, with this package importable (an embedding host may have
    put it on sys.path itself)."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _PACKAGE_PARENT if not path else f"{_PACKAGE_PARENT}{os.pathsep}{path}"
    return env
