"""Lint Grafana dashboards: a subset of grafana/dashboard-linter's rules plus our own, offline.

grafana/dashboard-linter ships no package on PyPI, npm or Debian, so CI runs this instead:

- the dashboard has a uid, a title and a ``datasource`` template variable of type prometheus, and every panel and
  target uses it (``${datasource}``), so the dashboard works with any Prometheus data source;
- panel ids and titles are unique, every panel has a description, panels fit the 24-column grid without overlap;
- time series, stat and bar gauge panels set a unit;
- every target has a unique refId and a PromQL expression that parses once Grafana's variables are substituted;
- ``rate``/``irate``/``increase`` use ``$__rate_interval`` (or ``$__range`` for whole-range panels);
- every selector filters on ``job=~"$job"`` (``target_info``, only joined on job and instance, excepted), and every
  ``$variable`` used is defined;
- latency quantiles (``histogram_quantile`` over a ``*_seconds_bucket``) have exemplars on, so points link to traces.

    python collector/tools/lint_dashboards.py collector/grafana/dashboards/*.json

PromQL parsing uses the promql-parser package (PyPI) when it is installed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
BUILTINS = frozenset({"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms"})
SUBSTITUTE = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
UNIT_PANELS = frozenset({"timeseries", "stat", "bargauge", "gauge"})
_VARIABLE = re.compile(r"\$\{?(\w+)")
_RANGE_FUNCTION = re.compile(r"\b(rate|irate|increase)\s*\(")
_HISTOGRAM_QUANTILE = re.compile(r"histogram_quantile\(.*_seconds_bucket", re.DOTALL)


def panels(items: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def _range_arguments(expr: str) -> Iterator[str]:
    """The ``[...]`` range of every rate/irate/increase call (the first range after the call's opening)."""
    for match in _RANGE_FUNCTION.finditer(expr):
        depth, index = 1, match.end()
        while index < len(expr) and depth:
            char = expr[index]
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
            elif char == "[" and depth == 1:
                yield expr[index + 1 : expr.index("]", index)]
                break
            index += 1


def _parse(expr: str) -> Any:
    try:
        import promql_parser
    except ImportError:
        return None
    return promql_parser.parse(expr)


def _selectors(node: Any) -> Iterator[Any]:
    if type(node).__name__ == "VectorSelector":
        yield node
    for name in ("lhs", "rhs", "expr", "vector_selector", "param"):
        child = getattr(node, name, None)
        if child is not None and not isinstance(child, (str, int, float)):
            yield from _selectors(child)
    for arg in getattr(node, "args", None) or []:
        yield from _selectors(arg)


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    for name, value in SUBSTITUTE.items():
        expr = expr.replace(name, value)
    for name, value in variables.items():
        expr = expr.replace(f"${name}", value)
    return expr


def lint(dashboard: Mapping[str, Any]) -> list[str]:
    """Problems of one dashboard, as messages naming the panel."""
    problems: list[str] = []
    for key in ("uid", "title"):
        if not dashboard.get(key):
            problems.append(f"dashboard has no {key}")
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    datasource = variables.get("datasource")
    if datasource is None or datasource.get("type") != "datasource" or datasource.get("query") != "prometheus":
        problems.append("no 'datasource' template variable of type datasource for prometheus")
    for name, variable in variables.items():
        if variable.get("type") == "query" and variable.get("datasource") != DATASOURCE:
            problems.append(f"variable {name}: datasource must be {DATASOURCE}")
    # What each variable stands for when every value is selected.
    values = {name: v.get("allValue") or ".*" for name, v in variables.items() if v.get("type") == "query"}

    ids: set[int] = set()
    titles: set[str] = set()
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard.get("panels", [])):
        title = panel.get("title") or f"panel {panel.get('id')}"
        if panel.get("id") in ids:
            problems.append(f"{title}: duplicate panel id {panel.get('id')}")
        ids.add(panel.get("id"))
        grid = panel.get("gridPos") or {}
        if not {"x", "y", "w", "h"} <= set(grid) or grid["x"] + grid["w"] > 24:
            problems.append(f"{title}: gridPos {grid} outside the 24-column grid")
        else:
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    if (x, y) in cells:
                        problems.append(f"{title}: overlaps {cells[(x, y)]}")
                        break
                    cells[(x, y)] = title
                else:
                    continue
                break
        if panel.get("type") == "row":
            continue
        if title in titles:
            problems.append(f"{title}: duplicate title")
        titles.add(title)
        if not panel.get("description"):
            problems.append(f"{title}: no description")
        if panel.get("datasource") != DATASOURCE:
            problems.append(f"{title}: datasource must be {DATASOURCE}")
        if panel.get("type") in UNIT_PANELS and not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{title}: no unit")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{title}: no query")
        ref_ids = [t.get("refId") for t in targets]
        if len(set(ref_ids)) != len(ref_ids) or None in ref_ids:
            problems.append(f"{title}: refIds must be present and unique, got {ref_ids}")
        for target in targets:
            where = f"{title} / {target.get('refId')}"
            expr = target.get("expr") or ""
            if target.get("datasource") != DATASOURCE:
                problems.append(f"{where}: datasource must be {DATASOURCE}")
            if not expr.strip():
                problems.append(f"{where}: empty expression")
                continue
            for name in _VARIABLE.findall(expr):
                if name not in variables and name not in BUILTINS:
                    problems.append(f"{where}: undefined variable ${name}")
            for interval in _range_arguments(expr):
                if interval not in ("$__rate_interval", "$__range"):
                    problems.append(f"{where}: rate/increase over [{interval}]; use $__rate_interval")
            if _HISTOGRAM_QUANTILE.search(expr) and not target.get("exemplar"):
                problems.append(f"{where}: latency quantile without exemplars")
            try:
                parsed = _parse(substitute(expr, values))
            except ValueError as error:
                problems.append(f"{where}: PromQL does not parse: {error}")
                continue
            if parsed is None:
                continue
            for selector in _selectors(parsed):
                name = selector.name or ""
                matchers = {(m.name, str(m.op).rsplit(".", 1)[-1]) for m in selector.matchers.matchers}
                if name != "target_info" and ("job", "Re") not in matchers:
                    problems.append(f'{where}: selector {selector} does not filter on job=~"$job"')
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Lint Grafana dashboards offline.")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    failed = False
    uids: dict[str, Path] = {}
    for path in args.files:
        dashboard = json.loads(path.read_text())
        problems = lint(dashboard)
        uid = dashboard.get("uid")
        if uid in uids:
            problems.append(f"uid {uid!r} also used by {uids[uid]}")
        uids[uid] = path
        for problem in problems:
            print(f"{path}: {problem}", file=sys.stderr)
        failed |= bool(problems)
        print(f"{path}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
