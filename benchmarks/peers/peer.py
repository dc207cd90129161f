"""One peer's hot-path cost against a bare OpenTelemetry SDK span in the same process.

Run by `benchmarks/peers/run.py` inside the peer's own venv: it imports only the standard library, the peer, and
`opentelemetry-sdk` with the OTLP gRPC exporter (never otel_vision). The method is `benchmarks/bench_stage.py`'s:
the same four attributes, a live rotel on 127.0.0.1 (started by the driver), the variants alternated in a shuffled
order every round, medians over rounds of wall time per call on this thread and of process CPU time per call (all
threads) taken after a flush, so the export threads' work on a variant's spans lands in its own sample.

The reference is a bare SDK span, `tracer.start_as_current_span(name, attributes=...)`, on a plain `TracerProvider`
with a `BatchSpanProcessor` and an OTLP gRPC exporter to the same rotel: what the OpenTelemetry SDK costs with no
library on top. Each peer is set up with its own init and its own default exporters for every signal it exports,
pointed at the rotel; the figures include whatever that setup adds.

    python peer.py --peer logfire --grpc-port 4317 --http-port 4318 [--rounds 40] [--calls 2000]

The last line of output is `PEER-RESULT <json>`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

SPAN_ATTRIBUTES: dict[str, Any] = {
    "vision.stage": "inference",
    "vision.model.name": "yolov8n",
    "vision.batch.size": 8,
    "vision.device": "cpu",
}
BARE = "bare SDK span (start_as_current_span, same attributes, plain provider)"


def work() -> int:
    return 1


@dataclass
class Variant:
    run: Callable[[int], None]  # makes n calls; timed (wall on this thread)
    before: Callable[[], None] = lambda: None  # not timed (e.g. start a profiler)
    after: Callable[[], None] = lambda: None  # counted in CPU, not in wall (e.g. stop a profiler)


@dataclass
class Setup:
    variants: dict[str, Variant]
    flush: list[Callable[[], object]] = field(default_factory=list)
    export: str = ""
    versions: dict[str, str] = field(default_factory=dict)


class ErrorCount(logging.Handler):
    """Counts warnings and errors logged by the SDK, its exporters and the peer: an export that fails shows here."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.by_logger: dict[str, int] = {}
        self.first = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        self.by_logger[record.name] = self.by_logger.get(record.name, 0) + 1
        if not self.first:
            self.first = f"{record.name}: {record.getMessage()}"[:300]


DELIVERY: dict[str, list[int]] = {"reference": [0, 0], "peer": [0, 0]}  # [spans accepted, spans not accepted]
REFERENCE_EXPORTERS: set[int] = set()


def count_deliveries() -> None:
    """Count the spans each OTLP span exporter gets accepted by rotel (a positive check that the peer exports)."""
    import importlib

    from opentelemetry.sdk.trace.export import SpanExportResult

    for module in (
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    ):
        try:
            cls = importlib.import_module(module).OTLPSpanExporter
        except ImportError:
            continue
        original = cls.export

        def export(self: Any, spans: Any, _original: Any = original) -> Any:
            result = _original(self, spans)
            counts = DELIVERY["reference" if id(self) in REFERENCE_EXPORTERS else "peer"]
            counts[0 if result == SpanExportResult.SUCCESS else 1] += len(spans)
            return result

        cls.export = export


def context_manager_loop(factory: Callable[[], Any]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            with factory():
                work()

    return run


def call_loop(fn: Callable[[], Any]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            fn()

    return run


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def reference(grpc_port: int) -> tuple[dict[str, Variant], Callable[[], object]]:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "bench-reference"}))
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{grpc_port}", insecure=True)
    REFERENCE_EXPORTERS.add(id(exporter))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("bench")
    variants = {
        BARE: Variant(
            context_manager_loop(lambda: tracer.start_as_current_span("inference", attributes=SPAN_ATTRIBUTES))
        )
    }
    return variants, lambda: provider.force_flush(30000)


def global_provider_flush() -> object:
    from opentelemetry import trace

    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    return flush(30000) if flush is not None else None


def setup_sdk(grpc_port: int, http_port: int) -> Setup:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # A second plain provider: the decorator form of the same bare span.
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"http://127.0.0.1:{grpc_port}")))
    decorated = provider.get_tracer("bench").start_as_current_span("inference", attributes=SPAN_ATTRIBUTES)(work)
    return Setup(
        {"bare SDK span as decorator (`@tracer.start_as_current_span(...)`)": Variant(call_loop(decorated))},
        flush=[lambda: provider.force_flush(30000)],
        export="OTLP gRPC (traces)",
    )


def setup_openlit(grpc_port: int, http_port: int) -> Setup:
    # openlit picks its exporters' protocol from this variable at import time (HTTP otherwise).
    os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
    import openlit

    # No pricing URL: openlit would fetch its pricing table from the internet at init.
    pricing = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    pricing.write("{}")
    pricing.close()
    openlit.init(
        otlp_endpoint=f"http://127.0.0.1:{grpc_port}",
        application_name="bench",
        environment="bench",
        pricing_json=pricing.name,
    )
    os.unlink(pricing.name)
    decorated = openlit.trace(work)

    def start_trace_with_attributes() -> Any:
        class Traced:
            def __enter__(self) -> None:
                self.cm = openlit.start_trace("inference")
                self.cm.__enter__().set_metadata(SPAN_ATTRIBUTES)

            def __exit__(self, *exc: object) -> None:
                self.cm.__exit__(*exc)

        return Traced()

    return Setup(
        {
            "`@openlit.trace` (its own attributes: args, kwargs, output, service, environment)": Variant(
                call_loop(decorated)
            ),
            "`openlit.start_trace()` + `set_metadata(same attributes)`": Variant(
                context_manager_loop(start_trace_with_attributes)
            ),
        },
        flush=[global_provider_flush],
        export="OTLP gRPC (traces, metrics, events)",
        versions={"openlit": version("openlit")},
    )


