"""pytest plugin for running ultralytics' own test suite twice: plainly, and with otel_vision instrumenting it.

Loaded with ``-p peer_plugin`` by ``run_ultralytics.py`` (never by the project's own test run). In both runs it
hashes every ``ultralytics.engine.results.Results`` a test creates (boxes, masks, probabilities, keypoints, oriented
boxes, class names: the numbers a user reads) and writes each test's outcome and hash to the JSON file named by
``OTEL_VISION_PEER_REPORT``. With ``OTEL_VISION_PEER_INSTRUMENT=1`` it first routes otel_vision's telemetry to memory
and calls ``otel_vision.instrument_ultralytics()``, so every model of every test is traced.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

_strong: list[Any] = []
_report: dict[str, dict[str, Any]] = {}
_spans = {"count": 0}
_capture: Any = None


def _hash_results(results: list[Any]) -> str | None:
    if not results:
        return None
    digest = hashlib.sha256()
    for result in results:
        for name in ("boxes", "masks", "probs", "keypoints", "obb"):
            value = getattr(result, name, None)
            data = getattr(value, "data", None)
            if data is None:
                digest.update(f"{name}:none;".encode())
                continue
            array = data.detach().cpu().numpy() if hasattr(data, "detach") else data
            digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
            digest.update(array.tobytes())
        digest.update(repr(sorted((getattr(result, "names", None) or {}).items())).encode())
        digest.update(repr(tuple(getattr(result, "orig_shape", ()) or ())).encode())
    return digest.hexdigest()


def pytest_configure(config: pytest.Config) -> None:
    from ultralytics.engine.results import Results

    original_init = Results.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        _strong.append(self)

    Results.__init__ = init  # type: ignore[method-assign]

    if os.environ.get("OTEL_VISION_PEER_INSTRUMENT") == "1":
        import otel_vision
        from otel_vision.testing import capture_telemetry

        global _capture
        _capture = capture_telemetry()
        captured = _capture.__enter__()
        _spans["captured"] = captured
        otel_vision.instrument_ultralytics()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    _strong.clear()
    yield
    item.stash[_HASH] = _hash_results(_strong)
    _strong.clear()


_HASH = pytest.StashKey[str | None]()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _report.setdefault(report.nodeid, {"outcome": "passed", "hash": None})
    if report.failed:
        entry["outcome"] = "failed" if report.when == "call" else f"error in {report.when}"
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "skipped"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    if call.when == "call":
        report = outcome.get_result()
        report.user_properties.append(("results_hash", item.stash.get(_HASH, None)))
        _report.setdefault(report.nodeid, {"outcome": "passed", "hash": None})["hash"] = item.stash.get(_HASH, None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    captured = _spans.get("captured")
    spans = len(captured.spans()) if captured is not None else 0
    path = os.environ.get("OTEL_VISION_PEER_REPORT")
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"tests": _report, "spans": spans}, handle, indent=1, sort_keys=True)
    if _capture is not None:  # shut the telemetry pipeline down (its worker would keep the interpreter alive)
        import otel_vision

        otel_vision.uninstrument_ultralytics()
        _capture.__exit__(None, None, None)
