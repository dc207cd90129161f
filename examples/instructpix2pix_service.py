"""An HTTP image-editing service: InstructPix2Pix behind FastAPI, a bounded queue and one GPU worker, fully traced.

    python examples/instructpix2pix_service.py --port 8000                   # tiny random pipeline, offline
    python examples/instructpix2pix_service.py --model /models/instruct-pix2pix --device cuda --dtype float16
    curl -F image=@photo.jpg -F instruction="make it snowy" http://127.0.0.1:8000/edit -o edited.png

Each request is one trace: the ``edit`` server span (honouring a caller's W3C ``traceparent``) is the parent of the
``queue`` span (time waiting for the worker) and of an ``edit_batch`` member span. The worker runs in its own thread
and batches dynamically: with a job it takes the queued jobs that can share one pipeline call (same steps, same image
size, up to ``PIX2PIX_MAX_BATCH``) and runs them under ``otel_vision.batch("edit_batch", ...)``, whose span (in the
worker's own trace, parent of the instrumented ``pipeline`` span with its phases and steps) links to every request it
served; each request's member span links back to it.

Every request is checked before it costs GPU time: body size, media type, image format, pixel count and smallest
side, instruction, steps. A running job is stopped at its next denoising step when it passes the per-job timeout,
when its client disconnects, or when the service shuts down (SIGTERM: running jobs get a grace period, queued jobs
are answered at once). In a batch, a job stopped alone is answered at once and its image dropped while the batch runs
on for the others; the batch stops at its next step once every job in it is stopped. Every refusal is a JSON body
``{"error": <error.type>, "detail": <message>}``, a failed span with that ``error.type`` and a count in
``vision.requests``. The limits come from ``PIX2PIX_*`` environment variables (see `Settings` and
docs/diffusers.md).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import math
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from opentelemetry import context, propagate
from opentelemetry.trace import SpanKind

import otel_vision

MODEL_NAME = "StableDiffusionInstructPix2PixPipeline"
FORMATS = ("PNG", "JPEG", "WEBP")
POLL_S = 0.1  # how often a waiting request checks its job's deadline, its client and shutdown

logger = logging.getLogger("pix2pix_service")


# --- settings ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """The service's limits; `from_env` reads each from its ``PIX2PIX_*`` variable (the field name, upper case)."""

    queue: int = 4  # jobs allowed to wait for the worker; one more is answered 429
    steps: int = 20  # denoising steps when the request does not say
    max_steps: int = 100  # the most steps a request may ask for
    max_upload_bytes: int = 10 * 1024 * 1024  # request body limit (413)
    max_pixels: int = 1024 * 1024  # width × height limit (413)
    min_side: int = 64  # smallest width or height worth editing (400)
    job_timeout_s: float = 120.0  # a running job is stopped at its next step after this (504)
    shutdown_grace_s: float = 20.0  # on SIGTERM a running job may finish within this, then it is stopped (503)
    max_batch: int = 4  # the most queued jobs (same steps, same image size) run together in one pipeline call

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and value < 1:
                raise ValueError(f"{_env_name(f.name)} must be at least 1, got {value}")
            if f.type == "float" and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{_env_name(f.name)} must be a positive number of seconds, got {value}")
        if self.steps > self.max_steps:
            raise ValueError(f"PIX2PIX_STEPS ({self.steps}) must not exceed PIX2PIX_MAX_STEPS ({self.max_steps})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The defaults, overridden by every ``PIX2PIX_*`` variable set; a malformed value raises ``ValueError``."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(_env_name(f.name), "").strip()
            if not raw:
                continue
            convert = int if f.type == "int" else float
            try:
                values[f.name] = convert(raw)
            except ValueError:
                kind = "an integer" if convert is int else "a number"
                raise ValueError(f"{_env_name(f.name)} must be {kind}, got {raw!r}") from None
        return cls(**values)


def _env_name(name: str) -> str:
    return f"PIX2PIX_{name.upper()}"


# --- errors: each is an HTTP status, an error.type and a message for the client -------------------------------------
class ServiceError(HTTPException):
    """An HTTP error whose ``error_type`` becomes the span's and the metric's ``error.type``."""

    error_type = "service_error"

    def __init__(self, status_code: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code, detail, headers)


class QueueFullError(ServiceError):
    error_type = "queue_full"

    def __init__(self, capacity: int, retry_after: int) -> None:
        super().__init__(
            429,
            f"the edit queue is full ({capacity} jobs waiting); retry in {retry_after} s",
            {"Retry-After": str(retry_after)},
        )


class InvalidImageError(ServiceError):
    error_type = "invalid_image"

    def __init__(self, reason: str) -> None:
        super().__init__(400, f"'image' must be a PNG, JPEG or WebP file: {reason}")


class ImageTooSmallError(ServiceError):
    error_type = "image_too_small"

    def __init__(self, width: int, height: int, min_side: int) -> None:
        super().__init__(
            400, f"the image is {width}×{height} pixels; both sides must be at least {min_side} pixels to edit it"
        )


class ImageTooLargeError(ServiceError):
    error_type = "image_too_large"

    def __init__(self, size: str, max_pixels: int) -> None:
        super().__init__(
            413, f"the image is {size}; this service accepts at most {max_pixels:,} pixels (width × height)"
        )


class UploadTooLargeError(ServiceError):
    error_type = "upload_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit:,} bytes, the most this service accepts")


