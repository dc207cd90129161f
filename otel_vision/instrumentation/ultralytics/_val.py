"""``model.val()`` traces: batch spans from the validator callbacks and stage spans around its own methods.

The validator calls its model inline (``model(batch["img"])``, on a backend it builds inside ``__call__``), so the
``inference`` span is drawn between the real end of ``preprocess`` and the real start of ``postprocess``, which is
exactly that call when not training.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from otel_vision import _runtime
from otel_vision import attributes as a
from otel_vision.instrumentation.ultralytics._predict import _WRAPPED_MARK, Call, current_call, guarded

_METHODS = ("preprocess", "postprocess")
_LAST_PREPROCESS_END = "val.preprocess.end"


def _wrap_validator(validator: Any, wrapped: weakref.WeakSet[Any]) -> None:
    if validator in wrapped:
        return
    original_pre, original_post = validator.preprocess, validator.postprocess

    def preprocess(batch: Any, *args: Any, **kwargs: Any) -> Any:
        call = current_call()
        if call is None:
            return original_pre(batch, *args, **kwargs)
        result = call.stages["preprocess"].run(call.parent(), original_pre, batch, *args, **kwargs)
        if call.batch is not None and isinstance(result, dict) and hasattr(result.get("img"), "shape"):
            call.batch.span.set_attribute(a.VISION_BATCH_SIZE, int(result["img"].shape[0]))
        call.stage_window[_LAST_PREPROCESS_END] = (time.time_ns(), 0)
        return result

    def postprocess(preds: Any, *args: Any, **kwargs: Any) -> Any:
        call = current_call()
        if call is None:
            return original_post(preds, *args, **kwargs)
        _inference_span(call)
        return call.stages["postprocess"].run(call.parent(), original_post, preds, *args, **kwargs)

    for name, fn in (("preprocess", preprocess), ("postprocess", postprocess)):
        setattr(fn, _WRAPPED_MARK, True)
        setattr(validator, name, fn)
    wrapped.add(validator)


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
    span.end(end_time=end)
    attrs = runtime.instruments.metric_attributes({a.VISION_STAGE: "inference", a.VISION_MODEL_NAME: call.model_name})
    runtime.instruments.stage_duration.record((end - start) / 1e9, attrs)


def unwrap_validator(validator: Any) -> None:
    """Remove the instance attributes `_wrap_validator` set."""
    for method in _METHODS:
        if getattr(validator.__dict__.get(method), _WRAPPED_MARK, False):
            del validator.__dict__[method]


def make_callbacks(wrapped: weakref.WeakSet[Any]) -> dict[str, Callable[[Any], None]]:
    """The validator callbacks."""

    @guarded("on_val_start")
    def on_val_start(validator: Any) -> None:
        call = current_call()
        if call is None or call.root is None:
            return
        _wrap_validator(validator, wrapped)
        args = validator.args
        attrs: dict[str, Any] = {a.VISION_TASK: getattr(args, "task", None), a.VISION_DEVICE: str(validator.device)}
        imgsz = getattr(args, "imgsz", None)
        if imgsz is not None:
            attrs[a.VISION_INPUT_SIZE] = list(imgsz) if isinstance(imgsz, list | tuple) else int(imgsz)
        call.root.set_attributes({k: v for k, v in attrs.items() if v is not None})

    @guarded("on_val_batch_start")
    def on_val_batch_start(validator: Any) -> None:
        call = current_call()
        if call is None or call.root is None:
            return
        call.close_open(None)
        call.batch = call.batch_stage._start(trace.set_span_in_context(call.root))
        call.batches += 1

    @guarded("on_val_batch_end")
    def on_val_batch_end(validator: Any) -> None:
        call = current_call()
        if call is None or call.batch is None:
            return
        active, call.batch = call.batch, None
        size = active.span.attributes.get(a.VISION_BATCH_SIZE) if hasattr(active.span, "attributes") else None
        if isinstance(size, int):
            call.images += size
            instruments = _runtime.current().instruments
            instruments.images.add(size, instruments.metric_attributes({a.VISION_MODEL_NAME: call.model_name}))
        call.batch_stage._finish(active, None)

    @guarded("on_val_end")
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

    return {
        "on_val_start": on_val_start,
        "on_val_batch_start": on_val_batch_start,
        "on_val_batch_end": on_val_batch_end,
        "on_val_end": on_val_end,
    }
