"""Predict, track and val traces for ultralytics: one wrapper for the root span, official callbacks for the rest.

Per call: a root span around ``Model.predict`` (or ``Model.val``) that also owns the lifetime of everything below
it, so an exception or a ``stream=True`` generator abandoned halfway still ends every span; a ``batch`` span from
``on_predict_batch_start`` to ``on_predict_batch_end``; ``preprocess``, ``inference`` and ``postprocess`` spans around
the predictor's own methods (wrapped once on the predictor's class, so their start and end are the real ones, a
rebuilt predictor is traced too, and a copied predictor runs its own methods); ``track`` between the postprocess
callbacks that surround the tracker's.

Nothing here iterates, replaces or reorders what the user can see: ``predictor.results`` is summarized only when it
is a list or tuple (a user callback may have replaced it with an iterator, which we must not consume).
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable
from time import time_ns
from typing import Any, NamedTuple

from opentelemetry import context
from opentelemetry.trace import Span

from otel_vision import _context, _runtime
from otel_vision import attributes as a
from otel_vision._errors import report_internal_error
from otel_vision._light import LightSpan, complete_later, with_span
from otel_vision._metrics import BatchCounts, defer_batch_counts, record_batch_counts
from otel_vision._stage import _Active, request, stage
from otel_vision.instrumentation._wrapping import Patches

CALL_KEY = context.create_key("otel_vision.ultralytics.call")
MAX_IMAGE_EVENTS = 32
"""Per-image events kept per batch span; a bigger batch is summarized by its counts only."""
TOP_CLASSES = 5
PREDICTOR_METHODS = ("preprocess", "inference", "postprocess")


def model_name(model: Any) -> str:
    """``yolov8n`` for ``yolov8n.pt`` / ``yolov8n.yaml`` / a path to either."""
    source = getattr(model, "ckpt_path", None) or getattr(model, "model_name", None) or getattr(model, "cfg", None)
    if not source:
        return type(getattr(model, "model", model)).__name__
    if type(source) is str:
        name = _NAMES.get(source)
        if name is None:
            if len(_NAMES) >= _MAX_MODELS:
                _NAMES.clear()
            name = _NAMES[source] = _name_of(source)
        return name
    return _name_of(source)


def _name_of(source: Any) -> str:
    name = str(source).replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in (".pt", ".yaml", ".yml", ".onnx", ".engine", ".torchscript"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


_NAMES: dict[str, str] = {}
"""Model names by the path they come from (`model_name`, once per path)."""


class Call:
    """The spans of one predict/track/val call, reachable from callbacks through the OpenTelemetry context."""

    __slots__ = (
        "batch",
        "batch_stage",
        "batches",
        "engine",
        "images",
        "method",
        "model_name",
        "operation",
        "root",
        "source_kind",
        "stage_window",
        "stages",
        "track",
        "track_stage",
    )

    def __init__(self, operation: str, name: str) -> None:
        self.operation = operation
        self.model_name = name
        self.root: Span | None = None
        self.batch: _Active | None = None
        self.track: _Active | None = None
        self.stages = _stages_for(name)
        self.batch_stage = self.stages["batch"]
        self.track_stage = self.stages["track"]
        self.images = 0
        self.batches = 0
        self.stage_window: dict[str, tuple[int, int]] = {}
        self.source_kind: str | None = None
        self.engine: Any = None
        """The predictor or validator of this call (set by its start callback)."""
        self.method: str | None = None
        """The engine method running as a stage now (nested calls of engine methods are part of it)."""

    def metric_attributes(self) -> dict[str, Any]:
        """The metric attributes of this call's model (``vision.model.name``, capped), computed once per model."""
        instruments = _runtime.current().instruments
        cached = _METRIC_ATTRS.get(self.model_name)
        if cached is not None and cached[0] is instruments:
            return cached[1]
        attrs = instruments.metric_attributes({a.VISION_MODEL_NAME: self.model_name})
        if len(_METRIC_ATTRS) >= _MAX_MODELS:
            _METRIC_ATTRS.clear()
        _METRIC_ATTRS[self.model_name] = (instruments, attrs)
        return attrs

    def parent(self) -> context.Context:
        """The context for a stage span: the open track span (the tracker may re-run postprocess), else the open
        batch span, else the root."""
        open_span = self.track or self.batch
        span = open_span.span if open_span is not None else self.root
        return with_span(span) if span is not None else _context.get_current()

    def close_open(self, exc: BaseException | None) -> None:
        """End spans left open by an exception or an abandoned stream (their end callback never came)."""
        for name in ("track", "batch"):
            active: _Active | None = getattr(self, name)
            if active is None:
                continue
            setattr(self, name, None)
            owner = self.track_stage if name == "track" else self.batch_stage
            owner._finish(active, exc)


