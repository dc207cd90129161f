"""otel_vision: OpenTelemetry-native tracing for vision models.

```python
import otel_vision

otel_vision.configure(service_name="yolo-edge")

@otel_vision.stage("preprocess")
def preprocess(frame): ...
```

Importing this package is cheap: it imports neither torch, ultralytics nor diffusers.
"""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from otel_vision._instrument import (
    instrument_diffusers,
    instrument_ultralytics,
    uninstrument_diffusers,
    uninstrument_ultralytics,
)
from otel_vision._setup import Handle, configure, shutdown
from otel_vision._stage import batch, queue_wait, request, stage
from otel_vision._version import __version__
from otel_vision.instrumentation.torch import instrument_module, uninstrument_module

if _TYPE_CHECKING:
    from otel_vision._console import WaterfallSpanExporter, render_summary, render_waterfall

# `import otel_vision` loads the OpenTelemetry SDK's tracer (so `configure()` can return in milliseconds); the metrics
# and logs SDKs, the exporters and gRPC load on configure()'s background thread. The waterfall renderer loads on use.
_LAZY = {
    "WaterfallSpanExporter": "otel_vision._console",
    "render_summary": "otel_vision._console",
    "render_waterfall": "otel_vision._console",
}


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'otel_vision' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "Handle",
    "WaterfallSpanExporter",
    "__version__",
    "batch",
    "configure",
    "instrument_diffusers",
    "instrument_module",
    "instrument_ultralytics",
    "queue_wait",
    "render_summary",
    "render_waterfall",
    "request",
    "shutdown",
    "stage",
    "uninstrument_diffusers",
    "uninstrument_module",
    "uninstrument_ultralytics",
]