class UnsupportedMediaTypeError(ServiceError):
    error_type = "unsupported_media_type"

    def __init__(self) -> None:
        super().__init__(415, "send multipart/form-data with a file field 'image' and a text field 'instruction'")


class InvalidFormError(ServiceError):
    error_type = "invalid_form"

    def __init__(self, reason: str) -> None:
        super().__init__(400, f"the multipart body could not be read: {reason}")


class InvalidFieldError(ServiceError):
    error_type = "invalid_field"

    def __init__(self, message: str) -> None:
        super().__init__(422, message)


class MissingInstructionError(ServiceError):
    error_type = "missing_instruction"

    def __init__(self) -> None:
        super().__init__(400, "form field 'instruction' is required, e.g. instruction='make it snowy'")


class JobTimeoutError(ServiceError):
    error_type = "job_timeout"

    def __init__(self, timeout_s: float) -> None:
        super().__init__(504, f"the edit did not finish within {timeout_s:g} s and was stopped")


class ShuttingDownError(ServiceError):
    error_type = "shutting_down"

    def __init__(self) -> None:
        super().__init__(503, "the service is shutting down; retry the request", {"Connection": "close"})


class ClientDisconnectedError(ServiceError):
    error_type = "client_disconnected"

    def __init__(self) -> None:
        super().__init__(499, "the client disconnected; the edit was cancelled")


# --- the worker -----------------------------------------------------------------------------------------------------
@dataclass
class Job:
    image: Any
    instruction: str
    steps: int
    context: context.Context
    timeout_s: float
    enqueued_at: int = field(default_factory=time.time_ns)
    result: Future[Any] = field(default_factory=Future)
    started_at: float | None = None  # time.monotonic() when the worker took it
    # Why the job must stop: set from the event loop (client gone, deadline) or the worker; read at every step.
    # A factory, so each thread raises its own exception object.
    stop_reason: Callable[[], ServiceError] | None = None

    def cancel(self, reason: Callable[[], ServiceError]) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def timed_out(self) -> bool:
        return self.started_at is not None and time.monotonic() - self.started_at > self.timeout_s

    def batch_key(self) -> tuple[int, tuple[int, int]]:
        """Jobs with equal keys can share one pipeline call: same number of steps, same image size."""
        return self.steps, self.image.size


