"""`stage()`: one object that is both a decorator and a context manager, for every kind of callable."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Mapping, Sequence
from contextvars import ContextVar
from time import perf_counter
from types import GeneratorType, TracebackType
from typing import Any, ParamSpec, TypeVar, cast

from opentelemetry import context, trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from otel_vision import _context, _runtime
from otel_vision._errors import describe_exception, error_type, report_internal_error
from otel_vision._light import LightSpan, LightSpans, with_span
from otel_vision._metrics import Instruments
from otel_vision.attributes import (
    CUDA_OOM,
    ERROR_TYPE,
    VISION_ABANDONED,
    VISION_BATCH_ROLE,
    VISION_BATCH_SIZE,
    VISION_BATCH_SKIPPED,
    VISION_INSTRUCTION_CATEGORY,
    VISION_ITEMS,
    VISION_MODEL_NAME,
    VISION_OPERATION,
    VISION_STAGE,
)

P = ParamSpec("P")
R = TypeVar("R")


class _Active:
    """One running stage: its span, the runtime it started under, GPU bookkeeping and the host start time."""

    __slots__ = ("cv_token", "gpu", "nvtx", "runtime", "span", "state", "t0", "token")

    def __init__(self, runtime: _runtime.Runtime, span: Span, gpu: object, t0: float, nvtx: int | None) -> None:
        self.runtime = runtime
        self.span = span
        self.gpu = gpu
        self.t0 = t0
        self.nvtx = nvtx
        self.token: object = None
        self.cv_token: object = None
        self.state: Any = None
        """What an instrumentor's stage keeps for this run (a shared stage object holds none of it)."""


def record_failure(span: Span, exc: BaseException) -> str | None:
    """Record ``exc`` on ``span`` (status ERROR, ``error.type``) and return its ``error.type``.

    Only `Exception` counts as a failure: `GeneratorExit`, `KeyboardInterrupt` and task cancellation are control flow.
    Works with any exception object, even one whose ``__str__`` raises; messages are capped (`describe_exception`).
    """
    if not isinstance(exc, Exception):
        return None
    kind = error_type(exc)
    description = describe_exception(exc)
    try:
        span.record_exception(exc)
    except Exception:  # an exception that cannot print itself still gets its event
        span.add_event("exception", {"exception.type": _qualified_name(exc), "exception.message": description})
    span.set_status(Status(StatusCode.ERROR, description))
    span.set_attribute(ERROR_TYPE, kind)
    return kind


def _qualified_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


_detach = _context.detach
"""Restore the previous context; never raises (at the recursion limit even this can fail)."""


_unended: list[Span] = []
"""Spans whose ``end()`` failed (at the recursion limit): the next stage that finishes ends them."""


def _end_unended() -> None:
    while _unended:
        try:
            _unended.pop().end()
        except IndexError:
            return
        except Exception:
            return


_CACHES = frozenset({"_cv", "_metric_attrs", "_light_attributes"})
"""The slots of a `stage` that a copy or a pickle leaves out (`stage.__getstate__`)."""


