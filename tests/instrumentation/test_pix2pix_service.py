"""The InstructPix2Pix editing service example: one trace per HTTP request, queue and pipeline under it."""

from __future__ import annotations

import importlib.util
import io
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("fastapi")
pytest.importorskip("diffusers")

import otel_vision
from otel_vision._tiny_pipelines import tiny_instruct_pix2pix
from otel_vision.instrumentation.diffusers import DiffusersInstrumentor
from otel_vision.testing import CapturedTelemetry
from tests.conftest import ROOT

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def _load_service() -> Any:
    spec = importlib.util.spec_from_file_location("pix2pix_service", ROOT / "examples" / "instructpix2pix_service.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pix2pix_service"] = module
    spec.loader.exec_module(module)
    return module


service = _load_service()


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (30, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def pipe(vision_telemetry: CapturedTelemetry) -> Iterator[Any]:
    pipeline = tiny_instruct_pix2pix()
    otel_vision.instrument_diffusers(pipeline)
    yield pipeline
    DiffusersInstrumentor().uninstrument()


def _client(app: Any) -> Any:
    from fastapi.testclient import TestClient

    return TestClient(app)


def test_one_trace_per_request_honouring_traceparent(pipe: Any, vision_telemetry: CapturedTelemetry) -> None:
    """The edit span continues the caller's trace and is the parent of the queue span and the pipeline span."""
    headers = {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
    with _client(service.create_app(pipe, steps=2)) as client:
        response = client.post(
            "/edit",
            files={"image": ("photo.png", _png(), "image/png")},
            data={"instruction": "make it snowy"},
            headers=headers,
        )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    edit = vision_telemetry.span("edit")
    assert edit.kind is SpanKind.SERVER and format(edit.context.trace_id, "032x") == TRACE_ID
    assert format(edit.parent.span_id, "016x") == "00f067aa0ba902b7"
    queue_span, pipeline = vision_telemetry.span("queue"), vision_telemetry.span("pipeline")
    for child in (queue_span, pipeline):
        assert child.parent.span_id == edit.context.span_id
    assert queue_span.end_time <= pipeline.start_time
    assert len(vision_telemetry.spans("denoise_step")) == 2
    (wait,) = vision_telemetry.points("vision.queue.duration")
    assert wait.count == 1 and wait.attributes == {"vision.model.name": service.MODEL_NAME}


@pytest.mark.parametrize(
    ("files", "data", "error"),
    [
        ({"image": ("photo.png", _png(), "image/png")}, {}, "missing_instruction"),
        ({"image": ("notes.txt", b"not an image at all", "text/plain")}, {"instruction": "add a hat"}, "invalid_image"),
        ({}, {"instruction": "add a hat"}, "invalid_image"),
    ],
)
def test_bad_requests(pipe: Any, vision_telemetry: CapturedTelemetry, files: Any, data: Any, error: str) -> None:
    """A missing instruction or a non-image upload is a 400 naming the problem, a failed span, and a counted request."""
    with _client(service.create_app(pipe)) as client:
        response = client.post("/edit", files=files, data=data)
    assert response.status_code == 400 and response.json()["error"] == error
    edit = vision_telemetry.span("edit")
    assert edit.status.status_code is StatusCode.ERROR and edit.attributes["error.type"] == error
    (requests,) = vision_telemetry.points("vision.requests")
    assert requests.attributes["error.type"] == error and requests.attributes["vision.operation"] == "edit"
    assert vision_telemetry.spans("pipeline") == []


def test_full_queue_answers_429(pipe: Any, vision_telemetry: CapturedTelemetry) -> None:
    """With the worker busy and the queue full, the next request is refused with 429 at once."""
    started, release = threading.Event(), threading.Event()

    class Slow:
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            started.set()
            release.wait(timeout=30)
            return pipe(*args, **kwargs)

    app = service.create_app(Slow(), capacity=1, steps=1)
    statuses: list[int] = []

    with _client(app) as client:

        def post() -> None:
            files = {"image": ("photo.png", _png(), "image/png")}
            statuses.append(client.post("/edit", files=files, data={"instruction": "add a hat"}).status_code)

        first = threading.Thread(target=post)
        first.start()
        assert started.wait(timeout=30)  # the worker holds job 1
        second = threading.Thread(target=post)
        second.start()
        while app.state.worker.jobs.qsize() < 1:  # job 2 waits in the queue
            threading.Event().wait(0.01)
        files = {"image": ("photo.png", _png(), "image/png")}
        refused = client.post("/edit", files=files, data={"instruction": "add a hat"})
        release.set()
        first.join(timeout=60)
        second.join(timeout=60)
    assert refused.status_code == 429 and refused.json()["error"] == "queue_full"
    assert sorted(statuses) == [200, 200]
    errors = [s.attributes.get("error.type") for s in vision_telemetry.spans("edit")]
    assert errors.count("queue_full") == 1 and errors.count(None) == 2
    assert len(vision_telemetry.spans("pipeline")) == 2 and len(vision_telemetry.spans("queue")) == 2
