"""GPT-2 without LayerNorm: the real ``gpt2_noLN`` and the stand-in, as TransformerBridges.

The real model is ``apollo-research/gpt2_noLN`` (GPT-2 small fine-tuned
without LayerNorm). On the hub its LayerNorms are neutralised by
``eps = 1e12`` and weights scaled by ``1e6``, so ``LN(x) = w' (x - mean) + b``
with ``w' = w / sqrt(eps)``. :func:`load_real_layernorm_free` loads it into a
bridge the way TransformerLens 4 allows: the constant scale, ``w'`` and ``b``
are folded into the reading weights (which are centred), and each LayerNorm
module is replaced by ``nn.Identity``, which the bridge's normalisation
component supports (``hook_scale`` then reads 1). The unembedding is not
centred, so the logits equal the Hugging Face model's.

The stand-in (:func:`make_layernorm_free_standin`) is LayerNorm-free by
construction: each LayerNorm's data-dependent scale is replaced by a
constant (its median on a reference text), folded the same way.
:func:`layernorm_free_reference` gives the Hugging Face model a course model
must agree with: the hub's model for the real one, the same ``eps = 1e12``
construction from the stand-in's weights for the stand-in.

Taught in: chapter 5 (LayerNorm and patching).
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, Sequence

import torch

import exercises_lib.models._bridges as _bridges

__all__ = [
    "make_layernorm_free_standin",
    "load_real_layernorm_free",
    "layernorm_free_reference",
    "hub_layernorm_free_state_dict",
]

HUB_EPS = 1e12  # the hub's LayerNorm epsilon for gpt2_noLN


def _hf_layernorms(hf) -> list[tuple[torch.nn.LayerNorm, str]]:
    """The LayerNorm modules of a Hugging Face GPT-2: ``ln_1``, ``ln_2`` of each block, then ``ln_f``."""
    out = []
    for layer, block in enumerate(hf.transformer.h):
        out += [(block.ln_1, f"blocks.{layer}.ln1"), (block.ln_2, f"blocks.{layer}.ln2")]
    return out + [(hf.transformer.ln_f, "ln_final")]


@torch.no_grad()
def _fold_constant_layernorms(hf, constants: Sequence[float]) -> None:
    """Make a Hugging Face GPT-2 LayerNorm-free, in place.

    LayerNorm ``k`` becomes ``x -> w_k (x - mean) / constants[k] + b_k``; the
    matrix ``W`` (GPT-2's Conv1D layout [d_in, d_out]) and bias ``b_W`` that read
    it become ``diag(w_k / c_k) W``, centred over its input axis, and
    ``b_W + b_k W``; the LayerNorm is left as weight 1, bias 0, for the caller
    to replace by an identity. The unembedding is untied from the embedding
    and gets a bias.
    """
    lns = _hf_layernorms(hf)
    if len(constants) != len(lns):
        raise ValueError(f"need {len(lns)} constants, got {len(constants)}")

    def fold(ln, c, W, b_W):
        scaled = (ln.weight / c)[:, None] * W
        return scaled - scaled.mean(0, keepdim=True), b_W + ln.bias @ W

    for layer, block in enumerate(hf.transformer.h):
        for ln, c, conv in ((block.ln_1, constants[2 * layer], block.attn.c_attn),
                            (block.ln_2, constants[2 * layer + 1], block.mlp.c_fc)):
            W, b = fold(ln, c, conv.weight, conv.bias)
            conv.weight.copy_(W)
            conv.bias.copy_(b)
    W_U = hf.lm_head.weight.T  # [d_model, d_vocab]
    W, b_U = fold(hf.transformer.ln_f, constants[-1], W_U, torch.zeros(W_U.shape[1], dtype=W_U.dtype, device=W_U.device))
    hf.lm_head.weight = torch.nn.Parameter(W.T.contiguous())  # untied from wte
    hf.config.tie_word_embeddings = False
    if getattr(hf.lm_head, "bias", None) is None:
        hf.lm_head.bias = torch.nn.Parameter(b_U)
    else:
        hf.lm_head.bias.data = b_U
    for ln, _ in lns:
        ln.weight.fill_(1.0)
        ln.bias.zero_()


def _disable_bridge_layernorms(bridge) -> None:
    """Replace every LayerNorm of a bridge by ``nn.Identity`` (``hook_scale`` reads 1)."""
    comps = [bridge.blocks[layer].ln1 for layer in range(len(bridge.blocks))]
    comps += [bridge.blocks[layer].ln2 for layer in range(len(bridge.blocks))]
    comps.append(bridge.ln_final)
    for comp in comps:
        comp.set_original_component(torch.nn.Identity())
        comp.use_native_layernorm_autograd = True  # the path with the Identity branch


@torch.no_grad()
def _standin_constants(hf, tokenizer, n_tokens: int = 128) -> list[float]:
    """Median LayerNorm scale of each LayerNorm of ``hf`` on a reference text (positions 1..)."""
    from exercises_lib.texts import load_text

    ids = tokenizer.encode(load_text("fiction"), add_special_tokens=False, verbose=False)[: n_tokens - 1]
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else _bridges.GPT2_EOS
    tokens = torch.tensor([[bos] + ids])
    lns = _hf_layernorms(hf)
    found: dict[int, float] = {}
    handles = []
    for k, (ln, _) in enumerate(lns):
        def grab(module, args, k=k):
            x = args[0].float()
            s = (x.var(-1, unbiased=False) + module.eps).sqrt()[0, 1:]
            found[k] = float(s.median())

        handles.append(ln.register_forward_pre_hook(grab))
    try:
        hf(tokens)
    finally:
        for h in handles:
            h.remove()
    return [found[k] for k in range(len(lns))]


def make_layernorm_free_standin(model, reference_weights, cfg: Mapping) -> None:
    """Turn a freshly built GPT-2-small stand-in bridge into a LayerNorm-free model, in place.

    Called by :func:`exercises_lib.models.build_standin` for ``"gpt2-noLN"``,
    before compatibility mode (which then runs without weight processing).
    Each LayerNorm's scale is replaced by a constant, its median on a reference
    text in the stand-in with LayerNorm; the constants, LN weights and biases
    are folded into the weights that read them; the LayerNorms become
    identities. ``model.layernorm_constants`` keeps the constants and
    :func:`layernorm_free_reference` builds the equivalent Hugging Face model
    from ``reference_weights``: the stand-in's weights before the folding
    (Hugging Face GPT-2 names), or a function returning them. They must not be
    the model's own tensors, which the folding edits in place.
    """
    weights = reference_weights() if callable(reference_weights) else reference_weights
    constants = standin_constants(weights, cfg, model.tokenizer)
    _fold_constant_layernorms(model.original_model, constants)
    _disable_bridge_layernorms(model)
    _mark_standin(model, constants, reference_weights, cfg)


def standin_constants(hf_weights: Mapping[str, torch.Tensor], cfg: Mapping, tokenizer) -> list[float]:
    """The LayerNorm-free stand-in's constants: each LayerNorm's median scale on a reference
    text, in the GPT-2 (with LayerNorm) whose weights are ``hf_weights``."""
    return _standin_constants(_bridges.hf_gpt2_model(hf_weights, _bridges.gpt2_hf_config(cfg)), tokenizer)


def _mark_standin(model, constants, reference_weights, cfg) -> None:
    model.layernorm_constants = list(constants)
    get = reference_weights if callable(reference_weights) else (lambda: reference_weights)
    model._layernorm_free_reference = functools.partial(_standin_reference, get, dict(cfg), list(constants))


def restore_layernorm_free_standin(state: Mapping[str, torch.Tensor], cfg: Mapping, constants, reference_weights,
                                   tokenizer, model_name: str):
    """The stand-in of :func:`make_layernorm_free_standin` from its saved weights (the disk cache).

    ``state`` is the wrapped module's state dict after the folding (LayerNorms
    already identities); nothing is recomputed.
    """
    from transformers import GPT2LMHeadModel

    with torch.device("meta"):
        hf = GPT2LMHeadModel(_bridges.gpt2_hf_config(cfg, tie_word_embeddings=False))
    hf = hf.to_empty(device="cpu").eval()
    hf.lm_head.bias = torch.nn.Parameter(torch.empty(cfg["d_vocab"]))
    model = _bridges.gpt2_bridge(hf, tokenizer, model_name)
    _disable_bridge_layernorms(model)
    result = model.original_model.load_state_dict(dict(state), strict=True, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError("saved weights do not fit the LayerNorm-free model")
    model.cfg.tie_word_embeddings = bool(cfg.get("tied_embeddings", True))  # as built, before the untying
    _mark_standin(model, constants, reference_weights, cfg)
    return model


def hub_layernorm_free_state_dict(hf_weights: Mapping[str, torch.Tensor], constants: Sequence[float], eps: float = HUB_EPS):
    """The hub's form of a LayerNorm-free GPT-2: every LayerNorm weight ``w`` becomes
    ``w * sqrt(eps) / c`` (to be used with ``layer_norm_epsilon = eps``), so that
    ``LN(x) = w (x - mean) / c + b`` up to a relative ``var(x) / 2 eps``."""
    sd = dict(hf_weights)
    names = [k for k in sd if (".ln_1.weight" in k or ".ln_2.weight" in k)]
    names = sorted(names, key=lambda k: (int(k.split(".h.")[1].split(".")[0]), ".ln_2." in k)) + ["transformer.ln_f.weight"]
    if len(names) != len(constants):
        raise ValueError(f"need {len(names)} constants, got {len(constants)}")
    for name, c in zip(names, constants):
        sd[name] = sd[name] * (math.sqrt(eps) / c)
    return sd


def _standin_reference(get_weights, cfg, constants, eps: float = HUB_EPS):
    """The stand-in's LayerNorm-free model as a Hugging Face GPT-2, the hub's way."""
    sd = hub_layernorm_free_state_dict({k: v.clone() for k, v in get_weights().items()}, constants, eps)
    return _bridges.hf_gpt2_model(sd, _bridges.gpt2_hf_config(cfg, layer_norm_epsilon=eps))


def load_real_layernorm_free(path: str, device: str | None = None, tokenizer=None, hf_model=None):
    """Load ``apollo-research/gpt2_noLN`` from a local folder as a LayerNorm-free TransformerBridge.

    ``path`` holds the hub's files (``config.json``, ``model.safetensors``);
    only safetensors are read. The hub's model neutralises each LayerNorm with
    ``eps = 1e12`` and a weight ``1e6`` times too large:
    ``LN(x) ~ (w / sqrt(eps)) (x - mean) + b``. That constant ``sqrt(eps)``,
    ``w`` and ``b`` are folded into the reading weights and the LayerNorms
    become identities. The caller (:func:`exercises_lib.models.load_model`)
    then enables compatibility mode *without* weight processing, so the
    unembedding stays uncentred and the logits equal the Hugging Face model's.
    ``hf_model``: the model already loaded from ``path`` (it is edited in place).
    """
    from transformers import GPT2LMHeadModel

    if tokenizer is None:
        from exercises_lib.tokenizer import gpt2_tokenizer

        tokenizer = gpt2_tokenizer()
    hf = hf_model if hf_model is not None else GPT2LMHeadModel.from_pretrained(
        str(path), use_safetensors=True, local_files_only=True)
    hf.eval()
    constants = [math.sqrt(ln.eps) for ln, _ in _hf_layernorms(hf)]
    _fold_constant_layernorms(hf, constants)
    bridge = _bridges.gpt2_bridge(hf, tokenizer, str(path))
    _disable_bridge_layernorms(bridge)
    bridge.layernorm_constants = constants
    bridge._layernorm_free_reference = functools.partial(_hub_reference, str(path))
    if device is not None:
        bridge.to(device)
    return bridge


def _hub_reference(path: str):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(path, use_safetensors=True, local_files_only=True).eval()


def layernorm_free_reference(model):
    """The Hugging Face model a LayerNorm-free course model must agree with.

    Real ``gpt2-noLN``: the hub's ``GPT2LMHeadModel`` (LayerNorms neutralised
    by ``eps = 1e12``). Stand-in: the same construction from the stand-in's
    weights and constants. On the model's device, in eval mode.
    """
    make = getattr(model, "_layernorm_free_reference", None)
    if make is None:
        raise ValueError("this model is not a LayerNorm-free course model: load it with load_model('gpt2-noLN')")
    device = next(model.parameters()).device
    return make().to(device)
