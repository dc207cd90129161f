"""Diffusers pipelines built in code with random weights, for tests and benchmarks that must run offline.

Nothing is downloaded: every component is constructed from a config written here, the CLIP tokenizer is
built from a byte-level vocabulary generated into a temporary directory, and torch is seeded before each
component so the weights are the same on every run. The tiny pipelines run a few denoising steps on CPU in
a fraction of a second; `sd15_sized_instruct_pix2pix` has the real Stable Diffusion 1.5 sizes, for GPU
benchmarks. torch, diffusers and transformers are imported inside the functions, so importing this module
is cheap.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MAX_TOKENS = 77
SCHEDULERS = ("ddim", "euler_a", "heun", "pndm")

# A handful of BPE merges (each pair and its result are in the vocabulary), so that merging is exercised.
_MERGES = (
    ("t", "h"),
    ("th", "e</w>"),
    ("a", "n"),
    ("an", "d</w>"),
    ("r", "e"),
    ("e", "d</w>"),
    ("i", "n"),
    ("in", "g</w>"),
)
# The scheduler settings of Stable Diffusion 1.5 and InstructPix2Pix.
_BETAS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}


def _byte_symbols() -> list[str]:
    """The 256 symbols that byte-level BPE writes for the bytes 0 to 255, in GPT-2 and CLIP's order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def _diffusers() -> Any:
    """Import diffusers on first use; typed `Any` because its config-registering constructors are untyped."""
    import diffusers

    return diffusers


