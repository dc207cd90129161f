"""Shared helpers for the test suite (the `vision_telemetry` and `fake_gpu` fixtures come from otel_vision.testing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a snippet in a fresh interpreter (for tests that touch process-global OpenTelemetry state)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ROTEL_"))}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
    )


def run_json(code: str, env: dict[str, str] | None = None, timeout: float = 120) -> Any:
    """Run a snippet whose last stdout line is JSON, and return it parsed."""
    result = run_python(code, env, timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(name="run_json")
def _run_json() -> Any:
    return run_json


@pytest.fixture(name="run_python")
def _run_python() -> Any:
    return run_python
