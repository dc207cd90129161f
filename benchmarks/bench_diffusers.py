"""Overhead of the diffusers instrumentation in the default configuration, and (on CUDA) per-step ``gpu.time``
against torch.profiler.

Two measurements, both in the default configuration unless ``--config null-exporter`` (see ``_ab.py``):

1. Per step, isolated: a pipeline whose steps do nothing but what a diffusers step does around its model (a
   denoiser forward through torch's module call, then ``callback_on_step_end`` with the ``callback_kwargs`` dict
   built from ``locals()``), ``--isolated-steps`` steps per call, instrumented versus not, next to bare SDK spans
   with a step span's four attributes in the same rounds. The added time per step includes the per-call cost
   (root span, hooks check) spread over the steps.
2. The whole pipeline: samples of ``--calls`` calls of the tiny InstructPix2Pix (or ``--pipeline sd15`` on CUDA)
   without instrumentation and with it alternate one by one (``uninstrument()`` removes every hook and wrapper).
   With ``--hand-written``, a third variant in the same rounds: what a user would write with the OpenTelemetry SDK
   alone (a root span around the call and a span per step from ``callback_on_step_end``, on the same provider), a
   reference for what spans per step cost in this harness at all. With ``--control-us N``, a control variant in
   the same rounds: the uninstrumented call with a ``callback_on_step_end`` that only spins N µs per step (a
   known cost, about what the instrumentation adds to the calling thread per step); what this harness reports for
   it is what it can resolve. With ``--background-ms N``, two more uninstrumented variants: during the call a
   background thread spends N ms of its own CPU time in 25 chunks spread over the call, as pure Python (holding the
   GIL) or hashing (``hashlib`` releases the GIL for large buffers); what each costs the call tells whether
   background work competes with the model for the GIL or for the cores. ``--per-thread`` prints, instead of the
   A/B, each thread's CPU per call (ours, gRPC's, torch's), plain and instrumented. ``--memoize`` replaces each
   model's compute with the answers of the first call (text encoder, denoiser, VAE encode and decode, each answer by
   its position in the call): diffusers' own Python runs, the models do not, so the calling thread's share shows
   without the models' noise (with ``--per-thread``: the ``MainThread`` row).

``--processes K`` runs the whole-pipeline A/B in K fresh processes (each with its own shuffled order) and pools
their adjacent pairs, so a bias of one process (its memory layout, what else ran in that minute) is averaged out
rather than reported as overhead; each process's own median is printed too.

    python benchmarks/bench_diffusers.py                                   # tiny InstructPix2Pix on CPU, 20 steps
    python benchmarks/bench_diffusers.py --pipeline sd15 --device cuda --dtype float16 --size 512 --steps 20
    python benchmarks/bench_diffusers.py --pipeline sd15 --device cuda --dtype float16 --size 512 --compare-profiler

``--compare-profiler`` profiles calls with N and N+K steps; the difference in summed CUDA kernel time divided by K is
the device work of one step, compared with the median ``gpu.time`` of the ``denoise_step`` spans of the same calls.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _ab import CONFIGS, Samples, Variant, bare_spans, configured, describe, report, report_added, rounds
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_vision
from otel_vision.instrumentation.diffusers import DiffusersInstrumentor


def build(args: argparse.Namespace) -> Any:
    import torch

    from otel_vision._tiny_pipelines import sd15_sized_instruct_pix2pix, tiny_instruct_pix2pix

    dtype = getattr(torch, args.dtype)
    if args.pipeline == "sd15":
        pipe = sd15_sized_instruct_pix2pix(device=args.device, dtype=dtype)
    else:
        pipe = tiny_instruct_pix2pix(device=args.device, dtype=dtype)
    if args.memoize:
        Replay(pipe)
    return pipe


class Replay:
    """Each model method of ``pipe`` answers, at the n-th call of it within a pipeline call, what it answered the
    first time (``--memoize``); the counts start again at every pipeline call (at its ``check_inputs``, which every
    call runs first)."""

    def __init__(self, pipe: Any) -> None:
        self.counts: dict[str, int] = {}
        self.answers: dict[tuple[str, int], Any] = {}
        for owner, method in ((pipe.unet, "forward"), (pipe.text_encoder, "forward"), (pipe.vae, "encode"),
                              (pipe.vae, "decode")):  # fmt: skip
            setattr(owner, method, self._replaying(f"{type(owner).__name__}.{method}", getattr(owner, method)))
        start = pipe.check_inputs

        def check_inputs(*args: Any, **kwargs: Any) -> Any:  # called once at the start of every pipeline call
            self.counts.clear()
            return start(*args, **kwargs)

        pipe.check_inputs = check_inputs

    def _replaying(self, name: str, compute: Any) -> Any:
        def replay(*args: Any, **kwargs: Any) -> Any:
            index = self.counts.get(name, 0)
            self.counts[name] = index + 1
            key = (name, index)
            if key not in self.answers:
                self.answers[key] = compute(*args, **kwargs)
            return self.answers[key]

        return replay


def step_pipeline() -> Any:
    """A diffusers pipeline whose steps are only what surrounds the model in a real one (see the docstring)."""
    import torch
    from diffusers import DDIMScheduler, DiffusionPipeline

    class StepOnlyPipeline(DiffusionPipeline):  # type: ignore[misc]  # diffusers is untyped
        _callback_tensor_inputs = ["latents"]

        def __init__(self, unet: Any, scheduler: Any) -> None:
            super().__init__()
            self.register_modules(unet=unet, scheduler=scheduler)

        def __call__(
            self,
            prompt: str | None = None,
            num_inference_steps: int = 20,
            callback_on_step_end: Any = None,
            callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006  # diffusers' own signature
        ) -> Any:
            latents = torch.zeros(1, 4)
            timesteps = torch.arange(num_inference_steps, 0, -1)
            for i, t in enumerate(timesteps):
                latents = self.unet(latents)
                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for k in callback_on_step_end_tensor_inputs:
                        callback_kwargs[k] = locals()[k]
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
            return latents

    return StepOnlyPipeline(torch.nn.Identity(), DDIMScheduler())


def per_step(args: argparse.Namespace, handle: Any) -> None:
    pipe = step_pipeline()
    instrumentor = DiffusersInstrumentor()
    steps = args.isolated_steps

    def run() -> None:
        pipe("make it snowy", num_inference_steps=steps)

    step_attributes = {
        "vision.stage": "denoise_step",
        "vision.model.name": "StepOnlyPipeline",
        "diffusion.step.index": 7,
        "diffusion.step.timestep": 981.0,
    }
    results = rounds(
        {
            "plain": Variant(run),
            "traced": Variant(run, lambda: instrumentor.instrument(pipelines=[pipe]), instrumentor.uninstrument),
            "bare": Variant(bare_spans(handle, "denoise_step", step_attributes, steps)),
        },
        args.samples,
        settle=lambda: handle.force_flush(timeout_millis=30000),
    )
    report_added(
        f"Per denoising step, isolated ({steps} steps per call, {args.samples} rounds; Python "
        f"{platform.python_version()}):",
        "step",
        results,
        {"plain": steps, "traced": steps, "bare": steps},
        1,
    )
    print()


def overhead(args: argparse.Namespace, handle: Any) -> None:
    import torch
    from PIL import Image

    pipe = build(args)
    image = Image.new("RGB", (args.size, args.size), (90, 120, 200))
    instrumentor = DiffusersInstrumentor()

    def run() -> None:
        for _ in range(args.calls):
            pipe("make it snowy", image=image, num_inference_steps=args.steps, output_type="np")
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    variants = {"plain": Variant(run), "traced": Variant(run, lambda: instrumentor.instrument(pipelines=[pipe]),
                                                         instrumentor.uninstrument)}  # fmt: skip
    if args.hand_written:
        variants["hand-written"] = Variant(hand_written(args, handle, pipe, image))
    if args.control_us:
        variants["control"] = Variant(busy_callback(args, pipe, image))
    if args.background_ms:
        start = time.perf_counter()
        pipe("make it snowy", image=image, num_inference_steps=args.steps, output_type="np")
        spread = time.perf_counter() - start
        for name, holds_gil in (("background-gil", True), ("background-released", False)):
            load = BackgroundLoad(args.background_ms / 1e3, spread, holds_gil)
            variants[name] = Variant(load.around(run), after=load.finish)
    if args.per_thread:
        per_thread(args, handle, variants)
        return
    results = rounds(variants, args.samples, settle=lambda: handle.force_flush(timeout_millis=30000), seed=args.seed)
    if args.emit_samples:
        print("SAMPLES " + json.dumps({name: {"wall": s.wall, "cpu": s.cpu} for name, s in results.items()}))
        return
    report_variants(args, results)


def report_variants(args: argparse.Namespace, results: dict[str, Samples]) -> None:
    title = (
        f"{args.pipeline} InstructPix2Pix {args.device} {args.dtype} {args.size}x{args.size} {args.steps} steps; "
        f"Python {platform.python_version()}; {len(results['plain'].wall)} alternating samples of {args.calls} "
        f"call(s)" + (f" from {args.processes} processes" if args.processes > 1 else "")
    )
    report(title, "call", results["plain"], results["traced"], args.calls)
    if args.control_us:
        print()
        report(f"control: a step callback that spins {args.control_us:g} µs per step, no instrumentation "
               "(instrumented = control)", "call", results["plain"], results["control"], args.calls)  # fmt: skip
    loads = {"background-gil": "pure Python, holding the GIL", "background-released": "hashing, GIL released"}
    for name, what in loads.items():
        if name in results:
            print()
            report(f"no instrumentation, {args.background_ms:g} ms of background CPU per call ({what}; instrumented = "
                   f"{name})", "call", results["plain"], results[name], args.calls)  # fmt: skip
    if args.hand_written:
        print()
        report("the hand-written bare-SDK instrumentation (instrumented = hand-written)", "call", results["plain"],
               results["hand-written"], args.calls)  # fmt: skip
        print()
        report("otel_vision (instrumented) against the hand-written one (not instrumented = hand-written)", "call",
               results["hand-written"], results["traced"], args.calls)  # fmt: skip
    plain, traced = (statistics.median(results[k].cpu) / args.calls for k in ("plain", "traced"))
    spans = 7 + args.steps
    print(f"\nadded process CPU per call: {(traced - plain) * 1e3:.2f} ms, {spans} spans per call")


def busy_callback(args: argparse.Namespace, pipe: Any, image: Any) -> Any:
    """The uninstrumented call with a step callback that spins ``--control-us`` µs: a known cost per step."""
    seconds = args.control_us / 1e6

    def spin(pipeline: Any, index: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
        return kwargs

    def run() -> None:
        for _ in range(args.calls):
            pipe("make it snowy", image=image, num_inference_steps=args.steps, output_type="np",
                 callback_on_step_end=spin)  # fmt: skip

    return run


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of each of this process's threads, by name (Python's name where it has one, else the
    kernel's: torch's OpenMP threads, gRPC's), from ``/proc/self/task/*/schedstat`` (Linux)."""
    names = {str(thread.native_id): thread.name for thread in threading.enumerate()}
    totals: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as stat, open(f"/proc/self/task/{tid}/comm") as comm:
                seconds, name = int(stat.read().split()[0]) / 1e9, names.get(tid, comm.read().strip())
        except OSError:  # the thread ended meanwhile
            continue
        totals[name] = totals.get(name, 0.0) + seconds
    return totals


