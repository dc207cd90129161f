"""``torch.nn.Module`` instrumentation: every forward call of a model as an ``inference`` span.

Usage
-----

```python
import otel_vision

model = torchvision.models.resnet50()
otel_vision.instrument_module(model, name="resnet50")                          # one span per forward
otel_vision.instrument_module(model, name="resnet50", submodules=["layer1", "fc"])  # plus chosen components
logits = model(batch)
otel_vision.uninstrument_module(model)                                         # every hook removed
```

A forward pre-hook and an always-called forward hook per instrumented module, both excluded from ``torch.compile``
tracing (``torch.compiler.disable``). Finer spans are opt-in: each costs one span (≈20 µs on a CPU core) per call.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context, trace

from otel_vision import attributes as a
from otel_vision._errors import report_internal_error
from otel_vision._stage import _Active, stage

__all__ = ["instrument_module", "uninstrument_module"]

MAX_INPUTS = 4
"""Tensors summarized in ``vision.input.shapes`` (shapes and dtypes only, never values)."""

# Open spans of instrumented modules in this context: (module id, model-level?, active span or None, context token).
_STACK: ContextVar[tuple[tuple[int, bool, _Active | None, object], ...]] = ContextVar(
    "otel_vision.torch.stack", default=()
)


@dataclass
class _Instrumented:
    name: str
    handles: list[Any] = field(default_factory=list)


_REGISTRY: weakref.WeakKeyDictionary[Any, _Instrumented] = weakref.WeakKeyDictionary()


def _summary(args: Iterable[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
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


def _make_hooks(owner: stage, module_id: int, model_level: bool, nested: bool, summarize: bool) -> tuple[Any, Any]:
    import torch

    @torch.compiler.disable  # type: ignore[untyped-decorator]  # torch's decorator is untyped
    def pre_hook(module: Any, args: Any, kwargs: Any) -> None:
        stack = _STACK.get()
        skip = any(entry[0] == module_id for entry in stack) or (
            model_level and not nested and any(entry[1] for entry in stack)
        )
        if skip:  # recursion, or a model called inside another instrumented model: no duplicate span
            _STACK.set((*stack, (module_id, model_level, None, None)))
            return
        try:
            active = owner._start(None)
            if summarize:
                active.span.set_attributes(_summary(args, kwargs))
            token = context.attach(trace.set_span_in_context(active.span))
        except Exception:
            report_internal_error("module forward pre-hook")
            _STACK.set((*stack, (module_id, model_level, None, None)))
            return
        _STACK.set((*stack, (module_id, model_level, active, token)))

    @torch.compiler.disable  # type: ignore[untyped-decorator]  # torch's decorator is untyped
    def post_hook(module: Any, args: Any, kwargs: Any, output: Any) -> None:
        stack = _STACK.get()
        index = next((i for i in range(len(stack) - 1, -1, -1) if stack[i][0] == module_id), None)
        if index is None:
            return
        _, _, active, token = stack[index]
        _STACK.set(stack[:index])
        if active is None:
            return
        # Called from torch's exception path (always_call=True) with output None: the exception is being handled.
        exc = sys.exc_info()[1] if output is None else None
        try:
            owner._finish(active, exc)
        finally:
            context.detach(token)  # type: ignore[arg-type]  # the Token attach() returned in pre_hook

    return pre_hook, post_hook


def _targets(model: Any, submodules: Sequence[str] | int | None) -> list[tuple[str, Any]]:
    if submodules is None:
        return []
    if isinstance(submodules, bool) or not isinstance(submodules, int | list | tuple):
        raise ValueError(f"submodules={submodules!r} must be a list of submodule names or a depth (int >= 1)")
    if isinstance(submodules, int):
        if submodules < 1:
            raise ValueError(f"submodules={submodules!r}: a depth must be at least 1")
        return [(path, m) for path, m in model.named_modules() if path and path.count(".") < submodules]
    found = []
    for path in submodules:
        try:
            found.append((path, model.get_submodule(path)))
        except AttributeError:
            names = [n for n, _ in model.named_children()]
            raise ValueError(
                f"submodules: {type(model).__name__} has no submodule {path!r} (children: {names})"
            ) from None
    return found


def instrument_module(
    model: Any,
    name: str | None = None,
    *,
    submodules: Sequence[str] | int | None = None,
    stage_name: str = "inference",
    nested: bool = False,
) -> Any:
    """Trace every forward call of a ``torch.nn.Module`` as a stage span (``inference`` by default).

    ```python
    otel_vision.instrument_module(model, name="resnet50")
    otel_vision.instrument_module(detector, name="detr", submodules=["backbone", "transformer", "class_embed"])
    otel_vision.instrument_module(detector, name="detr", submodules=1)   # every direct child
    ```

    The model span carries ``vision.model.name``, ``vision.input.shapes`` (dtype and shape of the first tensors, never
    values), ``vision.device`` and ``vision.batch.size``, plus the GPU attributes on CUDA. Chosen submodules get child
    spans named after their path. Works on a ``torch.compile``'d module too (instrument the compiled wrapper; hooks
    run outside the graph). Calling it again on the same module replaces the previous instrumentation.

    Args:
        model: the module.
        name: ``vision.model.name`` (default: the module's class name).
        submodules: names of submodules to trace as well (``"backbone"``, ``"layer4.1"``), or a depth (1: every
            direct child). Never every leaf by default: each span costs about 20 µs per call.
        stage_name: the model span's name and ``vision.stage``.
        nested: trace this module even when it runs inside another instrumented model (default: the outer model's
            span already covers it, so no duplicate span).

    Returns:
        The same module, for chaining.
    """
    try:
        import torch
    except ImportError:
        raise ImportError("pip install 'otel-vision[torch]': instrument_module() needs torch") from None
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"instrument_module() takes a torch.nn.Module, got {type(model).__name__}")
    targets = _targets(model, submodules)
    if model in _REGISTRY:
        uninstrument_module(model)
    inner = getattr(model, "_orig_mod", model)  # a torch.compile'd module: name it after what it compiles
    model_name = name or type(inner).__name__
    record = _Instrumented(model_name)
    attrs = {a.VISION_MODEL_NAME: model_name}
    try:
        for module, model_level, owner in (
            (model, True, stage(stage_name, attrs)),
            *((m, False, stage(p, {**attrs, a.VISION_MODULE_PATH: p})) for p, m in targets),
        ):
            pre, post = _make_hooks(owner, id(module), model_level, nested, summarize=model_level)
            record.handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            record.handles.append(module.register_forward_hook(post, with_kwargs=True, always_call=True))
    except Exception:
        for handle in record.handles:
            handle.remove()
        raise
    _REGISTRY[model] = record
    return model


def uninstrument_module(model: Any) -> None:
    """Remove every hook `instrument_module` put on ``model`` and its submodules (no-op if there are none)."""
    record = _REGISTRY.pop(model, None)
    if record is None:
        return
    for handle in record.handles:
        handle.remove()
