"""Shared by the overhead benchmarks: a span exporter that drops everything, alternating A/B samples, the report.

The A/B order alternates on every sample (not every block of samples), so slow drifts of a shared VM (other
tenants, frequency changes) hit both variants alike. Each sample records wall time and this process's CPU time
(all threads, including the exporter's): CPU time does not count time the hypervisor gave to someone else, so it is
the steadier measure of the work we add.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


class NullExporter(SpanExporter):
    """Accepts every batch and drops it: the exporter's cost stays out of the measurement."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


@dataclass
class Samples:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def alternate(
    run: Callable[[], None], instrument: Callable[[], None], uninstrument: Callable[[], None], samples: int
) -> tuple[Samples, Samples]:
    """Time ``run`` without and with instrumentation, alternating the order on every sample; warm both first."""
    plain, traced = Samples(), Samples()

    def once(into: Samples | None) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        if into is not None:
            into.wall.append(time.perf_counter() - wall)
            into.cpu.append(time.process_time() - cpu)

    for _ in range(2):
        instrument()
        once(None)
        uninstrument()
        once(None)
    for i in range(samples):
        for variant in ("plain", "traced") if i % 2 == 0 else ("traced", "plain"):
            if variant == "traced":
                instrument()
                once(traced)
                uninstrument()
            else:
                once(plain)
    return plain, traced


def _overhead(plain: list[float], traced: list[float]) -> str:
    p, t = statistics.median(plain), statistics.median(traced)
    paired = sorted(b / a - 1 for a, b in zip(plain, traced, strict=True))
    q1, q3 = paired[len(paired) // 4], paired[(3 * len(paired)) // 4]
    return (
        f"{p * 1e3:.3f} | {t * 1e3:.3f} | {(t / p - 1) * 100:+.2f} % | {statistics.median(paired) * 100:+.2f} % "
        f"[{q1 * 100:+.2f}, {q3 * 100:+.2f}]"
    )


def report(title: str, unit: str, plain: Samples, traced: Samples, calls: int = 1) -> None:
    """Print medians and overheads as a Markdown table (seconds per sample of ``calls`` calls in, ms per call out)."""
    plain = Samples([w / calls for w in plain.wall], [c / calls for c in plain.cpu])
    traced = Samples([w / calls for w in traced.wall], [c / calls for c in traced.cpu])
    print(title)
    print(
        f"| clock | not instrumented, ms per {unit} | instrumented, ms per {unit} | overhead (ratio of medians) "
        "| overhead (median of adjacent pairs, IQR) |"
    )
    print("|---|---:|---:|---:|---:|")
    print(f"| wall | {_overhead(plain.wall, traced.wall)} |")
    print(f"| process CPU | {_overhead(plain.cpu, traced.cpu)} |")
