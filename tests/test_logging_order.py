"""Logging works in any order, and the shipped fixtures pass in a user's suite that turns warnings into errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any


def test_basic_config_after_configure_prints_and_exports(run_json: Any) -> None:
    """`logging.basicConfig(level=INFO)` after configure() still installs the console handler, and INFO records are
    both printed and exported."""
    result = run_json(
        """
        import json, logging, sys
        import otel_vision
        from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

        handle = otel_vision.configure(exporter="none", gpu=False)
        memory = InMemoryLogRecordExporter()
        handle.logger_provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="PRINTED %(message)s")
        logging.getLogger("app").info("model loaded")
        handle.force_flush()
        exported = [r.log_record.body for r in memory.get_finished_logs()]
        handle.shutdown()
        print(json.dumps(exported))
        """
    )
    assert result == ["model loaded"]


def test_basic_config_printing(run_python: Any) -> None:
    """The application's own handler prints once; no duplicate from Python's last-resort printer."""
    result = run_python(
        """
        import logging, otel_vision
        otel_vision.configure(exporter="none", gpu=False)
        logging.basicConfig(level=logging.INFO, format="PRINTED %(levelname)s %(message)s")
        logging.getLogger("app").info("model loaded")
        logging.getLogger("app").warning("disk almost full")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "PRINTED INFO model loaded" in result.stderr
    assert result.stderr.count("disk almost full") == 1


def test_dict_config_after_configure_keeps_exporting(run_json: Any) -> None:
    """`logging.config.dictConfig()` after configure() replaces the application's handlers, not ours."""
    result = run_json(
        """
        import json, logging, logging.config
        import otel_vision
        from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

        handle = otel_vision.configure(exporter="none", gpu=False)
        memory = InMemoryLogRecordExporter()
        handle.logger_provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
        logging.config.dictConfig({"version": 1, "root": {"level": "INFO", "handlers": []}})
        logging.getLogger("app").info("still exported")
        handle.force_flush()
        print(json.dumps([r.log_record.body for r in memory.get_finished_logs()]))
        """
    )
    assert result == ["still exported"]


def test_no_deprecation_warning_from_configure(run_python: Any) -> None:
    """configure() uses no deprecated OpenTelemetry API: it runs clean under `-W error`."""
    result = run_python(
        """
        import warnings
        warnings.simplefilter("error")
        import logging, otel_vision
        handle = otel_vision.configure(exporter="none", gpu=False)
        logging.getLogger("app").warning("hello")
        handle.shutdown()
        """
    )
    assert result.returncode == 0, result.stderr


def test_fixtures_pass_under_filterwarnings_error(tmp_path: Path) -> None:
    """A user's suite with `filterwarnings = error` can use `vision_telemetry` and `fake_gpu` (pytest plugin)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings =\n    error\n")
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            import logging
            import otel_vision

            def test_stage(vision_telemetry):
                with otel_vision.stage("preprocess"):
                    logging.getLogger("user").warning("inside")
                assert vision_telemetry.span("preprocess").name == "preprocess"
                assert [r.log_record.body for r in vision_telemetry.logs()] == ["inside"]

            def test_gpu(vision_telemetry, fake_gpu):
                with otel_vision.stage("inference"):
                    fake_gpu.cuda.run(0.004)
                assert vision_telemetry.span("inference").attributes["gpu.time"] > 0
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTEST_"))}
    result = subprocess.run(
        # pytest-asyncio warns about its own unset option under "error": not ours, so it stays out.
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:asyncio", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
