"""The OpenTelemetry context's ``attach``, ``detach`` and ``get_current`` as C calls, when nothing can tell.

Each of the API's functions reaches the runtime context through two Python calls; `stage()` makes three of them per
span. When the runtime context is the API's default one (a ``contextvars.ContextVar``), the variable it keeps is
found once, through the API itself (the token that ``attach`` returns names it), and set, reset and read directly:
the same context object, in the same variable, as the API would. Any other runtime context (``OTEL_PYTHON_CONTEXT``)
keeps the API's functions.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import context as api


def _runtime_variable() -> contextvars.ContextVar[api.Context] | None:
    current = api.get_current()
    token: Any = api.attach(current)
    try:
        variable = getattr(token, "var", None)
        if type(token) is contextvars.Token and type(variable) is contextvars.ContextVar and variable.get() is current:
            return variable
        return None
    finally:
        api.detach(token)


_VARIABLE: Final = _runtime_variable()

attach: Final[Callable[[api.Context], object]] = _VARIABLE.set if _VARIABLE is not None else api.attach
"""``opentelemetry.context.attach``; the token it returns goes to `detach`."""
get_current: Final[Callable[[], api.Context]] = _VARIABLE.get if _VARIABLE is not None else api.get_current
"""``opentelemetry.context.get_current``."""


def with_value(key: str, value: object) -> api.Context:
    """``opentelemetry.context.set_value(key, value)``: the current context with ``key`` set, as a new context."""
    return api.Context({**get_current(), key: value})


def detach(token: object) -> None:
    """``opentelemetry.context.detach``, which never raises: a token that cannot be reset here goes to the API, which
    logs why, as it always did."""
    if _VARIABLE is not None:
        try:
            _VARIABLE.reset(token)  # type: ignore[arg-type]  # a Token from `attach`
            return
        except Exception:
            pass
    try:
        api.detach(token)  # type: ignore[arg-type]  # a Token from `attach`
    except Exception:  # at the recursion limit even this can fail
        pass
