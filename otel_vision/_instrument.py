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

    Requires ``pip install 'otel-vision[ultralytics]'``; undo with
    ``otel_vision.instrumentation.ultralytics.UltralyticsInstrumentor().uninstrument()``.
    """
    try:
        from otel_vision.instrumentation.ultralytics import UltralyticsInstrumentor
    except ImportError as exc:  # pragma: no cover - only without the opentelemetry-instrumentation package
        raise ImportError(f"{exc}: pip install 'otel-vision[ultralytics]'") from exc
    try:
        import ultralytics  # noqa: F401
    except ImportError:
        raise ImportError("pip install 'otel-vision[ultralytics]': instrument_ultralytics() needs it") from None
    instrumentor = UltralyticsInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(models=None if model is None else [model])
    elif model is not None:
        instrumentor.add_model(model)
    else:
        instrumentor.trace_all_models()


def instrument_diffusers(
    pipe: Any = None,
    *,
    capture_prompts: bool | None = None,
    instruction_classifier: Callable[[str], str] | None = None,
) -> None:
    """Trace diffusers pipelines: ``pipe`` only, or every pipeline when called without one.

    ```python
    otel_vision.instrument_diffusers(pipe)
    otel_vision.instrument_diffusers(pipe, capture_prompts=True)   # also record the prompt text
    ```

    Options apply from the first call on (later calls only add pipelines); undo with
    ``otel_vision.instrumentation.diffusers.DiffusersInstrumentor().uninstrument()``.

    Args:
        pipe: a diffusers pipeline; ``None`` traces every pipeline in the process.
        capture_prompts: record the prompt as ``vision.prompt`` (else ``OTEL_VISION_CAPTURE_PROMPTS``, default off).
        instruction_classifier: maps an instruction to a category (few values: they become metric attributes);
            default: the leading edit verb (``add``, ``remove``, ``change``, ``make``, … else ``other``).
    """
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise ImportError("pip install 'otel-vision[diffusers]': instrument_diffusers() needs it") from None
    from otel_vision.instrumentation.diffusers import DiffusersInstrumentor

    instrumentor = DiffusersInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(
            pipelines=None if pipe is None else [pipe],
            capture_prompts=capture_prompts,
            instruction_classifier=instruction_classifier,
        )
    elif pipe is not None:
        instrumentor.add_pipeline(pipe)
    else:
        instrumentor.trace_all_pipelines()
