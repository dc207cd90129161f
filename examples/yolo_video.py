"""YOLO on a video file or a folder of images, batched, with one trace per call.

    python examples/yolo_video.py --source path/to/video.mp4 --batch 8
    python examples/yolo_video.py --source path/to/folder --batch 4 --weights yolov8n.pt

Without --source it writes a short clip from ultralytics' bundled bus.jpg, so it runs offline. Frames are streamed
(``stream=True``): the root span stays open over the iteration and ends even if you stop early.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import otel_vision


def sample_video(directory: Path, frames: int = 12) -> Path:
    import cv2
    from ultralytics.utils import ASSETS

    image = cv2.resize(cv2.imread(str(ASSETS / "bus.jpg")), (320, 320))
    path = directory / "sample.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 320))
    for i in range(frames):
        writer.write(cv2.flip(image, 1) if i % 2 else image)
    writer.release()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="video file or image folder (default: a generated clip)")
    parser.add_argument("--batch", type=int, default=4, help="frames per batch")
    parser.add_argument("--weights", default="yolov8n.yaml", help="a local .pt file, or a YAML for random weights")
    parser.add_argument("--imgsz", type=int, default=320)
    args = parser.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")

    from ultralytics import YOLO

    # No collector configured: draw each trace in the terminal (stderr). With an endpoint: export over OTLP.
    exporter = None if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "waterfall"
    otel_vision.configure(service_name="yolo-video", exporter=exporter)
    otel_vision.instrument_ultralytics()
    model = YOLO(args.weights)
    with tempfile.TemporaryDirectory() as tmp:
        source = args.source or str(sample_video(Path(tmp)))
        detections = 0
        for result in model.predict(source, batch=args.batch, imgsz=args.imgsz, stream=True, verbose=False):
            detections += len(result.boxes) if result.boxes is not None else 0
    otel_vision.shutdown()
    print(f"{detections} detections")


if __name__ == "__main__":
    main()
