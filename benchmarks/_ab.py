"""Shared by the overhead benchmarks: a span exporter that drops everything, alternating A/B rounds, the report."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


class NullExporter(SpanExporter):
    """Accepts every batch and drops it: the exporter's cost stays out of the measurement."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def alternate(
    timed: Callable[[], float], instrument: Callable[[], None], uninstrument: Callable[[], None], rounds: int
) -> tuple[list[float], list[float]]:
    """Time ``timed`` without and with instrumentation in every round, the order alternating; warm both first."""
    for _ in range(2):
        instrument()
        timed()
        uninstrument()
        timed()
    plain: list[float] = []
    traced: list[float] = []
    for r in range(rounds):
        for variant in ("plain", "traced") if r % 2 == 0 else ("traced", "plain"):
            if variant == "traced":
                instrument()
                traced.append(timed())
                uninstrument()
            else:
                plain.append(timed())
    return plain, traced


def report(title: str, unit: str, plain: list[float], traced: list[float]) -> None:
    """Print the medians and the overhead as a Markdown table (seconds in, milliseconds out)."""
    p, t = statistics.median(plain), statistics.median(traced)
    paired = sorted(b / a - 1 for a, b in zip(plain, traced, strict=True))
    q1, q3 = paired[len(paired) // 4], paired[(3 * len(paired)) // 4]
    print(title)
    print(f"| variant | ms per {unit} (median) |")
    print("|---|---:|")
    print(f"| not instrumented | {p * 1e3:.3f} |")
    print(f"| instrumented | {t * 1e3:.3f} |")
    print(f"| overhead (ratio of medians) | {(t / p - 1) * 100:+.2f} % |")
    print(
        f"| overhead (median of per-round pairs, IQR) | {statistics.median(paired) * 100:+.2f} % "
        f"[{q1 * 100:+.2f}, {q3 * 100:+.2f}] |"
    )
