"""Overhead of the ultralytics instrumentation in the default configuration: fixed cost per predict, and YOLOv8n.

Three measurements, all in the default configuration unless ``--config null-exporter`` (see ``_ab.py``):

1. Fixed cost per predict, interleaved (`fixed_cost_interleaved`, first): two YOLOv8n models, one instrumented
   (``instrument_ultralytics(model)``) and one not, predict one frame each in turn, ``--interleaved`` times, in a
   shuffled order with five bare SDK spans made right after a predict (the conditions our five spans meet: the
   model's compute has just evicted the SDK's code and data from the caches) and, every tenth turn, 100 bare spans in
   a loop (the conditions the budget's bare span was measured in). Each call is timed on its own (inference thread
   CPU time and wall time), so slow drifts of the VM cancel out; medians.
   ``--stub-forward`` runs only the first measurement, with the model's forward pass replaced by its cached output
   (`stub_forward`): the warm cost, with far less noise.
2. Fixed cost per predict, isolated: YOLOv8n predicts at ``--small-imgsz`` (64 px: a few milliseconds each, so the
   fixed cost is not lost in the model's time), instrumented versus not, next to bare SDK spans in the same rounds;
   wall time, process CPU time (all threads, export work included) and the inference thread's own CPU time.
   What a predict of batch 1 makes: five spans (predict, batch, preprocess, inference, postprocess), one ``image``
   event, the ``vision.detections`` and ``vision.images`` metrics.
3. The model: samples of ``--calls`` predicts at ``--imgsz`` without instrumentation and with it alternate one by one
   (``uninstrument()`` removes every wrapper and callback, so "not instrumented" is ultralytics' own code path).

    python benchmarks/bench_ultralytics.py --batch 1 --samples 40
    python benchmarks/bench_ultralytics.py --batch 8 --samples 30
    python benchmarks/bench_ultralytics.py --device cuda --imgsz 640 --batch 1 --samples 200
    python benchmarks/bench_ultralytics.py --device cuda --imgsz 640 --batch 1 --compare-profiler

``--compare-profiler`` runs instrumented predicts under torch.profiler with the predictor's ``inference`` wrapped in
a ``record_function`` range, and compares the CUDA kernel time the profiler attributes to that range with the
``gpu.time`` of our ``inference`` span for the same calls.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")

from _ab import CONFIGS, Variant, bare_spans, configured, describe, report, report_added, rounds

import otel_vision
from otel_vision.instrumentation.ultralytics import UltralyticsInstrumentor

SPANS_PER_PREDICT = 5
"""predict, batch, preprocess, inference, postprocess (batch 1)."""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--small-imgsz", type=int, default=64, help="input size of the fixed-cost measurement")
    parser.add_argument("--small-calls", type=int, default=20, help="predicts per sample of the fixed-cost run")
    parser.add_argument("--interleaved", type=int, default=1500, help="turns of the interleaved fixed-cost run")
    parser.add_argument(
        "--stub-forward",
        action="store_true",
        help="run only the interleaved measurement, with each model's forward pass replaced by its cached output",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default="yolov8n.yaml")
    parser.add_argument("--config", choices=CONFIGS, default="default")
    parser.add_argument("--compare-profiler", action="store_true")
    args = parser.parse_args()
    if args.compare_profiler:
        compare_profiler(args)
        return

    import numpy as np
    from ultralytics import YOLO

    print(f"configuration: {describe(args.config)}\n")
    with configured("bench-ultralytics", args.config) as handle:
        settle = lambda: handle.force_flush(timeout_millis=30000)  # noqa: E731
        model = YOLO(args.weights)
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(args.batch)]
        source = frames if args.batch > 1 else frames[0]
        fixed_cost_interleaved(args, handle, source)
        if args.stub_forward:
            return
        instrumentor = UltralyticsInstrumentor()
        fixed_cost(args, handle, model, source, instrumentor, settle)
        kwargs = {"imgsz": args.imgsz, "device": args.device, "verbose": False}

        def run() -> None:
            for _ in range(args.calls):
                model.predict(source, **kwargs)  # ultralytics synchronizes CUDA at each stage boundary itself

        results = rounds(
            {"plain": Variant(run), "traced": Variant(run, instrumentor.instrument, instrumentor.uninstrument)},
            args.samples,
            settle,
        )
        title = (
            f"YOLOv8n ({args.weights}) {args.device} imgsz={args.imgsz} batch={args.batch}; "
            f"Python {platform.python_version()}; {args.samples} alternating samples of {args.calls} call(s)"
        )
        report(title, "predict", results["plain"], results["traced"], args.calls)


def fixed_cost_interleaved(args: argparse.Namespace, handle: Any, source: Any) -> None:
    from ultralytics import YOLO

    plain, traced = YOLO(args.weights), YOLO(args.weights)
    otel_vision.instrument_ultralytics(traced)
    kwargs = {"imgsz": args.small_imgsz, "device": args.device, "verbose": False}
    attributes = {"vision.stage": "inference", "vision.model.name": "yolov8n"}
    cold = bare_spans(handle, "inference", attributes, SPANS_PER_PREDICT)
    warm = bare_spans(handle, "inference", attributes, 100)
    turns: dict[str, Callable[[], Any]] = {
        "plain": lambda: plain.predict(source, **kwargs),
        "traced": lambda: traced.predict(source, **kwargs),
        "cold": lambda: (plain.predict(source, **kwargs), cold()),
    }
    for _ in range(20):
        for turn in turns.values():
            turn()
    restore = stub_forward() if args.stub_forward else None
    handle.force_flush(timeout_millis=30000)
    cpu: dict[str, list[float]] = {name: [] for name in (*turns, "warm")}
    wall: dict[str, list[float]] = {name: [] for name in (*turns, "warm")}
    thread_ns, wall_ns = time.thread_time_ns, time.perf_counter_ns
    for i in range(args.interleaved):
        order = list(turns)
        random.shuffle(order)
        for name in order:
            if name == "cold":
                plain.predict(source, **kwargs)  # the predict is not timed: only the five spans right after it
                c, w = thread_ns(), wall_ns()
                cold()
            else:
                c, w = thread_ns(), wall_ns()
                turns[name]()
            cpu[name].append((thread_ns() - c) / 1e3)
            wall[name].append((wall_ns() - w) / 1e3)
        if i % 10 == 9:
            c, w = thread_ns(), wall_ns()
            warm()
            cpu["warm"].append((thread_ns() - c) / 1e3 / 100 * SPANS_PER_PREDICT)
            wall["warm"].append((wall_ns() - w) / 1e3 / 100 * SPANS_PER_PREDICT)
        if i % 200 == 199:
            handle.force_flush(timeout_millis=30000)
    if restore is not None:
        restore()
    stubbed = "; forward pass replaced by its cached output" if args.stub_forward else ""
    print(
        f"Fixed cost per predict, interleaved (imgsz={args.small_imgsz} batch={args.batch}, {args.interleaved} "
        f"turns; Python {platform.python_version()}{stubbed}):"
    )
    print(
        "| clock | plain predict µs | instrumented predict µs | added µs | 5 bare spans right after a predict µs | "
        "added in those bare spans | 5 bare spans in a loop µs | added in those bare spans |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for clock, samples in (("inference thread CPU", cpu), ("wall", wall)):
        med = {name: statistics.median(values) for name, values in samples.items()}
        added = med["traced"] - med["plain"]
        print(
            f"| {clock} | {med['plain']:.0f} | {med['traced']:.0f} | {added:.0f} | {med['cold']:.1f} | "
            f"{added / med['cold'] * SPANS_PER_PREDICT:.1f} | {med['warm']:.1f} | "
            f"{added / med['warm'] * SPANS_PER_PREDICT:.1f} |"
        )
    print()
    otel_vision.uninstrument_ultralytics()


def stub_forward() -> Callable[[], None]:
    """Make every ``AutoBackend`` return the output of its first forward pass from now on; returns the undo.

    With ``--stub-forward``: the instrumented and the plain predict still run ultralytics' whole predict path
    (loading, preprocess, NMS, results, callbacks), but not the model's compute, which evicts our code and data from
    the caches. The added cost measured so is the warm one, with a tenth of the noise; the default measurement (the
    model's compute in between) is the one users meet."""
    from ultralytics.nn.autobackend import AutoBackend

    real = AutoBackend.forward
    outputs: dict[int, Any] = {}

    def forward(self: Any, im: Any, *args: Any, **kwargs: Any) -> Any:
        if id(self) not in outputs:
            outputs[id(self)] = real(self, im, *args, **kwargs)
        return outputs[id(self)]

    AutoBackend.forward = forward  # type: ignore[method-assign]

    def restore() -> None:
        AutoBackend.forward = real  # type: ignore[method-assign]

    return restore


def fixed_cost(args: argparse.Namespace, handle: Any, model: Any, source: Any, instrumentor: Any, settle: Any) -> None:
    kwargs = {"imgsz": args.small_imgsz, "device": args.device, "verbose": False}
    n = args.small_calls

    def run() -> None:
        for _ in range(n):
            model.predict(source, **kwargs)

    attributes = {"vision.stage": "inference", "vision.model.name": "yolov8n"}
    thread_cpu: dict[str, list[float]] = {"plain": [], "traced": [], "bare": []}

    def on_thread(name: str, fn: Callable[[], None]) -> Callable[[], None]:
        """``fn``, also timing the CPU time of the calling thread (the inference thread) alone."""

        def timed() -> None:
            start = time.thread_time()
            fn()
            thread_cpu[name].append(time.thread_time() - start)

        return timed

    results = rounds(
        {
            "plain": Variant(on_thread("plain", run)),
            "traced": Variant(on_thread("traced", run), instrumentor.instrument, instrumentor.uninstrument),
            "bare": Variant(on_thread("bare", bare_spans(handle, "inference", attributes, SPANS_PER_PREDICT * n))),
        },
        args.samples,
        settle,
    )
    per = {"plain": n, "traced": n, "bare": SPANS_PER_PREDICT * n}
    report_added(
        f"Fixed cost per predict, isolated (imgsz={args.small_imgsz} batch={args.batch}, {args.samples} rounds x {n} "
        f"predicts; Python {platform.python_version()}):",
        "predict",
        results,
        per,
        SPANS_PER_PREDICT,
    )
    # The calling thread's own CPU time: what the inference thread pays, without the export threads' work (which
    # the process CPU row includes) and without time the VM gave to other tenants (which the wall row includes).
    median = {name: statistics.median(samples[2:]) / per[name] * 1e6 for name, samples in thread_cpu.items()}
    added, bare = median["traced"] - median["plain"], median["bare"]
    print(f"| inference thread CPU | {added:.1f} | {bare:.1f} | {added / bare:.2f} | {SPANS_PER_PREDICT} |")
    print()


def compare_profiler(args: argparse.Namespace, calls: int = 20) -> None:
    import statistics

    import numpy as np
    import torch
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from torch.profiler import ProfilerActivity, profile, record_function
    from ultralytics import YOLO

    if not args.device.startswith("cuda"):
        raise SystemExit("--compare-profiler needs --device cuda")
    memory = InMemorySpanExporter()
    otel_vision.configure(
        service_name="bench-ultralytics", exporter="none", logs=False,
        additional_span_processors=[SimpleSpanProcessor(memory)],
    )  # fmt: skip
    model = YOLO(args.weights)
    otel_vision.instrument_ultralytics(model)
    frames = [np.random.default_rng(i).integers(0, 255, (480, 640, 3), dtype=np.uint8) for i in range(args.batch)]
    kwargs = {"imgsz": args.imgsz, "device": args.device, "verbose": False}
    for _ in range(3):
        model.predict(frames, **kwargs)
    traced_inference = model.predictor.inference  # our wrapper (an instance attribute of the predictor)

    def ranged(*a: object, **k: object) -> object:
        with record_function("bench.inference"):
            return traced_inference(*a, **k)

    model.predictor.inference = ranged
    memory.clear()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            model.predict(frames, **kwargs)
        torch.cuda.synchronize()
    otel_vision.shutdown()
    kernels = [e.device_time_total / 1e6 for e in prof.events() if e.name == "bench.inference"]
    spans = [s.attributes["gpu.time"] for s in memory.get_finished_spans() if s.name == "inference"]
    print(f"YOLOv8n {args.device} imgsz={args.imgsz} batch={args.batch}; {len(spans)} inference spans")
    kernel_ms = statistics.median(kernels) * 1e3
    print(f"| CUDA kernel time in the inference range (torch.profiler), median | {kernel_ms:.3f} ms |")
    print(f"| inference span gpu.time (otel_vision), median | {statistics.median(spans) * 1e3:.3f} ms |")
    print(f"| ratio | {statistics.median(spans) / statistics.median(kernels):.3f} |")


if __name__ == "__main__":
    main()
