"""diffusers instrumentation: one trace per pipeline call, a span per phase and per denoising step.

Usage
-----

```python
import otel_vision

otel_vision.configure(service_name="pix2pix-editor")
otel_vision.instrument_diffusers(pipe)        # this pipeline; or instrument_diffusers() for every pipeline
images = pipe("make it snowy", image=photo).images
```

Hook points, all public: ``callback_on_step_end`` (chained with the user's own callback), torch forward pre-hooks on
the text encoders, the denoiser (``unet``/``transformer``) and the VAE's ``encoder``/``post_quant_conv``/``decoder``,
and the pipeline's own ``image_processor.preprocess``/``postprocess`` (instance attributes). A pipeline's ``__call__``
is looked up on its class, so the class's ``__call__`` gets one wrapper; only instrumented pipelines produce spans.
``uninstrument()`` removes all of it. Prompts are recorded only with ``capture_prompts=True`` or
``OTEL_VISION_CAPTURE_PROMPTS=true``; images never are.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import weakref
from collections.abc import Callable, Collection
from typing import Any

from opentelemetry import context
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]  # untyped pkg
from opentelemetry.instrumentation.utils import unwrap

from otel_vision import _config
from otel_vision import attributes as a
from otel_vision._errors import report_internal_error
from otel_vision.instrumentation.diffusers import _call
from otel_vision.instrumentation.diffusers._categories import (
    CATEGORIES,
    InstructionClassifier,
    classify_instruction,
)
from otel_vision.instrumentation.diffusers.package import _instruments

__all__ = ["CATEGORIES", "DiffusersInstrumentor", "classify_instruction"]

logger = logging.getLogger("otel_vision.diffusers")


def _task(pipe: Any) -> str:
    name = type(pipe).__name__
    if "Inpaint" in name:
        return "inpainting"
    if any(key in name for key in ("InstructPix2Pix", "Img2Img", "ImageToImage", "Pix2Pix")):
        return "image-to-image"
    if "Video" in name:
        return "text-to-video"
    return "text-to-image"


def _first_prompt(args: Any, kwargs: dict[str, Any]) -> str | None:
    prompt = kwargs.get("prompt", args[0] if args else None)
    if isinstance(prompt, list | tuple):
        prompt = prompt[0] if prompt else None
    return prompt if isinstance(prompt, str) else None


class _StepEnd:
    """Our ``callback_on_step_end``: closes the step span and hands the pipeline back what it expects."""

    tensor_inputs: list[str] = []

    def __call__(self, pipeline: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]) -> Any:
        try:
            call = _call.current_call()
            if call is not None:
                call.end_step(index=step_index, timestep=timestep)
        except Exception:
            report_internal_error("diffusers step callback")
        return callback_kwargs


_STEP_END = _StepEnd()


def _chain_callback(user: Any) -> Any:
    """The user's callback (function, PipelineCallback or MultiPipelineCallbacks) followed by ours."""
    if user is None:
        return _STEP_END
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    if isinstance(user, MultiPipelineCallbacks):
        # MultiPipelineCallbacks needs only .tensor_inputs and __call__ from each member, which ours has.
        return MultiPipelineCallbacks([*user.callbacks, _STEP_END])  # type: ignore[list-item]  # duck-typed member
    if isinstance(user, PipelineCallback):
        return MultiPipelineCallbacks([user, _STEP_END])  # type: ignore[list-item]  # duck-typed member

    def chained(pipeline: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]) -> Any:
        result = user(pipeline, step_index, timestep, callback_kwargs)
        _STEP_END(pipeline, step_index, timestep, callback_kwargs)
        return result

    return chained


