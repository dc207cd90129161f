"""diffusers instrumentation against real (tiny, random, offline) InstructPix2Pix and Stable Diffusion pipelines."""

from __future__ import annotations

import copy
import logging
import os
import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.trace import StatusCode

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import otel_vision  # noqa: E402
from otel_vision._tiny_pipelines import tiny_instruct_pix2pix, tiny_text_to_image  # noqa: E402
from otel_vision.instrumentation.diffusers import DENOISE_STEPS, DiffusersInstrumentor  # noqa: E402
from otel_vision.testing import CapturedTelemetry, FakeGpu  # noqa: E402

PROMPT = "make the zebra wear a velvet top hat"
PHASES = ["encode_prompt", "preprocess", "prepare_latents", "denoise", "vae_decode", "postprocess"]


@pytest.fixture(scope="module")
def image() -> Any:
    from PIL import Image

    return Image.new("RGB", (32, 32), (120, 80, 40))


@pytest.fixture
def pix2pix() -> Any:
    return tiny_instruct_pix2pix()


@pytest.fixture
def instrumented(vision_telemetry: CapturedTelemetry) -> Iterator[DiffusersInstrumentor]:
    instrumentor = DiffusersInstrumentor()
    yield instrumentor
    instrumentor.uninstrument()


def _children(captured: CapturedTelemetry, parent: Any) -> list[Any]:
    kids = [s for s in captured.spans() if s.parent is not None and s.parent.span_id == parent.context.span_id]
    return sorted(kids, key=lambda s: s.start_time)


def _run(pipe: Any, image: Any, steps: int = 3, **kwargs: Any) -> Any:
    return pipe(PROMPT, image=image, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), **kwargs)


