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
the text encoders, the denoiser (``unet``/``transformer``) and the VAE's ``encoder``/``post_quant_conv``/``decoder``
(module-level functions, so components stay picklable), and the pipeline's own ``image_processor.preprocess``/
``postprocess`` (wrapped on the processor's class, so a processor stays picklable and a copied pipeline's processor runs
with its own configuration). A pipeline's ``__call__`` is looked up on its class, so the class's ``__call__`` gets one
wrapper; only instrumented pipelines produce spans. ``uninstrument()`` removes all of it. Prompts are recorded only with
``capture_prompts=True`` or ``OTEL_VISION_CAPTURE_PROMPTS=true``; images never are.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import threading
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import Any, Final

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]  # untyped pkg

from otel_vision import _config, _context
from otel_vision import attributes as a
from otel_vision._errors import our_logger, report_internal_error
from otel_vision.instrumentation._wrapping import Patches
from otel_vision.instrumentation.diffusers import _call
from otel_vision.instrumentation.diffusers._categories import (
    CATEGORIES,
    InstructionClassifier,
    classify_instruction,
)
from otel_vision.instrumentation.diffusers.package import _instruments

__all__ = ["CATEGORIES", "DENOISE_STEPS", "DiffusersInstrumentor", "check_pipeline", "classify_instruction"]

logger = our_logger("otel_vision.diffusers")

DENOISE_STEPS = _call.DENOISE_STEPS
"""Values of ``denoise_steps``: ``spans`` (a span per step), ``events`` (an event per step on ``denoise``), ``off``."""


def check_pipeline(pipe: Any, where: str) -> None:
    """Raise ``TypeError`` unless ``pipe`` is a diffusers pipeline."""
    from diffusers import DiffusionPipeline

    if isinstance(pipe, DiffusionPipeline):
        return
    hint = ""
    if hasattr(pipe, "register_forward_pre_hook"):
        hint = "; for a torch.nn.Module (a UNet, a VAE...) use otel_vision.instrument_module()"
    raise TypeError(
        f"{where} takes a diffusers pipeline (diffusers.DiffusionPipeline, e.g. "
        f"StableDiffusionInstructPix2PixPipeline.from_pretrained(...)), "
        f"got {type(pipe).__module__}.{type(pipe).__qualname__}{hint}"
    )


@dataclass(frozen=True)
class _Options:
    """What one instrumented pipeline records (or, for ``_Options`` of the instrumentor, every other pipeline)."""

    capture_prompts: bool = False
    classifier: InstructionClassifier = classify_instruction
    denoise_steps: str = "spans"


def _resolve_options(base: _Options, kwargs: dict[str, Any]) -> _Options:
    """``base`` with the options given explicitly (not ``None``) in ``kwargs`` applied, validated."""
    changes: dict[str, Any] = {}
    if kwargs.get("capture_prompts") is not None:
        changes["capture_prompts"] = _config.resolve_capture_prompts(kwargs["capture_prompts"], {})
    classifier = kwargs.get("instruction_classifier")
    if classifier is not None:
        if not callable(classifier):
            raise TypeError(f"instruction_classifier={classifier!r} must be a function from str to str")
        changes["classifier"] = classifier
    if kwargs.get("denoise_steps") is not None:
        changes["denoise_steps"] = _config.resolve_denoise_steps(kwargs["denoise_steps"], {})
    return replace(base, **changes) if changes else base


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


PLACEMENT_REFRESH_CALLS: Final = 256
"""Calls of a pipeline after which its device and dtype are read from diffusers again even if its denoiser's first
parameter has not moved (a change that leaves that parameter alone, such as layerwise casting on a model whose
first layer is exempt from it, is then seen within this many calls)."""


