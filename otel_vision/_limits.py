"""Bounds that the synchronous part of `configure()` needs: the exit timeout and the span limits."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Final

from opentelemetry.sdk.trace import SpanLimits

logger = logging.getLogger("otel_vision")

OTEL_VISION_EXIT_TIMEOUT: Final = "OTEL_VISION_EXIT_TIMEOUT"
"""Seconds a program that never calls ``shutdown()`` may spend exporting at exit; default ``2``."""
DEFAULT_EXIT_TIMEOUT_S: Final = 2.0


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
