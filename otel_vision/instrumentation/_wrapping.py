"""Class-level method wrappers that coexist with other libraries' wrappers of the same methods.

Every wrapper otel_vision installs is a ``wrapt`` function wrapper on the class that defines the method, never an
attribute of a user's object, so instances stay picklable and copyable and a copy runs its own methods.

Coexistence: a wrapper installed before ours ends up inside ours, one installed after ours wraps ours; both run on
every call. ``remove_all`` restores the original method when ours is the outermost wrapper. When another wrapper
was installed on top of ours, removing ours would remove theirs too, so ours stays in the chain, switched off (it
only calls through); instrumenting again switches the same wrapper back on instead of adding a second one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

_MAX_CHAIN = 32


def _in_chain(obj: Any, target: Any) -> bool:
    for _ in range(_MAX_CHAIN):
        if obj is None:
            return False
        if obj is target or getattr(obj, "_self_parent", None) is target:  # the wrapper, or it bound to a class
            return True
        obj = getattr(obj, "__wrapped__", None)
    return False


class Patches:
    """The class-level wrappers one instrumentor installed."""

    def __init__(self) -> None:
        self._installed: dict[tuple[Any, str], Any] = {}
        self._lock = threading.Lock()
        self.generation = 0
        """Incremented by `remove_all`: a cache of what was wrapped is valid while this is unchanged."""

    def __contains__(self, key: tuple[Any, str]) -> bool:
        return key in self._installed

    def wrap(self, owner: Any, name: str, wrapper: Callable[..., Any]) -> None:
        """Wrap ``owner.name`` with ``wrapper`` unless our earlier wrapper is still somewhere in its chain."""
        import wrapt

        key = (owner, name)
        with self._lock:
            previous = self._installed.get(key)
            if previous is not None and _in_chain(owner.__dict__.get(name), previous):
                return
            wrapt.wrap_function_wrapper(owner, name, wrapper)
            self._installed[key] = owner.__dict__[name]

    def remove_all(self) -> None:
        """Restore every method whose outermost wrapper is ours; leave ours, inert, under a foreign wrapper."""
        with self._lock:
            self.generation += 1
            self._remove_all()

    def _remove_all(self) -> None:
        for (owner, name), ours in list(self._installed.items()):
            current = owner.__dict__.get(name)
            if current is ours:
                setattr(owner, name, ours.__wrapped__)
                del self._installed[(owner, name)]
            elif not _in_chain(current, ours):
                del self._installed[(owner, name)]  # replaced by someone else: nothing of ours is left there
