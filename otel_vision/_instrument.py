"""The one-call entry points to the instrumentors; each imports its library only when called."""

from __future__ import annotations

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
