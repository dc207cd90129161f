"""Settings: explicit argument > environment variable > default, resolved and validated once.

Two kinds of mistake, two answers. An explicit ``configure()`` argument of the wrong type raises ``TypeError`` and one
with a wrong value raises ``ValueError``, both naming the argument and what is expected. An invalid environment
variable follows the OpenTelemetry specification: one warning naming the variable and its value, and the default is
used instead. `Settings.problems` keeps those warnings for ``otel-vision doctor``.

The standard variables that the SDK's exporters and tracer provider would otherwise read themselves (endpoints,
timeouts, sampler) are validated here and passed to them explicitly, and `hidden_invalid_variables()` keeps an invalid
value out of their sight while they are built: an invalid value behaves exactly like an unset one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

from otel_vision._errors import our_logger

Protocol = Literal["grpc", "http/protobuf"]
ExporterKind = Literal["otlp", "console", "none", "prometheus", "waterfall"]
Signal = Literal["traces", "metrics", "logs"]

logger = our_logger("otel_vision")

OTEL_SDK_DISABLED: Final = "OTEL_SDK_DISABLED"
"""Standard: ``true`` turns every signal off; ``configure()`` then returns a handle that does nothing."""
OTEL_EXPORTER_OTLP_PROTOCOL: Final = "OTEL_EXPORTER_OTLP_PROTOCOL"
"""Standard: ``grpc`` (our default) or ``http/protobuf``."""
OTEL_EXPORTER_OTLP_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
"""Standard: collector base URL with ``http://`` or ``https://``; with HTTP the per-signal path is appended."""
OTEL_EXPORTER_OTLP_TIMEOUT: Final = "OTEL_EXPORTER_OTLP_TIMEOUT"
"""Standard: seconds one export may take (the Python SDK reads this variable in seconds), default ``10``."""
OTEL_TRACES_SAMPLER: Final = "OTEL_TRACES_SAMPLER"
"""Standard: one of the built-in sampler names, default ``parentbased_always_on``."""
OTEL_TRACES_SAMPLER_ARG: Final = "OTEL_TRACES_SAMPLER_ARG"
"""Standard: the ratio in [0, 1] of the ``*traceidratio`` samplers, default ``1.0``."""
OTEL_TRACES_EXPORTER: Final = "OTEL_TRACES_EXPORTER"
"""Standard: ``otlp`` (default), ``console``, ``waterfall`` (a tree per trace on stderr) or ``none`` for spans."""
OTEL_METRICS_EXPORTER: Final = "OTEL_METRICS_EXPORTER"
"""Standard: ``otlp`` (default), ``console``, ``none`` or ``prometheus`` (a pull endpoint, see below) for metrics."""
OTEL_EXPORTER_PROMETHEUS_HOST: Final = "OTEL_EXPORTER_PROMETHEUS_HOST"
"""Standard: address the ``prometheus`` metrics endpoint binds to; default ``127.0.0.1`` (never all interfaces
unless you say so)."""
OTEL_EXPORTER_PROMETHEUS_PORT: Final = "OTEL_EXPORTER_PROMETHEUS_PORT"
"""Standard: port of the ``prometheus`` metrics endpoint; default ``9464``."""
OTEL_LOGS_EXPORTER: Final = "OTEL_LOGS_EXPORTER"
"""Standard: ``otlp`` (default), ``console`` or ``none`` for logs."""

OTEL_VISION_GPU: Final = "OTEL_VISION_GPU"
"""``true`` (default) or ``false``: GPU telemetry (NVML sampler, hw.gpu.* metrics, GPU attributes on spans)."""
OTEL_VISION_GPU_SAMPLE_INTERVAL: Final = "OTEL_VISION_GPU_SAMPLE_INTERVAL"
"""Seconds between two NVML polls, default ``1.0``, at least ``0.05``."""
OTEL_VISION_GPU_HISTORY: Final = "OTEL_VISION_GPU_HISTORY"
"""Seconds of NVML sample history kept for joining span windows, default ``300``."""
OTEL_VISION_GPU_PEAK_MEMORY: Final = "OTEL_VISION_GPU_PEAK_MEMORY"
"""``true`` (default) or ``false``: track ``gpu.memory.peak`` per span (resets torch's process-wide peak counter)."""
OTEL_VISION_LOGS: Final = "OTEL_VISION_LOGS"
"""``true`` (default) or ``false``: export stdlib ``logging`` records as OTLP logs."""
OTEL_VISION_LOG_LEVEL: Final = "OTEL_VISION_LOG_LEVEL"
"""Lowest stdlib logging level exported, default ``INFO``."""

