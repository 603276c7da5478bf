"""Thin command-line shell: parse arguments, install uvloop and signal handlers, run a Router."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from . import dataplane
from .config import Listener, RouterConfig
from .dataplane.allocator import tune_allocator
from .errors import ConfigError, RouterError
from .router import Router
from .security import TARGET_CONTAINER_KEY, AuthzRequest, PolicySet
from .security.config import load_policy_file

log = logging.getLogger("mce_router")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mce-router",
        description="SageMaker-compatible multi-container endpoints (Direct and Serial).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the router as a sidecar")
    serve.add_argument("--config", required=True, type=Path, help="router config (YAML)")
    serve.add_argument("--host", help="listen address (default: config, else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="runtime API port (default: config, else 8080)")
    serve.add_argument(
        "--admin-port", type=int, help="admin/control-plane port (default: config, else 8081)"
    )
    serve.add_argument("--state-dir", type=Path, help="logs and state (default: config)")
    serve.add_argument(
        "--state-file",
        type=Path,
        help="SQLite file of models, endpoint configs and endpoints "
        "(default: config state_file, else STATE_DIR/state.db)",
    )
    serve.add_argument(
        "--drain-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM, how long in-flight requests may take before containers stop",
    )
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    _add_policy_parser(commands)
    return parser


def _add_policy_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = commands.add_parser("policy", help="IAM policy tools")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    simulate = policy_commands.add_parser(
        "simulate",
        help="decide a request offline, as the router's authorization does",
        description=(
            "Evaluate IAM identity policies (those of one principal) against one request and "
            "print the decision (allow, explicit-deny, implicit-deny) and the statement that "
            "decided. Exit status: 0 allow, 1 deny, 2 invalid input."
        ),
    )
    simulate.add_argument(
        "--policy",
        action="append",
        required=True,
        type=Path,
        metavar="FILE",
        help="IAM policy document (JSON, or YAML if .yaml/.yml); repeat for several policies",
    )
    simulate.add_argument("--action", required=True, help="e.g. sagemaker:InvokeEndpoint")
    simulate.add_argument(
        "--resource",
        required=True,
        help="e.g. arn:aws:sagemaker:us-east-1:123456789012:endpoint/my-endpoint",
    )
    simulate.add_argument(
        "--target-container",
        metavar="HOSTNAME",
        help="TargetContainerHostname of the request (omitted: the header is absent)",
    )
    simulate.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another condition key of the request; repeatable",
    )
    simulate.add_argument("--json", action="store_true", help="print one JSON object")


def _policy_simulate(args: argparse.Namespace) -> int:
    try:
        policies = [load_policy_file(path) for path in args.policy]
    except ConfigError as exc:
        print(f"mce-router: {exc.message}", file=sys.stderr)
        return 2
    context: dict[str, str] = {}
    for item in args.context:
        key, sep, value = item.partition("=")
        if not sep or ":" not in key:
            print(f"mce-router: --context {item!r}: expected service:Key=value", file=sys.stderr)
            return 2
        context[key] = value
    if args.target_container is not None:
        context[TARGET_CONTAINER_KEY] = args.target_container
    resource_name = args.resource.split(":", 5)[-1]
    if args.resource.startswith("arn:aws:sagemaker:") and resource_name != resource_name.lower():
        print(
            "mce-router: note: SageMaker ARNs carry the resource name in lower case (the router "
            "authorizes My-Endpoint as .../endpoint/my-endpoint)",
            file=sys.stderr,
        )
    request = AuthzRequest(args.action, args.resource, context)
    decision = PolicySet(policies).evaluate(request)
    statement = decision.statement
    if args.json:
        print(
            json.dumps(
                {
                    "decision": decision.kind,
                    "allowed": decision.allowed,
                    "statement": None
                    if statement is None
                    else {
                        "policy": statement.policy_name,
                        "policy_index": statement.policy_index,
                        "statement_index": statement.statement_index,
                        "sid": statement.sid,
                    },
                    "action": request.action,
                    "resource": request.resource,
                    "context": context,
                }
            )
        )
    else:
        shown_context = ", ".join(f"{k}={v!r}" for k, v in context.items()) or "none"
        print(f"decision: {decision.kind}")
        print(
            f"statement: {statement}"
            if statement is not None
            else "statement: none (no statement allows the request)"
        )
        print(f"request: {request.action} on {request.resource}")
        print(f"context: {shown_context}")
    return 0 if decision.allowed else 1


def load_serve_config(args: argparse.Namespace) -> RouterConfig:
    config = RouterConfig.from_file(args.config)
    listener = config.listener
    config = config.replace(
        listener=Listener(
            host=args.host if args.host is not None else listener.host,
            port=args.port if args.port is not None else listener.port,
            admin_port=args.admin_port if args.admin_port is not None else listener.admin_port,
        )
    )
    if args.state_dir is not None:
        config = config.replace(state_dir=args.state_dir.resolve())
    if args.state_file is not None:
        config = config.replace(state_file=args.state_file.resolve())
    return config


async def _serve(config: RouterConfig, drain_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    router = Router(config)
    await router.start()
    try:
        log.info(
            "runtime API on %s, admin and control plane on %s, state in %s; hot path: %s",
            router.runtime_url,
            router.admin_url,
            config.state_path,
            dataplane.implementation(),
        )
        for name, state in router.endpoints.items():
            log.info("endpoint %s: %s", name, state.status)
        print(
            f"mce-router ready: runtime {router.runtime_url} admin {router.admin_url}", flush=True
        )
        await stop.wait()
        log.info("stopping: draining in-flight requests (up to %.0f s)", drain_seconds)
    finally:
        await router.stop(drain_seconds=drain_seconds)


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "policy":
        return _policy_simulate(args)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_serve_config(args)
    except ConfigError as exc:
        print(f"mce-router: {exc.message}", file=sys.stderr)
        return 2
    # Process-wide, so the shell's to set, not the library's (dataplane/allocator.py).
    log.info("memory allocator: %s", tune_allocator())
    try:
        import uvloop

        uvloop.run(_serve(config, args.drain_seconds))
    except RouterError as exc:
        print(f"mce-router: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
