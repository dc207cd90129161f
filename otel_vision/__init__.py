"""otel_vision: OpenTelemetry-native tracing for vision models.

```python
import otel_vision

otel_vision.configure(service_name="yolo-edge")

@otel_vision.stage("preprocess")
def preprocess(frame): ...
```

Importing this package is cheap: it imports neither torch, ultralytics nor diffusers.
"""

from otel_vision._console import WaterfallSpanExporter, render_summary, render_waterfall
from otel_vision._instrument import (
    instrument_diffusers,
    instrument_ultralytics,
    uninstrument_diffusers,
    uninstrument_ultralytics,
)
from otel_vision._setup import Handle, configure, shutdown
from otel_vision._stage import queue_wait, request, stage
from otel_vision._version import __version__
from otel_vision.instrumentation.torch import instrument_module, uninstrument_module

__all__ = [
    "Handle",
    "WaterfallSpanExporter",
    "__version__",
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
