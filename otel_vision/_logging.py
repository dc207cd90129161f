"""The root-logger handler that exports stdlib ``logging`` records, and the order-independence it needs.

The handler is our own small one (`ExportingHandler`): the SDK's ``LoggingHandler`` is deprecated, and its
supported successor in ``opentelemetry-instrumentation-logging`` costs 45 ms of imports (the instrumentor machinery)
at ``configure()``, more than the rest of it together.
Putting any handler on the root logger has a side effect: ``logging.basicConfig()`` does nothing once the root logger
has a handler, so an application that configures logging *after* ``configure()`` would silently lose its console
output. `attach()` therefore wraps ``logging.basicConfig`` and ``logging.config.dictConfig``/``fileConfig`` once: while
they run, our handlers step aside, so they behave exactly as in a program without otel_vision, and ours come back
after.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from typing import Any, Final

_lock = threading.Lock()
_ours: weakref.WeakSet[logging.Handler] = weakref.WeakSet()
_optional: weakref.WeakSet[logging.Handler] = weakref.WeakSet()
_wrapped = False


class _NotOurLogs(logging.Filter):
    """Keep the SDK's own records and otel_vision's export-path lines out of the log pipeline, which could otherwise
    feed itself (a failing logs export counting its own complaints as lost records)."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        return not (name.startswith("opentelemetry") or name == "otel_vision.export")


_SEVERITY: Final = ((50, 21, "FATAL"), (40, 17, "ERROR"), (30, 13, "WARN"), (20, 9, "INFO"), (10, 5, "DEBUG"))
"""(lowest stdlib level, OpenTelemetry severity number, severity text), highest first: the data model's mapping."""
_STANDARD_FIELDS: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class ExportingHandler(logging.Handler):
    """Turns stdlib records into OpenTelemetry log records of one logger provider, with the active trace and span.

    Attributes: the code location (``code.file.path``, ``code.function.name``, ``code.line.number``), the exception
    (``exception.type``, ``exception.message``, ``exception.stacktrace``) when there is one, and any ``extra=`` the
    application passed. A record logged while this handler emits (by the export path itself) is not exported again.
    """

    def __init__(self, logger_provider: Any, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._provider = logger_provider
        self._loggers: dict[str, Any] = {}
        self._emitting = threading.local()

    def use(self, logger_provider: Any) -> None:
        """Emit into ``logger_provider`` from now on."""
        self._provider = logger_provider
        self._loggers = {}

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._emitting, "active", False):
            return
        self._emitting.active = True
        try:
            logger = self._loggers.get(record.name)
            if logger is None:
                logger = self._loggers[record.name] = self._provider.get_logger(record.name)
            logger.emit(self._translate(record))
        except Exception:
            self.handleError(record)
        finally:
            self._emitting.active = False

    def _translate(self, record: logging.LogRecord) -> Any:
        from opentelemetry._logs import LogRecord, SeverityNumber
        from opentelemetry.context import get_current

        number, text = 1, record.levelname
        for lowest, otel_number, otel_text in _SEVERITY:
            if record.levelno >= lowest:
                number, text = otel_number + min(3, (record.levelno - lowest) // 2), otel_text
                break
        attributes: dict[str, Any] = {
            key: value for key, value in vars(record).items() if key not in _STANDARD_FIELDS and _plain(value)
        }
        attributes["code.file.path"] = record.pathname
        attributes["code.function.name"] = record.funcName
        attributes["code.line.number"] = record.lineno
        if record.exc_info and record.exc_info[0] is not None:
            kind, value, tb = record.exc_info
            attributes["exception.type"] = kind.__name__
            attributes["exception.message"] = _describe(value)
            if tb is not None:
                attributes["exception.stacktrace"] = "".join(traceback.format_exception(kind, value, tb))
        return LogRecord(
            timestamp=int(record.created * 1e9),
            observed_timestamp=time.time_ns(),
            context=get_current(),
            severity_text=text,
            severity_number=SeverityNumber(number),
            body=self.format(record) if self.formatter is not None else record.getMessage(),
            attributes=attributes,
        )


def _plain(value: object) -> bool:
    return isinstance(value, str | bool | int | float)


def _describe(value: BaseException | None) -> str:
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__} object: str() failed>"


def exporting_handler(logger_provider: Any, level: int) -> logging.Handler:
    """A handler that turns records at ``level`` or above into OpenTelemetry log records of ``logger_provider``."""
    handler = ExportingHandler(logger_provider, level)
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
    if "logging.config" in sys.modules:
        wrap_config_functions()


_config_wrapped = False
_config_lock = threading.Lock()


def wrap_config_functions() -> None:
    """Wrap ``logging.config.dictConfig``/``fileConfig`` too (importing ``logging.config`` costs 6 ms, so
    `configure()` leaves it to its setup thread unless the application has imported it already)."""
    global _config_wrapped
    import logging.config

    with _config_lock:
        if _config_wrapped:
            return
        _config_wrapped = True
        logging.config.dictConfig = _step_aside(logging.config.dictConfig)
        logging.config.fileConfig = _step_aside(logging.config.fileConfig)
