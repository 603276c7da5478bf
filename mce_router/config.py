"""Frozen, validated router configuration.

A :class:`RouterConfig` is built once (from YAML or from Python) and never changes; everything the
hot path needs from it is copied into the routing table when an endpoint is built, so nothing is
looked up here per request.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeVar

import yaml

from .errors import ConfigError, ValidationError, refuse_unknown_keys
from .security.config import AuthConfig
from .spec import EndpointConfigSpec, EndpointSpec, ModelSpec

MIB = 1024 * 1024
#: SageMaker's real-time invocation payload limit (6 MiB), for requests and for responses.
SAGEMAKER_PAYLOAD_LIMIT = 6 * MIB


@dataclass(frozen=True, slots=True)
class ProcessImage:
    """An image run as a local process: argv, extra environment, working directory."""

    command: tuple[str, ...]
    environment: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    working_dir: str | None = None


@dataclass(frozen=True, slots=True)
class ExternalImage:
    """An image whose container someone else runs; the router only connects to ``url``."""

    url: str
    host: str
    port: int


ImageSpec = ProcessImage | ExternalImage


@dataclass(frozen=True, slots=True)
class Limits:
    """Data-plane limits. Defaults follow SageMaker's real-time endpoints."""

    max_containers_per_model: int = 15
    max_request_body_bytes: int = SAGEMAKER_PAYLOAD_LIMIT
    max_response_body_bytes: int = SAGEMAKER_PAYLOAD_LIMIT
    #: Deadline for one container to answer one call (each Serial stage has its own).
    invocation_timeout_seconds: float = 60.0
    connect_timeout_seconds: float = 2.0
    #: Upper bound of open connections (= concurrent calls) per container.
    max_connections_per_container: int = 128
    #: Idle keep-alive connections kept per container; extra ones are closed when released.
    max_idle_connections_per_container: int = 64
    idle_connection_timeout_seconds: float = 30.0
    #: Client side: time to receive a complete request head, and a complete body.
    header_read_timeout_seconds: float = 10.0
    body_read_timeout_seconds: float = 60.0
    client_keepalive_timeout_seconds: float = 75.0
    max_header_count: int = 100
    max_header_bytes: int = 16 * 1024
    #: Requests waiting for a free connection to one container before 429 is answered; each
    #: holds its body (up to 6 MiB), so this bounds a saturated container's memory.
    max_queued_per_container: int = 128
    #: How long a request may wait for a free connection before 429 (so clients back off and
    #: retry instead of waiting out the invocation timeout behind a slow model).
    max_queue_wait_seconds: float = 10.0
    #: Client connections the runtime listener holds at once; beyond it new ones get 503.
    max_client_connections: int = 16384
    #: How long requests in flight on a fleet being replaced (UpdateEndpoint) or deleted
    #: (DeleteEndpoint) may take to finish before its containers are stopped anyway.
    drain_timeout_seconds: float = 30.0
    #: Containers this router runs at most, summed over every endpoint (both fleets count
    #: while an update runs); CreateEndpoint/UpdateEndpoint beyond it: ResourceLimitExceeded.
    max_running_containers: int = 500
    #: InvokeEndpointWithResponseStream, once the first part has gone to the client: the
    #: longest the container may send nothing (the stream then ends with ModelStreamError
    #: ModelInvocationTimeExceeded); time the router spends not reading because the client
    #: reads slowly does not count. Before the first part, invocation_timeout_seconds applies.
    stream_silence_timeout_seconds: float = 60.0
    #: The longest one stream may last from the request's arrival to its last part.
    stream_max_duration_seconds: float = 600.0


@dataclass(frozen=True, slots=True)
class HealthSettings:
    ping_timeout_seconds: float = 2.0
    #: Default startup window; a variant's ContainerStartupHealthCheckTimeoutInSeconds wins.
    startup_timeout_seconds: float = 480.0
    startup_ping_interval_seconds: float = 0.1
    ping_interval_seconds: float = 5.0
    #: Consecutive failed pings after which a serving container is restarted.
    unhealthy_threshold: int = 3
    restart_backoff_initial_seconds: float = 0.5
    restart_backoff_max_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class ProcessSettings:
    stop_grace_seconds: float = 30.0
    #: SAGEMAKER_BIND_TO_PORT is one of these ports (below 32768: some model servers refuse
    #: higher ones), never one of the safe port ranges below.
    bind_port_range_start: int = 10000
    bind_port_range_size: int = 10000
    #: SAGEMAKER_SAFE_PORT_RANGE blocks are handed out from here, below Linux's ephemeral range.
    safe_port_range_start: int = 20000
    safe_port_range_size: int = 10
    safe_port_range_blocks: int = 1000
    bind_host: str = "127.0.0.1"


