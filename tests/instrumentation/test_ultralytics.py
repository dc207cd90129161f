"""Ultralytics instrumentation against ultralytics itself (tiny random YOLOv8n from its YAML, bundled images)."""

from __future__ import annotations

import copy
import functools
import os
import pickle
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import StatusCode

os.environ.setdefault("YOLO_OFFLINE", "1")
ultralytics = pytest.importorskip("ultralytics")

from ultralytics import YOLO  # noqa: E402
from ultralytics.utils import ASSETS  # noqa: E402

import otel_vision  # noqa: E402
from otel_vision.instrumentation.ultralytics import UltralyticsInstrumentor  # noqa: E402
from otel_vision.testing import CapturedTelemetry  # noqa: E402

BUS, ZIDANE = ASSETS / "bus.jpg", ASSETS / "zidane.jpg"
FAST = {"imgsz": 160, "verbose": False}
TOLERANCE_MS = 1.0
"""Stage spans wrap exactly the calls ultralytics' profilers time; they may differ by our own bookkeeping only."""


@pytest.fixture
def instrumented(vision_telemetry: CapturedTelemetry) -> Iterator[UltralyticsInstrumentor]:
    instrumentor = UltralyticsInstrumentor()
    otel_vision.instrument_ultralytics()
    yield instrumentor
    instrumentor.uninstrument()


@pytest.fixture
def model() -> Any:
    return YOLO("yolov8n.yaml")


def _children(captured: CapturedTelemetry, parent: Any) -> list[Any]:
    return [s for s in captured.spans() if s.parent is not None and s.parent.span_id == parent.context.span_id]


def _ms(span: Any) -> float:
    return (span.end_time - span.start_time) / 1e6