OTEL_VISION_NVTX: Final = "OTEL_VISION_NVTX"
"""``false`` (default) or ``true``: mirror every span as an NVTX range, for Nsight Systems captures."""
OTEL_VISION_TAIL_SAMPLING_RATIO: Final = "OTEL_VISION_TAIL_SAMPLING_RATIO"
"""Unset (default): no tail sampling. A ratio in [0, 1]: keep every trace with an error, every slow and every throttled
one, and this share of the others (decided in the process when a trace's local root ends)."""
OTEL_VISION_TAIL_SAMPLING_LATENCY: Final = "OTEL_VISION_TAIL_SAMPLING_LATENCY"
"""Seconds above which a trace is slow and always kept: ``0.5`` for every operation, or ``predict=0.2,*=1``."""
OTEL_VISION_CAPTURE_PROMPTS: Final = "OTEL_VISION_CAPTURE_PROMPTS"
"""``false`` (default) or ``true``: record diffusion prompts as ``vision.prompt`` on the pipeline's root span."""
OTEL_VISION_DENOISE_STEPS: Final = "OTEL_VISION_DENOISE_STEPS"
"""``spans`` (default), ``events`` or ``off``: per denoising step, a ``denoise_step`` span, a ``denoise_step`` event
on the ``denoise`` span, or nothing."""

