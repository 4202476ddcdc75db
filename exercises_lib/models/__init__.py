"""One entry point for every model of the course: :func:`load_model`.

``load_model(name, device=None, source="auto")`` returns a TransformerLens
``TransformerBridge`` in compatibility mode (the 4.x replacement of
``HookedTransformer``: same hook names, ``run_with_cache``, ``W_Q`` ...).

Sources
-------
``"real"``
    The real weights, from a local copy when there is one
    (``$MECHINTERP_WEIGHTS_DIR/<hub id>/``, or the Hugging Face cache; see
    :mod:`exercises_lib.models.local`), else downloaded from the hub into the
    Hugging Face cache. A local copy loads with no network access at all.
    Without network and without a usable local copy it fails at once with
    :class:`ModelUnavailableError`, whose message names the file and the fix.
``"standin"``
    An offline stand-in with the real model's shapes and the chapters'
    mechanisms planted where the real model has them
    (:mod:`exercises_lib.standin`), built deterministically and kept in a disk
    cache (:mod:`exercises_lib.models.cache`), so later loads take a second or two.
``"auto"`` (default)
    The real model when it can be loaded, otherwise the stand-in, with a
    banner saying so and why. ``MECHINTERP_SOURCE=standin`` (or ``real``)
    overrides it.

Every returned model carries ``model.is_standin``, ``model.display_name``
(e.g. ``"GPT-2 small (stand-in, real layer 0)"``; the figure helpers put it in
every title), ``model.provenance`` (one sentence: which weights are real and
where they came from, which are stand-in, what is planted) and
``model.weight_sources`` (the same, weight by weight:
:func:`exercises_lib.standin.processed_weight_sources`).

Processing (``fold_ln`` etc.) follows ``HookedTransformer.from_pretrained``'s
defaults: LayerNorm folded into the next weights, writing weights and the
unembedding centred, value biases folded. ``gpt2-noLN`` is loaded with no
folding and its LayerNorms disabled (chapter 5,
:mod:`exercises_lib.models.layernorm_free`).

The package is the course's only code that touches TransformerLens internals
(:mod:`exercises_lib.models._bridges`); it imports no chapter module.
:mod:`exercises_lib.models.export` writes a stand-in to disk in its real
model's hub layout, so the real path can be run offline.

Taught in: chapter 0 (setup); used by every chapter.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Literal, Mapping

import torch

from exercises_lib.models import local
from exercises_lib.models.layernorm_free import (
    layernorm_free_reference,
    load_real_layernorm_free,
    make_layernorm_free_standin,
)
from exercises_lib.models.registry import MODELS, ModelUnavailableError, check_name, default_device

__all__ = [
    "MODELS",
    "ModelUnavailableError",
    "load_model",
    "build_standin",
    "default_device",
    "real_weights_available",
    "make_layernorm_free_standin",
    "load_real_layernorm_free",
    "layernorm_free_reference",
]

Source = Literal["auto", "real", "standin"]
SOURCES = ("auto", "real", "standin")
SOURCE_ENV = "MECHINTERP_SOURCE"

_HUB_HOST = ("huggingface.co", 443)
#: Files fetched from the hub when no local copy exists (never pickles).
_HUB_FILES = {
    "hf-gpt2": ["config.json", "generation_config.json", "model.safetensors", "vocab.json", "merges.txt",
                "tokenizer.json", "tokenizer_config.json"],
    "tl-legacy": ["config.json", "model_final.pth"],
    "tokenizer": ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"],
}


def _hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(_HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def real_weights_available(name: str) -> bool:
    """Whether ``load_model(name, source="real")`` may work here (a quick check: a local
    copy exists, or the hub answers; the copy itself is checked when loaded)."""
    check_name(name)
    return local.find_local(MODELS[name]["hub_id"]) is not None or _hub_reachable()


def _unavailable_message(name: str) -> str:
    hub_id = MODELS[name]["hub_id"]
    root = os.environ.get(local.WEIGHTS_DIR_ENV)
    looked = [f"$MECHINTERP_WEIGHTS_DIR/{hub_id} ({root}/{hub_id})" if root else "MECHINTERP_WEIGHTS_DIR (not set)",
              f"the Hugging Face cache ({local.hf_cache_dir()})"]
    return (
        f"The real weights of {name!r} ({hub_id}) cannot be loaded: the Hugging Face hub "
        f"is not reachable from this machine and no local copy was found (looked in {' and '.join(looked)}). "
        "Either run where the hub is reachable (e.g. Colab), or download the model once elsewhere "
        f"and point MECHINTERP_WEIGHTS_DIR at a folder containing {hub_id}/, or use the "
        f"offline stand-in: load_model({name!r}, source='standin')."
    )


def _resolve_source(source: str) -> str:
    if source not in SOURCES:
        raise ValueError(f"source must be 'auto', 'real' or 'standin', not {source!r}")
    if source != "auto":
        return source
    env = os.environ.get(SOURCE_ENV, "").strip()
    if env == "":
        return "auto"
    if env not in SOURCES:
        raise ValueError(f"{SOURCE_ENV}={env!r} is not one of 'auto', 'real', 'standin'")
    return env


# ---------------------------------------------------------------------------
# Stand-ins
# ---------------------------------------------------------------------------


def _standin_tokenizer(tokenizer, name: str):
    if tokenizer is not None:
        return tokenizer
    from exercises_lib.tokenizer import default_tokenizer

    return default_tokenizer(name)


def _json_cfg(cfg: Mapping) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def build_standin(
    name: str,
    *,
    device: str | None = None,
    plants=None,
    placement: Mapping[str, Mapping] | None = None,
    seed: int = 0,
    processing: bool = True,
    tokenizer=None,
    cache: bool = True,
):
    """Build the stand-in of ``name`` as a TransformerBridge (no banner, no network).

    ``plants``, ``placement`` and ``seed`` are passed to
    :func:`exercises_lib.standin.build_standin_weights`; ``processing=False``
    skips the LayerNorm folding of compatibility mode. ``tokenizer`` (default:
    :func:`exercises_lib.tokenizer.default_tokenizer`: the code tokenizer for
    attn-only-4l, GPT-2's otherwise) sets the vocabulary: the stand-in's ``d_vocab`` is its size.
    With ``cache`` (default), the built weights are read from and written to
    the disk cache (:mod:`exercises_lib.models.cache`).
    """
    from exercises_lib.models import _bridges, cache as disk

    check_name(name)
    tok = _standin_tokenizer(tokenizer, name)
    processing = processing and name != "gpt2-noLN"
    cacheable = cache and (processing or name == "gpt2-noLN")
    key = disk.standin_key(name, plants=plants, placement=placement, seed=seed, processing=processing,
                           tokenizer=tok) if cacheable else None
    entry = disk.load_entry(name, key, skip="reference.") if key else None
    label = f"{name}-standin"
    if entry is not None:
        tensors, meta = entry
        cfg = meta["cfg"]
        if meta["kind"] == "layernorm-free":
            from exercises_lib.models.layernorm_free import restore_layernorm_free_standin

            path, ref = disk.entry_path(name, key), "reference."
            model = restore_layernorm_free_standin(
                tensors, cfg, meta["constants"], _reference_reader(path, ref, name, plants, placement, seed, tok), tok, label
            )
            _bridges.enable_compatibility(model, processing=False)
        else:
            model = _bridges.bridge_from_processed(meta["kind"], tensors, cfg, tok, label)
        del tensors
        placement_out, notes, provenance = meta["placement"], meta["notes"], meta.get("provenance")
        display, sources = meta.get("display_name"), meta.get("weight_sources")
    else:
        from tqdm.auto import tqdm

        from exercises_lib.standin import build_standin_weights, processed_weight_sources

        desc = f"building the {name} stand-in" + (" (once: it is kept in the disk cache)" if key else "")
        bar = tqdm(total=4, desc=desc, leave=False)
        build = build_standin_weights(name, plants=plants, placement=placement, seed=seed, tokenizer=tok)
        bar.update()
        cfg = _json_cfg(build.cfg)
        placement_out, notes = build.placement, list(build.notes)
        provenance = build.provenance
        display = build.display_name
        sources = processed_weight_sources(build.weight_sources(), build.cfg["n_layers"], build.cfg["attn_only"])
        reference = None
        if build.cfg["attn_only"]:
            model = _bridges.native_bridge(build.weights, _bridges.native_config(cfg), tok, label)
            kind = "native"
        else:
            hf_weights = _bridges.tl_to_hf_gpt2(build.weights, cfg)
            if name == "gpt2-noLN":
                reference = {k: v.clone() for k, v in hf_weights.items()}  # the folding edits hf_weights
            model = _bridges.gpt2_bridge(_bridges.hf_gpt2_model(hf_weights, _bridges.gpt2_hf_config(cfg)), tok, label)
            kind = "hf-gpt2"
            if name == "gpt2-noLN":
                kind = "layernorm-free"
                make_layernorm_free_standin(model, reference, cfg)
        del build
        bar.update()
        _bridges.enable_compatibility(model, processing=processing)
        bar.update()
        if key:
            meta = {"name": name, "kind": kind, "cfg": cfg, "placement": placement_out, "notes": notes,
                    "provenance": provenance, "display_name": display, "weight_sources": sources, "default": plants is None and not placement and seed == 0
                    and tokenizer is None and processing == (name != "gpt2-noLN")}
            if kind == "layernorm-free":
                meta["constants"] = model.layernorm_constants
            try:
                json.dumps(meta)
            except TypeError:  # a placement JSON cannot hold: no cache entry
                key = None
        if key:
            state = _bridges.processed_state(model)
            if reference is not None:
                state.update({f"reference.{k}": v for k, v in reference.items()})
            disk.store_entry(name, key, state, meta)
            del state
        bar.update()
        bar.close()
    _finish(model, name, is_standin=True, device=device)
    model.standin_placement = placement_out  # for tests only: never read by analysis code
    model.standin_notes = notes
    if display:
        model.display_name = display
    model.weight_sources = sources or {"*": {"source": "stand-in", "plants": []}}
    model.provenance = provenance or (
        f"Stand-in for {MODELS[name]['display']}: weights built by the course (exercises_lib.standin), "
        "with each chapter's mechanism planted; none of it is the real model's."
    )
    return model


def _reference_reader(path, prefix: str, name: str, plants, placement, seed: int, tok):
    """Read the LayerNorm-free stand-in's unfolded weights when its reference model is asked for:
    from the cache entry, or (when the entry was removed since) by building the stand-in's weights again."""

    def read():
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                found = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
            if found:
                return found
        except Exception:  # removed or replaced: build again
            pass
        from exercises_lib.models import _bridges
        from exercises_lib.standin import build_standin_weights

        build = build_standin_weights(name, plants=plants, placement=placement, seed=seed, tokenizer=tok)
        return _bridges.tl_to_hf_gpt2(build.weights, _json_cfg(build.cfg))

    return read


# ---------------------------------------------------------------------------
# Real models
# ---------------------------------------------------------------------------


def _download(hub_id: str, patterns: list[str]) -> local.LocalCopy:
    """Fetch ``patterns`` of ``hub_id`` into the Hugging Face cache (only called when the hub answers)."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(hub_id, allow_patterns=patterns, cache_dir=str(local.hf_cache_dir()))
    except Exception as err:  # network errors of every kind
        raise ModelUnavailableError(f"Downloading {hub_id} from the Hugging Face hub failed: {err}") from err
    from pathlib import Path

    return local.LocalCopy(hub_id, Path(path), "the Hugging Face cache")


def _locate(hub_id: str, layout: str) -> local.LocalCopy | None:
    """A complete local copy, or one downloaded now; ``None`` when neither can be had."""
    copy = local.find_local(hub_id)
    if copy is not None:
        try:
            if layout == "tokenizer":
                if not any((copy.folder / f).is_file() for f in ("tokenizer.json", "vocab.json")):
                    raise ModelUnavailableError(f"{copy.folder} holds no tokenizer files")
            else:
                local.weights_file(copy, layout)
                local.read_config(copy)
            return copy
        except ModelUnavailableError:
            # An incomplete cache entry (e.g. only config.json fetched) is completed online;
            # a broken folder the user pointed at is reported as it is.
            if copy.origin == local.WEIGHTS_DIR_ENV or not _hub_reachable():
                raise
    if not _hub_reachable():
        return None
    return _download(hub_id, _HUB_FILES[layout])


def _gpt2_tokenizer_from(copy: local.LocalCopy):
    from exercises_lib.tokenizer import gpt2_tokenizer

    folder = copy.folder
    if not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()) and not (folder / "tokenizer.json").is_file():
        return gpt2_tokenizer()  # the hub's files are GPT-2's tokenizer, shipped with the course
    from transformers import GPT2TokenizerFast

    files = [folder / f for f in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json") if (folder / f).is_file()]
    local.check_hashes(copy, files)
    try:
        tok = GPT2TokenizerFast.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:
        raise local._error(copy, f"its tokenizer files cannot be read ({type(err).__name__}: {err})") from None
    if len(tok) != 50257:
        raise local._error(copy, f"its tokenizer has {len(tok)} tokens, GPT-2's has 50257")
    return tok


def _legacy_tokenizer(tokenizer_id: str | None, d_vocab: int, copy: local.LocalCopy):
    """The tokenizer a legacy checkpoint names: a local copy, else one shipped with the course, else the hub's."""
    from exercises_lib import tokenizer as course_tokenizers

    if not tokenizer_id:
        raise local._error(copy, "its config.json names no tokenizer_name")
    # a local copy first, then one shipped with the course (GPT-2's is byte-identical to the
    # hub's), and only then the hub
    tok_copy = local.find_local(tokenizer_id)
    if tok_copy is None and tokenizer_id not in course_tokenizers.PACKAGED:
        tok_copy = _locate(tokenizer_id, "tokenizer")
    if tok_copy is not None:
        from transformers import AutoTokenizer

        files = [tok_copy.folder / f for f in _HUB_FILES["tokenizer"] + ["added_tokens.json"] if (tok_copy.folder / f).is_file()]
        local.check_hashes(tok_copy, files)
        try:
            tok = AutoTokenizer.from_pretrained(str(tok_copy.folder), local_files_only=True, trust_remote_code=False)
        except Exception as err:
            raise local._error(tok_copy, f"its tokenizer files cannot be read ({type(err).__name__}: {err})") from None
    elif tokenizer_id in course_tokenizers.PACKAGED:
        tok = course_tokenizers.PACKAGED[tokenizer_id]()
    else:
        raise ModelUnavailableError(
            f"{copy.hub_id} in {copy.describe()} needs the tokenizer {tokenizer_id}, which is neither in "
            f"$MECHINTERP_WEIGHTS_DIR/{tokenizer_id}/ nor in the Hugging Face cache, and the hub is not reachable. "
            f"Download {tokenizer_id} once and put its files in $MECHINTERP_WEIGHTS_DIR/{tokenizer_id}/, "
            "or continue offline with source='standin'."
        )
    if len(tok) > d_vocab:
        raise local._error(copy, f"its tokenizer {tokenizer_id} has {len(tok)} tokens but the model only {d_vocab}")
    return tok


def _load_hf_gpt2(name: str, copy: local.LocalCopy, device: str):
    path = local.weights_file(copy, "hf-gpt2")
    cfg = local.read_config(copy)
    local.check_config(name, copy, cfg)
    local.check_safetensors(copy, path)
    local.check_hashes(copy, [copy.folder / "config.json", path])
    tok = _gpt2_tokenizer_from(copy)
    try:
        from transformers import GPT2LMHeadModel
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a bar for a second's work, on stderr
        try:
            hf = GPT2LMHeadModel.from_pretrained(str(copy.folder), use_safetensors=True, local_files_only=True,
                                                 trust_remote_code=False)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
    except Exception as err:  # a file the checks above let through and the library refuses
        raise local._error(copy, f"loading {path} failed ({type(err).__name__}: {err})") from None
    local.check_tensors(copy, path, hf.state_dict().items())
    try:
        if name == "gpt2-noLN":
            model = load_real_layernorm_free(str(copy.folder), tokenizer=tok, hf_model=hf)
        else:
            import transformer_lens.model_bridge.sources  # noqa: F401  (registers boot_transformers)
            from transformer_lens.model_bridge import TransformerBridge

            model = TransformerBridge.boot_transformers(str(copy.folder), hf_model=hf.eval(), tokenizer=tok, device="cpu")
    except Exception as err:
        raise local._error(copy, f"wrapping {path} failed ({type(err).__name__}: {err})") from None
    model.cfg.model_name = copy.hub_id
    return model


def _load_tl_legacy(name: str, copy: local.LocalCopy, device: str):
    from exercises_lib.models import _bridges

    path = local.weights_file(copy, "tl-legacy")
    cfg_json = local.read_config(copy)
    local.check_config(name, copy, cfg_json)
    local.check_hashes(copy, [copy.folder / "config.json", path])
    try:
        tl_cfg = _bridges.legacy_config(cfg_json, copy.hub_id)
    except (KeyError, TypeError, ValueError) as err:
        raise local._error(copy, f"{copy.folder / 'config.json'} is not a TransformerLens legacy config ({err})") from None
    tok = _legacy_tokenizer(cfg_json.get("tokenizer_name"), tl_cfg.d_vocab, copy)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # tensors only, never code
    except Exception as err:
        raise local._error(copy, f"{path} cannot be read as a weights-only checkpoint ({type(err).__name__}); "
                                 "the course never unpickles arbitrary objects, so the file must be a fresh copy") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise local._error(copy, f"{path} is not a state dict of tensors")
    local.check_tensors(copy, path, state.items())
    try:
        model = _bridges.native_bridge({k: v.float() for k, v in state.items()}, tl_cfg, tok, copy.hub_id)
    except Exception as err:
        raise local._error(copy, f"{path} does not fit its config.json ({type(err).__name__}: {err})") from None
    return model


def _load_real(name: str, device: str):
    """Load the real model (unprocessed) or raise :class:`ModelUnavailableError`."""
    info = MODELS[name]
    copy = _locate(info["hub_id"], info["layout"])
    if copy is None:
        raise ModelUnavailableError(_unavailable_message(name))
    if info["layout"] == "tl-legacy":
        model = _load_tl_legacy(name, copy, device)
    else:
        model = _load_hf_gpt2(name, copy, device)
    model.provenance = (
        f"Real weights of {info['hub_id']} ({info['display']}), loaded from {copy.describe()}."
    )
    return model


def _finish(model, name: str, *, is_standin: bool, device: str | None) -> None:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # TransformerLens prints "Moving model to device"
        model.to(device or default_device())
    model.eval()
    model.is_standin = is_standin
    model.course_name = name
    base = MODELS[name]["display"]
    model.display_name = f"{base} (stand-in)" if is_standin else base
    if not is_standin:
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
            overrides ``"auto"``; any other value of it is an error.
        plants, placement, seed: stand-in options (see
            :func:`exercises_lib.standin.build_standin_weights`); used by tests
            to plant mechanisms elsewhere.
        quiet: no banner.

    Raises:
        ModelUnavailableError: ``source="real"`` and the weights cannot be had
            (the message names the file and the fix).
        ValueError: an unknown model or source (``MECHINTERP_SOURCE`` included).
    """
    check_name(name)
    source = _resolve_source(source)
    device = device or default_device()
    reason = None
    if source in ("auto", "real"):
        start = time.monotonic()
        try:
            model = _load_real(name, device)
        except ModelUnavailableError as err:
            if source == "real":
                raise
            reason = f"{err} (decided in {time.monotonic() - start:.1f} s)"
        else:
            from exercises_lib.models import _bridges

            try:
                _bridges.enable_compatibility(model, processing=name != "gpt2-noLN")
            except Exception as err:  # weights TransformerLens cannot process are not the model's
                raise ModelUnavailableError(
                    f"Processing the real weights of {name!r} ({model.provenance}) failed: {type(err).__name__}: {err}"
                ) from err
            _finish(model, name, is_standin=False, device=device)
            return model
    model = build_standin(name, device=device, plants=plants, placement=placement, seed=seed)
    if not quiet:
        from exercises_lib.render import standin_banner

        standin_banner(model.display_name, model.provenance, reason=reason)
    return model
