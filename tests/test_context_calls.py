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