_STAGE_NAMES = ("batch", "track", *PREDICTOR_METHODS, "load", "warmup")
_MAX_MODELS = 256
_STAGES: dict[str, dict[str, stage]] = {}
"""The stages of a model name, made once: a stage holds only its name and attributes (what is running is in each
call's `_Active` objects), so concurrent calls share them."""
_METRIC_ATTRS: dict[str, tuple[Any, dict[str, Any]]] = {}
"""Metric attributes by model name, for the instruments they were computed with (the cardinality cap is stable:
a value once admitted, or once replaced by ``other``, stays so)."""


def _stages_for(name: str) -> dict[str, stage]:
    stages = _STAGES.get(name)
    if stages is None:
        attrs = {a.VISION_MODEL_NAME: name}
        stages = {stage_name: stage(stage_name, attrs) for stage_name in _STAGE_NAMES}
        if len(_STAGES) >= _MAX_MODELS:
            _STAGES.clear()
        _STAGES[name] = stages
    return stages


class PredictRequest(request):
    """The root span of a call: closes what callbacks left open, then records the request.

    One per operation, model name and task (`PredictRequest.of`), shared by concurrent calls like every stage: the
    running call (`Call`) is the one in the context when the root starts, kept in its `_Active`.
    """

    __slots__ = ()

    @classmethod
    def of(cls, operation: str, name: str, task: str) -> PredictRequest:
        key = (operation, name, task)
        root = _ROOTS.get(key)
        if root is None:
            root = cls(operation, {a.VISION_MODEL_NAME: name, a.VISION_TASK: task})
            if len(_ROOTS) >= _MAX_MODELS:
                _ROOTS.clear()
            _ROOTS[key] = root
        return root

    def _start(self, parent: context.Context | None) -> _Active:
        active = super()._start(parent)
        state = active.state = current_call()
        if state is not None:
            state.root = active.span
        return active

    def _finish(
        self, active: _Active, exc: BaseException | None, items: int | None = None, abandoned: bool = False
    ) -> None:
        state: Call | None = active.state
        try:
            if state is not None:
                state.close_open(exc)
                counts = {a.VISION_IMAGES_COUNT: state.images, a.VISION_BATCHES_COUNT: state.batches}
                active.span.set_attributes(counts)
        except Exception:
            report_internal_error("ultralytics root span")
        super()._finish(active, exc, items, abandoned)


_ROOTS: dict[tuple[str, str, str], PredictRequest] = {}


def current_call() -> Call | None:
    value = _context.get_current().get(CALL_KEY)
    return value if isinstance(value, Call) else None


class Callback:
    """One of our ultralytics callbacks, by event key.

    Ultralytics keeps callbacks in the model's ``callbacks`` dict, which is pickled and copied with the model, so a
    callback is a small picklable object (equal to any other with the same key), never a closure. Our own failures
    are caught and logged once: a callback never raises into the user's predict.
    """

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    @property
    def __name__(self) -> str:
        return f"otel_vision_{self.key.replace('@', '_')}"

    def __call__(self, engine: Any) -> None:
        try:
            HANDLERS[self.key](engine)
        except Exception:
            report_internal_error(f"ultralytics {self.key.split('@')[0]} callback")

    def __eq__(self, other: object) -> bool:
        return type(other) is Callback and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (Callback, (self.key,))

    def __repr__(self) -> str:
        return f"<otel_vision callback {self.key}>"


# --- predictor methods ------------------------------------------------------------------------------------------
def wrap_engine_class(cls: type, methods: tuple[str, ...], wrapper: Callable[..., Any], patches: Patches) -> None:
    """Wrap each of ``methods`` once, on the class in ``cls``'s MRO that defines it (the MRO is walked once per class
    until ``patches`` is emptied)."""
    key = (cls, methods, wrapper, patches)
    if _WRAPPED.get(key) == patches.generation:
        return
    for method in methods:
        owner = next((k for k in cls.__mro__ if method in k.__dict__), None)
        if owner is None or owner is object or (owner, method) in patches:
            continue
        patches.wrap(owner, method, functools.partial(wrapper, method))
    if len(_WRAPPED) >= _MAX_MODELS:
        _WRAPPED.clear()
    _WRAPPED[key] = patches.generation