def per_thread(args: argparse.Namespace, handle: Any, variants: dict[str, Variant]) -> None:
    """Each thread's CPU per call, plain and instrumented alternating, each call followed by a flush (so each
    instrumented call pays one export); a thread that ended meanwhile is left out."""
    added: dict[str, dict[str, list[float]]] = {}
    for index in range(args.samples + 2):
        for name in ("plain", "traced"):
            variant = variants[name]
            if variant.before is not None:
                variant.before()
            before = thread_cpu()
            variant.run()
            handle.force_flush(timeout_millis=30000)
            after = thread_cpu()
            if variant.after is not None:
                variant.after()
            if index >= 2:
                for thread, seconds in after.items():
                    added.setdefault(thread, {"plain": [], "traced": []})[name].append(seconds - before.get(thread, 0))
    print(f"CPU per call by thread, ms (means of {args.samples} calls each, every call followed by a flush)")
    print("| thread | not instrumented | instrumented | added |")
    print("|---|---:|---:|---:|")
    for thread, samples in sorted(added.items()):
        plain, traced = (statistics.fmean(samples[k]) * 1e3 if samples[k] else 0.0 for k in ("plain", "traced"))
        if max(plain, traced) >= 0.05:
            print(f"| {thread} | {plain:.1f} | {traced:.1f} | {traced - plain:+.1f} |")


