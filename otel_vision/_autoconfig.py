"""Zero-code setup: ``opentelemetry-instrument`` runs `configure()` through this configurator entry point.

With otel-vision installed, ``opentelemetry-instrument python app.py`` builds otel_vision's pipeline (OTLP export from
the standard variables, GPU telemetry, log correlation) before the instrumentors load. When another configurator is
installed too (``opentelemetry-distro``), pick ours with ``OTEL_PYTHON_CONFIGURATOR=otel_vision``.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk._configuration import _BaseConfigurator

from otel_vision._setup import configure


class OtelVisionConfigurator(_BaseConfigurator):  # the SDK's configurator base; it is not re-exported publicly
    """Calls `otel_vision.configure()` with everything taken from the environment."""

    def _configure(self, **kwargs: Any) -> None:
        configure()
