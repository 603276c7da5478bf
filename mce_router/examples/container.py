"""An example SageMaker-style model container: a small aiohttp server with four roles.

Run it as ``python -m mce_router.examples.container --role ROLE`` (or set ``EXAMPLE_ROLE``).
Like every SageMaker container it answers ``GET /ping`` and ``POST /invocations`` on port
``$SAGEMAKER_BIND_TO_PORT`` (8080 when absent), host ``$SAGEMAKER_BIND_HOST`` (``127.0.0.1``).

Roles; three of them make the quickstart's Serial pipeline preprocess → model → postprocess,
and each also works alone behind a Direct endpoint:

``preprocess``
    ``text/csv`` rows of comma-separated numbers → ``application/json``
    ``{"instances": [[1.0, 2.0], ...]}``. ``application/json`` input passes through unchanged.
``model``
    ``application/json`` ``{"instances": [...]}`` → ``{"predictions": [score, ...]}`` with
    ``score = dot(weights, row) + bias``. ``MODEL_WEIGHTS`` (comma-separated floats; default
    0.5, 0.25, 0.125, ... halving per column) is padded with zeros or truncated to each row's
    length; ``MODEL_BIAS`` defaults to 0.
``postprocess``
    ``application/json`` ``{"predictions": [...]}`` → ``{"labels": [...]}`` when the request's
    ``Accept`` names ``application/json``, otherwise ``text/csv`` lines ``score,label``. The
    label is ``positive`` when ``score >= LABEL_THRESHOLD`` (default 0.5), else ``negative``.
``echo``
    Returns the body unchanged with the request's ``Content-Type`` (default
    ``application/octet-stream``).

Every role copies ``X-Amzn-SageMaker-Custom-Attributes`` from the request to the response.
Bad input answers 400 (unparseable) or 415 (wrong content type) with a plain-text reason.
``EXAMPLE_STARTUP_DELAY_SECONDS`` sleeps before listening, to show the startup health window.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import operator
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, NoReturn

import orjson
from aiohttp import web

__all__ = [
    "ROLES",
    "InputError",
    "Settings",
    "create_app",
    "main",
    "transform",
]

ROLES = ("preprocess", "model", "postprocess", "echo")

CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
DEFAULT_PORT = 8080
DEFAULT_HOST = "127.0.0.1"
#: aiohttp rejects bodies over 1 MiB by default; SageMaker allows 6 MiB per invocation, so
#: leave headroom above that and let the router enforce the real limit.
MAX_BODY_BYTES = 8 * 1024 * 1024
#: How long in-flight requests may finish after SIGTERM (SageMaker sends SIGKILL after 30 s).
SHUTDOWN_TIMEOUT_SECONDS = 10.0

JSON = "application/json"
CSV = "text/csv"
TEXT_PLAIN = "text/plain; charset=utf-8"
OCTET_STREAM = "application/octet-stream"


class InputError(Exception):
    """The request cannot be processed; ``status`` is 400 or 415, ``reason`` is shown as-is."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Settings:
    """Per-process configuration, read from the environment once at startup."""

    role: str
    #: ``None`` means the default weights 0.5, 0.25, 0.125, ... (as many as a row needs).
    weights: tuple[float, ...] | None = None
    bias: float = 0.0
    threshold: float = 0.5

    @classmethod
    def from_env(cls, role: str, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings for ``role`` from ``env`` (default ``os.environ``).

        Raises ValueError naming the offending variable.
        """
        env = os.environ if env is None else env
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        weights: tuple[float, ...] | None = None
        raw_weights = env.get("MODEL_WEIGHTS", "").strip()
        if raw_weights:
            weights = tuple(_finite(cell, "MODEL_WEIGHTS") for cell in raw_weights.split(","))
        return cls(
            role=role,
            weights=weights,
            bias=_finite(env.get("MODEL_BIAS", "0"), "MODEL_BIAS"),
            threshold=_finite(env.get("LABEL_THRESHOLD", "0.5"), "LABEL_THRESHOLD"),
        )

    def weights_for(self, length: int) -> Sequence[float]:
        """Weights for a row of ``length`` values (dot products stop at the shorter one)."""
        if self.weights is not None:
            return self.weights
        if length <= len(_DEFAULT_WEIGHTS):
            return _DEFAULT_WEIGHTS
        return [0.5 ** (i + 1) for i in range(length)]


_DEFAULT_WEIGHTS = tuple(0.5 ** (i + 1) for i in range(64))

#: A transform takes (settings, body, raw Content-Type or None, Accept or None) and returns
#: (response body, response Content-Type), or raises InputError.
Transform = Callable[[Settings, bytes, str | None, str | None], tuple[bytes, str]]


def _finite(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}: {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name}: {text.strip()!r} is not a finite number")
    return value


def _is_number(value: object) -> bool:
    # bool is an int subclass; JSON true/false are not numbers here.
    return type(value) is float or type(value) is int


def _load_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError(400, f"request body is not valid JSON: {exc}") from None


def _mime(content_type: str | None) -> str:
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def _wants_json(accept: str | None) -> bool:
    if not accept:
        return False
    return any(_mime(item) == JSON for item in accept.split(","))


def _require(content_type: str | None, expected: str, role: str) -> None:
    if _mime(content_type) != expected:
        got = repr(content_type) if content_type else "no Content-Type"
        raise InputError(415, f"{role} accepts {expected}, got {got}")


def parse_csv(body: bytes) -> list[list[float]]:
    """Parse CSV rows of numbers; blank lines (such as a trailing newline) are skipped."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(400, "CSV input is not valid UTF-8") from None
    rows: list[list[float]] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        row: list[float] = []
        for col_no, cell in enumerate(line.split(","), start=1):
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise InputError(
                    400, f"line {line_no}, column {col_no}: {cell.strip()!r} is not a number"
                )
            row.append(value)
        rows.append(row)
    if not rows:
        raise InputError(400, "CSV input has no rows")
    return rows


def preprocess(
    settings: Settings, body: bytes, content_type: str | None, accept: str | None
) -> tuple[bytes, str]:
    """``text/csv`` → ``{"instances": [...]}``; ``application/json`` passes through."""
    mime = _mime(content_type)
    if mime == JSON:
        return body, content_type or JSON
    if mime != CSV:
        got = repr(content_type) if content_type else "no Content-Type"
        raise InputError(415, f"preprocess accepts {CSV} or {JSON}, got {got}")
    return orjson.dumps({"instances": parse_csv(body)}), JSON


def model(
    settings: Settings, body: bytes, content_type: str | None, accept: str | None
) -> tuple[bytes, str]:
    """``{"instances": [[...], ...]}`` → ``{"predictions": [dot(weights, row) + bias, ...]}``."""
    _require(content_type, JSON, "model")
    doc = _load_json(body)
    instances = doc.get("instances") if isinstance(doc, dict) else None
    if not isinstance(instances, list):
        raise InputError(400, 'expected a JSON object {"instances": [[number, ...], ...]}')
    predictions: list[float] = []
    bias = settings.bias
    for index, row in enumerate(instances):
        if not isinstance(row, list) or not all(_is_number(value) for value in row):
            raise InputError(400, f"instances[{index}] is not a list of numbers")
        # map() stops at the shorter sequence: missing weights count as 0, extra ones are unused.
        score = math.fsum(map(operator.mul, settings.weights_for(len(row)), row)) + bias
        if not math.isfinite(score):
            raise InputError(400, f"instances[{index}] gives a non-finite score")
        predictions.append(score)
    return orjson.dumps({"predictions": predictions}), JSON


def postprocess(
    settings: Settings, body: bytes, content_type: str | None, accept: str | None
) -> tuple[bytes, str]:
    """``{"predictions": [...]}`` → labels as JSON (if Accept asks for it) or CSV."""
    _require(content_type, JSON, "postprocess")
    doc = _load_json(body)
    predictions = doc.get("predictions") if isinstance(doc, dict) else None
    if not isinstance(predictions, list) or not all(_is_number(p) for p in predictions):
        raise InputError(400, 'expected a JSON object {"predictions": [number, ...]}')
    threshold = settings.threshold
    labels = ["positive" if score >= threshold else "negative" for score in predictions]
    if _wants_json(accept):
        return orjson.dumps({"labels": labels}), JSON
    lines = "".join(
        f"{float(score)!r},{label}\n" for score, label in zip(predictions, labels, strict=True)
    )
    return lines.encode(), CSV


def echo(
    settings: Settings, body: bytes, content_type: str | None, accept: str | None
) -> tuple[bytes, str]:
    """The body back, with the request's Content-Type byte for byte."""
    return body, content_type or OCTET_STREAM


TRANSFORMS: dict[str, Transform] = {
    "preprocess": preprocess,
    "model": model,
    "postprocess": postprocess,
    "echo": echo,
}


def transform(
    settings: Settings, body: bytes, content_type: str | None = None, accept: str | None = None
) -> tuple[bytes, str]:
    """Run ``settings.role`` on one request body without HTTP; raises InputError."""
    return TRANSFORMS[settings.role](settings, body, content_type, accept)


def create_app(role: str, env: Mapping[str, str] | None = None) -> web.Application:
    """The aiohttp application for ``role``, configured from ``env`` (default os.environ).

    Safe to run inside someone else's event loop (``web.AppRunner``, aiohttp's test client).
    """
    settings = Settings.from_env(role, env)
    run = TRANSFORMS[role]

    async def ping(request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def invocations(request: web.Request) -> web.Response:
        headers = request.headers
        attributes = headers.get(CUSTOM_ATTRIBUTES)
        try:
            body, content_type = run(
                settings, await request.read(), headers.get("Content-Type"), headers.get("Accept")
            )
            status = 200
        except InputError as exc:
            body, content_type, status = (exc.reason + "\n").encode(), TEXT_PLAIN, exc.status
        out = {"Content-Type": content_type}
        if attributes is not None:
            out[CUSTOM_ATTRIBUTES] = attributes
        return web.Response(status=status, body=body, headers=out)

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_get("/ping", ping)
    app.router.add_post("/invocations", invocations)
    return app


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> NoReturn:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m mce_router.examples.container",
        description="Example SageMaker-style model container (GET /ping, POST /invocations).",
    )
    parser.add_argument(
        "--role",
        default=os.environ.get("EXAMPLE_ROLE") or None,
        help=f"one of {', '.join(ROLES)} (default: $EXAMPLE_ROLE)",
    )
    args = parser.parse_args(argv)
    if args.role is None:
        parser.error("--role is required (or set EXAMPLE_ROLE)")
    role: str = args.role
    try:
        app = create_app(role)
        port = int(os.environ.get("SAGEMAKER_BIND_TO_PORT") or DEFAULT_PORT)
        if not 0 < port < 65536:
            raise ValueError(f"SAGEMAKER_BIND_TO_PORT: {port} is out of range")
        delay = _finite(os.environ.get("EXAMPLE_STARTUP_DELAY_SECONDS") or "0", "startup delay")
    except ValueError as exc:
        parser.error(str(exc))
    host = os.environ.get("SAGEMAKER_BIND_HOST") or DEFAULT_HOST
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if delay > 0:
        # run_app installs its own SIGTERM handling only once it runs; exit cleanly before.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        time.sleep(delay)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def announce(*_args: object, **_kwargs: object) -> None:
        # run_app calls this once every site is listening.
        print(
            f"mce_router example container: role={role} listening on http://{host}:{port} "
            f"(pid {os.getpid()})",
            file=sys.stderr,
            flush=True,
        )

    try:
        web.run_app(
            app,
            host=host,
            port=port,
            access_log=None,
            print=announce,
            backlog=1024,
            shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
            loop=_new_event_loop(),
        )
    except OSError as exc:
        print(
            f"mce_router example container: cannot listen on {host}:{port}: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
