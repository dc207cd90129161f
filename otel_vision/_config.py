"""Settings: explicit argument > environment variable > default, resolved and validated once.

Standard ``OTEL_*`` variables (endpoint, headers, timeout, service name, resource attributes, sampler, export
intervals) are left to the OpenTelemetry SDK, which reads them itself. This module reads only our own
``OTEL_VISION_*`` variables and the few standard ones that decide *which* SDK objects to build (protocol, exporter
choice, ``OTEL_SDK_DISABLED``), and it rejects a bad value with a ``ValueError`` naming the variable or argument.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

Protocol = Literal["grpc", "http/protobuf"]
ExporterKind = Literal["otlp", "console", "none", "prometheus"]

OTEL_SDK_DISABLED: Final = "OTEL_SDK_DISABLED"
"""Standard: ``true`` turns every signal off; ``configure()`` then returns a handle that does nothing."""
OTEL_EXPORTER_OTLP_PROTOCOL: Final = "OTEL_EXPORTER_OTLP_PROTOCOL"
"""Standard: ``grpc`` (our default) or ``http/protobuf``."""
OTEL_TRACES_EXPORTER: Final = "OTEL_TRACES_EXPORTER"
"""Standard: ``otlp`` (default), ``console`` or ``none`` for spans."""
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
OTEL_VISION_CAPTURE_PROMPTS: Final = "OTEL_VISION_CAPTURE_PROMPTS"
"""``false`` (default) or ``true``: record diffusion prompts as ``vision.prompt`` on the pipeline's root span."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_LOG_LEVELS: Final = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_EXPORTERS: Final[tuple[ExporterKind, ...]] = ("otlp", "console", "none")
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
    """``None`` leaves the endpoint to the exporter, which reads ``OTEL_EXPORTER_OTLP_*ENDPOINT``."""
    headers: Mapping[str, str] | None = None
    traces_exporter: ExporterKind = "otlp"
    metrics_exporter: ExporterKind = "otlp"
    logs_exporter: ExporterKind = "otlp"
    prometheus_host: str = "127.0.0.1"
    prometheus_port: int = 9464
    sample_rate: float | None = None
    """``None`` leaves sampling to ``OTEL_TRACES_SAMPLER``; else a parent-based trace-id ratio."""
    gpu: bool = True
    gpu_sample_interval: float = 1.0
    gpu_history: float = 300.0
    gpu_peak_memory: bool = True
    logs: bool = True
    log_level: int = 20
    nvtx: bool = False
    disabled: bool = False


def _env(name: str, environ: Mapping[str, str]) -> str | None:
    value = environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def _source(arg_name: str, arg: object, env_name: str, environ: Mapping[str, str]) -> tuple[str, Any]:
    """The winning raw value and where it came from, for error messages: the argument, else the variable."""
    return (arg_name, arg) if arg is not None else (env_name, _env(env_name, environ))


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean: use one of true/false, 1/0, yes/no, on/off")


def _parse_seconds(name: str, raw: str | float, minimum: float) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name}={raw!r} must be a finite number of seconds >= {minimum}")
    return value


def _bool_setting(arg_name: str, arg: bool | None, env_name: str, environ: Mapping[str, str], default: bool) -> bool:
    if arg is not None:
        if not isinstance(arg, bool):
            raise ValueError(f"{arg_name}={arg!r} must be True or False")
        return arg
    raw = _env(env_name, environ)
    return default if raw is None else _parse_bool(env_name, raw)


def _seconds_setting(
    arg_name: str, arg: float | None, env_name: str, environ: Mapping[str, str], default: float, minimum: float
) -> float:
    if arg is not None:
        return _parse_seconds(arg_name, arg, minimum)
    raw = _env(env_name, environ)
    return default if raw is None else _parse_seconds(env_name, raw, minimum)


def _protocol(arg: str | None, environ: Mapping[str, str]) -> Protocol:
    source, raw = (
        ("protocol", arg)
        if arg is not None
        else (OTEL_EXPORTER_OTLP_PROTOCOL, _env(OTEL_EXPORTER_OTLP_PROTOCOL, environ))
    )
    if raw is None:
        return "grpc"
    try:
        return _PROTOCOLS[raw.lower()]  # type: ignore[return-value]  # the table's values are Protocol literals
    except KeyError:
        raise ValueError(f"{source}={raw!r} is not an OTLP protocol: use 'grpc' or 'http/protobuf'") from None


