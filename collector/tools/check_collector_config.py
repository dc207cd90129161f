"""Static wiring check for OpenTelemetry Collector configurations (what `otelcol validate` checks first, offline).

`otelcol validate` needs the collector binary, which no package registry that CI reaches ships; this check covers
the structural part of it plus our own rules:

- top-level sections are known; every pipeline has receivers and exporters, and every component a pipeline names
  is defined in the right section (a connector may stand as receiver or exporter);
- every connector is used on both sides (exporter of one pipeline, receiver of another) with compatible signals;
- ``memory_limiter`` is the first processor of every pipeline;
- no removed component (``logging``, ``loki``, ``jaeger`` exporters, the ``spanmetrics`` processor) and no
  deprecated name (``otlp``/``otlphttp`` exporters, ``batch``, ``k8sattributes``, ``resourcedetection``,
  ``loadbalancing``, ``prometheusremotewrite``, ``spanmetrics`` connector, …): current 2026 names only;
- every ``${env:NAME}`` / ``${env:NAME:-default}`` reference is well formed, and nothing binds ``0.0.0.0``;
- with ``--loopback``: every receiver and extension endpoint binds loopback once defaults are applied (sidecar).

Several files are merged like the collector merges repeated ``--config`` flags (maps deep-merged, lists and
scalars replaced by the later file).

    python collector/tools/check_collector_config.py collector/sidecar/otelcol.yaml --loopback
    python collector/tools/check_collector_config.py collector/sidecar/otelcol.yaml \
        collector/sidecar/prometheus-remote-write.yaml
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SECTIONS = ("receivers", "processors", "exporters", "connectors", "extensions", "service")
SIGNALS = ("traces", "metrics", "logs", "profiles")

REMOVED: dict[tuple[str, str], str] = {
    ("exporters", "logging"): "removed in v0.111.0: use the debug exporter",
    ("exporters", "loki"): "removed after v0.130: use otlp_http to Loki's /otlp endpoint",
    ("exporters", "jaeger"): "removed in v0.85.0: export OTLP to Jaeger",
    ("exporters", "jaeger_thrift"): "removed: export OTLP to Jaeger",
    ("processors", "spanmetrics"): "removed: use the span_metrics connector",
    ("processors", "servicegraph"): "removed: use the servicegraph connector",
    ("extensions", "memory_ballast"): "removed: set GOMEMLIMIT instead",
}
DEPRECATED: dict[tuple[str, str], str] = {
    ("exporters", "otlp"): "otlp_grpc",
    ("exporters", "otlphttp"): "otlp_http",
    ("exporters", "loadbalancing"): "load_balancing",
    ("exporters", "prometheusremotewrite"): "prometheus_remote_write",
    ("processors", "k8sattributes"): "k8s_attributes",
    ("processors", "resourcedetection"): "resource_detection",
    ("processors", "metricstransform"): "metrics_transform",
    ("processors", "batch"): "the exporter's sending_queue.batch (the batch processor is being deprecated)",
    ("connectors", "spanmetrics"): "span_metrics",
    ("receivers", "filelog"): "file_log",
}
# Signals a connector consumes (as an exporter) and produces (as a receiver).
CONNECTOR_SIGNALS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "span_metrics": (frozenset({"traces"}), frozenset({"metrics"})),
    "servicegraph": (frozenset({"traces"}), frozenset({"metrics"})),
    "exceptions": (frozenset({"traces"}), frozenset({"metrics", "logs"})),
    "count": (frozenset(SIGNALS), frozenset({"metrics"})),
    "sum": (frozenset(SIGNALS), frozenset({"metrics"})),
}
SAME_SIGNAL_CONNECTORS = frozenset({"forward", "routing", "failover", "round_robin"})

_ENV = re.compile(r"\$\{([^}]*)\}")
_ENV_BODY = re.compile(r"^env:(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?$")
_LOOPBACK_HOSTS = frozenset({"localhost"})


@dataclass
class Report:
    """Errors make the check fail; notes are informational (required environment, unused components)."""

    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    required_env: set[str] = field(default_factory=set)
    optional_env: set[str] = field(default_factory=set)


def merge(base: Any, override: Any) -> Any:
    """Merge two configurations the way the collector merges repeated --config flags."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return override


