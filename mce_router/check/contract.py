"""The contract rules, run against a real start of the container, each with its evidence.

Two starts: the first on a bind port below 32768 carries most rules (listening, accept time,
ping, the sample invocation, other ports, resources, SIGTERM); the second on a port above
32767 shows whether the server accepts one there too (some Java model servers refuse). The
timing rules are SageMaker's (``REFERENCE.md``): accept a connection within 250 ms, answer
``/ping`` within 2 s, all within the startup window, and stop within the grace period after
SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from ..runtime.engine import BIND_LABEL, accepts_bind_port
from ..runtime.instances import GIB, InstanceType
from ..runtime.ports import port_is_free
from . import probes
from .subjects import Started, StartFailed, Subject

_HIGH_RULE = "bind-port-above-32767"
ACCEPT_LIMIT_SECONDS = 0.25
PING_TIMEOUT_SECONDS = 2.0
INVOCATION_TIMEOUT_SECONDS = 60.0
SAGEMAKER_DEFAULT_PORT = 8080
#: Where the checker looks for free ports: the low run's bind port and safe range, the high
#: run's bind port (above Linux's ephemeral range, so no outgoing connection holds it).
LOW_BIND_PORTS = range(12000, 16000)
SAFE_RANGES = range(24000, 30000, 100)
SAFE_RANGE_SIZE = 100
HIGH_BIND_PORTS = range(61000, 65000)


#: The order rules are reported in.
RULES = (
    "accept-bind-to-port-label",
    "listens-on-bind-port",
    "not-on-port-8080",
    "accepts-within-250ms",
    "ping-200-within-2s",
    "invocations",
    "ports-in-safe-range",
    "bind-port-above-32767",
    "stops-on-sigterm",
    "resources",
)


@dataclass(frozen=True, slots=True)
class CheckOptions:
    instance: InstanceType
    payload: bytes | None = None
    content_type: str = "application/json"
    accept: str | None = None
    #: SageMaker's default ContainerStartupHealthCheckTimeoutInSeconds is 480.
    startup_timeout: float = 480.0
    grace_seconds: float = 30.0
    #: Pings after the first 200, each of which must be a 200 within 2 s.
    ping_repeats: int = 5
    #: Connections whose accept time is measured.
    accept_samples: int = 5


@dataclass(frozen=True, slots=True)
class RuleResult:
    rule: str
    passed: bool
    detail: str
    skipped: bool = False

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"rule": self.rule, "passed": self.passed, "detail": self.detail}
        if self.skipped:
            out["skipped"] = True
        return out


@dataclass(slots=True)
class CheckReport:
    subject: str
    instance_type: str
    rules: list[RuleResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(rule.passed for rule in self.rules)

    def add(self, rule: str, passed: bool, detail: str, *, skipped: bool = False) -> None:
        self.rules.append(RuleResult(rule, passed, detail, skipped))

    def as_json(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "subject": self.subject,
            "instance_type": self.instance_type,
            "rules": [rule.as_json() for rule in self.rules],
        }

    def as_text(self) -> str:
        lines = [f"mce-router check: {self.subject} on {self.instance_type}"]
        for rule in self.rules:
            mark = "SKIP" if rule.skipped else ("PASS" if rule.passed else "FAIL")
            lines.append(f"  {mark}  {rule.rule}: {rule.detail}")
        failed = sum(not rule.passed for rule in self.rules)
        lines.append("all rules pass" if not failed else f"{failed} rule(s) failed")
        return "\n".join(lines)


def _free_port(candidates: range, host: str, taken: set[int]) -> int:
    for port in candidates:
        if port not in taken and port_is_free(host, port):
            return port
    raise OSError(f"no free port in {candidates.start}-{candidates.stop - 1} on {host}")


def _free_range(host: str) -> tuple[int, int]:
    for first in SAFE_RANGES:
        last = first + SAFE_RANGE_SIZE - 1
        if all(port_is_free(host, port) for port in range(first, last + 1)):
            return first, last
    raise OSError(f"no free block of {SAFE_RANGE_SIZE} ports in {SAFE_RANGES.start}-29999")


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


class _NotRunning(Exception):
    """The container exited (or never listened) before a rule could be checked."""


async def _gone(started: Started) -> str | None:
    """Why the container can no longer be checked, or None while it runs."""
    code = await started.exit_code()
    if code is None:
        return None
    tail = await started.log_tail()
    return f"it exited with status {code}" + (f"; last output:\n{tail}" if tail else "")


async def _wait_listening(
    started: Started, port: int, deadline: float, seen: Callable[[], set[int]]
) -> float:
    """Seconds until ``port`` listens; raises _NotRunning when it exits or the window ends."""
    begun = time.monotonic()
    while time.monotonic() < deadline:
        if port in seen():
            return time.monotonic() - begun
        reason = await _gone(started)
        if reason:
            raise _NotRunning(reason)
        await asyncio.sleep(0.02)
    raise _NotRunning(f"it did not listen on port {port} within the startup window")


async def _first_ping(
    session: aiohttp.ClientSession, started: Started, url: str, deadline: float
) -> tuple[float, str]:
    """Ping as the router's health check does until a 200; (seconds, last non-200 seen)."""
    begun = time.monotonic()
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            answer = await probes.http_call(session, "GET", url, timeout=PING_TIMEOUT_SECONDS)
            if answer.status == 200:
                return time.monotonic() - begun, last
            last = f"HTTP {answer.status}"
        except TimeoutError:
            last = f"no answer within {PING_TIMEOUT_SECONDS:.0f} s"
        except aiohttp.ClientError as exc:
            last = f"{type(exc).__name__}: {exc}"
        reason = await _gone(started)
        if reason:
            raise _NotRunning(reason)
        await asyncio.sleep(0.1)
    raise _NotRunning(f"GET /ping never answered 200 within the startup window (last: {last})")


