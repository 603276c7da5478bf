"""Frozen, validated load-test configuration: the traffic mix, the load model, the stop rules.

Everything a run needs is resolved here once (payload files read, URLs split, weights
normalised), so the request path only indexes pre-built tuples. Any problem raises
:class:`LoadTestError` with one line naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

#: The name under which a Serial endpoint's (pipeline's) numbers are reported.
PIPELINE = "(pipeline)"
#: SageMaker's real-time invocation payload limit.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024

Pick = Literal["round-robin", "random"]
Mode = Literal["open", "closed"]


class LoadTestError(Exception):
    """A problem with the load test's input or target, as one line for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Target:
    """One entry of the traffic mix: a target container (Direct) or the pipeline (Serial)."""

    container: str | None
    weight: float
    payloads: tuple[bytes, ...]
    payload_names: tuple[str, ...]
    content_type: str = "application/octet-stream"
    accept: str | None = None
    custom_attributes: str | None = None

    @property
    def name(self) -> str:
        return self.container if self.container is not None else PIPELINE


@dataclass(frozen=True, slots=True)
class Mix:
    targets: tuple[Target, ...]
    pick: Pick = "round-robin"
    seed: int = 1

    def only(self, name: str) -> Mix:
        """The mix restricted to one target (find-the-limit for each container alone)."""
        return replace(self, targets=tuple(t for t in self.targets if t.name == name))


