"""``mce-router loadtest``: a thin shell over :func:`mce_router.loadtest.run_load`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .config import MIX_FIELDS, LoadTestError, config_from_document, read_document

EXIT_OK = 0
EXIT_UNREACHABLE = 1
EXIT_BAD_INPUT = 2
EXIT_INVALID_RESULT = 3

DESCRIPTION = """\
Load-test a SageMaker-compatible runtime (this router, a container's own URL with --endpoint
ignored by it, or real SageMaker with SigV4) with a traffic mix over target containers, and
report per container and overall: achieved rate, latency percentiles from each request's
scheduled send time (open loop: no coordinated omission), errors by status and SageMaker code,
and, against this router, its own ContainerLatency, OverheadLatency, CPU and memory.

Load models: --rate RPS (open loop, constant), --users N (closed loop), 'phases:' in the mix
file (several of either, Inference Recommender style), or --find-limit (step the rate up until
a threshold breaks, for the endpoint and each container alone).

The mix file (YAML or JSON); every long flag may also be set in it (dashes as underscores):
"""

EPILOG = """\
exit status: 0 done, 1 target unreachable, 2 bad input, 3 done but INVALID (the generator,
not the system under test, was the bottleneck: scheduling lag or its own CPU over the limit).

example:
  mce-router loadtest --url http://127.0.0.1:8080 --endpoint quickstart-direct \\
      --mix examples/loadtest/quickstart-mix.yaml --rate 200 --duration 30 \\
      --report-json report.json --report-html report.html
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``loadtest`` subcommand to the main parser."""
    parser = commands.add_parser(
        "loadtest", help="load-test an endpoint with a per-container traffic mix", **_parser_texts()
    )
    add_arguments(parser)


def _parser_texts() -> dict[str, Any]:
    fields = "\n".join(f"  {name:<28} {text}" for name, text in MIX_FIELDS)
    return {
        "description": DESCRIPTION + fields,
        "epilog": EPILOG,
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_argument_group("target")
    target.add_argument(
        "--url",
        help="runtime URL, e.g. http://127.0.0.1:8080 or "
        "https://runtime.sagemaker.us-east-1.amazonaws.com",
    )
    target.add_argument("--endpoint", help="EndpointName")
    target.add_argument(
        "--mix",
        "--config",
        dest="mix",
        type=Path,
        required=True,
        metavar="FILE",
        help="traffic mix (YAML/JSON): targets, weights, payloads; may hold any other setting",
    )
    target.add_argument(
        "--sign",
        choices=("auto", "on", "off"),
        help="SigV4 signing: auto (default) signs when botocore finds AWS credentials",
    )
    target.add_argument("--region", help="SigV4 region (default us-east-1)")
    target.add_argument(
        "--admin-url",
        help="the router's admin URL for its /metrics (default auto: runtime port + 1 if it "
        "is a router serving this endpoint; 'none' to skip)",
    )
    target.add_argument(
        "--timeout",
        type=float,
        help="seconds before a request counts as a ClientTimeout error (default 60)",
    )

    load = parser.add_argument_group("load")
    load.add_argument("--rate", type=float, help="open loop: arrival rate, requests/s")
    load.add_argument("--users", type=int, help="closed loop: concurrent users")
    load.add_argument("--duration", type=float, help="seconds (default 10)")
    load.add_argument(
        "--processes",
        type=int,
        help="generator processes on this machine (default 1); rates and users are split",
    )
    load.add_argument(
        "--max-connections",
        type=int,
        help="open loop: connections per process at most (default 512); requests beyond "
        "wait and are timed from their schedule",
    )

    limit = parser.add_argument_group("find the limit")
    limit.add_argument(
        "--find-limit", action="store_true", help="step the rate up until a threshold breaks"
    )
    limit.add_argument("--start-rate", type=float, help="first step, req/s (default 10)")
    limit.add_argument("--step", type=float, help="rate added per step (default: start rate)")
    limit.add_argument("--max-rate", type=float, help="last step at most (default 100000)")
    limit.add_argument("--step-duration", type=float, help="seconds per step (default 10)")
    limit.add_argument("--p50-ms", type=float, help="threshold on p50 latency")
    limit.add_argument("--p90-ms", type=float, help="threshold on p90 latency")
    limit.add_argument("--p99-ms", type=float, help="threshold on p99 latency")
    limit.add_argument("--max-error-rate", type=float, help="threshold on errors (default 0.01)")
    limit.add_argument("--max-invocations", type=int, help="stop after this many requests")
    limit.add_argument(
        "--endpoint-only", action="store_true", help="skip the search for each container alone"
    )

    checks = parser.add_argument_group("validity and analysis")
    checks.add_argument(
        "--max-lag-ms",
        type=float,
        help="generator scheduling lag p99 beyond which the result is invalid (default 10)",
    )
    checks.add_argument(
        "--max-cpu-percent",
        type=float,
        help="generator CPU (%% of a core, per process) beyond which the result "
        "is invalid (default 95)",
    )
    checks.add_argument(
        "--instance-cores",
        type=float,
        help="cores of one instance, for the autoscaling analysis (default: this machine's)",
    )
    checks.add_argument(
        "--cpu-target",
        type=float,
        help="CPU share of an instance that counts as full (default 0.8)",
    )

    output = parser.add_argument_group("output")
    output.add_argument("--report-json", type=Path, metavar="PATH", help="write the JSON report")
    output.add_argument("--report-html", type=Path, metavar="PATH", help="write the HTML report")
    output.add_argument("--quiet", action="store_true", help="no live progress")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {
        key: getattr(args, key)
        for key in (
            "url",
            "endpoint",
            "sign",
            "region",
            "admin_url",
            "timeout",
            "rate",
            "users",
            "duration",
            "processes",
            "max_connections",
            "max_lag_ms",
            "max_cpu_percent",
            "instance_cores",
            "cpu_target",
        )
    }
    if args.quiet:
        values["progress"] = False
    if args.find_limit:
        values["find_limit"] = {
            k: v
            for k, v in {
                "start": args.start_rate,
                "step": args.step,
                "max_rate": args.max_rate,
                "step_duration": args.step_duration,
                "p50_ms": args.p50_ms,
                "p90_ms": args.p90_ms,
                "p99_ms": args.p99_ms,
                "error_rate": args.max_error_rate,
                "max_invocations": args.max_invocations,
                "per_container": False if args.endpoint_only else None,
            }.items()
            if v is not None
        }
    return values


def run(args: argparse.Namespace) -> int:
    try:
        from .runner import run_load
    except ImportError as exc:
        print(
            f"mce-router loadtest: needs the loadtest extra ({exc.name} is missing): "
            "pip install 'mce-router[loadtest]'",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    try:
        document = read_document(args.mix)
        config = config_from_document(document, args.mix.parent, overrides(args))
    except LoadTestError as exc:
        print(f"mce-router loadtest: {exc.message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        report = run_load(config)
    except LoadTestError as exc:
        print(f"mce-router loadtest: {exc.message}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130
    print(report.summary())
    if args.report_json is not None:
        report.write_json(args.report_json)
    if args.report_html is not None:
        report.write_html(args.report_html)
    return EXIT_OK if report.valid else EXIT_INVALID_RESULT


def main(argv: list[str] | None = None) -> int:
    """``python -m mce_router.loadtest``, the same as ``mce-router loadtest``."""
    parser = argparse.ArgumentParser(prog="mce-router loadtest", **_parser_texts())
    add_arguments(parser)
    return run(parser.parse_args(argv))
