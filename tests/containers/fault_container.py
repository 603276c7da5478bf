#!/usr/bin/env python3
"""A misbehaving-on-demand SageMaker model container for integration tests (stdlib only).

Run as a script: ``python tests/containers/fault_container.py``. It speaks HTTP/1.1 with
keep-alive and Content-Length bodies over raw asyncio streams on 127.0.0.1, port
``$SAGEMAKER_BIND_TO_PORT`` (8080 when absent), so tests can provoke every container fault
through real sockets. It must not import project modules.

Process knobs (environment):

``FAULT_STARTUP``
    ``exit`` (print a line to stderr, exit 3; ``exit:N`` exits N), ``never-listen`` (stay alive,
    never bind), ``delay:SECONDS`` (wait before listening).
``FAULT_PING``
    ``ok`` (default), ``fail`` (always 500), ``hang`` (never answer), ``ok-after:N`` (the first
    N pings answer 500, like a model still loading), ``fail-after:N`` (N good pings, then 500).
``FAULT_FORK_CHILD=1``
    Fork a child at startup that ignores SIGTERM and sleeps (same process group) and write its
    pid to ``$FAULT_CHILD_PID_FILE``. The child gives up after ``FAULT_CHILD_MAX_SECONDS``
    (default 300) so a broken test cannot leak it forever.
``FAULT_IGNORE_SIGTERM=1``
    Ignore SIGTERM; only SIGKILL stops the process. Otherwise SIGTERM exits 0 at once.
``FAULT_DEFAULT_ACTION``
    The action of a request whose custom attributes name none (default ``echo``), e.g.
    ``status:500`` for a container that fails every call, or ``headers``. Custom attributes
    reach every stage of a Serial pipeline, so this is how one stage behaves differently.
``FAULT_EXTRA_LISTEN=PORT``
    Also listen on PORT (answers like the bind port), e.g. 8080 or a port outside the safe range.
``FAULT_ACCEPT_DELAY=SECONDS``
    Accept each connection only after SECONDS (a server whose accept loop is starved).
``FAULT_MAX_BIND_PORT=N``
    Refuse to start (exit 1) when SAGEMAKER_BIND_TO_PORT is above N, as some servers do for 32767.
``FAULT_ALLOCATE_MB=N``
    Hold N MiB of touched memory from start-up on.
``FAULT_RESPONSE_CONTENT_TYPE``
    Content-Type of the answers carrying data (``echo``, ``sleep``, ``close-after``, ``headers``,
    ``env``, ``big``) instead of the usual one, so a Serial stage can hand its successor a
    Content-Type of its own.

Per-request behaviour of ``POST /invocations`` comes from ``X-Amzn-SageMaker-Custom-Attributes``
(``key=value`` pairs separated by ``;`` or ``,``): ``action=`` one of ``echo`` (default),
``status:N`` (with ``message=``), ``headers``, ``sleep:SECONDS``, ``spin:SECONDS`` (busy CPU),
``hang``, ``crash``,
``die-mid-body``, ``close``, ``garbage``, ``close-after``, ``big:N``, ``reason``, ``env``,
``set-ping:MODE`` (switch the ping behaviour from now on). ``headers`` reports the request as
JSON ``{"method", "path", "headers", "body_length", "body"}`` (body decoded as latin-1), so
nested reports show what every Serial stage received. ``GET /stats`` reports counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import NoReturn

HOST = "127.0.0.1"
DEFAULT_PORT = 8080
HEAD_LIMIT = 64 * 1024
BODY_LIMIT = 64 * 1024 * 1024
CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"
_ATTRIBUTE_SEPARATORS = re.compile(r"[;,]")
_PING_MODE = re.compile(r"ok|fail|hang|ok-after:\d+|fail-after:\d+")
_ACTIONS = frozenset(
    {
        "echo",
        "status",
        "headers",
        "sleep",
        "spin",
        "hang",
        "crash",
        "die-mid-body",
        "close",
        "garbage",
        "close-after",
        "big",
        "reason",
        "env",
        "set-ping",
    }
)


def log(message: str) -> None:
    sys.stderr.write(f"fault container [{os.getpid()}]: {message}\n")
    sys.stderr.flush()


class BadRequest(Exception):
    """The request cannot be parsed; answer ``status`` and close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class State:
    ping_mode: str = "ok"
    pings: int = 0
    invocations: int = 0
    requests: int = 0
    connections: int = 0
    active_connections: int = 0

    def stats(self) -> dict[str, int]:
        return {
            "invocations": self.invocations,
            "connections": self.connections,
            "active_connections": self.active_connections,
            "pings": self.pings,
            "requests": self.requests,
        }


