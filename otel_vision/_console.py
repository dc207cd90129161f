"""Terminal rendering of finished spans: a waterfall per trace and a per-stage summary table."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from otel_vision import attributes as a

_BAR = "█"
_NAME_WIDTH = 34
_SHOWN = {
    a.VISION_BATCH_SIZE: "batch",
    a.VISION_DETECTIONS_COUNT: "detections",
    a.DIFFUSION_STEP_INDEX: "step",
    a.VISION_ITEMS: "items",
}


def _ms(ns: int) -> str:
    return f"{ns / 1e6:9.2f} ms"


def _details(span: ReadableSpan) -> str:
    attrs = span.attributes or {}
    parts = []
    if a.GPU_TIME in attrs:
        parts.append(f"gpu {float(attrs[a.GPU_TIME]) * 1e3:.2f} ms")  # type: ignore[arg-type]  # numeric
    if a.GPU_MEMORY_PEAK in attrs:
        parts.append(f"peak {int(attrs[a.GPU_MEMORY_PEAK]) / 2**20:.1f} MiB")  # type: ignore[arg-type]  # numeric
    if a.GPU_UTILIZATION in attrs:
        parts.append(f"util {float(attrs[a.GPU_UTILIZATION]):.0%}")  # type: ignore[arg-type]  # numeric
    for key, label in _SHOWN.items():
        if key in attrs:
            parts.append(f"{label}={attrs[key]!s}")
    if span.status.status_code is StatusCode.ERROR:
        parts.append(f"ERROR {attrs.get(a.ERROR_TYPE, '')!s}".rstrip())
    return "  ".join(parts)


def render_waterfall(spans: Iterable[ReadableSpan], width: int = 40) -> str:
    """Draw each trace as an indented tree with a time bar per span, durations and GPU figures."""
    by_trace: dict[int, list[ReadableSpan]] = defaultdict(list)
    for span in spans:
        if span.context is not None and span.start_time is not None and span.end_time is not None:
            by_trace[span.context.trace_id].append(span)
    ordered = sorted(by_trace.items(), key=lambda kv: min(s.start_time or 0 for s in kv[1]))
    return "\n\n".join(_render_trace(trace_id, members, width) for trace_id, members in ordered)


def _render_trace(trace_id: int, members: list[ReadableSpan], width: int) -> str:
    ids = {s.context.span_id for s in members if s.context is not None}
    children: dict[int | None, list[ReadableSpan]] = defaultdict(list)
    for span in members:
        parent = span.parent.span_id if span.parent is not None and span.parent.span_id in ids else None
        children[parent].append(span)
    for group in children.values():
        group.sort(key=lambda s: s.start_time or 0)
    t0 = min(s.start_time or 0 for s in members)
    t1 = max(s.end_time or 0 for s in members)
    scale = width / max(t1 - t0, 1)
    lines = [f"trace {trace_id:032x}  {_ms(t1 - t0).strip()}"]

    def walk(span: ReadableSpan, prefix: str, last: bool, depth: int) -> None:
        assert span.start_time is not None and span.end_time is not None and span.context is not None
        branch = "" if depth == 0 else ("└─ " if last else "├─ ")
        label = (prefix + branch + span.name)[:_NAME_WIDTH].ljust(_NAME_WIDTH)
        start = int((span.start_time - t0) * scale)
        length = max(1, int(round((span.end_time - span.start_time) * scale)))
        bar = (" " * start + _BAR * length)[:width].ljust(width)
        lines.append(f"  {label} {bar} {_ms(span.end_time - span.start_time)}  {_details(span)}".rstrip())
        kids = children.get(span.context.span_id, [])
        extension = "" if depth == 0 else ("   " if last else "│  ")
        for i, kid in enumerate(kids):
            walk(kid, prefix + extension, i == len(kids) - 1, depth + 1)

    for root in children.get(None, []):
        walk(root, "", True, 0)
    return "\n".join(lines)


def render_summary(spans: Sequence[ReadableSpan]) -> str:
    """A table of host duration per span name: count, p50, p95, mean, and mean GPU time where known."""
    host: dict[str, list[float]] = defaultdict(list)
    gpu: dict[str, list[float]] = defaultdict(list)
    for span in spans:
        if span.start_time is None or span.end_time is None:
            continue
        host[span.name].append((span.end_time - span.start_time) / 1e6)
        value = (span.attributes or {}).get(a.GPU_TIME)
        if isinstance(value, float):
            gpu[span.name].append(value * 1e3)
    rows = [f"  {'span':<22} {'count':>6} {'p50 ms':>10} {'p95 ms':>10} {'mean ms':>10} {'gpu ms':>10}"]
    for name, values in host.items():
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
        gpu_mean = f"{statistics.fmean(gpu[name]):10.2f}" if gpu.get(name) else f"{'-':>10}"
        rows.append(
            f"  {name[:22]:<22} {len(values):>6} {statistics.median(values):10.2f} {p95:10.2f} "
            f"{statistics.fmean(values):10.2f} {gpu_mean}"
        )
    return "\n".join(rows)