class TestPredict:
    def test_list_is_one_batch_with_real_stage_spans(
        self, instrumented: Any, model: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """A list of N images gives one trace: predict > load, batch(N) > preprocess, warmup, inference, postprocess."""
        results = model.predict([BUS, ZIDANE], **FAST)
        root = vision_telemetry.span("predict")
        assert root.attributes["vision.operation"] == "predict"
        assert root.attributes["vision.model.name"] == "yolov8n"
        assert root.attributes["vision.task"] == "detect"
        assert root.attributes["vision.device"] == "cpu" and root.attributes["vision.half"] is False
        assert root.attributes["vision.input.size"] == 160 and root.attributes["vision.source.kind"] == "list"
        assert root.attributes["vision.images.count"] == 2
        assert {s.name for s in _children(vision_telemetry, root)} == {"load", "batch"}
        (batch,) = vision_telemetry.spans("batch")
        assert batch.attributes["vision.batch.size"] == 2
        names = [s.name for s in sorted(_children(vision_telemetry, batch), key=lambda s: s.start_time)]
        assert names == ["preprocess", "warmup", "inference", "postprocess"]
        for name in ("preprocess", "inference", "postprocess"):
            span = vision_telemetry.span(name)
            assert span.end_time > span.start_time
            expected = results[0].speed[name] * len(results)  # Results.speed is the batch time divided by n
            assert abs(_ms(span) - expected) <= TOLERANCE_MS + 0.05 * expected, (name, _ms(span), expected)
        images = [e for e in batch.events if e.name == "image"]
        assert [(e.attributes["vision.image.width"], e.attributes["vision.image.height"]) for e in images] == [
            (810, 1080),
            (1280, 720),
        ]

    def test_second_call_has_no_setup(self, instrumented: Any, model: Any, vision_telemetry: CapturedTelemetry) -> None:
        """Model setup and warm-up appear only on the call where they happen."""
        model.predict(BUS, **FAST)
        model.predict(BUS, **FAST)
        first, second = vision_telemetry.spans("predict")
        assert len(vision_telemetry.spans("load")) == 1 and len(vision_telemetry.spans("warmup")) == 1
        assert vision_telemetry.span("load").parent.span_id == first.context.span_id
        assert second.context.trace_id != first.context.trace_id

    def test_detections_counted_per_batch_and_image(
        self, instrumented: Any, model: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """Detections are counted on the batch, summarized per image (top classes only), and recorded as metrics."""
        results = model.predict([BUS, ZIDANE], conf=1e-4, **FAST)
        counts = [len(r.boxes) for r in results]
        batch = vision_telemetry.span("batch")
        assert batch.attributes["vision.detections.count"] == sum(counts) > 0
        images = [e for e in batch.events if e.name == "image"]
        assert [e.attributes["vision.detections.count"] for e in images] == counts
        for event in images:
            classes = event.attributes["vision.detections.classes"]
            assert 1 <= len(classes) <= 5 and all(":" in c for c in classes)
        (hist,) = vision_telemetry.points("vision.detections")
        assert hist.count == 2 and hist.sum == sum(counts)
        assert hist.attributes == {"vision.model.name": "yolov8n"}
        (images_counter,) = vision_telemetry.points("vision.images")
        assert images_counter.value == 2
        assert images_counter.attributes == {"vision.model.name": "yolov8n"}
        (requests,) = vision_telemetry.points("vision.requests")
        assert requests.value == 1 and requests.attributes == {
            "vision.operation": "predict",
            "vision.model.name": "yolov8n",
        }

    def test_image_metric_exemplars_point_at_the_predict_span(
        self, instrumented: Any, model: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """The exemplars of vision.detections and vision.images name the call's trace and its predict span."""
        exemplars = {}
        for metric in ("vision.detections", "vision.images"):  # a collection takes the exemplars: one per call
            model.predict([BUS, ZIDANE], conf=1e-4, **FAST)
            (point,) = vision_telemetry.points(metric)
            exemplars[metric] = {(e.trace_id, e.span_id) for e in point.exemplars}
        roots = vision_telemetry.spans("predict")
        assert exemplars == {
            metric: {(root.context.trace_id, root.context.span_id)}
            for metric, root in zip(("vision.detections", "vision.images"), roots, strict=True)
        }

    def test_batch_summary_is_the_same_handed_over_later_or_on_the_spot(
        self, instrumented: Any, model: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """The batch summary and the root's attributes are made on the hand-over thread when spans are handed over
        later, on the inference thread when a processor of the application's gets them on the spot: the same
        attributes (the batch's in the same order), the same image events and the same metrics either way."""
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        model.predict([BUS, ZIDANE], conf=1e-4, **FAST)  # load and warm-up out of the way
        vision_telemetry.clear()
        model.predict([BUS, ZIDANE], conf=1e-4, **FAST)
        later, later_root = vision_telemetry.span("batch"), vision_telemetry.span("predict")
        provider = vision_telemetry.handle.tracer_provider
        assert provider is not None
        on_the_spot = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(on_the_spot))
        model.predict([BUS, ZIDANE], conf=1e-4, **FAST)
        (spot,) = [s for s in on_the_spot.get_finished_spans() if s.name == "batch"]
        (spot_root,) = [s for s in on_the_spot.get_finished_spans() if s.name == "predict"]
        assert dict(later_root.attributes) == dict(spot_root.attributes)  # the root's, made later or not
        assert later_root.attributes["vision.device"] == "cpu" and later_root.attributes["vision.input.size"] == 160

        def summary(span: Any) -> tuple[Any, ...]:
            images = [dict(e.attributes) for e in span.events if e.name == "image"]
            assert all(span.start_time <= e.timestamp <= span.end_time for e in span.events)
            return list(span.attributes.items()), images

        assert summary(later) == summary(spot)
        assert later.attributes["vision.detections.count"] > 0
        assert all("vision.detections.classes" in image for image in summary(spot)[1])
        (hist,) = vision_telemetry.points("vision.detections")
        (images,) = vision_telemetry.points("vision.images")
        assert hist.count == 6 and hist.sum == 3 * later.attributes["vision.detections.count"]  # three predicts
        assert images.value == 6

    def test_batch_summary_counts_the_boxes_of_the_batch_not_later_edits(
        self, instrumented: Any, model: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """A stream consumer that gives each result other boxes right away (the summary is made on the hand-over
        thread, later) does not change what the batch span and the metrics count."""
        counts = []
        for result in model.predict([BUS, ZIDANE], stream=True, conf=1e-4, **FAST):
            counts.append(len(result.boxes))
            result.boxes.data = result.boxes.data[:1]
        batch = vision_telemetry.span("batch")
        assert batch.attributes["vision.detections.count"] == sum(counts) > 2
        images = [e for e in batch.events if e.name == "image"]
        assert [e.attributes["vision.detections.count"] for e in images] == counts
        (hist,) = vision_telemetry.points("vision.detections")
        assert hist.sum == sum(counts)

    def test_batch_larger_than_the_image_events(
        self, instrumented: Any, model: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """A batch of 40 images: 32 image events, but one vision.detections point per image (all 40) and
        vision.images 40; the batch span carries nothing else than before."""
        import bisect

        import numpy as np

        def vary_counts(predictor: Any) -> None:  # random weights find the same boxes in every image
            for i, result in enumerate(predictor.results):
                result.update(boxes=result.boxes.data[: i % 7])

        model.add_callback("on_predict_postprocess_end", vary_counts)
        frames = [np.full((64, 64, 3), 3 * i, dtype=np.uint8) for i in range(40)]
        results = model.predict(frames, conf=1e-4, **FAST)
        counts = [len(r.boxes) for r in results]
        assert len(counts) == 40 and len(set(counts)) >= 5  # several buckets, so a wrong carrier shows
        batch = vision_telemetry.span("batch")
        assert len([e for e in batch.events if e.name == "image"]) == 32
        assert list(batch.attributes) == [  # nothing added, same order
            "vision.stage",
            "vision.model.name",
            "vision.batch.size",
            "vision.detections.count",
        ]
        assert batch.attributes["vision.detections.count"] == sum(counts)
        (hist,) = vision_telemetry.points("vision.detections")
        assert hist.count == 40 and hist.sum == sum(counts)
        assert hist.min == min(counts) and hist.max == max(counts)
        expected = [0] * (len(hist.explicit_bounds) + 1)
        for count in counts:
            expected[bisect.bisect_left(hist.explicit_bounds, count)] += 1
        assert list(hist.bucket_counts) == expected
        assert hist.attributes == {"vision.model.name": "yolov8n"}
        (images_counter,) = vision_telemetry.points("vision.images")
        assert images_counter.value == 40 and images_counter.attributes == {"vision.model.name": "yolov8n"}
        assert vision_telemetry.span("predict").attributes["vision.images.count"] == 40

    def test_directory_is_batched(
        self, instrumented: Any, model: Any, vision_telemetry: CapturedTelemetry, tmp_path: Path
    ) -> None:
        """A folder of 3 images with batch=2 gives batches of 2 and 1 under one root."""
        for i, src in enumerate((BUS, ZIDANE, BUS)):
            shutil.copy(src, tmp_path / f"{i}.jpg")
        model.predict(str(tmp_path), batch=2, **FAST)
        root = vision_telemetry.span("predict")
        assert root.attributes["vision.source.kind"] == "directory"
        sizes = [
            b.attributes["vision.batch.size"]
            for b in sorted(vision_telemetry.spans("batch"), key=lambda s: s.start_time)
        ]
        assert sizes == [2, 1]
        assert all(b.parent.span_id == root.context.span_id for b in vision_telemetry.spans("batch"))

    def test_video_frames(
        self, instrumented: Any, model: Any, vision_telemetry: CapturedTelemetry, tmp_path: Path
    ) -> None:
        """A 4-frame video is a root with one batch per frame and source kind video."""
        cv2 = pytest.importorskip("cv2")
        frame = cv2.resize(cv2.imread(str(BUS)), (160, 160))
        path = tmp_path / "clip.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (160, 160))
        for _ in range(4):
            writer.write(frame)
        writer.release()
        results = model.predict(str(path), **FAST)
        assert len(results) == 4
        assert vision_telemetry.span("predict").attributes["vision.source.kind"] == "video"
        assert len(vision_telemetry.spans("batch")) == 4

    def test_stream_abandoned_after_k_results(
        self, instrumented: Any, model: Any, vision_telemetry: CapturedTelemetry, tmp_path: Path
    ) -> None:
        """A stream=True generator closed after 2 of 4 results ends every span; the root says 2 results, abandoned."""
        for i in range(4):
            shutil.copy(BUS, tmp_path / f"{i}.jpg")
        stream = model.predict(str(tmp_path), stream=True, **FAST)
        taken = [next(stream), next(stream)]
        stream.close()
        assert len(taken) == 2
        root = vision_telemetry.span("predict")
        assert root.attributes["vision.items"] == 2 and root.attributes["vision.abandoned"] is True
        assert root.status.status_code is StatusCode.UNSET
        batches = vision_telemetry.spans("batch")
        assert 2 <= len(batches) <= 3 and all(b.end_time for b in batches)

    def test_exception_ends_every_span_and_propagates(
        self, instrumented: Any, model: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """An exception inside predict marks root and batch ERROR and reaches the caller as the same object."""
        error = RuntimeError("camera unplugged")

        def explode(predictor: Any) -> None:
            raise error

        model.add_callback("on_predict_postprocess_end", explode)
        with pytest.raises(RuntimeError) as caught:
            model.predict(BUS, **FAST)
        assert caught.value is error
        root, batch = vision_telemetry.span("predict"), vision_telemetry.span("batch")
        for span in (root, batch):
            assert span.status.status_code is StatusCode.ERROR and span.attributes["error.type"] == "RuntimeError"
        (requests,) = vision_telemetry.points("vision.requests")
        assert requests.attributes["error.type"] == "RuntimeError"

    def test_our_failures_never_reach_predict(
        self,
        instrumented: Any,
        model: Any,
        vision_telemetry: CapturedTelemetry,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """If our callback code breaks, predict returns its normal results and the failure is logged once."""
        from otel_vision.instrumentation.ultralytics import _predict

        def broken(*args: Any) -> None:
            raise KeyError("bug in otel_vision")

        monkeypatch.setattr(_predict, "summarize_batch", broken)
        results = model.predict([BUS, ZIDANE], **FAST)
        assert len(results) == 2
        assert any("on_predict_batch_end callback" in r.getMessage() for r in caplog.records)
        assert vision_telemetry.span("predict").status.status_code is StatusCode.UNSET

    def test_two_threads_two_models(self, instrumented: Any, vision_telemetry: CapturedTelemetry) -> None:
        """Two threads predicting with two models produce two separate traces, each complete."""
        models = [YOLO("yolov8n.yaml"), YOLO("yolov8s.yaml")]
        barrier = threading.Barrier(2)

        def run(m: Any) -> None:
            barrier.wait()
            for _ in range(2):
                m.predict(BUS, **FAST)

        threads = [threading.Thread(target=run, args=(m,)) for m in models]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        roots = vision_telemetry.spans("predict")
        assert sorted(r.attributes["vision.model.name"] for r in roots) == ["yolov8n", "yolov8n", "yolov8s", "yolov8s"]
        for root in roots:
            in_trace = [s for s in vision_telemetry.spans() if s.context.trace_id == root.context.trace_id]
            names = sorted(s.name for s in in_trace if s.name in ("batch", "preprocess", "inference", "postprocess"))
            assert names == ["batch", "inference", "postprocess", "preprocess"]
            assert all(
                s.attributes.get("vision.model.name") in (None, root.attributes["vision.model.name"]) for s in in_trace
            )

    def test_rebuilt_predictor_keeps_instrumentation(
        self, instrumented: Any, model: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """Changing a setup argument rebuilds the predictor; the new one is traced too, and nothing is on the YOLO module."""
        model.predict(BUS, **FAST)
        first = model.predictor
        model.predict(BUS, channels_last=True, **FAST)
        assert model.predictor is not first
        assert len(vision_telemetry.spans("inference")) == 2 and len(vision_telemetry.spans("load")) == 2
        # Our timing wrappers live on the predictor classes, never on the user's YOLO module or predictor objects.
        assert not model.model._forward_hooks and not model.model._forward_pre_hooks
        assert not set(model.predictor.__dict__) & {"preprocess", "inference", "postprocess"}

    def test_track_mode(self, instrumented: Any, model: Any, vision_telemetry: CapturedTelemetry) -> None:
        """model.track() is one trace with operation track and a track span after postprocess in each batch."""
        pytest.importorskip("lap")
        model.track(BUS, conf=1e-4, **FAST)
        (root,) = [s for s in vision_telemetry.spans() if s.attributes.get("vision.operation")]
        assert root.name == "track" and root.attributes["vision.operation"] == "track"
        batch = vision_telemetry.span("batch")
        assert batch.parent.span_id == root.context.span_id
        children = sorted(_children(vision_telemetry, batch), key=lambda s: s.start_time)
        assert [s.name for s in children] == ["preprocess", "warmup", "inference", "postprocess", "track"]
        assert children[-1].attributes["vision.stage"] == "track"
        assert children[-1].start_time >= children[-2].end_time


class TestSampling:
    """Every predict is counted in the metrics, whether its trace is kept or not."""

    @pytest.mark.parametrize(
        "settings",
        [
            pytest.param({"sample_rate": 0.0}, id="head-sampled-out"),
            pytest.param({"tail_sampling_ratio": 0.0, "tail_sampling_latency": 1000.0}, id="tail-sampled-out"),
        ],
    )
    def test_dropped_traces_are_still_counted(self, settings: dict[str, Any], model: Any) -> None:
        from otel_vision.testing import capture_telemetry

        with capture_telemetry(**settings) as captured:
            otel_vision.instrument_ultralytics()
            try:
                counts: list[int] = []
                for source in ([BUS, ZIDANE], BUS):
                    counts += [len(r.boxes) for r in model.predict(source, conf=1e-4, **FAST)]
            finally:
                UltralyticsInstrumentor().uninstrument()
            assert captured.spans() == []
            (hist,) = captured.points("vision.detections")
            assert hist.count == 3 and hist.sum == sum(counts) > 0
            assert hist.attributes == {"vision.model.name": "yolov8n"}
            (images_counter,) = captured.points("vision.images")
            assert images_counter.value == 3 and images_counter.attributes == {"vision.model.name": "yolov8n"}
            (requests,) = captured.points("vision.requests")
            assert requests.value == 2


class TestScope:
    def test_only_the_instrumented_model(self, vision_telemetry: CapturedTelemetry) -> None:
        """instrument_ultralytics(model) traces that model and not another one."""
        mine, other = YOLO("yolov8n.yaml"), YOLO("yolov8n.yaml")
        otel_vision.instrument_ultralytics(mine)
        try:
            other.predict(BUS, **FAST)
            assert vision_telemetry.spans() == []
            mine.predict(BUS, **FAST)
            assert len(vision_telemetry.spans("predict")) == 1
        finally:
            UltralyticsInstrumentor().uninstrument()

    def test_uninstrument_leaves_nothing_behind(self, vision_telemetry: CapturedTelemetry) -> None:
        """After uninstrument(): no span, no callback of ours, no class wrapper, no predictor attribute."""
        from ultralytics.engine.model import Model
        from ultralytics.engine.predictor import BasePredictor

        model = YOLO("yolov8n.yaml")
        otel_vision.instrument_ultralytics()
        model.predict(BUS, **FAST)
        assert vision_telemetry.spans("predict")
        UltralyticsInstrumentor().uninstrument()
        vision_telemetry.clear()
        model.predict(BUS, **FAST)
        assert vision_telemetry.spans() == []
        assert not any(
            getattr(fn, "__name__", "").startswith("otel_vision") for fns in model.callbacks.values() for fn in fns
        )
        from ultralytics.nn.autobackend import AutoBackend

        for owner, name in (
            (Model, "predict"),
            (Model, "val"),
            (BasePredictor, "setup_model"),
            (AutoBackend, "warmup"),
        ):
            assert not type(owner.__dict__[name]).__module__.startswith("wrapt"), name
        assert not set(model.predictor.__dict__) & {"preprocess", "inference", "postprocess"}

    def test_instrument_is_idempotent(self, vision_telemetry: CapturedTelemetry) -> None:
        """Instrumenting twice adds no second callback and no second span."""
        model = YOLO("yolov8n.yaml")
        otel_vision.instrument_ultralytics()
        otel_vision.instrument_ultralytics()
        UltralyticsInstrumentor().instrument()
        try:
            model.predict(BUS, **FAST)
            model.predict(BUS, **FAST)
            assert len(vision_telemetry.spans("predict")) == 2
            assert sum(fn.__name__.startswith("otel_vision") for fn in model.callbacks["on_predict_batch_end"]) == 1
        finally:
            UltralyticsInstrumentor().uninstrument()

    def test_callback_added_between_calls_runs_before_our_summary(
        self, instrumented: Any, model: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """A batch-end callback the user adds after a first traced call still runs before our summary (ours stay
        last), so the batch span counts what the user's callback left."""
        model.predict(BUS, conf=1e-4, **FAST)

        def keep_one(predictor: Any) -> None:
            for result in predictor.results:
                result.update(boxes=result.boxes.data[:1])

        model.add_callback("on_predict_batch_end", keep_one)
        (result,) = model.predict(BUS, conf=1e-4, **FAST)
        assert len(result.boxes) == 1
        first, second = sorted(vision_telemetry.spans("batch"), key=lambda s: s.start_time)
        assert first.attributes["vision.detections.count"] > 1
        assert second.attributes["vision.detections.count"] == 1
        assert model.callbacks["on_predict_batch_end"][-1].__name__ == "otel_vision_on_predict_batch_end"

    def test_dependencies_declared(self) -> None:
        """The instrumentor declares the ultralytics versions it supports."""
        assert list(UltralyticsInstrumentor().instrumentation_dependencies()) == ["ultralytics >= 8.3"]


def _tiny_dataset(root: Path) -> Path:
    """Three labelled images (the bundled samples) and a data.yaml pointing at them, nothing downloaded."""
    import yaml
    from ultralytics.utils import ROOT

    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for i, src in enumerate((BUS, ZIDANE, BUS)):
        shutil.copy(src, root / "images" / "val" / f"{i}.jpg")
        (root / "labels" / "val" / f"{i}.txt").write_text("0 0.5 0.5 0.3 0.6\n5 0.4 0.4 0.2 0.2\n")
    names = yaml.safe_load((ROOT / "cfg" / "datasets" / "coco8.yaml").read_text())["names"]
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/val", "val": "images/val", "names": names}))
    return data


def test_val(instrumented: Any, model: Any, vision_telemetry: CapturedTelemetry, tmp_path: Path) -> None:
    """model.val() is one trace: val > batch > preprocess, inference, postprocess, with the metrics on the root."""
    data = _tiny_dataset(tmp_path)
    model.val(data=str(data), imgsz=160, batch=2, plots=False, verbose=False, workers=0)
    root = vision_telemetry.span("val")
    assert root.attributes["vision.operation"] == "val" and root.attributes["vision.images.count"] == 3
    assert "vision.val.map50-95_b" in root.attributes
    (images_counter,) = vision_telemetry.points("vision.images")
    assert images_counter.value == 3 and images_counter.attributes == {"vision.model.name": "yolov8n"}
    assert not vision_telemetry.points("vision.detections")
    batches = sorted(vision_telemetry.spans("batch"), key=lambda s: s.start_time)
    assert [b.attributes["vision.batch.size"] for b in batches] == [2, 1]
    for batch in batches:
        children = sorted(_children(vision_telemetry, batch), key=lambda s: s.start_time)
        assert [c.name for c in children] == ["preprocess", "inference", "postprocess"]
        assert children[0].end_time <= children[1].start_time and children[1].end_time <= children[2].start_time


def test_zero_code_with_diffusers_missing(tmp_path: Path) -> None:
    """`opentelemetry-instrument python app.py` traces YOLO with no code change, also where diffusers is missing."""
    from tests.conftest import run_instrumented_without

    app = tmp_path / "app.py"
    app.write_text(
        "from ultralytics import YOLO\n"
        "from ultralytics.utils import ASSETS\n"
        "try:\n    import diffusers\nexcept ModuleNotFoundError:\n    print('diffusers: missing')\n"
        "YOLO('yolov8n.yaml').predict(ASSETS / 'bus.jpg', imgsz=160, verbose=False)\n"
    )
    result = run_instrumented_without("diffusers", app, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "diffusers: missing" in result.stdout
    for name in ('"name": "predict"', '"name": "batch"', '"name": "inference"'):
        assert name in result.stdout, result.stdout[-3000:]


class TestInvisible:
    """What the user sees is what they would see without us: their loop's items, copies, other wrappers."""

    def test_results_replaced_by_an_iterator(
        self, instrumented: Any, model: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """A callback that turns predictor.results into an iterator (as ultralytics' own tests do with zip) still
        hands every item to the user's loop; the batch span ends, with its stage spans under it."""

        def zip_results(predictor: Any) -> None:
            predictor.results = zip(predictor.results, predictor.batch[1], strict=True)

        model.add_callback("on_predict_batch_end", zip_results)
        received = list(model.predict(BUS, stream=True, **FAST))
        assert len(received) == 1 and len(received[0]) == 2
        batch = vision_telemetry.span("batch")
        assert batch.attributes["vision.summary.skipped"] is True
        assert {s.name for s in _children(vision_telemetry, batch)} == {
            "preprocess",
            "warmup",
            "inference",
            "postprocess",
        }

    def test_every_span_ends_when_our_callback_fails(
        self, instrumented: Any, model: Any, vision_telemetry: CapturedTelemetry, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If our batch summary breaks, the batch span still ends and its children keep their parent."""
        from otel_vision.instrumentation.ultralytics import _predict

        def broken(*args: Any) -> None:
            raise KeyError("bug in otel_vision")

        monkeypatch.setattr(_predict, "summarize_batch", broken)
        model.predict(BUS, **FAST)
        batch = vision_telemetry.span("batch")
        assert batch.parent.span_id == vision_telemetry.span("predict").context.span_id
        assert len(_children(vision_telemetry, batch)) == 4

    def test_copied_predictor_uses_its_own_arguments(
        self, instrumented: Any, model: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """copy.copy(model.predictor) after an instrumented predict runs the copy's own methods and arguments."""
        many = model.predict(BUS, conf=1e-4, **FAST)
        assert len(many[0].boxes) > 1
        twin = copy.copy(model.predictor)
        twin.args = copy.copy(model.predictor.args)
        twin.args.max_det = 1
        (result,) = twin(BUS)
        assert len(result.boxes) == 1

    def test_model_copy_and_pickle(self, vision_telemetry: CapturedTelemetry) -> None:
        """An instrumented model pickles and deep-copies as a plain one; the copy is not bound to the original."""
        mine = YOLO("yolov8n.yaml")
        otel_vision.instrument_ultralytics(mine)
        try:
            mine.predict(BUS, **FAST)
            mine.predictor = None  # a predictor holds a lock: without us as with us, it cannot be pickled
            twin = copy.deepcopy(mine)
            restored = pickle.loads(pickle.dumps(mine))
            vision_telemetry.clear()
            for other in (twin, restored):
                assert len(other.predict(BUS, **FAST)) == 1
            assert vision_telemetry.spans() == []  # only `mine` was instrumented
            mine.predict(BUS, **FAST)
            assert len(vision_telemetry.spans("predict")) == 1
        finally:
            otel_vision.uninstrument_ultralytics()

    @pytest.mark.parametrize("order", ["theirs_after_ours", "theirs_before_ours"])
    def test_third_party_wrapper_of_predict(self, order: str, vision_telemetry: CapturedTelemetry) -> None:
        """Another library's wrapper of Model.predict, installed after or before ours, and ours both run; after
        uninstrument theirs still runs and ours is silent."""
        from ultralytics.engine.model import Model

        original = Model.__dict__["predict"]
        seen: list[int] = []

        def install() -> None:
            raw = Model.__dict__["predict"]  # the raw class attribute, as many wrappers take it

            @functools.wraps(raw)
            def theirs(self: Any, *args: Any, **kwargs: Any) -> Any:
                seen.append(1)
                return raw(self, *args, **kwargs)

            Model.predict = theirs  # type: ignore[method-assign]

        try:
            if order == "theirs_before_ours":
                install()
            otel_vision.instrument_ultralytics()
            if order == "theirs_after_ours":
                install()
            model = YOLO("yolov8n.yaml")
            assert len(model.predict(BUS, **FAST)) == 1
            assert len(seen) == 1 and len(vision_telemetry.spans("predict")) == 1
            otel_vision.uninstrument_ultralytics()
            vision_telemetry.clear()
            assert len(model.predict(BUS, **FAST)) == 1
            assert len(seen) == 2 and vision_telemetry.spans() == []
            otel_vision.instrument_ultralytics()  # back on: one root span, not two
            model.predict(BUS, **FAST)
            assert len(vision_telemetry.spans("predict")) == 1
        finally:
            otel_vision.uninstrument_ultralytics()
            Model.predict = original  # type: ignore[method-assign]

    @pytest.mark.parametrize("thing", [object(), "yolov8n.pt", "torch"])
    def test_not_a_model(self, thing: Any) -> None:
        """instrument_ultralytics on something that is not an ultralytics model raises TypeError naming the type."""
        import torch

        if thing == "torch":
            thing = torch.nn.Linear(2, 2)
        with pytest.raises(TypeError, match=r"takes an ultralytics model \(ultralytics.engine.model.Model"):
            otel_vision.instrument_ultralytics(thing)
        assert not UltralyticsInstrumentor().is_instrumented_by_opentelemetry


def test_source_kind_by_type_and_by_value(tmp_path: Path) -> None:
    """``vision.source.kind`` from a predict source: by its type (or what it passes for), else by its value."""
    import numpy as np
    import torch
    from PIL import Image

    from otel_vision.instrumentation.ultralytics._predict import source_kind

    class Frames(list):  # type: ignore[type-arg]
        pass

    class Proxy:  # an object proxy (wrapt's, a mock's spec=) that passes for what it wraps
        def __init__(self, wrapped: Any) -> None:
            self._wrapped = wrapped

        @property  # type: ignore[misc]
        def __class__(self) -> type:
            return type(self._wrapped)

        def __str__(self) -> str:
            return str(self._wrapped)

    cases = [
        (np.zeros((2, 2, 3), dtype=np.uint8), "array"),
        (torch.zeros(1, 3, 2, 2), "tensor"),
        (Image.new("RGB", (2, 2)), "pil"),
        ([BUS], "list"),
        (Frames([BUS]), "list"),
        ((BUS,), "list"),
        (Proxy([BUS]), "list"),
        (0, "webcam"),
        ("1", "webcam"),
        ("rtsp://camera/1", "stream"),
        ("https://example.com/bus.jpg", "url"),
        (str(tmp_path / "*.jpg"), "glob"),
        (str(tmp_path), "directory"),
        (tmp_path, "directory"),
        (str(BUS), None),
        (BUS, None),
    ]
    assert [source_kind(source) for source, _ in cases] == [kind for _, kind in cases]
