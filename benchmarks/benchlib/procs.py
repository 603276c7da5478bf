"""Processes the benchmark starts: each in its own process group, pinned, always cleaned up."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

#: CPU of the proxy under test and CPU of everything else (origin, wrk, the harness itself).
PROXY_CPU = 0
LOAD_CPU = 1


class BenchError(RuntimeError):
    """A setup step failed; the message says what and where to look."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Tools
# ----------------------------------------------------------------------------------------------


def which(tool: str) -> str | None:
    """``shutil.which`` that also looks in the sbin folders (nginx lives in /usr/sbin)."""
    found = shutil.which(tool)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(folder) / tool
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def ensure_tools(*, need_pyspy: bool, install: bool) -> None:
    """Install nginx and wrk (apt-get), matplotlib and py-spy (pip) when they are missing."""
    missing_apt = [tool for tool in ("nginx", "wrk", "taskset") if which(tool) is None]
    if missing_apt:
        packages = sorted({"util-linux" if t == "taskset" else t for t in missing_apt})
        if not install:
            raise BenchError(f"missing tools {missing_apt}; install: apt-get install {packages}")
        if os.geteuid() != 0 or which("apt-get") is None:
            raise BenchError(
                f"missing tools {missing_apt} and cannot apt-get as this user; "
                f"install them first: sudo apt-get install -y {' '.join(packages)}"
            )
        log(f"installing {packages} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise BenchError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    pip_missing = []
    if importlib.util.find_spec("matplotlib") is None:
        pip_missing.append("matplotlib>=3.7")
    if need_pyspy and which("py-spy") is None:
        pip_missing.append("py-spy>=0.3.14")
    if pip_missing:
        if not install:
            log(f"missing Python packages {pip_missing} (--no-install given); continuing without")
            return
        log(f"installing {pip_missing} with pip")
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", *pip_missing],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            log(f"pip install failed (chart/profile may be skipped):\n{done.stderr[-1500:]}")
        importlib.invalidate_caches()


def raise_nofile_limit() -> int:
    """Raise this process's open-file soft limit to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def can_pin() -> bool:
    return (os.cpu_count() or 1) >= 2 and which("taskset") is not None


def pin_self(cpu: int) -> None:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {cpu})


def pinned(cmd: Sequence[str], cpu: int | None) -> list[str]:
    if cpu is None or not can_pin():
        return list(cmd)
    taskset = which("taskset")
    assert taskset is not None
    return [taskset, "-c", str(cpu), *cmd]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free TCP ports, chosen by the kernel (all held open until chosen)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def wait_http_ok(host: str, port: int, path: str, timeout: float, proc: Managed | None) -> None:
    """Poll ``GET path`` until it answers 2xx; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}: {proc.tail()}")
        try:
            with socket.create_connection((host, port), timeout=1.0) as sock:
                request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
                sock.sendall(request.encode())
                head = sock.recv(64)
            if head.startswith(b"HTTP/1.") and head[9:10] == b"2":
                return
            last = head[:40].decode("latin-1", "replace")
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise BenchError(f"{host}:{port}{path} not ready after {timeout:g} s ({last})")


# ----------------------------------------------------------------------------------------------
# Process registry
# ----------------------------------------------------------------------------------------------


