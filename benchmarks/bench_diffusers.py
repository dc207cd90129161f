"""Overhead of the diffusers instrumentation, and (on CUDA) per-step ``gpu.time`` against torch.profiler.

Overhead: samples of ``--calls`` pipeline calls without instrumentation and with it alternate one by one
(``uninstrument()`` removes every hook and wrapper); the figures are medians, wall and process CPU time.

    python benchmarks/bench_diffusers.py                                   # tiny InstructPix2Pix on CPU, 20 steps
    python benchmarks/bench_diffusers.py --pipeline sd15 --device cuda --dtype float16 --size 512 --steps 20
    python benchmarks/bench_diffusers.py --pipeline sd15 --device cuda --dtype float16 --size 512 --compare-profiler

``--compare-profiler`` profiles calls with N and N+K steps; the difference in summed CUDA kernel time divided by K is
the device work of one step, compared with the median ``gpu.time`` of the ``denoise_step`` spans of the same calls.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _ab import NullExporter, alternate, report
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_vision
from otel_vision.instrumentation.diffusers import DiffusersInstrumentor


def build(args: argparse.Namespace) -> Any:
    import torch

    from otel_vision._tiny_pipelines import sd15_sized_instruct_pix2pix, tiny_instruct_pix2pix

    dtype = getattr(torch, args.dtype)
    if args.pipeline == "sd15":
        return sd15_sized_instruct_pix2pix(device=args.device, dtype=dtype)
    return tiny_instruct_pix2pix(device=args.device, dtype=dtype)


def overhead(args: argparse.Namespace) -> None:
    import torch
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from PIL import Image

    otel_vision.configure(
        service_name="bench-diffusers", exporter="none", logs=False,
        additional_span_processors=[BatchSpanProcessor(NullExporter())],
    )  # fmt: skip
    pipe = build(args)
    image = Image.new("RGB", (args.size, args.size), (90, 120, 200))
    instrumentor = DiffusersInstrumentor()

    def run() -> None:
        for _ in range(args.calls):
            pipe("make it snowy", image=image, num_inference_steps=args.steps, output_type="np")
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    plain, traced = alternate(
        run, lambda: instrumentor.instrument(pipelines=[pipe]), instrumentor.uninstrument, args.samples
    )
    otel_vision.shutdown()
    title = (
        f"{args.pipeline} InstructPix2Pix {args.device} {args.dtype} {args.size}x{args.size} {args.steps} steps; "
        f"Python {platform.python_version()}; {args.samples} alternating samples of {args.calls} call(s)"
    )
    report(title, "call", plain, traced, args.calls)


def compare_profiler(args: argparse.Namespace) -> None:
    import torch
    from PIL import Image
    from torch.profiler import ProfilerActivity, profile

    if not args.device.startswith("cuda"):
        raise SystemExit("--compare-profiler needs --device cuda")
    memory = InMemorySpanExporter()
    otel_vision.configure(
        service_name="bench-diffusers", exporter="none", logs=False, additional_span_processors=[
            SimpleSpanProcessor(memory)],
    )  # fmt: skip
    pipe = build(args)
    otel_vision.instrument_diffusers(pipe)
    image = Image.new("RGB", (args.size, args.size), (90, 120, 200))
    extra = 10

    def kernel_seconds(steps: int) -> float:
        pipe("make it snowy", image=image, num_inference_steps=steps, output_type="np")  # warm
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            pipe("make it snowy", image=image, num_inference_steps=steps, output_type="np")
            torch.cuda.synchronize()
        return sum(e.device_time_total for e in prof.key_averages() if e.device_type.name == "CUDA") / 1e6

    base, longer = kernel_seconds(args.steps), kernel_seconds(args.steps + extra)
    otel_vision.shutdown()
    per_step_kernels = (longer - base) / extra
    step_times = [s.attributes["gpu.time"] for s in memory.get_finished_spans() if s.name == "denoise_step"]
    median_gpu_time = statistics.median(step_times)
    print(f"{args.pipeline} {args.device} {args.dtype} {args.size}x{args.size}; {len(step_times)} step spans")
    print(f"| per-step CUDA kernel time (torch.profiler, N+{extra} minus N) | {per_step_kernels * 1e3:.3f} ms |")
    print(f"| median denoise_step gpu.time (otel_vision) | {median_gpu_time * 1e3:.3f} ms |")
    print(f"| ratio | {median_gpu_time / per_step_kernels:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipeline", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--compare-profiler", action="store_true")
    args = parser.parse_args()
    compare_profiler(args) if args.compare_profiler else overhead(args)


if __name__ == "__main__":
    main()
