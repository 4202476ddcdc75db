"""GPT-2 small's real layer 0 and positional embedding, shipped with the course.

``exercises_lib/data/gpt2_small_layer0/model.safetensors`` holds part of the
real GPT-2 small (OpenAI's release; provenance and licence in the
``PROVENANCE.md`` and ``LICENSE-openai-gpt-2`` beside it): the positional
embedding ``W_pos`` and every parameter of layer 0 except the MLP's two weight
matrices. The GPT-2 small stand-in takes these values unchanged
(:func:`real_layer0_weights`); what is missing (token embeddings, ``W_in`` and
``W_out`` of MLP 0, layers 1-11) is built by the stand-in.

The file is checked against the sha256 written in ``PROVENANCE.md`` before it
is used: a missing, truncated or edited file raises :class:`RealWeightsError`
with the path and the fix.

Taught in: chapter 0 (setup); the weights of chapters 1 and 2.
"""

from __future__ import annotations

import functools
import hashlib
import re
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "RealWeightsError",
    "REAL_LAYER0_KEYS",
    "real_layer0_dir",
    "expected_sha256",
    "real_layer0_weights",
    "SOURCE",
]

#: Where the real values come from, in one line (for provenance sentences).
SOURCE = "OpenAI's GPT-2 small release"

#: The stand-in's weight names (TransformerLens naming, before processing) that hold real values.
REAL_LAYER0_KEYS = (
    "pos_embed.W_pos",
    "blocks.0.ln1.w", "blocks.0.ln1.b",
    "blocks.0.attn.W_Q", "blocks.0.attn.W_K", "blocks.0.attn.W_V", "blocks.0.attn.W_O",
    "blocks.0.attn.b_Q", "blocks.0.attn.b_K", "blocks.0.attn.b_V", "blocks.0.attn.b_O",
    "blocks.0.ln2.w", "blocks.0.ln2.b",
    "blocks.0.mlp.b_in", "blocks.0.mlp.b_out",
)

_FILE = "model.safetensors"
_HF_SHAPES = {
    "transformer.wpe.weight": (1024, 768),
    "transformer.h.0.ln_1.weight": (768,),
    "transformer.h.0.ln_1.bias": (768,),
    "transformer.h.0.attn.c_attn.weight": (768, 2304),
    "transformer.h.0.attn.c_attn.bias": (2304,),
    "transformer.h.0.attn.c_proj.weight": (768, 768),
    "transformer.h.0.attn.c_proj.bias": (768,),
    "transformer.h.0.ln_2.weight": (768,),
    "transformer.h.0.ln_2.bias": (768,),
    "transformer.h.0.mlp.c_fc.bias": (3072,),
    "transformer.h.0.mlp.c_proj.bias": (768,),
}


class RealWeightsError(RuntimeError):
    """The packaged real weights are missing or do not match their recorded checksum."""


def real_layer0_dir() -> Path:
    """The folder of the packaged real weights (``model.safetensors``, ``PROVENANCE.md``, licence)."""
    return Path(str(resources.files("exercises_lib") / "data" / "gpt2_small_layer0"))


def _fix(folder: Path) -> str:
    return (
        f"Reinstall the course package (pip install --force-reinstall mechinterp-course, or "
        f"`git checkout -- {folder}` in a clone) to restore the file; the stand-in needs it for "
        "GPT-2 small's real layer 0."
    )


def expected_sha256(folder: Path | None = None) -> str:
    """The sha256 recorded in ``PROVENANCE.md`` (the 64-hex-digit line after the word sha256)."""
    folder = folder or real_layer0_dir()
    prov = folder / "PROVENANCE.md"
    try:
        text = prov.read_text(encoding="utf-8")
    except OSError as err:
        raise RealWeightsError(f"{prov} is missing ({err.strerror}): it records the weights' checksum. {_fix(folder)}") from err
    match = re.search(r"sha256[^\n]*\n?\s*([0-9a-f]{64})", text)
    if not match:
        raise RealWeightsError(f"{prov} records no sha256 of {_FILE}. {_fix(folder)}")
    return match.group(1)


@functools.lru_cache(maxsize=2)
def _load_checked(folder: str) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(folder) / _FILE
    want = expected_sha256(Path(folder))
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RealWeightsError(f"GPT-2 small's real layer-0 weights are missing: {path} ({err.strerror}). {_fix(Path(folder))}") from err
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise RealWeightsError(
            f"{path} is corrupt: its sha256 is {got}, PROVENANCE.md records {want} "
            f"({len(data)} bytes read). {_fix(Path(folder))}"
        )
    try:
        sd = load(data)
    except (SafetensorError, ValueError) as err:  # cannot happen with the right checksum, but say so clearly
        raise RealWeightsError(f"{path} cannot be read as safetensors: {err}. {_fix(Path(folder))}") from err
    for key, shape in _HF_SHAPES.items():
        if key not in sd or tuple(sd[key].shape) != shape:
            raise RealWeightsError(f"{path} lacks {key} of shape {shape}. {_fix(Path(folder))}")
    return sd


def real_layer0_weights(folder: Path | str | None = None, n_heads: int = 12) -> dict[str, Tensor]:
    """GPT-2 small's real ``W_pos`` and layer-0 parameters in TransformerLens naming (unprocessed).

    Returns fresh tensors (safe to write into): ``pos_embed.W_pos`` [1024, 768],
    ``blocks.0.attn.W_Q/W_K/W_V`` [head, d_model, d_head], ``W_O`` [head, d_head, d_model],
    ``b_Q/b_K/b_V`` [head, d_head], ``b_O``, both LayerNorms' ``w`` and ``b``,
    ``blocks.0.mlp.b_in`` [3072] and ``b_out`` [768] (the keys of :data:`REAL_LAYER0_KEYS`).
    """
    sd = _load_checked(str(folder or real_layer0_dir()))
    d = 768
    dh = d // n_heads
    qkv = sd["transformer.h.0.attn.c_attn.weight"]  # [d, 3d] = [in, (q|k|v)(head dh)]
    qkv_b = sd["transformer.h.0.attn.c_attn.bias"]
    out = {"pos_embed.W_pos": sd["transformer.wpe.weight"]}
    for j, name in enumerate(("Q", "K", "V")):
        w = qkv[:, j * d : (j + 1) * d]
        out[f"blocks.0.attn.W_{name}"] = w.reshape(d, n_heads, dh).permute(1, 0, 2)
        out[f"blocks.0.attn.b_{name}"] = qkv_b[j * d : (j + 1) * d].reshape(n_heads, dh)
    out["blocks.0.attn.W_O"] = sd["transformer.h.0.attn.c_proj.weight"].reshape(n_heads, dh, d)
    out["blocks.0.attn.b_O"] = sd["transformer.h.0.attn.c_proj.bias"]
    out["blocks.0.ln1.w"] = sd["transformer.h.0.ln_1.weight"]
    out["blocks.0.ln1.b"] = sd["transformer.h.0.ln_1.bias"]
    out["blocks.0.ln2.w"] = sd["transformer.h.0.ln_2.weight"]
    out["blocks.0.ln2.b"] = sd["transformer.h.0.ln_2.bias"]
    out["blocks.0.mlp.b_in"] = sd["transformer.h.0.mlp.c_fc.bias"]
    out["blocks.0.mlp.b_out"] = sd["transformer.h.0.mlp.c_proj.bias"]
    assert set(out) == set(REAL_LAYER0_KEYS)
    return {k: v.to(torch.float32).contiguous().clone() for k, v in out.items()}
