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


def test_import_leaves_the_sdk_and_exporters_for_configure(run_json) -> None:
    """`import otel_vision` and a stage before configure() need only the OpenTelemetry API: the SDK, the exporters
    and gRPC load with configure() (the import stays cheaper than the SDK's tracer alone)."""
    loaded = run_json(
        """
        import json, sys
        import otel_vision
        with otel_vision.stage("before-configure"):
            pass
        heavy = ("opentelemetry.sdk", "opentelemetry.exporter", "grpc", "requests")
        print(json.dumps(sorted({m.split(".")[0] + "." + m.split(".")[1] if "." in m else m for m in sys.modules
                                 if m.startswith(heavy)})))
        """
    )
    assert loaded == []


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