async def check_container(subject: Subject, options: CheckOptions) -> CheckReport:
    """Start ``subject`` as an endpoint would and report every contract rule."""
    report = CheckReport(subject.description, options.instance.name)
    try:
        labels = await subject.labels()
        if labels is not None:
            value = str(labels.get(BIND_LABEL, ""))
            report.add(
                "accept-bind-to-port-label",
                accepts_bind_port(labels),
                f"{BIND_LABEL}={value}"
                if value
                else f"the image has no {BIND_LABEL} label (multi-container models reject it)",
            )
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)
        ) as session:
            low_port = await _first_run(subject, options, session, report)
            if low_port is not None:
                await _high_port_run(subject, options, session, report, low_port)
    finally:
        await subject.aclose()
    report.rules.sort(key=lambda result: RULES.index(result.rule))
    return report


async def _first_run(
    subject: Subject,
    options: CheckOptions,
    session: aiohttp.ClientSession,
    report: CheckReport,
) -> int | None:
    """The main run; the bind port it used, or None when the container could not start."""
    host = "127.0.0.1"
    bind_port = _free_port(LOW_BIND_PORTS, host, set())
    safe_range = _free_range(host)
    pending = [rule for rule in RULES if rule not in ("accept-bind-to-port-label", _HIGH_RULE)]
    launched = time.monotonic()
    try:
        started = await subject.start(bind_port, safe_range, options.instance)
    except StartFailed as exc:
        for rule in [*pending, _HIGH_RULE]:
            report.add(rule, False, f"not checked: {exc}")
        return None

    def done(rule: str, passed: bool, detail: str, *, skipped: bool = False) -> None:
        pending.remove(rule)
        report.add(rule, passed, detail, skipped=skipped)

    try:
        pid = started.root_pid
        if pid is None:
            raise _NotRunning("the container's processes are not visible from this host")
        deadline = launched + options.startup_timeout
        seen_ports: set[int] = set()

        def seen() -> set[int]:
            seen_ports.update(probes.listening_ports(pid))
            return seen_ports

        listen_seconds = await _wait_listening(started, bind_port, deadline, seen)
        done(
            "listens-on-bind-port",
            True,
            f"listening on SAGEMAKER_BIND_TO_PORT={bind_port} {listen_seconds:.2f} s after start",
        )
        accept_times = []
        for _ in range(options.accept_samples):
            try:
                accept_times.append(
                    await probes.time_to_accept(started.host, bind_port, pid, timeout=2.0)
                )
            except (TimeoutError, OSError):
                accept_times.append(float("inf"))
        slowest = max(accept_times)
        done(
            "accepts-within-250ms",
            slowest <= ACCEPT_LIMIT_SECONDS,
            f"slowest of {len(accept_times)} connections accepted in "
            + ("more than 2 s" if slowest == float("inf") else f"{slowest * 1000:.1f} ms")
            + f" (limit {ACCEPT_LIMIT_SECONDS * 1000:.0f} ms)",
        )
        ping_url = f"http://{started.host}:{bind_port}/ping"
        first, before = await _first_ping(session, started, ping_url, deadline)
        to_first = time.monotonic() - launched
        pings = []
        for _ in range(options.ping_repeats):
            try:
                answer = await probes.http_call(
                    session, "GET", ping_url, timeout=PING_TIMEOUT_SECONDS
                )
                pings.append(f"{answer.status} in {answer.seconds * 1000:.0f} ms")
                ok = answer.status == 200
            except TimeoutError:
                pings.append("no answer within 2 s")
                ok = False
            except aiohttp.ClientError as exc:
                pings.append(type(exc).__name__)
                ok = False
            if not ok:
                break
        all_ok = len(pings) == options.ping_repeats and all(p.startswith("200") for p in pings)
        done(
            "ping-200-within-2s",
            all_ok,
            f"first 200 {to_first:.2f} s after start ({first:.2f} s after it listened"
            + (f"; before it: {before}" if before != "no answer yet" else "")
            + f"), then {', '.join(pings)}",
        )
        idle = await _idle_usage(pid)
        await _invocation(session, started, bind_port, options, pid, idle, done)
        seen()
        stray = sorted(
            port
            for port in seen_ports
            if port != bind_port and not safe_range[0] <= port <= safe_range[1]
        )
        done(
            "not-on-port-8080",
            SAGEMAKER_DEFAULT_PORT not in seen_ports or bind_port == SAGEMAKER_DEFAULT_PORT,
            "listened on 8080 although SAGEMAKER_BIND_TO_PORT says otherwise"
            if SAGEMAKER_DEFAULT_PORT in seen_ports
            else "nothing listened on 8080",
        )
        done(
            "ports-in-safe-range",
            not stray,
            f"listening ports {sorted(seen_ports)}; SAGEMAKER_SAFE_PORT_RANGE="
            f"{safe_range[0]}-{safe_range[1]}" + (f"; outside both: {stray}" if stray else ""),
        )
        terminated = time.monotonic()
        await started.terminate()
        code = await started.wait(options.grace_seconds)
        if code is None:
            done(
                "stops-on-sigterm",
                False,
                f"still running {options.grace_seconds:.0f} s after SIGTERM (SageMaker then "
                "sends SIGKILL, cutting requests short)",
            )
        else:
            done(
                "stops-on-sigterm",
                True,
                f"exited with status {code} {time.monotonic() - terminated:.2f} s after SIGTERM "
                f"(grace {options.grace_seconds:.0f} s)",
            )
    except _NotRunning as exc:
        for rule in list(pending):
            done(rule, False, f"not checked: {exc}")
    finally:
        await started.kill()
    return bind_port


