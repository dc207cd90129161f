"""Real instrumented workloads whose metrics Prometheus scrapes, so dashboards and alert rules meet real data.

Run as ``python -m tests.collector.workload --port PORT --service NAME --dtype float32``. The process serves the
SDK's Prometheus endpoint (``OTEL_METRICS_EXPORTER=prometheus`` semantics, bound to 127.0.0.1), then for
``--duration`` seconds runs, in rounds:

- the tiny CNN of ``otel-vision demo`` (``classify`` requests with preprocess/inference/postprocess stages);
- ultralytics YOLO (random ``yolov8n.yaml``, the images ultralytics ships), including one failing ``predict``;
- a tiny random InstructPix2Pix pipeline in ``--dtype``, fed through a real queue (``queue_wait``) by a worker
  thread, with instructions from several categories and one failing call per round (no input image, category
  ``remove``).

With ``--fake-gpus N`` the GPU telemetry runs against `otel_vision.testing`'s fake device: no GPU exists in CI, so
the ``hw.gpu.*`` / ``gpu.memory.*`` series come from a fake NVML whose memory use ramps from 60 % to 97 % of the
limit over the run (enough for the GPU-memory alerts to go pending) while utilization, power, energy and temperature
move, and which runs thermally throttled at a lower SM clock in the second half.

It prints one JSON line ``{"ready": ...}`` once the endpoint listens and one ``{"done": ...}`` when the workload
has finished, then keeps serving the endpoint (Prometheus marks series stale when a target disappears) until it
receives SIGTERM or its standard input closes.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PIX2PIX_INSTRUCTIONS = (
    "make it snowy",
    "add fireworks in the sky",
    "turn the bus into a boat",
    "remove the people",
    "replace the sky with a sunset",
    "in the style of a watercolour",
)
FAILING_INSTRUCTION = "remove the watermark"
GiB = 2**30


def _emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def _fake_gpu(count: int) -> Any:
    from otel_vision.gpu import DeviceInfo
    from otel_vision.testing import FakeCuda, FakeGpu, FakeNvml

    uuids = [f"GPU-00000000-fake-0000-0000-00000000000{i}" for i in range(count)]
    devices = [DeviceInfo(i, uuid, "Fake H100", "999.99", 80 * GiB) for i, uuid in enumerate(uuids)]
    return FakeGpu(cuda=FakeCuda(uuids), nvml=FakeNvml(devices))


def _drive_fake_gpu(fake: Any, count: int, duration: float, stop: threading.Event) -> None:
    """Ramp memory use from 60 % to 97 % of the limit over ``duration``; move utilization, power, energy,
    temperature; throttle (sw_thermal, hw_slowdown) in the second half."""
    start = time.monotonic()
    uuids = [f"GPU-00000000-fake-0000-0000-00000000000{i}" for i in range(count)]
    while not stop.wait(0.1):
        progress = min(1.0, (time.monotonic() - start) / duration)
        fake.nvml.memory_used = int((0.60 + 0.37 * progress) * 80 * GiB)
        fake.nvml.power_watts = 250.0 + 200.0 * progress
        fake.nvml.energy_joules += fake.nvml.power_watts * 0.1
        fake.nvml.temperature = 45.0 + 30.0 * progress
        # Hot in the second half: thermal throttling at a lower SM clock (the throttling panel and alert's series).
        hot = progress >= 0.5
        fake.nvml.throttle(*(("sw_thermal", "hw_slowdown") if hot else ()))
        fake.nvml.sm_clock_mhz = 1410.0 if hot else 1980.0
        for index, uuid in enumerate(uuids):
            fake.nvml.add_sample(min(1.0, 0.5 + 0.4 * progress + 0.05 * index), uuid=uuid)
        fake.cuda.allocate(8 * 2**20)


def _yolo_round(model: Any, sources: list[Any]) -> None:
    for source in sources:
        model.predict(source, imgsz=320, conf=0.001, verbose=False)
    model.predict(sources, imgsz=320, conf=0.001, verbose=False)
    try:
        model.predict("/nonexistent/otel-vision-missing.jpg", imgsz=320, verbose=False)
    except FileNotFoundError:
        pass


def _pix2pix_worker(pipe: Any, jobs: queue.Queue[Any], torch: Any) -> None:
    """Take jobs from the queue: record how long each waited, then run the pipeline (failures included)."""
    import otel_vision

    generator = torch.Generator().manual_seed(0)
    while True:
        job = jobs.get()
        if job is None:
            return
        enqueued_at, instruction, image, done = job
        otel_vision.queue_wait(enqueued_at, attributes={"vision.model.name": type(pipe).__name__})
        try:
            pipe(instruction, image=image, num_inference_steps=3, generator=generator)
        except ValueError:
            logging.getLogger("workload").warning("edit failed: %s", instruction)
        except Exception:  # keep serving the queue; the log says what broke
            logging.getLogger("workload").exception("unexpected failure: %s", instruction)
        finally:
            done.set()


def _dead_otlp(port: int) -> dict[str, str]:
    """Traces and logs to a port where nothing listens, with queues small enough to overflow within seconds."""
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
        "OTEL_BSP_MAX_QUEUE_SIZE": "4",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_BLRP_MAX_QUEUE_SIZE": "4",
        "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE": "2",
        "OTEL_BLRP_SCHEDULE_DELAY": "100",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port of the Prometheus endpoint on 127.0.0.1")
    parser.add_argument("--service", required=True, help="service.name")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of workload")
    parser.add_argument("--fake-gpus", type=int, default=0, help="fake GPUs (0: no GPU telemetry)")
    parser.add_argument("--edits", type=int, default=len(PIX2PIX_INSTRUCTIONS), help="successful edits per round")
    parser.add_argument("--no-yolo", action="store_true")
    parser.add_argument("--no-classify", action="store_true")
    parser.add_argument(
        "--dead-otlp",
        type=int,
        metavar="PORT",
        help="also export traces and logs over OTLP/HTTP to this closed port on 127.0.0.1, with small queues: the "
        "SDK's loss counters (otel.sdk.*) then count failed exports and queue drops",
    )
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    import otel_vision
    from otel_vision import _config, _setup
    from otel_vision._demo import DemoUI, _classify
    from otel_vision._tiny_pipelines import tiny_instruct_pix2pix

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    torch.set_num_threads(1)
    fake = _fake_gpu(args.fake_gpus) if args.fake_gpus else None
    dead = _dead_otlp(args.dead_otlp) if args.dead_otlp else {}
    os.environ.update(dead)  # the export queues read the OTEL_BSP_*/OTEL_BLRP_* variables from the environment
    settings = _config.resolve(
        service_name=args.service,
        resource_attributes={"vision.dtype": args.dtype},
        gpu=fake is not None,
        gpu_sample_interval=0.2,
        environ={
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
            "OTEL_EXPORTER_PROMETHEUS_PORT": str(args.port),
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            **dead,
        },
    )
    handle = _setup.build(settings, cuda=fake.cuda if fake else None, nvml=fake.nvml if fake else None)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _emit(ready=args.port, service=args.service)

    gpu_thread = None
    if fake is not None:
        gpu_thread = threading.Thread(
            target=_drive_fake_gpu, args=(fake, args.fake_gpus, args.duration, stop), daemon=True
        )
        gpu_thread.start()

    quiet_ui = DemoUI(out=io.StringIO(), err=io.StringIO())  # the demo's terminal output, discarded
    pipe = tiny_instruct_pix2pix(dtype=getattr(torch, args.dtype))
    otel_vision.instrument_diffusers(pipe)
    yolo = sources = None
    if not args.no_yolo:
        from ultralytics import YOLO
        from ultralytics.utils import ASSETS

        yolo = YOLO("yolov8n.yaml")
        otel_vision.instrument_ultralytics(yolo)
        sources = sorted(ASSETS.glob("*.jpg"))

    jobs: queue.Queue[Any] = queue.Queue()
    worker = threading.Thread(target=_pix2pix_worker, args=(pipe, jobs, torch), daemon=True)
    worker.start()
    rng = np.random.default_rng(0)
    deadline = time.monotonic() + args.duration
    rounds = 0
    while time.monotonic() < deadline and not stop.is_set():
        pending = []
        for index in range(args.edits):
            instruction = PIX2PIX_INSTRUCTIONS[(rounds * args.edits + index) % len(PIX2PIX_INSTRUCTIONS)]
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            done = threading.Event()
            jobs.put((time.time_ns(), instruction, Image.fromarray(pixels), done))
            pending.append(done)
        # One edit per round fails inside the pipeline (no input image): the "remove" category's error series.
        done = threading.Event()
        jobs.put((time.time_ns(), FAILING_INSTRUCTION, None, done))
        pending.append(done)
        if not args.no_classify:
            _classify(torch, 2, "cpu", 64, quiet_ui)
        if yolo is not None:
            _yolo_round(yolo, sources)
        for done in pending:
            done.wait()
        rounds += 1
    jobs.put(None)
    worker.join()
    _emit(done=time.time(), rounds=rounds)

    # Keep serving /metrics (and the fake GPU's last state) until told to stop.
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    stop.wait()
    handle.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