class JobQueue:
    """A bounded FIFO of jobs in which a cancelled job (its client left) gives its place back at once."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._jobs: deque[Job] = deque()
        self._ready = threading.Condition()

    def put(self, job: Job) -> None:
        """Enqueue, or raise ``queue.Full`` when ``capacity`` live jobs wait."""
        with self._ready:
            self._drop_cancelled()
            if len(self._jobs) >= self.capacity:
                raise queue.Full
            self._jobs.append(job)
            self._ready.notify()

    def get(self, timeout: float) -> Job | None:
        """The oldest job (cancelled ones included: the worker answers them), or ``None`` after ``timeout``."""
        with self._ready:
            if not self._jobs:
                self._ready.wait(timeout)
            return self._jobs.popleft() if self._jobs else None

    def take_matching(self, key: tuple[int, tuple[int, int]], limit: int) -> list[Job]:
        """Remove and return up to ``limit`` live queued jobs whose `Job.batch_key` is ``key``, oldest first."""
        with self._ready:
            taken = [job for job in self._jobs if job.stop_reason is None and job.batch_key() == key][:limit]
            for job in taken:
                self._jobs.remove(job)
            return taken

    def qsize(self) -> int:
        """Jobs waiting whose clients still wait."""
        with self._ready:
            return sum(1 for job in self._jobs if job.stop_reason is None)

    def _drop_cancelled(self) -> None:
        for job in list(self._jobs):
            reason = job.stop_reason
            if reason is not None:
                self._jobs.remove(job)
                job.result.set_exception(reason())


class Worker:
    """The single GPU worker: takes the oldest job and the queued jobs that can share its pipeline call, runs them as
    one batch linked to each submitting request."""

    def __init__(self, pipe: Any, settings: Settings) -> None:
        self.pipe = pipe
        self.settings = settings
        self.jobs = JobQueue(settings.queue)
        self.thread = threading.Thread(target=self._run, name="pix2pix-worker", daemon=True)
        self.current: list[Job] = []  # the running batch
        self.mean_job_s = 1.0  # recent mean run time, for Retry-After
        # Set by a signal handler: plain assignments only (no locks), read by the worker and the waiting requests.
        self.draining_since: float | None = None
        self._stopped = False

    def start(self) -> None:
        self.thread.start()

    def drain(self) -> None:
        """Refuse new and queued jobs; the running one may finish within the shutdown grace period."""
        if self.draining_since is None:
            self.draining_since = time.monotonic()

    def stop(self, timeout: float = 2.0) -> None:
        self.drain()
        self._stopped = True
        self.thread.join(timeout=timeout)
        while (job := self.jobs.get(timeout=0)) is not None:  # still queued (the worker is gone or stuck): answer it
            job.cancel(ShuttingDownError)
            job.result.set_exception(ShuttingDownError())

    def grace_over(self) -> bool:
        since = self.draining_since
        return since is not None and time.monotonic() - since > self.settings.shutdown_grace_s

    def submit(self, job: Job) -> None:
        if self.draining_since is not None:
            raise ShuttingDownError()
        try:
            self.jobs.put(job)
        except queue.Full:
            raise QueueFullError(self.settings.queue, self.retry_after()) from None

    def retry_after(self) -> int:
        """Seconds until a place in the queue is likely free: the queued and running jobs at the recent mean time."""
        estimate = self.mean_job_s * (self.jobs.qsize() + 1)
        return max(1, min(math.ceil(estimate), math.ceil(self.settings.job_timeout_s)))

    def _run(self) -> None:
        while not self._stopped:
            job = self.jobs.get(timeout=POLL_S)
            if job is None:
                continue
            if job.stop_reason is None and self.draining_since is not None:
                job.cancel(ShuttingDownError)
            if job.stop_reason is not None:  # its client left, or we are shutting down: never starts
                job.result.set_exception(job.stop_reason())
                continue
            jobs = [job, *self.jobs.take_matching(job.batch_key(), self.settings.max_batch - 1)]
            self.current = jobs
            try:
                self._execute(jobs)
            finally:
                self.current = []

    def _execute(self, jobs: list[Job]) -> None:
        started = time.monotonic()
        for job in jobs:  # each request's own queue span, under its own context
            job.started_at = started
            token = context.attach(job.context)
            try:
                otel_vision.queue_wait(job.enqueued_at, attributes={"vision.model.name": MODEL_NAME})
            finally:
                context.detach(token)
        try:
            # In the worker's context: the batch span starts a trace of its own, linked to every request it serves;
            # otel_vision puts a member span in each request's trace.
            with otel_vision.batch("edit_batch", requests=[job.context for job in jobs]):
                output = self.pipe(
                    [job.instruction for job in jobs],
                    image=[job.image for job in jobs],
                    num_inference_steps=jobs[0].steps,
                    callback_on_step_end=self._step_end(jobs),
                )
            for job, image in zip(jobs, output.images, strict=True):
                job.result.set_result(image)  # a job answered early (stopped alone) has dropped its image
            self.mean_job_s = 0.7 * self.mean_job_s + 0.3 * (time.monotonic() - started) / len(jobs)
        except BaseException as exc:  # the request handlers re-raise it inside their spans
            for job in jobs:
                reason = job.stop_reason
                job.result.set_exception(reason() if reason is not None else exc)

    def _step_end(self, jobs: list[Job]) -> Callable[..., Any]:
        """The pipeline's ``callback_on_step_end``: raising here stops the denoising loop before the next step.

        A job stopped alone (its client left) is answered by its request at once; the batch goes on for the others
        and drops its image. The batch stops once every job in it is stopped (all past the deadline, the shutdown
        grace over, or every client gone)."""

        def check(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            grace_over = self.grace_over()
            for job in jobs:
                if job.stop_reason is None and job.timed_out():
                    job.cancel(partial(JobTimeoutError, job.timeout_s))
                if job.stop_reason is None and grace_over:
                    job.cancel(ShuttingDownError)
            first = jobs[0].stop_reason
            if first is not None and all(job.stop_reason is not None for job in jobs):
                raise first()
            return callback_kwargs

        return check


# --- the request --------------------------------------------------------------------------------------------------
async def _read_form(request: Request, settings: Settings) -> Any:
    """The multipart form, reading at most ``max_upload_bytes`` of body whatever the client declared."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise UnsupportedMediaTypeError()
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadTooLargeError(limit)
    received = 0

    async def receive() -> Any:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise UploadTooLargeError(limit)
        return message

    try:
        return await Request(request.scope, receive).form(max_files=1, max_fields=4)
    except ServiceError:
        raise
    except HTTPException as exc:  # Starlette's parser errors (too many files, malformed parts) are plain text
        raise InvalidFormError(str(exc.detail).rstrip(".")) from None
    except Exception:
        raise InvalidFormError("malformed multipart data") from None