@dataclass(slots=True)
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    keep_alive: bool = True
    _index: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (lower-case), as received."""
        return self._index.get(name)


def parse_attributes(value: str | None) -> dict[str, str]:
    """``action=status:500;message=boom`` → {"action": "status:500", "message": "boom"}."""
    attributes: dict[str, str] = {}
    for part in _ATTRIBUTE_SEPARATORS.split(value or ""):
        key, sep, item = part.partition("=")
        if sep:
            attributes.setdefault(key.strip().lower(), item.strip())
    return attributes


def render(
    status: int,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    *,
    reason: str | None = None,
    close: bool = False,
) -> bytes:
    """Serialize a complete response; header values go out byte for byte (latin-1)."""
    if reason is None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines.extend(f"{name}: {value}" for name, value in headers or ())
    if status >= 200 and status not in (204, 304):
        lines.append(f"Content-Length: {len(body)}")
    else:
        body = b""
    if close:
        lines.append("Connection: close")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1") + body


async def read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> Request | None:
    """The next request on the connection, or None when the client closed it between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None  # EOF, clean (between requests) or not: nothing to answer
    except asyncio.LimitOverrunError:
        raise BadRequest(431, "request head too large") from None
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, f"bad request line {lines[0]!r}")
    method, target, version = parts
    headers: list[tuple[str, str]] = []
    index: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, f"bad header line {line!r}")
        value = value.strip(" \t")
        headers.append((name, value))
        index.setdefault(name.lower(), value)
    request = Request(method, target, version, headers, _index=index)
    connection = index.get("connection", "").lower()
    if version == "HTTP/1.0":
        request.keep_alive = "keep-alive" in connection
    else:
        request.keep_alive = "close" not in connection
    if "transfer-encoding" in index:
        raise BadRequest(501, "chunked request bodies are not supported")
    length_text = index.get("content-length", "0")
    if not length_text.isdigit():
        raise BadRequest(400, f"bad Content-Length {length_text!r}")
    length = int(length_text)
    if length > BODY_LIMIT:
        raise BadRequest(413, f"body over {BODY_LIMIT} bytes")
    if length:
        if index.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.body = await reader.readexactly(length)
    return request


async def hang(reader: asyncio.StreamReader) -> None:
    """Never answer; return once the client gives up and closes its side."""
    while await reader.read(65536):
        pass