class _Placement:
    """The ``vision.device`` and ``vision.dtype`` of one pipeline, as diffusers reports them.

    diffusers computes ``pipe._execution_device`` (right under CPU offload) and ``denoiser.dtype`` (right under
    layerwise casting) by walking every module: about 2.5 ms and 0.6 ms per call for the tiny test pipeline, more
    for a real one. They are read again when the denoiser, or its first parameter's device or dtype, changes (a
    ``.to()``, an offload), and every `PLACEMENT_REFRESH_CALLS` calls; kept per pipeline (`_PLACEMENTS`), so
    instrumenting a pipeline again does not read them again."""

    __slots__ = ("calls", "denoiser", "device", "dtype", "key")

    def __init__(self) -> None:
        self.key: tuple[Any, Any] | None = None
        self.denoiser: weakref.ReferenceType[Any] | None = None
        self.calls = 0
        self.device: str | None = None
        self.dtype: str | None = None

    def read(self, pipe: Any, denoiser: Any) -> tuple[str | None, str | None]:
        """``(device, dtype)`` for this call (either ``None`` when diffusers cannot say)."""
        try:
            first = next(denoiser.parameters())
            key: tuple[Any, Any] | None = (first.device, first.dtype)
        except (StopIteration, AttributeError, TypeError):
            key = None
        self.calls += 1
        same = self.denoiser is not None and self.denoiser() is denoiser
        if key is not None and key == self.key and same and self.calls < PLACEMENT_REFRESH_CALLS:
            return self.device, self.dtype
        dtype = getattr(denoiser, "dtype", None)
        self.dtype = str(dtype).removeprefix("torch.") if dtype is not None else None
        try:
            self.device = str(pipe._execution_device)
        except Exception:  # a pipeline with no module on any device
            self.device = None
        self.key, self.calls = key, 0
        try:
            self.denoiser = weakref.ref(denoiser) if denoiser is not None else None
        except TypeError:  # not weakly referenceable: read again at every call
            self.key = None
        return self.device, self.dtype


_PLACEMENTS: weakref.WeakKeyDictionary[Any, _Placement] = weakref.WeakKeyDictionary()
"""`_Placement` per pipeline, beyond instrumentation (a pipeline instrumented again, or by a second instrumentor,
keeps its own)."""


def _placement(pipe: Any, denoiser: Any) -> tuple[str | None, str | None]:
    placement = _PLACEMENTS.get(pipe)
    if placement is None:
        placement = _Placement()
        try:
            _PLACEMENTS[pipe] = placement
        except TypeError:  # not weakly referenceable: this call only
            pass
    return placement.read(pipe, denoiser)


class _PipelineHooks:
    """The hooks installed on one pipeline's current components (re-checked at every call)."""

    def __init__(self) -> None:
        self.handles: dict[str, tuple[Any, Any]] = {}
        self.processor_type: type | None = None

    def ensure(self, pipe: Any, hooks: dict[str, Callable[..., None]], patches: Patches) -> None:
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
            if module is None or not hasattr(module, "register_forward_pre_hook"):
                continue
            if hook in getattr(module, "_forward_pre_hooks", {}).values():
                continue  # a copied component carries our hook already (hooks are copied with their module)
            self.handles[key] = (module, module.register_forward_pre_hook(hook))
        processor = getattr(pipe, "image_processor", None)
        if processor is not None and type(processor) is not self.processor_type:
            for method in ("preprocess", "postprocess"):
                owner = next((k for k in type(processor).__mro__ if method in k.__dict__), None)
                if owner is not None and owner is not object and (owner, method) not in patches:
                    patches.wrap(owner, method, functools.partial(_traced_processor, method))
            self.processor_type = type(processor)

    def remove(self) -> None:
        for _, handle in self.handles.values():
            handle.remove()
        self.handles.clear()
        self.processor_type = None


