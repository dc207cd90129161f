"""One pipeline call as a trace: phases driven by component hooks, a span per denoising step.

The pipeline's ``__call__`` is private code we do not patch; instead each phase starts at the first public hook
point that belongs to it and ends where the next phase starts:

- ``encode_prompt``: from the call's start (input checks, tokenization) through the text encoders;
- ``preprocess``: the pipeline's own ``image_processor.preprocess``;
- ``prepare_latents``: from the first ``vae.encoder`` forward (image latents) until denoising starts;
- ``denoise``: from the first denoiser (``unet``/``transformer``) forward until the VAE decodes, with one
  ``denoise_step`` child per step: from the step's first denoiser forward to ``callback_on_step_end`` (or, with
  ``denoise_steps="events"``, one ``denoise_step`` event per step on ``denoise``; with ``"off"``, nothing per step);
- ``vae_decode``: from the first ``vae.post_quant_conv``/``vae.decoder`` forward to postprocessing;
- ``postprocess``: the pipeline's own ``image_processor.postprocess``.

State lives in the OpenTelemetry context of the call (thread- and task-safe); hooks pass parents explicitly and never
attach or detach context.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context
from opentelemetry.trace import Span

from otel_vision import _context, _runtime
from otel_vision import attributes as a
from otel_vision._errors import report_internal_error
from otel_vision._light import with_span
from otel_vision._stage import _Active, request, stage

CALL_KEY = context.create_key("otel_vision.diffusers.call")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
DENOISERS = ("unet", "transformer", "prior")
MAX_PROMPT = 1000
"""Characters of the prompt recorded when prompt capture is on."""
DENOISE_STEPS = ("spans", "events", "off")
"""What each denoising step records: a ``denoise_step`` span, a ``denoise_step`` event on ``denoise``, or nothing."""


def current_call() -> Call | None:
    value = _context.get_current().get(CALL_KEY)
    return value if isinstance(value, Call) else None


class Call:
    """The open spans and what was learned so far in one pipeline call."""

    def __init__(self, pipe: Any, model_name: str, per_step: bool = True, steps_mode: str = "spans") -> None:
        self.pipe = pipe
        self.model_name = model_name
        self.per_step = per_step
        """Whether the pipeline has ``callback_on_step_end``; without it there are no step spans."""
        self.step_spans = per_step and steps_mode == "spans"
        self.step_events = per_step and steps_mode == "events"
        self.in_processor = False
        """The pipeline's image processor is running as a phase (its nested calls are part of it)."""
        self.root: Span | None = None
        self.phase: _Active | None = None
        self.phase_stage: stage | None = None
        self.denoise: _Active | None = None
        self.step: _Active | None = None
        self.steps = 0
        self.timesteps: Any = None
        """Pinned host buffer receiving each step's timestep asynchronously (CUDA), else ``None``."""
        self.output_hw: tuple[int, int] | None = None
        self.denoise_context: context.Context | None = None
        """The context with the open ``denoise`` span as parent, made once per call for its step spans."""
        self.stages, self.postprocess_stage = _stages_for(model_name)
        self.step_stage = self.stages["denoise_step"]

    def root_context(self) -> context.Context:
        return with_span(self.root) if self.root is not None else _context.get_current()

    # --- phases ---------------------------------------------------------------------------------------------------
    def enter(self, name: str) -> None:
        """Make ``name`` the open phase (ending the previous one); no-op if it already is."""
        if self.phase_stage is not None and self.phase_stage.name == name:
            return
        self.end_phase()
        if name == "denoise":
            self.denoise = self.stages["denoise"]._start(self.root_context())
            self.denoise_context = with_span(self.denoise.span)
            self.phase, self.phase_stage = self.denoise, self.stages["denoise"]
            self._read_applied_values()
            return
        owner = self.stages[name]
        self.phase, self.phase_stage = owner._start(self.root_context()), owner

    def end_phase(self, exc: BaseException | None = None) -> None:
        """End the open step and phase."""
        self.end_step(exc)
        if self.phase is not None and self.phase_stage is not None:
            active, owner = self.phase, self.phase_stage
            self.phase, self.phase_stage = None, None
            if owner.name == "denoise":
                active.span.set_attribute(a.DIFFUSION_NUM_INFERENCE_STEPS, self._applied_steps())
                self.denoise = self.denoise_context = None
            owner._finish(active, exc)

    # --- steps ------------------------------------------------------------------------------------------------
    def begin_step(self) -> None:
        """A denoiser forward: opens denoise (first time) and a step (when none is open)."""
        if self.denoise is None:
            self.enter("denoise")
        if self.step is None and self.step_spans and self.denoise_context is not None:
            self.step = self.step_stage._start(self.denoise_context)

    def end_step(self, exc: BaseException | None = None, index: int | None = None, timestep: Any = None) -> None:
        """Close the open step (``callback_on_step_end`` passes its index and timestep)."""
        active = self.step
        if active is None:
            if self.step_events and index is not None and self.denoise is not None:
                self._step_event(index, timestep)
            return
        self.step = None
        self.steps += 1
        try:
            if index is not None:
                attrs: dict[str, Any] = {a.DIFFUSION_STEP_INDEX: index}
                value = self._timestep_value(active, index, timestep)
                if value is not None:
                    attrs[a.DIFFUSION_STEP_TIMESTEP] = value
                active.span.set_attributes(attrs)  # one call (one lock) for both
        finally:  # the step span ends even when reading the timestep fails
            self.step_stage._finish(active, exc)

    def _step_event(self, index: int, timestep: Any) -> None:
        """A ``denoise_step`` event on the ``denoise`` span (``denoise_steps="events"``): the step's index, and its
        timestep when it can be read without synchronizing the device (on CPU)."""
        assert self.denoise is not None
        attrs: dict[str, Any] = {a.DIFFUSION_STEP_INDEX: index}
        device = getattr(timestep, "device", None)
        if device is None or getattr(device, "type", "cpu") == "cpu":
            attrs[a.DIFFUSION_STEP_TIMESTEP] = float(timestep)
        self.denoise.span.add_event("denoise_step", attrs)
        self.steps += 1

    def _timestep_value(self, active: _Active, index: int, timestep: Any) -> float | None:
        """The timestep without synchronizing: read now on CPU (returned); on CUDA copied to pinned memory
        asynchronously and read in the export path once the step's end event has completed (``None`` here)."""
        device = getattr(timestep, "device", None)
        if device is None or getattr(device, "type", "cpu") == "cpu":
            return float(timestep)
        probe = _runtime.current().gpu
        if probe is None or active.gpu is None:
            return None  # no event to tell when the copy has landed: leave the attribute out rather than synchronize
        import torch

        buffer = self.timesteps
        if buffer is None or index >= buffer.numel():
            buffer = torch.empty(max(64, 2 * (index + 1)), dtype=torch.float32, pin_memory=True)
            self.timesteps = buffer
        buffer[index].copy_(timestep.float(), non_blocking=True)
        probe.defer(active.span, lambda: {a.DIFFUSION_STEP_TIMESTEP: float(buffer[index])})
        return None

    # --- values as applied ----------------------------------------------------------------------------------------
    def _read_applied_values(self) -> None:
        """Read what the running pipeline applies (properties exist only once __call__ has set them)."""
        if self.root is None:
            return
        pipe = self.pipe
        values: dict[str, Any] = {}
        for attribute, key in (
            ("guidance_scale", a.DIFFUSION_GUIDANCE_SCALE),
            ("image_guidance_scale", a.DIFFUSION_IMAGE_GUIDANCE_SCALE),
        ):
            try:
                value = getattr(pipe, attribute)
            except (AttributeError, TypeError):
                continue
            if isinstance(value, int | float):
                values[key] = float(value)
        values[a.DIFFUSION_NUM_INFERENCE_STEPS] = self._applied_steps()
        self.root.set_attributes({k: v for k, v in values.items() if v is not None})

    def _applied_steps(self) -> int | None:
        scheduler = getattr(self.pipe, "scheduler", None)
        steps = getattr(scheduler, "num_inference_steps", None)
        return int(steps) if isinstance(steps, int) else None

    def close_all(self, exc: BaseException | None) -> None:
        """End whatever is still open when the call returns or raises."""
        self.end_phase(exc)


