"""Overhead of the ultralytics instrumentation: YOLOv8n predict, instrumented versus not, in one process.

Samples of ``--calls`` predicts without instrumentation and with it alternate one by one (``uninstrument()`` removes
every wrapper and callback, so "not instrumented" is ultralytics' own code path); the figures are medians, wall and
process CPU time. Spans go through a BatchSpanProcessor to an exporter that drops them, metrics to
an in-memory reader.

    python benchmarks/bench_ultralytics.py --batch 1 --samples 60
    python benchmarks/bench_ultralytics.py --batch 8 --samples 24
    python benchmarks/bench_ultralytics.py --device cuda --imgsz 640 --batch 1 --samples 200
"""

from __future__ import annotations

import argparse
import os
import platform

os.environ.setdefault("YOLO_OFFLINE", "1")

from _ab import NullExporter, alternate, report
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import otel_vision
from otel_vision.instrumentation.ultralytics import UltralyticsInstrumentor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--calls", type=int, default=1)
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

    def run() -> None:
        for _ in range(args.calls):
            model.predict(source, **kwargs)  # ultralytics synchronizes CUDA at each stage boundary itself

    plain, traced = alternate(run, instrumentor.instrument, instrumentor.uninstrument, args.samples)
    otel_vision.shutdown()
    title = (
        f"YOLOv8n ({args.weights}) {args.device} imgsz={args.imgsz} batch={args.batch}; "
        f"Python {platform.python_version()}; {args.samples} alternating samples of {args.calls} call(s)"
    )
    report(title, "predict", plain, traced, args.calls)


if __name__ == "__main__":
    main()
