"""Helpers for the collector/ tests: paths, tools, a real Prometheus server on loopback, PromQL and dashboard walks."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests import test_wire

free_port = test_wire._free_port
"""A free TCP port on 127.0.0.1."""
wait_port = test_wire._wait_port
"""Wait until something listens on 127.0.0.1:port."""

ROOT = Path(__file__).resolve().parents[2]
COLLECTOR = ROOT / "collector"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
"""Upstream schemas and chart templates, vendored (see schemas/README.md)."""
LOOPBACK_ENV = test_wire.LOOPBACK_ENV
"""Added to every child process's environment: loopback traffic never goes through a proxy."""
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def collector_tool(name: str) -> ModuleType:
    """Import one of the scripts in collector/tools/ (they are scripts, not a package)."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(name, COLLECTOR / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def http_get(url: str, timeout: float = 20) -> bytes:
    """GET a loopback URL directly (never through a proxy the environment may name)."""
    with _HTTP.open(url, timeout=timeout) as response:
        return bytes(response.read())


DASHBOARDS = COLLECTOR / "grafana" / "dashboards"
RULES = COLLECTOR / "prometheus" / "rules"


def require_tool(name: str) -> str:
    """Path of an executable (this interpreter's environment first), or skip the test: CI installs every one
    (Debian's prometheus package for prometheus and promtool; yamllint, check-jsonschema, kubernetes-validate
    from PyPI)."""
    beside = Path(sys.executable).parent / name
    path = str(beside) if beside.exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (CI installs it; see docs/deploy.md, 'What CI verifies')")
    return path


def promql() -> Any:
    """The promql_parser module (a PromQL parser built from the Rust promql-parser crate), or skip."""
    return pytest.importorskip("promql_parser", reason="promql-parser is not installed (a test dependency)")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


# --- dashboards ------------------------------------------------------------------------------------------------------
GRAFANA_SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "2m",
    "$job": ".+",
    "$model": ".*",
}


def substitute_grafana_variables(expr: str) -> str:
    """Replace the Grafana variables our dashboards use by the values a 'last 2 minutes, All' view would send."""
    for name in sorted(GRAFANA_SUBSTITUTIONS, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_SUBSTITUTIONS[name])
    if "$" in expr:
        raise AssertionError(f"unknown Grafana variable left in {expr!r}")
    return expr


def _panels(panels: list[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str
    exemplar: bool

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id}"


def dashboards() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, json.loads(path.read_text())) for path in sorted(DASHBOARDS.glob("*.json"))]


def dashboard_queries() -> list[PanelQuery]:
    """Every PromQL target of every panel of every provisioned dashboard."""
    queries = []
    for path, dashboard in dashboards():
        for panel in _panels(dashboard.get("panels", [])):
            for target in panel.get("targets", []):
                queries.append(
                    PanelQuery(path.name, panel["title"], target["refId"], target["expr"], bool(target.get("exemplar")))
                )
    return queries


_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\)$")


def dashboard_variables() -> list[tuple[str, str, str, str]]:
    """(dashboard, variable, selector, label) of every ``label_values(selector, label)`` template variable."""
    found = []
    for path, dashboard in dashboards():
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") != "query":
                continue
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = _LABEL_VALUES.match(query)
            assert match, f"{path.name}: variable {variable['name']} is not label_values(selector, label): {query}"
            found.append((path.name, variable["name"], match["selector"], match["label"]))
    return found


# --- rules -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    file: str
    name: str
    expr: str


def rule_files() -> list[Path]:
    return sorted(RULES.glob("*.yaml"))


def rule_expressions() -> list[Rule]:
    rules = []
    for path in rule_files():
        for group in load_yaml(path)["groups"]:
            for rule in group["rules"]:
                rules.append(Rule(path.name, rule.get("alert") or rule["record"], rule["expr"]))
    return rules


# --- PromQL ----------------------------------------------------------------------------------------------------------
_NODES = ("lhs", "rhs", "expr", "vector_selector", "param")


def _children(node: Any) -> Iterator[Any]:
    for name in _NODES:
        child = getattr(node, name, None)
        if child is not None and not isinstance(child, (str, int, float)):
            yield child
    yield from getattr(node, "args", None) or []


def selectors(node: Any) -> Iterator[Any]:
    """Every vector selector in a parsed expression."""
    if type(node).__name__ == "VectorSelector":
        yield node
    for child in _children(node):
        yield from selectors(child)


def selector_names(selector: Any) -> tuple[str | None, str | None]:
    """(exact metric name, __name__ regex) of a selector."""
    if selector.name:
        return selector.name, None
    for matcher in selector.matchers.matchers:
        if matcher.name == "__name__":
            if str(matcher.op).endswith("Equal"):
                return matcher.value, None
            return None, matcher.value
    return None, None


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads; a ``__name__=~"a|b"`` alternation counts as its alternatives."""
    parser = promql()
    names: set[str] = set()
    for selector in selectors(parser.parse(expr)):
        exact, regex = selector_names(selector)
        if exact:
            names.add(exact)
        elif regex:
            assert re.fullmatch(r"[a-zA-Z0-9_:|]+", regex), f"only plain alternations of names, got {regex!r}"
            names.update(regex.split("|"))
    return names


_COMPARISONS = frozenset({">", "<", ">=", "<=", "==", "!="})
_SET_OPERATORS = frozenset({"and", "or", "unless"})


def data_operands(expr: str) -> list[str]:
    """The parts of an alert expression that must return data for the alert to mean anything.

    ``A > 3`` -> ``A``; ``A >= B`` -> ``A`` and ``B``; ``A and B`` / ``A or B`` / ``A unless B`` -> the operands of
    each side; ``absent_over_time(X[15m])`` -> ``X[15m]`` (the alert is silent while X has data); anything else is
    one operand. Evaluating the whole alert expression only returns data while it fires.
    """
    parser = promql()

    def walk(node: Any) -> list[Any]:
        kind = type(node).__name__
        if kind == "ParenExpr":
            return walk(node.expr)
        if kind == "BinaryExpr":
            op = str(node.op)
            returns_bool = node.modifier is not None and node.modifier.return_bool
            if op in _SET_OPERATORS:
                return walk(node.lhs) + walk(node.rhs)
            if op in _COMPARISONS and not returns_bool:
                sides = [side for side in (node.lhs, node.rhs) if type(side).__name__ != "NumberLiteral"]
                return [operand for side in sides for operand in walk(side)]
        if kind == "Call" and node.func.name in ("absent", "absent_over_time"):
            return list(node.args)
        return [node]

    return [str(node) for node in walk(parser.parse(expr))]


# --- a Prometheus server -------------------------------------------------------------------------------------------
class Prometheus:
    """``prometheus`` on 127.0.0.1 with temporary storage, a given configuration, and helpers for its HTTP API."""

    def __init__(self, workdir: Path, config: Mapping[str, Any], port: int | None = None) -> None:
        binary = require_tool("prometheus")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        self.log = workdir / "prometheus.log"
        self._log = self.log.open("w")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log.read_text()[-3000:]}")
            try:
                http_get(f"{self.url}/-/ready", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"prometheus not ready after {timeout} s: {self.log.read_text()[-3000:]}")

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; returns ``data`` (raises with Prometheus' error message otherwise)."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            body = json.loads(http_get(f"{self.url}/api/v1/{path}?{query}"))
        except urllib.error.HTTPError as error:
            body = json.loads(error.read())
        if body.get("status") != "success":
            raise PromQLError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        """Instant query at ``at``; a scalar result comes back as one sample without labels."""
        data = self.api("query", query=expr, time=at)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def wait_for(self, expr: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.query(expr, time.time()):
                return
            time.sleep(0.5)
        raise AssertionError(f"{expr} returned nothing within {timeout} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self._log.close()


class PromQLError(AssertionError):
    """Prometheus rejected a query."""


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    """Finite sample values of an instant-query result (instant vector, matrix or scalar)."""
    values = []
    for series in result:
        samples = series.get("values") or ([series["value"]] if "value" in series else [])
        for _, raw in samples:
            value = float(raw)
            if math.isfinite(value):
                values.append(value)
    return values