_WRAPPED: dict[tuple[type, tuple[str, ...], Callable[..., Any], Patches], int] = {}
"""Engine classes whose methods `wrap_engine_class` handled, with the `Patches.generation` it did so in."""


def traced_predictor_method(method: str, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    """A predictor's ``preprocess``/``inference``/``postprocess`` as a stage of the running call; the outermost call
    only (a task's ``postprocess`` calling ``super().postprocess`` is one span)."""
    call = current_call()
    if call is None or call.method is not None or instance is not call.engine:
        return wrapped(*args, **kwargs)
    call.method = method
    try:
        return call.stages[method].run(call.parent(), wrapped, *args, **kwargs)
    finally:
        call.method = None


# --- callbacks ----------------------------------------------------------------------------------------------------
def source_kind(source: Any) -> str | None:
    """What a predict ``source`` argument is, when its type says it; ``None`` lets the loader's mode decide."""
    if isinstance(source, list | tuple):
        return "list"
    module = type(source).__module__.split(".")[0]
    if module == "torch":
        return "tensor"
    if module == "numpy":
        return "array"
    if module == "PIL":
        return "pil"
    if isinstance(source, int) or (isinstance(source, str) and source.isnumeric()):
        return "webcam"
    text = str(source)
    if text.startswith(("rtsp://", "rtmp://", "tcp://")) or text.endswith(".streams"):
        return "stream"
    if text.startswith(("http://", "https://")):
        return "url"
    if any(ch in text for ch in "*?["):
        return "glob"
    return "directory" if os.path.isdir(text) else None


def _source_kind(predictor: Any) -> str | None:
    source_type = getattr(predictor, "source_type", None)
    if source_type is not None:
        if getattr(source_type, "tensor", False):
            return "tensor"
        if getattr(source_type, "from_img", False):
            return "array"
        if getattr(source_type, "screenshot", False):
            return "screenshot"
    mode = getattr(getattr(predictor, "dataset", None), "mode", None)
    return str(mode) if mode else None


def on_predict_start(predictor: Any) -> None:
    call = current_call()
    if call is None or call.root is None:
        return
    call.engine = predictor
    wrap_engine_class(type(predictor), PREDICTOR_METHODS, traced_predictor_method, PATCHES)
    # What the root's attributes are made of, taken now; they are made on the hand-over thread when it runs (the
    # arguments object is the call's own: ultralytics makes a new one per call), here otherwise.
    found = (predictor.args, getattr(predictor, "device", ""), getattr(predictor, "model", None))
    kind = call.source_kind or _source_kind(predictor)
    if not complete_later(call.root, functools.partial(_amend_root, found, kind)):
        call.root.set_attributes(_root_attributes(found, kind))


def _root_attributes(found: tuple[Any, Any, Any], kind: str | None) -> dict[str, Any]:
    args, device, backend = found
    attrs: dict[str, Any] = {
        a.VISION_TASK: getattr(args, "task", None),
        a.VISION_DEVICE: str(device) or None,
        a.VISION_HALF: bool(getattr(backend, "fp16", False)),
        a.VISION_SOURCE_KIND: kind,
    }
    imgsz = getattr(args, "imgsz", None)
    if imgsz is not None:
        attrs[a.VISION_INPUT_SIZE] = list(imgsz) if isinstance(imgsz, list | tuple) else int(imgsz)
    return {k: v for k, v in attrs.items() if v is not None}


def _amend_root(found: tuple[Any, Any, Any], kind: str | None, span: LightSpan) -> None:
    span.amend(_root_attributes(found, kind), ())


def on_predict_batch_start(predictor: Any) -> None:
    call = current_call()
    if call is None or call.root is None:
        return
    call.close_open(None)
    call.engine = predictor
    batch = getattr(predictor, "batch", None)
    paths = batch[0] if isinstance(batch, list | tuple) and batch else None
    starter = _sized_batch_stage(call.model_name, len(paths)) if isinstance(paths, list | tuple) else call.batch_stage
    call.batch = starter._start(with_span(call.root))
    call.batches += 1


def _sized_batch_stage(name: str, size: int) -> stage:
    """A ``batch`` stage that starts its span with ``vision.batch.size`` among its attributes (one attribute call
    less per batch than setting it after the start; same attributes, same order). Its span is ended, and its metrics
    recorded, by the call's own batch stage, which has the same name and metric attributes."""
    key = (name, size)
    found = _SIZED_BATCH_STAGES.get(key)
    if found is None:
        found = stage("batch", {a.VISION_MODEL_NAME: name, a.VISION_BATCH_SIZE: size})
        if len(_SIZED_BATCH_STAGES) >= _MAX_MODELS:
            _SIZED_BATCH_STAGES.clear()
        _SIZED_BATCH_STAGES[key] = found
    return found


_SIZED_BATCH_STAGES: dict[tuple[str, int], stage] = {}


def on_predict_postprocess_end_first(predictor: Any) -> None:
    call = current_call()
    if call is None or call.batch is None or call.operation != "track":
        return
    call.track = call.track_stage._start(call.parent())


def on_predict_postprocess_end_last(predictor: Any) -> None:
    call = current_call()
    if call is None or call.track is None:
        return
    active, call.track = call.track, None
    call.track_stage._finish(active, None)


def on_predict_batch_end(predictor: Any) -> None:
    call = current_call()
    if call is None or call.batch is None:
        return
    active, call.batch = call.batch, None
    try:
        summarize_batch(active, predictor, call)
    finally:  # the batch span ends even when the summary fails
        call.batch_stage._finish(active, None)


PATCHES = Patches()
"""The class-level wrappers of engine methods (predictor and validator), installed on first use."""

HANDLERS: dict[str, Callable[[Any], None]] = {
    "on_predict_start": on_predict_start,
    "on_predict_batch_start": on_predict_batch_start,
    "on_predict_postprocess_end@first": on_predict_postprocess_end_first,
    "on_predict_postprocess_end@last": on_predict_postprocess_end_last,
    "on_predict_batch_end": on_predict_batch_end,
}
"""Our callback bodies by key (``event`` or ``event@position``); `Callback` objects call them. `_val` adds its own."""


def _top_classes(class_ids: list[int], names: Any) -> list[str]:
    names = names or {}
    return [f"{names.get(c, c)}:{n}" for c, n in Counter(class_ids).most_common(TOP_CLASSES)]


def summarize_batch(active: _Active, predictor: Any, call: Call) -> None:
    """Detections per batch and per image (bounded), ``vision.images`` and ``vision.detections`` metrics.

    Counts come from tensor shapes (host-side). The inference thread only takes, per image, its shape, its box tensor
    and its class names (`_found`); the summary is made from them on the hand-over thread before the span is exported
    (`otel_vision._light.complete_later`), or here when spans are handed over on the spot. Class names need the
    class ids: on the host they are read with the summary, per image; on CUDA they are copied asynchronously to pinned
    memory on this thread and summarized for the whole batch in the export path (``vision.detections.classes`` on
    the batch span), so the inference thread never waits for the device. The metrics are recorded from the finished
    batch span in the export path too (`record_batch_metrics`).
    """
    span = active.span
    results = getattr(predictor, "results", None)
    if not isinstance(results, list | tuple):
        # Replaced by a user callback (an iterator, a generator...): reading it would consume it. Say so, go on.
        if results is not None:
            span.set_attribute(a.VISION_SUMMARY_SKIPPED, True)
        return
    found = [_found(result) for result in results]
    images = len(found)
    call.images += images
    if not images:
        return
    if not any(is_data and getattr(boxes, "is_cuda", False) is True for _, boxes, is_data, _ in found):
        finish = functools.partial(_finish_summary, found, call.metric_attributes(), time_ns())
        if complete_later(span, finish):
            return
    summary = _summary(found, None)
    for event in summary.events:
        span.add_event(*event)
    if summary.attributes:
        span.set_attributes(summary.attributes)
    record_batch_metrics(active, call, summary.detections, images)
    if summary.device_classes:
        _defer_batch_classes(active, summary.device_classes, summary.names)


def _found(result: Any) -> tuple[Any, Any, bool, Any]:
    """What the summary reads of one result: its ``orig_shape``; its box tensor (``boxes.data``, else
    ``obb.data``), or the box object itself when it has none; whether that is the tensor; its class names.

    The tensor, not the box object: code that gives the result other boxes after the batch (``r.boxes.data = ...``,
    ``r.update(boxes=...)``, as trackers do) does not change what the summary, made later, counts."""
    boxes = getattr(result, "boxes", None)
    if boxes is None:
        boxes = getattr(result, "obb", None)
    shape, names = getattr(result, "orig_shape", None), getattr(result, "names", None)
    data = getattr(boxes, "data", None) if boxes is not None else None
    if data is not None and getattr(data, "shape", None) is not None:
        return shape, data, True, names
    return shape, boxes, False, names


class _Summary(NamedTuple):
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any], int | None]]
    detections: list[int]
    """Detections per image that has boxes."""
    device_classes: list[Any]
    """Class-id tensors on a device, for `_defer_batch_classes`."""
    names: Any


