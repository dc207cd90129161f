"""A multi-camera loop: each iteration reads one frame per camera and runs them as one YOLO batch.

One trace per frame batch: ``frames`` (root) > ``read`` per camera (with ``vision.stream.id``) > ``predict`` > batch >
preprocess / inference / postprocess, and per-image events in camera order.

    python examples/multi_camera.py --cameras 3 --iterations 5
    python examples/multi_camera.py --sources rtsp://cam1/stream rtsp://cam2/stream

Without --sources each camera is a generated clip, so it runs offline.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

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

    # No collector configured: draw each trace in the terminal (stderr). With an endpoint: export over OTLP.
    exporter = None if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "waterfall"
    otel_vision.configure(service_name="multi-camera", exporter=exporter)
    model = YOLO(args.weights)
    otel_vision.instrument_ultralytics(model)
    with tempfile.TemporaryDirectory() as tmp:
        sources = args.sources or fake_cameras(Path(tmp), args.cameras, args.iterations)
        captures = {f"cam-{i}": cv2.VideoCapture(src) for i, src in enumerate(sources)}
        try:
            for iteration in range(args.iterations):
                with otel_vision.request(
                    "frames", attributes={"vision.model.name": "yolov8n", "loop.iteration": iteration}
                ):
                    frames: list[Any] = []
                    for stream_id, capture in captures.items():
                        with otel_vision.stage("read", attributes={"vision.stream.id": stream_id}):
                            ok, frame = capture.read()
                        if ok:
                            frames.append(frame)
                    if not frames:
                        break
                    model.predict(frames, imgsz=320, verbose=False)  # list -> one batch, images in camera order
        finally:
            for capture in captures.values():
                capture.release()
    otel_vision.shutdown()


if __name__ == "__main__":
    main()
