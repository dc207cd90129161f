"""Terminal rendering of finished spans: a waterfall per trace, a per-stage summary, and an exporter that prints them.

Public through ``otel_vision``: `render_waterfall`, `render_summary` and `WaterfallSpanExporter` (also selectable as
``OTEL_TRACES_EXPORTER=waterfall`` or ``configure(exporter="waterfall")``). Output fits the given width and falls back
to plain ASCII where the terminal's encoding cannot show box-drawing characters.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import StatusCode

from otel_vision import attributes as a

__all__ = ["StageStats", "WaterfallSpanExporter", "render_summary", "render_waterfall", "stage_stats"]

_SHOWN = {
    a.VISION_BATCH_SIZE: "batch",
    a.VISION_DETECTIONS_COUNT: "detections",
    a.DIFFUSION_STEP_INDEX: "step",
    a.VISION_ITEMS: "items",
}
_UNICODE = {"bar": "█", "mid": "├─ ", "last": "└─ ", "pipe": "│  ", "cut": "…"}
_ASCII = {"bar": "#", "mid": "|- ", "last": "`- ", "pipe": "|  ", "cut": "~"}
_DEFAULT_WIDTH = 100


def can_encode(stream: Any, text: str = "█├└│…") -> bool:
    """Whether ``stream``'s encoding can show ``text`` (``False`` on ``PYTHONIOENCODING=ascii`` terminals)."""
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.2f} ms"


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


def render_waterfall(spans: Iterable[ReadableSpan], width: int | None = None, ascii: bool = False) -> str:
    """Draw each trace as an indented tree with a time bar per span, durations and GPU figures.

    ```python
    print(otel_vision.render_waterfall(exporter.get_finished_spans(), width=80))
    ```

    Args:
        spans: finished spans of one or more traces (incomplete traces are drawn from what is there).
        width: total line width in columns (default 100); the bars and labels shrink to fit.
        ascii: draw with ``#``, ``|-`` and ``` `- ``` instead of block and box-drawing characters.
    """
    by_trace: dict[int, list[ReadableSpan]] = defaultdict(list)
    for span in spans:
        if span.context is not None and span.start_time is not None and span.end_time is not None:
            by_trace[span.context.trace_id].append(span)
    ordered = sorted(by_trace.items(), key=lambda kv: min(s.start_time or 0 for s in kv[1]))
    glyphs = _ASCII if ascii else _UNICODE
    total = max(40, width or _DEFAULT_WIDTH)
    return "\n\n".join(_render_trace(trace_id, members, total, glyphs) for trace_id, members in ordered)


