"""A real trace UI without Docker: `otel-vision demo` into Arize Phoenix, checked in headless Chromium.

Phoenix is heavy (about 850 MB with its dependencies), so it lives in its own virtual environment, never the
project's: `.ci/run` installs it and sets ``OTEL_VISION_TEST_PHOENIX`` to its ``phoenix`` executable. Chromium is
Debian's ``chromium`` package. Without either, the test is skipped and says why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .test_wire import LOOPBACK_ENV, _free_port

pytestmark = pytest.mark.integration


def _phoenix() -> str:
    found = os.environ.get("OTEL_VISION_TEST_PHOENIX") or shutil.which("phoenix")
    if not found or not Path(found).exists():
        pytest.skip(
            "Arize Phoenix is not installed: bash .ci/run installs it in its own venv; by hand: "
            "python -m venv /tmp/phoenix && /tmp/phoenix/bin/pip install arize-phoenix, "
            "then OTEL_VISION_TEST_PHOENIX=/tmp/phoenix/bin/phoenix"
        )
    return found


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    return found


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return bytes(response.read())


def _wait(what: str, check: object, timeout: float) -> object:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()  # type: ignore[operator]
            if result:
                return result
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout:.0f} s (last error: {last})")


def test_demo_traces_open_in_phoenix(tmp_path: Path) -> None:
    """The demo's trace, sent over OTLP/HTTP, shows its stage tree in Phoenix's trace page in a real browser."""
    pytest.importorskip("torch")
    phoenix, chromium = _phoenix(), _chromium()
    port, grpc_port = _free_port(), _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PHOENIX_"))}
    env.update(LOOPBACK_ENV)
    log = (tmp_path / "phoenix.log").open("w")
    server = subprocess.Popen(
        [phoenix, "serve"],
        env={
            **env,
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(port),
            "PHOENIX_GRPC_PORT": str(grpc_port),
            "PHOENIX_WORKING_DIR": str(tmp_path / "phoenix"),
            "PHOENIX_TELEMETRY_ENABLED": "false",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        _wait("Phoenix did not start", lambda: _get(base + "/healthz") or True, timeout=120)
        demo = subprocess.run(
            [sys.executable, "-m", "otel_vision.cli", "demo", "--images", "2", "--size", "64"],
            env={
                **env,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": base + "/v1/traces",
                # Phoenix receives traces only.
                "OTEL_METRICS_EXPORTER": "none",
                "OTEL_LOGS_EXPORTER": "none",
                "OTEL_VISION_GPU": "false",
            },
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert demo.returncode == 0, demo.stderr

        def root_trace() -> str | None:
            spans = json.loads(_get(base + "/v1/projects/default/spans?limit=100"))["data"]
            names = {s["name"] for s in spans}
            roots = [s for s in spans if s["name"] == "classify" and s["parent_id"] is None]
            ok = roots and {"preprocess", "inference", "postprocess"} <= names
            return str(roots[0]["context"]["trace_id"]) if ok else None

        trace_id = _wait("the demo's spans did not reach Phoenix", root_trace, timeout=30)
        project = json.loads(_get(base + "/v1/projects"))["data"][0]["id"]
        page = f"{base}/projects/{project}/traces/{trace_id}"
        browser = subprocess.run(
            [
                chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=15000", "--dump-dom", page,
            ],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        dom = browser.stdout
        for name in ("classify", "preprocess", "inference", "postprocess"):
            assert name in dom, f"{name} not on {page}; Chromium said: {browser.stderr[-2000:]}"
        assert "tiny-cnn" in dom  # an attribute of the selected root span
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()
