"""otel_vision._context: attach, detach and get_current are the API's, as C calls on its default runtime context."""

from __future__ import annotations

import contextvars
import logging

import pytest
from opentelemetry import context as api
from opentelemetry import trace

from otel_vision import _context


def test_the_same_context_as_the_api_sees() -> None:
    key = api.create_key("otel_vision.test")
    before = api.get_current()
    token = _context.attach(api.set_value(key, 1))
    assert api.get_value(key) == 1 and _context.get_current() is api.get_current()
    inner = api.attach(api.set_value(key, 2))  # the API's attach, inside ours
    assert _context.get_current().get(key) == 2
    assert _context.with_value(key, 3) == api.set_value(key, 3)  # the same new context as the API's
    assert api.get_value(key) == 2  # and, as with the API, nothing attached
    api.detach(inner)
    _context.detach(token)
    assert api.get_current() is before and _context.get_current() is before


def test_a_token_from_another_context_is_the_apis_to_report(caplog: pytest.LogCaptureFixture) -> None:
    """Resetting a token in a context it was not made in fails; it goes to the API, which logs it, and nothing is
    raised into the caller (as with the API alone)."""
    token = contextvars.copy_context().run(_context.attach, api.set_value(api.create_key("elsewhere"), 1))
    before = api.get_current()
    with caplog.at_level(logging.ERROR, logger="opentelemetry.context"):
        _context.detach(token)
    assert api.get_current() is before
    assert any("Failed to detach context" in r.getMessage() for r in caplog.records)


def test_spans_see_what_our_attach_sets() -> None:
    span = trace.NonRecordingSpan(trace.SpanContext(1, 2, is_remote=False))
    token = _context.attach(trace.set_span_in_context(span))
    try:
        assert trace.get_current_span() is span
    finally:
        _context.detach(token)
    assert trace.get_current_span() is not span


OTHER_RUNTIME_CONTEXT = """
import json, threading
from opentelemetry import context as api
from opentelemetry.context.context import _RuntimeContext


class ThreadLocalContext(_RuntimeContext):  # another runtime context, as OTEL_PYTHON_CONTEXT can name one
    def __init__(self):
        self._local = threading.local()

    def attach(self, context):
        previous = self.get_current()
        self._local.current = context
        return previous

    def get_current(self):
        return getattr(self._local, "current", api.Context())

    def detach(self, token):
        self._local.current = token


api._RUNTIME_CONTEXT = ThreadLocalContext()

import otel_vision
from otel_vision import _context
from otel_vision.testing import capture_telemetry

with capture_telemetry() as telemetry:
    def predict(tag):
        with otel_vision.request("predict", {"vision.model.name": tag}):
            with otel_vision.stage("inference"):
                with otel_vision.stage("layer"):
                    pass

    threads = [threading.Thread(target=predict, args=(f"m{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spans = telemetry.spans()
    by_id = {s.context.span_id: s for s in spans}
    chains = sorted(
        [s.name, by_id[s.parent.span_id].name, by_id[by_id[s.parent.span_id].parent.span_id].name]
        for s in spans if s.name == "layer"
    )
    print(json.dumps({
        "api_functions": _context.attach is api.attach and _context.get_current is api.get_current,
        "chains": chains,
        "traces": len({s.context.trace_id for s in spans}),
        "left_attached": api.get_current() != api.Context(),
    }))
"""


def test_another_runtime_context_keeps_the_apis_functions() -> None:
    """Under a runtime context other than the API's default one, `_context` uses the API's own functions, and stages
    nest as they do by default, thread by thread."""
    import json
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", OTHER_RUNTIME_CONTEXT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "api_functions": True,
        "chains": [["layer", "inference", "predict"]] * 3,
        "traces": 3,
        "left_attached": False,
    }
