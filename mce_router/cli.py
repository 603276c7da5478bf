"""Thin command-line shell: parse arguments, install uvloop and signal handlers, run a Router."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__, dataplane
from .aio import finished_before
from .config import RouterConfig, default_engine_url, parse_workers
from .dataplane.allocator import tune_allocator
from .errors import ConfigError, RouterError
from .loadtest import cli as loadtest_cli
from .router import Router
from .security import TARGET_CONTAINER_KEY, AuthzRequest, PolicySet
from .security.config import load_policy_file

log = logging.getLogger("mce_router")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mce-router",
        description="SageMaker-compatible multi-container endpoints (Direct and Serial).",
    )
    parser.add_argument("--version", action="version", version=f"mce-router {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the router as a sidecar")
    serve.add_argument("--config", required=True, type=Path, help="router config (YAML)")
    serve.add_argument("--host", help="listen address (default: config, else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="runtime API port (default: config, else 8080)")
    serve.add_argument(
        "--admin-port", type=int, help="admin/control-plane port (default: config, else 8081)"
    )
    serve.add_argument(
        "--tls-cert",
        type=Path,
        metavar="PEM",
        help="certificate chain: TLS (1.2+) on both listeners (config: listen.tls_cert_file)",
    )
    serve.add_argument(
        "--tls-key", type=Path, metavar="PEM", help="its private key (listen.tls_key_file)"
    )
    serve.add_argument(
        "--workers",
        metavar="N|auto",
        help="data-plane processes on the runtime port (auto: one per usable CPU; default: "
        "config listen.workers, else 1); this process keeps the control plane",
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
    serve.add_argument(
        "--log-level",
        default="INFO",
        type=_log_level,
        help="DEBUG, INFO, WARNING or ERROR (any case); DEBUG also prints tracebacks of failures",
    )
    _add_policy_parser(commands)
    _add_check_parser(commands)
    loadtest_cli.register(commands)
    return parser


def _check_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            check: argparse.ArgumentParser = action.choices["check"]
            return check
    raise LookupError("check")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a log level; choose one of {', '.join(LOG_LEVELS)}"
        )
    return level


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


def _add_check_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = commands.add_parser(
        "check",
        help="check a container against SageMaker's container contract",
        description=(
            "Start a container as a multi-container endpoint would (SAGEMAKER_BIND_TO_PORT, "
            "SAGEMAKER_SAFE_PORT_RANGE; an image with its entrypoint and 'serve') and report "
            "each rule with its evidence: listens on the bind port and not on 8080, accepts "
            "connections within 250 ms, answers GET /ping 200 within 2 s, answers a sample POST "
            "/invocations, listens on no port outside its bind port and safe range, also serves "
            "on a bind port above 32767, exits within the grace period after SIGTERM, carries "
            "the accept-bind-to-port label (images), fits the instance type's CPU and memory. "
            "Exit status: 0 when every rule passes, 1 when one fails, 2 for invalid input."
        ),
        epilog=(
            "--command takes the rest of the line up to the next option of this command; "
            "end it with -- when the container's own arguments use the same option names."
        ),
    )
    what = check.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", help="an image on the container engine (run with 'serve')")
    what.add_argument(
        "--command", dest="check_command", metavar="ARGV", help="a command line (process runtime)"
    )
    check.add_argument("--payload", type=Path, metavar="FILE", help="body of a sample request")
    check.add_argument(
        "--content-type",
        default="application/json",
        help="Content-Type of the sample request (default application/json)",
    )
    check.add_argument("--accept", help="Accept of the sample request")
    check.add_argument(
        "--instance-type",
        default="ml.m5.large",
        help="the instance type whose CPU and memory the container must fit (ml.m5.large)",
    )
    check.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an Environment variable of the model; repeatable",
    )
    check.add_argument(
        "--startup-timeout",
        type=float,
        default=480.0,
        help="seconds to pass /ping, as ContainerStartupHealthCheckTimeoutInSeconds (480)",
    )
    check.add_argument(
        "--grace", type=float, default=30.0, help="seconds allowed to exit after SIGTERM (30)"
    )
    check.add_argument(
        "--engine-url",
        default=None,
        help="Docker Engine API for --image (default: DOCKER_HOST, else "
        "unix:///var/run/docker.sock)",
    )
    check.add_argument("--json", action="store_true", help="print one JSON object")


def _split_command(argv: list[str], own_options: set[str]) -> tuple[list[str], list[str]]:
    """``check --command ARGV...``: the container's argv runs up to ``--`` or the next option
    of ``check`` itself, so that ``--payload`` after it is the checker's."""
    if "--command" not in argv:
        return argv, []
    start = argv.index("--command")
    end = start + 1
    while end < len(argv) and argv[end] != "--" and argv[end].split("=")[0] not in own_options:
        end += 1
    command = argv[start + 1 : end]
    rest = argv[end + 1 :] if end < len(argv) and argv[end] == "--" else argv[end:]
    # argparse still sees --command (with a placeholder) so the either/or rule holds.
    return [*argv[:start], "--command", "<argv>", *rest], command


