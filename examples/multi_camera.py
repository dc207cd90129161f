"""A multi-camera loop: each iteration reads one frame per camera and runs them as one YOLO batch.

Each frame is a request with a trace of its own: ``frame`` (root, ``vision.stream.id``) > ``read``, then ``detect``,
its share of the batch (a member span linking to the batch span, with ``vision.batch.size`` and ``gpu.time.share``).
The frame's request lasts from reading it until its batch is done. The batch of one iteration is one more trace:
``detect`` (linked to every frame it served) > ``predict`` > preprocess / inference / postprocess.

    python examples/multi_camera.py --cameras 3 --iterations 5
    python examples/multi_camera.py --sources rtsp://cam1/stream rtsp://cam2/stream

Without --sources each camera is a generated clip, so it runs offline.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import context

import otel_vision


def fake_cameras(directory: Path, count: int, frames: int) -> list[str]:
    import cv2
    from ultralytics.utils import ASSETS

    base = [cv2.resize(cv2.imread(str(p)), (320, 240)) for p in sorted(ASSETS.glob("*.jpg"))]
    paths = []
    for cam in range(count):
        path = directory / f"camera{cam}.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
        for i in range(frames):
            writer.write(base[(cam + i) % len(base)])
        writer.release()
        paths.append(str(path))
    return paths


@contextmanager
def new_trace() -> Iterator[None]:
    """What is traced inside starts a trace of its own, whatever is current outside."""
    token = context.attach(context.Context())
    try:
        yield
    finally:
        context.detach(token)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", nargs="*", help="camera URLs or video files (default: generated clips)")
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--weights", default="yolov8n.yaml")
    args = parser.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")

    import cv2
    from ultralytics import YOLO

    # No collector configured: draw each trace in the terminal (stderr). With an endpoint (or OTEL_TRACES_EXPORTER
    # set): export as the standard variables say.
    configured = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_TRACES_EXPORTER")
    exporter = None if configured else "waterfall"
    model_name = Path(args.weights).stem
    otel_vision.configure(service_name="multi-camera", exporter=exporter)
    model = YOLO(args.weights)
    otel_vision.instrument_ultralytics(model)
    with tempfile.TemporaryDirectory() as tmp:
        sources = args.sources or fake_cameras(Path(tmp), args.cameras, args.iterations)
        captures = {f"cam-{i}": cv2.VideoCapture(src) for i, src in enumerate(sources)}
        try:
            for iteration in range(args.iterations):
                # Each frame's request stays open until its batch is done: its duration is the frame's latency.
                with ExitStack() as open_frames:
                    frames: list[Any] = []
                    requests: list[context.Context] = []  # the context of each frame's request, for the batch
                    for stream_id, capture in captures.items():
                        open_frames.enter_context(new_trace())
                        attributes = {
                            "vision.stream.id": stream_id,
                            "vision.model.name": model_name,
                            "loop.iteration": iteration,
                        }
                        open_frames.enter_context(otel_vision.request("frame", attributes=attributes))
                        with otel_vision.stage("read"):
                            ok, frame = capture.read()
                        if ok:
                            frames.append(frame)
                            requests.append(context.get_current())
                    if not frames:
                        break
                    # The batch belongs to no frame: its own trace, linked to each frame's request.
                    with new_trace(), otel_vision.batch("detect", requests=requests):
                        model.predict(frames, imgsz=320, verbose=False)  # list -> one batch, in camera order
        finally:
            for capture in captures.values():
                capture.release()
    otel_vision.shutdown()


if __name__ == "__main__":
    main()