class PipelineRequest(request):
    """The root span of one pipeline call: closes open phases, then records the request."""

    __slots__ = ("state",)

    def __init__(self, state: Call, attributes: dict[str, Any]) -> None:
        super().__init__("pipeline", attributes)
        self.state = state

    def _start(self, parent: context.Context | None) -> _Active:
        active = super()._start(parent)
        self.state.root = active.span
        if _has_text_encoder(self.state.pipe):
            self.state.enter("encode_prompt")
        return active

    def _finish(
        self, active: _Active, exc: BaseException | None, items: int | None = None, abandoned: bool = False
    ) -> None:
        try:
            self.state.close_all(exc)
            extra: dict[str, Any] = {a.DIFFUSION_STEPS_COUNT: self.state.steps}
            num_timesteps = getattr(self.state.pipe, "_num_timesteps", None)
            if isinstance(num_timesteps, int):
                extra[a.DIFFUSION_NUM_TIMESTEPS] = num_timesteps
            if self.state.output_hw is not None:
                extra[a.VISION_IMAGE_HEIGHT], extra[a.VISION_IMAGE_WIDTH] = self.state.output_hw
            active.span.set_attributes(extra)
        except Exception:
            report_internal_error("diffusers root span")
        super()._finish(active, exc, items, abandoned)


_PHASES = ("encode_prompt", "preprocess", "prepare_latents", "denoise", "denoise_step", "vae_decode")
_STAGES: dict[str, tuple[dict[str, stage], stage]] = {}
"""The phase stages by model name, made once: a stage holds only its name and attributes (what is running is in
each call's `_Active` objects), so concurrent calls of one pipeline class share them."""
_MAX_STAGE_SETS = 256


def _stages_for(model_name: str) -> tuple[dict[str, stage], stage]:
    stages = _STAGES.get(model_name)
    if stages is None:
        attrs = {a.VISION_MODEL_NAME: model_name}
        stages = ({name: stage(name, attrs) for name in _PHASES}, stage("postprocess", attrs))
        if len(_STAGES) >= _MAX_STAGE_SETS:
            _STAGES.clear()
        _STAGES[model_name] = stages
    return stages


def _has_text_encoder(pipe: Any) -> bool:
    return any(getattr(pipe, name, None) is not None for name in TEXT_ENCODERS)