def _render_trace(trace_id: int, members: list[ReadableSpan], total: int, glyphs: dict[str, str]) -> str:
    ids = {s.context.span_id for s in members if s.context is not None}
    children: dict[int | None, list[ReadableSpan]] = defaultdict(list)
    for span in members:
        parent = span.parent.span_id if span.parent is not None and span.parent.span_id in ids else None
        children[parent].append(span)
    for group in children.values():
        group.sort(key=lambda s: s.start_time or 0)
    t0 = min(s.start_time or 0 for s in members)
    t1 = max(s.end_time or 0 for s in members)
    rows: list[tuple[str, ReadableSpan]] = []

    def walk(span: ReadableSpan, prefix: str, last: bool, depth: int) -> None:
        assert span.context is not None
        branch = "" if depth == 0 else (glyphs["last"] if last else glyphs["mid"])
        rows.append((prefix + branch + span.name, span))
        kids = children.get(span.context.span_id, [])
        extension = "" if depth == 0 else ("   " if last else glyphs["pipe"])
        for i, kid in enumerate(kids):
            walk(kid, prefix + extension, i == len(kids) - 1, depth + 1)

    for root in children.get(None, []):
        walk(root, "", True, 0)
    # Columns: 2 indent, label, bar, duration (10), details. Narrow terminals shrink the label, then the bar.
    name_width = min(34, max(len(label) for label, _ in rows) + 1, max(12, total // 3))
    bar_width = max(8, min(80, total - name_width - 2 - 1 - 11 - 24))
    scale = bar_width / max(t1 - t0, 1)
    lines = [f"trace {trace_id:032x}  {_ms(t1 - t0)}"[:total]]
    for label, span in rows:
        assert span.start_time is not None and span.end_time is not None
        if len(label) > name_width - 1:
            label = label[: name_width - 2] + glyphs["cut"]
        start = int((span.start_time - t0) * scale)
        length = max(1, int(round((span.end_time - span.start_time) * scale)))
        bar = (" " * start + glyphs["bar"] * length)[:bar_width].ljust(bar_width)
        line = f"  {label.ljust(name_width)}{bar} {_ms(span.end_time - span.start_time):>10}  {_details(span)}"
        line = line.rstrip()
        lines.append(line if len(line) <= total else line[: total - 1] + glyphs["cut"])
    return "\n".join(lines)


@dataclass(frozen=True)
class StageStats:
    """Host durations of one span name, the first call (warm-up) apart from the steady state."""

    name: str
    count: int
    first_ms: float
    """The first call: includes lazy initialisation, allocator growth and kernel autotuning."""
    p50_ms: float | None
    """Median of the calls after the first (``None`` when there was only one)."""
    p95_ms: float | None
    mean_ms: float | None
    gpu_ms: float | None
    """Mean device time (``gpu.time``) over the steady-state calls, where measured."""


def stage_stats(spans: Sequence[ReadableSpan]) -> list[StageStats]:
    """Per span name, in order of first appearance: the first call, then p50/p95/mean of the calls after it."""
    host: dict[str, list[tuple[int, float, float | None]]] = defaultdict(list)
    for span in spans:
        if span.start_time is None or span.end_time is None:
            continue
        value = (span.attributes or {}).get(a.GPU_TIME)
        gpu = float(value) * 1e3 if isinstance(value, int | float) else None
        host[span.name].append((span.start_time, (span.end_time - span.start_time) / 1e6, gpu))
    stats = []
    for name, samples in sorted(host.items(), key=lambda kv: min(s[0] for s in kv[1])):
        samples.sort()
        first, steady = samples[0], samples[1:]
        durations = sorted(s[1] for s in steady)
        gpus = [s[2] for s in steady if s[2] is not None] or ([first[2]] if first[2] is not None else [])
        p95 = durations[min(len(durations) - 1, int(round(0.95 * (len(durations) - 1))))] if durations else None
        stats.append(
            StageStats(
                name=name,
                count=len(samples),
                first_ms=first[1],
                p50_ms=statistics.median(durations) if durations else None,
                p95_ms=p95,
                mean_ms=statistics.fmean(durations) if durations else None,
                gpu_ms=statistics.fmean(gpus) if gpus else None,
            )
        )
    return stats


def render_summary(spans: Sequence[ReadableSpan]) -> str:
    """A table of host duration per span name: count, the first call (warm-up), then p50, p95 and mean of the
    remaining calls (steady state), and mean GPU time where known."""

    def cell(value: float | None) -> str:
        return f"{value:10.2f}" if value is not None else f"{'-':>10}"

    rows = [
        f"  {'span':<22} {'count':>6} {'first ms':>10} {'p50 ms':>10} {'p95 ms':>10} {'mean ms':>10} {'gpu ms':>10}"
    ]
    for s in stage_stats(spans):
        rows.append(
            f"  {s.name[:22]:<22} {s.count:>6} {s.first_ms:10.2f} {cell(s.p50_ms)} {cell(s.p95_ms)} "
            f"{cell(s.mean_ms)} {cell(s.gpu_ms)}"
        )
    return "\n".join(rows)


class WaterfallSpanExporter(SpanExporter):
    """A span exporter that prints each finished trace as a waterfall on stderr (or ``out``).

    Select it with ``OTEL_TRACES_EXPORTER=waterfall`` or ``otel_vision.configure(exporter="waterfall")``; it is also
    registered under the ``opentelemetry_traces_exporter`` entry point group, so any OpenTelemetry distro can load
    it. A trace is printed when its local root span ends; spans of unfinished traces are printed at shutdown.

    Args:
        out: where to print (default ``sys.stderr``, looked up at each print).
        width: line width (default: the terminal's width).
        ascii: ASCII drawing (default: when ``out`` cannot encode box-drawing characters).
        max_pending: spans kept while waiting for their root; beyond it the oldest trace is printed as it is.
    """

    def __init__(
        self,
        out: IO[str] | None = None,
        width: int | None = None,
        ascii: bool | None = None,
        max_pending: int = 10_000,
    ) -> None:
        self._out = out
        self._width = width
        self._ascii = ascii
        self._max_pending = max_pending
        self._pending: dict[int, list[ReadableSpan]] = {}
        self._count = 0
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        ready: list[list[ReadableSpan]] = []
        with self._lock:
            for span in spans:
                if span.context is None:
                    continue
                trace_id = span.context.trace_id
                self._pending.setdefault(trace_id, []).append(span)
                self._count += 1
                if span.parent is None or span.parent.is_remote:
                    ready.append(self._pending.pop(trace_id))
                    self._count -= len(ready[-1])
            while self._count > self._max_pending and self._pending:
                oldest = next(iter(self._pending))
                ready.append(self._pending.pop(oldest))
                self._count -= len(ready[-1])
        for trace in ready:
            self._print(trace)
        return SpanExportResult.SUCCESS

    def _print(self, spans: list[ReadableSpan]) -> None:
        out = self._out or sys.stderr
        width = self._width or shutil.get_terminal_size((_DEFAULT_WIDTH, 24)).columns
        ascii = self._ascii if self._ascii is not None else not can_encode(out)
        try:
            print(render_waterfall(spans, width=width, ascii=ascii) + "\n", file=out, flush=True)
        except (OSError, ValueError):  # a closed or broken stream must not break the export path
            pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def shutdown(self) -> None:
        with self._lock:
            rest = list(self._pending.values())
            self._pending.clear()
            self._count = 0
        for trace in rest:
            self._print(trace)