def build_clip_tokenizer(max_length: int = MAX_TOKENS) -> Any:
    """Build a small CLIP tokenizer from a vocabulary and merges written into a temporary directory.

    The vocabulary holds every byte-level symbol (so every printable ASCII character and any other input),
    each bare and with the `</w>` end-of-word suffix, the results of a few merges, then `<|startoftext|>`
    and `<|endoftext|>` last, as in CLIP. Prompts are padded with `<|endoftext|>` and truncated to
    `max_length` tokens, which must equal the text encoder's `max_position_embeddings`.
    """
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    tokens = [*symbols, *(symbol + "</w>" for symbol in symbols), *(left + right for left, right in _MERGES)]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    merges = ["#version: 0.2", *(f"{left} {right}" for left, right in _MERGES)]
    with tempfile.TemporaryDirectory(prefix="otel-vision-tokenizer-") as directory:
        root = Path(directory)
        (root / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (root / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")
        # A local directory, not a hub id: nothing is looked up online, and the files are read here, once.
        return CLIPTokenizer.from_pretrained(directory, local_files_only=True, model_max_length=max_length)


def build_scheduler(name: str) -> Any:
    """Build the named diffusers scheduler with Stable Diffusion 1.5's noise schedule.

    `name` is one of `SCHEDULERS`: "ddim" (DDIMScheduler), "euler_a" (EulerAncestralDiscreteScheduler),
    "heun" (HeunDiscreteScheduler, second order: a pipeline's step callback fires 2N-1 times for N steps)
    or "pndm" (PNDMScheduler without its Runge-Kutta warm-up steps).
    """
    lib = _diffusers()
    if name == "ddim":
        return lib.DDIMScheduler(**_BETAS, clip_sample=False, set_alpha_to_one=False)
    if name == "euler_a":
        return lib.EulerAncestralDiscreteScheduler(**_BETAS)
    if name == "heun":
        return lib.HeunDiscreteScheduler(**_BETAS)
    if name == "pndm":
        return lib.PNDMScheduler(**_BETAS, skip_prk_steps=True, set_alpha_to_one=False)
    raise ValueError(f"unknown scheduler {name!r}: expected one of {', '.join(SCHEDULERS)}")


def _components(
    *,
    in_channels: int,
    seed: int,
    scheduler: str,
    unet: dict[str, Any],
    vae: dict[str, Any],
    text: dict[str, Any],
) -> dict[str, Any]:
    """Build a Stable Diffusion pipeline's components from the given sizes, each after seeding torch.

    The text encoder's vocabulary is the tokenizer's unless `text` sets `vocab_size`.
    """
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    lib = _diffusers()

    tokenizer = build_clip_tokenizer(MAX_TOKENS)
    # Seed a forked CPU generator, so that building a pipeline leaves the caller's random state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet_model = lib.UNet2DConditionModel(in_channels=in_channels, out_channels=4, **unet)
        torch.manual_seed(seed)
        vae_model = lib.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **vae)
        torch.manual_seed(seed)
        text_config = CLIPTextConfig(
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **{"vocab_size": len(tokenizer), **text},
        )
        text_encoder: Any = CLIPTextModel(text_config)
    return {
        "unet": unet_model.eval(),
        "vae": vae_model.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": build_scheduler(scheduler),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def _tiny_components(*, in_channels: int, seed: int, scheduler: str) -> dict[str, Any]:
    """Build very small random components: two UNet and VAE blocks of 32 and 64 channels, a 2-layer text encoder."""
    return _components(
        in_channels=in_channels,
        seed=seed,
        scheduler=scheduler,
        unet={
            "sample_size": 16,
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "cross_attention_dim": 32,
            "attention_head_dim": 8,
            "norm_num_groups": 32,
        },
        vae={
            "sample_size": 32,
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
            "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
            "norm_num_groups": 32,
        },
        text={
            "hidden_size": 32,
            "intermediate_size": 64,
            "projection_dim": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        },
    )


def _finish(pipe: Any, device: str, dtype: torch.dtype | None) -> Any:
    """Move a pipeline to `device`, cast its models to `dtype` when one is given, and silence its progress bar."""
    import torch

    pipe.to(device)
    if dtype is not None:
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                # Not `pipe.to(dtype)`: diffusers' ModelMixin.to logs "There are modules in UNet2DConditionModel that
                # should be kept in float32: []" on every dtype cast, even with no such modules.
                torch.nn.Module.to(component, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_instruct_pix2pix(
    device: str = "cpu", dtype: torch.dtype | None = None, seed: int = 0, scheduler: str = "ddim"
) -> Any:
    """Build a very small InstructPix2Pix pipeline with random weights, offline.

    Returns a `diffusers.StableDiffusionInstructPix2PixPipeline` whose UNet takes 8 input channels (the noisy
    latents and the image latents); the VAE downsamples by 2, so a 32x32 image gives 16x16 latents. `scheduler`
    is one of `SCHEDULERS`. No safety checker. The same `seed` gives the same weights.
    """
    components = _tiny_components(in_channels=8, seed=seed, scheduler=scheduler)
    return _finish(_diffusers().StableDiffusionInstructPix2PixPipeline(**components), device, dtype)


def tiny_text_to_image(
    device: str = "cpu", dtype: torch.dtype | None = None, seed: int = 0, scheduler: str = "ddim"
) -> Any:
    """Build a very small text-to-image Stable Diffusion pipeline with random weights, offline.

    Returns a `diffusers.StableDiffusionPipeline` with the same components as `tiny_instruct_pix2pix` but a
    4-channel UNet; its default output is 32x32. `scheduler` is one of `SCHEDULERS`.
    """
    components = _tiny_components(in_channels=4, seed=seed, scheduler=scheduler)
    return _finish(_diffusers().StableDiffusionPipeline(**components), device, dtype)


def sd15_sized_instruct_pix2pix(
    device: str, dtype: torch.dtype | None, seed: int = 0, scheduler: str = "euler_a"
) -> Any:
    """Build an InstructPix2Pix pipeline with Stable Diffusion 1.5's architecture and random weights, offline.

    Returns a `diffusers.StableDiffusionInstructPix2PixPipeline` whose UNet (860M parameters, 8 input
    channels), VAE and CLIP ViT-L/14 text encoder have the sizes of the published InstructPix2Pix model, for
    GPU benchmarks at 512x512 in float16. The tokenizer is the small local one, so most of the 49408 token
    embeddings are never used. The components are built on CPU in float32 (about 4.3 GB) before the move.
    """
    components = _components(
        in_channels=8,
        seed=seed,
        scheduler=scheduler,
        unet={
            "sample_size": 64,
            "block_out_channels": (320, 640, 1280, 1280),
            "layers_per_block": 2,
            "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
            "norm_num_groups": 32,
        },
        vae={
            "sample_size": 512,
            "block_out_channels": (128, 256, 512, 512),
            "layers_per_block": 2,
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "norm_num_groups": 32,
        },
        text={
            "vocab_size": 49408,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "projection_dim": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "hidden_act": "quick_gelu",
        },
    )
    return _finish(_diffusers().StableDiffusionInstructPix2PixPipeline(**components), device, dtype)
