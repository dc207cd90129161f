"""configure(): resource, precedence, disabling, re-configuration; each case in a fresh interpreter."""

from __future__ import annotations

from typing import Any

PROGRAM = """
import json, otel_vision
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
exporter = InMemorySpanExporter()
handle = otel_vision.configure(exporter="none", gpu=False, additional_span_processors=[SimpleSpanProcessor(exporter)], **KWARGS)
with otel_vision.stage("inference"):
    pass
handle.force_flush()
spans = exporter.get_finished_spans()
print(json.dumps({"enabled": handle.enabled, "resource": dict(spans[0].resource.attributes) if spans else None}))
"""


def _configure(run_json: Any, env: dict[str, str] | None = None, **kwargs: Any) -> dict[str, Any]:
    result: dict[str, Any] = run_json(PROGRAM.replace("**KWARGS", f"**{kwargs!r}"), env)
    return result


class TestResource:
    def test_defaults(self, run_json: Any) -> None:
        """The resource names the host and process and carries a service.instance.id."""
        resource = _configure(run_json)["resource"]
        assert resource["host.name"] and resource["process.pid"] > 0
        assert resource["process.runtime.name"] == "cpython"
        assert len(resource["service.instance.id"]) == 36

    def test_instance_id_unique_per_process(self, run_json: Any) -> None:
        """Two processes get two different service.instance.id values."""
        first, second = (_configure(run_json)["resource"]["service.instance.id"] for _ in range(2))
        assert first != second

    def test_argument_over_environment_over_default(self, run_json: Any) -> None:
        """service_name= beats OTEL_SERVICE_NAME, which beats the default; OTEL_RESOURCE_ATTRIBUTES is merged."""
        env = {"OTEL_SERVICE_NAME": "from-env", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=staging,team=cv"}
        assert _configure(run_json, env)["resource"]["service.name"] == "from-env"
        resource = _configure(run_json, env, service_name="from-arg", resource_attributes={"team": "vision"})[
            "resource"
        ]
        assert resource["service.name"] == "from-arg"
        assert resource["deployment.environment"] == "staging" and resource["team"] == "vision"

    def test_instance_id_from_environment_wins(self, run_json: Any) -> None:
        """An operator-provided service.instance.id is kept."""
        env = {"OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=pod-7"}
        assert _configure(run_json, env)["resource"]["service.instance.id"] == "pod-7"


def test_sdk_disabled(run_json: Any) -> None:
    """OTEL_SDK_DISABLED=true: configure() returns a disabled handle and nothing is recorded."""
    assert _configure(run_json, {"OTEL_SDK_DISABLED": "true"}) == {"enabled": False, "resource": None}


def test_invalid_environment_warns_and_uses_the_default(run_python: Any) -> None:
    """An invalid variable is one warning naming it and its value; the program goes on with the default (OTel spec)."""
    result = run_python(
        "import otel_vision; print(otel_vision.configure(gpu=False, exporter='none').settings.protocol)",
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"},
    )
    assert result.returncode == 0 and result.stdout.strip() == "grpc", result.stderr
    assert "OTEL_EXPORTER_OTLP_PROTOCOL='carrier-pigeon' is invalid" in result.stderr
    assert "Traceback" not in result.stderr


def test_second_configure_does_not_stack(run_json: Any) -> None:
    """A second configure() stops the first pipeline; spans, including from tracers fetched earlier, go once to the new one."""
    result = run_json(
        """
        import json, otel_vision
        from opentelemetry import trace
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        first, second = InMemorySpanExporter(), InMemorySpanExporter()
        otel_vision.configure(exporter="none", gpu=False, additional_span_processors=[SimpleSpanProcessor(first)])
        early_tracer = trace.get_tracer("third.party")
        handle = otel_vision.configure(exporter="none", gpu=False, additional_span_processors=[SimpleSpanProcessor(second)])
        with otel_vision.stage("inference"):
            with early_tracer.start_as_current_span("library.span"):
                pass
        handle.force_flush()
        print(json.dumps({"first": len(first.get_finished_spans()),
                          "second": sorted(s.name for s in second.get_finished_spans())}))
        """
    )
    assert result == {"first": 0, "second": ["inference", "library.span"]}


def test_spans_recorded_before_the_pipeline_is_complete_survive_a_processor_that_raises(run_json: Any) -> None:
    """Spans ended right after configure() are held until its background part is done, then handed to the span
    processors in order; a user processor that raises on one of them (as it would raise into that span's own thread)
    does not stop the others, nor leave flush and shutdown waiting."""
    result = run_json(
        """
        import json, time, otel_vision
        from opentelemetry.sdk.trace import SpanProcessor
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        class RaisesOnce(SpanProcessor):
            raised = False
            def on_end(self, span):
                if not self.raised:
                    self.raised = True
                    raise RuntimeError("a user processor failed")

        memory = InMemorySpanExporter()
        handle = otel_vision.configure(exporter="none", gpu=False, additional_span_processors=[
            RaisesOnce(), SimpleSpanProcessor(memory)])
        for name in ("first", "second", "third"):
            with otel_vision.stage(name):
                pass
        started = time.monotonic()
        flushed = handle.force_flush(timeout_millis=10000)
        handle.shutdown(timeout=5)
        print(json.dumps({"spans": [s.name for s in memory.get_finished_spans()], "flushed": flushed,
                          "seconds": time.monotonic() - started < 8}))
        """
    )
    assert result == {"spans": ["second", "third"], "flushed": True, "seconds": True}


def test_application_metrics_recorded_right_after_configure_are_kept(run_json: Any) -> None:
    """The global meter provider is set by configure() itself: a library's instrument created before it, an
    application's counter created and incremented right after it (before its background part is done) and an
    observable gauge all report, as they did when configure() built everything before returning."""
    result = run_json(
        """
        import json, otel_vision
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        early_lib = metrics.get_meter("lib.before").create_counter("lib.before.count")
        reader = InMemoryMetricReader()
        handle = otel_vision.configure(exporter="none", gpu=False, additional_metric_readers=[reader])
        counter = metrics.get_meter("app").create_counter("app.events")
        counter.add(1, {"when": "right-after-configure"})
        early_lib.add(2)
        metrics.get_meter("app").create_observable_gauge("app.gauge", callbacks=[lambda o: [metrics.Observation(7)]])
        handle.wait_ready(30)
        counter.add(1, {"when": "later"})
        data = reader.get_metrics_data()
        print(json.dumps({m.name: sorted([dict(p.attributes).get("when", ""), p.value] for p in m.data.data_points)
                          for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
                          if m.name.startswith(("app", "lib"))}))
        """
    )
    assert result == {
        "lib.before.count": [["", 2]],
        "app.events": [["later", 1], ["right-after-configure", 1]],
        "app.gauge": [["", 7]],
    }
