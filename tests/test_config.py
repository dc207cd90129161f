"""Configuration precedence (argument > environment > default) and validation."""

from __future__ import annotations

import pytest

from otel_vision._config import resolve


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

    def test_standard_variables_left_to_the_sdk(self) -> None:
        """Endpoint, headers, service name and sampler from the environment are not parsed by us."""
        s = resolve(
            environ={
                "OTEL_EXPORTER_OTLP_ENDPOINT": "not even a url",
                "OTEL_SERVICE_NAME": "svc",
                "OTEL_TRACES_SAMPLER": "always_off",
            }
        )
        assert s.endpoint is None and s.service_name is None and s.sample_rate is None


class TestValidation:
    @pytest.mark.parametrize(
        ("env", "name"),
        [
            ({"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
            ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
            ({"OTEL_VISION_GPU": "maybe"}, "OTEL_VISION_GPU"),
            ({"OTEL_VISION_GPU_SAMPLE_INTERVAL": "0.001"}, "OTEL_VISION_GPU_SAMPLE_INTERVAL"),
            ({"OTEL_VISION_GPU_SAMPLE_INTERVAL": "fast"}, "OTEL_VISION_GPU_SAMPLE_INTERVAL"),
            ({"OTEL_VISION_GPU_HISTORY": "nan"}, "OTEL_VISION_GPU_HISTORY"),
            ({"OTEL_VISION_LOG_LEVEL": "LOUD"}, "OTEL_VISION_LOG_LEVEL"),
            ({"OTEL_SDK_DISABLED": "yes please"}, "OTEL_SDK_DISABLED"),
        ],
    )
    def test_bad_variable_named(self, env: dict[str, str], name: str) -> None:
        """A bad environment value raises ValueError naming the variable."""
        with pytest.raises(ValueError, match=name):
            resolve(environ=env)

    @pytest.mark.parametrize(
        ("kwargs", "name"),
        [
            ({"protocol": "udp"}, "protocol"),
            ({"exporter": "zipkin"}, "exporter"),
            ({"sample_rate": 1.5}, "sample_rate"),
            ({"sample_rate": True}, "sample_rate"),
            ({"gpu_sample_interval": -1}, "gpu_sample_interval"),
            ({"endpoint": "localhost:4317"}, "endpoint"),
            ({"service_name": ""}, "service_name"),
            ({"log_level": "verbose"}, "log_level"),
            ({"resource_attributes": {"k": object()}}, "resource_attributes"),
        ],
    )
    def test_bad_argument_named(self, kwargs: dict[str, object], name: str) -> None:
        """A bad argument raises ValueError naming the argument, even when the environment is valid."""
        with pytest.raises(ValueError, match=name):
            resolve(environ={}, **kwargs)  # type: ignore[arg-type]
