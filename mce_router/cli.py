"""Thin command-line shell: parse arguments, install uvloop and signal handlers, run a Router."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import Listener, RouterConfig
from .errors import ConfigError, RouterError
from .router import Router

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
        "--drain-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM, how long in-flight requests may take before containers stop",
    )
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    return parser


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
            "runtime API on %s, admin on %s, state in %s",
            router.runtime_url,
            router.admin_url,
            config.state_dir,
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
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_serve_config(args)
    except ConfigError as exc:
        print(f"mce-router: {exc.message}", file=sys.stderr)
        return 2
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
