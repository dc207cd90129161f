"""CPU per span of the in-process tail sampler, isolated.

Finished spans are fed to `TailSampler.on_end` with a downstream that does nothing, every trace kept (the most work:
every span forwarded) and a latency threshold set; the median over rounds of process CPU per span is printed for
traces of four spans and of one span.

    python benchmarks/bench_tail_sampling.py
"""

from __future__ import annotations

import statistics
import time

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from otel_vision._tail import TailSampler


class Collect(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def finished_spans(traces: int, per_trace: int) -> list[ReadableSpan]:
    provider = TracerProvider()
    collect = Collect()
    provider.add_span_processor(collect)
    tracer = provider.get_tracer("bench")
    for _ in range(traces):
        root = tracer.start_span("predict", attributes={"vision.operation": "predict"})
        parent = trace.set_span_in_context(root)
        for _ in range(per_trace - 1):
            tracer.start_span("inference", context=parent, attributes={"vision.stage": "inference"}).end()
        root.end()
    return collect.spans


def main() -> None:
    cases = (("4 spans per trace", finished_spans(5000, 4)), ("1 span per trace", finished_spans(20000, 1)))
    for label, spans in cases:
        samples = []
        for _ in range(9):
            sampler = TailSampler([SpanProcessor()], ratio=1.0, latency={"*": 1.0})
            start = time.process_time()
            for span in spans:
                sampler.on_end(span)
            samples.append((time.process_time() - start) / len(spans) * 1e6)
        print(f"tail sampler, every trace kept, {label}: {statistics.median(samples):.2f} µs CPU per span")


if __name__ == "__main__":
    main()