def _exporter(
    arg: str | None, env_name: str, environ: Mapping[str, str], allowed: tuple[ExporterKind, ...] = _EXPORTERS
) -> ExporterKind:
    source, raw = _source("exporter", arg, env_name, environ)
    if raw is None:
        return "otlp"
    # The standard variables allow a comma-separated list; we build one exporter per signal and take the first.
    first = str(raw).split(",")[0].strip().lower()
    for kind in allowed:
        if first == kind:
            return kind
    raise ValueError(f"{source}={raw!r} is not supported: use {', '.join(repr(k) for k in allowed)}")


def _log_level(arg: int | str | None, environ: Mapping[str, str]) -> int:
    source, raw = (
        ("log_level", arg) if arg is not None else (OTEL_VISION_LOG_LEVEL, _env(OTEL_VISION_LOG_LEVEL, environ))
    )
    if raw is None:
        return 20
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 0:
            raise ValueError(f"{source}={raw!r} must be a logging level >= 0")
        return raw
    level = _LOG_LEVELS.get(str(raw).upper())
    if level is None:
        raise ValueError(f"{source}={raw!r} is not a logging level: use one of {', '.join(_LOG_LEVELS)}")
    return level


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
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve arguments against the environment into validated `Settings`; raise ``ValueError`` on a bad value."""
    env = os.environ if environ is None else environ
    if service_name is not None and (not isinstance(service_name, str) or not service_name.strip()):
        raise ValueError(f"service_name={service_name!r} must be a non-empty string")
    if endpoint is not None and (not isinstance(endpoint, str) or "://" not in endpoint):
        raise ValueError(f"endpoint={endpoint!r} must be a URL such as 'http://127.0.0.1:4317'")
    if headers is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ValueError("headers must map str to str")
    if sample_rate is not None and (
        isinstance(sample_rate, bool) or not isinstance(sample_rate, int | float) or not 0.0 <= sample_rate <= 1.0
    ):
        raise ValueError(f"sample_rate={sample_rate!r} must be a number between 0 and 1")
    attrs = dict(resource_attributes or {})
    for key, value in attrs.items():
        if not isinstance(key, str) or not isinstance(value, str | int | float | bool):
            raise ValueError(f"resource_attributes[{key!r}]={value!r}: keys must be str, values str/int/float/bool")
    disabled_raw = _env(OTEL_SDK_DISABLED, env)
    port_raw = _env(OTEL_EXPORTER_PROMETHEUS_PORT, env) or "9464"
    if not port_raw.isdigit() or not 0 < int(port_raw) < 65536:
        raise ValueError(f"{OTEL_EXPORTER_PROMETHEUS_PORT}={port_raw!r} is not a TCP port")
    return Settings(
        service_name=service_name,
        resource_attributes=attrs,
        protocol=_protocol(protocol, env),
        endpoint=endpoint,
        headers=dict(headers) if headers is not None else None,
        traces_exporter=_exporter(exporter, OTEL_TRACES_EXPORTER, env),
        metrics_exporter=_exporter(exporter, OTEL_METRICS_EXPORTER, env, _METRIC_EXPORTERS),
        logs_exporter=_exporter(exporter, OTEL_LOGS_EXPORTER, env),
        prometheus_host=_env(OTEL_EXPORTER_PROMETHEUS_HOST, env) or "127.0.0.1",
        prometheus_port=int(port_raw),
        sample_rate=float(sample_rate) if sample_rate is not None else None,
        gpu=_bool_setting("gpu", gpu, OTEL_VISION_GPU, env, True),
        gpu_sample_interval=_seconds_setting(
            "gpu_sample_interval", gpu_sample_interval, OTEL_VISION_GPU_SAMPLE_INTERVAL, env, 1.0, 0.05
        ),
        gpu_history=_seconds_setting("gpu_history", gpu_history, OTEL_VISION_GPU_HISTORY, env, 300.0, 1.0),
        gpu_peak_memory=_bool_setting("gpu_peak_memory", gpu_peak_memory, OTEL_VISION_GPU_PEAK_MEMORY, env, True),
        logs=_bool_setting("logs", logs, OTEL_VISION_LOGS, env, True),
        log_level=_log_level(log_level, env),
        nvtx=_bool_setting("nvtx", nvtx, OTEL_VISION_NVTX, env, False),
        disabled=False if disabled_raw is None else _parse_bool(OTEL_SDK_DISABLED, disabled_raw),
    )


def resolve_capture_prompts(arg: bool | None, environ: Mapping[str, str]) -> bool:
    """Prompt capture: the ``capture_prompts`` argument, else ``OTEL_VISION_CAPTURE_PROMPTS``, else off."""
    return _bool_setting("capture_prompts", arg, OTEL_VISION_CAPTURE_PROMPTS, environ, False)
