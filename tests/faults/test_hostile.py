"""Hostile user code: exceptions that cannot print themselves, recursion limits, huge messages, stubborn generators,
a capture block never exited.

Whatever the user's code does, it sees exactly what it would see without us, every span ends, and the context in
force before the stage is back afterwards.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

import otel_vision
from otel_vision.testing import CapturedTelemetry
from tests.faults.support import run_program


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken")


class StrBroken(Exception):
    """asyncio itself needs ``repr()`` of a task's exception, so the async form uses this one."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


def _current_span_name() -> str | None:
    span = trace.get_current_span()
    return getattr(span, "name", None) if span.get_span_context().is_valid else None


@pytest.mark.parametrize("form", ["with", "decorator", "async", "generator"])
def test_an_exception_that_cannot_print_itself_propagates_unchanged(
    vision_telemetry: CapturedTelemetry, form: str
) -> None:
    """The caller gets its own exception object, with no context chained on, the span ends with status ERROR,
    and no stage of ours stays current."""
    import asyncio

    error = StrBroken() if form == "async" else Unprintable()

    def boom() -> None:
        raise error

    with pytest.raises(type(error)) as caught:
        if form == "with":
            with otel_vision.stage("hostile"):
                boom()
        elif form == "decorator":
            otel_vision.stage("hostile")(boom)()
        elif form == "async":

            async def aboom() -> None:
                boom()

            asyncio.run(otel_vision.stage("hostile")(aboom)())
        else:

            def gen() -> Iterator[int]:
                yield 1
                boom()

            list(otel_vision.stage("hostile")(gen)())
    assert caught.value is error
    assert error.__context__ is None and error.__cause__ is None
    assert _current_span_name() is None

    with otel_vision.stage("after"):
        pass
    (hostile,) = vision_telemetry.spans("hostile")
    (after,) = vision_telemetry.spans("after")
    assert hostile.end_time is not None
    assert hostile.status.status_code is StatusCode.ERROR
    assert type(error).__name__ in (hostile.status.description or "")
    assert hostile.attributes["error.type"].endswith(type(error).__name__)
    assert after.parent is None  # not a child of the dead span


def test_recursion_limit_ends_every_span_and_restores_the_context(vision_telemetry: CapturedTelemetry) -> None:
    """A decorated function recursing until RecursionError: the user gets RecursionError, every started span is
    ended (none left open), and the context is the one before the first call."""
    started = []

    @otel_vision.stage("recurse")
    def recurse(depth: int) -> int:
        started.append(depth)
        return recurse(depth + 1)

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(400)
    try:
        with pytest.raises(RecursionError):
            recurse(0)
    finally:
        sys.setrecursionlimit(limit)
    assert _current_span_name() is None
    with otel_vision.stage("after"):
        pass
    spans = vision_telemetry.spans("recurse")
    assert len(spans) >= len(started) > 20
    assert all(span.end_time is not None for span in spans)
    (after,) = vision_telemetry.spans("after")
    assert after.parent is None


def test_huge_exception_messages_are_capped(vision_telemetry: CapturedTelemetry) -> None:
    """A 5 MB message reaches the span capped: status description, exception event message and stack trace stay
    within the default attribute length (8,192 characters) plus a short note."""
    with pytest.raises(ValueError):
        with otel_vision.stage("huge"):
            raise ValueError("x" * 5_000_000)
    (span,) = vision_telemetry.spans("huge")
    assert len(span.status.description or "") < 8300
    (event,) = span.events
    assert all(len(str(value)) <= 8192 for value in (event.attributes or {}).values())


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Python's own, at collection
def test_a_generator_ignoring_generator_exit_still_ends_its_span(vision_telemetry: CapturedTelemetry) -> None:
    """Closing a traced generator that yields again on GeneratorExit raises Python's own RuntimeError, as it would
    untraced, and the span still ends (abandoned)."""

    @otel_vision.stage("stubborn")
    def stubborn() -> Iterator[int]:
        while True:
            try:
                yield 1
            except GeneratorExit:
                continue

    gen = stubborn()
    next(gen)
    with pytest.raises(RuntimeError, match="ignored GeneratorExit"):
        gen.close()
    assert _current_span_name() is None
    (span,) = vision_telemetry.spans("stubborn")
    assert span.end_time is not None and span.attributes["vision.abandoned"] is True


def test_a_capture_block_never_exited_does_not_hang_the_exit() -> None:
    """``capture_telemetry().__enter__()`` without its exit: the generator behind it is collected during interpreter
    teardown, when no thread can start or finish any more. The program still ends at once, as it would without us."""
    program = """
        import otel_vision
        from otel_vision.testing import capture_telemetry

        block = capture_telemetry()
        captured = block.__enter__()
        for _ in range(200):
            with otel_vision.stage("kept-open"):
                pass
        print("spans", len(captured.spans("kept-open")), flush=True)
    """
    started = time.monotonic()
    result = run_program(program, {}, timeout=60)  # a hang fails here, with the program's output so far
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["spans", "200"]
    assert time.monotonic() - started < 30