async def _idle_usage(pid: int) -> probes.CpuAndMemoryDuring:
    async with probes.CpuAndMemoryDuring(pid) as idle:
        await asyncio.sleep(1.0)
    return idle


async def _invocation(
    session: aiohttp.ClientSession,
    started: Started,
    bind_port: int,
    options: CheckOptions,
    pid: int,
    idle: probes.CpuAndMemoryDuring,
    done: Callable[..., None],
) -> None:
    instance = options.instance
    resources = (
        f"idle {idle.cpu_percent:.1f} % CPU, {_mib(idle.peak_rss)}"
        f" (instance {instance.name}: {instance.vcpu} vCPU = {instance.vcpu * 100} %, "
        f"{instance.memory_bytes / GIB:.0f} GiB)"
    )
    if options.payload is None:
        done(
            "invocations",
            True,
            "not run: give --payload FILE (and --content-type) for a sample request",
            skipped=True,
        )
        fits = idle.peak_rss <= instance.memory_bytes
        done("resources", fits, resources)
        return
    headers = {"Content-Type": options.content_type}
    if options.accept:
        headers["Accept"] = options.accept
    url = f"http://{started.host}:{bind_port}/invocations"
    try:
        async with probes.CpuAndMemoryDuring(pid) as busy:
            answer = await probes.http_call(
                session,
                "POST",
                url,
                timeout=INVOCATION_TIMEOUT_SECONDS,
                body=options.payload,
                headers=headers,
            )
        body = answer.body[:200].decode("utf-8", "replace")
        done(
            "invocations",
            200 <= answer.status < 300,
            f"POST /invocations ({len(options.payload)} bytes, {options.content_type}) answered "
            f"{answer.status} in {answer.seconds * 1000:.1f} ms, {len(answer.body)} bytes "
            f"{answer.content_type or '(no Content-Type)'}: {body!r}",
        )
    except (TimeoutError, aiohttp.ClientError) as exc:
        reason = await _gone(started)
        done(
            "invocations",
            False,
            f"POST /invocations: {reason or type(exc).__name__ or 'no answer within 60 s'}",
        )
        done("resources", False, f"{resources}; the sample request did not complete")
        return
    peak = max(idle.peak_rss, busy.peak_rss)
    done(
        "resources",
        peak <= instance.memory_bytes and busy.cpu_percent_floor <= instance.vcpu * 100,
        f"{resources}; during the request {busy.cpu_percent:.1f} % CPU"
        f"{_tick_caveat(busy)}, peak {_mib(peak)}",
    )