def _traced_processor(method: str, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    """The pipeline's own ``image_processor.preprocess``/``postprocess`` as phases of the running call (class-level
    wrapper: other processors, and nested calls of a subclass's ``super()``, call straight through)."""
    call = _call.current_call()
    if call is None or call.in_processor or instance is not getattr(call.pipe, "image_processor", None):
        return wrapped(*args, **kwargs)
    call.in_processor = True
    try:
        call.end_phase()
        if method == "preprocess":
            return call.stages["preprocess"].run(call.root_context(), wrapped, *args, **kwargs)
        image = args[0] if args else kwargs.get("image")
        shape = getattr(image, "shape", None)
        if shape is not None and len(shape) == 4:
            call.output_hw = (int(shape[2]), int(shape[3]))
            if call.root is not None:
                call.root.set_attribute(a.VISION_BATCH_SIZE, int(shape[0]))
        return call.postprocess_stage.run(call.root_context(), wrapped, *args, **kwargs)
    finally:
        call.in_processor = False


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
            self._enabled_pipes: weakref.WeakKeyDictionary[Any, _Options] = weakref.WeakKeyDictionary()
            self._classes: set[type] = set()
            self._options = _Options()
            self._patches = Patches()
            self._hooks: dict[str, Callable[..., None]] | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def add_pipeline(self, pipe: Any, **options: Any) -> None:
        """Also trace ``pipe``; ``options`` (``capture_prompts``, ``instruction_classifier``, ``denoise_steps``) given
        here apply to this pipeline, the others keep their values (for a pipeline added before: its own)."""
        check_pipeline(pipe, "add_pipeline()")
        base = self._enabled_pipes.get(pipe, self._options)
        resolved = _resolve_options(base, options)
        self._wrap_class_of(pipe)
        self._enabled_pipes[pipe] = resolved

    def trace_all_pipelines(self, **options: Any) -> None:
        """Trace every pipeline from now on; ``options`` given here apply to every pipeline without its own."""
        self._options = _resolve_options(self._options, options)
        self._all = True
        self._wrap_known_classes()

    # --- BaseInstrumentor -------------------------------------------------------------------------------------
    def _instrument(self, **kwargs: Any) -> None:
        from diffusers import DiffusionPipeline  # ModuleNotFoundError here lets auto-instrumentation skip us

        from otel_vision.instrumentation.diffusers import _hooks

        for ignored in ("tracer_provider", "meter_provider"):
            if kwargs.get(ignored) is not None:
                logger.warning("otel_vision: %s= is ignored; spans go through otel_vision.configure()", ignored)
        pipelines = kwargs.get("pipelines")
        if pipelines is not None:
            if not isinstance(pipelines, list | tuple | set | frozenset):
                raise TypeError(f"pipelines= takes a list of diffusers pipelines, got {type(pipelines).__name__}")
            for pipe in pipelines:
                check_pipeline(pipe, "DiffusersInstrumentor().instrument(pipelines=[...])")
        env = _Options(
            capture_prompts=_config.resolve_capture_prompts(None, os.environ),
            denoise_steps=_config.resolve_denoise_steps(None, os.environ),
        )
        self._options = _resolve_options(env, kwargs)
        self._hooks = _hooks.HOOKS
        self._all = pipelines is None
        # Catches pipelines created (and pipeline classes imported) after instrumentation.
        self._patches.wrap(DiffusionPipeline, "register_modules", self._wrap_register_modules)
        if self._all:
            self._wrap_known_classes()
        for pipe in pipelines or ():
            self._wrap_class_of(pipe)
            self._enabled_pipes[pipe] = self._options

    def _uninstrument(self, **kwargs: Any) -> None:
        self._patches.remove_all()
        self._classes.clear()
        for hooks in list(self._pipes.values()):
            hooks.remove()
        self._pipes = weakref.WeakKeyDictionary()
        self._enabled_pipes = weakref.WeakKeyDictionary()
        self._options = _Options()
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
            self._classes.add(owner)
        self._patches.wrap(owner, "__call__", self._wrap_call)

    def _wrap_register_modules(self, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        result = wrapped(*args, **kwargs)
        if self._all:
            try:
                self._wrap_class_of(instance)
            except Exception:
                report_internal_error("diffusers pipeline registration")
        return result

    def _options_for(self, pipe: Any) -> _Options | None:
        """The pipeline's options, or ``None`` when it is not traced."""
        options = self._enabled_pipes.get(pipe)
        if options is None and self._all:
            return self._options
        return options

    def _wrap_call(self, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        if instance is None and args and self._options_for(args[0]) is not None:
            # Called through the raw class attribute (as another library's wrapper installed after ours may do).
            instance, args = args[0], args[1:]
            wrapped = functools.partial(wrapped, instance)
        options = self._options_for(instance) if instance is not None else None
        if options is None or _call.current_call() is not None:
            # Not ours, or a pipeline calling another pipeline inside an instrumented call: one root per call.
            return wrapped(*args, **kwargs)
        try:
            per_step = _accepts_step_callback(type(instance))
            call = _call.Call(instance, type(instance).__name__, per_step, options.denoise_steps)
            hooks = self._pipes.get(instance)
            if hooks is None:
                hooks = self._pipes[instance] = _PipelineHooks()
            assert self._hooks is not None
            hooks.ensure(instance, self._hooks, self._patches)
            root = _call.PipelineRequest(call, self._root_attributes(instance, options, args, kwargs))
            if per_step and options.denoise_steps != "off":
                user = kwargs.get("callback_on_step_end")
                kwargs = {**kwargs, "callback_on_step_end": _chain_callback(user)}
                position = _tensor_inputs_position(type(instance))
                if user is None and position is not None and len(args) <= position and _TENSOR_INPUTS not in kwargs:
                    # Only our callback runs, and it reads none of the step's tensors: without this the pipeline
                    # gathers the latents for it on every step, through ``locals()`` of its whole ``__call__``.
                    kwargs[_TENSOR_INPUTS] = []
        except Exception:
            report_internal_error("diffusers pipeline wrapper")
            return wrapped(*args, **kwargs)
        token = _context.attach(_context.with_value(_call.CALL_KEY, call))
        try:
            return root.call(wrapped, *args, **kwargs)
        finally:
            _context.detach(token)

    def _root_attributes(self, pipe: Any, options: _Options, args: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        denoiser = next((getattr(pipe, n) for n in _call.DENOISERS if getattr(pipe, n, None) is not None), None)
        attrs: dict[str, Any] = {
            a.VISION_MODEL_NAME: type(pipe).__name__,
            a.VISION_TASK: _task(pipe),
            a.DIFFUSION_SCHEDULER: type(getattr(pipe, "scheduler", None)).__name__,
        }
        name_or_path = getattr(pipe, "name_or_path", None)
        if isinstance(name_or_path, str) and name_or_path:
            attrs[a.VISION_MODEL_ID] = name_or_path
        device, dtype = _placement(pipe, denoiser)
        if dtype is not None:
            attrs[a.VISION_DTYPE] = dtype
        if device is not None:
            attrs[a.VISION_DEVICE] = device
        prompt = _first_prompt(args, kwargs)
        if prompt is not None:
            try:
                attrs[a.VISION_INSTRUCTION_CATEGORY] = str(options.classifier(prompt))
            except Exception:
                report_internal_error("instruction classifier")
                attrs[a.VISION_INSTRUCTION_CATEGORY] = "other"
            if options.capture_prompts:
                attrs[a.VISION_PROMPT] = prompt[: _call.MAX_PROMPT]
        return attrs


_PER_STEP: dict[type, tuple[bool, int | None]] = {}
_TENSOR_INPUTS: Final = "callback_on_step_end_tensor_inputs"


def _accepts_step_callback(cls: type) -> bool:
    """Whether ``cls.__call__`` takes ``callback_on_step_end``. Another library's wrapper of ``__call__`` may hide the
    signature behind ``*args, **kwargs``; then the class's ``_callback_tensor_inputs`` (declared by every pipeline
    that supports the callback) decides."""
    return _step_callback_support(cls)[0]


def _tensor_inputs_position(cls: type) -> int | None:
    """How many positional arguments (after ``self``) come before ``callback_on_step_end_tensor_inputs`` in
    ``cls.__call__`` (a large number when it is keyword-only); ``None`` when it is not a named parameter."""
    return _step_callback_support(cls)[1]


def _step_callback_support(cls: type) -> tuple[bool, int | None]:
    known = _PER_STEP.get(cls)
    if known is None:
        parameters = inspect.signature(inspect.unwrap(cls.__call__)).parameters
        accepts = "callback_on_step_end" in parameters or (
            any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
            and isinstance(getattr(cls, "_callback_tensor_inputs", None), list | tuple)
        )
        position = None
        if _TENSOR_INPUTS in parameters:
            positional = [
                name
                for name, p in parameters.items()
                if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            ]
            position = positional.index(_TENSOR_INPUTS) - 1 if _TENSOR_INPUTS in positional else sys.maxsize
        known = _PER_STEP[cls] = (accepts, position)
    return known
