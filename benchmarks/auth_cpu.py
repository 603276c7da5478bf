#!/usr/bin/env python3
"""CPU per request of the router's SigV4 + IAM steps, without the network.

    python benchmarks/auth_cpu.py                 # 5 rounds of 20,000 requests
    python benchmarks/auth_cpu.py --profile       # cProfile of one round, top functions

Drives the code the data plane runs for each signed invocation, in its order:
``Guard.begin`` (header checks, canonical head), the body fed to the pending signature,
``finish`` (body SHA-256, string to sign, HMAC, constant-time compare), then
``authorize_invoke`` (IAM evaluation and audit). The request is the one ``benchmarks/run.py``'s
"auth" variant sends (botocore-signed headers, the same credential and Allow policy, the same
body and target header), with the header list as the HTTP parser hands it over. Each round
signs a fresh request first, so the date is always inside the skew window.

Reports microseconds of process CPU per request (median of the rounds, and each step alone).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from collections.abc import Callable

from benchlib.load import TARGET_HEADER
from benchlib.stack import HOST, REQUEST_BODY
from benchlib.variants import VARIANTS, sigv4_headers

from mce_router.dataplane.proxy import endpoint_path
from mce_router.security import AuthConfig, Guard

PORT = 8080
PATH = b"/endpoints/direct/invocations"


def signed_request() -> list[tuple[bytes, bytes]]:
    """The raw header list of one signed request, as wrk sends it and httptools reports it."""
    url = f"http://{HOST}:{PORT}{PATH.decode()}"
    base = {"Content-Type": "application/json", TARGET_HEADER: "origin"}
    headers = {"Host": f"{HOST}:{PORT}", **base, **sigv4_headers(url, REQUEST_BODY, base)}
    headers["Content-Length"] = str(len(REQUEST_BODY))
    return [(name.encode(), value.encode()) for name, value in headers.items()]


def make_guard() -> Guard:
    auth = next(v for v in VARIANTS if v.name == "auth").on["auth"]
    guard = Guard.from_config(AuthConfig.from_mapping(auth))
    assert guard is not None
    return guard


def one_request(guard: Guard, headers: list[tuple[bytes, bytes]]) -> None:
    pending = guard.begin(b"POST", PATH, b"", headers)
    pending.update(REQUEST_BODY)
    credential = pending.finish()
    named = endpoint_path(PATH)
    assert named is not None
    guard.authorize_invoke(credential, named[0], "origin")


def per_request_us(step: Callable[[], object], count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        step()
    return (time.process_time() - started) / count * 1e6


def one_round(guard: Guard, count: int) -> tuple[float, dict[str, float]]:
    """Whole requests, then each step alone, on a freshly signed request."""
    headers = signed_request()
    one_request(guard, headers)  # warm the per-key/day caches, as a running router has
    total = per_request_us(lambda: one_request(guard, headers), count)
    begin = per_request_us(lambda: guard.begin(b"POST", PATH, b"", headers), count)
    feed = iter([guard.begin(b"POST", PATH, b"", headers) for _ in range(count)])

    def finish() -> object:
        signature = next(feed)
        signature.update(REQUEST_BODY)
        return signature.finish()

    body_finish = per_request_us(finish, count)
    credential = guard.begin(b"POST", PATH, b"", headers).credential
    authorize = per_request_us(
        lambda: guard.authorize_invoke(credential, "direct", "origin"), count
    )
    return total, {"begin": begin, "body+finish": body_finish, "authorize": authorize}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    guard = make_guard()
    if args.profile:
        headers = signed_request()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.count):
            one_request(guard, headers)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return 0
    totals: list[float] = []
    steps: dict[str, list[float]] = {"begin": [], "body+finish": [], "authorize": []}
    for _ in range(args.rounds):
        total, parts = one_round(guard, args.count)
        totals.append(total)
        for name, value in parts.items():
            steps[name].append(value)
    print(f"auth steps per request: {statistics.median(totals):.2f} us CPU (median of "
          f"{args.rounds} rounds of {args.count}; rounds: "
          f"{', '.join(f'{t:.2f}' for t in totals)})")  # fmt: skip
    for name, values in steps.items():
        print(f"  {name:12s} {statistics.median(values):6.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
