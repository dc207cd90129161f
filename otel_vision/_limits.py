"""Bounds that the synchronous part of `configure()` needs: the exit timeout and the span limits."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from opentelemetry.sdk.trace import SpanLimits

from otel_vision._errors import our_logger

logger = our_logger("otel_vision")

OTEL_VISION_EXIT_TIMEOUT: Final = "OTEL_VISION_EXIT_TIMEOUT"
"""Seconds a program that never calls ``shutdown()`` may spend exporting at exit; default ``2``."""
DEFAULT_EXIT_TIMEOUT_S: Final = 2.0


_warned: set[str] = set()


def exit_timeout(environ: Mapping[str, str] | None = None) -> float:
    """``OTEL_VISION_EXIT_TIMEOUT`` in seconds (an invalid value is logged once and the default used)."""
    env = os.environ if environ is None else environ
    raw = env.get(OTEL_VISION_EXIT_TIMEOUT, "").strip()
    if not raw:
        return DEFAULT_EXIT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        if raw not in _warned:
            _warned.add(raw)
            logger.warning(
                "otel_vision: %s=%r is invalid (not a number of seconds >= 0); using the default %s",
                OTEL_VISION_EXIT_TIMEOUT, raw, DEFAULT_EXIT_TIMEOUT_S,
            )  # fmt: skip
        return DEFAULT_EXIT_TIMEOUT_S
    return value


DEFAULT_ATTRIBUTE_LENGTH: Final = 8192
"""Characters kept per attribute value (and exception message, stack trace, status description) when neither
``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`` nor ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` is set (the SDK keeps all)."""
_LENGTH_VARIABLES: Final = ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT")


def span_limits(environ: Mapping[str, str] | None = None) -> SpanLimits:
    """The SDK's span limits, with our cap on value length unless a standard variable sets one."""
    env = os.environ if environ is None else environ
    if any(env.get(name, "").strip() for name in _LENGTH_VARIABLES):
        return SpanLimits()
    return SpanLimits(max_attribute_length=DEFAULT_ATTRIBUTE_LENGTH)


SETUP_WAIT_S: Final = 5.0
"""Longest a thread waits for the background part of `configure()` (it only imports and builds objects, so this is
a bound for a starved machine, not an expected time): a burst of spans before it is done, `Handle.wait_ready()`,
``delivery()``, a fork."""

FORK_WAIT_S: Final = 1.0
"""Longest a fork waits for each thing of ours under way that the child must not inherit half done: an import on one
of our threads, our gRPC exports in flight, the item each drainer of a kept pipeline is handling (milliseconds when
the machine is not starved)."""


DEFAULT_MAX_QUEUE_SIZE: Final = 16384
"""Log records queued before new ones are dropped (counted)."""
DEFAULT_MAX_SPAN_QUEUE_SIZE: Final = 32768
"""Spans queued before new ones are dropped (counted): the fault suite's burst (16 threads and 200 asyncio tasks,
20,400 spans in about a second, right after start-up or later) with room to spare, since the export thread, which
shares the GIL with the threads making the spans, may drain little while the burst lasts; about 5 s of ten 30 fps
cameras at ~100 spans per frame-second. Memory bound: about 1.5 KiB per queued span with the default attributes, so
~50 MiB at worst."""
DEFAULT_MAX_EXPORT_BATCH_SIZE: Final = 512
DEFAULT_SCHEDULE_DELAY_MS: Final = 1000
"""A second (the SDK waits 5 s): a trace reaches the collector about as fast as a person opens it, and a process
killed outright loses at most about a second of spans (a burst leaves as soon as a batch is full). Shorter costs CPU:
each OTLP/gRPC export takes 1.5–2.5 ms of it on a 2-vCPU VM, whatever its size (our thread and gRPC's), which at 0.5 s
was a third of our background work on a CPU-bound model (docs/benchmarks.md)."""
DEFAULT_EXPORT_TIMEOUT_S: Final = 10.0


# --- configuration read from the standard variables -------------------------------------------------------------
def _positive_int_env(name: str, default: int, environ: Mapping[str, str]) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        logger.warning(
            "otel_vision: %s=%r is invalid (not a positive integer); using the default %d", name, raw, default
        )
        return default
    return value


@dataclass(frozen=True)
class QueueSettings:
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    max_batch_size: int = DEFAULT_MAX_EXPORT_BATCH_SIZE
    schedule_delay: float = DEFAULT_SCHEDULE_DELAY_MS / 1000
    export_timeout: float = DEFAULT_EXPORT_TIMEOUT_S

    @classmethod
    def from_env(cls, prefix: str, export_timeout: float, environ: Mapping[str, str] | None = None) -> QueueSettings:
        """``prefix`` is ``OTEL_BSP`` (spans) or ``OTEL_BLRP`` (logs); the standard variables keep their meaning."""
        env = os.environ if environ is None else environ
        default = DEFAULT_MAX_SPAN_QUEUE_SIZE if prefix == "OTEL_BSP" else DEFAULT_MAX_QUEUE_SIZE
        queue = _positive_int_env(f"{prefix}_MAX_QUEUE_SIZE", default, env)
        batch = _positive_int_env(f"{prefix}_MAX_EXPORT_BATCH_SIZE", DEFAULT_MAX_EXPORT_BATCH_SIZE, env)
        if batch > queue:
            if env.get(f"{prefix}_MAX_EXPORT_BATCH_SIZE", "").strip():
                logger.warning(
                    "otel_vision: %s_MAX_EXPORT_BATCH_SIZE=%d is above %s_MAX_QUEUE_SIZE=%d; using %d",
                    prefix, batch, prefix, queue, queue,
                )  # fmt: skip
            batch = queue
        delay = _positive_int_env(f"{prefix}_SCHEDULE_DELAY", DEFAULT_SCHEDULE_DELAY_MS, env)
        timeout_ms = _positive_int_env(f"{prefix}_EXPORT_TIMEOUT", int(export_timeout * 1000), env)
        return cls(queue, batch, delay / 1000, timeout_ms / 1000)
