"""Ultralytics YOLO instrumentation: one trace per ``predict``, ``track`` or ``val`` call, with real stage timings.

Usage
-----

```python
import otel_vision
from ultralytics import YOLO

otel_vision.configure(service_name="yolo-edge")
otel_vision.instrument_ultralytics()          # every model; or instrument_ultralytics(model) for one
model = YOLO("yolov8n.pt")
results = model("bus.jpg")                    # -> predict > batch > preprocess / inference / postprocess
```

Zero code: ``opentelemetry-instrument python app.py`` loads this instrumentor through the
``opentelemetry_instrumentor`` entry point (and otel_vision's configurator, see ``docs/ultralytics.md``).

What is patched, and why: ultralytics has callbacks for batches but none for a whole call that also fire on an
exception or an abandoned ``stream=True`` generator, and none for model setup; so ``Model.predict``, ``Model.val``,
``BasePredictor.setup_model`` and ``AutoBackend.warmup`` get one class-level wrapper each (only instrumented models
produce spans). Everything else uses ``model.callbacks`` and the predictor's own methods. ``uninstrument()`` removes
all of it.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Collection
from typing import Any

from opentelemetry import context
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]  # untyped pkg
from opentelemetry.instrumentation.utils import unwrap

from otel_vision import attributes as a
from otel_vision._errors import report_internal_error
from otel_vision.instrumentation.ultralytics import _predict, _val
from otel_vision.instrumentation.ultralytics.package import _instruments

__all__ = ["UltralyticsInstrumentor"]

logger = logging.getLogger("otel_vision.ultralytics")

_EVENTS_FIRST = ("on_predict_start", "on_predict_batch_start", "on_predict_postprocess_end@first")
_EVENTS_LAST = ("on_predict_postprocess_end@last", "on_predict_batch_end")


class UltralyticsInstrumentor(BaseInstrumentor):  # type: ignore[misc]  # BaseInstrumentor is untyped
    """Traces ultralytics ``Model.predict`` / ``track`` / ``val``; ``instrument(models=[m])`` limits it to ``m``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        if not hasattr(self, "_models"):  # BaseInstrumentor is a singleton: __init__ runs on every construction
            self._all_models = False
            self._models: weakref.WeakSet[Any] = weakref.WeakSet()
            self._touched: weakref.WeakSet[Any] = weakref.WeakSet()
            self._predictors: weakref.WeakSet[Any] = weakref.WeakSet()
            self._callbacks = _predict.make_callbacks(self._predictors)
            self._val_callbacks = _val.make_callbacks(self._predictors)

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def add_model(self, model: Any) -> None:
        """Also trace ``model`` (when the instrumentor was limited to some models)."""
        self._models.add(model)

    def trace_all_models(self) -> None:
        """Trace every model from now on (after an instrumentation limited to some models)."""
        self._all_models = True

    def _enabled(self, model: Any) -> bool:
        return self._all_models or model in self._models

    # --- BaseInstrumentor -------------------------------------------------------------------------------------
    def _instrument(self, **kwargs: Any) -> None:
        import ultralytics.engine.model  # noqa: F401 - ModuleNotFoundError here lets auto-instrumentation skip us

        for ignored in ("tracer_provider", "meter_provider"):
            if kwargs.get(ignored) is not None:
                logger.warning("otel_vision: %s= is ignored; spans go through otel_vision.configure()", ignored)
        models = kwargs.get("models")
        self._all_models = models is None
        for model in models or ():
            self._models.add(model)

        import wrapt

        wrapt.wrap_function_wrapper("ultralytics.engine.model", "Model.predict", self._wrap_predict)
        wrapt.wrap_function_wrapper("ultralytics.engine.model", "Model.val", self._wrap_val)
        wrapt.wrap_function_wrapper("ultralytics.engine.predictor", "BasePredictor.setup_model", _traced("load"))
        wrapt.wrap_function_wrapper("ultralytics.nn.autobackend", "AutoBackend.warmup", _traced("warmup"))

    def _uninstrument(self, **kwargs: Any) -> None:
        from ultralytics.engine.model import Model
        from ultralytics.engine.predictor import BasePredictor
        from ultralytics.nn.autobackend import AutoBackend

        unwrap(Model, "predict")
        unwrap(Model, "val")
        unwrap(BasePredictor, "setup_model")
        unwrap(AutoBackend, "warmup")
        ours = {*self._callbacks.values(), *self._val_callbacks.values()}
        for model in list(self._touched):
            for callbacks in model.callbacks.values():
                callbacks[:] = [fn for fn in callbacks if fn not in ours]
        for predictor in list(self._predictors):
            _predict.unwrap_predictor(predictor)
            _val.unwrap_validator(predictor)
        # Cleared, not replaced: the callbacks hold a reference to the predictor set.
        self._touched.clear()
        self._predictors.clear()
        self._models.clear()
        self._all_models = False

    # --- wrappers ---------------------------------------------------------------------------------------------
    def _ensure_callbacks(self, model: Any) -> None:
        """Put our callbacks in place: the 'first' ones before the user's and the tracker's, the 'last' ones after."""
        with self._lock:
            registry = model.callbacks
            for key in (*_EVENTS_FIRST, *_EVENTS_LAST):
                event = key.split("@")[0]
                fn = self._callbacks[key]
                callbacks = registry[event]
                if key in _EVENTS_FIRST:
                    if fn not in callbacks:
                        callbacks.insert(0, fn)
                elif not callbacks or callbacks[-1] is not fn:
                    if fn in callbacks:
                        callbacks.remove(fn)
                    callbacks.append(fn)
            for event, fn in self._val_callbacks.items():
                if fn not in registry[event]:
                    registry[event].append(fn)
            self._touched.add(model)

    def _wrap_predict(self, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        operation = "track" if kwargs.get("mode") == "track" else "predict"
        return self._traced_call(operation, wrapped, instance, args, kwargs)

    def _wrap_val(self, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        return self._traced_call("val", wrapped, instance, args, kwargs)

    def _traced_call(self, operation: str, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        """One root span per call; the call's state travels in the context to the callbacks."""
        if not self._enabled(instance) or _predict.current_call() is not None:
            # Not ours, or a subclass's predict calling super().predict(): one root span per call.
            return wrapped(*args, **kwargs)
        try:
            self._ensure_callbacks(instance)
            name = _predict.model_name(instance)
            call = _predict.Call(operation, name)
            if operation != "val":
                call.source_kind = _predict.source_kind(args[0] if args else kwargs.get("source"))
            task = getattr(instance, "task", None) or "unknown"
            root = _predict.PredictRequest(call, {a.VISION_MODEL_NAME: name, a.VISION_TASK: task})
        except Exception:
            report_internal_error(f"ultralytics {operation} wrapper")
            return wrapped(*args, **kwargs)
        token = context.attach(context.set_value(_predict.CALL_KEY, call))
        try:
            return root.call(wrapped, *args, **kwargs)
        finally:
            context.detach(token)


def _traced(stage_name: str) -> Callable[..., Any]:
    """A wrapt wrapper that runs the wrapped method as the call's ``stage_name`` stage, inside an instrumented call."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        call = _predict.current_call()
        if call is None:
            return wrapped(*args, **kwargs)
        return call.stages[stage_name].run(call.parent(), wrapped, *args, **kwargs)

    return wrapper
