"""The InstructPix2Pix editing service example: one trace per HTTP request, queue and pipeline under it; limits,
timeouts, disconnects and SIGTERM answered as documented and counted in ``vision.requests``."""

from __future__ import annotations

import importlib.util
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
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
SCRIPT = ROOT / "examples" / "instructpix2pix_service.py"
# A job the tiny pipeline cannot finish within any bound below (about 0.4 s a step on CPU at 128×128).
LONG = {"steps": "500"}


def _load_service() -> Any:
    spec = importlib.util.spec_from_file_location("pix2pix_service", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pix2pix_service"] = module
    spec.loader.exec_module(module)
    return module


service = _load_service()


def _png(width: int = 64, height: int = 64) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _upload(data: bytes | None = None) -> dict[str, Any]:
    return {"image": ("photo.png", _png() if data is None else data, "image/png")}


@pytest.fixture
def pipe(vision_telemetry: CapturedTelemetry) -> Iterator[Any]:
    pipeline = tiny_instruct_pix2pix()
    otel_vision.instrument_diffusers(pipeline)
    yield pipeline
    DiffusersInstrumentor().uninstrument()


def _client(app: Any) -> Any:
    from fastapi.testclient import TestClient

    return TestClient(app)


def _requests_by_error(telemetry: CapturedTelemetry) -> dict[str | None, int]:
    return {p.attributes.get("error.type"): p.value for p in telemetry.points("vision.requests")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _batches(telemetry: CapturedTelemetry) -> tuple[list[ReadableSpan], list[ReadableSpan]]:
    """The worker's ``edit_batch`` spans and the member spans in the requests' traces, in end order."""
    spans = telemetry.spans("edit_batch")
    return (
        [s for s in spans if s.attributes["vision.batch.role"] == "batch"],
        [s for s in spans if s.attributes["vision.batch.role"] == "member"],
    )


def test_one_trace_per_request_honouring_traceparent(pipe: Any, vision_telemetry: CapturedTelemetry) -> None:
    """The edit span continues the caller's trace and is the parent of the queue span and of its member span of the
    worker's batch (here a batch of one); the batch span links to the edit span and is the pipeline span's parent."""
    headers = {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
    with _client(service.create_app(pipe, steps=2)) as client:
        response = client.post("/edit", files=_upload(), data={"instruction": "make it snowy"}, headers=headers)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    edit = vision_telemetry.span("edit")
    assert edit.kind is SpanKind.SERVER and format(edit.context.trace_id, "032x") == TRACE_ID
    assert format(edit.parent.span_id, "016x") == "00f067aa0ba902b7"
    queue_span, pipeline = vision_telemetry.span("queue"), vision_telemetry.span("pipeline")
    (batch,), (member,) = _batches(vision_telemetry)
    for child in (queue_span, member):
        assert child.parent.span_id == edit.context.span_id
    assert batch.attributes["vision.batch.size"] == 1 and member.attributes["vision.batch.size"] == 1
    assert [link.context.span_id for link in batch.links] == [edit.context.span_id]
    assert [link.context.span_id for link in member.links] == [batch.context.span_id]
    assert batch.context.trace_id != edit.context.trace_id  # the worker's own trace
    assert pipeline.parent.span_id == batch.context.span_id and pipeline.attributes["vision.batch.size"] == 1
    assert queue_span.end_time <= batch.start_time <= pipeline.start_time
    assert len(vision_telemetry.spans("denoise_step")) == 2
    (wait,) = vision_telemetry.points("vision.queue.duration")
    assert wait.count == 1 and wait.attributes == {"vision.model.name": service.MODEL_NAME}


LIMITS = {"PIX2PIX_MAX_PIXELS": str(128 * 128), "PIX2PIX_MAX_UPLOAD_BYTES": "100000", "PIX2PIX_MIN_SIDE": "16"}
REFUSALS = [
    # (multipart files, form data, status, error.type, words the message must hold)
    (_upload(), {}, 400, "missing_instruction", "'instruction' is required"),
    ({"instruction": (None, "add a hat")}, {}, 400, "invalid_image", "no file uploaded"),
    (
        {"image": ("notes.txt", b"not an image at all", "text/plain")},
        {"instruction": "add a hat"},
        400,
        "invalid_image",
        "PNG, JPEG or WebP",
    ),
    (_upload(_png(1, 1)), {"instruction": "add a hat"}, 400, "image_too_small", "1×1 pixels; both sides"),
    (_upload(_png(15, 200)), {"instruction": "add a hat"}, 400, "image_too_small", "at least 16 pixels"),
    (_upload(_png(129, 128)), {"instruction": "add a hat"}, 413, "image_too_large", "at most 16,384 pixels"),
    (_upload(os.urandom(150_000)), {"instruction": "add a hat"}, 413, "upload_too_large", "100,000 bytes"),
    ({"image": (None, "photo.png")}, {"instruction": "add a hat"}, 422, "invalid_field", "'image' must be a file"),
    (_upload(), {"instruction": "add a hat", "steps": "0"}, 422, "invalid_field", "'steps' must be a whole number"),
    (_upload(), {"instruction": "add a hat", "steps": "many"}, 422, "invalid_field", "from 1 to 100"),
]


@pytest.mark.parametrize(("files", "data", "status", "error", "words"), REFUSALS)
def test_refusals_are_clear_and_counted(
    pipe: Any,
    vision_telemetry: CapturedTelemetry,
    monkeypatch: pytest.MonkeyPatch,
    files: Any,
    data: Any,
    status: int,
    error: str,
    words: str,
) -> None:
    """Each bad request gets its status, a JSON message naming the problem (no Python reprs), a failed span and a
    count in ``vision.requests``; the limits come from the documented environment variables; no pipeline runs."""
    for name, value in LIMITS.items():
        monkeypatch.setenv(name, value)
    with _client(service.create_app(pipe)) as client:
        response = client.post("/edit", files=files, data=data)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and words in body["detail"], body
    assert not any(repr_mark in body["detail"] for repr_mark in ("<", " object at ", "0x")), body
    edit = vision_telemetry.span("edit")
    assert edit.status.status_code is StatusCode.ERROR and edit.attributes["error.type"] == error
    (requests,) = vision_telemetry.points("vision.requests")
    assert requests.attributes["error.type"] == error and requests.attributes["vision.operation"] == "edit"
    assert vision_telemetry.spans("pipeline") == []


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("PIX2PIX_MAX_PIXELS", "lots", "PIX2PIX_MAX_PIXELS must be an integer, got 'lots'"),
        ("PIX2PIX_JOB_TIMEOUT_S", "0", "PIX2PIX_JOB_TIMEOUT_S must be a positive number of seconds"),
        ("PIX2PIX_STEPS", "500", "PIX2PIX_STEPS (500) must not exceed PIX2PIX_MAX_STEPS (100)"),
        ("PIX2PIX_MAX_BATCH", "0", "PIX2PIX_MAX_BATCH must be at least 1, got 0"),
    ],
)
def test_bad_limit_variables_are_named(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, words: str) -> None:
    """A malformed limit stops the service at startup with a message naming the variable."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError) as error:
        service.create_app(object())
    assert words in str(error.value)


def test_body_limit_holds_without_content_length(pipe: Any, vision_telemetry: CapturedTelemetry) -> None:
    """A chunked upload (no Content-Length to check up front) is cut off at the byte limit: 413, counted."""

    def body() -> Iterator[bytes]:
        yield b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for _ in range(200):  # 200 × 64 KiB = 12.5 MiB, more than the limit below
            yield b"\0" * 65536

    app = service.create_app(pipe, service.Settings(max_upload_bytes=1024 * 1024))
    with _client(app) as client:
        response = client.post("/edit", content=body(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 413 and response.json()["error"] == "upload_too_large"
    assert "1,048,576 bytes" in response.json()["detail"]
    assert _requests_by_error(vision_telemetry) == {"upload_too_large": 1}


def test_not_multipart_is_415_and_counted(pipe: Any, vision_telemetry: CapturedTelemetry) -> None:
    """JSON or a urlencoded form cannot carry the image: 415 naming what to send, counted."""
    with _client(service.create_app(pipe)) as client:
        as_json = client.post("/edit", json={"image": "aGVsbG8=", "instruction": "add a hat"})
        as_urlencoded = client.post("/edit", data={"instruction": "add a hat"})
    for response in (as_json, as_urlencoded):
        assert response.status_code == 415 and response.json()["error"] == "unsupported_media_type"
        assert "multipart/form-data with a file field 'image'" in response.json()["detail"]
    assert _requests_by_error(vision_telemetry) == {"unsupported_media_type": 2}


def test_pipeline_failure_is_500_without_internals(vision_telemetry: CapturedTelemetry) -> None:
    """An exception in the pipeline is a 500 with the trace id; its message (here holding a repr) stays inside."""

    class Broken:
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            raise ValueError(f"bad tensor {object()!r}")

    with _client(service.create_app(Broken())) as client:
        response = client.post("/edit", files=_upload(), data={"instruction": "add a hat"})
    assert response.status_code == 500
    body = response.json()
    edit = vision_telemetry.span("edit")
    assert body["error"] == "internal_error" and format(edit.context.trace_id, "032x") in body["detail"]
    assert "object at" not in body["detail"] and "ValueError" in body["detail"]
    assert edit.attributes["error.type"] == "ValueError"
    assert _requests_by_error(vision_telemetry) == {"ValueError": 1}


def test_job_timeout_stops_the_pipeline(pipe: Any, vision_telemetry: CapturedTelemetry) -> None:
    """A job past the per-job timeout is answered 504 and the pipeline stops at its next step: the worker is free
    for the next request at once."""
    app = service.create_app(pipe, service.Settings(job_timeout_s=5.0, max_steps=500, min_side=16))
    with _client(app) as client:
        started = time.monotonic()
        response = client.post("/edit", files=_upload(_png(128, 128)), data={"instruction": "add a hat", **LONG})
        answered = time.monotonic() - started
        after = client.post("/edit", files=_upload(_png(16, 16)), data={"instruction": "add a hat", "steps": "1"})
        freed = time.monotonic() - started
    assert response.status_code == 504 and response.json()["error"] == "job_timeout", response.text
    assert "within 5 s" in response.json()["detail"]
    assert answered < 30 and after.status_code == 200 and freed < 45
    stopped, finished = vision_telemetry.spans("pipeline")
    assert stopped.attributes["error.type"] == "job_timeout" and "error.type" not in finished.attributes
    assert len(vision_telemetry.spans("denoise_step")) < 100
    assert _requests_by_error(vision_telemetry) == {"job_timeout": 1, None: 1}


def test_full_queue_answers_429(pipe: Any, vision_telemetry: CapturedTelemetry) -> None:
    """With the worker busy and the queue full, the next request is refused with 429 and Retry-After at once."""
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
            statuses.append(client.post("/edit", files=_upload(), data={"instruction": "add a hat"}).status_code)

        first = threading.Thread(target=post)
        first.start()
        assert started.wait(timeout=30)  # the worker holds job 1
        second = threading.Thread(target=post)
        second.start()
        while app.state.worker.jobs.qsize() < 1:  # job 2 waits in the queue
            threading.Event().wait(0.01)
        refused = client.post("/edit", files=_upload(), data={"instruction": "add a hat"})
        release.set()
        first.join(timeout=60)
        second.join(timeout=60)
    assert refused.status_code == 429 and refused.json()["error"] == "queue_full"
    assert int(refused.headers["retry-after"]) >= 1
    assert sorted(statuses) == [200, 200]
    errors = [s.attributes.get("error.type") for s in vision_telemetry.spans("edit")]
    assert errors.count("queue_full") == 1 and errors.count(None) == 2
    assert len(vision_telemetry.spans("pipeline")) == 2 and len(vision_telemetry.spans("queue")) == 2
    assert _requests_by_error(vision_telemetry) == {"queue_full": 1, None: 2}


class Gated:
    """The pipeline behind a gate per call: records each call's batch size, then waits for the test to open it."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.sizes: list[int] = []
        self.entered = [threading.Event() for _ in range(4)]
        self.gates = [threading.Event() for _ in range(4)]

    def __call__(self, prompt: Any, *args: Any, **kwargs: Any) -> Any:
        call = len(self.sizes)
        self.sizes.append(len(prompt) if isinstance(prompt, list) else 1)
        self.entered[call].set()
        self.gates[call].wait(timeout=60)
        return self.pipe(prompt, *args, **kwargs)

    def open_all(self) -> None:
        for gate in self.gates:
            gate.set()


def _wait_until(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_queued_requests_with_the_same_settings_share_one_batch(pipe: Any, vision_telemetry: CapturedTelemetry) -> None:
    """While the worker is busy, two requests with the same steps and image size and one with another size queue up:
    the two run as one pipeline call under one batch span linked to both edit spans (the older job first, the other
    size waits for its own batch); each request's trace holds its queue span and its member span."""
    gated = Gated(pipe)
    app = service.create_app(gated, service.Settings(steps=1, min_side=16))
    responses: dict[str, Any] = {}
    with _client(app) as client:

        def post(name: str, image: bytes) -> None:
            responses[name] = client.post("/edit", files=_upload(image), data={"instruction": name})

        threads = [threading.Thread(target=post, args=("busy", _png()))]
        threads[0].start()
        try:
            assert gated.entered[0].wait(timeout=30)  # the worker holds the first job
            for queued, (name, image) in enumerate(
                (("first", _png()), ("other-size", _png(80, 80)), ("second", _png())), start=1
            ):
                threads.append(threading.Thread(target=post, args=(name, image)))
                threads[-1].start()
                _wait_until(lambda n=queued: app.state.worker.jobs.qsize() == n, f"{name} queued")
        finally:
            gated.open_all()
            for thread in threads:
                thread.join(timeout=120)
    assert {name: r.status_code for name, r in responses.items()} == dict.fromkeys(responses, 200)
    assert len(responses) == 4 and gated.sizes == [1, 2, 1]
    batches, members = _batches(vision_telemetry)
    assert [b.attributes["vision.batch.size"] for b in batches] == [1, 2, 1]
    pair = batches[1]
    assert len(pair.links) == 2
    edit_by_span = {s.context.span_id: s for s in vision_telemetry.spans("edit")}
    linked = [edit_by_span[link.context.span_id] for link in pair.links]
    assert all(e.context.trace_id == link.context.trace_id for e, link in zip(linked, pair.links, strict=True))
    queue_by_trace = {s.context.trace_id: s for s in vision_telemetry.spans("queue")}
    assert queue_by_trace[linked[0].context.trace_id].start_time < queue_by_trace[linked[1].context.trace_id].start_time
    for edit in linked:
        (member,) = [m for m in members if m.context.trace_id == edit.context.trace_id]
        assert member.parent.span_id == edit.context.span_id
        assert [link.context.span_id for link in member.links] == [pair.context.span_id]
        assert member.attributes["vision.batch.size"] == 2
        assert queue_by_trace[edit.context.trace_id].parent.span_id == edit.context.span_id
    pipelines = vision_telemetry.spans("pipeline")
    assert [p.attributes["vision.batch.size"] for p in pipelines] == [1, 2, 1]
    assert pipelines[1].parent.span_id == pair.context.span_id
    assert len(members) == 4 and len(vision_telemetry.spans("queue")) == 4


def test_max_batch_1_runs_each_job_alone(
    pipe: Any, vision_telemetry: CapturedTelemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``PIX2PIX_MAX_BATCH=1``: queued jobs with the same settings still run one pipeline call each, each in a batch
    of one linked to its request."""
    monkeypatch.setenv("PIX2PIX_MAX_BATCH", "1")
    gated = Gated(pipe)
    app = service.create_app(gated, steps=1)
    statuses: list[int] = []
    with _client(app) as client:

        def post() -> None:
            statuses.append(client.post("/edit", files=_upload(), data={"instruction": "add a hat"}).status_code)

        threads = [threading.Thread(target=post)]
        threads[0].start()
        try:
            assert gated.entered[0].wait(timeout=30)
            for queued in (1, 2):
                threads.append(threading.Thread(target=post))
                threads[-1].start()
                _wait_until(lambda n=queued: app.state.worker.jobs.qsize() == n, "queued")
        finally:
            gated.open_all()
            for thread in threads:
                thread.join(timeout=120)
    assert statuses == [200, 200, 200] and gated.sizes == [1, 1, 1]
    batches, members = _batches(vision_telemetry)
    assert [len(b.links) for b in batches] == [1, 1, 1] and len(members) == 3


@contextmanager
def _served(app: Any) -> Iterator[str]:
    """The app under a real uvicorn on a free 127.0.0.1 port, in a thread, stopped on exit."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_oversized_uploads_get_413_over_a_real_connection(vision_telemetry: CapturedTelemetry) -> None:
    """Through uvicorn, a client sending 20 MB against a 1 MB limit reads the 413 (no reset connection), declared
    or chunked."""
    import httpx

    def chunked() -> Iterator[bytes]:
        yield b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for _ in range(320):  # 20 MiB
            yield b"\0" * 65536

    app = service.create_app(object(), service.Settings(max_upload_bytes=1_000_000))
    with _served(app) as url:
        declared = httpx.post(f"{url}/edit", files=_upload(b"\0" * 20_000_000), data={"instruction": "x"}, timeout=60)
        streamed = httpx.post(
            f"{url}/edit", content=chunked(), headers={"content-type": "multipart/form-data; boundary=x"}, timeout=60
        )
    for response in (declared, streamed):
        assert response.status_code == 413 and response.json()["error"] == "upload_too_large"
    assert _requests_by_error(vision_telemetry) == {"upload_too_large": 2}


def test_job_of_a_departed_client_is_stopped(pipe: Any, vision_telemetry: CapturedTelemetry) -> None:
    """A client that gives up: its running job stops at the next step, so the next client is served at once."""
    import httpx

    app = service.create_app(pipe, service.Settings(steps=500, max_steps=500))
    with _served(app) as url:
        with pytest.raises(httpx.ReadTimeout):  # gives up after 2 s and closes its connection
            httpx.post(f"{url}/edit", files=_upload(_png(128, 128)), data={"instruction": "add a hat"}, timeout=2)
        left = time.monotonic()
        response = httpx.post(
            f"{url}/edit", files=_upload(), data={"instruction": "add a hat", "steps": "2"}, timeout=60
        )
        served = time.monotonic() - left
    assert response.status_code == 200 and served < 30
    stopped, finished = vision_telemetry.spans("pipeline")
    assert stopped.attributes["error.type"] == "client_disconnected" and "error.type" not in finished.attributes
    assert _requests_by_error(vision_telemetry) == {"client_disconnected": 1, None: 1}


def _raw_post(url: str, image: bytes, data: dict[str, str]) -> socket.socket:
    """Send a whole /edit request on a plain socket, so the test decides when the client goes away."""
    import httpx

    request = httpx.Request("POST", f"{url}/edit", files=_upload(image), data=data)
    body = request.read()
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST /edit HTTP/1.1\r\nHost: {host}\r\nContent-Type: {request.headers['content-type']}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    connection = socket.create_connection((host, int(port)), timeout=30)
    connection.sendall(head.encode() + body)
    return connection


def test_a_client_leaving_a_batch_is_answered_and_the_batch_runs_on(
    pipe: Any, vision_telemetry: CapturedTelemetry
) -> None:
    """Documented choice: when one client of a running batch leaves, its job is answered (499, counted) and its image
    dropped; the batch is not stopped, so the other request of the batch still gets its edit."""
    import httpx

    gated = Gated(pipe)
    app = service.create_app(gated, service.Settings(steps=2, min_side=16))
    results: dict[str, Any] = {}
    with _served(app) as url:

        def post(name: str) -> None:
            results[name] = httpx.post(f"{url}/edit", files=_upload(), data={"instruction": name}, timeout=120)

        threads = [threading.Thread(target=post, args=("busy",))]
        threads[0].start()
        leaving = None
        try:
            assert gated.entered[0].wait(timeout=30)
            threads.append(threading.Thread(target=post, args=("staying",)))
            threads[-1].start()
            _wait_until(lambda: app.state.worker.jobs.qsize() == 1, "the staying job queued")
            leaving = _raw_post(url, _png(), {"instruction": "leaving"})
            _wait_until(lambda: app.state.worker.jobs.qsize() == 2, "the leaving job queued")
            gated.gates[0].set()
            assert gated.entered[1].wait(timeout=30)  # the batch of two has started
            leaving.close()
            _wait_until(
                lambda: sum(job.stop_reason is not None for job in app.state.worker.current) == 1,
                "the service to notice the client left",
            )
        finally:
            gated.open_all()
            for thread in threads:
                thread.join(timeout=120)
            if leaving is not None:
                leaving.close()
    assert gated.sizes == [1, 2]
    assert results["busy"].status_code == 200 and results["staying"].status_code == 200
    batches, members = _batches(vision_telemetry)
    assert [b.attributes["vision.batch.size"] for b in batches] == [1, 2]
    assert all("error.type" not in span.attributes for span in [*batches, *vision_telemetry.spans("pipeline")])
    errors = sorted(str(s.attributes.get("error.type")) for s in vision_telemetry.spans("edit"))
    assert errors == ["None", "None", "client_disconnected"]
    assert len(members) == 3


def test_a_batch_whose_jobs_all_time_out_stops_at_its_next_step(pipe: Any, vision_telemetry: CapturedTelemetry) -> None:
    """Every job of a batch past its deadline: each request is answered 504 and the batch stops at its next step
    (its span, and each request's member span, failed with ``job_timeout``); the worker is free for the next job."""
    gated = Gated(pipe)
    settings = service.Settings(job_timeout_s=5.0, steps=500, max_steps=500, min_side=16)
    app = service.create_app(gated, settings)
    results: dict[str, Any] = {}
    with _client(app) as client:

        def post(name: str, image: bytes, data: dict[str, str]) -> None:
            results[name] = client.post("/edit", files=_upload(image), data={"instruction": name, **data})

        threads = [threading.Thread(target=post, args=("busy", _png(16, 16), {"steps": "1"}))]
        threads[0].start()
        try:
            assert gated.entered[0].wait(timeout=30)
            for queued, name in enumerate(("long-1", "long-2"), start=1):
                threads.append(threading.Thread(target=post, args=(name, _png(128, 128), {})))
                threads[-1].start()
                _wait_until(lambda n=queued: app.state.worker.jobs.qsize() == n, f"{name} queued")
        finally:
            gated.open_all()
            for thread in threads:
                thread.join(timeout=120)
        after = client.post("/edit", files=_upload(_png(16, 16)), data={"instruction": "next", "steps": "1"})
    assert gated.sizes == [1, 2, 1]
    assert [results[name].status_code for name in ("long-1", "long-2")] == [504, 504] and after.status_code == 200
    batches, members = _batches(vision_telemetry)
    stopped = batches[1]
    assert stopped.attributes["vision.batch.size"] == 2 and stopped.attributes["error.type"] == "job_timeout"
    assert [m.attributes["error.type"] for m in members if m.links[0].context.span_id == stopped.context.span_id] == [
        "job_timeout",
        "job_timeout",
    ]
    assert vision_telemetry.spans("pipeline")[1].attributes["error.type"] == "job_timeout"
    assert len(vision_telemetry.spans("denoise_step")) < 100


def test_queued_job_of_a_departed_client_gives_its_place_back(pipe: Any, vision_telemetry: CapturedTelemetry) -> None:
    """A client that leaves while its job waits: the job never runs and its place in the queue is free at once."""
    import httpx

    settings = service.Settings(queue=1, steps=500, max_steps=500, job_timeout_s=6.0, min_side=16)
    app = service.create_app(pipe, settings)
    small = {"instruction": "add a hat", "steps": "1"}
    with _served(app) as url:
        results: dict[str, Any] = {}

        def post(name: str, image: bytes, data: dict[str, str]) -> None:
            results[name] = httpx.post(f"{url}/edit", files=_upload(image), data=data, timeout=120)

        running = threading.Thread(target=post, args=("running", _png(128, 128), {"instruction": "add a hat"}))
        running.start()
        deadline = time.monotonic() + 30
        while not httpx.get(f"{url}/healthz").json()["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(httpx.ReadTimeout):  # queued behind the running job; gives up after 1 s
            httpx.post(f"{url}/edit", files=_upload(_png(16, 16)), data=small, timeout=1)
        time.sleep(0.5)
        assert httpx.get(f"{url}/healthz").json()["queued"] == 0
        post("next", _png(16, 16), small)  # takes the freed place (a full queue would answer 429)
        running.join(timeout=60)
    assert results["running"].status_code == 504 and results["next"].status_code == 200
    assert [s.attributes.get("error.type") for s in vision_telemetry.spans("pipeline")] == ["job_timeout", None]
    assert _requests_by_error(vision_telemetry) == {"job_timeout": 1, "client_disconnected": 1, None: 1}


GRACE_S = 1.0
EXIT_BOUND_S = GRACE_S + 5  # documented: PIX2PIX_SHUTDOWN_GRACE_S + 5 s


def test_sigterm_while_a_job_runs_exits_within_the_bound(tmp_path: Path) -> None:
    """uvicorn in a subprocess: SIGTERM during a long job answers it 503 and exits 0 within grace + 5 s."""
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "PIX2PIX_SHUTDOWN_GRACE_S": str(GRACE_S),
        "PIX2PIX_MAX_STEPS": "500",
    }
    log = (tmp_path / "service.log").open("w")
    command = [sys.executable, str(SCRIPT), "--port", str(port), "--steps", "500"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    responses: list[httpx.Response] = []
    client = threading.Thread(
        target=lambda: responses.append(
            httpx.post(f"{url}/edit", files=_upload(_png(128, 128)), data={"instruction": "add a hat"}, timeout=120)
        ),
        daemon=True,
    )
    try:
        deadline = time.monotonic() + 180  # importing torch and diffusers on a loaded machine
        while time.monotonic() < deadline and process.poll() is None:
            try:
                httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        client.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not httpx.get(f"{url}/healthz", timeout=5).json()["running"]:
            time.sleep(0.1)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=EXIT_BOUND_S + 10)  # generous margin on a shared machine
        took = time.monotonic() - sent
        client.join(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        log.close()
    output = (tmp_path / "service.log").read_text()
    assert returncode == 0, output
    assert took < EXIT_BOUND_S + 10, output
    (response,) = responses
    assert response.status_code == 503 and response.json()["error"] == "shutting_down"
