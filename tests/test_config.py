"""Configuration precedence (argument > environment > default) and validation."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import otel_vision
from otel_vision._config import redact_endpoint, resolve


class TestPrecedence:
    def test_defaults(self) -> None:
        """With nothing set: gRPC, OTLP for all signals, GPU on with a 1 s interval, logs at INFO."""
        s = resolve(environ={})
        assert (s.protocol, s.traces_exporter, s.metrics_exporter, s.logs_exporter) == ("grpc", "otlp", "otlp", "otlp")
        assert (s.gpu, s.gpu_sample_interval, s.gpu_peak_memory, s.logs, s.log_level) == (True, 1.0, True, True, 20)
        assert s.endpoint is None and s.sample_rate is None and s.disabled is False

    def test_environment_over_default(self) -> None:
        """Our own and the standard variables change the defaults."""
        s = resolve(
            environ={
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_TRACES_EXPORTER": "console",
                "OTEL_LOGS_EXPORTER": "none",
                "OTEL_VISION_GPU_SAMPLE_INTERVAL": "0.25",
                "OTEL_VISION_GPU": "off",
                "OTEL_VISION_LOG_LEVEL": "warning",
                "OTEL_SDK_DISABLED": "true",
            }
        )
        assert (s.protocol, s.traces_exporter, s.metrics_exporter, s.logs_exporter) == (
            "http/protobuf",
            "console",
            "otlp",
            "none",
        )
        assert (s.gpu_sample_interval, s.gpu, s.log_level, s.disabled) == (0.25, False, 30, True)

    def test_argument_over_environment(self) -> None:
        """Explicit arguments win over the variables."""
        env = {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_VISION_GPU_SAMPLE_INTERVAL": "5",
            "OTEL_VISION_GPU": "0",
        }
        s = resolve(protocol="grpc", gpu_sample_interval=0.5, gpu=True, exporter="none", environ=env)
        assert (s.protocol, s.gpu_sample_interval, s.gpu, s.traces_exporter) == ("grpc", 0.5, True, "none")

    def test_standard_variables_resolved_per_signal(self) -> None:
        """Endpoints and timeouts follow the specification: per-signal variables win, HTTP appends the signal path."""
        s = resolve(
            environ={
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "https://logs.example.com/ingest",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "3",
                "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "0.5",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.25",
            }
        )
        assert s.endpoint_for("traces") == "http://collector:4318/v1/traces"
        assert s.endpoint_for("logs") == "https://logs.example.com/ingest"
        assert (s.timeout_for("traces"), s.timeout_for("metrics")) == (3.0, 0.5)
        assert (s.sampler, s.sampler_arg, s.problems) == ("parentbased_traceidratio", 0.25, ())


class TestInvalidVariables:
    @pytest.mark.parametrize(
        ("env", "name", "check"),
        [
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": "127.0.0.1:4317"}, "OTEL_EXPORTER_OTLP_ENDPOINT",
             lambda s: s.endpoint_for("traces") == "http://localhost:4317"),
            ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector:4318/v1/traces"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
             lambda s: s.endpoint_for("traces") == "http://localhost:4317"),
            ({"OTEL_EXPORTER_OTLP_TIMEOUT": "-5"}, "OTEL_EXPORTER_OTLP_TIMEOUT", lambda s: s.timeout_for("logs") == 10.0),
            ({"OTEL_EXPORTER_OTLP_TIMEOUT": "ten"}, "OTEL_EXPORTER_OTLP_TIMEOUT", lambda s: s.timeout_for("traces") == 10.0),
            ({"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "ten", "OTEL_EXPORTER_OTLP_TIMEOUT": "4"},
             "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", lambda s: s.timeout_for("traces") == 4.0),
            ({"OTEL_TRACES_SAMPLER": "bogus"}, "OTEL_TRACES_SAMPLER", lambda s: s.sampler == "parentbased_always_on"),
            ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG",
             lambda s: s.sampler_arg == 1.0),
            ({"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_PROTOCOL", lambda s: s.protocol == "grpc"),
            ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER", lambda s: s.traces_exporter == "otlp"),
            ({"OTEL_VISION_GPU": "maybe"}, "OTEL_VISION_GPU", lambda s: s.gpu is True),
            ({"OTEL_VISION_GPU_SAMPLE_INTERVAL": "0.001"}, "OTEL_VISION_GPU_SAMPLE_INTERVAL",
             lambda s: s.gpu_sample_interval == 1.0),
            ({"OTEL_VISION_GPU_SAMPLE_INTERVAL": "fast"}, "OTEL_VISION_GPU_SAMPLE_INTERVAL",
             lambda s: s.gpu_sample_interval == 1.0),
            ({"OTEL_VISION_GPU_HISTORY": "nan"}, "OTEL_VISION_GPU_HISTORY", lambda s: s.gpu_history == 300.0),
            ({"OTEL_VISION_LOG_LEVEL": "LOUD"}, "OTEL_VISION_LOG_LEVEL", lambda s: s.log_level == 20),
            ({"OTEL_SDK_DISABLED": "yes please"}, "OTEL_SDK_DISABLED", lambda s: s.disabled is False),
        ],
    )  # fmt: skip
    def test_warned_and_defaulted(self, env: dict[str, str], name: str, check: Any, caplog: Any) -> None:
        """An invalid variable is one warning naming it and its value, and the default is used (OpenTelemetry spec)."""
        with caplog.at_level(logging.WARNING, logger="otel_vision"):
            s = resolve(environ=env)
        assert check(s)
        (value,) = env.values() if len(env) == 1 else [env[name]]
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 1 and name in messages[0] and repr(value) in messages[0], messages
        assert s.invalid_variables == (name,) and name in s.problems[0]

    def test_secrets_not_in_the_warning(self, caplog: Any) -> None:
        """The warning for an invalid endpoint does not show its user-info."""
        with caplog.at_level(logging.WARNING, logger="otel_vision"):
            resolve(environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://user:s3cret@collector:4317"})
        assert caplog.records and "s3cret" not in caplog.text and "collector:4317" in caplog.text


class TestRedactEndpoint:
    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("https://tenant:s3cret@otlp.example.com:4318/v1/traces", "https://***@otlp.example.com:4318/v1/traces"),
            ("http://token@collector:4317", "http://***@collector:4317"),
            ("https://collector/v1/traces?api_key=s3cret&x=1", "https://collector/v1/traces?api_key=***&x=***"),
            ("user:s3cret@collector:4317", "***@collector:4317"),
            ("http://127.0.0.1:4317", "http://127.0.0.1:4317"),
        ],
    )
    def test_redacted(self, url: str, shown: str) -> None:
        """User-info and query values never survive; the rest of the URL does."""
        assert redact_endpoint(url) == shown


class TestBadArguments:
    @pytest.mark.parametrize(
        ("kwargs", "error", "expected"),
        [
            ({"protocol": "udp"}, ValueError, "protocol='udp' is not an OTLP protocol"),
            ({"exporter": "zipkin"}, ValueError, "exporter='zipkin' is not supported"),
            ({"sample_rate": 1.5}, ValueError, "sample_rate=1.5 must be between 0 and 1"),
            ({"sample_rate": True}, TypeError, "sample_rate=True must be a number"),
            ({"gpu_sample_interval": -1}, ValueError, "gpu_sample_interval=-1 must be a finite number of seconds"),
            ({"gpu_sample_interval": "fast"}, TypeError, "gpu_sample_interval='fast' must be a number of seconds"),
            ({"gpu": "yes"}, TypeError, "gpu='yes' must be True or False"),
            ({"endpoint": "localhost:4317"}, ValueError, "endpoint='localhost:4317' needs a scheme"),
            ({"endpoint": "127.0.0.1:4317"}, ValueError, "endpoint='127.0.0.1:4317' needs a scheme"),
            ({"endpoint": 4317}, TypeError, "endpoint=4317 must be a URL string"),
            ({"service_name": ""}, ValueError, "service_name='' must not be empty"),
            ({"service_name": 7}, TypeError, "service_name=7 must be a string"),
            ({"log_level": "verbose"}, ValueError, "log_level='verbose' is not a logging level"),
            ({"headers": "Authorization=Bearer x"}, TypeError, "headers must be a mapping such as {'authorization'"),
            (
                {"headers": {"authorization": 5}},
                TypeError,
                "headers['authorization'] is of type int: it must be a string",
            ),
            ({"resource_attributes": ["a"]}, TypeError, "resource_attributes must be a mapping such as"),
            ({"resource_attributes": {"k": object()}}, TypeError, "resource_attributes['k'] is <object"),
        ],
    )
    def test_named_with_what_is_expected(self, kwargs: dict[str, object], error: type, expected: str) -> None:
        """A wrong type raises TypeError and a wrong value ValueError, naming the argument and what is expected."""
        with pytest.raises(error) as caught:
            resolve(environ={}, **kwargs)  # type: ignore[arg-type]
        assert str(caught.value).startswith(expected), str(caught.value)

    def test_header_values_not_in_the_error(self) -> None:
        """A headers argument of the wrong shape is named without showing the credentials it carries."""
        for headers in ("Authorization=Bearer s3cret", {"authorization": b"Bearer s3cret"}):
            with pytest.raises(TypeError) as caught:
                resolve(environ={}, headers=headers)  # type: ignore[arg-type]
            assert "s3cret" not in str(caught.value) and "headers" in str(caught.value)

    def test_endpoint_secret_not_in_the_error(self) -> None:
        """An endpoint argument with a bad scheme is named without its user-info."""
        with pytest.raises(ValueError) as caught:
            resolve(environ={}, endpoint="ftp://user:s3cret@collector:4317")
        assert "s3cret" not in str(caught.value) and "collector:4317" in str(caught.value)

    @pytest.mark.parametrize(
        ("kwargs", "expected"),
        [
            ({"additional_span_processors": ["x"]}, "additional_span_processors[0]='x' is not a span processor"),
            ({"additional_span_processors": "x"}, "additional_span_processors must be a list of span processors"),
            ({"additional_metric_readers": [object()]}, "additional_metric_readers[0]=<object"),
            ({"additional_metric_readers": 3}, "additional_metric_readers must be a list of metric readers"),
        ],
    )
    def test_extensions_checked_before_anything_runs(self, kwargs: dict[str, Any], expected: str) -> None:
        """configure() rejects processors and readers of the wrong kind at once, not on the first span."""
        with pytest.raises(TypeError) as caught:
            otel_vision.configure(exporter="none", gpu=False, **kwargs)
        assert str(caught.value).startswith(expected), str(caught.value)


def test_waterfall_variable_alone_is_a_local_view() -> None:
    """OTEL_TRACES_EXPORTER=waterfall without any endpoint: metrics and logs are not sent to localhost; with an
    endpoint or their own variables they are."""
    local = resolve(environ={"OTEL_TRACES_EXPORTER": "waterfall"})
    assert (local.traces_exporter, local.metrics_exporter, local.logs_exporter) == ("waterfall", "none", "none")
    remote = resolve(environ={"OTEL_TRACES_EXPORTER": "waterfall", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
    assert (remote.metrics_exporter, remote.logs_exporter) == ("otlp", "otlp")
    chosen = resolve(environ={"OTEL_TRACES_EXPORTER": "waterfall", "OTEL_LOGS_EXPORTER": "console"})
    assert (chosen.metrics_exporter, chosen.logs_exporter) == ("none", "console")
