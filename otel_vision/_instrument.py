"""The one-call entry points to the instrumentors; each imports its library only when called."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def instrument_ultralytics(model: Any = None) -> None:
    """Trace ultralytics YOLO: every model in the process, or only ``model`` (repeat for more models).

    ```python
    otel_vision.instrument_ultralytics()         # all models
    otel_vision.instrument_ultralytics(model)    # just this one
    ```

    Requires ``pip install 'otel-vision[ultralytics]'``; undo with `uninstrument_ultralytics`.

    Raises:
        TypeError: ``model`` is not an ultralytics model (``YOLO(...)``, ``RTDETR(...)``, ...).
    """
    try:
        from otel_vision.instrumentation.ultralytics import UltralyticsInstrumentor, check_model
    except ImportError as exc:  # pragma: no cover - only without the opentelemetry-instrumentation package
        raise ImportError(f"{exc}: pip install 'otel-vision[ultralytics]'") from exc
    try:
        import ultralytics  # noqa: F401
    except ImportError:
        raise ImportError("pip install 'otel-vision[ultralytics]': instrument_ultralytics() needs it") from None
    if model is not None:
        check_model(model, "instrument_ultralytics()")
    instrumentor = UltralyticsInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(models=None if model is None else [model])
    elif model is not None:
        instrumentor.add_model(model)
    else:
        instrumentor.trace_all_models()


def uninstrument_ultralytics() -> None:
    """Undo `instrument_ultralytics` for every model: callbacks and wrappers removed (no-op when not instrumented).

    A wrapper another library put on ``Model.predict`` after ours keeps working; ours stays inside it, switched off.
    """
    try:
        import ultralytics  # noqa: F401
    except ImportError:
        return
    from otel_vision.instrumentation.ultralytics import UltralyticsInstrumentor

    instrumentor = UltralyticsInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


def instrument_diffusers(
    pipe: Any = None,
    *,
    capture_prompts: bool | None = None,
    instruction_classifier: Callable[[str], str] | None = None,
    denoise_steps: str | None = None,
) -> None:
    """Trace diffusers pipelines: ``pipe`` only, or every pipeline when called without one.

    ```python
    otel_vision.instrument_diffusers(pipe)
    otel_vision.instrument_diffusers(pipe, capture_prompts=True)   # also record the prompt text
    otel_vision.instrument_diffusers(pipe, denoise_steps="events") # steps as events on `denoise`, not spans
    ```

    Options given in a call apply to what that call instruments: ``pipe``, or (without one) every pipeline that has
    no options of its own. Calling again with other options changes them from the next pipeline call on; options
    not given keep their values. Undo with `uninstrument_diffusers`.

    Args:
        pipe: a diffusers pipeline; ``None`` traces every pipeline in the process.
        capture_prompts: record the prompt as ``vision.prompt`` (else ``OTEL_VISION_CAPTURE_PROMPTS``, default off).
        instruction_classifier: maps an instruction to a category (few values: they become metric attributes);
            default: the leading edit verb (``add``, ``remove``, ``change``, ``make``, … else ``other``).
        denoise_steps: per denoising step, ``"spans"`` (a ``denoise_step`` span), ``"events"`` (a ``denoise_step``
            event on the ``denoise`` span) or ``"off"`` (else ``OTEL_VISION_DENOISE_STEPS``, default ``"spans"``).

    Raises:
        TypeError: ``pipe`` is not a ``diffusers.DiffusionPipeline``, or an option has the wrong type.
        ValueError: an option has a value outside its range.
    """
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise ImportError("pip install 'otel-vision[diffusers]': instrument_diffusers() needs it") from None
    from otel_vision.instrumentation.diffusers import DiffusersInstrumentor, check_pipeline

    if pipe is not None:
        check_pipeline(pipe, "instrument_diffusers()")
    options = {
        "capture_prompts": capture_prompts,
        "instruction_classifier": instruction_classifier,
        "denoise_steps": denoise_steps,
    }
    instrumentor = DiffusersInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(pipelines=None if pipe is None else [pipe], **options)
    elif pipe is not None:
        instrumentor.add_pipeline(pipe, **options)
    else:
        instrumentor.trace_all_pipelines(**options)


def uninstrument_diffusers() -> None:
    """Undo `instrument_diffusers` for every pipeline: hooks and wrappers removed (no-op when not instrumented)."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return
    from otel_vision.instrumentation.diffusers import DiffusersInstrumentor

    instrumentor = DiffusersInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
