"""The examples run as a newcomer runs them: public API only, one output style (a waterfall per trace on stderr)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT

ALL_EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
# The pix2pix service is a server: tests/instrumentation/test_pix2pix_service.py runs it.
EXAMPLES = [p for p in ALL_EXAMPLES if p.name != "instructpix2pix_service.py"]


@pytest.mark.parametrize("path", ALL_EXAMPLES, ids=lambda p: p.name)
def test_only_public_api(path: Path) -> None:
    """No example imports a private otel_vision module or name."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("otel_vision"):
            assert not any(part.startswith("_") for part in (node.module or "").split(".")), node.module
            assert not any(alias.name.startswith("_") for alias in node.names), ast.unparse(node)
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("otel_vision"):
                    assert not any(part.startswith("_") for part in alias.name.split(".")), alias.name
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "otel_vision":
            assert not node.attr.startswith("_"), ast.unparse(node)


@pytest.mark.parametrize(
    ("script", "args", "stages"),
    [
        ("decorate_your_pipeline.py", (), ("classify", "preprocess", "inference", "postprocess")),
        ("torchvision_classifier.py", ("--requests", "2", "--batch", "1"), ("classify", "preprocess", "layer4")),
        ("multi_camera.py", ("--cameras", "2", "--iterations", "1"), ("frame", "read", "detect", "predict")),
    ],
)
def test_example_draws_its_waterfall(script: str, args: tuple[str, ...], stages: tuple[str, ...]) -> None:
    """Without a collector an example draws each of its traces in the terminal, on stderr."""
    pytest.importorskip("torch")
    if script.startswith("torchvision"):
        pytest.importorskip("torchvision")
    if script.startswith("multi_camera"):
        pytest.importorskip("ultralytics")
        pytest.importorskip("cv2")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_VISION_GPU="false", COLUMNS="100")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\ntrace ") + result.stderr.startswith("trace ") >= 2
    for name in stages:
        assert name in result.stderr


def _console_spans(stdout: str) -> list[dict[str, Any]]:
    """The spans the SDK's console exporter printed (one JSON object each)."""
    decoder, spans, at = json.JSONDecoder(), [], 0
    while (start := stdout.find("{", at)) != -1:
        span, at = decoder.raw_decode(stdout, start)
        spans.append(span)
    return spans


def test_multi_camera_traces_each_frame_and_links_each_batch_to_its_frames() -> None:
    """Each camera frame is a request trace of its own (``frame`` > ``read``, and ``detect``, its member span of the
    iteration's batch); each iteration's frames run as one ``detect`` batch span with a link to each frame's request,
    in a trace of its own, with the instrumented ``predict`` under it."""
    pytest.importorskip("ultralytics")
    pytest.importorskip("cv2")
    cameras, iterations = 3, 2
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_VISION_GPU="false",
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        YOLO_OFFLINE="1",
    )
    command = [sys.executable, str(ROOT / "examples" / "multi_camera.py"), "--cameras", str(cameras)]
    result = subprocess.run(
        [*command, "--iterations", str(iterations)], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    spans = _console_spans(result.stdout)
    by_id = {s["context"]["span_id"]: s for s in spans}
    frames = [s for s in spans if s["name"] == "frame"]
    detect = [s for s in spans if s["name"] == "detect"]
    batches = [s for s in detect if s["attributes"]["vision.batch.role"] == "batch"]
    members = [s for s in detect if s["attributes"]["vision.batch.role"] == "member"]
    assert len(frames) == cameras * iterations and len(batches) == iterations and len(members) == len(frames)
    assert len({f["context"]["trace_id"] for f in frames}) == len(frames)  # a trace per frame
    assert all(f["parent_id"] is None and f["attributes"]["vision.operation"] == "frame" for f in frames)
    for batch in batches:
        assert batch["parent_id"] is None and batch["attributes"]["vision.batch.size"] == cameras
        served = [by_id[link["context"]["span_id"]] for link in batch["links"]]
        assert [f["attributes"]["vision.stream.id"] for f in served] == [f"cam-{i}" for i in range(cameras)]
        assert len({f["attributes"]["loop.iteration"] for f in served}) == 1
        (predict,) = [s for s in spans if s["name"] == "predict" and s["parent_id"] == batch["context"]["span_id"]]
        assert predict["context"]["trace_id"] == batch["context"]["trace_id"]
    for frame in frames:
        trace = [s for s in spans if s["context"]["trace_id"] == frame["context"]["trace_id"]]
        (read,) = [s for s in trace if s["name"] == "read"]
        (member,) = [s for s in trace if s["name"] == "detect"]
        assert read["parent_id"] == member["parent_id"] == frame["context"]["span_id"]
        (back,) = member["links"]
        assert by_id[back["context"]["span_id"]] in batches
        assert member["attributes"]["vision.batch.size"] == cameras
        assert frame["start_time"] <= member["start_time"] and member["end_time"] <= frame["end_time"]
