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
from typing import Any

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
        return CLIPTokenizer(
            vocab_file=str(root / "vocab.json"),
            merges_file=str(root / "merges.txt"),
            model_max_length=max_length,
        )