class _PipelineHooks:
    """The hooks and method wraps installed on one pipeline's current components (re-checked at every call)."""

    def __init__(self) -> None:
        self.handles: dict[str, tuple[Any, Any]] = {}
        self.processor: tuple[Any, Any, Any] | None = None
        self.device: tuple[Any, str] | None = None

    def execution_device(self, pipe: Any, denoiser: Any) -> str | None:
        """``pipe._execution_device`` (right under CPU offload), cached while the denoiser's weights stay put:
        diffusers computes it by walking every module, over a millisecond per call."""
        try:
            key = next(denoiser.parameters()).device if denoiser is not None else None
        except (StopIteration, AttributeError, TypeError):
            key = None
        if self.device is not None and key is not None and self.device[0] == key:
            return self.device[1]
        try:
            value = str(pipe._execution_device)
        except Exception:  # a pipeline with no module on any device
            return None
        self.device = (key, value)
        return value

    def ensure(self, pipe: Any, hooks: dict[str, Callable[..., None]]) -> None:
        targets: dict[str, tuple[Any, Callable[..., None]]] = {}
        for name in _call.TEXT_ENCODERS:
            targets[name] = (getattr(pipe, name, None), hooks["text_encoder"])
        for name in _call.DENOISERS:
            targets[name] = (getattr(pipe, name, None), hooks["denoiser"])
        vae = getattr(pipe, "vae", None)
        targets["vae.encoder"] = (getattr(vae, "encoder", None), hooks["vae_encoder"])
        targets["vae.post_quant_conv"] = (getattr(vae, "post_quant_conv", None), hooks["vae_decoder"])
        targets["vae.decoder"] = (getattr(vae, "decoder", None), hooks["vae_decoder"])
        for key, (module, hook) in targets.items():
            current = self.handles.get(key)
            if current is not None and current[0] is module:
                continue
            if current is not None:
                current[1].remove()
                del self.handles[key]
            if module is not None and hasattr(module, "register_forward_pre_hook"):
                self.handles[key] = (module, module.register_forward_pre_hook(hook))
        self._wrap_processor(getattr(pipe, "image_processor", None))

    def _wrap_processor(self, processor: Any) -> None:
        if processor is None or (self.processor is not None and self.processor[0] is processor):
            return
        self._unwrap_processor()
        original_pre, original_post = processor.preprocess, processor.postprocess

        def preprocess(*args: Any, **kwargs: Any) -> Any:
            call = _call.current_call()
            if call is None:
                return original_pre(*args, **kwargs)
            call.end_phase()
            return call.stages["preprocess"].run(call.root_context(), original_pre, *args, **kwargs)

        def postprocess(image: Any, *args: Any, **kwargs: Any) -> Any:
            call = _call.current_call()
            if call is None:
                return original_post(image, *args, **kwargs)
            call.end_phase()
            shape = getattr(image, "shape", None)
            if shape is not None and len(shape) == 4:
                call.output_hw = (int(shape[2]), int(shape[3]))
                if call.root is not None:
                    call.root.set_attribute(a.VISION_BATCH_SIZE, int(shape[0]))
            return call.postprocess_stage.run(call.root_context(), original_post, image, *args, **kwargs)

        processor.preprocess, processor.postprocess = preprocess, postprocess
        self.processor = (processor, original_pre, original_post)

    def _unwrap_processor(self) -> None:
        if self.processor is None:
            return
        processor = self.processor[0]
        for name in ("preprocess", "postprocess"):
            processor.__dict__.pop(name, None)  # back to the class methods
        self.processor = None

    def remove(self) -> None:
        for _, handle in self.handles.values():
            handle.remove()
        self.handles.clear()
        self._unwrap_processor()