class TestSpanTree:
    def test_instruct_pix2pix_waterfall(
        self, instrumented: Any, pix2pix: Any, image: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """One call: pipeline > encode_prompt, preprocess, prepare_latents, denoise (a step each), vae_decode, postprocess."""
        otel_vision.instrument_diffusers(pix2pix)
        _run(pix2pix, image, guidance_scale=6.0, image_guidance_scale=1.25)
        root = vision_telemetry.span("pipeline")
        assert [s.name for s in _children(vision_telemetry, root)] == PHASES
        attrs = root.attributes
        assert attrs["vision.operation"] == "pipeline"
        assert attrs["vision.model.name"] == "StableDiffusionInstructPix2PixPipeline"
        assert attrs["vision.task"] == "image-to-image"
        assert attrs["diffusion.scheduler"] == "DDIMScheduler"
        assert (attrs["diffusion.guidance_scale"], attrs["diffusion.image_guidance_scale"]) == (6.0, 1.25)
        assert attrs["diffusion.num_inference_steps"] == 3 and attrs["diffusion.steps.count"] == 3
        assert (attrs["vision.dtype"], attrs["vision.device"]) == ("float32", "cpu")
        assert (attrs["vision.image.width"], attrs["vision.image.height"], attrs["vision.batch.size"]) == (32, 32, 1)
        assert attrs["vision.instruction.category"] == "make"
        denoise = vision_telemetry.span("denoise")
        steps = _children(vision_telemetry, denoise)
        assert [s.attributes["diffusion.step.index"] for s in steps] == [0, 1, 2]
        timesteps = [float(t) for t in pix2pix.scheduler.timesteps]
        assert [s.attributes["diffusion.step.timestep"] for s in steps] == timesteps
        for earlier, later in zip(steps, steps[1:], strict=False):
            assert earlier.end_time <= later.start_time and earlier.end_time > earlier.start_time

    def test_text_to_image(self, instrumented: Any, vision_telemetry: CapturedTelemetry) -> None:
        """Text-to-image has no preprocess or image latents: encode_prompt, denoise, vae_decode, postprocess."""
        pipe = tiny_text_to_image()
        otel_vision.instrument_diffusers(pipe)
        pipe("a red cat", num_inference_steps=2, height=32, width=32)
        root = vision_telemetry.span("pipeline")
        assert root.attributes["vision.task"] == "text-to-image"
        assert [s.name for s in _children(vision_telemetry, root)] == [
            "encode_prompt",
            "denoise",
            "vae_decode",
            "postprocess",
        ]
        assert len(vision_telemetry.spans("denoise_step")) == 2

    def test_second_order_scheduler(self, instrumented: Any, image: Any, vision_telemetry: CapturedTelemetry) -> None:
        """Heun calls the UNet twice per step for N-1 steps: 2N-1 step spans, one per callback."""
        pipe = tiny_instruct_pix2pix(scheduler="heun")
        otel_vision.instrument_diffusers(pipe)
        _run(pipe, image, steps=3)
        steps = vision_telemetry.spans("denoise_step")
        assert [s.attributes["diffusion.step.index"] for s in steps] == [0, 1, 2, 3, 4]
        root = vision_telemetry.span("pipeline")
        assert root.attributes["diffusion.num_inference_steps"] == 3 and root.attributes["diffusion.steps.count"] == 5

    def test_latent_output_skips_decode(
        self, instrumented: Any, pix2pix: Any, image: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """output_type="latent" runs no VAE decode; postprocess still runs (as in diffusers)."""
        otel_vision.instrument_diffusers(pix2pix)
        _run(pix2pix, image, output_type="latent")
        names = [s.name for s in _children(vision_telemetry, vision_telemetry.span("pipeline"))]
        assert "vae_decode" not in names and names[-1] == "postprocess"


class TestUserCallbacks:
    def test_function_callback_keeps_its_tensors_and_return_value(
        self, instrumented: Any, image: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """The user's callback receives the tensors it asked for and its returned latents are used, as without us."""

        def run(instrument: bool) -> tuple[list[tuple[int, list[str]]], Any]:
            pipe = tiny_instruct_pix2pix()
            if instrument:
                otel_vision.instrument_diffusers(pipe)
            seen: list[tuple[int, list[str]]] = []

            def halve(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                seen.append((i, sorted(kwargs)))
                return {"latents": kwargs["latents"] * 0.5}

            out = _run(
                pipe,
                image,
                output_type="np",
                callback_on_step_end=halve,
                callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
            )
            return seen, out.images

        plain_seen, plain_images = run(instrument=False)
        traced_seen, traced_images = run(instrument=True)
        assert traced_seen == plain_seen == [(i, ["latents", "prompt_embeds"]) for i in range(3)]
        assert (traced_images == plain_images).all()
        assert len(vision_telemetry.spans("denoise_step")) == 3

    def test_our_callback_alone_asks_for_no_tensors(
        self, instrumented: Any, pix2pix: Any, image: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With no callback of the user's, the pipeline gathers none of the step's tensors for ours (it would read
        them through ``locals()`` on every step); tensor inputs the user names are gathered as they ask."""
        from otel_vision.instrumentation import diffusers as instrumentation

        received: list[list[str]] = []
        step_end = instrumentation._StepEnd.__call__

        def watching(self: Any, pipeline: Any, index: int, timestep: Any, kwargs: dict[str, Any]) -> Any:
            received.append(sorted(kwargs))
            return step_end(self, pipeline, index, timestep, kwargs)

        monkeypatch.setattr(instrumentation._StepEnd, "__call__", watching)
        otel_vision.instrument_diffusers(pix2pix)
        _run(pix2pix, image, steps=2)
        assert received == [[], []]
        received.clear()
        _run(pix2pix, image, steps=2, callback_on_step_end_tensor_inputs=["latents"])
        assert received == [["latents"], ["latents"]]

    def test_pipeline_callback_objects(
        self, instrumented: Any, image: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """PipelineCallback and MultiPipelineCallbacks keep their tensor_inputs and run before our step end."""
        from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

        calls: list[str] = []

        class Recorder(PipelineCallback):
            tensor_inputs = ["latents", "image_latents"]

            def callback_fn(self, pipeline: Any, step_index: int, timestep: Any, kwargs: dict[str, Any]) -> Any:
                calls.append(f"{type(self).__name__}:{step_index}:{','.join(sorted(kwargs))}")
                return kwargs

        class Other(Recorder):
            tensor_inputs = ["latents"]

        pipe = tiny_instruct_pix2pix()
        otel_vision.instrument_diffusers(pipe)
        _run(pipe, image, steps=2, callback_on_step_end=Recorder())
        assert calls == ["Recorder:0:image_latents,latents", "Recorder:1:image_latents,latents"]
        calls.clear()
        _run(pipe, image, steps=2, callback_on_step_end=MultiPipelineCallbacks([Recorder(), Other()]))
        assert calls[:2] == ["Recorder:0:image_latents,latents", "Other:0:image_latents,latents"]
        assert len(vision_telemetry.spans("denoise_step")) == 4

    def test_official_cfg_cutoff_callback(self, instrumented: Any, vision_telemetry: CapturedTelemetry) -> None:
        """diffusers' own callbacks (which change the pipeline's state) run exactly as without instrumentation."""
        from diffusers.callbacks import SDCFGCutoffCallback

        def run(pipe: Any) -> Any:
            generator = torch.Generator().manual_seed(0)
            cutoff = SDCFGCutoffCallback(cutoff_step_ratio=0.4)
            return pipe(
                "a red cat", num_inference_steps=4, generator=generator, output_type="np", callback_on_step_end=cutoff
            )

        plain = run(tiny_text_to_image())
        pipe = tiny_text_to_image()
        otel_vision.instrument_diffusers(pipe)
        traced = run(pipe)
        assert (plain.images == traced.images).all()
        assert len(vision_telemetry.spans("denoise_step")) == 4


class TestFailures:
    def test_exception_in_the_unet(
        self, instrumented: Any, pix2pix: Any, image: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """An exception in the 2nd UNet call ends root, denoise and the open step with ERROR and propagates unchanged."""
        error = RuntimeError("NaN in attention")
        calls = {"n": 0}

        def fail_second(module: Any, args: Any, output: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 2:
                raise error

        handle = pix2pix.unet.register_forward_hook(fail_second)  # inside the UNet call, after our pre-hook
        otel_vision.instrument_diffusers(pix2pix)
        try:
            with pytest.raises(RuntimeError) as caught:
                _run(pix2pix, image)
        finally:
            handle.remove()
        assert caught.value is error
        for name in ("pipeline", "denoise"):
            assert vision_telemetry.span(name).status.status_code is StatusCode.ERROR
        steps = vision_telemetry.spans("denoise_step")
        assert [s.status.status_code for s in steps] == [StatusCode.UNSET, StatusCode.ERROR]
        assert all(s.end_time for s in vision_telemetry.spans())
        (requests,) = vision_telemetry.points("vision.requests")
        assert requests.attributes["error.type"] == "RuntimeError"

    def test_cuda_out_of_memory(self, fake_gpu: FakeGpu, vision_telemetry: CapturedTelemetry, image: Any) -> None:
        """CUDA OOM gets error.type=cuda_oom, with the allocator's state on the failed spans."""
        oom = type("OutOfMemoryError", (RuntimeError,), {"__module__": "torch.cuda"})
        fake_gpu.cuda.allocate(7 * 2**30)
        pipe = tiny_instruct_pix2pix()

        def out_of_memory(module: Any, args: Any) -> None:
            raise oom("CUDA out of memory. Tried to allocate 2.00 GiB")

        handle = pipe.vae.decoder.register_forward_pre_hook(out_of_memory)
        otel_vision.instrument_diffusers(pipe)
        try:
            with pytest.raises(RuntimeError, match="CUDA out of memory"):
                _run(pipe, image)
        finally:
            handle.remove()
            DiffusersInstrumentor().uninstrument()
        root = vision_telemetry.span("pipeline")
        assert root.attributes["error.type"] == "cuda_oom"
        assert root.attributes["gpu.memory.allocated"] == 7 * 2**30
        assert "gpu.memory.reserved" in root.attributes
        assert vision_telemetry.span("vae_decode").attributes["error.type"] == "cuda_oom"

    def test_our_hook_failures_never_reach_the_pipeline(
        self,
        instrumented: Any,
        pix2pix: Any,
        image: Any,
        vision_telemetry: CapturedTelemetry,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """If our step bookkeeping breaks, the pipeline's result is unchanged and the failure is logged."""
        from otel_vision.instrumentation.diffusers import _call

        def broken(self: Any) -> None:
            raise KeyError("bug in otel_vision")

        monkeypatch.setattr(_call.Call, "begin_step", broken)
        otel_vision.instrument_diffusers(pix2pix)
        out = _run(pix2pix, image, output_type="np")
        assert out.images.shape == (1, 32, 32, 3)
        assert any("denoiser hook" in r.getMessage() for r in caplog.records)


class TestPrivacy:
    def _leaks(self, captured: CapturedTelemetry, needle: str) -> list[str]:
        found = []
        for span in captured.spans():
            for value in [span.name, *map(str, span.attributes.values())]:
                if needle in value:
                    found.append(f"span {span.name}: {value}")
            for event in span.events:
                found.extend(f"event {event.name}" for v in event.attributes.values() if needle in str(v))
        for record in captured.logs():
            if needle in str(record.log_record.body) or needle in str(record.log_record.attributes):
                found.append(f"log {record.log_record.body}")
        for name in captured.metric_names():
            for point in captured.points(name):
                if needle in str(point.attributes):
                    found.append(f"metric {name}")
        return found

    def test_prompt_never_recorded_by_default(
        self, instrumented: Any, pix2pix: Any, image: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """By default the prompt text reaches no span, event, log record or metric; only its category does."""
        logging.getLogger("app").warning("served a request")  # a log record exists, and must not carry the prompt
        otel_vision.instrument_diffusers(pix2pix)
        _run(pix2pix, image)
        assert self._leaks(vision_telemetry, "velvet") == []
        assert vision_telemetry.span("pipeline").attributes["vision.instruction.category"] == "make"

    def test_prompt_capture_switched_on(
        self, instrumented: Any, pix2pix: Any, image: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """capture_prompts=True records the prompt on the root span only, never on metrics."""
        otel_vision.instrument_diffusers(pix2pix, capture_prompts=True)
        _run(pix2pix, image)
        assert vision_telemetry.span("pipeline").attributes["vision.prompt"] == PROMPT
        leaks = self._leaks(vision_telemetry, "velvet")
        assert leaks == [f"span pipeline: {PROMPT}"]

    def test_prompt_capture_from_environment(
        self,
        instrumented: Any,
        pix2pix: Any,
        image: Any,
        vision_telemetry: CapturedTelemetry,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """OTEL_VISION_CAPTURE_PROMPTS=true switches capture on; a bad value is a warning naming it (and stays off)."""
        monkeypatch.setenv("OTEL_VISION_CAPTURE_PROMPTS", "sometimes")
        with caplog.at_level(logging.WARNING, logger="otel_vision"):
            otel_vision.instrument_diffusers(pix2pix)
        assert any("OTEL_VISION_CAPTURE_PROMPTS='sometimes'" in r.getMessage() for r in caplog.records)
        _run(pix2pix, image)
        assert "vision.prompt" not in vision_telemetry.span("pipeline").attributes
        otel_vision.uninstrument_diffusers()
        vision_telemetry.clear()
        monkeypatch.setenv("OTEL_VISION_CAPTURE_PROMPTS", "true")
        otel_vision.instrument_diffusers(pix2pix)
        _run(pix2pix, image)
        assert vision_telemetry.span("pipeline").attributes["vision.prompt"] == PROMPT


class TestMetricsAndCategories:
    def test_request_and_step_metrics(
        self, instrumented: Any, pix2pix: Any, image: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """vision.requests and vision.request.duration by pipeline and category; denoise_step in stage durations."""
        otel_vision.instrument_diffusers(pix2pix)
        _run(pix2pix, image)
        pix2pix("remove the fence", image=image, num_inference_steps=2)
        counts = {
            p.attributes["vision.instruction.category"]: p.value for p in vision_telemetry.points("vision.requests")
        }
        assert counts == {"make": 1, "remove": 1}
        stages = {p.attributes["vision.stage"]: p.count for p in vision_telemetry.points("vision.stage.duration")}
        assert stages["denoise_step"] == 5 and stages["vae_decode"] == 2 and stages["encode_prompt"] == 2
        assert all(p.attributes["vision.model.name"] == "StableDiffusionInstructPix2PixPipeline"
                   for p in vision_telemetry.points("vision.request.duration"))  # fmt: skip

    def test_custom_classifier(
        self, instrumented: Any, pix2pix: Any, image: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """A custom instruction classifier decides the category; a bad one is rejected at instrumentation."""
        with pytest.raises(TypeError, match="instruction_classifier"):
            otel_vision.instrument_diffusers(pix2pix, instruction_classifier="colour")  # type: ignore[arg-type]
        otel_vision.instrument_diffusers(
            pix2pix, instruction_classifier=lambda text: "hats" if "hat" in text else "other"
        )
        _run(pix2pix, image)
        assert vision_telemetry.span("pipeline").attributes["vision.instruction.category"] == "hats"

    @pytest.mark.parametrize(
        ("instruction", "category"),
        [
            ("make the sky pink", "make"),
            ("Please remove the car", "remove"),
            ("can you add fireworks", "add"),
            ("swap the dog for a cat", "replace"),
            ("turn it into a watercolor", "turn"),
            ("paint it in the style of Monet", "style"),
            ("zebra", "other"),
            ("", "other"),
        ],
    )
    def test_default_categories(self, instruction: str, category: str) -> None:
        """The default classifier maps the leading edit verb to a fixed vocabulary, else other."""
        from otel_vision.instrumentation.diffusers import CATEGORIES, classify_instruction

        assert classify_instruction(instruction) == category and category in CATEGORIES


class TestPlacement:
    """``vision.device`` and ``vision.dtype``: what diffusers reports, read once per placement (diffusers walks every
    module to compute either), and again when the pipeline moves."""

    @staticmethod
    def _count_our_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
        """Count the reads of ``_execution_device`` and ``dtype`` made by otel_vision (the pipeline makes its own)."""
        import sys

        from diffusers import DiffusionPipeline, ModelMixin

        reads = {"device": 0, "dtype": 0}

        def counting(name: str, prop: Any) -> property:
            def get(self: Any) -> Any:
                if sys._getframe(1).f_globals.get("__name__", "").startswith("otel_vision."):
                    reads[name] += 1
                return prop.fget(self)

            return property(get)

        monkeypatch.setattr(
            DiffusionPipeline, "_execution_device", counting("device", DiffusionPipeline._execution_device)
        )
        monkeypatch.setattr(ModelMixin, "dtype", counting("dtype", ModelMixin.dtype))
        return reads

    def test_read_once_per_placement_and_again_after_a_move(
        self, instrumented: Any, pix2pix: Any, image: Any, vision_telemetry: CapturedTelemetry, monkeypatch: Any
    ) -> None:
        reads = self._count_our_reads(monkeypatch)
        otel_vision.instrument_diffusers(pix2pix)
        for _ in range(3):
            _run(pix2pix, image, steps=1)
        assert reads == {"device": 1, "dtype": 1}
        instrumented.uninstrument()  # instrumented again: the placement is the pipeline's, not the instrumentation's
        otel_vision.instrument_diffusers(pix2pix)
        _run(pix2pix, image, steps=1)
        assert reads == {"device": 1, "dtype": 1}
        pix2pix.to(torch.float64)
        _run(pix2pix, image, steps=1)
        assert reads == {"device": 2, "dtype": 2}
        roots = vision_telemetry.spans("pipeline")
        assert [r.attributes["vision.dtype"] for r in roots] == ["float32"] * 4 + ["float64"]
        assert {r.attributes["vision.device"] for r in roots} == {"cpu"}

    def test_read_again_every_so_many_calls(
        self, instrumented: Any, pix2pix: Any, image: Any, vision_telemetry: CapturedTelemetry, monkeypatch: Any
    ) -> None:
        """A change that leaves the denoiser's first parameter alone is seen within `PLACEMENT_REFRESH_CALLS` calls."""
        from diffusers import ModelMixin

        from otel_vision.instrumentation import diffusers as ours

        monkeypatch.setattr(ours, "PLACEMENT_REFRESH_CALLS", 3)
        reads = self._count_our_reads(monkeypatch)
        otel_vision.instrument_diffusers(pix2pix)
        for _ in range(2):
            _run(pix2pix, image, steps=1)
        # What layerwise casting does to a model whose first layer is exempt: dtype changes, the first parameter not.
        monkeypatch.setattr(ModelMixin, "dtype", property(lambda self: torch.bfloat16))
        for _ in range(2):
            _run(pix2pix, image, steps=1)
        assert reads["device"] == 2
        roots = vision_telemetry.spans("pipeline")
        assert [r.attributes["vision.dtype"] for r in roots] == ["float32"] * 3 + ["bfloat16"]

    def test_a_swapped_denoiser_is_read(
        self, instrumented: Any, pix2pix: Any, image: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        otel_vision.instrument_diffusers(pix2pix)
        _run(pix2pix, image, steps=1)
        pix2pix.unet = copy.deepcopy(pix2pix.unet).to(torch.float64)
        pix2pix.vae.to(torch.float64)
        pix2pix.text_encoder.to(torch.float64)
        _run(pix2pix, image, steps=1)
        assert [r.attributes["vision.dtype"] for r in vision_telemetry.spans("pipeline")] == ["float32", "float64"]


class TestScope:
    def test_every_pipeline_including_later_ones(self, image: Any, vision_telemetry: CapturedTelemetry) -> None:
        """instrument_diffusers() traces pipelines created before and after it."""
        before = tiny_instruct_pix2pix()
        otel_vision.instrument_diffusers()
        try:
            after = tiny_text_to_image()
            _run(before, image, steps=1)
            after("a cat", num_inference_steps=1, height=32, width=32)
            assert [s.attributes["vision.task"] for s in vision_telemetry.spans("pipeline")] == [
                "image-to-image",
                "text-to-image",
            ]
        finally:
            DiffusersInstrumentor().uninstrument()

    def test_only_instrumented_pipelines(self, image: Any, vision_telemetry: CapturedTelemetry) -> None:
        """instrument_diffusers(pipe) leaves other pipelines of the same class untraced."""
        mine, other = tiny_instruct_pix2pix(), tiny_instruct_pix2pix(seed=1)
        otel_vision.instrument_diffusers(mine)
        try:
            _run(other, image, steps=1)
            assert vision_telemetry.spans() == []
            _run(mine, image, steps=1)
            assert len(vision_telemetry.spans("pipeline")) == 1
        finally:
            DiffusersInstrumentor().uninstrument()

    def test_uninstrument_leaves_nothing_behind(self, image: Any, vision_telemetry: CapturedTelemetry) -> None:
        """After uninstrument(): no span, no hook on any component, no wrapper, image processor restored."""
        from diffusers import DiffusionPipeline, StableDiffusionInstructPix2PixPipeline
        from diffusers.image_processor import VaeImageProcessor

        pipe = tiny_instruct_pix2pix()
        otel_vision.instrument_diffusers(pipe)
        otel_vision.instrument_diffusers(pipe)  # idempotent
        _run(pipe, image, steps=1)
        assert len(vision_telemetry.spans("pipeline")) == 1
        DiffusersInstrumentor().uninstrument()
        vision_telemetry.clear()
        _run(pipe, image, steps=1)
        assert vision_telemetry.spans() == []
        for module in (pipe.unet, pipe.text_encoder, pipe.vae.encoder, pipe.vae.decoder, pipe.vae.post_quant_conv):
            assert not module._forward_pre_hooks
        assert not {"preprocess", "postprocess"} & set(vars(pipe.image_processor))
        for owner, name in (
            (StableDiffusionInstructPix2PixPipeline, "__call__"),
            (DiffusionPipeline, "register_modules"),
            (VaeImageProcessor, "preprocess"),
            (VaeImageProcessor, "postprocess"),
        ):
            assert not type(owner.__dict__[name]).__module__.startswith("wrapt"), name

    def test_swapped_component_is_hooked(
        self, instrumented: Any, pix2pix: Any, image: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """Replacing a component (e.g. with a compiled module) moves the hooks to the new one at the next call."""
        import copy

        otel_vision.instrument_diffusers(pix2pix)
        _run(pix2pix, image, steps=1)
        old = pix2pix.unet
        pix2pix.unet = copy.deepcopy(old)
        for hook in list(pix2pix.unet._forward_pre_hooks):
            del pix2pix.unet._forward_pre_hooks[hook]  # a fresh module, as torch.compile would give
        _run(pix2pix, image, steps=2)
        assert len(vision_telemetry.spans("denoise_step")) == 3
        assert not old._forward_pre_hooks


def test_pipeline_without_step_callback(instrumented: Any, vision_telemetry: CapturedTelemetry) -> None:
    """A pipeline with no callback_on_step_end still gets its root and component phases, without step spans."""
    from diffusers import DiffusionPipeline

    base = tiny_text_to_image()

    class NoCallbackPipeline(DiffusionPipeline):
        def __init__(self, unet: Any, vae: Any, scheduler: Any) -> None:
            super().__init__()
            self.register_modules(unet=unet, vae=vae, scheduler=scheduler)

        @torch.no_grad()
        def __call__(self, num_inference_steps: int = 2) -> Any:
            latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
            context = torch.zeros(1, 77, self.unet.config.cross_attention_dim)
            self.scheduler.set_timesteps(num_inference_steps)
            for t in self.scheduler.timesteps:
                noise = self.unet(latents, t, encoder_hidden_states=context).sample
                latents = self.scheduler.step(noise, t, latents).prev_sample
            return self.vae.decode(latents).sample

    pipe = NoCallbackPipeline(base.unet, base.vae, base.scheduler)
    otel_vision.instrument_diffusers(pipe)
    pipe(num_inference_steps=2)
    root = vision_telemetry.span("pipeline")
    assert [s.name for s in _children(vision_telemetry, root)] == ["denoise", "vae_decode"]
    assert root.attributes["diffusion.steps.count"] == 0


def test_zero_code_with_ultralytics_missing(tmp_path: Any) -> None:
    """`opentelemetry-instrument python app.py` traces a diffusers pipeline with no code change, without ultralytics."""
    from tests.conftest import run_instrumented_without

    app = tmp_path / "app.py"
    app.write_text(
        "import PIL.Image\n"
        "try:\n    import ultralytics\nexcept ModuleNotFoundError:\n    print('ultralytics: missing')\n"
        "from otel_vision._tiny_pipelines import tiny_instruct_pix2pix\n"
        "pipe = tiny_instruct_pix2pix()\n"
        "pipe('make it blue', image=PIL.Image.new('RGB', (32, 32)), num_inference_steps=2)\n"
    )
    result = run_instrumented_without("ultralytics", app, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ultralytics: missing" in result.stdout
    for name in ('"name": "pipeline"', '"name": "denoise_step"', '"name": "vae_decode"'):
        assert name in result.stdout, result.stdout[-3000:]


class TestStaysWhatItWas:
    """Components, processors and copies of an instrumented pipeline behave as those of an uninstrumented one."""

    def test_components_torch_save_after_a_call(
        self, instrumented: Any, pix2pix: Any, image: Any, vision_telemetry: CapturedTelemetry, tmp_path: Any
    ) -> None:
        """torch.save(pipe.unet) and torch.save(pipe.text_encoder) work after an instrumented call."""
        otel_vision.instrument_diffusers(pix2pix)
        _run(pix2pix, image, steps=1)
        for name in ("unet", "text_encoder", "vae"):
            path = tmp_path / f"{name}.pt"
            torch.save(getattr(pix2pix, name), path)
            loaded = torch.load(path, weights_only=False)
            assert type(loaded) is type(getattr(pix2pix, name))

    def test_image_processor_pickles(
        self, instrumented: Any, pix2pix: Any, image: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """pickle.dumps(pipe.image_processor) works after an instrumented call and the copy processes the same."""
        otel_vision.instrument_diffusers(pix2pix)
        _run(pix2pix, image, steps=1)
        restored = pickle.loads(pickle.dumps(pix2pix.image_processor))
        x = torch.rand(1, 3, 8, 8) * 2 - 1
        assert torch.equal(
            restored.postprocess(x, output_type="pt"), pix2pix.image_processor.postprocess(x, output_type="pt")
        )

    def test_deepcopy_uses_its_own_configuration(
        self, instrumented: Any, pix2pix: Any, image: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """A deep copy's image processor follows the copy's configuration; the copy is not traced (only pipe was)."""
        otel_vision.instrument_diffusers(pix2pix)
        _run(pix2pix, image, steps=1)
        twin = copy.deepcopy(pix2pix)
        vision_telemetry.clear()
        expected = _run(tiny_instruct_pix2pix(), image, steps=1, output_type="np").images
        assert (_run(twin, image, steps=1, output_type="np").images == expected).all()
        assert vision_telemetry.spans() == []
        twin.image_processor.register_to_config(do_normalize=False)
        x = torch.rand(1, 3, 8, 8) * 2 - 1
        assert torch.equal(twin.image_processor.postprocess(x, output_type="pt"), x)  # no denormalization
        _run(pix2pix, image, steps=1)
        assert len(vision_telemetry.spans("pipeline")) == 1

    def test_outputs_identical_with_and_without(self, pix2pix: Any, image: Any) -> None:
        """The same seed gives bit-identical images with and without instrumentation, in every step mode."""
        plain = _run(pix2pix, image, output_type="np").images
        for mode in DENOISE_STEPS:
            otel_vision.instrument_diffusers(pix2pix, denoise_steps=mode)
            try:
                assert (_run(pix2pix, image, output_type="np").images == plain).all(), mode
            finally:
                otel_vision.uninstrument_diffusers()


class TestDenoiseSteps:
    def test_events_instead_of_spans(
        self, instrumented: Any, pix2pix: Any, image: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """denoise_steps="events": no denoise_step span, one denoise_step event per step on the denoise span."""
        otel_vision.instrument_diffusers(pix2pix, denoise_steps="events")
        _run(pix2pix, image, steps=3)
        assert vision_telemetry.spans("denoise_step") == []
        denoise = vision_telemetry.span("denoise")
        events = [e for e in denoise.events if e.name == "denoise_step"]
        assert [e.attributes["diffusion.step.index"] for e in events] == [0, 1, 2]
        assert all(isinstance(e.attributes["diffusion.step.timestep"], float) for e in events)
        assert vision_telemetry.span("pipeline").attributes["diffusion.steps.count"] == 3

    def test_off_and_switching_back(
        self, instrumented: Any, pix2pix: Any, image: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """denoise_steps="off" records nothing per step; instrumenting again with "spans" applies at the next call."""
        otel_vision.instrument_diffusers(pix2pix, denoise_steps="off")
        _run(pix2pix, image, steps=2)
        assert vision_telemetry.spans("denoise_step") == [] and not vision_telemetry.span("denoise").events
        assert [s.name for s in _children(vision_telemetry, vision_telemetry.span("pipeline"))] == PHASES
        vision_telemetry.clear()
        otel_vision.instrument_diffusers(pix2pix, denoise_steps="spans")
        _run(pix2pix, image, steps=2)
        assert len(vision_telemetry.spans("denoise_step")) == 2

    def test_from_environment(
        self,
        instrumented: Any,
        pix2pix: Any,
        image: Any,
        vision_telemetry: CapturedTelemetry,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """OTEL_VISION_DENOISE_STEPS=events is the default when the argument is not given."""
        monkeypatch.setenv("OTEL_VISION_DENOISE_STEPS", "events")
        otel_vision.instrument_diffusers(pix2pix)
        _run(pix2pix, image, steps=2)
        assert vision_telemetry.spans("denoise_step") == []
        assert len(vision_telemetry.span("denoise").events) == 2

    @pytest.mark.parametrize(("value", "error"), [("event", ValueError), (True, TypeError), ("", ValueError)])
    def test_bad_values(self, instrumented: Any, pix2pix: Any, value: Any, error: type) -> None:
        """A bad denoise_steps is rejected, naming the argument and the accepted values."""
        with pytest.raises(error, match=r"denoise_steps=.*'spans', 'events', 'off'"):
            otel_vision.instrument_diffusers(pix2pix, denoise_steps=value)


class TestMistakes:
    @pytest.mark.parametrize("thing", [object(), "pipe", torch.nn.Linear(2, 2)])
    def test_not_a_pipeline(self, instrumented: Any, thing: Any) -> None:
        """instrument_diffusers on something that is not a pipeline raises TypeError naming DiffusionPipeline."""
        with pytest.raises(TypeError, match=r"takes a diffusers pipeline \(diffusers.DiffusionPipeline"):
            otel_vision.instrument_diffusers(thing)
        assert not DiffusersInstrumentor().is_instrumented_by_opentelemetry

    def test_module_hint(self, instrumented: Any) -> None:
        """A torch module gets a pointer to instrument_module()."""
        with pytest.raises(TypeError, match="instrument_module"):
            otel_vision.instrument_diffusers(torch.nn.Linear(2, 2))

    def test_new_options_apply(
        self, instrumented: Any, pix2pix: Any, image: Any, vision_telemetry: CapturedTelemetry
    ) -> None:
        """Instrumenting a pipeline again with capture_prompts=True applies it; options not given are kept."""
        otel_vision.instrument_diffusers(pix2pix, denoise_steps="events")
        otel_vision.instrument_diffusers(pix2pix, capture_prompts=True)
        _run(pix2pix, image, steps=1)
        root = vision_telemetry.span("pipeline")
        assert root.attributes["vision.prompt"] == PROMPT
        assert vision_telemetry.spans("denoise_step") == []

    def test_top_level_uninstrument(self, pix2pix: Any, image: Any, vision_telemetry: CapturedTelemetry) -> None:
        """otel_vision.uninstrument_diffusers() undoes instrument_diffusers(); a second call is a no-op."""
        otel_vision.instrument_diffusers(pix2pix)
        otel_vision.uninstrument_diffusers()
        otel_vision.uninstrument_diffusers()
        _run(pix2pix, image, steps=1)
        assert vision_telemetry.spans() == []
        assert not pix2pix.unet._forward_pre_hooks


@pytest.mark.parametrize("order", ["theirs_after_ours", "theirs_before_ours"])
def test_third_party_wrapper_of_call(order: str, pix2pix: Any, image: Any, vision_telemetry: CapturedTelemetry) -> None:
    """Another library's wrapper of the pipeline class's __call__, before or after ours: both run; after
    uninstrument_diffusers() theirs still runs and nothing is traced; instrumenting again gives one root span."""
    cls = type(pix2pix)
    original = cls.__dict__["__call__"]
    seen: list[int] = []

    def install() -> None:
        raw = cls.__dict__["__call__"]  # the raw class attribute, as many wrappers take it

        def theirs(self: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(1)
            return raw(self, *args, **kwargs)

        cls.__call__ = theirs  # type: ignore[method-assign]

    try:
        if order == "theirs_before_ours":
            install()
        otel_vision.instrument_diffusers(pix2pix)
        if order == "theirs_after_ours":
            install()
        _run(pix2pix, image, steps=1)
        assert len(seen) == 1 and len(vision_telemetry.spans("pipeline")) == 1
        assert len(vision_telemetry.spans("denoise_step")) == 1
        otel_vision.uninstrument_diffusers()
        vision_telemetry.clear()
        _run(pix2pix, image, steps=1)
        assert len(seen) == 2 and vision_telemetry.spans() == []
        otel_vision.instrument_diffusers(pix2pix)
        _run(pix2pix, image, steps=1)
        assert len(vision_telemetry.spans("pipeline")) == 1
    finally:
        otel_vision.uninstrument_diffusers()
        cls.__call__ = original  # type: ignore[method-assign]
