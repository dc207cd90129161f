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
tracing (``torch.compiler.disable``) and both picklable (see ``_hooks``), so an instrumented module can still be
saved, copied, scripted and traced. Finer spans are opt-in: each costs about one SDK span per call
(14–60 µs, depending on the CPU; see docs/benchmarks.md).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from otel_vision import attributes as a

__all__ = ["instrument_module", "uninstrument_module"]


@dataclass
class _Instrumented:
    name: str
    modules: list[Any] = field(default_factory=list)


_REGISTRY: weakref.WeakKeyDictionary[Any, _Instrumented] = weakref.WeakKeyDictionary()


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
            direct child). Never every leaf by default: each span costs about one SDK span per call.
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
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ValueError(f"name={name!r} must be a non-empty string")
    if not isinstance(stage_name, str) or not stage_name.strip():
        raise ValueError(f"stage_name={stage_name!r} must be a non-empty string")
    targets = _targets(model, submodules)
    from otel_vision.instrumentation.torch import _hooks

    uninstrument_module(model)  # also removes hooks a copy of an instrumented module brought along
    inner = getattr(model, "_orig_mod", model)  # a torch.compile'd module: name it after what it compiles
    model_name = name or type(inner).__name__
    record = _Instrumented(model_name)
    attrs = {a.VISION_MODEL_NAME: model_name}
    try:
        for module, pre in (
            (model, _hooks.PreHook(stage_name, attrs, True, nested)),
            *((m, _hooks.PreHook(p, {**attrs, a.VISION_MODULE_PATH: p}, False, nested)) for p, m in targets),
        ):
            record.modules.append(module)
            _hooks.add_hooks(module, pre)
    except Exception:
        for module in record.modules:
            _hooks.remove_hooks(module)
        raise
    _REGISTRY[model] = record
    return model


def uninstrument_module(model: Any) -> None:
    """Remove every hook `instrument_module` put on ``model`` and its chosen submodules (no-op if there are none).

    On a copy of an instrumented module (``copy.deepcopy``, ``torch.load``), which carries copies of the hooks,
    it removes ours from the copy and all its submodules.
    """
    record = _REGISTRY.pop(model, None)
    if record is None and "__prepare_scriptable__" not in getattr(model, "__dict__", {}):
        return
    from otel_vision.instrumentation.torch import _hooks

    for module in record.modules if record is not None else model.modules():
        _hooks.remove_hooks(module)
