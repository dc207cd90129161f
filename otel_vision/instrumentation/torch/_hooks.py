"""The forward hooks of `instrument_module`: picklable objects and module-level functions, never closures.

A module keeps its hooks when it is pickled (``torch.save(model)``), copied (``copy.deepcopy``) or scripted, so:

- `PreHook` holds only picklable settings (stage name, attributes, flags) and finds its module from the call's
  arguments, so a copy's hooks trace the copy; `post_hook` is a module-level function;
- both are excluded from ``torch.compile`` tracing, so they never cause a graph break;
- both do nothing while ``torch.jit.trace`` records a graph (reading shapes there would add tracer warnings);
- `PrepareScriptable` is put on each instrumented module as ``__prepare_scriptable__``, which ``torch.jit.script``
  calls first: TorchScript then compiles a shallow copy without our hooks (Python code it could not compile),
  sharing the module's parameters, so a module is scriptable exactly when it is without us.
"""

from __future__ import annotations

import copy
import sys
from contextvars import ContextVar
from typing import Any

import torch  # noqa: TID253  # imported only by instrument_module(), which needs torch anyway
from opentelemetry import context, trace

from otel_vision import attributes as a
from otel_vision._errors import report_internal_error
from otel_vision._stage import _Active, stage

MAX_INPUTS = 4
"""Tensors summarized in ``vision.input.shapes`` (shapes and dtypes only, never values)."""

# Open spans of instrumented modules in this context: (module id, model-level?, active span or None, context token,
# the stage that started it).
_STACK: ContextVar[tuple[tuple[int, bool, _Active | None, object, stage | None], ...]] = ContextVar(
    "otel_vision.torch.stack", default=()
)
_is_tracing: Any = torch._C._is_tracing  # what torch.jit.is_tracing() asks, without its Python overhead
_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


def _summary(args: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    shapes: list[str] = []
    attrs: dict[str, Any] = {}
    for value in (*args, *kwargs.values()):
        shape = getattr(value, "shape", None)
        dtype = getattr(value, "dtype", None)
        if shape is None or dtype is None:
            continue
        if not shapes:
            attrs[a.VISION_DEVICE] = str(getattr(value, "device", "unknown"))
            if len(shape):
                attrs[a.VISION_BATCH_SIZE] = int(shape[0])
        shapes.append(f"{str(dtype).removeprefix('torch.')}[{','.join(str(int(d)) for d in shape)}]")
        if len(shapes) == MAX_INPUTS:
            break
    if shapes:
        attrs[a.VISION_INPUT_SHAPES] = shapes
    return attrs


class PreHook:
    """Starts the module's span (a forward pre-hook registered ``with_kwargs=True``)."""

    __slots__ = ("_stage", "attributes", "model_level", "name", "nested")

    def __init__(self, name: str, attributes: dict[str, Any], model_level: bool, nested: bool) -> None:
        self.name = name
        self.attributes = attributes
        self.model_level = model_level
        self.nested = nested
        self._stage: stage | None = None

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (PreHook, (self.name, self.attributes, self.model_level, self.nested))

    @torch.compiler.disable  # type: ignore[untyped-decorator]  # torch's decorator is untyped
    def __call__(self, module: Any, args: Any, kwargs: Any) -> None:
        if _is_tracing():
            return
        module_id = id(module)
        stack = _STACK.get()
        skip = any(entry[0] == module_id for entry in stack) or (
            self.model_level and not self.nested and any(entry[1] for entry in stack)
        )
        if skip:  # recursion, or a model called inside another instrumented model: no duplicate span
            _STACK.set((*stack, (module_id, self.model_level, None, None, None)))
            return
        try:
            owner = self._stage
            if owner is None:
                owner = self._stage = stage(self.name, self.attributes)
            active = owner._start(None)
            if self.model_level:
                active.span.set_attributes(_summary(args, kwargs))
            token = context.attach(trace.set_span_in_context(active.span))
        except Exception:
            report_internal_error("module forward pre-hook")
            _STACK.set((*stack, (module_id, self.model_level, None, None, None)))
            return
        _STACK.set((*stack, (module_id, self.model_level, active, token, owner)))


@torch.compiler.disable  # type: ignore[untyped-decorator]  # torch's decorator is untyped
def post_hook(module: Any, args: Any, kwargs: Any, output: Any) -> None:
    """Ends the span `PreHook` started (a forward hook registered ``with_kwargs=True, always_call=True``)."""
    module_id = id(module)
    stack = _STACK.get()
    index = next((i for i in range(len(stack) - 1, -1, -1) if stack[i][0] == module_id), None)
    if index is None:
        return
    _, _, active, token, owner = stack[index]
    _STACK.set(stack[:index])
    if active is None or owner is None:
        return
    # Called from torch's exception path (always_call=True) with output None: the exception is being handled.
    exc = sys.exc_info()[1] if output is None else None
    try:
        owner._finish(active, exc)
    finally:
        context.detach(token)  # type: ignore[arg-type]  # the Token attach() returned by PreHook


def is_ours(hook: Any) -> bool:
    return isinstance(hook, PreHook) or hook is post_hook


def remove_hooks(module: Any) -> int:
    """Remove every hook of ours from ``module`` (its own, or ones a copy brought along); return how many."""
    ours = [key for key, hook in module._forward_pre_hooks.items() if is_ours(hook)]
    ours += [key for key, hook in module._forward_hooks.items() if is_ours(hook)]
    for key in ours:
        for name in _HOOK_DICTS:
            getattr(module, name).pop(key, None)
    if isinstance(module.__dict__.get("__prepare_scriptable__"), PrepareScriptable):
        del module.__dict__["__prepare_scriptable__"]
    return len(ours)


def add_hooks(module: Any, pre: PreHook) -> list[Any]:
    handles = [
        module.register_forward_pre_hook(pre, with_kwargs=True),
        module.register_forward_hook(post_hook, with_kwargs=True, always_call=True),
    ]
    module.__dict__["__prepare_scriptable__"] = PrepareScriptable(module)
    return handles


class PrepareScriptable:
    """``module.__prepare_scriptable__``: what ``torch.jit.script`` compiles is a shallow copy without our hooks."""

    __slots__ = ("module",)

    def __init__(self, module: Any) -> None:
        self.module = module

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (PrepareScriptable, (self.module,))

    def __call__(self) -> Any:
        module = self.module
        clone = copy.copy(module)
        state = clone.__dict__
        state.pop("__prepare_scriptable__", None)
        state["_modules"] = dict(module._modules)  # torch.jit.script replaces children in this dict
        for name in _HOOK_DICTS:
            state[name] = type(getattr(module, name))(getattr(module, name))
        remove_hooks(clone)
        own = getattr(type(module), "__prepare_scriptable__", None)
        return own(clone) if own is not None else clone