class stage:
    """Trace a block, function, coroutine or generator as one pipeline stage.

    ```python
    @otel_vision.stage("preprocess")
    def preprocess(frame): ...

    with otel_vision.stage("postprocess", attributes={"vision.batch.size": 8}):
        ...
    ```

    The span is named after the stage and carries ``vision.stage``; each stage records ``vision.stage.duration``.
    Generators are traced over their whole iteration: the span starts at the first ``next()`` and ends on
    exhaustion, on an exception, on ``close()`` or when the generator is garbage-collected (then
    ``vision.abandoned=True``); the consumer never sees the stage's span as current between items. A plain function
    that *returns* a generator (``stream=True`` APIs) is traced the same way. Exceptions are recorded (status ERROR,
    ``error.type``) and re-raised unchanged. When CUDA is in use, the GPU attributes of `otel_vision.gpu` are added.

    Args:
        name: the stage name, also the span name (``preprocess``, ``inference``, … or your own).
        attributes: span attributes set at the start. ``vision.model.name`` also becomes a metric attribute; no
            other attribute reaches metrics, so request ids or file names here are safe.
        kind: the span kind (``SpanKind.SERVER`` for a request handler, for example).
    """

    __slots__ = ("_attributes", "_cv", "_kind", "_light_attributes", "_metric_attrs", "name")

    _links: Sequence[Link] | None = None
    """Links given to the span at its start (`batch` sets them; a plain stage has none)."""

    def __init__(
        self,
        name: str,
        attributes: Mapping[str, AttributeValue] | None = None,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"stage name must be a non-empty string, got {name!r}")
        self.name = name
        self._kind = kind
        self._attributes: dict[str, AttributeValue] = {VISION_STAGE: name, **(attributes or {})}
        self._cv: ContextVar[_Active] | None = None
        self._metric_attrs: tuple[Instruments, dict[str, AttributeValue]] | None = None
        self._light_attributes: tuple[LightSpans, dict[str, AttributeValue] | None] | None = None
        """The attributes cleaned for `_runtime.Runtime.light`'s spans (``None`` in the pair: they need the SDK)."""

    # --- the two halves every form shares ---------------------------------------------------------------------
    def _start(self, parent: context.Context | None) -> _Active:
        runtime = _runtime._current
        light = runtime.light
        span: Span | None = None
        if light is not None and self._links is None:
            # Our pipeline sets the span up itself when nothing can tell (otel_vision._light): same span, less work.
            cleaned = self._light_attributes
            if cleaned is None or cleaned[0] is not light:
                cleaned = self._light_attributes = (light, light.clean(self._attributes))
            if cleaned[1] is not None:
                span = light.start(self.name, parent, self._kind, cleaned[1].copy())
        if span is None:
            span = runtime.tracer.start_span(
                self.name, context=parent, kind=self._kind, attributes=self._attributes, links=self._links
            )
        gpu = None
        if runtime.gpu is not None and (type(span) is LightSpan or span.is_recording()):  # a new LightSpan records
            gpu = runtime.gpu.start()
        nvtx = runtime.nvtx.start(self.name) if runtime.nvtx is not None else None
        return _Active(runtime, span, gpu, perf_counter(), nvtx)

    def _finish(
        self, active: _Active, exc: BaseException | None, items: int | None = None, abandoned: bool = False
    ) -> None:
        """End the stage's span and record its metrics; never raises, whatever the user's exception is."""
        span = active.span
        runtime = active.runtime
        try:
            if _unended:
                _end_unended()
            end = perf_counter()
            failure = record_failure(span, exc) if exc is not None else None
            if failure == CUDA_OOM and runtime.gpu is not None:
                runtime.gpu.record_allocator_state(span)
            if items is not None:
                span.set_attribute(VISION_ITEMS, items)
                if abandoned:
                    span.set_attribute(VISION_ABANDONED, True)
            if active.gpu is not None and runtime.gpu is not None:
                runtime.gpu.finish(span, active.gpu)
            recording = span._end_time is None if type(span) is LightSpan else span.is_recording()  # no call
            if not (runtime.span_metrics and recording):
                # Recorded spans feed the metrics from the export path (otel_vision._span_metrics); the others
                # (not sampled, or no pipeline of ours) are counted here, so every request is.
                self._record(runtime.instruments, end - active.t0, failure)
        except Exception:  # never let our bookkeeping replace the user's result or exception
            try:
                report_internal_error("stage bookkeeping")
            except Exception:
                pass
        finally:
            try:
                if active.nvtx is not None and runtime.nvtx is not None:
                    runtime.nvtx.end(active.nvtx)
                span.end()
            except Exception:
                _unended.append(span)

    def _record(self, instruments: Instruments, duration: float, failure: str | None) -> None:
        attrs = self._base_metric_attrs(instruments)
        if failure is not None:
            attrs = {**attrs, ERROR_TYPE: instruments.guard(ERROR_TYPE, failure)}
        instruments.stage_duration.record(duration, attrs)

    def _metric_keys(self) -> dict[str, AttributeValue | None]:
        return {VISION_STAGE: self.name, VISION_MODEL_NAME: self._attributes.get(VISION_MODEL_NAME)}

    def __getstate__(self) -> Any:
        """A copied or pickled stage is the same stage without what it cached for the pipeline running now (its
        context variable, metric attributes, attributes cleaned for light spans): those hold locks and instruments,
        and are made again on first use."""
        slots: dict[str, Any] = {}
        for cls in type(self).__mro__:
            for name in cls.__dict__.get("__slots__", ()):
                if name not in slots and hasattr(self, name):
                    slots[name] = None if name in _CACHES else getattr(self, name)
        return (None, slots)

    def _base_metric_attrs(self, instruments: Instruments) -> dict[str, AttributeValue]:
        cached = self._metric_attrs
        if cached is not None and cached[0] is instruments:
            return cached[1]
        attrs = instruments.metric_attributes(self._metric_keys())
        self._metric_attrs = (instruments, attrs)
        return attrs

    def run(self, parent: context.Context | None, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Call ``fn`` as this stage under an explicit parent context (used by the instrumentors)."""
        active = self._start(parent)
        token = _context.attach(with_span(active.span, parent))
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._finish(active, exc)
            raise
        finally:
            _detach(token)
        self._finish(active, None)
        return result

    # --- context manager --------------------------------------------------------------------------------------
    def __enter__(self) -> Span:
        active = self._start(None)
        active.token = _context.attach(with_span(active.span))
        if self._cv is None:
            # A ContextVar (not an attribute) holds the running stage, so one stage object can be entered from
            # several threads or tasks at once, and nested in itself.
            self._cv = ContextVar(f"otel_vision.stage.{self.name}")
        active.cv_token = self._cv.set(active)
        return active.span

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._cv is not None  # __enter__ ran
        active = self._cv.get()
        self._cv.reset(active.cv_token)  # type: ignore[arg-type]  # the Token set() returned in __enter__
        try:
            self._finish(active, exc)
        finally:
            _detach(active.token)

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # --- decorator --------------------------------------------------------------------------------------------
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        if not callable(fn):
            raise TypeError(f"stage({self.name!r}) decorates a callable, got {fn!r}")
        if inspect.isasyncgenfunction(fn):
            wrapper: Callable[..., Any] = self._wrap_async_generator_function(fn)
        elif inspect.iscoroutinefunction(fn):
            wrapper = self._wrap_coroutine_function(fn)
        elif inspect.isgeneratorfunction(fn):
            wrapper = self._wrap_generator_function(fn)
        else:
            wrapper = self._wrap_function(fn)
        return cast(Callable[P, R], functools.wraps(fn)(wrapper))

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn`` as this stage under the current context; a returned generator is traced over its iteration."""
        active = self._start(None)
        token = _context.attach(with_span(active.span))
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._finish(active, exc)
            raise
        finally:
            _detach(token)
        if type(result) is GeneratorType:
            # A function returning a generator (stream=True APIs): the stage goes on over the iteration.
            return self._iterate(result, _context.get_current(), active)
        self._finish(active, None)
        return result

    def _wrap_function(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def traced(*args: Any, **kwargs: Any) -> Any:
            return self.call(fn, *args, **kwargs)

        return traced

    def _wrap_coroutine_function(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def traced(*args: Any, **kwargs: Any) -> Any:
            active = self._start(None)
            token = _context.attach(with_span(active.span))
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                self._finish(active, exc)
                raise
            finally:
                _detach(token)
            self._finish(active, None)
            return result

        return traced

    def _wrap_generator_function(self, fn: Callable[..., Generator[Any, Any, Any]]) -> Callable[..., Any]:
        def traced(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            # Creating the generator runs none of its code; the stage starts at the first next().
            return self._iterate(fn(*args, **kwargs), _context.get_current(), None)

        return traced

    def _wrap_async_generator_function(self, fn: Callable[..., AsyncGenerator[Any, Any]]) -> Callable[..., Any]:
        def traced(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
            return self._aiterate(fn(*args, **kwargs), _context.get_current())

        return traced

    def _iterate(
        self, gen: Generator[Any, Any, Any], parent: context.Context, active: _Active | None
    ) -> Generator[Any, Any, Any]:
        if active is None:
            active = self._start(parent)
        ctx = with_span(active.span, parent)
        items = 0
        to_send: Any = None
        to_throw: BaseException | None = None
        while True:
            token = _context.attach(ctx)
            try:
                item = gen.send(to_send) if to_throw is None else gen.throw(to_throw)
            except StopIteration as stop:
                self._finish(active, None, items)
                return stop.value
            except BaseException as exc:
                self._finish(active, exc, items)
                raise
            finally:
                _detach(token)
                to_throw = None
            items += 1
            try:
                to_send = yield item
            except GeneratorExit:
                # close() by the consumer or garbage collection: close the inner generator under our span.
                token = _context.attach(ctx)
                try:
                    gen.close()
                finally:
                    self._finish(active, None, items, abandoned=True)
                    _detach(token)
                raise
            except BaseException as exc:  # gen.throw() by the consumer: forward it
                to_throw = exc
                to_send = None

    async def _aiterate(self, agen: AsyncGenerator[Any, Any], parent: context.Context) -> AsyncGenerator[Any, Any]:
        active = self._start(parent)
        ctx = with_span(active.span, parent)
        items = 0
        to_send: Any = None
        to_throw: BaseException | None = None
        while True:
            token = _context.attach(ctx)
            try:
                item = await (agen.asend(to_send) if to_throw is None else agen.athrow(to_throw))
            except StopAsyncIteration:
                self._finish(active, None, items)
                return
            except BaseException as exc:
                self._finish(active, exc, items)
                raise
            finally:
                _detach(token)
                to_throw = None
            items += 1
            try:
                to_send = yield item
            except GeneratorExit:
                token = _context.attach(ctx)
                try:
                    await agen.aclose()
                finally:
                    self._finish(active, None, items, abandoned=True)
                    _detach(token)
                raise
            except BaseException as exc:
                to_throw = exc
                to_send = None


class request(stage):
    """Trace one whole request (the root of a waterfall) and record the request metrics.

    ```python
    with otel_vision.request("classify", attributes={"vision.model.name": "resnet18"}):
        ...
    ```

    The span is named after the operation and carries ``vision.operation``. Instead of ``vision.stage.duration`` it
    records ``vision.request.duration`` and ``vision.requests``, by ``vision.operation``, ``vision.model.name``,
    ``vision.instruction.category`` (when given) and ``error.type`` (when failed): success rate = requests without
    ``error.type`` / all requests. Every form of `stage` (decorator, context manager, generators) works.

    Args:
        operation: ``predict``, ``track``, ``pipeline``, … or your own.
        attributes: span attributes; ``vision.model.name`` and ``vision.instruction.category`` also reach metrics.
        kind: the span kind (``SpanKind.SERVER`` when this is the handler of an incoming request).
    """

    __slots__ = ()

    def __init__(
        self,
        operation: str,
        attributes: Mapping[str, AttributeValue] | None = None,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> None:
        super().__init__(operation, attributes, kind=kind)
        del self._attributes[VISION_STAGE]
        self._attributes[VISION_OPERATION] = operation

    def _metric_keys(self) -> dict[str, AttributeValue | None]:
        return {
            VISION_OPERATION: self.name,
            VISION_MODEL_NAME: self._attributes.get(VISION_MODEL_NAME),
            VISION_INSTRUCTION_CATEGORY: self._attributes.get(VISION_INSTRUCTION_CATEGORY),
        }

    def _record(self, instruments: Instruments, duration: float, failure: str | None) -> None:
        attrs = self._base_metric_attrs(instruments)
        if failure is not None:
            attrs = {**attrs, ERROR_TYPE: instruments.guard(ERROR_TYPE, failure)}
        instruments.request_duration.record(duration, attrs)
        instruments.requests.add(1, attrs)


class batch(stage):
    """Trace one batch of work done for several requests at once (dynamic batching), linked to each of them.

    ```python
    jobs = take_batch(queue)
    with otel_vision.batch("inference", requests=[job.context for job in jobs]):
        outputs = model(torch.stack([job.input for job in jobs]))
    ```

    Exports one span (``vision.batch.role=batch``, ``vision.batch.size`` = N, GPU attributes as any stage) with a
    link to the span of each request, and, in each request's own trace, a span of the same name and time window,
    child of that request's span, linking back to the batch span and carrying ``vision.batch.size`` and
    ``gpu.time.share`` (the batch's ``gpu.time`` / N, an estimate). Those member spans are made in the export path;
    the calling thread starts and ends only the batch span. The batch span's parent is the current context (the
    worker's), so each request's waterfall is complete on its own and the batch is one click away from any of them.

    Args:
        name: the stage name of the batch and member spans.
        requests: the requests served: `Context` objects (e.g. ``opentelemetry.context.get_current()`` captured when
            each job was enqueued), `SpanContext` objects or spans. Entries without a valid span are skipped and
            counted (``vision.batch.skipped`` on the span, ``vision.batch.skipped_requests``), never raised. When
            decorating, a function of the decorated function's arguments that returns them.
        attributes: span attributes, as for `stage`.
        kind: the span kind.
    """

    __slots__ = ("_links", "_requests", "_requests_of", "_skipped", "_user_attributes")

    def __init__(
        self,
        name: str,
        requests: Iterable[object] | Callable[..., Iterable[object]] = (),
        attributes: Mapping[str, AttributeValue] | None = None,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> None:
        super().__init__(name, attributes, kind=kind)
        self._user_attributes = dict(attributes or {})
        self._requests_of = requests if callable(requests) else None
        span_contexts, skipped = ([], 0) if callable(requests) else _request_span_contexts(requests)
        self._requests = span_contexts
        self._links = None
        self._skipped = skipped
        self._attributes[VISION_BATCH_ROLE] = "batch"
        self._attributes[VISION_BATCH_SIZE] = len(span_contexts)
        if skipped:
            self._attributes[VISION_BATCH_SKIPPED] = skipped

    def _start(self, parent: context.Context | None) -> _Active:
        runtime = _runtime._current
        if self._skipped:
            try:
                runtime.instruments.batch_skipped.add(self._skipped)
            except Exception:
                report_internal_error("batch skipped-requests counter")
        if not runtime.span_metrics:
            # Not our pipeline (the global API): links at the start, as any OpenTelemetry span.
            self._links = [Link(c) for c in self._requests]
            return super()._start(parent)
        active = super()._start(parent)
        if self._requests and active.span.is_recording():
            # Our export path adds the links (and makes the member spans) off this thread.
            _runtime.expect_links(active.span.get_span_context().span_id, self._requests)
        return active

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        extract = self._requests_of
        if extract is None:
            return super().__call__(fn)
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(f"batch({self.name!r}, requests=<function>) decorates functions and coroutines, not {fn!r}")
        name, attributes, kind = self.name, self._user_attributes, self._kind

        def per_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> batch:
            try:
                requests: Iterable[object] = extract(*args, **kwargs)
            except Exception:
                report_internal_error(f"batch({name!r}) requests function")
                requests = (None,)  # counted as one skipped entry
            return batch(name, requests, attributes, kind=kind)

        if inspect.iscoroutinefunction(fn):

            async def traced_async(*args: Any, **kwargs: Any) -> Any:
                async with per_call(args, kwargs):
                    return await fn(*args, **kwargs)

            return cast(Callable[P, R], functools.wraps(fn)(traced_async))

        def traced(*args: Any, **kwargs: Any) -> Any:
            with per_call(args, kwargs):
                return fn(*args, **kwargs)

        return cast(Callable[P, R], functools.wraps(fn)(traced))


def _request_span_contexts(requests: Iterable[object]) -> tuple[list[SpanContext], int]:
    """The valid span context of each request, and how many entries had none (never raises)."""
    found: list[SpanContext] = []
    skipped = 0
    try:
        entries = list(requests) if requests is not None else []
    except Exception:
        report_internal_error("batch requests")
        return found, 1
    for entry in entries:
        try:
            if isinstance(entry, dict):  # a Context (the common case first: isinstance on the Span ABC is slow)
                span_context = trace.get_current_span(cast(context.Context, entry)).get_span_context()
            elif isinstance(entry, SpanContext):
                span_context = entry
            elif isinstance(entry, Span):
                span_context = entry.get_span_context()
            else:
                span_context = None
        except Exception:
            span_context = None
        if span_context is None or not span_context.is_valid:
            skipped += 1
        else:
            found.append(span_context)
    return found, skipped


def queue_wait(enqueued_at_ns: int, attributes: Mapping[str, AttributeValue] | None = None) -> None:
    """Record how long a job waited in a queue: a ``queue`` span from ``enqueued_at_ns`` until now.

    ```python
    job = Job(payload, context=opentelemetry.context.get_current(), enqueued_at=time.time_ns())
    ...                                                      # in the worker, under job.context:
    otel_vision.queue_wait(job.enqueued_at, attributes={"vision.model.name": "pix2pix"})
    ```

    Call it in the worker when it takes the job, with the submitter's context attached, so the span sits under the
    request that enqueued the job. Also records ``vision.queue.duration`` (by ``vision.model.name``).

    Args:
        enqueued_at_ns: when the job was enqueued, from ``time.time_ns()``.
        attributes: span attributes; ``vision.model.name`` also reaches the metric.
    """
    runtime = _runtime._current
    now = time.time_ns()
    start = min(enqueued_at_ns, now)
    span = runtime.tracer.start_span(
        "queue", attributes={VISION_STAGE: "queue", **(attributes or {})}, start_time=start
    )
    from_span = runtime.span_metrics and span.is_recording()
    span.end(end_time=now)
    if from_span:
        return  # recorded from the finished span (otel_vision._span_metrics)
    try:
        model = (attributes or {}).get(VISION_MODEL_NAME)
        attrs = runtime.instruments.metric_attributes({VISION_MODEL_NAME: model})
        runtime.instruments.queue_duration.record((now - start) / 1e9, attrs)
    except Exception:
        report_internal_error("queue wait metric")