PULL_POLICIES = ("never", "missing", "always")
NETWORK_MODES = ("instance", "host")


def default_engine_url() -> str:
    """Where Docker clients look for the engine: ``DOCKER_HOST``, else Docker's socket."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """``container_engine:``: images without an ``images:`` entry run as real containers on a
    Docker Engine API (Docker, or ``podman system service``); see runtime/engine.py."""

    url: str = field(default_factory=default_engine_url)
    #: never: the image must be present; missing: pull when absent; always: pull at CreateModel.
    pull: str = "missing"
    #: SIGTERM, then SIGKILL after this many seconds (SageMaker: 30).
    stop_grace_seconds: float = 30.0
    #: instance: the containers of one instance share a network namespace of their own (they
    #: reach each other on localhost; the router reaches them on published loopback ports);
    #: host: the engine host's network, ports handed out by the router.
    network: str = "instance"
    #: Image of the container holding an instance's network namespace (and its shared CPU and
    #: memory limits); "" = the instance's first image with ``sleep infinity``.
    infra_image: str = ""
    #: Where ModelDataUrl archives are unpacked (cached by URL and ETag/mtime); "" =
    #: ``<state_dir>/model-data``.
    model_data_dir: str = ""
    #: Upper bound of one unpacked ModelDataUrl (bytes); SageMaker's own limit is the volume.
    model_data_max_bytes: int = 10 * 1024 * MIB
    #: S3 endpoint for s3:// ModelDataUrl ("" = AWS's); credentials: the usual AWS chain.
    s3_endpoint_url: str = ""
    #: Deadline of one engine API call (pulls excepted), so a hung engine is an error.
    api_timeout_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    #: Off removes every metrics call from the hot path (benchmarks compare both).
    enabled: bool = True
    #: How often CPUUtilization/MemoryUtilization are sampled (in a background thread).
    usage_sample_seconds: float = 5.0
    #: CloudWatch reserves ``AWS/`` namespaces for AWS itself, so the ready-to-send
    #: PutMetricData requests publish the ``AWS/SageMaker`` metrics under this namespace.
    cloudwatch_sagemaker_namespace: str = "MceRouter/SageMaker"
    #: CloudWatch Embedded Metric Format: every finished minute's datums as JSON log lines
    #: (the CloudWatch agent turns them into metrics), written to ``emf_path`` ("-": stdout).
    emf_enabled: bool = False
    emf_path: str = "-"
    #: How often finished minutes are looked for and written.
    emf_interval_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """W3C trace context, OpenTelemetry spans and the hop log (README "Tracing")."""

    #: The trace-flags of a trace the router starts for a request that brought no valid
    #: ``traceparent``: sampled (01) or not (00). A client's traceparent is forwarded as sent.
    sample_new_traces: bool = True
    #: A span per request and per container call, exported over OTLP/HTTP (needs the
    #: ``otel`` extra: ``pip install 'mce-router[otel]'``).
    otel_enabled: bool = False
    otel_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    otel_service_name: str = "mce-router"
    #: The admin port's ``GET /hop-log``: the last ``hop_log_size`` failing Serial requests,
    #: every stage's status, latency, size and content type.
    hop_log_enabled: bool = False
    hop_log_size: int = 100
    #: Also keep the failing stage's input (its first ``hop_log_input_max_bytes`` bytes).
    #: Request data can be sensitive: off by default, and with authentication on it is kept
    #: only when ``hop_log_capture_input_with_auth`` also says so.
    hop_log_capture_input: bool = False
    hop_log_input_max_bytes: int = 4096
    hop_log_capture_input_with_auth: bool = False

    @property
    def hooks_enabled(self) -> bool:
        return self.otel_enabled or self.hop_log_enabled


TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True, slots=True)
class AutoscalingSettings:
    """Target tracking's clock (see :mod:`mce_router.endpoints.scaling`): AWS evaluates one
    datapoint per minute; a shorter period makes the same policies act in seconds (tests)."""

    period_seconds: float = 60.0
    #: Consecutive datapoints above the target that scale out (AWS: 3).
    scale_out_datapoints: int = 3
    #: Consecutive datapoints below 90 % of the target that scale in (AWS: 15).
    scale_in_datapoints: int = 15


#: What a rollout alarm may watch: the new fleet's calls, as SageMaker's CloudWatch metrics
#: name them (ModelLatency in microseconds, as SageMaker publishes it).
ALARM_METRICS = ("Invocation5XXErrors", "Invocation4XXErrors", "Invocations", "ModelLatency")
ALARM_STATISTICS = ("Sum", "Average", "SampleCount")
ALARM_COMPARISONS = ("GreaterThanThreshold", "GreaterThanOrEqualToThreshold")


@dataclass(frozen=True, slots=True)
class AlarmSpec:
    """An alarm UpdateEndpoint's AutoRollbackConfiguration may name (AWS: a CloudWatch alarm).
    It watches the fleet being deployed: one datapoint per ``period_seconds``; it fires when
    ``evaluation_periods`` consecutive datapoints breach ``threshold``."""

    name: str = ""
    metric: str = "Invocation5XXErrors"
    threshold: float = 0.0
    statistic: str = "Sum"
    comparison: str = "GreaterThanThreshold"
    period_seconds: float = 60.0
    evaluation_periods: int = 1
    #: Only the fleet being deployed is watched (the old one is what a rollback returns to).
    fleet: str = "new"


def _parse_alarms(raw: Any) -> tuple[AlarmSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("config.alarms: must be a list of alarms ({name, metric, ...})")
    alarms = tuple(_section(AlarmSpec, item, f"alarms[{i}]") for i, item in enumerate(raw))
    seen: set[str] = set()
    for index, alarm in enumerate(alarms):
        where = f"config.alarms[{index}]"
        checks = (
            ("metric", alarm.metric, ALARM_METRICS),
            ("statistic", alarm.statistic, ALARM_STATISTICS),
            ("comparison", alarm.comparison, ALARM_COMPARISONS),
            ("fleet", alarm.fleet, ("new",)),
        )
        for key, value, allowed in checks:
            if value not in allowed:
                raise ConfigError(f"{where}.{key}: must be one of {', '.join(allowed)}")
        if not alarm.name or len(alarm.name) > 255:
            raise ConfigError(f"{where}.name: must be 1 to 255 characters (AWS's AlarmName)")
        if alarm.name in seen:
            raise ConfigError(f"{where}.name: {alarm.name!r} is defined twice")
        seen.add(alarm.name)
        if alarm.period_seconds <= 0 or alarm.evaluation_periods < 1:
            raise ConfigError(
                f"{where}: period_seconds must be greater than 0 and evaluation_periods at least 1"
            )
    return alarms


@dataclass(frozen=True, slots=True)
class Listener:
    host: str = "127.0.0.1"
    port: int = 8080
    admin_port: int = 8081
    #: PEM certificate chain and private key: both set puts TLS on both listeners (a sidecar
    #: reached from another host must not carry SigV4 signatures and payloads in the clear).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: The oldest TLS version accepted: "1.2" or "1.3".
    tls_min_version: str = "1.2"
    #: Data-plane processes serving ``port`` (SO_REUSEPORT); this process keeps the control
    #: plane, health checks, containers and the state file. 1 serves the port in this process;
    #: ``auto`` in the config file (``--workers auto``) is the number of usable CPUs.
    workers: int = 1

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server-side TLS context of both listeners; None without TLS. Python's defaults
        for servers (no compression, forward-secret AEAD ciphers first) plus the minimum."""
        if not self.tls:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = TLS_VERSIONS[self.tls_min_version]
        try:
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"config.listen: tls_cert_file {self.tls_cert_file} and tls_key_file "
                f"{self.tls_key_file} are not a PEM certificate chain and its private key "
                f"({exc.reason or exc})"
            ) from exc
        except OSError as exc:  # after SSLError, which is one
            raise ConfigError(
                f"config.listen: cannot read the TLS certificate or key "
                f"({self.tls_cert_file}, {self.tls_key_file}): {exc.strerror or exc}"
            ) from exc
        return context


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Everything the router needs; ``models``/``endpoint_configs``/``endpoints`` are request
    bodies of CreateModel/CreateEndpointConfig/CreateEndpoint, created when the router starts."""

    images: Mapping[str, ImageSpec] = field(default_factory=lambda: MappingProxyType({}))
    listener: Listener = field(default_factory=Listener)
    limits: Limits = field(default_factory=Limits)
    health: HealthSettings = field(default_factory=HealthSettings)
    process: ProcessSettings = field(default_factory=ProcessSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    autoscaling: AutoscalingSettings = field(default_factory=AutoscalingSettings)
    #: Alarms UpdateEndpoint's AutoRollbackConfiguration names (README "Safe deployments").
    alarms: tuple[AlarmSpec, ...] = ()
    state_dir: Path = Path("mce-state")
    #: The SQLite file holding models, endpoint configs and endpoints; None means
    #: ``<state_dir>/state.db``.
    state_file: Path | None = None
    region: str = "us-east-1"
    account_id: str = "000000000000"
    models: tuple[Mapping[str, Any], ...] = ()
    endpoint_configs: tuple[Mapping[str, Any], ...] = ()
    endpoints: tuple[Mapping[str, Any], ...] = ()
    #: SigV4 authentication and IAM authorization; ``mode: none`` (the default) checks nothing.
    auth: AuthConfig = field(default_factory=AuthConfig)
    #: Run images that have no ``images:`` entry on a container engine; None = no engine.
    container_engine: EngineSettings | None = None

    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **changes: Any) -> RouterConfig:
        return dataclasses.replace(self, **changes)

    @property
    def state_path(self) -> Path:
        """Where models, endpoint configs and endpoints are persisted."""
        return self.state_file if self.state_file is not None else self.state_dir / "state.db"

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, base_dir: Path | None = None) -> RouterConfig:
        """Build from parsed YAML/JSON; relative ``state_dir``/``working_dir`` resolve against
        ``base_dir`` (the config file's folder) so a config works from any current directory."""
        if not isinstance(raw, Mapping):
            raise ConfigError("config: the top level must be a mapping")
        known = {
            "images",
            "listen",
            "limits",
            "health",
            "process",
            "metrics",
            "tracing",
            "autoscaling",
            "alarms",
            "auth",
            "state_dir",
            "state_file",
            "region",
            "account_id",
            "models",
            "endpoint_configs",
            "endpoints",
            "container_engine",
        }
        refuse_unknown_keys(raw, known, "config")
        base = base_dir or Path.cwd()
        kwargs: dict[str, Any] = {
            "images": MappingProxyType(_parse_images(raw.get("images") or {}, base)),
            "listener": _section(Listener, _resolve_workers(raw.get("listen")), "listen"),
            "limits": _section(Limits, raw.get("limits"), "limits"),
            "health": _section(HealthSettings, raw.get("health"), "health"),
            "process": _section(ProcessSettings, raw.get("process"), "process"),
            "metrics": _section(MetricsSettings, raw.get("metrics"), "metrics"),
            "tracing": _section(TracingSettings, raw.get("tracing"), "tracing"),
            "autoscaling": _section(AutoscalingSettings, raw.get("autoscaling"), "autoscaling"),
            "alarms": _parse_alarms(raw.get("alarms")),
        }
        listener = kwargs["listener"]
        for key in ("tls_cert_file", "tls_key_file"):
            if getattr(listener, key):
                resolved = str((base / getattr(listener, key)).resolve())
                listener = dataclasses.replace(listener, **{key: resolved})
        kwargs["listener"] = listener
        if "state_dir" in raw:
            kwargs["state_dir"] = (base / str(raw["state_dir"])).resolve()
        if raw.get("state_file") is not None:
            kwargs["state_file"] = (base / str(raw["state_file"])).resolve()
        for key in ("region", "account_id"):
            if key in raw:
                kwargs[key] = str(raw[key])
        for key in ("models", "endpoint_configs", "endpoints"):
            items = raw.get(key) or []
            if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
                raise ConfigError(f"config.{key}: must be a list of request bodies (mappings)")
            kwargs[key] = tuple(items)
        if "container_engine" in raw:
            # An empty section (`container_engine: {}`) means: the engine at the default URL.
            kwargs["container_engine"] = _section(
                EngineSettings, raw["container_engine"] or {}, "container_engine"
            )
        kwargs["auth"] = AuthConfig.from_mapping(
            raw.get("auth"),
            base,
            default_region=kwargs.get("region", "us-east-1"),
            default_account_id=kwargs.get("account_id", "000000000000"),
        )
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> RouterConfig:
        config_path = Path(path)
        try:
            raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config: cannot read {config_path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config: {config_path} is not UTF-8 text ({exc.reason})") from exc
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"{config_path}:{mark.line + 1}:{mark.column + 1}" if mark else str(config_path)
            problem = " ".join(filter(None, (exc.context, exc.problem)))
            raise ConfigError(f"config: {where}: YAML syntax error: {problem}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config: {config_path} is not valid YAML: {exc}") from exc
        return cls.from_mapping(raw or {}, base_dir=config_path.resolve().parent)


#: More data-plane processes than this is a typo, not a machine.
MAX_WORKERS: Final = 256


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as ``workers: auto`` counts them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_workers(value: object, where: str) -> int:
    """``auto`` (usable CPUs) or a whole number 1..MAX_WORKERS."""
    if value == "auto":
        return usable_cpus()
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WORKERS:
        return value
    raise ConfigError(f"{where}: must be auto or a whole number 1..{MAX_WORKERS} (got {value!r})")


def _resolve_workers(listen: Any) -> Any:
    if isinstance(listen, Mapping) and "workers" in listen:
        return {**listen, "workers": parse_workers(listen["workers"], "config.listen.workers")}
    return listen


def _validate_tls(listener: Listener) -> None:
    if bool(listener.tls_cert_file) != bool(listener.tls_key_file):
        raise ConfigError(
            "config.listen: TLS needs both tls_cert_file and tls_key_file (or --tls-cert and "
            "--tls-key); only one is set"
        )
    if listener.tls_min_version not in TLS_VERSIONS:
        raise ConfigError(
            f"config.listen.tls_min_version: must be one of {', '.join(TLS_VERSIONS)} "
            f"(got {listener.tls_min_version!r})"
        )
    listener.ssl_context()  # the files load now, not when the first client connects


_Section = TypeVar(
    "_Section",
    Listener,
    Limits,
    HealthSettings,
    ProcessSettings,
    MetricsSettings,
    TracingSettings,
    AutoscalingSettings,
    EngineSettings,
    AlarmSpec,
)


def _section(cls: type[_Section], raw: Any, name: str) -> _Section:
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config.{name}: must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        refuse_unknown_keys({key: value}, fields, f"config.{name}")
        default = getattr(cls(), key)
        values[key] = _coerce(value, type(default), f"config.{name}.{key}")
    return cls(**values)


def _coerce(value: Any, expected: type, where: str) -> Any:
    if expected is bool and isinstance(value, bool):
        return value
    if expected is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if expected is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected {expected.__name__}, got {value!r}")


def _parse_images(raw: Any, base: Path) -> dict[str, ImageSpec]:
    if not isinstance(raw, Mapping):
        raise ConfigError("config.images: must map an image URI to {command: [...]} or {url: ...}")
    images: dict[str, ImageSpec] = {}
    for image, spec in raw.items():
        where = f"config.images[{image!r}]"
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: must be a mapping with 'command' or 'url'")
        if "url" in spec:
            extra = set(spec) - {"url"}
            if extra:
                raise ConfigError(
                    f"{where}: an external image takes only 'url', not {sorted(extra)}"
                )
            images[str(image)] = parse_external_url(str(spec["url"]), where)
        elif "command" in spec:
            refuse_unknown_keys(spec, {"command", "environment", "working_dir"}, where)
            images[str(image)] = _parse_process_image(spec, base, where)
        else:
            raise ConfigError(f"{where}: needs 'command' (process runtime) or 'url' (external)")
    return images


def _parse_process_image(spec: Mapping[str, Any], base: Path, where: str) -> ProcessImage:
    command = spec["command"]
    if (
        not isinstance(command, Sequence)
        or isinstance(command, str)
        or not command
        or not all(isinstance(arg, str) for arg in command)
    ):
        raise ConfigError(f"{where}.command: must be a non-empty list of strings (an argv)")
    environment = spec.get("environment") or {}
    if not isinstance(environment, Mapping):
        raise ConfigError(f"{where}.environment: must map names to values")
    working_dir = spec.get("working_dir")
    return ProcessImage(
        command=tuple(command),
        environment=MappingProxyType({str(k): str(v) for k, v in environment.items()}),
        working_dir=str(base / str(working_dir)) if working_dir is not None else None,
    )


def parse_external_url(url: str, where: str) -> ExternalImage:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(f"{where}.url: must look like http://host:port (got {url!r})")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise ConfigError(f"{where}.url: bad port in {url!r}") from exc
    return ExternalImage(url=url, host=parts.hostname, port=port)


def _validate_declared(config: RouterConfig) -> None:
    """Declared models, endpoint configs and endpoints are CreateX bodies: check them with the
    control plane's own rules now, so a typo fails the config load and names its resource."""
    declared: tuple[tuple[str, str, tuple[Mapping[str, Any], ...], Any], ...] = (
        (
            "models",
            "ModelName",
            config.models,
            lambda body: ModelSpec.from_request(
                body, max_containers=config.limits.max_containers_per_model
            ),
        ),
        (
            "endpoint_configs",
            "EndpointConfigName",
            config.endpoint_configs,
            EndpointConfigSpec.from_request,
        ),
        ("endpoints", "EndpointName", config.endpoints, EndpointSpec.from_request),
    )
    for section, name_key, bodies, parse in declared:
        for index, body in enumerate(bodies):
            try:
                parse(body)
            except ValidationError as exc:
                name = body.get(name_key) if isinstance(body, Mapping) else None
                named = f" ({name_key} {name!r})" if isinstance(name, str) else ""
                raise ConfigError(f"config.{section}[{index}]{named}: {exc.message}") from exc


def _validate(config: RouterConfig) -> None:
    _validate_declared(config)
    limits = config.limits
    positive = {
        "limits.max_containers_per_model": limits.max_containers_per_model,
        "limits.max_request_body_bytes": limits.max_request_body_bytes,
        "limits.max_response_body_bytes": limits.max_response_body_bytes,
        "limits.invocation_timeout_seconds": limits.invocation_timeout_seconds,
        "limits.connect_timeout_seconds": limits.connect_timeout_seconds,
        "limits.max_connections_per_container": limits.max_connections_per_container,
        "limits.header_read_timeout_seconds": limits.header_read_timeout_seconds,
        "limits.body_read_timeout_seconds": limits.body_read_timeout_seconds,
        "limits.max_header_count": limits.max_header_count,
        "limits.max_header_bytes": limits.max_header_bytes,
        "limits.max_queue_wait_seconds": limits.max_queue_wait_seconds,
        "limits.max_client_connections": limits.max_client_connections,
        "limits.stream_silence_timeout_seconds": limits.stream_silence_timeout_seconds,
        "limits.stream_max_duration_seconds": limits.stream_max_duration_seconds,
        "health.ping_timeout_seconds": config.health.ping_timeout_seconds,
        "health.startup_timeout_seconds": config.health.startup_timeout_seconds,
        "health.ping_interval_seconds": config.health.ping_interval_seconds,
        "health.unhealthy_threshold": config.health.unhealthy_threshold,
        "process.safe_port_range_size": config.process.safe_port_range_size,
        "process.safe_port_range_blocks": config.process.safe_port_range_blocks,
        "process.bind_port_range_size": config.process.bind_port_range_size,
        "metrics.usage_sample_seconds": config.metrics.usage_sample_seconds,
        "metrics.emf_interval_seconds": config.metrics.emf_interval_seconds,
        "tracing.hop_log_size": config.tracing.hop_log_size,
        "autoscaling.period_seconds": config.autoscaling.period_seconds,
        "autoscaling.scale_out_datapoints": config.autoscaling.scale_out_datapoints,
        "autoscaling.scale_in_datapoints": config.autoscaling.scale_in_datapoints,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config.{name}: must be greater than 0 (got {value})")
    _validate_tracing(config.tracing)
    if not config.metrics.emf_path:
        raise ConfigError('config.metrics.emf_path: must name a file, or "-" for stdout')
    if limits.max_running_containers < 1:
        raise ConfigError("config.limits.max_running_containers: must be at least 1")
    if limits.drain_timeout_seconds < 0:
        raise ConfigError("config.limits.drain_timeout_seconds: must be 0 or more")
    if config.process.stop_grace_seconds < 0:
        raise ConfigError("config.process.stop_grace_seconds: must be 0 or more")
    if limits.max_idle_connections_per_container < 0:
        raise ConfigError("config.limits.max_idle_connections_per_container: must be 0 or more")
    for name, port in (("port", config.listener.port), ("admin_port", config.listener.admin_port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"config.listen.{name}: must be 0..65535 (0 = any free port)")
    _validate_tls(config.listener)
    parse_workers(config.listener.workers, "config.listen.workers")
    if config.listener.workers > 1 and config.tracing.hop_log_enabled:
        raise ConfigError(
            "config.tracing.hop_log_enabled: the hop log is kept in the memory of the process "
            "that serves the request, and with listen.workers > 1 those are the worker "
            "processes, which GET /hop-log cannot read; use workers: 1 to debug a pipeline"
        )
    end = config.process.safe_port_range_start + (
        config.process.safe_port_range_size * config.process.safe_port_range_blocks
    )
    if config.process.safe_port_range_start < 1024 or end > 65536:
        raise ConfigError("config.process: safe port ranges must lie within 1024..65535")
    bind_start = config.process.bind_port_range_start
    bind_end = bind_start + config.process.bind_port_range_size
    if bind_start < 1024 or bind_end > 32768:
        raise ConfigError(
            "config.process: bind ports (bind_port_range_start, bind_port_range_size) must lie "
            f"within 1024..32767, where every model server accepts them (got {bind_start}.."
            f"{bind_end - 1})"
        )
    if bind_start < end and config.process.safe_port_range_start < bind_end:
        raise ConfigError(
            f"config.process: the bind port range {bind_start}..{bind_end - 1} overlaps the safe "
            f"port ranges {config.process.safe_port_range_start}..{end - 1}; move one of them"
        )
    if config.container_engine is not None:
        _validate_engine(config.container_engine)


def _validate_engine(engine: EngineSettings) -> None:
    where = "config.container_engine"
    if not engine.url.startswith(("unix://", "tcp://", "http://", "https://")):
        raise ConfigError(
            f"{where}.url: must be unix:///path/to.sock, tcp://host:port or http(s)://host:port "
            f"(got {engine.url!r})"
        )
    for name, allowed in (("pull", PULL_POLICIES), ("network", NETWORK_MODES)):
        if getattr(engine, name) not in allowed:
            raise ConfigError(
                f"{where}.{name}: must be one of {', '.join(allowed)} "
                f"(got {getattr(engine, name)!r})"
            )
    if engine.stop_grace_seconds < 0:
        raise ConfigError(f"{where}.stop_grace_seconds: must be 0 or more")
    for name in ("model_data_max_bytes", "api_timeout_seconds"):
        if getattr(engine, name) <= 0:
            raise ConfigError(f"{where}.{name}: must be greater than 0")


def _validate_tracing(tracing: TracingSettings) -> None:
    if not 0 <= tracing.hop_log_input_max_bytes <= MIB:
        raise ConfigError(
            "config.tracing.hop_log_input_max_bytes: must be 0..1048576 (the hop log holds "
            f"hop_log_size of them in memory; got {tracing.hop_log_input_max_bytes})"
        )
    if tracing.otel_enabled:
        from urllib.parse import urlsplit

        parts = urlsplit(tracing.otel_endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                "config.tracing.otel_endpoint: must be an OTLP/HTTP URL such as "
                f"http://127.0.0.1:4318/v1/traces (got {tracing.otel_endpoint!r})"
            )