def _tick_caveat(busy: probes.CpuAndMemoryDuring) -> str:
    """Says when a short request's CPU share is mostly the kernel's tick rounding."""
    if busy.cpu_percent - busy.cpu_percent_floor < 10.0:
        return ""
    return (
        f" (at least {busy.cpu_percent_floor:.1f} %: CPU time is counted in "
        f"{probes.CPU_TICK_SECONDS * 1000:.0f} ms ticks)"
    )


async def _high_port_run(
    subject: Subject,
    options: CheckOptions,
    session: aiohttp.ClientSession,
    report: CheckReport,
    low_port: int,
) -> None:
    host = "127.0.0.1"
    bind_port = _free_port(HIGH_BIND_PORTS, host, set())
    safe_range = _free_range(host)
    launched = time.monotonic()
    rule = _HIGH_RULE
    try:
        started = await subject.start(bind_port, safe_range, options.instance)
    except StartFailed as exc:
        report.add(rule, False, f"with SAGEMAKER_BIND_TO_PORT={bind_port}: {exc}")
        return
    try:
        pid = started.root_pid
        if pid is None:
            raise _NotRunning("the container's processes are not visible from this host")
        deadline = launched + options.startup_timeout
        seen: set[int] = set()

        def listening() -> set[int]:
            seen.update(probes.listening_ports(pid))
            return seen

        await _wait_listening(started, bind_port, deadline, listening)
        await _first_ping(session, started, f"http://{started.host}:{bind_port}/ping", deadline)
        report.add(
            rule,
            True,
            f"served /ping on port {low_port} and on port {bind_port}",
        )
    except _NotRunning as exc:
        report.add(rule, False, f"with SAGEMAKER_BIND_TO_PORT={bind_port}: {exc}")
    finally:
        with contextlib.suppress(Exception):
            await started.terminate()
            await started.wait(min(options.grace_seconds, 5.0))
        await started.kill()