def _check(args: argparse.Namespace, command: list[str]) -> int:
    import tempfile

    from .check import CheckOptions, CommandSubject, ImageSubject, Subject, check_container
    from .runtime.instances import lookup

    try:
        instance = lookup(args.instance_type, "--instance-type")
        payload = args.payload.read_bytes() if args.payload is not None else None
    except RouterError as exc:
        print(f"mce-router: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"mce-router: --payload {args.payload}: {exc.strerror}", file=sys.stderr)
        return 2
    environment: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"mce-router: --env {item!r}: expected KEY=VALUE", file=sys.stderr)
            return 2
        environment[key] = value
    if args.image is None and not command:
        print("mce-router: --command needs the container's command line", file=sys.stderr)
        return 2
    options = CheckOptions(
        instance=instance,
        payload=payload,
        content_type=args.content_type,
        accept=args.accept,
        startup_timeout=args.startup_timeout,
        grace_seconds=args.grace,
    )
    with tempfile.TemporaryDirectory(prefix="mce-check-") as logs:
        subject: Subject
        if args.image is not None:
            url = args.engine_url or default_engine_url()
            subject = ImageSubject(args.image, engine_url=url, environment=environment)
        else:
            subject = CommandSubject(command, environment=environment, log_dir=Path(logs))
        try:
            import uvloop

            report = uvloop.run(check_container(subject, options))
        except RouterError as exc:
            print(f"mce-router: {exc.message}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"mce-router: {exc}", file=sys.stderr)
            return 2
    print(json.dumps(report.as_json(), indent=2) if args.json else report.as_text())
    return 0 if report.passed else 1


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
        listener=dataclasses.replace(
            listener,
            host=args.host if args.host is not None else listener.host,
            port=args.port if args.port is not None else listener.port,
            admin_port=args.admin_port if args.admin_port is not None else listener.admin_port,
            tls_cert_file=str(args.tls_cert.resolve()) if args.tls_cert else listener.tls_cert_file,
            tls_key_file=str(args.tls_key.resolve()) if args.tls_key else listener.tls_key_file,
            workers=(
                parse_workers(args.workers, "--workers")
                if args.workers is not None
                else listener.workers
            ),
        )
    )
    if args.state_dir is not None:
        config = config.replace(state_dir=args.state_dir.resolve())
    if args.state_file is not None:
        config = config.replace(state_file=args.state_file.resolve())
    return config


class _StopSignals:
    """SIGTERM/SIGINT as the shell sees them: the first asks for a graceful stop (at any moment,
    start-up included), the second for an immediate one (the drain is cut short; containers are
    still stopped and the state file still closed cleanly)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.graceful = asyncio.Event()
        self.immediate = asyncio.Event()
        self._loop = loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._received, sig)

    def _received(self, sig: signal.Signals) -> None:
        if self.graceful.is_set():
            log.warning("%s again: stopping now, without waiting for the drain", sig.name)
            self.immediate.set()
        else:
            log.info("%s received: stopping", sig.name)
            self.graceful.set()

    def remove(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.remove_signal_handler(sig)


async def _serve(config: RouterConfig, drain_seconds: float) -> None:
    signals = _StopSignals(asyncio.get_running_loop())
    router = Router(config)
    try:
        starting = asyncio.ensure_future(router.start())
        if not await finished_before(starting, signals.graceful):
            # Router.start stops whatever it started when it is cancelled.
            log.info("stopping during start-up: stopping the containers started so far")
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return
        starting.result()
        implementation = dataplane.implementation()
        workers = router.workers
        log.info(
            "runtime API on %s%s, admin and control plane on %s, state in %s; hot path: %s",
            router.runtime_url,
            f" (served by {workers.count} worker processes)" if workers is not None else "",
            router.admin_url,
            config.state_path,
            implementation,
        )
        if implementation.startswith("Python (compiling failed"):
            log.warning(
                "the hot path is NOT compiled, so every request costs about twice the CPU: "
                "reinstall where a C compiler works (MCE_ROUTER_BUILD=native makes a failed "
                "compile an install error)"
            )
        for name, state in router.endpoints.items():
            log.info("endpoint %s: %s", name, state.status)
        print(
            f"mce-router ready: runtime {router.runtime_url} admin {router.admin_url}", flush=True
        )
        await signals.graceful.wait()
        log.info(
            "stopping: draining in-flight requests (up to %.0f s; signal again to stop now)",
            drain_seconds,
        )
        stopping = asyncio.ensure_future(router.stop(drain_seconds=drain_seconds))
        if not await finished_before(stopping, signals.immediate):
            router.abort_drain()
        await stopping
    finally:
        signals.remove()
        await router.stop(drain_seconds=0)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 after a requested stop, 2 for usage and configuration errors, 1 for
    failures at run time (one line on stderr; tracebacks only with --log-level DEBUG)."""
    parser = _build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if arguments[:1] == ["check"]:
        own = {
            option for action in _check_parser(parser)._actions for option in action.option_strings
        }
        arguments, command = _split_command(arguments, own - {"--command"})
    args = parser.parse_args(arguments)
    if args.command == "policy":
        return _policy_simulate(args)
    if args.command == "check":
        return _check(args, command)
    if args.command == "loadtest":
        return loadtest_cli.run(args)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_serve_config(args)
    except ConfigError as exc:
        return _failed(exc, 2)
    # Process-wide, so the shell's to set, not the library's (dataplane/allocator.py).
    log.info("memory allocator: %s", tune_allocator())
    try:
        import uvloop

        uvloop.run(_serve(config, args.drain_seconds))
    except ConfigError as exc:  # found once the state file is open (declared resources)
        return _failed(exc, 2)
    except RouterError as exc:
        return _failed(exc, 1)
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return 130
    except Exception as exc:
        return _failed(exc, 1)
    return 0


def _failed(exc: Exception, status: int) -> int:
    message = exc.message if isinstance(exc, RouterError) else f"{type(exc).__name__}: {exc}"
    log.debug("failure", exc_info=exc)
    print(f"mce-router: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
