"""The public surface: what `import otel_vision` exposes and what it costs."""

from __future__ import annotations

import otel_vision


def test_all_is_sorted_and_complete() -> None:
    """`__all__` lists every public name, sorted, and nothing else."""
    public = sorted(name for name in dir(otel_vision) if name.isidentifier() and not name.startswith("_"))
    modules = {"attributes", "gpu", "instrumentation", "testing", "cli"}
    assert otel_vision.__all__ == sorted(otel_vision.__all__)
    assert set(otel_vision.__all__) - {"__version__"} == set(public) - modules


def test_import_is_cheap(run_json) -> None:
    """`import otel_vision` imports neither torch, ultralytics, diffusers nor pynvml."""
    loaded = run_json(
        """
        import json, sys
        import otel_vision
        print(json.dumps([m for m in ("torch", "ultralytics", "diffusers", "pynvml", "torchvision") if m in sys.modules]))
        """
    )
    assert loaded == []


def test_exporters_grpc_and_the_metrics_and_logs_sdks_load_after_configure_returns(run_json) -> None:
    """`import otel_vision` loads the SDK's tracer and nothing heavier; `configure()` returns without waiting for the
    exporters, gRPC, protobuf, requests or the metrics and logs SDKs: here their imports are held back on any thread
    but the main one until after `configure()` returned, which would hang it if it needed them. That what is
    recorded meanwhile arrives is `test_wire.py`'s first test: its program records right after configure()."""
    figures = run_json(
        """
        import json, sys, threading
        heavy = ("opentelemetry.sdk.metrics", "opentelemetry.sdk._logs", "opentelemetry.exporter", "grpc",
                 "google.protobuf", "requests")
        released = threading.Event()

        class HoldBack:
            def find_spec(self, name, path=None, target=None):
                if name.startswith(heavy) and threading.current_thread() is not threading.main_thread():
                    released.wait(30)
                return None

        def loaded():
            return sorted({".".join(m.split(".")[:3]) for m in sys.modules if m.startswith(heavy)})

        import otel_vision
        after_import = loaded()
        sys.meta_path.insert(0, HoldBack())
        handle = otel_vision.configure(service_name="lazy", exporter="otlp", endpoint="http://127.0.0.1:9")
        after_configure = loaded()
        released.set()
        ready = handle.wait_ready(30)
        print(json.dumps({"import": after_import, "configure": after_configure, "ready": ready, "later": loaded()}))
        """
    )
    assert figures["import"] == figures["configure"] == []
    assert figures["ready"] is True
    assert {"opentelemetry.exporter.otlp", "grpc", "opentelemetry.sdk.metrics"} <= set(figures["later"])


def test_attribute_names_are_unique() -> None:
    """No two attribute constants spell different concepts with the same string (aliases are declared as such)."""
    from otel_vision import attributes

    values: dict[str, str] = {}
    aliases = {
        ("GPU_MEMORY_ALLOCATED", "METRIC_GPU_MEMORY_ALLOCATED"),
        ("GPU_MEMORY_RESERVED", "METRIC_GPU_MEMORY_RESERVED"),
    }
    for name in dir(attributes):
        if name.isupper():
            value = getattr(attributes, name)
            if value in values:
                assert (values[value], name) in aliases or (name, values[value]) in aliases, (name, values[value])
            values[value] = name
