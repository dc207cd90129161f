"""`otel-vision doctor`: what this machine and configuration give otel_vision, and why not when they don't."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import textwrap
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from otel_vision import _config
from otel_vision._version import __version__
from otel_vision.gpu import GpuUnavailable, PynvmlBackend

OPTIONAL = ("torch", "torchvision", "ultralytics", "diffusers", "transformers", "opentelemetry-instrumentation")


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


_GRPC_SERVICES: dict[str, tuple[str, str, str]] = {
    # signal: (module with the request message, request class, full gRPC method)
    "traces": (
        "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
        "ExportTraceServiceRequest",
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    ),
    "metrics": (
        "opentelemetry.proto.collector.metrics.v1.metrics_service_pb2",
        "ExportMetricsServiceRequest",
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    ),
    "logs": (
        "opentelemetry.proto.collector.logs.v1.logs_service_pb2",
        "ExportLogsServiceRequest",
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    ),
}


def _headers(settings: _config.Settings, environ: Mapping[str, str], signal: str) -> dict[str, str]:
    """The headers the exporter of ``signal`` sends (values are credentials: used, never shown)."""
    from opentelemetry.util.re import parse_env_headers

    raw = environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_HEADERS") or environ.get("OTEL_EXPORTER_OTLP_HEADERS", "")
    headers = {k.lower(): v for k, v in parse_env_headers(raw, liberal=True).items()}
    headers.update({k.lower(): v for k, v in (settings.headers or {}).items()})
    return headers


def _probe_grpc(url: str, signal: str, headers: Mapping[str, str], timeout: float) -> tuple[bool, str]:
    import importlib

    import grpc  # type: ignore[import-untyped]  # grpcio ships no type hints

    module, request_class, method = _GRPC_SERVICES[signal]
    request_type = getattr(importlib.import_module(module), request_class)
    parts = urlsplit(url)
    target = parts.netloc.rsplit("@", 1)[-1]
    channel = (
        grpc.secure_channel(target, grpc.ssl_channel_credentials())
        if parts.scheme == "https"
        else grpc.insecure_channel(target)
    )
    try:
        call = channel.unary_unary(
            method, request_serializer=request_type.SerializeToString, response_deserializer=lambda b: b
        )
        call(request_type(), timeout=timeout, metadata=tuple(headers.items()))
        return True, "yes (an empty OTLP/gRPC export was accepted)"
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        name = code.name if code is not None else "error"
        if name == "UNIMPLEMENTED":
            return False, f"no ({target} answers gRPC but has no OTLP {signal} service: UNIMPLEMENTED)"
        if name in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            return False, f"no (the collector answered but refused the credentials: {name})"
        if name == "DEADLINE_EXCEEDED":
            return False, f"no ({target} did not answer within {timeout:g} s)"
        if name == "UNAVAILABLE":
            return False, f"no (unavailable: nothing listens at {target}, or TLS does not match the scheme)"
        return False, f"no (gRPC {name})"
    finally:
        channel.close()


def _probe_http(url: str, headers: Mapping[str, str], timeout: float) -> tuple[bool, str]:
    import urllib.error
    import urllib.request

    parts = urlsplit(url)
    clean = urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, parts.query, ""))
    request = urllib.request.Request(
        clean, data=b"", method="POST", headers={**headers, "Content-Type": "application/x-protobuf"}
    )
    where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"no ({where}: {getattr(reason, 'strerror', None) or reason})"
    if 200 <= status < 300:
        return True, f"yes (an empty OTLP/HTTP export was accepted: HTTP {status})"
    if status in (401, 403):
        return False, f"no (the collector answered but refused the credentials: HTTP {status})"
    if status in (404, 405):
        return False, f"no ({where} answers HTTP {status} at {parts.path or '/'}: not an OTLP receiver there)"
    return False, f"no (HTTP {status} to an empty OTLP export)"


def _reachable(
    settings: _config.Settings, environ: Mapping[str, str], signal: _config.Signal, timeout: float = 2.0
) -> tuple[bool, str]:
    """Whether the endpoint of ``signal`` accepts an (empty) OTLP export: a real protocol exchange, not a connect."""
    url = settings.endpoint_for(signal)
    headers = _headers(settings, environ, signal)
    try:
        if settings.protocol == "grpc":
            return _probe_grpc(url, signal, headers, timeout)
        return _probe_http(url, headers, timeout)
    except Exception as exc:  # doctor reports; it never crashes on what it probes
        return False, f"no ({type(exc).__name__})"


def _gpu_state(report: Mapping[str, Any], gpu_on: bool) -> str:
    if not gpu_on:
        return "off (OTEL_VISION_GPU=false)"
    nvml = report["gpu"]["nvml"]
    cuda = bool(report["torch"].get("cuda_available"))
    if nvml and cuda:
        return "on: CUDA-event timing, allocator memory and NVML utilization"
    if cuda:
        return "partly: CUDA-event timing and allocator memory; no NVML, so no utilization or hw.gpu.* metrics"
    if nvml:
        return "partly: NVML metrics; torch has no CUDA device, so no per-span GPU time"
    return "enabled but inactive here: no NVML and no CUDA device"


def collect(environ: Mapping[str, str] | None = None, check_endpoint: bool = True) -> dict[str, Any]:
    """Everything doctor reports, as data; ``problems`` lists what is wrong (invalid variables first)."""
    env = os.environ if environ is None else environ
    report: dict[str, Any] = {
        "otel_vision": __version__,
        "python": platform.python_version(),
        "opentelemetry_sdk": _version("opentelemetry-sdk"),
        "gpu": _gpus(),
        "torch": _torch(),
        "optional": {name: _version(name) for name in OPTIONAL},
    }
    settings = _config.resolve(environ=env, warn=False)
    report["invalid"] = list(settings.problems)
    exporters = {
        "traces": settings.traces_exporter,
        "metrics": settings.metrics_exporter,
        "logs": settings.logs_exporter,
    }
    sampler = settings.sampler + (f" ({settings.sampler_arg:g})" if settings.sampler.endswith("traceidratio") else "")
    config: dict[str, Any] = {
        "disabled": settings.disabled,
        "protocol": settings.protocol,
        "exporters": exporters,
        "service_name": env.get("OTEL_SERVICE_NAME") or "(SDK default: unknown_service:python)",
        "resource_attributes": env.get("OTEL_RESOURCE_ATTRIBUTES", ""),
        "sampler": sampler,
        # Header values are credentials: show the names only.
        "header_names": sorted(_headers(settings, env, "traces")),
        "gpu_telemetry": settings.gpu,
        "gpu_state": _gpu_state(report, settings.gpu),
        "gpu_sample_interval_s": settings.gpu_sample_interval,
        "logs": settings.logs,
        "endpoints": {},
    }
    unreachable: dict[tuple[str, str], list[str]] = {}
    for signal, kind in exporters.items():
        if kind == "otlp":
            sig: _config.Signal = signal  # type: ignore[assignment]  # the keys above are the three signals
            entry: dict[str, Any] = {
                "url": _config.redact_endpoint(settings.endpoint_for(sig)),
                "source": settings.endpoint_sources.get(sig, "default"),
                "timeout_s": settings.timeout_for(sig),
            }
            if check_endpoint and not settings.disabled:
                ok, said = _reachable(settings, env, sig)
                entry["reachable"] = said
                if not ok:
                    unreachable.setdefault((entry["url"], said), []).append(signal)
            config["endpoints"][signal] = entry
    report["config"] = config
    report["problems"] = report["invalid"] + [
        f"{', '.join(signals)} endpoint {url}: {said}" for (url, said), signals in unreachable.items()
    ]
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
    config = report["config"]
    if config["disabled"]:
        lines.append("  OTEL_SDK_DISABLED=true: otel_vision records nothing")
    lines.append(f"  protocol             {config['protocol']}")
    lines.append("  exporters            " + ", ".join(f"{k}={v}" for k, v in config["exporters"].items()))
    lines.append(f"  service.name         {config['service_name']}")
    if config["resource_attributes"]:
        lines.append(f"  resource attributes  {config['resource_attributes']}")
    lines.append(f"  sampler              {config['sampler']}")
    if config["header_names"]:
        lines.append(f"  headers              {', '.join(config['header_names'])} (values hidden)")
    lines.append(f"  GPU telemetry        {config['gpu_state']}")
    lines.append(f"  logs exported        {'yes' if config['logs'] else 'no'}")
    for signal, entry in config["endpoints"].items():
        lines.append(f"  {signal:<7} endpoint     {entry['url']}  [{entry['source']}]")
        if "reachable" in entry:
            lines.append(f"                       reachable: {entry['reachable']}")
    lines.append(
        "  export losses        an application counts what it could not deliver as otel.sdk.* metrics (dashboard "
        'panel "Telemetry dropped or failed to export", alert OtelVisionTelemetryDropped) and names it at shutdown; '
        "doctor, a process of its own, cannot see them"
    )
    lines += ["", "problems"]
    lines += [f"  - {p}" for p in report["problems"]] or ["  none"]
    return "\n".join(lines)


def _fit(text: str, width: int) -> str:
    """Wrap long lines to ``width``, continuing under their own indentation."""
    lines = []
    for line in text.splitlines():
        indent = " " * (len(line) - len(line.lstrip()) + 4)
        wrapped = textwrap.wrap(line, max(width, 40), subsequent_indent=indent, break_on_hyphens=False)
        lines.extend(wrapped or [""])
    return "\n".join(lines)


def main(as_json: bool = False, check_endpoint: bool = True) -> int:
    """Print the report; exit status 2 when a variable is invalid, 1 when an endpoint does not accept OTLP."""
    import json

    report = collect(check_endpoint=check_endpoint)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(_fit(render(report), shutil.get_terminal_size((100, 24)).columns))
    if report["invalid"]:
        return 2
    return 1 if report["problems"] else 0
