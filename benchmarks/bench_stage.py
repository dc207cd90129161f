"""Hot-path cost of `stage()` in the default configuration, against a bare SDK span on the same provider.

Default configuration means what `otel_vision.configure()` builds with no argument but the endpoint: OTLP over gRPC
for traces, metrics and logs to a live collector (rotel on 127.0.0.1, started here), GPU telemetry on (on a machine
without a GPU it finds none, as in production on CPU). The bare span is `tracer.start_as_current_span` with the same
attributes on the same TracerProvider, so both pay the same export path. Variants alternate in a shuffled order every
round; figures are medians over rounds of wall time per call on this thread, and of process CPU time per call
(all threads, so the export threads' work on our spans counts). A reference row, in the same rounds, is a bare span
on a plain SDK provider of its own (`BatchSpanProcessor` and the SDK's OTLP exporter, to the same collector): what
an application without otel_vision pays. The ratios stay against the same provider, as the budget is set.

    python benchmarks/bench_stage.py [--rounds 40] [--calls 2000] [--protocol grpc|http/protobuf]
    python benchmarks/bench_stage.py --variant no-metric-reader   # labelled variant: OTEL_METRICS_EXPORTER=none
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ATTRIBUTES = {"vision.model.name": "yolov8n", "vision.batch.size": 8, "vision.device": "cpu"}
PLAIN = "reference: bare SDK span on a plain SDK provider (BatchSpanProcessor, the SDK's OTLP exporter, same collector)"


def work() -> int:
    return 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_rotel() -> tuple[subprocess.Popen[bytes], int, int]:
    """A live OTLP receiver on loopback that drops what it gets (blackhole exporter)."""
    import rotel

    grpc, http = _free_port(), _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="otel-vision-bench-"))
    process = subprocess.Popen(
        [
            str(Path(rotel.__file__).parent / "rotel-agent"), "start", "--exporter", "blackhole",
            "--otlp-grpc-endpoint", f"127.0.0.1:{grpc}", "--otlp-http-endpoint", f"127.0.0.1:{http}",
            "--pid-file", str(workdir / "rotel.pid"), "--log-file", str(workdir / "rotel.log"),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    for port in (grpc, http):
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("rotel did not start")
            time.sleep(0.05)
    return process, grpc, http


def _sdk_exporter(protocol: str) -> Any:
    """The SDK's own OTLP span exporter, configured from the same environment variables."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    return OTLPSpanExporter()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--protocol", default="grpc", choices=["grpc", "http/protobuf"])
    parser.add_argument(
        "--variant", default="default", choices=["default", "no-metric-reader", "tail-sampling-keep-all"]
    )
    args = parser.parse_args()

    collector, grpc, http = start_rotel()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{grpc if args.protocol == 'grpc' else http}"
    os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] = args.protocol
    if args.variant == "no-metric-reader":
        os.environ["OTEL_METRICS_EXPORTER"] = "none"
    if args.variant == "tail-sampling-keep-all":
        # Every trace kept: the sampler's own cost, with the same spans exported as in the default run.
        os.environ["OTEL_VISION_TAIL_SAMPLING_RATIO"] = "1.0"
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    import otel_vision

    try:
        handle = otel_vision.configure(service_name="bench")
        assert handle.tracer_provider is not None
        tracer = handle.tracer_provider.get_tracer("bench")
        stage_cm = otel_vision.stage("inference", attributes=ATTRIBUTES)
        decorated = otel_vision.stage("inference", attributes=ATTRIBUTES)(work)
        req = otel_vision.request("predict", attributes=ATTRIBUTES)
        from opentelemetry import context

        requests = []
        for _ in range(8):
            with otel_vision.request("edit"):
                requests.append(context.get_current())

        def bare_sdk() -> None:
            for _ in range(args.calls):
                with tracer.start_as_current_span("inference", attributes={"vision.stage": "inference", **ATTRIBUTES}):
                    work()

        def stage_with() -> None:
            for _ in range(args.calls):
                with stage_cm:
                    work()

        def stage_decorator() -> None:
            for _ in range(args.calls):
                decorated()

        def request_with() -> None:
            for _ in range(args.calls):
                with req:
                    work()

        def batch_of_8() -> None:
            # A ninth of the calls (each makes 9 spans), so a round fits the default queue; reported per call.
            for _ in range(args.calls // 9):
                with otel_vision.batch("inference", requests=requests, attributes=ATTRIBUTES):
                    work()

        # Reference only: a bare span on a plain SDK provider (BatchSpanProcessor, the SDK's OTLP exporter, the same
        # collector), as an application without otel_vision has it. The ratios stay against the same provider.
        plain = TracerProvider(resource=Resource.create({"service.name": "bench-plain"}))
        plain.add_span_processor(BatchSpanProcessor(_sdk_exporter(args.protocol)))
        plain_tracer = plain.get_tracer("bench")

        def plain_sdk() -> None:
            attributes = {"vision.stage": "inference", **ATTRIBUTES}
            for _ in range(args.calls):
                with plain_tracer.start_as_current_span("inference", attributes=attributes):
                    work()

        variants: dict[str, Callable[[], None]] = {
            "bare SDK span (start_as_current_span, same attributes, same provider)": bare_sdk,
            PLAIN: plain_sdk,
            "otel_vision.stage() as context manager": stage_with,
            "otel_vision.stage() as decorator": stage_decorator,
            "otel_vision.request() as context manager": request_with,
            "otel_vision.batch() of 8 requests (new batch object per call; 8 member spans in the export path)": (
                batch_of_8
            ),
        }
        for fn in variants.values():  # warm-up
            fn()
        handle.force_flush(timeout_millis=30000)
        plain.force_flush(30000)
        wall: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        order = list(variants)
        for _ in range(args.rounds):
            random.shuffle(order)
            for name in order:
                c0, w0 = time.process_time(), time.perf_counter()
                variants[name]()
                w1 = time.perf_counter()
                # Let the export threads finish this variant's spans, so their CPU lands in its sample.
                handle.force_flush(timeout_millis=30000)
                plain.force_flush(30000)
                calls = args.calls // 9 if variants[name] is batch_of_8 else args.calls
                cpu[name].append((time.process_time() - c0) / calls * 1e6)
                wall[name].append((w1 - w0) / calls * 1e6)
        lost = {signal: s.lost for signal, s in handle.delivery().items()}
        handle.shutdown()
        plain.shutdown()
    finally:
        collector.terminate()
        collector.wait(10)

    bare = "bare SDK span (start_as_current_span, same attributes, same provider)"
    wall_bare, cpu_bare = statistics.median(wall[bare]), statistics.median(cpu[bare])
    print(
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, configuration: "
        f"{args.variant} (OTLP {args.protocol} to rotel, GPU telemetry on), {args.rounds} rounds x {args.calls} "
        f"calls, lost: {lost}\n"
    )
    print("| variant | wall µs per call (calling thread) | × bare | process CPU µs per call (all threads) | × bare |")
    print("|---|---:|---:|---:|---:|")
    for name in variants:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"| {name} | {w:.2f} | {w / wall_bare:.2f} | {c:.2f} | {c / cpu_bare:.2f} |")


if __name__ == "__main__":
    main()