class BackgroundLoad:
    """A thread that spends ``seconds`` of its own CPU time during each call, in `CHUNKS` chunks spread over
    ``spread`` seconds (the plain call's duration): pure Python, which holds the GIL, or SHA-256 of 64 KiB buffers,
    which releases it."""

    CHUNKS = 25

    def __init__(self, seconds: float, spread: float, holds_gil: bool) -> None:
        self.seconds, self.spread, self.holds_gil = seconds, spread, holds_gil
        self._go, self._stop, self._done = threading.Event(), threading.Event(), threading.Event()
        threading.Thread(target=self._run, name="bench-background-load", daemon=True).start()

    def around(self, run: Any) -> Any:
        def loaded() -> None:
            self._stop.clear()
            self._done.clear()
            self._go.set()
            try:
                run()
            finally:
                self._stop.set()  # a chunk under way finishes; `finish` waits for it outside the timed part

        return loaded

    def finish(self) -> None:
        self._done.wait()

    def _run(self) -> None:
        buffer = os.urandom(1 << 16)
        chunk = self.seconds / self.CHUNKS
        while True:
            self._go.wait()
            self._go.clear()
            for _ in range(self.CHUNKS):
                if self._stop.wait(self.spread / self.CHUNKS):
                    break
                end = time.thread_time() + chunk
                while time.thread_time() < end:
                    if self.holds_gil:
                        total = 0
                        for value in range(100):
                            total += value
                    else:
                        hashlib.sha256(buffer).digest()
            self._done.set()


