"""``model.val()`` traces: batch spans from the validator callbacks and stage spans around its own methods.

The validator calls its model inline (``model(batch["img"])``, on a backend it builds inside ``__call__``), so the
``inference`` span is drawn between the real end of ``preprocess`` and the real start of ``postprocess``, which is
exactly that call when not training.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from otel_vision import _runtime
from otel_vision import attributes as a
from otel_vision._light import with_span
from otel_vision.instrumentation.ultralytics._predict import (
    HANDLERS,
    PATCHES,
    Call,
    current_call,
    record_batch_metrics,
    wrap_engine_class,
)

_METHODS = ("preprocess", "postprocess")
_LAST_PREPROCESS_END = "val.preprocess.end"


def traced_validator_method(method: str, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    """The validator's ``preprocess``/``postprocess`` as stages (class-level wrappers; outermost call only)."""
    call = current_call()
    if call is None or call.method is not None or instance is not call.engine:
        return wrapped(*args, **kwargs)
    call.method = method
    try:
        if method == "postprocess":
            _inference_span(call)
        result = call.stages[method].run(call.parent(), wrapped, *args, **kwargs)
    finally:
        call.method = None
    if method == "preprocess":
        if call.batch is not None and isinstance(result, dict) and hasattr(result.get("img"), "shape"):
            call.batch.span.set_attribute(a.VISION_BATCH_SIZE, int(result["img"].shape[0]))
        call.stage_window[_LAST_PREPROCESS_END] = (time.time_ns(), 0)
    return result


def _inference_span(call: Call) -> None:
    """The span between preprocess's end and postprocess's start, with those real timestamps."""
    window = call.stage_window.pop(_LAST_PREPROCESS_END, None)
    if window is None:
        return
    start, end = window[0], time.time_ns()
    runtime = _runtime.current()
    span = runtime.tracer.start_span(
        "inference",
        context=call.parent(),
        attributes={a.VISION_STAGE: "inference", a.VISION_MODEL_NAME: call.model_name},
        start_time=start,
    )
    from_span = runtime.span_metrics and span.is_recording()
    span.end(end_time=end)
    if from_span:
        return  # the duration is recorded from the finished span (otel_vision._span_metrics)
    attrs = runtime.instruments.metric_attributes({a.VISION_STAGE: "inference", a.VISION_MODEL_NAME: call.model_name})
    runtime.instruments.stage_duration.record((end - start) / 1e9, attrs)


def on_val_start(validator: Any) -> None:
    call = current_call()
    if call is None or call.root is None:
        return
    call.engine = validator
    wrap_engine_class(type(validator), _METHODS, traced_validator_method, PATCHES)
    args = validator.args
    attrs: dict[str, Any] = {a.VISION_TASK: getattr(args, "task", None), a.VISION_DEVICE: str(validator.device)}
    imgsz = getattr(args, "imgsz", None)
    if imgsz is not None:
        attrs[a.VISION_INPUT_SIZE] = list(imgsz) if isinstance(imgsz, list | tuple) else int(imgsz)
    call.root.set_attributes({k: v for k, v in attrs.items() if v is not None})


def on_val_batch_start(validator: Any) -> None:
    call = current_call()
    if call is None or call.root is None:
        return
    call.close_open(None)
    call.batch = call.batch_stage._start(with_span(call.root))
    call.batches += 1


def on_val_batch_end(validator: Any) -> None:
    call = current_call()
    if call is None or call.batch is None:
        return
    active, call.batch = call.batch, None
    try:
        size = active.span.attributes.get(a.VISION_BATCH_SIZE) if hasattr(active.span, "attributes") else None
        if isinstance(size, int):
            call.images += size
            if size:
                record_batch_metrics(active, call, [], size)
    finally:  # the batch span ends even when the bookkeeping fails
        call.batch_stage._finish(active, None)


def on_val_end(validator: Any) -> None:
    call = current_call()
    if call is None or call.root is None:
        return
    results = getattr(getattr(validator, "metrics", None), "results_dict", None) or {}
    for key, value in results.items():
        if isinstance(value, int | float) and key.startswith("metrics/"):
            # metrics/mAP50-95(B) -> vision.val.map50-95_b
            name = key.removeprefix("metrics/").replace("(", "_").replace(")", "").lower()
            call.root.set_attribute(a.VISION_VAL_PREFIX + name, float(value))


HANDLERS.update(
    {
        "on_val_start": on_val_start,
        "on_val_batch_start": on_val_batch_start,
        "on_val_batch_end": on_val_batch_end,
        "on_val_end": on_val_end,
    }
)
VAL_EVENTS = ("on_val_start", "on_val_batch_start", "on_val_batch_end", "on_val_end")
