"""Weight formats and TransformerBridge construction.

This is the course's only door into TransformerLens internals: everything that
imports a private TransformerLens module, or relies on how the bridge stores
processed weights, lives here, and ``tests/test_models.py`` fails when
TransformerLens changes under it.

Three formats meet here:

* **TransformerLens names** (``embed.W_E``, ``blocks.0.attn.W_Q`` with shape
  [head, d_model, d_head], ...): the stand-in builder writes these, and the
  legacy checkpoints of the hub (``attn-only-4l``'s ``model_final.pth``) store them.
* **Hugging Face GPT-2** (``transformer.h.0.attn.c_attn.weight``, ...): the
  format of ``gpt2`` and ``gpt2_noLN`` on the hub.
* **The bridge's processed weights**: what compatibility mode leaves in the
  wrapped module after folding LayerNorm and centring (the stand-in disk cache
  stores these, so a second load skips the processing).

Taught in: chapter 0 (setup).
"""

from __future__ import annotations

import contextlib
import io
from typing import Mapping

import torch

__all__ = [
    "GPT2_EOS",
    "gpt2_hf_config",
    "tl_to_hf_gpt2",
    "hf_gpt2_model",
    "gpt2_bridge",
    "native_config",
    "legacy_config",
    "native_bridge",
    "enable_compatibility",
    "processed_state",
    "bridge_from_processed",
]

GPT2_EOS = 50256  # <|endoftext|>, GPT-2's BOS and EOS


def gpt2_hf_config(cfg: Mapping, *, layer_norm_epsilon: float = 1e-5, tie_word_embeddings: bool = True):
    """The ``GPT2Config`` of a model with the shapes in ``cfg`` (the builder's config dict)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=cfg["d_vocab"],
        n_positions=cfg["n_ctx"],
        n_embd=cfg["d_model"],
        n_layer=cfg["n_layers"],
        n_head=cfg["n_heads"],
        n_inner=cfg["d_mlp"],
        activation_function=cfg["act_fn"],
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=GPT2_EOS,
        eos_token_id=GPT2_EOS,
        layer_norm_epsilon=layer_norm_epsilon,
    )


def tl_to_hf_gpt2(w: Mapping[str, torch.Tensor], cfg: Mapping) -> dict[str, torch.Tensor]:
    """TransformerLens-named weights -> a Hugging Face ``GPT2LMHeadModel`` state dict."""
    import einops

    sd = {
        "transformer.wte.weight": w["embed.W_E"],
        "transformer.wpe.weight": w["pos_embed.W_pos"],
        "transformer.ln_f.weight": w["ln_final.w"],
        "transformer.ln_f.bias": w["ln_final.b"],
        "lm_head.weight": w["unembed.W_U"].T,
    }
    for layer in range(cfg["n_layers"]):
        p, h = f"blocks.{layer}", f"transformer.h.{layer}"
        qkv = [einops.rearrange(w[f"{p}.attn.{n}"], "head d dh -> d (head dh)") for n in ("W_Q", "W_K", "W_V")]
        qkv_b = [einops.rearrange(w[f"{p}.attn.{n}"], "head dh -> (head dh)") for n in ("b_Q", "b_K", "b_V")]
        sd.update(
            {
                f"{h}.ln_1.weight": w[f"{p}.ln1.w"],
                f"{h}.ln_1.bias": w[f"{p}.ln1.b"],
                f"{h}.attn.c_attn.weight": torch.cat(qkv, dim=1),
                f"{h}.attn.c_attn.bias": torch.cat(qkv_b),
                f"{h}.attn.c_proj.weight": einops.rearrange(w[f"{p}.attn.W_O"], "head dh d -> (head dh) d"),
                f"{h}.attn.c_proj.bias": w[f"{p}.attn.b_O"],
                f"{h}.ln_2.weight": w[f"{p}.ln2.w"],
                f"{h}.ln_2.bias": w[f"{p}.ln2.b"],
                f"{h}.mlp.c_fc.weight": w[f"{p}.mlp.W_in"],
                f"{h}.mlp.c_fc.bias": w[f"{p}.mlp.b_in"],
                f"{h}.mlp.c_proj.weight": w[f"{p}.mlp.W_out"],
                f"{h}.mlp.c_proj.bias": w[f"{p}.mlp.b_out"],
            }
        )
    return {k: v.contiguous().clone() for k, v in sd.items()}


def hf_gpt2_model(state_dict: Mapping[str, torch.Tensor], hf_cfg):
    """A ``GPT2LMHeadModel`` holding ``state_dict`` (tensors assigned, not copied), in eval mode.

    With ``hf_cfg.tie_word_embeddings`` the unembedding is the embedding;
    otherwise ``lm_head.weight`` (and ``lm_head.bias``, when given) are its own.
    """
    from transformers import GPT2LMHeadModel

    with torch.device("meta"):
        hf = GPT2LMHeadModel(hf_cfg)
    sd = dict(state_dict)
    bias = sd.pop("lm_head.bias", None)
    result = hf.load_state_dict(sd, assign=True, strict=False)
    missing = [k for k in result.missing_keys if not (hf_cfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing:
        raise ValueError(f"GPT-2 weights without {missing[:4]}")
    if hf_cfg.tie_word_embeddings:
        hf.tie_weights()
    if bias is not None:
        hf.lm_head.bias = torch.nn.Parameter(bias)
    return hf.eval()


def gpt2_bridge(hf, tokenizer, model_name: str):
    """A TransformerBridge around a Hugging Face GPT-2 already in memory."""
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    return build_bridge_from_module(
        hf, "GPT2LMHeadModel", hf_config=hf.config, tokenizer=tokenizer, model_name=model_name
    )


def native_config(cfg: Mapping):
    """The bridge config of an attention-only (or GPT-like) TransformerLens-native model."""
    from transformer_lens.config import TransformerBridgeConfig

    return TransformerBridgeConfig(
        d_model=cfg["d_model"], n_layers=cfg["n_layers"], d_mlp=cfg["d_mlp"],
        d_head=cfg["d_head"], n_heads=cfg["n_heads"], n_ctx=cfg["n_ctx"],
        d_vocab=cfg["d_vocab"], act_fn=cfg["act_fn"], attn_only=cfg["attn_only"],
        normalization_type="LN", positional_embedding_type="standard",
        architecture="TransformerLensNative",
    )


def legacy_config(cfg_json: Mapping, repo_id: str):
    """The bridge config of a legacy TransformerLens checkpoint, from its ``config.json``.

    The same translation as TransformerLens's ``boot_tl_legacy``
    (``derive_tl_legacy_config``), applied to a file already on disk.
    """
    from transformer_lens.config import TransformerBridgeConfig

    if cfg_json.get("shortformer_pos", False):
        raise ValueError("shortformer positional embeddings are not supported by the native bridge")
    architecture = cfg_json.get("architecture", "neel" if "_old" not in repo_id else "neel-solu-old")
    if architecture != "neel":
        raise ValueError(f"legacy layout {architecture!r} is not the one of {repo_id}")
    cfg = TransformerBridgeConfig(
        d_model=cfg_json["d_model"],
        n_layers=cfg_json["n_layers"],
        d_mlp=cfg_json["d_mlp"],
        d_head=cfg_json["d_head"],
        n_heads=cfg_json["n_heads"],
        n_ctx=cfg_json["n_ctx"],
        d_vocab=cfg_json["d_vocab"],
        act_fn=cfg_json["act_fn"],
        attn_only=cfg_json["attn_only"],
        final_rms=cfg_json.get("final_rms", False),
        normalization_type=cfg_json.get("normalization", cfg_json.get("normalization_type")),
        positional_embedding_type="standard",
        tokenizer_name=cfg_json.get("tokenizer_name"),
        architecture="TransformerLensNative",
    )
    cfg.original_architecture = architecture  # type: ignore[attr-defined]
    return cfg


def native_bridge(tl_weights: Mapping[str, torch.Tensor], tl_cfg, tokenizer, model_name: str):
    """A TransformerLens-native bridge holding TransformerLens-named weights.

    As ``boot_tl_legacy`` does: ``boot_native``, ``convert_tl_checkpoint``, a
    zero unembedding bias when the checkpoint has none, and a strict load (the
    random initialisation that the load overwrites is skipped).
    """
    import transformer_lens.model_bridge.sources  # noqa: F401  (registers boot_native)
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    tl_cfg.init_weights = False  # every weight is overwritten by the strict load below
    bridge = TransformerBridge.boot_native(tl_cfg, tokenizer=tokenizer, model_name=model_name)
    converted = convert_tl_checkpoint(dict(tl_weights), tl_cfg)
    if "unembed.bias" not in converted:
        converted["unembed.bias"] = torch.zeros(tl_cfg.d_vocab)
    result = bridge.load_state_dict(converted, strict=True)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"weights do not fit: missing {result.missing_keys[:4]}, unexpected {result.unexpected_keys[:4]}")
    return bridge


def enable_compatibility(model, *, processing: bool) -> None:
    """Compatibility mode as ``HookedTransformer.from_pretrained`` set it up: LayerNorm
    folded, writing weights and unembedding centred, value biases folded (or none
    of it with ``processing=False``)."""
    with contextlib.redirect_stdout(io.StringIO()):
        if processing:
            model.enable_compatibility_mode(disable_warnings=True)
        else:
            model.enable_compatibility_mode(disable_warnings=True, no_processing=True)


def processed_state(model) -> dict[str, torch.Tensor]:
    """The wrapped module's weights after compatibility mode processed them (for the disk cache)."""
    return {k: v.detach() for k, v in model.original_model.state_dict().items()}


