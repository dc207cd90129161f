"""Error classification for ``error.type`` and the one place where our own failures are logged."""

from __future__ import annotations

import logging
import threading

from otel_vision.attributes import CUDA_OOM


class _OurLogger(logging.Logger):
    """A logger of ours: its records never raise into our threads or the code that logged them. A handler of the
    application that raises (its ``emit``, its filter) costs that one line, not an export thread or an exit flush."""

    def handle(self, record: logging.LogRecord) -> None:
        try:
            super().handle(record)
        except Exception:
            pass


def our_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` for a logger of ours (``otel_vision`` or below), made an `_OurLogger` unless the
    application gave it a class of its own (``logging.setLoggerClass``)."""
    log = logging.getLogger(name)
    if type(log) is logging.Logger:
        log.__class__ = _OurLogger
    return log


logger = our_logger("otel_vision")

_reported: set[str] = set()
_reported_lock = threading.Lock()


def error_type(exc: BaseException) -> str:
    """Return the ``error.type`` value for an exception: ``cuda_oom``, the exception's own ``error_type`` (a short
    code a class may declare, e.g. ``queue_full``), or its qualified class name."""
    declared = getattr(exc, "error_type", None)
    if isinstance(declared, str) and declared:
        return declared
    cls = type(exc)
    module = cls.__module__
    if cls.__name__ == "OutOfMemoryError" and module.startswith("torch"):
        return CUDA_OOM
    # torch raises a plain RuntimeError for OOM in some code paths (older versions, custom allocators).
    if cls is RuntimeError and "CUDA out of memory" in _message(exc):
        return CUDA_OOM
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


DESCRIPTION_LIMIT = 8192
"""Characters kept of an exception's message in a span status; `configure()` sets it to the span attribute length
limit in force."""


def _message(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder when the exception cannot print itself."""
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__} object: str() failed>"


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` for a span status, capped at `DESCRIPTION_LIMIT` characters, for any exception object."""
    text = f"{type(exc).__name__}: {_message(exc)}"
    limit = DESCRIPTION_LIMIT
    if len(text) > limit:
        return f"{text[:limit]}… [{len(text) - limit} more characters]"
    return text


def report_internal_error(what: str) -> None:
    """Log our own failure once per ``what`` (with traceback), then at debug level: inference goes on regardless.

    Call it from an ``except`` block.
    """
    with _reported_lock:
        first = what not in _reported
        _reported.add(what)
    if first:
        logger.warning("otel_vision: %s failed; telemetry continues without it", what, exc_info=True)
    else:
        logger.debug("otel_vision: %s failed again", what, exc_info=True)
