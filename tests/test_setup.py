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


def test_own_processors_see_early_spans_start_live(run_json: Any) -> None:
    """An `additional_span_processors` entry that works at a span's start (adds an attribute, reads the parent
    context's baggage) does so for spans started right after configure(), before its background part is done,
    exactly as later: on the span's own thread, with its parent context."""
    result = run_json(
        """
        import json, otel_vision
        from opentelemetry import baggage, context
        from opentelemetry.sdk.trace import SpanProcessor
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        class Enrich(SpanProcessor):
            def on_start(self, span, parent_context=None):
                span.set_attribute("tenant", str(baggage.get_baggage("tenant", parent_context)))

        memory = InMemorySpanExporter()
        handle = otel_vision.configure(exporter="none", gpu=False, additional_span_processors=[
            Enrich(), SimpleSpanProcessor(memory)])
        token = context.attach(baggage.set_baggage("tenant", "acme"))
        with otel_vision.request("early-request"):
            with otel_vision.stage("early-stage"):
                pass
        handle.wait_ready(30)
        with otel_vision.stage("late-stage"):
            pass
        context.detach(token)
        handle.force_flush()
        print(json.dumps({s.name: s.attributes.get("tenant") for s in memory.get_finished_spans()}))
        """
    )
    assert result == {"early-stage": "acme", "early-request": "acme", "late-stage": "acme"}


def test_what_does_not_fit_before_the_pipeline_is_complete_is_counted(run_json: Any) -> None:
    """More log records and measurements right after configure() than are held (4,096 each) are dropped, and that
    is counted where users look: `delivery()`, a `False` flush and one warning line."""
    result = run_json(
        """
        import json, logging, sys, threading, otel_vision
        from opentelemetry import metrics
        released = threading.Event()

        class HoldBack:  # keeps configure()'s background part loading until the records below are made
            def find_spec(self, name, path=None, target=None):
                if name.startswith("opentelemetry.sdk.metrics") and threading.current_thread() is not \
                        threading.main_thread():
                    released.wait(30)
                return None

        sys.meta_path.insert(0, HoldBack())
        logging.basicConfig(stream=open("/dev/null", "w"))
        handle = otel_vision.configure(exporter="console", gpu=False)
        hits = metrics.get_meter("user").create_counter("user.hits")
        for i in range(5000):
            logging.getLogger("app").warning("x")
            hits.add(1)
        released.set()
        flushed = handle.force_flush(10000)
        d = handle.delivery()
        handle.shutdown(5)
        print(json.dumps({"flushed": flushed, "logs": d["logs"].dropped, "metrics": d["metrics"].dropped}))
        """,
        {"OTEL_METRIC_EXPORT_INTERVAL": "600000"},
    )
    assert result == {"flushed": False, "logs": {"queue_full": 904}, "metrics": {"queue_full": 904}}


def test_invalid_queue_variables_are_reported_before_configure_returns(run_python: Any) -> None:
    """Warnings about OTEL_BSP_* / OTEL_BLRP_* / OTEL_VISION_EXIT_TIMEOUT come from configure() itself, once each,
    and are not exported as log records."""
    result = run_python(
        """
        import sys, otel_vision
        otel_vision.configure(exporter="console", gpu=False)
        print("configure returned", file=sys.stderr, flush=True)
        otel_vision.shutdown(2)
        """,
        {"OTEL_BSP_MAX_QUEUE_SIZE": "-5", "OTEL_BLRP_SCHEDULE_DELAY": "x", "OTEL_VISION_EXIT_TIMEOUT": "soon"},
    )
    assert result.returncode == 0, result.stderr
    err = result.stderr
    returned = err.index("configure returned")
    for variable in ("OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BLRP_SCHEDULE_DELAY", "OTEL_VISION_EXIT_TIMEOUT"):
        assert err.count(f"{variable}=") == 1, err
        assert err.index(f"{variable}=") < returned, err
    assert "OTEL_BSP_MAX_QUEUE_SIZE" not in result.stdout  # the console log exporter prints what is exported