@dataclass(frozen=True, slots=True)
class Phase:
    """One stretch of the load: an arrival rate (open loop) or a number of users (closed)."""

    duration: float
    rate: float | None = None  # requests per second, open loop
    users: int | None = None  # concurrent users, closed loop
    spawn_rate: float | None = None  # closed loop: users started per second (Locust's meaning)
    name: str = ""

    @property
    def mode(self) -> Mode:
        return "open" if self.rate is not None else "closed"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Stop rules of find-the-limit (Inference Recommender's StoppingConditions)."""

    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    error_rate: float | None = 0.01
    max_invocations: int | None = None

    def describe(self) -> str:
        parts = [
            f"{k}<={v:g}"
            for k, v in (("p50_ms", self.p50_ms), ("p90_ms", self.p90_ms), ("p99_ms", self.p99_ms))
            if v is not None
        ]
        if self.error_rate is not None:
            parts.append(f"error_rate<={self.error_rate:g}")
        if self.max_invocations is not None:
            parts.append(f"invocations<={self.max_invocations}")
        return ", ".join(parts) or "none"


@dataclass(frozen=True, slots=True)
class FindLimit:
    """Step the arrival rate up from ``start`` by ``step`` until a threshold breaks."""

    start: float
    step: float
    max_rate: float
    step_duration: float
    thresholds: Thresholds
    #: Also search the limit of each container alone (mix restricted to it).
    per_container: bool = True

    def rates(self) -> list[float]:
        count = math.floor((self.max_rate - self.start) / self.step + 1e-9) + 1
        return [self.start + i * self.step for i in range(max(count, 1))]


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


@dataclass(frozen=True, slots=True)
class LoadConfig:
    url: str
    endpoint: str
    mix: Mix
    phases: tuple[Phase, ...] = ()
    find_limit: FindLimit | None = None
    processes: int = 1
    #: open loop: connections opened at most (requests beyond wait, timed from their schedule)
    max_connections: int = 512
    timeout: float = 60.0
    #: SigV4: "auto" signs when botocore finds credentials, "off" never, "on" requires them.
    sign: Literal["auto", "on", "off"] = "auto"
    region: str = "us-east-1"
    credentials: Credentials | None = None
    #: the router's admin URL (its /metrics); "auto" probes runtime port + 1, None never.
    admin_url: str | None = "auto"
    #: the generator is saturated (result invalid) when its scheduling lag p99 exceeds this
    max_lag_ms: float = 10.0
    #: ... or when one generator process uses more than this share of a core
    max_cpu_percent: float = 95.0
    #: CPU cores of one instance behind the endpoint (for the autoscaling analysis)
    instance_cores: float | None = None
    #: CPU utilisation an instance may reach before it counts as overloaded
    cpu_target: float = 0.8
    progress: bool = True

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "https"

    @property
    def invocation_path(self) -> str:
        base = urlsplit(self.url).path.rstrip("/")
        return f"{base}/endpoints/{self.endpoint}/invocations"

    def replace(self, **changes: Any) -> LoadConfig:
        return replace(self, **changes)


# --- loading ---------------------------------------------------------------------------------

_TARGET_KEYS = {
    "container",
    "weight",
    "payload",
    "payloads",
    "content_type",
    "accept",
    "custom_attributes",
}


def read_document(path: Path) -> dict[str, Any]:
    """A YAML or JSON file (JSON is YAML) holding one mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LoadTestError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoadTestError(f"{path}: not valid YAML/JSON: {first}") from None
    if not isinstance(data, dict):
        raise LoadTestError(f"{path}: expected a mapping with 'targets', got {_kind(data)}")
    return data


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def parse_mix(data: Mapping[str, Any], base_dir: Path, where: str = "mix") -> Mix:
    targets_raw = data.get("targets")
    if not isinstance(targets_raw, list) or not targets_raw:
        raise LoadTestError(f"{where}: 'targets' must be a non-empty list")
    pick = data.get("pick", "round-robin")
    if pick not in ("round-robin", "random"):
        raise LoadTestError(f"{where}: pick must be round-robin or random, got {pick!r}")
    seed = data.get("seed", 1)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise LoadTestError(f"{where}: seed must be an integer, got {seed!r}")
    targets = tuple(
        _parse_target(item, base_dir, f"{where}: targets[{i}]")
        for i, item in enumerate(targets_raw)
    )
    named = [t.container for t in targets]
    if any(n is None for n in named) and len(targets) > 1:
        raise LoadTestError(
            f"{where}: a target without 'container' (Serial pipeline) must be the only target"
        )
    seen: set[str] = set()
    for t in targets:
        if t.name in seen:
            raise LoadTestError(f"{where}: container {t.name!r} is listed twice")
        seen.add(t.name)
    return Mix(targets=targets, pick=pick, seed=seed)


def _parse_target(item: object, base_dir: Path, where: str) -> Target:
    if not isinstance(item, dict):
        raise LoadTestError(f"{where}: expected a mapping, got {_kind(item)}")
    unknown = set(item) - _TARGET_KEYS
    if unknown:
        raise LoadTestError(
            f"{where}: unknown field {sorted(unknown)[0]!r} "
            f"(known: {', '.join(sorted(_TARGET_KEYS))})"
        )
    container = item.get("container")
    if container is not None and (not isinstance(container, str) or not container):
        raise LoadTestError(f"{where}: container must be a non-empty string")
    weight = item.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
        raise LoadTestError(f"{where}: weight must be a number > 0, got {weight!r}")
    if "payload" in item and "payloads" in item:
        raise LoadTestError(f"{where}: give 'payload' or 'payloads', not both")
    files = item.get("payloads", [item["payload"]] if "payload" in item else None)
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise LoadTestError(
            f"{where}: 'payload' (a file) or 'payloads' (a list of files) is required"
        )
    bodies = []
    for name in files:
        path = (base_dir / name).expanduser()
        try:
            body = path.read_bytes()
        except OSError as exc:
            raise LoadTestError(f"{where}: payload {name}: {exc.strerror or exc}") from None
        if len(body) > MAX_PAYLOAD_BYTES:
            raise LoadTestError(f"{where}: payload {name} is over SageMaker's 6 MiB limit")
        bodies.append(body)
    strings = {}
    for key in ("content_type", "accept", "custom_attributes"):
        value = item.get(key)
        if value is not None and (not isinstance(value, str) or not value.isprintable()):
            raise LoadTestError(f"{where}: {key} must be a printable string")
        strings[key] = value
    return Target(
        container=container,
        weight=float(weight),
        payloads=tuple(bodies),
        payload_names=tuple(files),
        content_type=strings["content_type"] or "application/octet-stream",
        accept=strings["accept"],
        custom_attributes=strings["custom_attributes"],
    )


def _number(data: Mapping[str, Any], key: str, where: str, *, minimum: float = 0.0) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > minimum:
        raise LoadTestError(f"{where}: {key} must be a number > {minimum:g}, got {value!r}")
    return float(value)


def parse_phases(items: object, where: str = "phases") -> tuple[Phase, ...]:
    if not isinstance(items, list) or not items:
        raise LoadTestError(f"{where}: expected a non-empty list of phases")
    phases = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise LoadTestError(f"{at}: expected a mapping, got {_kind(item)}")
        unknown = set(item) - {"rate", "users", "spawn_rate", "duration", "name"}
        if unknown:
            raise LoadTestError(f"{at}: unknown field {sorted(unknown)[0]!r}")
        duration = _number(item, "duration", at)
        if duration is None:
            raise LoadTestError(f"{at}: duration (seconds) is required")
        rate = _number(item, "rate", at)
        users = item.get("users")
        if (rate is None) == (users is None):
            raise LoadTestError(f"{at}: give exactly one of rate (open loop) or users (closed)")
        if users is not None and (
            isinstance(users, bool) or not isinstance(users, int) or users < 1
        ):
            raise LoadTestError(f"{at}: users must be an integer >= 1, got {users!r}")
        phases.append(
            Phase(
                duration=duration,
                rate=rate,
                users=users,
                spawn_rate=_number(item, "spawn_rate", at),
                name=str(item.get("name") or f"phase {i + 1}"),
            )
        )
    return tuple(phases)


def parse_find_limit(data: Mapping[str, Any], where: str = "find_limit") -> FindLimit:
    unknown = set(data) - {
        "start", "step", "max_rate", "step_duration", "per_container",
        "p50_ms", "p90_ms", "p99_ms", "error_rate", "max_invocations",
    }  # fmt: skip
    if unknown:
        raise LoadTestError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    start = _number(data, "start", where) or 10.0
    step = _number(data, "step", where) or start
    max_rate = _number(data, "max_rate", where) or 100_000.0
    if max_rate < start:
        raise LoadTestError(f"{where}: max_rate {max_rate:g} is below start {start:g}")
    error_rate = data.get("error_rate", 0.01)
    if error_rate is not None and (
        isinstance(error_rate, bool) or not isinstance(error_rate, int | float)
        or not 0 <= error_rate <= 1
    ):  # fmt: skip
        raise LoadTestError(f"{where}: error_rate must be between 0 and 1, got {error_rate!r}")
    max_invocations = data.get("max_invocations")
    if max_invocations is not None and (
        isinstance(max_invocations, bool) or not isinstance(max_invocations, int)
        or max_invocations < 1
    ):  # fmt: skip
        raise LoadTestError(f"{where}: max_invocations must be an integer >= 1")
    thresholds = Thresholds(
        p50_ms=_number(data, "p50_ms", where),
        p90_ms=_number(data, "p90_ms", where),
        p99_ms=_number(data, "p99_ms", where),
        error_rate=None if error_rate is None else float(error_rate),
        max_invocations=max_invocations,
    )
    if thresholds == Thresholds(error_rate=thresholds.error_rate) and error_rate is None:
        raise LoadTestError(f"{where}: give at least one stopping condition")
    return FindLimit(
        start=start,
        step=step,
        max_rate=max_rate,
        step_duration=_number(data, "step_duration", where) or 10.0,
        thresholds=thresholds,
        per_container=bool(data.get("per_container", True)),
    )


def validate(config: LoadConfig) -> LoadConfig:
    """Cross-field checks that hold however the config was built (file, flags or code)."""
    parts = urlsplit(config.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoadTestError(
            f"--url: expected http://HOST[:PORT] or https://..., got {config.url!r}"
        )
    if not config.endpoint:
        raise LoadTestError("--endpoint: an endpoint name is required")
    if not config.phases and config.find_limit is None:
        raise LoadTestError("give --rate/--users with --duration, phases, or find_limit")
    if config.phases and config.find_limit is not None:
        raise LoadTestError("phases and find_limit exclude each other")
    if config.processes < 1:
        raise LoadTestError("--processes must be >= 1")
    if config.processes > 1 and any(p.mode == "closed" for p in config.phases):
        for p in config.phases:
            if p.users is not None and p.users < config.processes:
                raise LoadTestError(f"{p.name}: fewer users ({p.users}) than processes")
    return config


def load_config_file(path: Path) -> tuple[dict[str, Any], Path]:
    return read_document(path), path.parent


def config_from_document(
    data: Mapping[str, Any], base_dir: Path, overrides: Mapping[str, Any] | None = None
) -> LoadConfig:
    """Build a LoadConfig from a mix/config document; ``overrides`` (from flags) win."""
    values: dict[str, Any] = {k: v for k, v in data.items() if k not in ("targets", "pick", "seed")}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {
        "url", "endpoint", "phases", "find_limit", "processes", "max_connections", "timeout",
        "sign", "region", "admin_url", "max_lag_ms", "max_cpu_percent", "instance_cores",
        "cpu_target", "progress", "rate", "users", "duration", "credentials",
    }  # fmt: skip
    mix = parse_mix(data, base_dir)
    unknown = set(values) - known
    if unknown:
        raise LoadTestError(f"config: unknown field {sorted(unknown)[0]!r}")
    phases: tuple[Phase, ...] = ()
    if "rate" in values or "users" in values:
        single: dict[str, Any] = {"duration": values.get("duration", 10)}
        if values.get("rate") is not None:
            single["rate"] = values["rate"]
        if values.get("users") is not None:
            single["users"] = values["users"]
        phases = parse_phases([single], "load")
    elif "phases" in values:
        phases = parse_phases(values["phases"])
    find_limit = None
    if values.get("find_limit") is not None:
        if not isinstance(values["find_limit"], dict):
            raise LoadTestError("find_limit: expected a mapping")
        find_limit = parse_find_limit(values["find_limit"])
        phases = ()
    for key in ("url", "endpoint"):
        if not isinstance(values.get(key), str):
            raise LoadTestError(f"--{key} is required (flag or '{key}:' in the mix file)")
    sign = values.get("sign", "auto")
    if sign not in ("auto", "on", "off"):
        raise LoadTestError(f"sign must be auto, on or off, got {sign!r}")
    config = LoadConfig(
        url=values["url"],
        endpoint=values["endpoint"],
        mix=mix,
        phases=phases,
        find_limit=find_limit,
        processes=int(values.get("processes", 1)),
        max_connections=int(values.get("max_connections", 512)),
        timeout=float(values.get("timeout", 60.0)),
        sign=sign,
        region=str(values.get("region", "us-east-1")),
        admin_url=_admin_url(values.get("admin_url", "auto")),
        max_lag_ms=float(values.get("max_lag_ms", 10.0)),
        max_cpu_percent=float(values.get("max_cpu_percent", 95.0)),
        instance_cores=None
        if values.get("instance_cores") is None
        else float(values["instance_cores"]),
        cpu_target=float(values.get("cpu_target", 0.8)),
        progress=bool(values.get("progress", True)),
        credentials=_credentials(values.get("credentials")),
    )
    return validate(config)


def _credentials(value: object) -> Credentials | None:
    """Explicit keys (library callers and tests); the CLI relies on botocore's chain."""
    if value is None or isinstance(value, Credentials):
        return value
    if isinstance(value, dict) and {"access_key", "secret_key"} <= set(value):
        return Credentials(str(value["access_key"]), str(value["secret_key"]), value.get("token"))
    raise LoadTestError("credentials: expected {access_key, secret_key, token?}")


def _admin_url(value: object) -> str | None:
    if value in (None, "none", "off", ""):
        return None
    return str(value)


MIX_FIELDS: tuple[tuple[str, str], ...] = (
    ("targets", "list, required: the traffic mix, one entry per target container"),
    ("targets[].container", "TargetContainerHostname (Direct); omit for a Serial endpoint"),
    ("targets[].weight", "share of the requests, relative to the others (default 1)"),
    ("targets[].payload", "file sent as the body (relative to the mix file)"),
    ("targets[].payloads", "several files instead, picked per 'pick'"),
    ("targets[].content_type", "Content-Type (default application/octet-stream)"),
    ("targets[].accept", "Accept (default: none sent)"),
    ("targets[].custom_attributes", "X-Amzn-SageMaker-Custom-Attributes (default: none)"),
    ("pick", "round-robin (default) or random: how payloads and targets are chosen"),
    ("seed", "seed of 'random' picking and of the target sequence (default 1)"),
    ("url, endpoint, ...", "any long flag (dashes as underscores) may also be set in the file"),
    ("phases", "[{rate: RPS | users: N, spawn_rate: U/s, duration: S, name: ...}, ...]"),
    (
        "find_limit",
        "{start, step, max_rate, step_duration, p50_ms, p90_ms, p99_ms, error_rate, "
        "max_invocations, per_container}",
    ),
)
