"""The course's models, the error raised when real weights cannot be had, the default device.

Taught in: chapter 0 (setup).
"""

from __future__ import annotations

import torch

__all__ = ["MODELS", "ModelUnavailableError", "default_device", "check_name"]

#: The course's models: hub id, a readable name, and what a real copy must look like.
MODELS: dict[str, dict] = {
    "gpt2-small": dict(
        hub_id="gpt2",
        display="GPT-2 small",
        layout="hf-gpt2",
        expect=dict(model_type="gpt2", n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257),
    ),
    "attn-only-4l": dict(
        hub_id="NeelNanda/Attn_Only_4L512W_C4_Code",
        tokenizer_id="NeelNanda/gpt-neox-tokenizer-digits",
        display="attn-only-4l",
        layout="tl-legacy",
        expect=dict(n_layers=4, n_heads=8, d_model=512, d_head=64, attn_only=True),
    ),
    "gpt2-noLN": dict(
        hub_id="apollo-research/gpt2_noLN",
        display="GPT-2 small without LayerNorm",
        layout="hf-gpt2",
        expect=dict(model_type="gpt2", n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257),
    ),
}


class ModelUnavailableError(RuntimeError):
    """The real weights cannot be loaded here: no network and no local copy, or a
    local copy that is incomplete, corrupt, of another model, or in a format the
    course refuses (pickle). The message names the file and the fix."""


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; the course's models are {sorted(MODELS)}")