def _summary(found: list[tuple[Any, Any, bool, Any]], timestamp: int | None) -> _Summary:
    """The batch span's ``vision.detections.count`` and its ``image`` events (the first `MAX_IMAGE_EVENTS`)."""
    detections: list[int] = []
    device_classes: list[Any] = []
    events: list[tuple[str, dict[str, Any], int | None]] = []
    names: Any = None
    for index, (shape, boxes, is_data, result_names) in enumerate(found):
        event: dict[str, Any] = {a.VISION_IMAGE_INDEX: index}
        if shape is not None and len(shape) >= 2:
            event[a.VISION_IMAGE_HEIGHT], event[a.VISION_IMAGE_WIDTH] = int(shape[0]), int(shape[1])
        if boxes is not None:
            count = len(boxes)
            detections.append(count)
            event[a.VISION_DETECTIONS_COUNT] = count
            names = result_names
            if count:
                classes = boxes[:, -1] if is_data else boxes.cls  # what Boxes.cls and OBB.cls return
                if getattr(getattr(classes, "device", None), "type", "cpu") == "cpu":
                    if index < MAX_IMAGE_EVENTS:
                        event[a.VISION_DETECTIONS_CLASSES] = _top_classes([int(c) for c in classes.tolist()], names)
                else:
                    device_classes.append(classes)
        if index < MAX_IMAGE_EVENTS:
            events.append(("image", event, timestamp))
    attributes = {a.VISION_DETECTIONS_COUNT: sum(detections)} if detections else {}
    return _Summary(attributes, events, detections, device_classes, names)