SIGNALS: Final[tuple[Signal, ...]] = ("traces", "metrics", "logs")
SIGNAL_PATHS: Final[Mapping[Signal, str]] = {"traces": "/v1/traces", "metrics": "/v1/metrics", "logs": "/v1/logs"}
DEFAULT_ENDPOINTS: Final[Mapping[Protocol, str]] = {
    "grpc": "http://localhost:4317",
    "http/protobuf": "http://localhost:4318",
}
DEFAULT_TIMEOUT: Final = 10.0
DEFAULT_SAMPLER: Final = "parentbased_always_on"
SAMPLERS: Final = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
"""The built-in sampler names of the specification (and of the SDK's tracer provider)."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_LOG_LEVELS: Final = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_EXPORTERS: Final[tuple[ExporterKind, ...]] = ("otlp", "console", "none")
_TRACE_EXPORTERS: Final[tuple[ExporterKind, ...]] = ("otlp", "console", "waterfall", "none")
_METRIC_EXPORTERS: Final[tuple[ExporterKind, ...]] = ("otlp", "console", "none", "prometheus")
_PROTOCOLS: Final = {"grpc": "grpc", "http/protobuf": "http/protobuf", "http": "http/protobuf"}


@dataclass(frozen=True)
class Settings:
    """The resolved configuration of one ``configure()`` call."""

    service_name: str | None = None
    """``None`` leaves ``service.name`` to ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` / the SDK default."""
    resource_attributes: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    protocol: Protocol = "grpc"
    endpoint: str | None = None
    """The ``endpoint`` argument, if given (a base URL); `endpoints` holds what each exporter really uses."""
    headers: Mapping[str, str] | None = None
    traces_exporter: ExporterKind = "otlp"
    metrics_exporter: ExporterKind = "otlp"
    logs_exporter: ExporterKind = "otlp"
    prometheus_host: str = "127.0.0.1"
    prometheus_port: int = 9464
    sample_rate: float | None = None
    """The ``sample_rate`` argument; it wins over `sampler`."""
    sampler: str = DEFAULT_SAMPLER
    """A name from `SAMPLERS`, validated (an invalid ``OTEL_TRACES_SAMPLER`` leaves the default)."""
    sampler_arg: float = 1.0
    """The ratio of the ``*traceidratio`` samplers."""
    endpoints: Mapping[Signal, str] = field(default_factory=dict)
    """Per signal, the full URL its OTLP exporter sends to (with the HTTP signal path), and nothing for the others."""
    endpoint_sources: Mapping[Signal, str] = field(default_factory=dict)
    """Per signal, where its endpoint came from: ``argument``, a variable name or ``default``."""
    timeouts: Mapping[Signal, float] = field(default_factory=dict)
    """Per signal, seconds one export may take."""
    gpu: bool = True
    gpu_sample_interval: float = 1.0
    gpu_history: float = 300.0
    gpu_peak_memory: bool = True
    logs: bool = True
    log_level: int = 20
    nvtx: bool = False
    tail_sampling_ratio: float | None = None
    """``None``: tail sampling off; else the share of uneventful traces kept (errors, slow and throttled ones are
    always kept)."""
    tail_sampling_latency: Mapping[str, float] = field(default_factory=dict)
    """Seconds above which a trace counts as slow, by ``vision.operation`` (``*``: any other operation)."""
    disabled: bool = False
    problems: tuple[str, ...] = ()
    """One sentence per invalid environment variable, each naming the variable, the value and the default used."""
    invalid_variables: tuple[str, ...] = ()
    """The names of those variables (kept out of the SDK's sight while the pipeline is built)."""

    def endpoint_for(self, signal: Signal) -> str:
        """The URL the OTLP exporter of ``signal`` sends to."""
        return self.endpoints.get(signal) or _signal_url(DEFAULT_ENDPOINTS[self.protocol], self.protocol, signal)

    def timeout_for(self, signal: Signal) -> float:
        """Seconds one export of ``signal`` may take."""
        return self.timeouts.get(signal, DEFAULT_TIMEOUT)


def redact_endpoint(url: str) -> str:
    """``url`` without its user-info (``https://user:secret@host`` -> ``https://***@host``) and without query
    values, for anything printed or logged.

    ```python
    redact_endpoint("https://tenant:s3cret@otlp.example.com:4318/v1/traces?token=abc")
    # 'https://***@otlp.example.com:4318/v1/traces?token=***'
    ```
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(f"{pair.split('=', 1)[0]}=***" for pair in parts.query.split("&") if pair) if parts.query else ""
    if "://" not in url:  # host:port without a scheme: only user-info can hide in it
        return "***@" + url.rsplit("@", 1)[1] if "@" in url else url
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


class _Problems:
    """Collects the invalid environment variables met while resolving."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.names: list[str] = []

    def add(self, name: str, raw: str, why: str, default: object) -> None:
        shown = redact_endpoint(raw) if "ENDPOINT" in name else raw
        self.messages.append(f"{name}={shown!r} is invalid ({why}); using the default {default}")
        self.names.append(name)


def _env(name: str, environ: Mapping[str, str]) -> str | None:
    value = environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def _parse_bool(raw: str) -> bool | None:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return None


def _seconds(raw: str | float, minimum: float) -> float | None:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= minimum else None


def _bool_setting(
    arg_name: str, arg: bool | None, env_name: str, environ: Mapping[str, str], default: bool, problems: _Problems
) -> bool:
    if arg is not None:
        if not isinstance(arg, bool):
            raise TypeError(f"{arg_name}={arg!r} must be True or False")
        return arg
    raw = _env(env_name, environ)
    if raw is None:
        return default
    value = _parse_bool(raw)
    if value is None:
        problems.add(env_name, raw, "not a boolean: use true/false, 1/0, yes/no or on/off", str(default).lower())
        return default
    return value


def _seconds_setting(
    arg_name: str,
    arg: float | None,
    env_name: str,
    environ: Mapping[str, str],
    default: float,
    minimum: float,
    problems: _Problems,
) -> float:
    if arg is not None:
        if isinstance(arg, bool) or not isinstance(arg, int | float):
            raise TypeError(f"{arg_name}={arg!r} must be a number of seconds")
        value = _seconds(arg, minimum)
        if value is None:
            raise ValueError(f"{arg_name}={arg!r} must be a finite number of seconds >= {minimum}")
        return value
    raw = _env(env_name, environ)
    if raw is None:
        return default
    parsed = _seconds(raw, minimum)
    if parsed is None:
        problems.add(env_name, raw, f"not a finite number of seconds >= {minimum}", f"{default:g}")
        return default
    return parsed


def _protocol(arg: str | None, environ: Mapping[str, str], problems: _Problems) -> Protocol:
    if arg is not None:
        if not isinstance(arg, str):
            raise TypeError(f"protocol={arg!r} must be a string: 'grpc' or 'http/protobuf'")
        if arg.lower() not in _PROTOCOLS:
            raise ValueError(f"protocol={arg!r} is not an OTLP protocol: use 'grpc' or 'http/protobuf'")
        return _PROTOCOLS[arg.lower()]  # type: ignore[return-value]  # the table's values are Protocol literals
    raw = _env(OTEL_EXPORTER_OTLP_PROTOCOL, environ)
    if raw is None:
        return "grpc"
    if raw.lower() not in _PROTOCOLS:
        problems.add(OTEL_EXPORTER_OTLP_PROTOCOL, raw, "use 'grpc' or 'http/protobuf'", "grpc")
        return "grpc"
    return _PROTOCOLS[raw.lower()]  # type: ignore[return-value]  # the table's values are Protocol literals


def _exporter(
    arg: str | None, env_name: str, environ: Mapping[str, str], allowed: tuple[ExporterKind, ...], problems: _Problems
) -> ExporterKind:
    if arg is not None:
        if arg == "waterfall":
            # The terminal waterfall is a trace view: with it, metrics and logs are not exported.
            return "waterfall" if "waterfall" in allowed else "none"
        return arg  # type: ignore[return-value]  # validated by resolve() against _TRACE_EXPORTERS
    raw = _env(env_name, environ)
    if raw is None:
        return "otlp"
    # The standard variables allow a comma-separated list; we build one exporter per signal and take the first.
    first = raw.split(",")[0].strip().lower()
    for kind in allowed:
        if first == kind:
            return kind
    problems.add(env_name, raw, f"otel_vision supports {', '.join(allowed)}", "otlp")
    return "otlp"


def _log_level(arg: int | str | None, environ: Mapping[str, str], problems: _Problems) -> int:
    if arg is not None:
        if isinstance(arg, bool) or not isinstance(arg, int | str):
            raise TypeError(f"log_level={arg!r} must be a level name such as 'INFO' or a number")
        if isinstance(arg, int):
            if arg < 0:
                raise ValueError(f"log_level={arg!r} must be a logging level >= 0")
            return arg
        level = _LOG_LEVELS.get(arg.upper())
        if level is None:
            raise ValueError(f"log_level={arg!r} is not a logging level: use one of {', '.join(_LOG_LEVELS)}")
        return level
    raw = _env(OTEL_VISION_LOG_LEVEL, environ)
    if raw is None:
        return 20
    if raw.isdigit():
        return int(raw)
    level = _LOG_LEVELS.get(raw.upper())
    if level is None:
        problems.add(OTEL_VISION_LOG_LEVEL, raw, f"use one of {', '.join(_LOG_LEVELS)}", "INFO")
        return 20
    return level


def _url_problem(url: str) -> str | None:
    """Why ``url`` cannot be an OTLP endpoint, or ``None`` when it can."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError on a port that is not a number
    except ValueError:
        return "not a URL"
    if parts.scheme not in ("http", "https"):
        return "needs a scheme: http:// (plain text) or https:// (TLS), e.g. http://127.0.0.1:4317"
    if not parts.hostname:
        return "no host"
    return None


def _signal_url(base: str, protocol: Protocol, signal: Signal) -> str:
    # OTLP/HTTP appends the signal path to the generic endpoint; gRPC uses the base as it is.
    return base.rstrip("/") + SIGNAL_PATHS[signal] if protocol == "http/protobuf" else base


def _endpoints(
    endpoint: str | None, protocol: Protocol, environ: Mapping[str, str], problems: _Problems
) -> tuple[dict[Signal, str], dict[Signal, str]]:
    urls: dict[Signal, str] = {}
    sources: dict[Signal, str] = {}
    generic_raw = _env(OTEL_EXPORTER_OTLP_ENDPOINT, environ)
    generic = None
    if generic_raw is not None:
        why = _url_problem(generic_raw)
        if why is None:
            generic = generic_raw
        else:
            problems.add(OTEL_EXPORTER_OTLP_ENDPOINT, generic_raw, why, DEFAULT_ENDPOINTS[protocol])
    for signal in SIGNALS:
        name = f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
        specific = _env(name, environ)
        if endpoint is not None:
            urls[signal], sources[signal] = _signal_url(endpoint, protocol, signal), "argument"
            continue
        if specific is not None:
            why = _url_problem(specific)
            if why is None:
                urls[signal], sources[signal] = specific, name  # per-signal URLs are used as they are
                continue
            problems.add(name, specific, why, "from OTEL_EXPORTER_OTLP_ENDPOINT or the default")
        if generic is not None:
            urls[signal], sources[signal] = _signal_url(generic, protocol, signal), OTEL_EXPORTER_OTLP_ENDPOINT
        else:
            urls[signal], sources[signal] = _signal_url(DEFAULT_ENDPOINTS[protocol], protocol, signal), "default"
    return urls, sources


def _timeouts(environ: Mapping[str, str], problems: _Problems) -> dict[Signal, float]:
    why = "not a number of seconds > 0"
    generic = DEFAULT_TIMEOUT
    raw = _env(OTEL_EXPORTER_OTLP_TIMEOUT, environ)
    if raw is not None:
        value = _seconds(raw, 0.0)
        if value is None or value == 0:
            problems.add(OTEL_EXPORTER_OTLP_TIMEOUT, raw, why, f"{DEFAULT_TIMEOUT:g} s")
        else:
            generic = value
    timeouts: dict[Signal, float] = {}
    for signal in SIGNALS:
        name = f"OTEL_EXPORTER_OTLP_{signal.upper()}_TIMEOUT"
        specific = _env(name, environ)
        timeouts[signal] = generic
        if specific is not None:
            value = _seconds(specific, 0.0)
            if value is None or value == 0:
                problems.add(name, specific, why, f"{generic:g} s")
            else:
                timeouts[signal] = value
    return timeouts


def _sampler(environ: Mapping[str, str], problems: _Problems) -> tuple[str, float]:
    name = DEFAULT_SAMPLER
    raw = _env(OTEL_TRACES_SAMPLER, environ)
    if raw is not None:
        if raw.lower() in SAMPLERS:
            name = raw.lower()
        else:
            problems.add(OTEL_TRACES_SAMPLER, raw, f"use one of {', '.join(SAMPLERS)}", DEFAULT_SAMPLER)
    arg = 1.0
    raw_arg = _env(OTEL_TRACES_SAMPLER_ARG, environ)
    if raw_arg is not None and name.endswith("traceidratio"):
        value = _seconds(raw_arg, 0.0)
        if value is None or value > 1.0:
            problems.add(OTEL_TRACES_SAMPLER_ARG, raw_arg, "a ratio between 0 and 1", "1.0")
        else:
            arg = value
    return name, arg


def _check_mapping(
    name: str, value: object, example: str, values: tuple[type, ...], what: str, secret: bool = False
) -> dict[str, Any]:
    """``value`` as a dict, or a ``TypeError`` naming ``name``; with ``secret`` the values are never shown."""
    if not isinstance(value, Mapping):
        shown = "" if secret else f" {value!r}"
        raise TypeError(f"{name} must be a mapping such as {example}, got {type(value).__name__}{shown}")
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"{name}: key {key!r} must be a non-empty string")
        if not isinstance(item, values):
            shown = f"of type {type(item).__name__}" if secret else repr(item)
            raise TypeError(f"{name}[{key!r}] is {shown}: it must be {what}")
    return dict(value)


def resolve(
    *,
    service_name: str | None = None,
    resource_attributes: Mapping[str, str | int | float | bool] | None = None,
    protocol: str | None = None,
    endpoint: str | None = None,
    headers: Mapping[str, str] | None = None,
    exporter: str | None = None,
    sample_rate: float | None = None,
    gpu: bool | None = None,
    gpu_sample_interval: float | None = None,
    gpu_history: float | None = None,
    gpu_peak_memory: bool | None = None,
    logs: bool | None = None,
    log_level: int | str | None = None,
    nvtx: bool | None = None,
    tail_sampling_ratio: float | None = None,
    tail_sampling_latency: float | Mapping[str, float] | None = None,
    environ: Mapping[str, str] | None = None,
    warn: bool = True,
) -> Settings:
    """Resolve arguments against the environment into validated `Settings`.

    A bad argument raises ``TypeError`` (wrong type) or ``ValueError`` (wrong value) naming it. A bad environment
    variable is logged as one warning on the ``otel_vision`` logger (unless ``warn=False``) and replaced by its
    default; `Settings.problems` lists them.
    """
    env = os.environ if environ is None else environ
    problems = _Problems()
    if service_name is not None:
        if not isinstance(service_name, str):
            raise TypeError(f"service_name={service_name!r} must be a string")
        if not service_name.strip():
            raise ValueError(f"service_name={service_name!r} must not be empty")
    if endpoint is not None:
        if not isinstance(endpoint, str):
            raise TypeError(f"endpoint={endpoint!r} must be a URL string such as 'http://127.0.0.1:4317'")
        why = _url_problem(endpoint)
        if why is not None:
            raise ValueError(f"endpoint={redact_endpoint(endpoint)!r} {why}")
    if headers is not None:
        headers = _check_mapping(
            "headers", headers, "{'authorization': 'Bearer <token>'}", (str,), "a string", secret=True
        )
    if sample_rate is not None:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | float):
            raise TypeError(f"sample_rate={sample_rate!r} must be a number between 0 and 1")
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate={sample_rate!r} must be between 0 and 1")
    attrs = (
        _check_mapping(
            "resource_attributes",
            resource_attributes,
            "{'deployment.environment.name': 'prod'}",
            (str, int, float, bool),
            "a str, int, float or bool",
        )
        if resource_attributes is not None
        else {}
    )
    if exporter is not None:
        if not isinstance(exporter, str):
            raise TypeError(f"exporter={exporter!r} must be a string: one of {', '.join(_TRACE_EXPORTERS)}")
        if exporter not in _TRACE_EXPORTERS:
            raise ValueError(f"exporter={exporter!r} is not supported: use one of {', '.join(_TRACE_EXPORTERS)}")

    disabled = False
    disabled_raw = _env(OTEL_SDK_DISABLED, env)
    if disabled_raw is not None:
        parsed = _parse_bool(disabled_raw)
        if parsed is None:
            problems.add(OTEL_SDK_DISABLED, disabled_raw, "not a boolean: use true or false", "false")
        else:
            disabled = parsed
    port = 9464
    port_raw = _env(OTEL_EXPORTER_PROMETHEUS_PORT, env)
    if port_raw is not None:
        if port_raw.isdigit() and 0 < int(port_raw) < 65536:
            port = int(port_raw)
        else:
            problems.add(OTEL_EXPORTER_PROMETHEUS_PORT, port_raw, "not a TCP port", "9464")
    resolved_protocol = _protocol(protocol, env, problems)
    endpoints, sources = _endpoints(endpoint, resolved_protocol, env, problems)
    sampler, sampler_arg = _sampler(env, problems)
    tail_ratio, tail_latency = _tail_sampling(tail_sampling_ratio, tail_sampling_latency, env, problems)
    traces_exporter = _exporter(exporter, OTEL_TRACES_EXPORTER, env, _TRACE_EXPORTERS, problems)
    metrics_exporter = _exporter(exporter, OTEL_METRICS_EXPORTER, env, _METRIC_EXPORTERS, problems)
    logs_exporter = _exporter(exporter, OTEL_LOGS_EXPORTER, env, _EXPORTERS, problems)
    if (
        traces_exporter == "waterfall"
        and endpoint is None
        and not any(_env(f"OTEL_EXPORTER_OTLP_{s}ENDPOINT", env) for s in ("", "METRICS_", "LOGS_"))
    ):
        # OTEL_TRACES_EXPORTER=waterfall with no collector configured: a local view, not OTLP to localhost for the
        # other two signals (which would only warn that nothing listens there), unless their variables say so.
        if _env(OTEL_METRICS_EXPORTER, env) is None:
            metrics_exporter = "none"
        if _env(OTEL_LOGS_EXPORTER, env) is None:
            logs_exporter = "none"
    settings = Settings(
        service_name=service_name,
        resource_attributes=attrs,
        protocol=resolved_protocol,
        endpoint=endpoint,
        headers=headers,
        traces_exporter=traces_exporter,
        metrics_exporter=metrics_exporter,
        logs_exporter=logs_exporter,
        prometheus_host=_env(OTEL_EXPORTER_PROMETHEUS_HOST, env) or "127.0.0.1",
        prometheus_port=port,
        sample_rate=float(sample_rate) if sample_rate is not None else None,
        sampler=sampler,
        sampler_arg=sampler_arg,
        endpoints=endpoints,
        endpoint_sources=sources,
        timeouts=_timeouts(env, problems),
        gpu=_bool_setting("gpu", gpu, OTEL_VISION_GPU, env, True, problems),
        gpu_sample_interval=_seconds_setting(
            "gpu_sample_interval", gpu_sample_interval, OTEL_VISION_GPU_SAMPLE_INTERVAL, env, 1.0, 0.05, problems
        ),
        gpu_history=_seconds_setting("gpu_history", gpu_history, OTEL_VISION_GPU_HISTORY, env, 300.0, 1.0, problems),
        gpu_peak_memory=_bool_setting(
            "gpu_peak_memory", gpu_peak_memory, OTEL_VISION_GPU_PEAK_MEMORY, env, True, problems
        ),
        logs=_bool_setting("logs", logs, OTEL_VISION_LOGS, env, True, problems),
        log_level=_log_level(log_level, env, problems),
        nvtx=_bool_setting("nvtx", nvtx, OTEL_VISION_NVTX, env, False, problems),
        tail_sampling_ratio=tail_ratio,
        tail_sampling_latency=tail_latency,
        disabled=disabled,
        problems=tuple(problems.messages),
        invalid_variables=tuple(problems.names),
    )
    if warn:
        for message in settings.problems:
            logger.warning("otel_vision: %s", message)
    return settings


def _latency_table(raw: str) -> dict[str, float] | None:
    """``0.5`` (every operation) or ``predict=0.2,pipeline=5,*=1``; ``None`` when malformed."""
    if "=" not in raw:
        seconds = _seconds(raw, 0.0)
        return None if seconds is None else {"*": seconds}
    table: dict[str, float] = {}
    for item in raw.split(","):
        name, sep, value = item.partition("=")
        seconds = _seconds(value.strip(), 0.0) if sep else None
        if seconds is None or not name.strip():
            return None
        table[name.strip()] = seconds
    return table


def _tail_sampling(
    ratio: float | None,
    latency: float | Mapping[str, float] | None,
    environ: Mapping[str, str],
    problems: _Problems,
) -> tuple[float | None, dict[str, float]]:
    """Tail sampling is on when a ratio or a latency threshold is given (argument, else variable); with a threshold
    alone the ratio is 0: keep only the errors, slow and throttled traces."""
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, int | float):
            raise TypeError(f"tail_sampling_ratio={ratio!r} must be a number between 0 and 1")
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"tail_sampling_ratio={ratio!r} must be between 0 and 1")
    else:
        raw = _env(OTEL_VISION_TAIL_SAMPLING_RATIO, environ)
        if raw is not None:
            try:
                parsed = float(raw)
            except ValueError:
                parsed = -1.0
            if 0.0 <= parsed <= 1.0:
                ratio = parsed
            else:
                default = (
                    "0 (a latency threshold is set)"
                    if latency is not None or _env(OTEL_VISION_TAIL_SAMPLING_LATENCY, environ)
                    else "off"
                )
                problems.add(OTEL_VISION_TAIL_SAMPLING_RATIO, raw, "not a number between 0 and 1", default)
    table: dict[str, float] = {}
    if latency is not None:
        if isinstance(latency, Mapping):
            for name, seconds in latency.items():
                if not isinstance(name, str) or isinstance(seconds, bool) or not isinstance(seconds, int | float):
                    raise TypeError(
                        f"tail_sampling_latency[{name!r}]={seconds!r}: map operation names to seconds, "
                        "e.g. {'predict': 0.2, '*': 1.0}"
                    )
                if _seconds(seconds, 0.0) is None:
                    raise ValueError(f"tail_sampling_latency[{name!r}]={seconds!r} must be a number of seconds >= 0")
                table[name] = float(seconds)
        elif isinstance(latency, bool) or not isinstance(latency, int | float):
            raise TypeError(f"tail_sampling_latency={latency!r} must be seconds or a mapping operation -> seconds")
        elif _seconds(latency, 0.0) is None:
            raise ValueError(f"tail_sampling_latency={latency!r} must be a number of seconds >= 0")
        else:
            table["*"] = float(latency)
    else:
        raw = _env(OTEL_VISION_TAIL_SAMPLING_LATENCY, environ)
        if raw is not None:
            parsed_table = _latency_table(raw)
            if parsed_table is None:
                problems.add(
                    OTEL_VISION_TAIL_SAMPLING_LATENCY, raw, "not seconds nor 'operation=seconds,...'", "no threshold"
                )
            else:
                table = parsed_table
    if ratio is None and table:
        ratio = 0.0
    return (float(ratio) if ratio is not None else None), table


def check_extensions(span_processors: object, metric_readers: object) -> None:
    """Raise ``TypeError`` when ``additional_span_processors`` or ``additional_metric_readers`` hold anything but
    span processors and metric readers, before anything is built (the SDK would fail later, on the first span)."""

    def items(name: str, value: object, what: str) -> Sequence[Any]:
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise TypeError(f"{name} must be a list of {what}, got {type(value).__name__} {value!r}")
        return value

    for index, processor in enumerate(items("additional_span_processors", span_processors, "span processors")):
        missing = [
            m for m in ("on_start", "on_end", "shutdown", "force_flush") if not callable(getattr(processor, m, None))
        ]
        if missing:
            raise TypeError(
                f"additional_span_processors[{index}]={processor!r} is not a span processor (no {', '.join(missing)}):"
                " pass e.g. opentelemetry.sdk.trace.export.BatchSpanProcessor(exporter)"
            )
    readers = items("additional_metric_readers", metric_readers, "metric readers")
    if not readers:
        return
    from opentelemetry.sdk.metrics.export import MetricReader  # 20 ms of imports: only when there is one to check

    for index, reader in enumerate(readers):
        if not isinstance(reader, MetricReader):
            raise TypeError(
                f"additional_metric_readers[{index}]={reader!r} is not an opentelemetry.sdk.metrics.export."
                "MetricReader: pass e.g. PeriodicExportingMetricReader(exporter)"
            )


@contextmanager
def hidden_invalid_variables(settings: Settings) -> Iterator[None]:
    """Keep the invalid variables of ``settings`` out of ``os.environ`` while the SDK objects are built.

    The SDK's exporters and tracer provider read some variables themselves, and some of them fail on a bad value
    (a per-signal gRPC timeout of ``ten`` raises deep inside the exporter). Our validated values are passed to them
    explicitly; hiding the invalid originals makes them behave exactly as unset, as the specification asks.
    """
    saved = {name: os.environ.pop(name) for name in settings.invalid_variables if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def resolve_capture_prompts(arg: bool | None, environ: Mapping[str, str]) -> bool:
    """Prompt capture: the ``capture_prompts`` argument, else ``OTEL_VISION_CAPTURE_PROMPTS``, else off."""
    problems = _Problems()
    value = _bool_setting("capture_prompts", arg, OTEL_VISION_CAPTURE_PROMPTS, environ, False, problems)
    for message in problems.messages:
        logger.warning("otel_vision: %s", message)
    return value


def resolve_denoise_steps(arg: str | None, environ: Mapping[str, str]) -> str:
    """Per-step diffusion telemetry: the ``denoise_steps`` argument (a bad one raises), else
    ``OTEL_VISION_DENOISE_STEPS`` (a bad one is a warning, and the default), else ``spans``."""
    allowed = ("spans", "events", "off")
    if arg is not None:
        if not isinstance(arg, str) or arg.strip().lower() not in allowed:
            error = TypeError if not isinstance(arg, str) else ValueError
            raise error(f"denoise_steps={arg!r} is not supported: use one of {', '.join(repr(v) for v in allowed)}")
        return arg.strip().lower()
    raw = _env(OTEL_VISION_DENOISE_STEPS, environ)
    if raw is None:
        return "spans"
    if raw.lower() not in allowed:
        problems = _Problems()
        problems.add(OTEL_VISION_DENOISE_STEPS, raw, f"use one of {', '.join(allowed)}", "spans")
        for message in problems.messages:
            logger.warning("otel_vision: %s", message)
        return "spans"
    return raw.lower()
