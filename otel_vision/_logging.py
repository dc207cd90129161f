"""The root-logger handler that exports stdlib ``logging`` records, and the order-independence it needs.

The handler is OpenTelemetry's supported one (``opentelemetry-instrumentation-logging``; the SDK's own is deprecated).
Putting any handler on the root logger has a side effect: ``logging.basicConfig()`` does nothing once the root logger
has a handler, so an application that configures logging *after* ``configure()`` would silently lose its console
output. `attach()` therefore wraps ``logging.basicConfig`` and ``logging.config.dictConfig``/``fileConfig`` once: while
they run, our handlers step aside, so they behave exactly as in a program without otel_vision, and ours come back
after.
"""

from __future__ import annotations

import functools
import logging
import logging.config
import threading
import weakref
from collections.abc import Callable
from typing import Any

_lock = threading.Lock()
_ours: weakref.WeakSet[logging.Handler] = weakref.WeakSet()
_optional: weakref.WeakSet[logging.Handler] = weakref.WeakSet()
_wrapped = False


class _NotOurLogs(logging.Filter):
    """Keep the SDK's own records (export failures, …) out of the log pipeline, which could otherwise feed itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("opentelemetry")


def exporting_handler(logger_provider: Any, level: int) -> logging.Handler:
    """A handler that turns records at ``level`` or above into OpenTelemetry log records of ``logger_provider``."""
    from opentelemetry.instrumentation.logging.handler import LoggingHandler

    handler = LoggingHandler(level=level, logger_provider=logger_provider, log_code_attributes=True)
    handler.addFilter(_NotOurLogs())
    return handler


def attach(handler: logging.Handler) -> list[logging.Handler]:
    """Put ``handler`` on the root logger; return every handler added (to remove them at shutdown).

    When the root logger had no handler, Python's last-resort printing of warnings to stderr is kept by adding
    ``logging.lastResort`` too; a later ``basicConfig()`` replaces it with the application's own handler.
    """
    root = logging.getLogger()
    added: list[logging.Handler] = []
    with _lock:
        _wrap_config_functions()
        if not root.handlers and logging.lastResort is not None:
            root.addHandler(logging.lastResort)
            _optional.add(logging.lastResort)
            added.append(logging.lastResort)
        root.addHandler(handler)
        _ours.add(handler)
        added.append(handler)
    return added


def _step_aside(config_fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(config_fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        root = logging.getLogger()
        with _lock:
            present = [h for h in list(root.handlers) if h in _ours or h in _optional]
            for handler in present:
                root.removeHandler(handler)
        try:
            return config_fn(*args, **kwargs)
        finally:
            with _lock:
                for handler in present:
                    # The last-resort printer only stands in while the application has no handler of its own.
                    if handler in _ours or not root.handlers:
                        root.addHandler(handler)

    return wrapper


def _wrap_config_functions() -> None:
    global _wrapped
    if _wrapped:
        return
    _wrapped = True
    logging.basicConfig = _step_aside(logging.basicConfig)
    logging.config.dictConfig = _step_aside(logging.config.dictConfig)
    logging.config.fileConfig = _step_aside(logging.config.fileConfig)