@dataclass
class Managed:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM
    grace: float = 5.0
    _files: list[IO[bytes]] = field(default_factory=list, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tree(self) -> list[psutil.Process]:
        """The process and its descendants (nginx master + workers, router + children)."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """Owns every process the benchmark starts; :meth:`stop_all` is safe to call repeatedly."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.managed: list[Managed] = []

    def spawn(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        cpu: int | None,
        env: dict[str, str] | None = None,
        stdout_path: Path | None = None,
        stop_signal: int = signal.SIGTERM,
        grace: float = 5.0,
    ) -> Managed:
        log_path = self.workdir / f"{name}.log"
        err = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        out = open(stdout_path, "ab") if stdout_path is not None else err  # noqa: SIM115
        popen = subprocess.Popen(
            pinned(cmd, cpu),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=self.workdir,
            start_new_session=True,  # own process group: one killpg stops it and its children
        )
        files = [err] if out is err else [err, out]
        managed = Managed(name, popen, log_path, stop_signal, grace, files)
        self.managed.append(managed)
        return managed

    def stop(self, managed: Managed) -> int | None:
        popen = managed.popen
        if popen.poll() is None:
            _killpg(popen.pid, managed.stop_signal)
            try:
                popen.wait(timeout=managed.grace)
            except subprocess.TimeoutExpired:
                _killpg(popen.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(timeout=5)
        # Children that outlived the leader (same group) go too.
        _killpg(popen.pid, signal.SIGKILL)
        for handle in managed._files:
            with contextlib.suppress(OSError):
                handle.close()
        managed._files.clear()
        if managed in self.managed:
            self.managed.remove(managed)
        return popen.returncode

    def stop_all(self) -> None:
        for managed in reversed(list(self.managed)):
            with contextlib.suppress(Exception):
                self.stop(managed)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@contextlib.contextmanager
def workspace(keep: bool = False) -> Iterator[tuple[Path, Processes]]:
    """A temp dir under /tmp plus a process registry; both cleaned up on any exit.

    SIGTERM and SIGHUP are turned into ``SystemExit`` so ``finally`` blocks run for them too
    (Ctrl-C already raises ``KeyboardInterrupt``).
    """
    workdir = Path(tempfile.mkdtemp(prefix="mce-bench-", dir="/tmp"))
    procs = Processes(workdir)

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, _exit) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield workdir, procs
    finally:
        # A second Ctrl-C during cleanup must not leave processes behind.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            procs.stop_all()
            if keep:
                log(f"kept work dir {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, old_int)
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def tree_cpu_seconds(procs: Sequence[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def tree_rss(procs: Sequence[psutil.Process]) -> int:
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def command_output(cmd: Sequence[str], timeout: float = 10.0) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


# ----------------------------------------------------------------------------------------------
# Load from other processes on the machine (other people's tests share these 2 CPUs)
# ----------------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def system_busy_seconds() -> float:
    """CPU seconds spent in user+nice+system on all CPUs since boot (irq/softirq excluded:
    loopback traffic lands there and is not charged to any process)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = stat.readline().split()
    user, nice, system = (int(v) for v in fields[1:4])
    return (user + nice + system) / _TICK


def own_cpu_seconds() -> float:
    """This harness plus its waited-for children (wrk, py-spy, the idle-connection client)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class ForeignLoad:
    """CPU used by processes that are not part of the benchmark, over an interval.

    ``ours`` lists the process trees the benchmark runs (proxies, origin, container); wrk and
    the harness are counted through rusage. What remains of the machine's busy time belongs to
    someone else and makes the interval noisy.
    """

    def __init__(self, ours: Sequence[Managed]) -> None:
        self.ours = ours
        self.started = time.monotonic()
        self.busy = system_busy_seconds()
        self.own = own_cpu_seconds()
        self.trees = tree_cpu_seconds(self._procs())

    def _procs(self) -> list[psutil.Process]:
        procs: list[psutil.Process] = []
        for managed in self.ours:
            procs.extend(managed.tree())
        return procs

    def percent(self) -> float:
        """Foreign CPU since construction, in percent of one CPU."""
        wall = time.monotonic() - self.started
        busy = system_busy_seconds() - self.busy
        ours = (own_cpu_seconds() - self.own) + (tree_cpu_seconds(self._procs()) - self.trees)
        return max(0.0, 100.0 * (busy - ours) / wall) if wall > 0 else 0.0


def wait_until_quiet(
    ours: Sequence[Managed], *, threshold: float, max_wait: float, probe: float = 0.3
) -> tuple[float, float]:
    """Probe foreign load for ``probe`` s; while it is at least ``threshold`` % of a CPU, keep
    probing for at most ``max_wait`` s more. Returns (extra seconds waited, last load %)."""
    started = time.monotonic()
    while True:
        sample = ForeignLoad(ours)
        time.sleep(probe)
        load = sample.percent()
        waited = time.monotonic() - started - probe
        if load < threshold or waited + probe > max_wait:
            return max(0.0, waited), load
