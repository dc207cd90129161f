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


def run_instrumented_without(missing: str, app: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run ``opentelemetry-instrument python app`` in an interpreter that sees this environment's packages except
    ``missing``, which it cannot import (as on a machine where that library is not installed). Spans go to stdout."""
    import sysconfig

    env_dir = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    site = next(env_dir.glob("lib/python*/site-packages"))
    (site / "outer.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    (site / "block_missing.py").write_text(
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name == {missing!r} or name.startswith({missing + '.'!r}):\n"
        "            raise ModuleNotFoundError(f\"No module named '{name}'\", name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    (site / "zz_block_missing.pth").write_text("import block_missing\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHON"))}
    env.update(
        PATH=f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}",
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        YOLO_OFFLINE="1",
        HF_HUB_OFFLINE="1",
    )
    instrument = Path(sysconfig.get_paths()["scripts"]) / "opentelemetry-instrument"
    return subprocess.run(
        [str(env_dir / "bin" / "python"), str(instrument), "python", str(app)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=workdir,
    )


@pytest.fixture(name="run_json")
def _run_json() -> Any:
    return run_json


@pytest.fixture(name="run_python")
def _run_python() -> Any:
    return run_python