def in_processes(args: argparse.Namespace) -> None:
    """The whole-pipeline A/B in ``--processes`` fresh processes, their adjacent pairs pooled."""
    pooled: dict[str, Samples] = {}
    medians: list[float] = []
    for index in range(args.processes):
        command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--processes", "1", "--emit-samples",
                   "--seed", str(index)]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=True).stdout
        line = next(text for text in out.splitlines() if text.startswith("SAMPLES "))
        samples = {name: Samples(**value) for name, value in json.loads(line.removeprefix("SAMPLES ")).items()}
        for name, value in samples.items():
            into = pooled.setdefault(name, Samples())
            into.wall.extend(value.wall)
            into.cpu.extend(value.cpu)
        pairs = [b / a - 1 for a, b in zip(samples["plain"].wall, samples["traced"].wall, strict=True)]
        medians.append(statistics.median(pairs))
        print(f"process {index + 1}/{args.processes}: median of adjacent pairs {medians[-1] * 100:+.2f} % wall",
              flush=True)  # fmt: skip
    print(f"per-process medians: {', '.join(f'{m * 100:+.2f} %' for m in sorted(medians))}\n")
    report_variants(args, pooled)


def hand_written(args: argparse.Namespace, handle: Any, pipe: Any, image: Any) -> Any:
    """The pipeline call with a root span and a span per denoising step, written against the SDK alone."""
    import time

    tracer = handle.tracer_provider.get_tracer("hand-written")
    last = [0]

    def step_end(pipeline: Any, index: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        now = time.time_ns()
        attributes = {
            "vision.stage": "denoise_step",
            "diffusion.step.index": index,
            "diffusion.step.timestep": float(timestep),
        }
        tracer.start_span("denoise_step", start_time=last[0], attributes=attributes).end(end_time=now)
        last[0] = now
        return kwargs

    def run() -> None:
        for _ in range(args.calls):
            with tracer.start_as_current_span("pipeline", attributes={"vision.model.name": type(pipe).__name__}):
                last[0] = time.time_ns()
                pipe("make it snowy", image=image, num_inference_steps=args.steps, output_type="np",
                     callback_on_step_end=step_end)  # fmt: skip

    return run


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
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--isolated-steps", type=int, default=200, help="steps per call of the per-step measurement")
    parser.add_argument("--config", choices=CONFIGS, default="default")
    parser.add_argument("--compare-profiler", action="store_true")
    parser.add_argument("--hand-written", action="store_true", help="add a hand-written bare-SDK variant")
    parser.add_argument("--control-us", type=float, default=0.0, help="add a control variant: a step callback "
                        "that spins this many µs per step")  # fmt: skip
    parser.add_argument("--background-ms", type=float, default=0.0, help="add two uninstrumented variants with a "
                        "background thread spending this many ms of CPU per call, holding the GIL or not")  # fmt: skip
    parser.add_argument("--memoize", action="store_true", help="replay each model's first answers instead of "
                        "computing (only the pipelines' Python runs)")  # fmt: skip
    parser.add_argument("--per-thread", action="store_true", help="instead of the A/B, each thread's CPU per call, "
                        "plain and instrumented (Linux)")  # fmt: skip
    parser.add_argument("--processes", type=int, default=1, help="run the whole-pipeline A/B in this many fresh "
                        "processes and pool their pairs (skips the per-step measurement)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--emit-samples", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compare_profiler:
        compare_profiler(args)
        return
    if args.processes < 1:
        parser.error(f"--processes takes a count of 1 or more, got {args.processes}")
    if args.per_thread and args.processes > 1:
        parser.error("--per-thread runs in one process: leave out --processes")
    if not args.emit_samples:
        print(f"configuration: {describe(args.config)}\n")
    if args.processes > 1:
        in_processes(args)
        return
    with configured("bench-diffusers", args.config) as handle:
        if not args.hand_written and not args.emit_samples and not args.per_thread:
            per_step(args, handle)
        overhead(args, handle)


if __name__ == "__main__":
    main()