def load(paths: Sequence[Path | str]) -> dict[str, Any]:
    """Load and merge configuration files; each must be a YAML mapping."""
    config: dict[str, Any] = {}
    for path in paths:
        data = yaml.safe_load(Path(path).read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a collector configuration is a YAML mapping")
        config = merge(config, data)
    return config


def component_type(component_id: str) -> str:
    """``otlp_http/loki`` -> ``otlp_http``."""
    return component_id.split("/", 1)[0]


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, f"{path}[{index}]")
    elif isinstance(node, str):
        yield path, node


def expand_defaults(value: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace ``${env:NAME:-default}`` by the variable from ``environ``, else its default; a reference without a
    default that ``environ`` does not set becomes ``<NAME>`` (a value only known at deploy time)."""

    def substitute(match: re.Match[str]) -> str:
        body = _ENV_BODY.match(match.group(1))
        if body is None:
            return match.group(0)
        if environ is not None and body.group("name") in environ:
            return environ[body.group("name")]
        default = body.group("default")
        return default if default is not None else f"<{body.group('name')}>"

    return _ENV.sub(substitute, value)


def _host(endpoint: str) -> str | None:
    """The host part of ``host:port`` or ``scheme://host:port/path``; ``""`` for ``:4317``."""
    rest = endpoint.split("://", 1)[-1].split("/", 1)[0]
    if rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    if ":" not in rest:
        return rest or None
    return rest.rsplit(":", 1)[0]


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_env_references(config: Mapping[str, Any], report: Report) -> None:
    for path, value in _strings(config):
        for match in _ENV.finditer(value):
            body = _ENV_BODY.match(match.group(1))
            if body is None:
                report.errors.append(f"{path}: malformed environment reference {match.group(0)!r}")
            elif body.group("default") is None:
                report.required_env.add(body.group("name"))
            else:
                report.optional_env.add(body.group("name"))
        if "$" in _ENV.sub("", value.replace("$$", "")):
            report.errors.append(f"{path}: bare '$' in {value!r} (use ${{env:NAME}}, or $$ for a literal $)")


def _check_names(config: Mapping[str, Any], report: Report) -> None:
    for section in ("receivers", "processors", "exporters", "connectors", "extensions"):
        for component_id in config.get(section) or {}:
            kind = component_type(str(component_id))
            if (section, kind) in REMOVED:
                report.errors.append(f"{section}.{component_id}: {REMOVED[(section, kind)]}")
            elif (section, kind) in DEPRECATED:
                report.errors.append(f"{section}.{component_id}: deprecated name; use {DEPRECATED[(section, kind)]}")


def _check_endpoints(config: Mapping[str, Any], report: Report, loopback: bool) -> None:
    for section in ("receivers", "extensions"):
        for path, value in _strings(config.get(section) or {}, section):
            if not path.endswith("endpoint"):
                continue
            host = _host(expand_defaults(value))
            if host is None:
                continue
            if host in ("", "0.0.0.0", "::"):
                report.errors.append(f"{path}: {value!r} binds every interface")
            elif loopback and not _is_loopback(host):
                report.errors.append(f"{path}: {value!r} does not bind loopback (sidecar receivers must)")
    if loopback:
        for component_id, settings in (config.get("receivers") or {}).items():
            if component_type(str(component_id)) != "otlp":
                continue
            for protocol, options in ((settings or {}).get("protocols") or {}).items():
                if not (options or {}).get("endpoint"):
                    report.errors.append(
                        f"receivers.{component_id}.protocols.{protocol}: no explicit endpoint (bind 127.0.0.1)"
                    )


def _check_pipelines(config: Mapping[str, Any], report: Report) -> None:
    service = config.get("service") or {}
    pipelines = service.get("pipelines") or {}
    if not pipelines:
        report.errors.append("service.pipelines: no pipeline")
        return
    defined = {section: set(config.get(section) or {}) for section in SECTIONS[:-1]}
    connectors = defined["connectors"]
    as_exporter: dict[str, set[str]] = {c: set() for c in connectors}
    as_receiver: dict[str, set[str]] = {c: set() for c in connectors}
    used: dict[str, set[str]] = {section: set() for section in SECTIONS[:-1]}
    for pipeline_id, pipeline in pipelines.items():
        signal = component_type(str(pipeline_id))
        where = f"service.pipelines.{pipeline_id}"
        if signal not in SIGNALS:
            report.errors.append(f"{where}: unknown signal {signal!r}")
        pipeline = pipeline or {}
        unknown = set(pipeline) - {"receivers", "processors", "exporters"}
        if unknown:
            report.errors.append(f"{where}: unknown keys {sorted(unknown)}")
        for role, section in (("receivers", "receivers"), ("exporters", "exporters")):
            names = pipeline.get(role) or []
            if not names:
                report.errors.append(f"{where}: no {role}")
            if len(set(names)) != len(names):
                report.errors.append(f"{where}.{role}: listed twice: {names}")
            for name in names:
                if name in connectors:
                    (as_receiver if role == "receivers" else as_exporter)[name].add(signal)
                    used["connectors"].add(name)
                elif name in defined[section]:
                    used[section].add(name)
                else:
                    report.errors.append(f"{where}.{role}: {name!r} is not defined under {section} or connectors")
        processors = pipeline.get("processors") or []
        for name in processors:
            if name not in defined["processors"]:
                report.errors.append(f"{where}.processors: {name!r} is not defined under processors")
            used["processors"].add(name)
        if len(set(processors)) != len(processors):
            report.errors.append(f"{where}.processors: listed twice: {processors}")
        if not processors or component_type(processors[0]) != "memory_limiter":
            report.errors.append(f"{where}.processors: memory_limiter must come first, got {processors}")
    for name in connectors:
        if not as_exporter[name] or not as_receiver[name]:
            report.errors.append(
                f"connectors.{name}: must be an exporter in one pipeline and a receiver in another "
                f"(exporter in {sorted(as_exporter[name])}, receiver in {sorted(as_receiver[name])})"
            )
            continue
        kind = component_type(name)
        if kind in CONNECTOR_SIGNALS:
            consumes, produces = CONNECTOR_SIGNALS[kind]
            if not as_exporter[name] <= consumes or not as_receiver[name] <= produces:
                report.errors.append(
                    f"connectors.{name}: {kind} turns {sorted(consumes)} into {sorted(produces)}, but is fed "
                    f"{sorted(as_exporter[name])} and read as {sorted(as_receiver[name])}"
                )
        elif kind in SAME_SIGNAL_CONNECTORS and as_exporter[name] != as_receiver[name]:
            report.errors.append(f"connectors.{name}: {kind} passes one signal through unchanged")
    enabled_extensions = service.get("extensions") or []
    for name in enabled_extensions:
        if name not in defined["extensions"]:
            report.errors.append(f"service.extensions: {name!r} is not defined under extensions")
    for name in defined["extensions"] - set(enabled_extensions):
        report.notes.append(f"extensions.{name} is defined but not enabled in service.extensions")
    for section in ("receivers", "processors", "exporters"):
        for name in sorted(defined[section] - used[section]):
            report.notes.append(f"{section}.{name} is defined but used by no pipeline")


def _check_telemetry(config: Mapping[str, Any], report: Report) -> None:
    metrics = ((config.get("service") or {}).get("telemetry") or {}).get("metrics") or {}
    if "address" in metrics:
        report.errors.append("service.telemetry.metrics.address: deprecated; use readers")


def check(config: Mapping[str, Any], *, loopback: bool = False) -> Report:
    """Check one (merged) configuration."""
    report = Report()
    unknown = set(config) - set(SECTIONS)
    if unknown:
        report.errors.append(f"unknown top-level sections {sorted(unknown)}")
    for section in SECTIONS:
        if section in config and not isinstance(config[section], Mapping):
            report.errors.append(f"{section}: must be a mapping")
    if report.errors:
        return report
    _check_env_references(config, report)
    _check_names(config, report)
    _check_endpoints(config, report, loopback)
    _check_pipelines(config, report)
    _check_telemetry(config, report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check the wiring of OpenTelemetry Collector configurations.")
    parser.add_argument("files", nargs="+", type=Path, help="configuration files, merged in order")
    parser.add_argument("--loopback", action="store_true", help="receivers and extensions must bind loopback")
    args = parser.parse_args(argv)
    report = check(load(args.files), loopback=args.loopback)
    for note in report.notes:
        print(f"note: {note}")
    if report.required_env:
        print(f"note: required environment: {', '.join(sorted(report.required_env))}")
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    names = " + ".join(str(f) for f in args.files)
    print(f"{names}: {'OK' if not report.errors else f'{len(report.errors)} error(s)'}")
    return 1 if report.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