class Server:
    def __init__(
        self,
        state: State,
        default_action: str = "echo",
        response_content_type: str | None = None,
    ) -> None:
        self.state = state
        self.default_action = default_action
        self.response_content_type = response_content_type

    async def handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        state = self.state
        state.connections += 1
        state.active_connections += 1
        try:
            while True:
                request = await read_request(reader, writer)
                if request is None:
                    break
                state.requests += 1
                if not await self.dispatch(request, reader, writer):
                    break
        except BadRequest as exc:
            with contextlib.suppress(ConnectionError):
                writer.write(render(exc.status, (exc.message + "\n").encode(), close=True))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away mid-request or mid-response
        except asyncio.CancelledError:
            # Shutdown cancels open connections; Python 3.11's start_server callback would
            # print a traceback for every cancelled handler task, so end this one quietly.
            pass
        except Exception:
            log("unexpected error:\n" + traceback.format_exc())
        finally:
            state.active_connections -= 1
            writer.close()

    async def dispatch(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False closes the connection."""
        path = request.target.partition("?")[0]
        method = request.method
        if path == "/invocations":
            if method != "POST":
                return await self.send(writer, request, 405, b"use POST\n")
            self.state.invocations += 1
            return await self.invoke(request, reader, writer)
        if path == "/ping":
            if method != "GET":
                return await self.send(writer, request, 405, b"use GET\n")
            return await self.ping(request, reader, writer)
        if path == "/stats" and method == "GET":
            body = json.dumps(self.state.stats()).encode()
            return await self.send(writer, request, 200, body, [_JSON])
        return await self.send(writer, request, 404, b"not found\n", [_TEXT])

    async def send(
        self,
        writer: asyncio.StreamWriter,
        request: Request,
        status: int,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        *,
        reason: str | None = None,
    ) -> bool:
        close = not request.keep_alive
        writer.write(render(status, body, headers, reason=reason, close=close))
        await writer.drain()
        return not close

    async def ping(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        state = self.state
        state.pings += 1
        mode, _, count = state.ping_mode.partition(":")
        if mode == "hang":
            await hang(reader)
            return False
        healthy = (
            mode == "ok"
            or (mode == "ok-after" and state.pings > int(count))
            or (mode == "fail-after" and state.pings <= int(count))
        )
        if healthy:
            return await self.send(writer, request, 200, b"ok", [_TEXT])
        return await self.send(writer, request, 500, b"unhealthy", [_TEXT])

    async def invoke(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        raw_attributes = request.header(CUSTOM_ATTRIBUTES)
        attributes = parse_attributes(raw_attributes)
        action, _, arg = attributes.get("action", self.default_action).partition(":")
        echoed: list[tuple[str, str]] = []
        if raw_attributes is not None:
            echoed.append(("X-Amzn-SageMaker-Custom-Attributes", raw_attributes))

        content_type = request.header("content-type")
        forced = self.response_content_type
        if forced is not None:  # FAULT_RESPONSE_CONTENT_TYPE wins for every 200 answer
            content_type = forced
        # Echo: the request's Content-Type byte for byte (none if it sent none).
        echo_headers = echoed if content_type is None else [("Content-Type", content_type), *echoed]
        json_headers = [_JSON if forced is None else ("Content-Type", forced), *echoed]

        try:
            if action == "echo":
                return await self.send(writer, request, 200, request.body, echo_headers)
            if action == "status":
                status = int(arg)
                if not 100 <= status <= 999:
                    raise ValueError(arg)
                message = attributes.get("message", f"error {status}").encode()
                return await self.send(writer, request, status, message, [_TEXT, *echoed])
            if action == "headers":
                report = {
                    "method": request.method,
                    "path": request.target,
                    "headers": [list(item) for item in request.headers],
                    "body_length": len(request.body),
                    "body": request.body.decode("latin-1"),
                }
                body = json.dumps(report).encode()
                return await self.send(writer, request, 200, body, json_headers)
            if action == "sleep":
                await asyncio.sleep(float(arg))
                return await self.send(writer, request, 200, request.body, echo_headers)
            if action == "spin":
                # Busy CPU for that many seconds (blocking the loop on purpose: CPU cost).
                until = time.monotonic() + float(arg)
                while time.monotonic() < until:
                    pass
                return await self.send(writer, request, 200, request.body, echo_headers)
            if action == "hang":
                await hang(reader)
                return False
            if action == "crash":
                log("crash requested: exiting with code 1, no response")
                os._exit(1)
            if action == "die-mid-body":
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Length: 1000\r\n\r\n" + b"x" * 10
                )
                await writer.drain()
                log("die-mid-body requested: exiting with code 1 after 10 of 1000 bytes")
                os._exit(1)
            if action == "close":
                return False
            if action == "garbage":
                writer.write(b"this is not http\r\n\r\n")
                await writer.drain()
                return False
            if action == "close-after":
                request.keep_alive = False
                return await self.send(writer, request, 200, request.body, echo_headers)
            if action == "big":
                body = b"x" * int(arg)
                headers = [("Content-Type", forced or "application/octet-stream"), *echoed]
                return await self.send(writer, request, 200, body, headers)
            if action == "reason":
                reason = "Custom Failure Reason"
                return await self.send(writer, request, 500, b"", [_TEXT, *echoed], reason=reason)
            if action == "env":
                body = json.dumps(selected_env()).encode()
                return await self.send(writer, request, 200, body, json_headers)
            if action == "set-ping":
                if not _PING_MODE.fullmatch(arg):
                    raise ValueError(arg)
                self.state.ping_mode = arg
                self.state.pings = 0
                return await self.send(writer, request, 200, b"ok", [_TEXT, *echoed])
        except ValueError:
            pass
        message = f"unknown action {attributes.get('action')!r}\n".encode()
        return await self.send(writer, request, 400, message, [_TEXT, *echoed])


_JSON = ("Content-Type", "application/json")
_TEXT = ("Content-Type", "text/plain")


def selected_env() -> dict[str, str | None]:
    env: dict[str, str | None] = {
        "SAGEMAKER_BIND_TO_PORT": os.environ.get("SAGEMAKER_BIND_TO_PORT"),
        "SAGEMAKER_SAFE_PORT_RANGE": os.environ.get("SAGEMAKER_SAFE_PORT_RANGE"),
    }
    env.update((key, value) for key, value in os.environ.items() if key.startswith("TEST_"))
    return env


def fork_child(pid_file: str | None, max_seconds: float) -> int:
    """Fork a child that ignores SIGTERM and sleeps (same process group); return its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            deadline = time.monotonic() + max_seconds
            while (left := deadline - time.monotonic()) > 0:
                time.sleep(min(left, 60.0))
        finally:
            os._exit(0)
    if pid_file:
        # Write then rename, so a test polling the file never reads a partial pid.
        with open(pid_file + ".tmp", "w") as handle:
            handle.write(f"{pid}\n")
        os.replace(pid_file + ".tmp", pid_file)
    log(f"forked child {pid} (ignores SIGTERM)")
    return pid


async def serve(
    port: int, startup: str, state: State, ignore_sigterm: bool, child: int, server: Server
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if not ignore_sigterm:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if child:
        loop.add_signal_handler(signal.SIGCHLD, lambda: _reap(child))

    if startup == "never-listen":
        log("FAULT_STARTUP=never-listen: alive, not listening")
        await stop.wait()
        return 0
    if startup.startswith("delay:"):
        delay = float(startup.partition(":")[2])
        log(f"FAULT_STARTUP={startup}: waiting {delay} s before listening")
        try:
            await asyncio.wait_for(stop.wait(), delay)
            return 0
        except TimeoutError:
            pass

    accept_delay = float(os.environ.get("FAULT_ACCEPT_DELAY") or 0)
    extra = os.environ.get("FAULT_EXTRA_LISTEN")
    ports = [port] + ([int(extra)] if extra else [])
    listeners: list[asyncio.Server] = []
    slow_accepts: list[asyncio.Task[None]] = []
    try:
        for each in ports:
            if accept_delay:
                slow_accepts.append(asyncio.ensure_future(slow_accept(server, each, accept_delay)))
            else:
                listeners.append(
                    await asyncio.start_server(
                        server.handle_connection, HOST, each, limit=HEAD_LIMIT, backlog=1024
                    )
                )
    except OSError as exc:
        log(f"cannot listen on {HOST}:{port}: {exc}")
        return 1
    log(f"listening on {HOST}:{', '.join(map(str, ports))} (ping={state.ping_mode})")
    await stop.wait()
    for listener in listeners:
        listener.close()
    for task in slow_accepts:
        task.cancel()
    log("stopping on signal")
    return 0


async def slow_accept(server: Server, port: int, delay: float) -> None:
    """A listener whose accept loop waits ``delay`` before each accept (kernel queue fills)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.listen(1024)
    sock.setblocking(False)
    handlers: set[asyncio.Task[None]] = set()
    try:
        while True:
            await asyncio.sleep(delay)
            conn, _ = await loop.sock_accept(sock)
            reader, writer = await asyncio.open_connection(sock=conn, limit=HEAD_LIMIT)
            task = asyncio.ensure_future(server.handle_connection(reader, writer))
            handlers.add(task)
            task.add_done_callback(handlers.discard)
    finally:
        sock.close()


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def fail(message: str) -> NoReturn:
    log(message)
    sys.exit(2)


def main() -> int:
    env = os.environ
    try:
        port = int(env.get("SAGEMAKER_BIND_TO_PORT") or DEFAULT_PORT)
    except ValueError:
        fail(f"bad SAGEMAKER_BIND_TO_PORT {env['SAGEMAKER_BIND_TO_PORT']!r}")
    max_port = env.get("FAULT_MAX_BIND_PORT")
    if max_port and port > int(max_port):
        log(f"SAGEMAKER_BIND_TO_PORT={port} is above {max_port}: refusing to start")
        return 1
    hoard = bytearray(int(env.get("FAULT_ALLOCATE_MB") or 0) * 2**20)
    for offset in range(0, len(hoard), 4096):  # touch every page, so it is resident
        hoard[offset] = 1
    startup = env.get("FAULT_STARTUP", "")
    if startup == "exit" or startup.startswith("exit:"):
        code_text = startup.partition(":")[2] or "3"
        if not code_text.isdigit():
            fail(f"bad FAULT_STARTUP {startup!r}")
        code = int(code_text)
        log(f"FAULT_STARTUP={startup}: exiting with code {code}")
        return code
    if startup and startup != "never-listen":
        try:
            if not startup.startswith("delay:") or float(startup[6:]) < 0:
                raise ValueError
        except ValueError:
            fail(f"bad FAULT_STARTUP {startup!r}")
    ping_mode = env.get("FAULT_PING") or "ok"
    if not _PING_MODE.fullmatch(ping_mode):
        fail(f"bad FAULT_PING {ping_mode!r}")
    # Writes to a peer that vanished are expected here; keep asyncio's warnings (such as
    # "socket.send() raised exception.") out of stderr, but not its errors.
    logging.getLogger("asyncio").setLevel(logging.ERROR)

    child = 0
    if env.get("FAULT_FORK_CHILD") == "1":
        max_seconds = float(env.get("FAULT_CHILD_MAX_SECONDS") or 300)
        child = fork_child(env.get("FAULT_CHILD_PID_FILE"), max_seconds)
    ignore_sigterm = env.get("FAULT_IGNORE_SIGTERM") == "1"
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("FAULT_IGNORE_SIGTERM=1: ignoring SIGTERM")
    default_action = env.get("FAULT_DEFAULT_ACTION") or "echo"
    if default_action.partition(":")[0] not in _ACTIONS:
        fail(f"bad FAULT_DEFAULT_ACTION {default_action!r}")
    state = State(ping_mode=ping_mode)
    server = Server(state, default_action, env.get("FAULT_RESPONSE_CONTENT_TYPE") or None)
    return asyncio.run(serve(port, startup, state, ignore_sigterm, child, server))


if __name__ == "__main__":
    sys.exit(main())
