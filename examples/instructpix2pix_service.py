"""An HTTP image-editing service: InstructPix2Pix behind FastAPI, a bounded queue and one GPU worker, fully traced.

    python examples/instructpix2pix_service.py --port 8000                   # tiny random pipeline, offline
    python examples/instructpix2pix_service.py --model /models/instruct-pix2pix --device cuda --dtype float16
    curl -F image=@photo.jpg -F instruction="make it snowy" http://127.0.0.1:8000/edit -o edited.png

Each request is one trace: the ``edit`` server span (honouring a caller's W3C ``traceparent``) is the parent of the
``queue`` span (time waiting for the worker) and of the instrumented ``pipeline`` span with its phases and steps. The
worker runs in its own thread, so the request's context travels with the job. A full queue answers 429, an upload
that is not an image or a missing instruction answers 400; every failure is a span with ``error.type`` and is counted
in ``vision.requests``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from opentelemetry import context, propagate
from opentelemetry.trace import SpanKind

import otel_vision

MODEL_NAME = "StableDiffusionInstructPix2PixPipeline"


class ServiceError(HTTPException):
    """An HTTP error whose ``error_type`` becomes the span's and the metric's ``error.type``."""

    error_type = "service_error"


class QueueFullError(ServiceError):
    error_type = "queue_full"

    def __init__(self, capacity: int) -> None:
        super().__init__(429, f"the edit queue is full ({capacity} jobs waiting); retry later")


class InvalidImageError(ServiceError):
    error_type = "invalid_image"

    def __init__(self, reason: str) -> None:
        super().__init__(400, f"'image' must be an image file (PNG, JPEG, WebP): {reason}")


class MissingInstructionError(ServiceError):
    error_type = "missing_instruction"

    def __init__(self) -> None:
        super().__init__(400, "form field 'instruction' is required, e.g. instruction='make it snowy'")


@dataclass
class Job:
    image: Any
    instruction: str
    steps: int
    context: context.Context
    enqueued_at: int = field(default_factory=time.time_ns)
    result: Future[Any] = field(default_factory=Future)


class Worker:
    """The single GPU worker: takes jobs in order, runs the pipeline under the submitting request's context."""

    def __init__(self, pipe: Any, capacity: int) -> None:
        self.pipe = pipe
        self.capacity = capacity
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=capacity)
        self.thread = threading.Thread(target=self._run, name="pix2pix-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise QueueFullError(self.capacity) from None

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            token = context.attach(job.context)
            try:
                otel_vision.queue_wait(job.enqueued_at, attributes={"vision.model.name": MODEL_NAME})
                output = self.pipe(job.instruction, image=job.image, num_inference_steps=job.steps)
                job.result.set_result(output.images[0])
            except BaseException as exc:  # the request handler re-raises it inside its span
                job.result.set_exception(exc)
            finally:
                context.detach(token)


def create_app(pipe: Any, capacity: int = 4, steps: int = 20) -> FastAPI:
    """The service around an (already instrumented) pipeline; the worker starts and stops with the app."""
    from contextlib import asynccontextmanager

    from PIL import Image

    worker = Worker(pipe, capacity)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="InstructPix2Pix editing service", lifespan=lifespan)
    app.state.worker = worker

    @app.post("/edit")
    async def edit(
        request: Request,
        image: Annotated[UploadFile | None, File()] = None,
        instruction: Annotated[str | None, Form()] = None,
    ) -> Response:
        token = context.attach(propagate.extract(request.headers))  # the caller's traceparent, if any
        try:
            attributes = {"vision.model.name": MODEL_NAME, "http.request.method": "POST", "url.path": "/edit"}
            with otel_vision.request("edit", attributes=attributes, kind=SpanKind.SERVER):
                if not instruction or not instruction.strip():
                    raise MissingInstructionError()
                if image is None:
                    raise InvalidImageError("no file uploaded")
                data = await image.read()
                try:
                    picture = Image.open(io.BytesIO(data))
                    picture.load()
                except Exception as exc:  # any decoder failure (Pillow may also fail importing an optional plugin)
                    raise InvalidImageError(str(exc).split("\n")[0] or type(exc).__name__) from None
                job = Job(picture.convert("RGB"), instruction.strip(), steps, context.get_current())
                worker.submit(job)
                edited = await asyncio.wrap_future(job.result)
                buffer = io.BytesIO()
                edited.save(buffer, format="PNG")
                return Response(buffer.getvalue(), media_type="image/png")
        finally:
            context.detach(token)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"error": exc.error_type, "detail": exc.detail}, status_code=exc.status_code)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", help="a local InstructPix2Pix directory (default: a tiny random pipeline)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--queue", type=int, default=4, help="jobs allowed to wait before answering 429")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    import torch
    import uvicorn

    otel_vision.configure(service_name="pix2pix-service")
    dtype = getattr(torch, args.dtype)
    if args.model:
        from diffusers import StableDiffusionInstructPix2PixPipeline

        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(args.model, torch_dtype=dtype).to(args.device)
    else:
        from otel_vision._tiny_pipelines import tiny_instruct_pix2pix

        pipe = tiny_instruct_pix2pix(device=args.device, dtype=dtype)
    otel_vision.instrument_diffusers(pipe)
    uvicorn.run(create_app(pipe, capacity=args.queue, steps=args.steps), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
