"""Open N keep-alive client connections, send one request on each, then hold them idle.

Used by ``benchmarks/run.py`` (the harness measures the server's RSS while they are held), and
runnable alone::

    python benchmarks/idle_conns.py --port 8080 --path /endpoints/direct/invocations \
        --header 'X-Amzn-SageMaker-Target-Container-Hostname: origin' --count 10000 --hold 30

Protocol on stdout (one JSON object per line): ``{"event": "opened", ...}`` once every
connection has been tried, ``{"event": "closed", ...}`` at the end. The connections are held
until a line arrives on stdin (or stdin closes) or ``--hold`` seconds pass, whichever is first.
Every phase is bounded in time; the open-files limit is raised to the hard limit.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import resource
import sys
import time


def raise_nofile(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(wanted, soft)
    target = min(hard, max(wanted, soft))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def main(args: argparse.Namespace) -> int:
    limit = raise_nofile(args.count + 256)
    count = min(args.count, limit - 128)
    body = args.body.encode()
    extra = "".join(f"{h}\r\n" for h in args.header)
    request = (
        f"POST {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        f"Content-Type: application/json\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    statuses: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    gate = asyncio.Semaphore(args.concurrency)

    async def open_one() -> None:
        async with gate:
            try:
                async with asyncio.timeout(args.request_timeout):
                    reader, writer = await asyncio.open_connection(args.host, args.port)
                    try:
                        writer.write(request)
                        head = await reader.readuntil(b"\r\n\r\n")
                        status = head.split(b" ", 2)[1].decode()
                        length = 0
                        for line in head.split(b"\r\n"):
                            if line.lower().startswith(b"content-length:"):
                                length = int(line.split(b":", 1)[1])
                        await reader.readexactly(length)
                    except BaseException:
                        writer.close()
                        raise
            except Exception as exc:
                errors[type(exc).__name__] += 1
                return
            statuses[status] += 1
            held.append((reader, writer))

    started = time.monotonic()
    tasks = [asyncio.ensure_future(open_one()) for _ in range(count)]
    _, pending = await asyncio.wait(tasks, timeout=args.open_timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    emit(
        event="opened",
        requested=args.count,
        attempted=count,
        held=len(held),
        failed=count - len(held),
        timed_out=len(pending),
        statuses=dict(statuses),
        errors=dict(errors),
        seconds=round(time.monotonic() - started, 3),
        nofile=limit,
    )

    loop = asyncio.get_running_loop()
    release = asyncio.Event()
    # No usable stdin: hold for --hold seconds.
    with contextlib.suppress(OSError, ValueError, NotImplementedError):
        loop.add_reader(sys.stdin.fileno(), release.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(release.wait(), timeout=args.hold)
    with contextlib.suppress(Exception):
        loop.remove_reader(sys.stdin.fileno())

    # Connections the server closed while they were idle have seen EOF by now.
    still_open = sum(
        1 for reader, writer in held if not reader.at_eof() and not writer.is_closing()
    )
    for _, writer in held:
        writer.close()
    await asyncio.sleep(0.2)
    emit(event="closed", still_open_at_release=still_open, held=len(held))
    return 0


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/ping")
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--body", default="{}")
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=256, help="connections opening at once")
    parser.add_argument("--hold", type=float, default=60.0, help="max seconds to hold them")
    parser.add_argument("--open-timeout", type=float, default=120.0)
    parser.add_argument("--request-timeout", type=float, default=15.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        sys.exit(asyncio.run(main(_parse())))
    sys.exit(uvloop.run(main(_parse())))