def _finish_summary(
    found: list[tuple[Any, Any, bool, Any]], metric_attributes: dict[str, Any], timestamp: int, span: LightSpan
) -> None:
    """`summarize_batch`'s work on the hand-over thread: the summary onto the ended batch span, and its counts
    beside it for the span metrics (which read them when the span reaches them, just after)."""
    summary = _summary(found, timestamp)
    span.amend(summary.attributes, summary.events)
    defer_batch_counts(span.get_span_context().span_id, BatchCounts(metric_attributes, summary.detections, len(found)))


def record_batch_metrics(active: _Active, call: Call, detections: list[int], images: int) -> None:
    """``vision.detections`` (one point per image in ``detections``) and ``vision.images``: from the finished batch
    span in the export path when our pipeline records it (the same rule as `stage()`'s durations), here otherwise
    (a head sampler said no, or the global API), so every image is counted whatever the sampling."""
    counts = BatchCounts(call.metric_attributes(), detections, images)
    span = active.span
    if active.runtime.span_metrics and span.is_recording():
        defer_batch_counts(span.get_span_context().span_id, counts)
    else:
        record_batch_counts(_runtime.current().instruments, counts)


def _defer_batch_classes(active: _Active, device_classes: list[Any], names: Any) -> None:
    probe = _runtime.current().gpu
    if probe is None or active.gpu is None:
        return  # no event to tell when the copy has landed: leave the summary out rather than synchronize
    import torch

    ids = torch.cat([c.reshape(-1) for c in device_classes])
    host = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
    host.copy_(ids, non_blocking=True)
    probe.defer(
        active.span, lambda: {a.VISION_DETECTIONS_CLASSES: _top_classes([int(c) for c in host.tolist()], names)}
    )
