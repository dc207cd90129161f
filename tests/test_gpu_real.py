"""GPU telemetry on a real CUDA device, under torch's sync debug mode: proof that no synchronization is added.

Skipped where no CUDA device is present (CI has none); run on a GPU machine with ``pytest -m gpu``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import otel_vision
from otel_vision.testing import CapturedTelemetry, capture_telemetry

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture
def real_gpu_telemetry() -> Iterator[CapturedTelemetry]:
    torch.cuda.init()
    with capture_telemetry(gpu=True, gpu_sample_interval=0.1) as captured:
        yield captured


def _work(x: Any, n: int = 20) -> Any:
    for _ in range(n):
        x = x @ x
        x = x / x.norm()
    return x


def test_stage_adds_no_synchronization(real_gpu_telemetry: CapturedTelemetry) -> None:
    """Nested stages around CUDA work run under sync_debug_mode("error") and get gpu.time, memory and hw.id."""
    x = torch.randn(2048, 2048, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            with otel_vision.stage("request"):
                with otel_vision.stage("inference"):
                    y = _work(x)
                with otel_vision.stage("postprocess"):
                    y = y * 2
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    spans = real_gpu_telemetry.spans("inference")
    assert len(spans) == 3
    for span in spans:
        attrs = span.attributes
        assert attrs["gpu.time"] > 0
        assert attrs["gpu.memory.peak"] >= attrs["gpu.memory.allocated"] > 0
        assert str(attrs["hw.id"]).startswith(("GPU-", "MIG-"))
    requests = {r.context.span_id: r for r in real_gpu_telemetry.spans("request")}
    for span in spans:
        parent = requests[span.parent.span_id]
        assert parent.attributes["gpu.memory.peak"] >= span.attributes["gpu.memory.peak"]


def test_gpu_time_matches_synchronized_event_timing(real_gpu_telemetry: CapturedTelemetry) -> None:
    """gpu.time of a stage agrees (within 10 %) with CUDA events timed the classic, synchronizing way."""
    x = torch.randn(4096, 4096, device="cuda")
    _work(x, 5)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    _work(x, 30)
    end.record()
    torch.cuda.synchronize()
    reference = start.elapsed_time(end) / 1000.0
    with otel_vision.stage("inference"):
        _work(x, 30)
    torch.cuda.synchronize()
    measured = real_gpu_telemetry.span("inference").attributes["gpu.time"]
    assert measured == pytest.approx(reference, rel=0.10)


def test_host_time_misses_device_time(real_gpu_telemetry: CapturedTelemetry) -> None:
    """The reason gpu.time exists: the host span of an async launch is much shorter than the device work."""
    x = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    with otel_vision.stage("inference"):
        _work(x, 40)
    torch.cuda.synchronize()
    span = real_gpu_telemetry.span("inference")
    host = (span.end_time - span.start_time) / 1e9
    assert span.attributes["gpu.time"] > host


def test_nvml_metrics_and_utilization(real_gpu_telemetry: CapturedTelemetry) -> None:
    """With NVML present, hw.gpu.* metrics exist and a busy stage gets a gpu.utilization in (0, 1]."""
    import time

    x = torch.randn(4096, 4096, device="cuda")
    with otel_vision.stage("inference"):
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            _work(x, 10)
            torch.cuda.synchronize()
    time.sleep(1.2)
    span = real_gpu_telemetry.span("inference")
    assert 0 < span.attributes["gpu.utilization"] <= 1
    names = real_gpu_telemetry.metric_names()
    assert {"hw.gpu.memory.usage", "hw.gpu.memory.limit", "gpu.memory.allocated"} <= names


def _sync_warnings(fn: Any) -> int:
    """How many synchronizing CUDA calls torch reports while ``fn`` runs (sync debug mode "warn")."""
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught)


def test_diffusers_adds_no_synchronization(real_gpu_telemetry: CapturedTelemetry) -> None:
    """An instrumented InstructPix2Pix call makes exactly as many synchronizing calls as an uninstrumented one, and
    every step gets gpu.time and its timestep (read from pinned memory in the export path)."""
    pytest.importorskip("diffusers")
    from PIL import Image

    from otel_vision._tiny_pipelines import tiny_instruct_pix2pix
    from otel_vision.instrumentation.diffusers import DiffusersInstrumentor

    pipe = tiny_instruct_pix2pix(device="cuda")
    image = Image.new("RGB", (32, 32))

    def run() -> None:
        pipe("make it snowy", image=image, num_inference_steps=4, output_type="pt")

    run()
    plain = _sync_warnings(run)
    otel_vision.instrument_diffusers(pipe)
    try:
        run()
        traced = _sync_warnings(run)
    finally:
        DiffusersInstrumentor().uninstrument()
    assert traced == plain
    steps = real_gpu_telemetry.spans("denoise_step")[-4:]
    assert all(s.attributes["gpu.time"] > 0 for s in steps)
    assert [s.attributes["diffusion.step.timestep"] for s in steps] == [float(t) for t in pipe.scheduler.timesteps]


def test_ultralytics_adds_no_synchronization(real_gpu_telemetry: CapturedTelemetry) -> None:
    """An instrumented YOLO predict on CUDA makes no more synchronizing calls than ultralytics itself, and its
    stage spans carry gpu.time, memory and hw.id."""
    import os

    os.environ.setdefault("YOLO_OFFLINE", "1")
    pytest.importorskip("ultralytics")
    from ultralytics import YOLO
    from ultralytics.utils import ASSETS

    from otel_vision.instrumentation.ultralytics import UltralyticsInstrumentor

    model = YOLO("yolov8n.yaml")

    def run() -> None:
        model.predict([ASSETS / "bus.jpg", ASSETS / "zidane.jpg"], device="cuda", conf=1e-4, verbose=False)

    run()
    plain = _sync_warnings(run)
    otel_vision.instrument_ultralytics(model)
    try:
        run()
        traced = _sync_warnings(run)
    finally:
        UltralyticsInstrumentor().uninstrument()
    assert traced == plain
    inference = real_gpu_telemetry.spans("inference")[-1]
    assert inference.attributes["gpu.time"] > 0 and str(inference.attributes["hw.id"]).startswith(("GPU-", "MIG-"))
    assert "vision.detections.classes" in real_gpu_telemetry.spans("batch")[-1].attributes


def test_instrument_module_adds_no_synchronization(real_gpu_telemetry: CapturedTelemetry) -> None:
    """instrument_module on a CUDA ResNet-18 adds no synchronizing call and gives each forward gpu.time and hw.id."""
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None).eval().cuda()
    x = torch.randn(8, 3, 224, 224, device="cuda")

    def run() -> None:
        with torch.inference_mode():
            for _ in range(3):
                model(x)

    run()
    plain = _sync_warnings(run)
    otel_vision.instrument_module(model, name="resnet18", submodules=["layer4", "fc"])
    try:
        traced = _sync_warnings(run)
    finally:
        otel_vision.uninstrument_module(model)
    assert traced == plain == 0
    spans = real_gpu_telemetry.spans("inference")
    assert len(spans) == 3 and all(s.attributes["gpu.time"] > 0 for s in spans)
    assert all(s.attributes["vision.device"] == "cuda:0" for s in spans)
    assert all(s.attributes["gpu.time"] > 0 for s in real_gpu_telemetry.spans("layer4"))


def test_waiting_spans_stay_capped_while_the_device_is_busy(real_gpu_telemetry: CapturedTelemetry) -> None:
    """With the device kept busy (``torch.cuda._sleep``), more stages end than the GPU span processor keeps waiting:
    the overflow is exported at once without gpu.time and counted, the rest get gpu.time once the device catches up,
    and every span is exported."""
    from otel_vision.gpu._spans import MAX_PENDING

    torch.zeros(1, device="cuda")
    torch.cuda._sleep(2_000_000_000)  # about a second of device time ahead of the host
    count = MAX_PENDING + 500
    for _ in range(count):
        with otel_vision.stage("queued"):
            torch.cuda._sleep(1000)
    torch.cuda.synchronize()
    spans = real_gpu_telemetry.spans("queued")
    assert len(spans) == count
    timed = sum("gpu.time" in s.attributes for s in spans)
    assert 0 < timed <= MAX_PENDING
    points = real_gpu_telemetry.points("vision.gpu.incomplete_spans")
    assert sum(p.value for p in points if p.attributes["error.type"] == "waiting_full") >= count - MAX_PENDING


def _busy(x: Any, seconds: float) -> None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _work(x, 10)
        torch.cuda.synchronize()


def test_clock_and_energy_on_a_busy_stage(real_gpu_telemetry: CapturedTelemetry) -> None:
    """A 1.5 s busy stage gets a plausible gpu.clock.sm and a gpu.energy within 25 % of the driver's energy counter
    read synchronously around it (where the GPU has the counter: Volta and newer)."""
    pynvml = pytest.importorskip("pynvml")
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
    try:
        counter_before = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except pynvml.NVMLError_NotSupported:
        pytest.skip("this GPU has no energy counter")
    x = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    counter_before = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    with otel_vision.stage("inference"):
        _busy(x, 1.5)
    reference = (pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) - counter_before) / 1000.0
    span = real_gpu_telemetry.span("inference")
    attrs = span.attributes
    seconds = (span.end_time - span.start_time) / 1e9
    assert 100 < attrs["gpu.clock.sm"] < 5000
    assert 1 < attrs["gpu.energy"] / seconds < 2000  # watts
    assert attrs["gpu.energy"] == pytest.approx(reference, rel=0.25)
    reasons = attrs.get("gpu.throttle.reasons", ())
    assert set(reasons) <= {
        "sw_power_cap",
        "hw_slowdown",
        "sync_boost",
        "sw_thermal",
        "hw_thermal",
        "hw_power_brake",
        "board_limit",
        "reliability",
    }


def test_request_energy_and_throttle_time_metrics(real_gpu_telemetry: CapturedTelemetry) -> None:
    """A request on the device records vision.request.energy (its span's gpu.energy), and vision.gpu.throttle.time
    reports every throttling reason for the device, counting from 0."""
    x = torch.randn(4096, 4096, device="cuda")
    with otel_vision.request("predict", attributes={"vision.model.name": "matmul"}):
        with otel_vision.stage("inference"):
            _busy(x, 0.5)
    request = real_gpu_telemetry.span("predict")
    if "gpu.energy" not in request.attributes:
        pytest.skip("NVML reports neither an energy counter nor power on this device")
    (point,) = real_gpu_telemetry.points("vision.request.energy")
    assert point.attributes == {"vision.operation": "predict", "vision.model.name": "matmul"}
    assert point.count == 1 and point.sum == pytest.approx(request.attributes["gpu.energy"])
    throttle = real_gpu_telemetry.points("vision.gpu.throttle.time")
    if throttle:  # absent where the driver cannot report clock event reasons (one debug line says so)
        assert str(throttle[0].attributes["hw.id"]).startswith("GPU-")
        assert len({p.attributes["gpu.throttle.reason"] for p in throttle}) == 8
        assert all(p.value >= 0 for p in throttle)
