"""`otel-vision doctor`: what this machine and configuration give otel_vision, and why not when they don't."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from otel_vision import _config
from otel_vision._version import __version__
from otel_vision.gpu import GpuUnavailable, PynvmlBackend

OPTIONAL = ("torch", "torchvision", "ultralytics", "diffusers", "transformers", "opentelemetry-instrumentation")
_DEFAULT_ENDPOINT = {"grpc": "http://localhost:4317", "http/protobuf": "http://localhost:4318"}
_SIGNAL_PATHS = {"traces": "/v1/traces", "metrics": "/v1/metrics", "logs": "/v1/logs"}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpus() -> dict[str, Any]:
    try:
        backend = PynvmlBackend()
    except GpuUnavailable as exc:
        return {"nvml": False, "reason": str(exc), "devices": []}
    try:
        devices = backend.devices()
    except GpuUnavailable as exc:
        return {"nvml": False, "reason": str(exc), "devices": []}
    finally:
        backend.close()
    return {
        "nvml": True,
        "reason": None,
        "devices": [
            {
                "index": d.index,
                "name": d.name,
                "uuid": d.uuid,
                "driver": d.driver_version,
                "memory_gib": round(d.memory_total / 2**30, 1),
                "mig": d.mig,
            }
            for d in devices
        ],
    }


def _torch() -> dict[str, Any]:
    if _version("torch") is None:
        return {"installed": False}
    try:
        import torch
    except Exception as exc:  # a broken install is worth reporting, not crashing on
        return {"installed": True, "error": f"import failed: {exc}"}
    info: dict[str, Any] = {"installed": True, "version": torch.__version__, "cuda_build": torch.version.cuda}
    try:
        info["cuda_available"] = bool(torch.cuda.is_available())
        info["device_count"] = torch.cuda.device_count() if info["cuda_available"] else 0
    except Exception as exc:  # CUDA init errors (driver mismatch) are exactly what doctor is for
        info["cuda_available"] = False
        info["cuda_error"] = str(exc)
    return info


def _endpoint(settings: _config.Settings, environ: Mapping[str, str], signal: str) -> tuple[str, str]:
    """The endpoint the exporter of one signal will use, and where that value came from."""
    if settings.endpoint is not None:
        base = settings.endpoint.rstrip("/")
        return (base + _SIGNAL_PATHS[signal] if settings.protocol == "http/protobuf" else base), "argument"
    specific = environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    if specific:
        return specific, f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
    generic = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    base, source = (
        (generic, "OTEL_EXPORTER_OTLP_ENDPOINT") if generic else (_DEFAULT_ENDPOINT[settings.protocol], "default")
    )
    base = base.rstrip("/")
    return (base + _SIGNAL_PATHS[signal] if settings.protocol == "http/protobuf" else base), source


def _reachable(url: str, timeout: float = 2.0) -> str:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname or "localhost"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return f"yes ({host}:{port} accepts connections)"
    except OSError as exc:
        return f"no ({host}:{port}: {exc.strerror or exc})"


def collect(environ: Mapping[str, str] | None = None, check_endpoint: bool = True) -> dict[str, Any]:
    """Everything doctor reports, as data; ``config_error`` is set when the configuration is invalid."""
    env = os.environ if environ is None else environ
    report: dict[str, Any] = {
        "otel_vision": __version__,
        "python": platform.python_version(),
        "opentelemetry_sdk": _version("opentelemetry-sdk"),
        "gpu": _gpus(),
        "torch": _torch(),
        "optional": {name: _version(name) for name in OPTIONAL},
        "config_error": None,
    }
    try:
        settings = _config.resolve(environ=env)
    except ValueError as exc:
        report["config_error"] = str(exc)
        return report
    exporters = {
        "traces": settings.traces_exporter,
        "metrics": settings.metrics_exporter,
        "logs": settings.logs_exporter,
    }
    config: dict[str, Any] = {
        "disabled": settings.disabled,
        "protocol": settings.protocol,
        "exporters": exporters,
        "service_name": env.get("OTEL_SERVICE_NAME") or "(SDK default: unknown_service:python)",
        "resource_attributes": env.get("OTEL_RESOURCE_ATTRIBUTES", ""),
        "sampler": env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on (default)"),
        "sampler_arg": env.get("OTEL_TRACES_SAMPLER_ARG"),
        # Header values are credentials: show the names only.
        "header_names": sorted(
            h.split("=", 1)[0].strip() for h in env.get("OTEL_EXPORTER_OTLP_HEADERS", "").split(",") if "=" in h
        ),
        "gpu_telemetry": settings.gpu,
        "gpu_sample_interval_s": settings.gpu_sample_interval,
        "logs": settings.logs,
        "endpoints": {},
    }
    for signal, kind in exporters.items():
        if kind == "otlp":
            url, source = _endpoint(settings, env, signal)
            entry = {"url": url, "source": source}
            if check_endpoint:
                entry["reachable"] = _reachable(url)
            config["endpoints"][signal] = entry
    report["config"] = config
    return report


def render(report: Mapping[str, Any]) -> str:
    """The human-readable doctor report."""
    lines = [
        f"otel-vision {report['otel_vision']}  (Python {report['python']}, opentelemetry-sdk "
        f"{report['opentelemetry_sdk']})",
        "",
        "GPUs (NVML)",
    ]
    gpu = report["gpu"]
    if not gpu["nvml"]:
        lines.append(f"  NVML not usable: {gpu['reason']}  -> GPU metrics and gpu.utilization are off")
    for d in gpu["devices"]:
        mig = "  MIG on: no device utilization" if d["mig"] else ""
        lines.append(f"  [{d['index']}] {d['name']}  {d['uuid']}  driver {d['driver']}  {d['memory_gib']} GiB{mig}")
    torch = report["torch"]
    lines += ["", "torch"]
    if not torch["installed"]:
        lines.append(
            "  not installed -> no CUDA-event timing or allocator attributes (pip install 'otel-vision[torch]')"
        )
    elif "error" in torch:
        lines.append(f"  {torch['error']}")
    else:
        cuda = (
            "yes"
            if torch.get("cuda_available")
            else f"no{' (' + torch['cuda_error'] + ')' if 'cuda_error' in torch else ''}"
        )
        lines.append(f"  torch {torch['version']} (CUDA build {torch['cuda_build']}); CUDA available: {cuda}")
    lines += ["", "optional libraries"]
    for name, version in report["optional"].items():
        lines.append(f"  {name:<32} {version or 'not installed'}")
    lines += ["", "configuration"]
    if report["config_error"]:
        lines.append(f"  INVALID: {report['config_error']}")
        return "\n".join(lines)
    config = report["config"]
    if config["disabled"]:
        lines.append("  OTEL_SDK_DISABLED=true: otel_vision records nothing")
    lines.append(f"  protocol             {config['protocol']}")
    lines.append("  exporters            " + ", ".join(f"{k}={v}" for k, v in config["exporters"].items()))
    lines.append(f"  service.name         {config['service_name']}")
    if config["resource_attributes"]:
        lines.append(f"  resource attributes  {config['resource_attributes']}")
    sampler = config["sampler"] + (f" ({config['sampler_arg']})" if config["sampler_arg"] else "")
    lines.append(f"  sampler              {sampler}")
    if config["header_names"]:
        lines.append(f"  headers              {', '.join(config['header_names'])} (values hidden)")
    gpu_state = "on" if config["gpu_telemetry"] else "off"
    lines.append(f"  GPU telemetry        {gpu_state}, every {config['gpu_sample_interval_s']} s")
    lines.append(f"  logs exported        {'yes' if config['logs'] else 'no'}")
    for signal, entry in config["endpoints"].items():
        reach = f"  reachable: {entry['reachable']}" if "reachable" in entry else ""
        lines.append(f"  {signal:<7} endpoint     {entry['url']}  [{entry['source']}]{reach}")
    return "\n".join(lines)


def main(as_json: bool = False) -> int:
    """Print the report; exit status 2 only when the configuration itself is invalid."""
    import json

    report = collect()
    print(json.dumps(report, indent=2) if as_json else render(report), file=sys.stdout)
    return 2 if report["config_error"] else 0
