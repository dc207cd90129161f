"""The forward pre-hooks put on a pipeline's components: module-level functions, so a component stays picklable.

``torch.save(pipe.unet)`` pickles the module with its hooks; a hook is pickled by reference to its module-level
name, which is why these are plain functions and never closures. Each is excluded from ``torch.compile`` tracing
(``torch.compiler.disable``), so it never causes a graph break, and does nothing outside an instrumented call (so a
copy of an instrumented component, which carries the hooks, behaves as an uninstrumented one).
"""

from __future__ import annotations

from typing import Any

import torch  # noqa: TID253  # imported only by the instrumentor, once diffusers (and so torch) is loaded

from otel_vision._errors import report_internal_error
from otel_vision.instrumentation.diffusers._call import current_call


def _enter(phase: str, what: str) -> None:
    """Start ``phase`` in the instrumented call running on this thread, if any; never raises."""
    call = current_call()
    if call is not None:
        try:
            call.enter(phase)
        except Exception:
            report_internal_error(what)


@torch.compiler.disable  # type: ignore[untyped-decorator]  # torch's decorator is untyped
def text_encoder_hook(module: Any, args: Any) -> None:
    _enter("encode_prompt", "diffusers text encoder hook")


@torch.compiler.disable  # type: ignore[untyped-decorator]  # torch's decorator is untyped
def denoiser_hook(module: Any, args: Any) -> None:
    call = current_call()
    if call is not None:
        try:
            call.begin_step()
        except Exception:
            report_internal_error("diffusers denoiser hook")


@torch.compiler.disable  # type: ignore[untyped-decorator]  # torch's decorator is untyped
def vae_encoder_hook(module: Any, args: Any) -> None:
    _enter("prepare_latents", "diffusers VAE encoder hook")


@torch.compiler.disable  # type: ignore[untyped-decorator]  # torch's decorator is untyped
def vae_decoder_hook(module: Any, args: Any) -> None:
    _enter("vae_decode", "diffusers VAE decoder hook")


HOOKS: dict[str, Any] = {
    "text_encoder": text_encoder_hook,
    "denoiser": denoiser_hook,
    "vae_encoder": vae_encoder_hook,
    "vae_decoder": vae_decoder_hook,
}
