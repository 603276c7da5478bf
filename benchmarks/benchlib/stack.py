"""The processes under test and their configuration: origin nginx, example echo container,
nginx as a keep-alive reverse proxy, and mce-router instances (YAML config generated here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .procs import (
    LOAD_CPU,
    PROXY_CPU,
    BenchError,
    Managed,
    Processes,
    command_output,
    log,
    wait_http_ok,
    which,
)

HERE = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def _exact_json(size: int, template: str) -> bytes:
    """A JSON document of exactly ``size`` bytes (``template`` has one ``{pad}``)."""
    bare = template.format(pad="")
    pad = size - len(bare)
    if pad < 0:
        raise ValueError(f"template longer than {size} bytes")
    data = template.format(pad="x" * pad).encode()
    json.loads(data)
    assert len(data) == size
    return data


#: The 97-byte JSON request body of every small-body run.
REQUEST_BODY = _exact_json(
    97,
    '{{"instances":[[0.5,1.25,2.0,3.5],[4.0,5.5,6.25,7.0]],"parameters":{{"k":3}},"id":"{pad}"}}',
)
#: The fixed JSON the nginx origin answers every POST with (97 bytes too, no "$" or "'").
ORIGIN_BODY = _exact_json(
    97, '{{"predictions":[0.812,0.041,0.147],"model":"bench-origin","version":"1.0","pad":"{pad}"}}'
)

#: What the "realistic Python container" is sent: a batch of 64 rows of 16 features for the
#: example container's model role (JSON parsing, dot products, JSON answer: ~170 µs of CPU per
#: request on the benchmark VM), fixed so that every run scores the same batch.
MODEL_BATCH_BODY = json.dumps(
    {"instances": [[round(((r * 16 + c) * 7919 % 2001) / 1000 - 1, 3) for c in range(16)]
                   for r in range(64)]},
    separators=(",", ":"),
).encode()  # fmt: skip

DIRECT15_HOSTS = tuple(f"c{i:02d}" for i in range(1, 16))


def render(template_name: str, values: dict[str, Any]) -> str:
    text = (HERE / "nginx" / template_name).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", str(value))
    leftover = re.findall(r"@@[A-Z_]+@@", text)
    if leftover:
        raise BenchError(f"{template_name}: unfilled placeholders {sorted(set(leftover))}")
    return text


def start_nginx(
    procs: Processes,
    name: str,
    template: str,
    values: dict[str, Any],
    *,
    cpu: int,
    ping_port: int,
    ping_path: str,
    nofile: int,
) -> Managed:
    nginx = which("nginx")
    if nginx is None:
        raise BenchError("nginx not found")
    workdir = procs.workdir
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / f"{name}-tmp" / sub).mkdir(parents=True, exist_ok=True)
    conf = workdir / f"{name}.conf"
    conf.write_text(
        render(
            template,
            {
                "WORKDIR": workdir,
                "NAME": name,
                # Running as root, workers would switch to "nobody"; keep root so they can use
                # the temp dirs under /tmp/mce-bench-*.
                "USER": "user root;" if os.geteuid() == 0 else "",
                "NOFILE": nofile,
                "CONNECTIONS": max(1024, nofile - 64),
                **values,
            },
        ),
        encoding="utf-8",
    )
    check = command_output([nginx, "-t", "-q", "-p", str(workdir), "-c", str(conf)])
    if "emerg" in check or "failed" in check:
        raise BenchError(f"nginx config {conf} is invalid:\n{check}")
    managed = procs.spawn(name, [nginx, "-p", str(workdir), "-c", str(conf)], cpu=cpu)
    try:
        wait_http_ok(HOST, ping_port, ping_path, 15.0, managed)
    except BenchError as exc:
        raise BenchError(f"{exc}\n{_read(workdir / f'{name}.error.log')}") from exc
    return managed


def start_lean_proxy(procs: Processes, port: int, origin_port: int) -> Managed:
    """The featureless reference proxy (benchmarks/reference/lean_proxy.py) on the proxy CPU."""
    managed = procs.spawn(
        "lean-proxy",
        [sys.executable, str(HERE / "reference" / "lean_proxy.py"), str(port), str(origin_port)],
        cpu=PROXY_CPU,
    )
    wait_http_ok(HOST, port, "/ping", 15.0, managed)
    return managed


def start_example_container(procs: Processes, port: int, role: str) -> Managed:
    """The package's example container (aiohttp) in ``role``: ``echo`` sends the body back
    unchanged, ``model`` scores a JSON batch of rows (see mce_router/examples/container.py)."""
    env = {
        **os.environ,
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "SAGEMAKER_BIND_HOST": HOST,
        "PYTHONUNBUFFERED": "1",
    }
    managed = procs.spawn(
        f"{role}-container",
        [sys.executable, "-m", "mce_router.examples.container", "--role", role],
        cpu=LOAD_CPU,
        env=env,
        grace=12.0,
    )
    wait_http_ok(HOST, port, "/ping", 30.0, managed)
    return managed


# ----------------------------------------------------------------------------------------------
# Router
# ----------------------------------------------------------------------------------------------


def _image(i: int) -> str:
    return f"bench.local/origin-{i:02d}:latest"


ECHO_IMAGE = "bench.local/echo:latest"
MODEL_IMAGE = "bench.local/model:latest"


def _model(name: str, mode: str, containers: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "ModelName": name,
        "ExecutionRoleArn": "arn:aws:iam::000000000000:role/benchmark",
        "InferenceExecutionConfig": {"Mode": mode},
        "Containers": [{"ContainerHostname": h, "Image": image} for h, image in containers],
    }


def router_config(
    origin_ports: list[int], echo_port: int, *, endpoints: tuple[str, ...], model_port: int = 0
) -> dict[str, Any]:
    """A router config with external (``url:``) images only, so the router process tree is just
    the router; ``endpoints`` picks from direct, serial3, direct15, echo, model."""
    images: dict[str, Any] = {
        _image(i): {"url": f"http://{HOST}:{port}"} for i, port in enumerate(origin_ports, 1)
    }
    images[ECHO_IMAGE] = {"url": f"http://{HOST}:{echo_port}"}
    if model_port:
        images[MODEL_IMAGE] = {"url": f"http://{HOST}:{model_port}"}
    models = {
        "direct": _model("direct", "Direct", [("origin", _image(1))]),
        "serial3": _model("serial3", "Serial", [(f"stage{i}", _image(i)) for i in (1, 2, 3)]),
        "direct15": _model(
            "direct15", "Direct", [(h, _image(i)) for i, h in enumerate(DIRECT15_HOSTS, 1)]
        ),
        "echo": _model("echo", "Direct", [("echo", ECHO_IMAGE)]),
        "model": _model("model", "Direct", [("model", MODEL_IMAGE)]),
    }
    return {
        "listen": {"host": HOST},
        "images": images,
        "models": [models[name] for name in endpoints],
        "endpoint_configs": [
            {
                "EndpointConfigName": name,
                "ProductionVariants": [
                    {"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1}
                ],
            }
            for name in endpoints
        ],
        "endpoints": [{"EndpointName": name, "EndpointConfigName": name} for name in endpoints],
    }


def router_command() -> list[str]:
    script = Path(sys.executable).parent / "mce-router"
    if script.is_file():
        return [str(script)]
    found = shutil.which("mce-router")
    if found:
        return [found]
    return [sys.executable, "-m", "mce_router.cli"]


@dataclass
class RouterStart:
    managed: Managed | None
    port: int
    #: Why the router could not run this config: None when it runs.
    unavailable: str | None = None
    #: True when the router rejected a top-level key (the feature is not in this build).
    missing_feature: bool = False
    config_path: Path | None = None
    stderr: str = field(default="", repr=False)


def start_router(
    procs: Processes,
    name: str,
    config: dict[str, Any],
    *,
    port: int,
    admin_port: int,
    timeout: float = 90.0,
    feature_key: str | None = None,
    env: dict[str, str] | None = None,
    cpu: int | None = PROXY_CPU,
    extra_args: tuple[str, ...] = (),
) -> RouterStart:
    """Start ``mce-router serve`` pinned to ``cpu`` (default: the proxy CPU; None: unpinned)
    with ``extra_args``; wait for its ready line.

    With ``feature_key``, a config error naming that key (the router does not know it) is
    returned as ``unavailable`` instead of raised.
    """
    workdir = procs.workdir
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    state_dir = workdir / f"{name}-state"
    stdout_path = workdir / f"{name}.stdout"
    cmd = [
        *router_command(),
        "serve",
        "--config",
        str(config_path),
        "--port",
        str(port),
        "--admin-port",
        str(admin_port),
        "--state-dir",
        str(state_dir),
        "--drain-seconds",
        "1",
        *extra_args,
    ]
    managed = procs.spawn(
        name,
        cmd,
        cpu=cpu,
        stdout_path=stdout_path,
        grace=10.0,
        env=None if env is None else {**os.environ, **env},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "mce-router ready" in _read(stdout_path):
            wait_http_ok(HOST, port, "/ping", 10.0, managed)
            return RouterStart(managed, port, config_path=config_path)
        if managed.popen.poll() is not None:
            code = managed.popen.returncode
            stderr = _read(managed.log_path)
            procs.stop(managed)
            if feature_key is not None and _names_unknown_key(stderr, feature_key):
                return RouterStart(
                    None,
                    port,
                    unavailable=f"not available in this build ({_last_line(stderr)})",
                    missing_feature=True,
                    config_path=config_path,
                    stderr=stderr,
                )
            if feature_key is not None and code == 2:
                return RouterStart(
                    None,
                    port,
                    unavailable=(
                        f"the router rejected the '{feature_key}' variant config "
                        f"({_last_line(stderr)}); adjust benchmarks/benchlib/variants.py"
                    ),
                    config_path=config_path,
                    stderr=stderr,
                )
            raise BenchError(f"router {name} exited with {code} before ready:\n{stderr[-3000:]}")
        time.sleep(0.05)
    stderr = _read(managed.log_path)
    procs.stop(managed)
    raise BenchError(f"router {name} not ready after {timeout:g} s:\n{stderr[-3000:]}")


def _names_unknown_key(stderr: str, key: str) -> bool:
    """The config loader's message for an unknown top-level key: ``config: unknown keys [...]``."""
    for line in stderr.splitlines():
        if "unknown key" in line and (f"'{key}'" in line or f'"{key}"' in line):
            return True
    return False


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def router_log_problems(managed: Managed) -> list[str]:
    """WARNING/ERROR/Traceback lines the router logged (its log is its stderr)."""
    text = _read(managed.log_path)
    hits = [
        line
        for line in text.splitlines()
        if " WARNING " in line or " ERROR " in line or "Traceback" in line or " CRITICAL " in line
    ]
    return hits


def log_start(what: str, managed: Managed) -> None:
    log(f"{what} running (pid {managed.pid})")