def setup_traceloop(grpc_port: int, http_port: int) -> Setup:
    os.environ["TRACELOOP_TELEMETRY"] = "false"
    os.environ["OTEL_EXPORTER_OTLP_INSECURE"] = "true"
    from traceloop.sdk import Traceloop
    from traceloop.sdk.decorators import task, workflow

    # An endpoint with no scheme is OTLP gRPC for traces, metrics and logs (traceloop's own rule).
    Traceloop.init(app_name="bench", api_endpoint=f"127.0.0.1:{grpc_port}", telemetry_enabled=False)
    return Setup(
        {
            '`@task(name="inference")` (records input and output by default)': Variant(
                call_loop(task(name="inference")(work))
            ),
            '`@workflow(name="inference")`': Variant(call_loop(workflow(name="inference")(work))),
        },
        flush=[global_provider_flush],
        export="OTLP gRPC (traces, metrics, logs)",
        versions={"traceloop-sdk": version("traceloop-sdk")},
    )


def setup_logfire(grpc_port: int, http_port: int) -> Setup:
    # logfire's own route to any OTLP backend: the standard variable, OTLP/HTTP only.
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{http_port}"
    import logfire

    logfire.configure(send_to_logfire=False, console=False, service_name="bench")
    decorated = logfire.instrument("inference")(work)
    return Setup(
        {
            '`logfire.span("inference", **same attributes)`': Variant(
                context_manager_loop(lambda: logfire.span("inference", **SPAN_ATTRIBUTES))
            ),
            '`@logfire.instrument("inference")` (records arguments by default)': Variant(call_loop(decorated)),
        },
        flush=[logfire.force_flush],
        export="OTLP HTTP (traces, metrics, logs)",
        versions={"logfire": version("logfire")},
    )


def setup_prometheus(grpc_port: int, http_port: int) -> Setup:
    from prometheus_client import CollectorRegistry, Histogram

    histogram = Histogram(
        "vision_stage_duration_seconds",
        "Stage duration",
        ["vision_stage", "vision_model_name", "vision_batch_size", "vision_device"],
        registry=CollectorRegistry(),
    )
    values = [str(v) for v in SPAN_ATTRIBUTES.values()]
    child = histogram.labels(*values)
    return Setup(
        {
            "`Histogram.labels(same 4 values).time()` (metrics only, no span)": Variant(
                context_manager_loop(lambda: histogram.labels(*values).time())
            ),
            "`.time()` on a child bound once (metrics only, no span)": Variant(context_manager_loop(child.time)),
        },
        export="none (pull; scraping not measured)",
        versions={"prometheus-client": version("prometheus-client")},
    )


def setup_torch(grpc_port: int, http_port: int) -> Setup:
    from torch.profiler import ProfilerActivity, profile, record_function

    active: list[Any] = []

    def start() -> None:
        active.append(profile(activities=[ProfilerActivity.CPU]))
        active[-1].__enter__()

    def stop() -> None:
        active.pop().__exit__(None, None, None)

    return Setup(
        {
            '`record_function("inference")`, no profiler (no span, nothing recorded)': Variant(
                context_manager_loop(lambda: record_function("inference"))
            ),
            '`record_function("inference")` under an active CPU profiler (CPU includes the profiler\'s stop)': (
                Variant(context_manager_loop(lambda: record_function("inference")), before=start, after=stop)
            ),
        },
        export="none (in-process profiler)",
        versions={"torch": version("torch")},
    )


PEERS: dict[str, Callable[[int, int], Setup]] = {
    "sdk": setup_sdk,
    "openlit": setup_openlit,
    "traceloop": setup_traceloop,
    "logfire": setup_logfire,
    "prometheus": setup_prometheus,
    "torch": setup_torch,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer", required=True, choices=sorted(PEERS))
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()

    errors = ErrorCount()
    logging.getLogger().addHandler(errors)
    count_deliveries()
    variants, flush_reference = reference(args.grpc_port)
    setup = PEERS[args.peer](args.grpc_port, args.http_port)
    variants.update(setup.variants)
    flushes = [flush_reference, *setup.flush]

    def flush() -> None:
        for f in flushes:
            f()

    for variant in variants.values():  # warm-up
        variant.before()
        variant.run(args.calls)
        variant.after()
    flush()
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for _ in range(args.rounds):
        random.shuffle(order)
        for name in order:
            variant = variants[name]
            variant.before()
            c0, w0 = time.process_time(), time.perf_counter()
            variant.run(args.calls)
            w1 = time.perf_counter()
            variant.after()
            flush()  # the export threads finish this variant's spans, so their CPU lands in its sample
            cpu[name].append((time.process_time() - c0) / args.calls * 1e6)
            wall[name].append((w1 - w0) / args.calls * 1e6)

    result = {
        "peer": args.peer,
        "python": platform.python_version(),
        "versions": {"opentelemetry-sdk": version("opentelemetry-sdk"), **setup.versions},
        "rounds": args.rounds,
        "calls": args.calls,
        "logged_warnings": errors.count,
        "first_warning": errors.first,
        "warnings_by_logger": errors.by_logger,
        "spans_delivered": DELIVERY,
        "rows": [
            {
                "variant": name,
                "export": "OTLP gRPC (traces)" if name == BARE else setup.export,
                "wall_us": statistics.median(wall[name]),
                "cpu_us": statistics.median(cpu[name]),
            }
            for name in variants
        ],
    }
    sys.stdout.flush()
    print("PEER-RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