def _make_hooks() -> dict[str, Callable[..., None]]:
    """Forward pre-hooks, excluded from torch.compile tracing so they never cause a graph break."""
    import torch

    def guarded(fn: Callable[[_call.Call], None], what: str) -> Callable[..., None]:
        @torch.compiler.disable  # type: ignore[untyped-decorator]  # torch's decorator is untyped
        def hook(module: Any, args: Any) -> None:
            call = _call.current_call()
            if call is None:
                return
            try:
                fn(call)
            except Exception:
                report_internal_error(f"diffusers {what} hook")

        return hook  # type: ignore[no-any-return]  # torch.compiler.disable returns Any

    return {
        "text_encoder": guarded(lambda call: call.enter("encode_prompt"), "text encoder"),
        "denoiser": guarded(lambda call: call.begin_step(), "denoiser"),
        "vae_encoder": guarded(lambda call: call.enter("prepare_latents"), "VAE encoder"),
        "vae_decoder": guarded(lambda call: call.enter("vae_decode"), "VAE decoder"),
    }


class DiffusersInstrumentor(BaseInstrumentor):  # type: ignore[misc]  # BaseInstrumentor is untyped
    """Traces diffusers pipeline calls; ``instrument(pipelines=[pipe])`` limits it to those pipelines.

    Options (keyword arguments of ``instrument()``): ``capture_prompts`` (else ``OTEL_VISION_CAPTURE_PROMPTS``,
    default off) and ``instruction_classifier`` (a function from an instruction to a small set of categories;
    default `classify_instruction`).
    """

    def __init__(self) -> None:
        if not hasattr(self, "_pipes"):  # BaseInstrumentor is a singleton: __init__ runs on every construction
            self._lock = threading.Lock()
            self._all = False
            self._pipes: weakref.WeakKeyDictionary[Any, _PipelineHooks] = weakref.WeakKeyDictionary()
            self._enabled_pipes: weakref.WeakSet[Any] = weakref.WeakSet()
            self._classes: set[type] = set()
            self._capture_prompts = False
            self._classifier: InstructionClassifier = classify_instruction
            self._hooks: dict[str, Callable[..., None]] | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def add_pipeline(self, pipe: Any) -> None:
        """Also trace ``pipe``."""
        self._wrap_class_of(pipe)
        self._enabled_pipes.add(pipe)

    def trace_all_pipelines(self) -> None:
        """Trace every pipeline from now on."""
        self._all = True
        self._wrap_known_classes()

    # --- BaseInstrumentor -------------------------------------------------------------------------------------
    def _instrument(self, **kwargs: Any) -> None:
        import wrapt
        from diffusers import DiffusionPipeline  # ModuleNotFoundError here lets auto-instrumentation skip us

        for ignored in ("tracer_provider", "meter_provider"):
            if kwargs.get(ignored) is not None:
                logger.warning("otel_vision: %s= is ignored; spans go through otel_vision.configure()", ignored)
        self._capture_prompts = _config.resolve_capture_prompts(kwargs.get("capture_prompts"), os.environ)
        classifier = kwargs.get("instruction_classifier")
        if classifier is not None and not callable(classifier):
            raise ValueError(f"instruction_classifier={classifier!r} must be a function from str to str")
        self._classifier = classifier or classify_instruction
        self._hooks = _make_hooks()
        pipelines = kwargs.get("pipelines")
        self._all = pipelines is None
        # Catches pipelines created (and pipeline classes imported) after instrumentation.
        wrapt.wrap_function_wrapper(DiffusionPipeline, "register_modules", self._wrap_register_modules)
        if self._all:
            self._wrap_known_classes()
        for pipe in pipelines or ():
            self.add_pipeline(pipe)

    def _uninstrument(self, **kwargs: Any) -> None:
        from diffusers import DiffusionPipeline

        unwrap(DiffusionPipeline, "register_modules")
        for cls in list(self._classes):
            unwrap(cls, "__call__")
        self._classes.clear()
        for hooks in list(self._pipes.values()):
            hooks.remove()
        self._pipes = weakref.WeakKeyDictionary()
        self._enabled_pipes = weakref.WeakSet()
        self._all = False

    # --- wrapping -----------------------------------------------------------------------------------------------
    def _wrap_known_classes(self) -> None:
        from diffusers import DiffusionPipeline

        pending: list[type] = list(DiffusionPipeline.__subclasses__())
        while pending:
            cls = pending.pop()
            pending.extend(cls.__subclasses__())
            self._wrap_class(cls)

    def _wrap_class_of(self, pipe: Any) -> None:
        self._wrap_class(type(pipe))

    def _wrap_class(self, cls: type) -> None:
        owner = next((k for k in cls.__mro__ if "__call__" in k.__dict__), None)
        if owner is None or owner.__name__ == "DiffusionPipeline" or owner is object:
            return
        with self._lock:
            if owner in self._classes:
                return
            import wrapt

            wrapt.wrap_function_wrapper(owner, "__call__", self._wrap_call)
            self._classes.add(owner)

    def _wrap_register_modules(self, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        result = wrapped(*args, **kwargs)
        if self._all:
            try:
                self._wrap_class_of(instance)
            except Exception:
                report_internal_error("diffusers pipeline registration")
        return result

    def _enabled(self, pipe: Any) -> bool:
        return self._all or pipe in self._enabled_pipes

    def _wrap_call(self, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        if not self._enabled(instance) or _call.current_call() is not None:
            # Not ours, or a pipeline calling another pipeline inside an instrumented call: one root per call.
            return wrapped(*args, **kwargs)
        try:
            per_step = "callback_on_step_end" in _call_parameters(type(instance))
            call = _call.Call(instance, type(instance).__name__, per_step)
            hooks = self._pipes.get(instance)
            if hooks is None:
                hooks = self._pipes[instance] = _PipelineHooks()
            assert self._hooks is not None
            hooks.ensure(instance, self._hooks)
            root = _call.PipelineRequest(call, self._root_attributes(instance, hooks, args, kwargs))
            if per_step:
                kwargs = {**kwargs, "callback_on_step_end": _chain_callback(kwargs.get("callback_on_step_end"))}
        except Exception:
            report_internal_error("diffusers pipeline wrapper")
            return wrapped(*args, **kwargs)
        token = context.attach(context.set_value(_call.CALL_KEY, call))
        try:
            return root.call(wrapped, *args, **kwargs)
        finally:
            context.detach(token)

    def _root_attributes(self, pipe: Any, hooks: _PipelineHooks, args: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        denoiser = next((getattr(pipe, n) for n in _call.DENOISERS if getattr(pipe, n, None) is not None), None)
        attrs: dict[str, Any] = {
            a.VISION_MODEL_NAME: type(pipe).__name__,
            a.VISION_TASK: _task(pipe),
            a.DIFFUSION_SCHEDULER: type(getattr(pipe, "scheduler", None)).__name__,
        }
        name_or_path = getattr(pipe, "name_or_path", None)
        if isinstance(name_or_path, str) and name_or_path:
            attrs[a.VISION_MODEL_ID] = name_or_path
        dtype = getattr(denoiser, "dtype", None)
        if dtype is not None:
            attrs[a.VISION_DTYPE] = str(dtype).removeprefix("torch.")
        device = hooks.execution_device(pipe, denoiser)
        if device is not None:
            attrs[a.VISION_DEVICE] = device
        prompt = _first_prompt(args, kwargs)
        if prompt is not None:
            try:
                attrs[a.VISION_INSTRUCTION_CATEGORY] = str(self._classifier(prompt))
            except Exception:
                report_internal_error("instruction classifier")
                attrs[a.VISION_INSTRUCTION_CATEGORY] = "other"
            if self._capture_prompts:
                attrs[a.VISION_PROMPT] = prompt[: _call.MAX_PROMPT]
        return attrs


_PARAMETERS: dict[type, frozenset[str]] = {}


def _call_parameters(cls: type) -> frozenset[str]:
    names = _PARAMETERS.get(cls)
    if names is None:
        target = inspect.unwrap(cls.__call__)
        names = _PARAMETERS[cls] = frozenset(inspect.signature(target).parameters)
    return names
