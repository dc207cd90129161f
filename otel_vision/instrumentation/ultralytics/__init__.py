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
produce spans); the predictor's and validator's ``preprocess``/``inference``/``postprocess`` are wrapped on their
classes the first time an instrumented call uses them. Everything else uses ``model.callbacks`` (with small picklable
callback objects). Nothing is stored on a predictor, so models and predictors stay picklable and copyable, and a copy
runs its own methods. ``uninstrument()`` removes all of it; a wrapper another library installed on one of those
methods *after* ours stays working, with ours inside it switched off (see ``docs/ultralytics.md``).
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]  # untyped pkg

from otel_vision import _context
from otel_vision._errors import our_logger, report_internal_error
from otel_vision.instrumentation._wrapping import Patches
from otel_vision.instrumentation.ultralytics import _predict, _val
from otel_vision.instrumentation.ultralytics.package import _instruments

__all__ = ["UltralyticsInstrumentor", "check_model"]

logger = our_logger("otel_vision.ultralytics")

_EVENTS_FIRST = ("on_predict_start", "on_predict_batch_start", "on_predict_postprocess_end@first")
_EVENTS_LAST = ("on_predict_postprocess_end@last", "on_predict_batch_end")


def check_model(model: Any, where: str) -> None:
    """Raise ``TypeError`` unless ``model`` is an ultralytics model (``YOLO``, ``RTDETR``, ``SAM``...)."""
    from ultralytics.engine.model import Model

    if isinstance(model, Model):
        return
    hint = ""
    if type(model).__module__.split(".")[0] == "torch" or hasattr(model, "register_forward_pre_hook"):
        hint = "; for a plain torch.nn.Module use otel_vision.instrument_module()"
    raise TypeError(
        f"{where} takes an ultralytics model (ultralytics.engine.model.Model, e.g. YOLO('yolov8n.pt')), "
        f"got {type(model).__module__}.{type(model).__qualname__}{hint}"
    )


class UltralyticsInstrumentor(BaseInstrumentor):  # type: ignore[misc]  # BaseInstrumentor is untyped
    """Traces ultralytics ``Model.predict`` / ``track`` / ``val``; ``instrument(models=[m])`` limits it to ``m``."""

    def __init__(self) -> None:
        if not hasattr(self, "_models"):  # BaseInstrumentor is a singleton: __init__ runs on every construction
            self._lock = threading.Lock()
            self._all_models = False
            self._models: weakref.WeakSet[Any] = weakref.WeakSet()
            self._touched: weakref.WeakSet[Any] = weakref.WeakSet()
            self._patches = Patches()
            self._model_class: type | None = None
            self._callbacks = {key: _predict.Callback(key) for key in (*_EVENTS_FIRST, *_EVENTS_LAST)}
            self._val_callbacks = {key: _predict.Callback(key) for key in _val.VAL_EVENTS}
            self._first_positions = [(key.split("@")[0], self._callbacks[key]) for key in _EVENTS_FIRST]
            self._last_positions = [(key.split("@")[0], self._callbacks[key]) for key in _EVENTS_LAST]

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def add_model(self, model: Any) -> None:
        """Also trace ``model`` (when the instrumentor was limited to some models)."""
        check_model(model, "add_model()")
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
        if models is not None:
            if not isinstance(models, list | tuple | set | frozenset):
                raise TypeError(f"models= takes a list of ultralytics models, got {type(models).__name__}")
            for model in models:
                check_model(model, "UltralyticsInstrumentor().instrument(models=[...])")
        self._all_models = models is None
        for model in models or ():
            self._models.add(model)

        from ultralytics.engine.model import Model
        from ultralytics.engine.predictor import BasePredictor
        from ultralytics.nn.autobackend import AutoBackend

        self._model_class = Model
        self._patches.wrap(Model, "predict", self._wrap_predict)
        self._patches.wrap(Model, "val", self._wrap_val)
        self._patches.wrap(BasePredictor, "setup_model", functools.partial(_traced, "load"))
        self._patches.wrap(AutoBackend, "warmup", functools.partial(_traced, "warmup"))

    def _uninstrument(self, **kwargs: Any) -> None:
        self._patches.remove_all()
        _predict.PATCHES.remove_all()
        for model in list(self._touched):
            for callbacks in model.callbacks.values():
                callbacks[:] = [fn for fn in callbacks if not isinstance(fn, _predict.Callback)]
        self._touched.clear()
        self._models.clear()
        self._all_models = False

    # --- wrappers ---------------------------------------------------------------------------------------------
    def _callbacks_in_place(self, model: Any, operation: str) -> bool:
        """Whether the callbacks of ours that ``operation`` uses already sit where `_ensure_callbacks` puts them
        (identity checks only: the usual case on every call after the first, answered without scanning the lists
        with ``==`` or taking the lock)."""
        registry = model.callbacks
        if operation == "val":
            for event, fn in self._val_callbacks.items():  # anywhere in their lists
                callbacks = registry.get(event)
                if not callbacks or not any(c is fn for c in callbacks):
                    return False
            return model in self._touched
        for event, fn in self._first_positions:
            callbacks = registry.get(event)
            if not callbacks or callbacks[0] is not fn:
                return False
        for event, fn in self._last_positions:
            callbacks = registry.get(event)
            if not callbacks or callbacks[-1] is not fn:
                return False
        return model in self._touched

    def _ensure_callbacks(self, model: Any, operation: str) -> None:
        """Put our callbacks in place: the 'first' ones before the user's and the tracker's, the 'last' ones after."""
        if self._callbacks_in_place(model, operation):
            return
        with self._lock:
            registry = model.callbacks
            for key in (*_EVENTS_FIRST, *_EVENTS_LAST):
                event = key.split("@")[0]
                fn = self._callbacks[key]
                callbacks = registry[event]
                if key in _EVENTS_FIRST:
                    if fn not in callbacks:
                        callbacks.insert(0, fn)
                elif not callbacks or callbacks[-1] != fn:
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
        if instance is None and args and self._model_class is not None and isinstance(args[0], self._model_class):
            # Called through the raw class attribute (Model.__dict__["predict"](model, ...)), as another library's
            # wrapper installed after ours may do: the model is the first argument.
            instance, args = args[0], args[1:]
            wrapped = functools.partial(wrapped, instance)
        if not self._enabled(instance) or _predict.current_call() is not None:
            # Not ours, or a subclass's predict calling super().predict(): one root span per call.
            return wrapped(*args, **kwargs)
        try:
            self._ensure_callbacks(instance, operation)
            name = _predict.model_name(instance)
            call = _predict.Call(operation, name)
            if operation != "val":
                call.source_kind = _predict.source_kind(args[0] if args else kwargs.get("source"))
            root = _predict.PredictRequest.of(operation, name, getattr(instance, "task", None) or "unknown")
        except Exception:
            report_internal_error(f"ultralytics {operation} wrapper")
            return wrapped(*args, **kwargs)
        token = _context.attach(_context.with_value(_predict.CALL_KEY, call))
        try:
            return root.call(wrapped, *args, **kwargs)
        finally:
            _context.detach(token)


def _traced(stage_name: str, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    """Run the wrapped method as the call's ``stage_name`` stage, inside an instrumented call."""
    call = _predict.current_call()
    if call is None:
        return wrapped(*args, **kwargs)
    return call.stages[stage_name].run(call.parent(), wrapped, *args, **kwargs)