def _field_text(form: Any, name: str) -> str | None:
    value = form.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidFieldError(f"form field '{name}' must be text, not a file")
    return value


def _steps(form: Any, settings: Settings) -> int:
    raw = _field_text(form, "steps")
    if raw is None or not raw.strip():
        return settings.steps
    try:
        steps = int(raw)
    except ValueError:
        steps = 0
    if not 1 <= steps <= settings.max_steps:
        raise InvalidFieldError(f"form field 'steps' must be a whole number from 1 to {settings.max_steps}")
    return steps


def _decode(data: bytes, settings: Settings, min_side: int) -> Any:
    """Check the header (format, size) before decoding any pixel, then decode; runs in a thread."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise InvalidImageError("the file is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own pixel limit is lower
        try:
            picture = Image.open(io.BytesIO(data), formats=FORMATS)
        except Image.DecompressionBombError:
            raise ImageTooLargeError("far too large", settings.max_pixels) from None
        except UnidentifiedImageError:
            raise InvalidImageError("the data is not in any of these formats") from None
        except Exception:
            raise InvalidImageError("its header is corrupt") from None
    width, height = picture.size
    if width * height > settings.max_pixels:
        raise ImageTooLargeError(f"{width}×{height} = {width * height:,} pixels", settings.max_pixels)
    if min(width, height) < min_side:
        raise ImageTooSmallError(width, height, min_side)
    try:
        picture.load()
        return ImageOps.exif_transpose(picture).convert("RGB")
    except Exception:  # truncated or corrupt pixel data; the decoder's own message may hold object reprs
        raise InvalidImageError(f"the {picture.format} data is truncated or corrupt") from None


def _encode_png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _consume(result: asyncio.Future[Any]) -> None:
    if not result.cancelled():
        result.exception()


def _error_response(exc: ServiceError) -> JSONResponse:
    return JSONResponse(
        {"error": exc.error_type, "detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
    )


def create_app(
    pipe: Any, settings: Settings | None = None, *, capacity: int | None = None, steps: int | None = None
) -> FastAPI:
    """The service around an (already instrumented) pipeline; the worker starts and stops with the app.

    ``settings`` default to `Settings.from_env`; ``capacity`` (queue length) and ``steps`` override them.
    """
    from contextlib import asynccontextmanager

    settings = settings or Settings.from_env()
    overrides = {k: v for k, v in (("queue", capacity), ("steps", steps)) if v is not None}
    if overrides:
        settings = replace(settings, **overrides, max_steps=max(settings.max_steps, overrides.get("steps", 0)))
    # The VAE halves each side per level: anything smaller than its factor has no latent pixel at all.
    min_side = max(settings.min_side, int(getattr(pipe, "vae_scale_factor", 1) or 1))
    worker = Worker(pipe, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="InstructPix2Pix editing service", lifespan=lifespan)
    app.state.worker = worker
    app.state.settings = settings

    async def wait_for(job: Job, request: Request) -> Any:
        """The job's image; stops the job when it times out, its client leaves or the service drains."""
        result = asyncio.wrap_future(job.result)
        try:
            while True:
                done, _ = await asyncio.wait({result}, timeout=POLL_S)
                if done:
                    return result.result()
                if job.timed_out():  # answer at the deadline; the worker stops at its next step
                    job.cancel(lambda: JobTimeoutError(job.timeout_s))
                    raise JobTimeoutError(job.timeout_s)
                if worker.draining_since is not None and (job.started_at is None or worker.grace_over()):
                    job.cancel(ShuttingDownError)  # queued: at once; running: at the end of the grace period
                    raise ShuttingDownError()
                if await request.is_disconnected():
                    job.cancel(ClientDisconnectedError)
                    raise ClientDisconnectedError()
        finally:
            if not result.done():  # cancelled (server shutdown) or answered early: the worker must not go on
                job.cancel(ShuttingDownError if worker.draining_since is not None else ClientDisconnectedError)
                result.add_done_callback(_consume)  # its outcome is no longer anyone's: don't log it as lost

    async def handle(request: Request) -> Response:
        form = await _read_form(request, settings)
        try:
            instruction = _field_text(form, "instruction")
            if not instruction or not instruction.strip():
                raise MissingInstructionError()
            image = form.get("image")
            if image is None:
                raise InvalidImageError("no file uploaded")
            if isinstance(image, str):
                raise InvalidFieldError("form field 'image' must be a file upload, not text")
            job_steps = _steps(form, settings)
            data = await image.read()
        finally:
            await form.close()
        picture = await asyncio.to_thread(_decode, data, settings, min_side)
        job = Job(picture, instruction.strip(), job_steps, context.get_current(), settings.job_timeout_s)
        worker.submit(job)
        edited = await wait_for(job, request)
        return Response(await asyncio.to_thread(_encode_png, edited), media_type="image/png")

    @app.post(
        "/edit",
        responses={200: {"content": {"image/png": {}}}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["image", "instruction"],
                            "properties": {
                                "image": {"type": "string", "format": "binary"},
                                "instruction": {"type": "string"},
                                "steps": {"type": "integer", "minimum": 1, "maximum": settings.max_steps},
                            },
                        }
                    }
                },
            }
        },
    )
    async def edit(request: Request) -> Response:
        token = context.attach(propagate.extract(request.headers))  # the caller's traceparent, if any
        trace_id = ""
        try:
            attributes = {"vision.model.name": MODEL_NAME, "http.request.method": "POST", "url.path": "/edit"}
            with otel_vision.request("edit", attributes=attributes, kind=SpanKind.SERVER) as span:
                trace_id = format(span.get_span_context().trace_id, "032x")
                return await handle(request)
        except ServiceError as exc:
            return _error_response(exc)
        except Exception as exc:  # recorded on the span with its type; the client gets no internals
            logger.exception("edit failed (trace %s)", trace_id)
            detail = f"the edit failed ({type(exc).__name__}); trace id {trace_id}"
            return JSONResponse({"error": "internal_error", "detail": detail}, status_code=500)
        finally:
            context.detach(token)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Readiness: 200 while accepting jobs, 503 once shutting down."""
        body = {
            "status": "draining" if worker.draining_since is not None else "ok",
            "queued": worker.jobs.qsize(),
            "running": bool(worker.current),
            "batch": len(worker.current),
        }
        return JSONResponse(body, status_code=503 if worker.draining_since is not None else 200)

    return app


# --- the process ----------------------------------------------------------------------------------------------------
def serve(app: FastAPI, host: str, port: int) -> None:
    """Run under uvicorn until SIGTERM or SIGINT, then drain: returns within ``shutdown_grace_s`` + 3 s."""
    import uvicorn

    worker: Worker = app.state.worker
    settings: Settings = app.state.settings

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            worker.drain()  # a signal handler: it only assigns a float
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app, host=host, port=port, timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s) + 2
    )
    # uvicorn re-raises the signal it caught once it has shut down; with these handlers in place that ends the run
    # normally, so the process exits 0 and flushes its telemetry at exit instead of being killed by the signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    Server(config).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", help="a local InstructPix2Pix directory (default: a tiny random pipeline)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--queue", type=int, help="jobs allowed to wait before answering 429 (PIX2PIX_QUEUE)")
    parser.add_argument("--steps", type=int, help="default denoising steps (PIX2PIX_STEPS)")
    args = parser.parse_args()
    for option, value in (("--queue", args.queue), ("--steps", args.steps)):
        if value is not None and value < 1:
            parser.error(f"{option} must be at least 1, got {value}")
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        parser.error(str(exc))

    import torch

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    telemetry = otel_vision.configure(service_name="pix2pix-service")
    dtype = getattr(torch, args.dtype)
    if args.model:
        from diffusers import StableDiffusionInstructPix2PixPipeline

        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(args.model, torch_dtype=dtype).to(args.device)
    else:
        from otel_vision.testing import tiny_instruct_pix2pix

        pipe = tiny_instruct_pix2pix(device=args.device, dtype=dtype)
    otel_vision.instrument_diffusers(pipe)
    try:
        app = create_app(pipe, settings, capacity=args.queue, steps=args.steps)
    except ValueError as exc:
        parser.error(str(exc))
    serve(app, args.host, args.port)
    telemetry.shutdown(timeout=2.0)  # part of the exit bound: flush what the last requests recorded
    if app.state.worker.thread.is_alive():
        # Still inside one pipeline step (its request was answered). Interpreter teardown under a running torch op
        # aborts the process, so leave now: everything worth keeping has been answered and flushed.
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":
    main()
