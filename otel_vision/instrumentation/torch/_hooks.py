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

from otel_vision import _context
from otel_vision import attributes as a
from otel_vision._errors import report_internal_error
from otel_vision._light import with_span
from otel_vision._stage import _Active, stage

MAX_INPUTS = 4
"""Tensors summarized in ``vision.input.shapes`` (shapes and dtypes only, never values)."""

# Open spans of instrumented modules in this context: (module id, model-level?, active stage or None, its stage).
# The context token of each span is kept in ``_Active.token``.
_STACK: ContextVar[tuple[tuple[int, bool, _Active | None, stage | None], ...]] = ContextVar(
    "otel_vision.torch.stack", default=()
)
_is_tracing: Any = torch._C._is_tracing  # what torch.jit.is_tracing() asks, without its Python overhead
# Bound once: the hooks run on every forward of an instrumented module.
_Tensor = torch.Tensor
_get_current = _context.get_current
_attach = _context.attach
_detach = _context.detach
_exc_info = sys.exc_info
_set_span_in_context = with_span
_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


MAX_SIGNATURES = 64
"""Input signatures (shapes, dtypes, device) a model-level hook keeps a ready stage for; more, and it starts over."""


def _signature(args: Any, kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """What `_summary` depends on, cheap to build and compare: the first tensor's device, then each summarized
    tensor's shape and dtype (no strings are formatted)."""
    key: list[Any] = []
    for value in (*args, *kwargs.values()) if kwargs else args:
        shape = getattr(value, "shape", None)
        dtype = getattr(value, "dtype", None)
        if shape is None or dtype is None:
            continue
        if not key:
            key.append(getattr(value, "device", "unknown"))
        key.append(shape)
        key.append(dtype)
        if len(key) == 2 * MAX_INPUTS + 1:
            break
    return tuple(key)


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
        attrs[a.VISION_INPUT_SHAPES] = tuple(shapes)
    return attrs


class PreHook:
    """Starts the module's span (a forward pre-hook registered ``with_kwargs=True``).

    A model-level hook keeps one stage per input signature (`_signature`) whose attributes already hold the input
    summary, so the span gets every attribute when it starts: no strings are formatted and no attributes are set
    after the start on the common path of a few input shapes.
    """

    __slots__ = ("_signatures", "_stage", "attributes", "model_level", "name", "nested")

    def __init__(self, name: str, attributes: dict[str, Any], model_level: bool, nested: bool) -> None:
        self.name = name
        self.attributes = attributes
        self.model_level = model_level
        self.nested = nested
        self._stage: stage | None = None
        self._signatures: dict[tuple[Any, ...], stage] = {}

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (PreHook, (self.name, self.attributes, self.model_level, self.nested))

    def _owner(self, args: Any, kwargs: dict[str, Any]) -> stage:
        """The stage to start for this call."""
        if not self.model_level:
            owner = self._stage
            if owner is None:
                owner = self._stage = stage(self.name, self.attributes)
            return owner
        if not kwargs and len(args) == 1 and type(args[0]) is _Tensor:  # model(x): `_signature` without its loop
            value = args[0]
            key: tuple[Any, ...] = (value.device, value.shape, value.dtype)
        else:
            key = _signature(args, kwargs)
        signatures = self._signatures
        try:
            owner = signatures.get(key)
        except TypeError:  # an unhashable shape or dtype: summarize without a cache
            return stage(self.name, {**self.attributes, **_summary(args, kwargs)})
        if owner is None:
            owner = stage(self.name, {**self.attributes, **_summary(args, kwargs)})
            if len(signatures) >= MAX_SIGNATURES:
                signatures.clear()
            signatures[key] = owner
        return owner

    @torch.compiler.disable  # type: ignore[untyped-decorator]  # torch's decorator is untyped
    def __call__(self, module: Any, args: Any, kwargs: Any) -> None:
        if _is_tracing():
            return
        module_id = id(module)
        stack = _STACK.get()
        if stack and (
            any(entry[0] == module_id for entry in stack)
            or (self.model_level and not self.nested and any(entry[1] for entry in stack))
        ):  # recursion, or a model called inside another instrumented model: no duplicate span
            _STACK.set((*stack, (module_id, self.model_level, None, None)))
            return
        try:
            owner = self._owner(args, kwargs)
            parent = _get_current()
            active = owner._start(parent)
            active.token = _attach(_set_span_in_context(active.span, parent))
        except Exception:
            report_internal_error("module forward pre-hook")
            _STACK.set((*stack, (module_id, self.model_level, None, None)))
            return
        _STACK.set((*stack, (module_id, self.model_level, active, owner)))


@torch.compiler.disable  # type: ignore[untyped-decorator]  # torch's decorator is untyped
def post_hook(module: Any, args: Any, kwargs: Any, output: Any) -> None:
    """Ends the span `PreHook` started (a forward hook registered ``with_kwargs=True, always_call=True``)."""
    stack = _STACK.get()
    if not stack:
        return
    module_id = id(module)
    index = len(stack) - 1
    if stack[index][0] != module_id:  # the innermost entry is ours on every path but an exception's unwinding
        found = next((i for i in range(index - 1, -1, -1) if stack[i][0] == module_id), None)
        if found is None:
            return
        index = found
    _, _, active, owner = stack[index]
    _STACK.set(stack[:index])
    if active is None or owner is None:
        return
    # Called from torch's exception path (always_call=True) with output None: the exception is being handled.
    exc = _exc_info()[1] if output is None else None
    try:
        owner._finish(active, exc)
    finally:
        _detach(active.token)  # the Token attach() returned in PreHook


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
