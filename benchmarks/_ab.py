"""Shared by the overhead benchmarks: the default configuration, alternating samples, the reports.

Default configuration means what `otel_vision.configure()` builds when a user sets nothing but the endpoint: OTLP
over gRPC for traces, metrics and logs to a live collector (rotel on 127.0.0.1, started here and dropping what it
gets), GPU telemetry on (on a machine without a GPU it finds none, as in production on CPU). ``--config
null-exporter`` is a labelled variant (no OTLP exporters; spans through a BatchSpanProcessor to an exporter that drops
them), for comparison with figures taken that way before.

The order of the variants changes on every sample (not every block of samples), so slow drifts of a shared VM
(other tenants, frequency changes) hit all variants alike. Each sample records wall time on the calling thread and
this process's CPU time (all threads); after the wall clock stops, the export path is flushed inside the CPU
measurement, so the export threads' work on the sample's spans counts in its CPU time. CPU time does not count time
the hypervisor gave to someone else, so it is the steadier measure of the work we add.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

CONFIGS = ("default", "null-exporter")


class NullExporter(SpanExporter):
    """Accepts every batch and drops it: the exporter's cost stays out of the measurement."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


@contextlib.contextmanager
def configured(service_name: str, config: str = "default") -> Iterator[Any]:
    """`otel_vision.configure()` in ``config`` (see the module docstring); yields the Handle, shuts down after."""
    import otel_vision

    collector = None
    try:
        if config == "default":
            from bench_stage import start_rotel

            collector, grpc, _ = start_rotel()
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{grpc}"
            os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
            handle = otel_vision.configure(service_name=service_name)
        else:
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            handle = otel_vision.configure(
                service_name=service_name, exporter="none", logs=False,
                additional_span_processors=[BatchSpanProcessor(NullExporter())],
            )  # fmt: skip
        yield handle
        if config == "default":
            lost = {signal: s.lost for signal, s in handle.delivery().items()}
            print(f"\nlost on the way to the collector: {lost}")
    finally:
        otel_vision.shutdown()
        if collector is not None:
            collector.terminate()
            collector.wait(10)


def describe(config: str) -> str:
    if config == "default":
        return "default (OTLP/gRPC traces, metrics and logs to a live rotel on 127.0.0.1, GPU telemetry on)"
    return "null-exporter (no OTLP exporters; BatchSpanProcessor to an exporter that drops spans)"


@dataclass
class Samples:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


@dataclass
class Variant:
    """What one variant runs per sample, with set-up and tear-down outside the timed part."""

    run: Callable[[], None]
    before: Callable[[], None] | None = None
    after: Callable[[], None] | None = None


def rounds(
    variants: Mapping[str, Variant], samples: int, settle: Callable[[], None] | None = None, seed: int = 0
) -> dict[str, Samples]:
    """One sample of each variant per round, in a shuffled order; two rounds of warm-up first."""
    results = {name: Samples() for name in variants}
    order = list(variants)
    shuffle = random.Random(seed).shuffle
    for index in range(samples + 2):
        shuffle(order)
        for name in order:
            variant = variants[name]
            if variant.before is not None:
                variant.before()
            cpu, wall = time.process_time(), time.perf_counter()
            variant.run()
            wall = time.perf_counter() - wall
            if settle is not None:
                settle()
            cpu = time.process_time() - cpu
            if variant.after is not None:
                variant.after()
            if index >= 2:
                results[name].wall.append(wall)
                results[name].cpu.append(cpu)
    return results


def alternate(
    run: Callable[[], None],
    instrument: Callable[[], None],
    uninstrument: Callable[[], None],
    samples: int,
    settle: Callable[[], None] | None = None,
) -> tuple[Samples, Samples]:
    """Time ``run`` without and with instrumentation, alternating the order on every sample; warm both first."""
    results = rounds({"plain": Variant(run), "traced": Variant(run, instrument, uninstrument)}, samples, settle)
    return results["plain"], results["traced"]


def _overhead(plain: list[float], traced: list[float]) -> str:
    p, t = statistics.median(plain), statistics.median(traced)
    paired = sorted(b / a - 1 for a, b in zip(plain, traced, strict=True))
    q1, q3 = paired[len(paired) // 4], paired[(3 * len(paired)) // 4]
    low, high = _median_interval(paired)
    return (
        f"{p * 1e3:.3f} | {t * 1e3:.3f} | {(t / p - 1) * 100:+.2f} % | {statistics.median(paired) * 100:+.2f} % "
        f"[{q1 * 100:+.2f}, {q3 * 100:+.2f}] | {low * 100:+.2f} … {high * 100:+.2f} %"
    )


def _median_interval(ordered: list[float]) -> tuple[float, float]:
    """A 95 % confidence interval of the median of ``ordered`` (sorted), distribution-free: the order statistics
    n/2 ∓ 0.98·√n (the sign test's normal approximation), so the interval narrows as samples are added."""
    n = len(ordered)
    half_width = 0.98 * math.sqrt(n)
    low = max(0, math.floor(n / 2 - half_width))
    high = min(n - 1, math.ceil(n / 2 + half_width) - 1)
    return ordered[low], ordered[high]


def report(title: str, unit: str, plain: Samples, traced: Samples, calls: int = 1) -> None:
    """Print medians and overheads as a Markdown table (seconds per sample of ``calls`` calls in, ms per call out)."""
    plain = Samples([w / calls for w in plain.wall], [c / calls for c in plain.cpu])
    traced = Samples([w / calls for w in traced.wall], [c / calls for c in traced.cpu])
    print(title)
    print(
        f"| clock | not instrumented, ms per {unit} | instrumented, ms per {unit} | overhead (ratio of medians) "
        "| overhead (median of adjacent pairs, IQR) | 95 % CI of that median |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| wall | {_overhead(plain.wall, traced.wall)} |")
    print(f"| process CPU | {_overhead(plain.cpu, traced.cpu)} |")


def report_added(
    title: str, unit: str, results: Mapping[str, Samples], per: Mapping[str, int], bare_spans_per_unit: int
) -> None:
    """The isolated cost: (instrumented - plain) per ``unit``, next to a bare SDK span measured in the same rounds.

    ``results`` holds ``plain``, ``traced`` and ``bare``; ``per`` how many units (or bare spans) one sample of each
    ran. The bare SDK span is the reference that moves with the machine's load: "× bare" is the steadier figure.
    """
    print(title)
    print(
        f"| clock | added µs per {unit} (instrumented − plain, medians) | bare SDK span, µs | "
        f"added per {unit} in bare spans | bare spans our {unit} makes |"
    )
    print("|---|---:|---:|---:|---:|")
    for clock in ("wall", "cpu"):
        median = {name: statistics.median(getattr(s, clock)) / per[name] * 1e6 for name, s in results.items()}
        added, bare = median["traced"] - median["plain"], median["bare"]
        label = "wall" if clock == "wall" else "process CPU"
        print(f"| {label} | {added:.1f} | {bare:.1f} | {added / bare:.2f} | {bare_spans_per_unit} |")


def bare_spans(handle: Any, name: str, attributes: Mapping[str, Any], count: int) -> Callable[[], None]:
    """``count`` bare SDK spans (``start_as_current_span`` with ``attributes``) on the configured provider."""
    tracer = handle.tracer_provider.get_tracer("bench")
    attrs = dict(attributes)

    def run() -> None:
        for _ in range(count):
            with tracer.start_as_current_span(name, attributes=attrs):
                pass

    return run
