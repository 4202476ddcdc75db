"""One entry point for every model of the course: :func:`load_model`.

``load_model(name, device=None, source="auto")`` returns a TransformerLens
``TransformerBridge`` in compatibility mode (the 4.x replacement of
``HookedTransformer``: same hook names, ``run_with_cache``, ``W_Q`` ...).

Sources
-------
``"real"``
    The real weights: from the Hugging Face cache, from a local directory
    named by ``MECHINTERP_WEIGHTS_DIR`` (``$MECHINTERP_WEIGHTS_DIR/<hub id>``),
    or downloaded from the hub. Without network and without a local copy it
    fails at once (no retries) with :class:`ModelUnavailableError`.
``"standin"``
    An offline stand-in with the real model's shapes and the chapters'
    mechanisms planted where the real model has them
    (:mod:`exercises_lib.standin`). Built in seconds, deterministically.
``"auto"`` (default)
    The real model when it can be loaded, otherwise the stand-in, with a
    banner saying so. ``MECHINTERP_SOURCE=standin`` (or ``real``) overrides it.

Every returned model carries ``model.is_standin``, ``model.display_name``
(e.g. ``"GPT-2 small (stand-in, real layer 0)"``; the figure helpers put it in
every title), ``model.provenance`` (one sentence: which weights are real, which
stand-in, what is planted) and ``model.weight_sources`` (the same, weight by
weight: :func:`exercises_lib.standin.processed_weight_sources`).

Processing (``fold_ln`` etc.) follows ``HookedTransformer.from_pretrained``'s
defaults: LayerNorm folded into the next weights, writing weights and the
unembedding centred, value biases folded. ``gpt2-noLN`` is loaded with no
folding and its LayerNorms disabled (chapter 5).

Taught in: chapter 0 (setup); used by every chapter.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import time
from typing import Literal, Mapping

import torch

__all__ = [
    "MODELS",
    "ModelUnavailableError",
    "load_model",
    "build_standin",
    "default_device",
    "real_weights_available",
]

#: The course's models: hub id and a readable name.
MODELS: dict[str, dict] = {
    "gpt2-small": dict(hub_id="gpt2", display="GPT-2 small"),
    "attn-only-4l": dict(
        hub_id="NeelNanda/Attn_Only_4L512W_C4_Code",
        tokenizer_id="NeelNanda/gpt-neox-tokenizer-digits",
        display="attn-only-4l",
    ),
    "gpt2-noLN": dict(hub_id="apollo-research/gpt2_noLN", display="GPT-2 small without LayerNorm"),
}

Source = Literal["auto", "real", "standin"]

_HUB_HOST = ("huggingface.co", 443)


class ModelUnavailableError(RuntimeError):
    """The real weights cannot be loaded here (no network and no local copy)."""


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; the course's models are {sorted(MODELS)}")


def _local_dir(hub_id: str) -> str | None:
    root = os.environ.get("MECHINTERP_WEIGHTS_DIR")
    if root:
        path = os.path.join(root, hub_id)
        if os.path.isdir(path):
            return path
    return None


def _in_hf_cache(hub_id: str) -> bool:
    try:
        from huggingface_hub import scan_cache_dir

        return any(repo.repo_id == hub_id for repo in scan_cache_dir().repos)
    except Exception:  # no cache directory yet
        return False


def _hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(_HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def real_weights_available(name: str) -> bool:
    """Whether ``load_model(name, source="real")`` can work here (quick check)."""
    _check_name(name)
    hub_id = MODELS[name]["hub_id"]
    return bool(_local_dir(hub_id) or _in_hf_cache(hub_id) or _hub_reachable())


def _unavailable_message(name: str) -> str:
    hub_id = MODELS[name]["hub_id"]
    return (
        f"The real weights of {name!r} ({hub_id}) cannot be loaded: the Hugging Face hub "
        "is not reachable from this machine and no local copy was found. Either run "
        "where the hub is reachable (e.g. Colab), or download the model once elsewhere "
        f"and point MECHINTERP_WEIGHTS_DIR at a folder containing {hub_id}/, or use the "
        f"offline stand-in: load_model({name!r}, source='standin')."
    )


# ---------------------------------------------------------------------------
# Stand-ins
# ---------------------------------------------------------------------------


def _to_hf_gpt2_state_dict(w: dict[str, torch.Tensor], cfg: dict) -> dict[str, torch.Tensor]:
    """TransformerLens-named weights -> Hugging Face GPT2LMHeadModel state dict."""
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
        qkv = [
            einops.rearrange(w[f"{p}.attn.{n}"], "head d dh -> d (head dh)")
            for n in ("W_Q", "W_K", "W_V")
        ]
        qkv_b = [
            einops.rearrange(w[f"{p}.attn.{n}"], "head dh -> (head dh)")
            for n in ("b_Q", "b_K", "b_V")
        ]
        sd.update(
            {
                f"{h}.ln_1.weight": w[f"{p}.ln1.w"],
                f"{h}.ln_1.bias": w[f"{p}.ln1.b"],
                f"{h}.attn.c_attn.weight": torch.cat(qkv, dim=1),
                f"{h}.attn.c_attn.bias": torch.cat(qkv_b),
                f"{h}.attn.c_proj.weight": einops.rearrange(
                    w[f"{p}.attn.W_O"], "head dh d -> (head dh) d"
                ),
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


def _gpt2_bridge(weights, cfg, tokenizer, model_name: str):
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(
        vocab_size=cfg["d_vocab"],
        n_positions=cfg["n_ctx"],
        n_embd=cfg["d_model"],
        n_layer=cfg["n_layers"],
        n_head=cfg["n_heads"],
        n_inner=cfg["d_mlp"],
        activation_function=cfg["act_fn"],
        tie_word_embeddings=True,
        bos_token_id=50256,
        eos_token_id=50256,
    )
    with torch.device("meta"):
        hf = GPT2LMHeadModel(hf_cfg)
    hf.load_state_dict(_to_hf_gpt2_state_dict(weights, cfg), assign=True, strict=False)
    hf.tie_weights()
    hf.eval()
    return build_bridge_from_module(
        hf, "GPT2LMHeadModel", hf_config=hf_cfg, tokenizer=tokenizer, model_name=model_name
    )


def _native_bridge(weights, cfg, tokenizer, model_name: str):
    import transformer_lens.model_bridge.sources  # noqa: F401  (registers boot_native)
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    tl_cfg = TransformerBridgeConfig(
        d_model=cfg["d_model"], n_layers=cfg["n_layers"], d_mlp=cfg["d_mlp"],
        d_head=cfg["d_head"], n_heads=cfg["n_heads"], n_ctx=cfg["n_ctx"],
        d_vocab=cfg["d_vocab"], act_fn=cfg["act_fn"], attn_only=cfg["attn_only"],
        normalization_type="LN", positional_embedding_type="standard",
        architecture="TransformerLensNative",
    )
    bridge = TransformerBridge.boot_native(tl_cfg, tokenizer=tokenizer, model_name=model_name)
    converted = convert_tl_checkpoint(dict(weights), tl_cfg)
    result = bridge.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return bridge


def build_standin(
    name: str,
    *,
    device: str | None = None,
    plants=None,
    placement: Mapping[str, Mapping] | None = None,
    seed: int = 0,
    processing: bool = True,
):
    """Build the stand-in of ``name`` as a TransformerBridge (no banner, no network).

    ``plants`` and ``placement`` are passed to
    :func:`exercises_lib.standin.build_standin_weights`; ``processing=False``
    skips the LayerNorm folding of compatibility mode.
    """
    from exercises_lib.standin import build_standin_weights, processed_weight_sources
    from exercises_lib.tokenizer import gpt2_tokenizer

    _check_name(name)
    tok = gpt2_tokenizer()
    build = build_standin_weights(name, plants=plants, placement=placement, seed=seed, tokenizer=tok)
    label = f"{name}-standin"
    if build.cfg["attn_only"]:
        model = _native_bridge(build.weights, build.cfg, tok, label)
    else:
        model = _gpt2_bridge(build.weights, build.cfg, tok, label)
    if name == "gpt2-noLN":
        from exercises_lib.layernorm import make_layernorm_free_standin

        make_layernorm_free_standin(model, build)
    _finish(model, name, is_standin=True, device=device, processing=processing and name != "gpt2-noLN")
    model.standin_placement = build.placement  # for tests only: never read by analysis code
    model.standin_notes = build.notes
    model.display_name = build.display_name
    model.provenance = build.provenance
    model.weight_sources = processed_weight_sources(build.weight_sources(), build.cfg["n_layers"], build.cfg["attn_only"])
    return model


# ---------------------------------------------------------------------------
# Real models
# ---------------------------------------------------------------------------


def _load_real(name: str, device: str):
    info = MODELS[name]
    hub_id = info["hub_id"]
    local = _local_dir(hub_id)
    # Decide before importing TransformerLens (seconds, cold): offline, fail at once.
    if not (local or _in_hf_cache(hub_id) or _hub_reachable()):
        raise ModelUnavailableError(_unavailable_message(name))
    import transformer_lens.model_bridge.sources  # noqa: F401  (registers boot_* methods)
    from transformer_lens.model_bridge import TransformerBridge

    if local is None and not _hub_reachable():
        # Use the cache only; never wait on network retries.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        if name == "attn-only-4l":
            model = TransformerBridge.boot_tl_legacy(hub_id, device=device)
        elif name == "gpt2-noLN":
            from exercises_lib.layernorm import load_real_layernorm_free

            model = load_real_layernorm_free(hub_id=local or hub_id, device=device)
        else:
            model = TransformerBridge.boot_transformers(local or hub_id, device=device)
    except ModelUnavailableError:
        raise
    except (OSError, ValueError) as err:  # missing, truncated or corrupt files
        raise ModelUnavailableError(
            f"Loading the real weights of {name!r} failed: {err}. "
            + ("The local copy may be truncated or corrupt. " if local else "")
            + f"Use load_model({name!r}, source='standin') to continue offline."
        ) from err
    return model


def _finish(model, name: str, *, is_standin: bool, device: str | None, processing: bool) -> None:
    if processing:
        model.enable_compatibility_mode(disable_warnings=True)
    else:
        model.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    with contextlib.redirect_stdout(io.StringIO()):  # TransformerLens prints "Moving model to device"
        model.to(device or default_device())
    model.eval()
    model.is_standin = is_standin
    model.course_name = name
    base = MODELS[name]["display"]
    model.display_name = f"{base} (stand-in)" if is_standin else base
    if not is_standin:
        model.provenance = f"{base}: the real model's weights ({MODELS[name]['hub_id']})."
        model.weight_sources = {"*": {"source": "real", "plants": []}}


def load_model(
    name: str,
    device: str | None = None,
    source: Source = "auto",
    *,
    plants=None,
    placement: Mapping[str, Mapping] | None = None,
    seed: int = 0,
    quiet: bool = False,
):
    """Load a course model as a TransformerBridge in compatibility mode.

    Args:
        name: ``"gpt2-small"``, ``"attn-only-4l"`` or ``"gpt2-noLN"``.
        device: ``"cpu"``, ``"cuda"``...; default: CUDA when available.
        source: ``"auto"`` (real if loadable, else stand-in), ``"real"`` or
            ``"standin"``. The environment variable ``MECHINTERP_SOURCE``
            overrides ``"auto"``.
        plants, placement, seed: stand-in options (see
            :func:`exercises_lib.standin.build_standin_weights`); used by tests
            to plant mechanisms elsewhere.
        quiet: no banner.

    Raises:
        ModelUnavailableError: ``source="real"`` and the weights cannot be had.
    """
    _check_name(name)
    if source not in ("auto", "real", "standin"):
        raise ValueError(f"source must be 'auto', 'real' or 'standin', not {source!r}")
    if source == "auto":
        source = os.environ.get("MECHINTERP_SOURCE", "auto")  # type: ignore[assignment]
    device = device or default_device()
    if source in ("auto", "real"):
        start = time.monotonic()
        try:
            model = _load_real(name, device)
        except ModelUnavailableError as err:
            if source == "real":
                raise
            if not quiet:
                print(f"[{name}] real weights unavailable ({time.monotonic() - start:.1f}s): using the stand-in.")
        else:
            _finish(model, name, is_standin=False, device=device, processing=name != "gpt2-noLN")
            return model
    model = build_standin(name, device=device, plants=plants, placement=placement, seed=seed)
    if not quiet:
        from exercises_lib.render import standin_banner

        standin_banner(model.display_name, model.provenance)
    return model