def bridge_from_processed(kind: str, state: Mapping[str, torch.Tensor], cfg: Mapping, tokenizer, model_name: str):
    """Rebuild a processed bridge from :func:`processed_state`, without processing again.

    ``kind`` is ``"hf-gpt2"`` or ``"native"``. The weights go in as they are
    (the unembedding untied from the embedding, as processing leaves it), then
    compatibility mode is switched on without processing and the bridge is
    marked processed. The result equals a freshly processed bridge: same
    weights, same config, same hooks (tested).
    """
    if kind == "hf-gpt2":
        from transformers import GPT2LMHeadModel

        with torch.device("meta"):
            hf = GPT2LMHeadModel(gpt2_hf_config(cfg, tie_word_embeddings=False))
        model = gpt2_bridge(hf.to_empty(device="cpu").eval(), tokenizer, model_name)
    elif kind == "native":
        import transformer_lens.model_bridge.sources  # noqa: F401  (registers boot_native)
        from transformer_lens.model_bridge import TransformerBridge

        tl_cfg = native_config(cfg)
        tl_cfg.init_weights = False  # every weight is overwritten below
        model = TransformerBridge.boot_native(tl_cfg, tokenizer=tokenizer, model_name=model_name)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    result = model.original_model.load_state_dict(dict(state), strict=True, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError("cached weights do not fit the model")
    # the configuration says what the model was built as, as after processing
    if kind == "hf-gpt2":
        tied = bool(cfg.get("tied_embeddings", True))
        model.cfg.tie_word_embeddings = tied
        model.original_model.config.tie_word_embeddings = tied
    enable_compatibility(model, processing=False)
    model._weights_processed = True  # what process_weights sets; a second processing is refused
    return model
