"""Overhead of the ultralytics instrumentation: YOLOv8n predict, instrumented versus not, in one process.

Each round times ``--calls`` predicts without instrumentation and ``--calls`` with it, in alternating order
(``uninstrument()`` removes every wrapper and callback, so "not instrumented" is ultralytics' own code path); the
figure is the median over rounds. Spans go through a BatchSpanProcessor to an exporter that drops them, metrics to
an in-memory reader.

    python benchmarks/bench_ultralytics.py --batch 1 --rounds 30
    python benchmarks/bench_ultralytics.py --batch 8 --rounds 15
    python benchmarks/bench_ultralytics.py --device cuda --imgsz 640 --batch 1 --rounds 50
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("YOLO_OFFLINE", "1")

from _ab import NullExporter, alternate, report
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import otel_vision
from otel_vision.instrumentation.ultralytics import UltralyticsInstrumentor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default="yolov8n.yaml")
    args = parser.parse_args()

    import numpy as np
    from ultralytics import YOLO

    otel_vision.configure(
        service_name="bench-ultralytics", exporter="none", logs=False,
        additional_span_processors=[BatchSpanProcessor(NullExporter())],
    )  # fmt: skip
    model = YOLO(args.weights)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(args.batch)]
    source = frames if args.batch > 1 else frames[0]
    kwargs = {"imgsz": args.imgsz, "device": args.device, "verbose": False}
    instrumentor = UltralyticsInstrumentor()

    def timed() -> float:
        start = time.perf_counter()
        for _ in range(args.calls):
            model.predict(source, **kwargs)
        return (time.perf_counter() - start) / args.calls

    plain, traced = alternate(timed, instrumentor.instrument, instrumentor.uninstrument, args.rounds)
    otel_vision.shutdown()
    title = (
        f"YOLOv8n ({args.weights}) {args.device} imgsz={args.imgsz} batch={args.batch}; "
        f"Python {platform.python_version()}; {args.rounds} rounds x {args.calls} calls"
    )
    report(title, "predict", plain, traced)


if __name__ == "__main__":
    main()
