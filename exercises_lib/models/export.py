"""Write a stand-in to disk exactly as its real model is laid out on the hub.

The real-model path of :func:`exercises_lib.models.load_model` (the one Colab
and the instructors' GPU runs take) can then be run offline, on files in the
hub's formats:

* ``gpt2`` (GPT-2 small): ``config.json``, ``generation_config.json`` and
  ``model.safetensors`` as the hub serves them (``GPT2Model`` names without the
  ``transformer.`` prefix, the causal-mask buffers ``h.N.attn.bias`` included,
  the unembedding tied to the embedding), and GPT-2's tokenizer files
  ``vocab.json``, ``merges.txt``, ``tokenizer.json``, ``tokenizer_config.json``;
* ``apollo-research/gpt2_noLN``: a ``GPT2LMHeadModel`` as ``save_pretrained``
  writes it, with the hub's neutralised LayerNorms (``layer_norm_epsilon=1e12``,
  LayerNorm weights scaled by ``1e12**0.5 / c``), and the same tokenizer files;
* ``NeelNanda/Attn_Only_4L512W_C4_Code``: the legacy TransformerLens format that
  ``TransformerBridge.boot_tl_legacy`` reads: ``config.json`` with the keys it
  reads (``d_model``, ``n_layers``, ``d_head``, ``n_heads``, ``d_mlp``, ``n_ctx``,
  ``d_vocab``, ``act_fn``, ``attn_only``, ``normalization``, ``tokenizer_name``, ...)
  and ``model_final.pth``, a ``torch.save``d state dict in TransformerLens names
  (``embed.W_E``, ``blocks.0.attn.W_Q`` [head, d_model, d_head], ...). The real
  checkpoint names the tokenizer ``NeelNanda/gpt-neox-tokenizer-digits``; an
  export names the tokenizer its stand-in was built with (``gpt2``, or the
  course's code tokenizer, whose files are exported beside it).

``layout="folder"`` writes ``<root>/<hub id>/`` (what ``MECHINTERP_WEIGHTS_DIR``
points at); ``layout="hf-cache"`` writes a Hugging Face cache
(``<root>/models--<org>--<name>/blobs/<hash>``, ``snapshots/<commit>/<file>``
symlinks, ``refs/main``), the large files' blobs named by their sha256 and the
small ones' by their git object id, as the hub does.

Command line::

    python -m exercises_lib.models.export ROOT [--layout folder|hf-cache] [--models gpt2-small ...]
                                               [--gpt2-tokenizer] [--manifest]

Taught in: chapter 0 (setup).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import torch

import exercises_lib.models._bridges as _bridges
from exercises_lib.models.layernorm_free import HUB_EPS, hub_layernorm_free_state_dict, standin_constants
from exercises_lib.models.manifest import file_sha256, git_blob_sha1, write_manifest
from exercises_lib.models.registry import MODELS

__all__ = ["export_standin", "export_standins", "folder_to_hf_cache", "LFS_SUFFIXES"]

#: Files the hub stores with Git LFS (their cache blobs are named by sha256).
LFS_SUFFIXES = (".safetensors", ".pth", ".bin", ".h5", ".msgpack", ".ot", ".onnx")

_GPT2_CONFIG = {  # gpt2's config.json on the hub, key for key
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1,
    "bos_token_id": 50256,
    "embd_pdrop": 0.1,
    "eos_token_id": 50256,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": 1024,
    "n_embd": 768,
    "n_head": 12,
    "n_layer": 12,
    "n_positions": 1024,
    "resid_pdrop": 0.1,
    "summary_activation": None,
    "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": 50257,
}
_GENERATION_CONFIG = {"_from_model_config": True, "bos_token_id": 50256, "eos_token_id": 50256}

Writer = Callable[[Path], None]


def _json_writer(obj) -> Writer:
    return lambda path: path.write_text(json.dumps(obj, indent=2) + "\n")


def _safetensors_writer(tensors: Mapping[str, torch.Tensor]) -> Writer:
    from safetensors.torch import save_file

    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return lambda path: save_file(plain, str(path), metadata={"format": "pt"})


def _gpt2_tokenizer_files() -> dict[str, Writer]:
    from exercises_lib.tokenizer import gpt2_tokenizer, tokenizer_dir

    src = Path(tokenizer_dir())
    tok = gpt2_tokenizer()
    return {
        "vocab.json": lambda p: shutil.copyfile(src / "vocab.json", p),
        "merges.txt": lambda p: shutil.copyfile(src / "merges.txt", p),
        "tokenizer.json": lambda p: tok.backend_tokenizer.save(str(p)),
        "tokenizer_config.json": _json_writer({"model_max_length": 1024}),
    }


def _tokenizer_repo_files(tokenizer) -> dict[str, Writer]:
    """A tokenizer repository as ``save_pretrained`` writes it (tokenizer.json and its configs)."""
    tmp = Path(tempfile.mkdtemp(prefix="tokenizer-export-"))
    tokenizer.save_pretrained(str(tmp))
    files = {}
    for p in sorted(tmp.iterdir()):
        data = p.read_bytes()
        files[p.name] = lambda path, data=data: path.write_bytes(data)
    shutil.rmtree(tmp, ignore_errors=True)
    return files


def _gpt2_hub_state_dict(hf_weights: Mapping[str, torch.Tensor], n_layers: int, n_ctx: int) -> dict[str, torch.Tensor]:
    """``gpt2``'s model.safetensors: GPT2Model names, tied unembedding left out, causal masks in."""
    sd = {k.removeprefix("transformer."): v for k, v in hf_weights.items() if k != "lm_head.weight"}
    mask = torch.tril(torch.ones(n_ctx, n_ctx)).view(1, 1, n_ctx, n_ctx)
    for layer in range(n_layers):
        sd[f"h.{layer}.attn.bias"] = mask.clone()
    return sd


def _model_files(name: str, build, tokenizer, tokenizer_id: str | None) -> dict[str, Writer]:
    cfg = {k: v for k, v in build.cfg.items() if not k.startswith("_")}
    if name == "attn-only-4l":
        legacy = {
            "act_fn": cfg["act_fn"], "attn_only": True, "d_head": cfg["d_head"], "d_mlp": cfg["d_mlp"],
            "d_model": cfg["d_model"], "d_vocab": cfg["d_vocab"], "n_ctx": cfg["n_ctx"], "n_heads": cfg["n_heads"],
            "n_layers": cfg["n_layers"], "normalization": "LN", "positional_embedding_type": "standard",
            "shortformer_pos": False, "tokenizer_name": tokenizer_id,
        }
        state = {k: v.detach().contiguous().clone() for k, v in build.weights.items()}
        return {"config.json": _json_writer(legacy), "model_final.pth": lambda p: torch.save(state, str(p))}
    hf_weights = _bridges.tl_to_hf_gpt2(build.weights, cfg)
    files = _gpt2_tokenizer_files()
    if name == "gpt2-small":
        files["config.json"] = _json_writer(_GPT2_CONFIG)
        files["generation_config.json"] = _json_writer({**_GENERATION_CONFIG, "transformers_version": "4.26.0.dev0"})
        files["model.safetensors"] = _safetensors_writer(_gpt2_hub_state_dict(hf_weights, cfg["n_layers"], cfg["n_ctx"]))
        return files
    # gpt2-noLN: constants from the stand-in with LayerNorm, then the hub's eps trick
    constants = standin_constants(hf_weights, cfg, tokenizer)
    sd = hub_layernorm_free_state_dict(hf_weights, constants)
    sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}  # tied: save_pretrained leaves it out
    config = {**_GPT2_CONFIG, "layer_norm_epsilon": HUB_EPS, "torch_dtype": "float32", "transformers_version": "4.44.0"}
    for key in ("summary_activation", "summary_first_dropout", "summary_proj_to_labels", "summary_type",
                "summary_use_proj", "task_specific_params"):
        config.pop(key)
    files["config.json"] = _json_writer(config)
    files["generation_config.json"] = _json_writer({**_GENERATION_CONFIG, "transformers_version": "4.44.0"})
    files["model.safetensors"] = _safetensors_writer(sd)
    return files


def _write_folder(folder: Path, files: Mapping[str, Writer], manifest: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for rel, write in files.items():
        write(folder / rel)
    if manifest:
        write_manifest(folder)
    return folder


def _write_hf_cache(root: Path, hub_id: str, files: Mapping[str, Writer]) -> Path:
    repo = root / ("models--" + hub_id.replace("/", "--"))
    blobs = repo / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    staged = {}
    for rel, write in files.items():
        fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".incomplete-")
        os.close(fd)
        write(Path(tmp))
        blob = file_sha256(tmp, remember=False) if rel.endswith(LFS_SUFFIXES) else git_blob_sha1(tmp)
        os.replace(tmp, blobs / blob)
        staged[rel] = blob
    commit = hashlib.sha1("".join(f"{k}\0{v}\n" for k, v in sorted(staged.items())).encode()).hexdigest()
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for rel, blob in staged.items():
        link = snap / rel
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blobs / blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def _link_or_copy(src: Path) -> Writer:
    def write(dst: Path) -> None:
        try:
            dst.unlink()
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)

    return write


def folder_to_hf_cache(folder: str | os.PathLike, root: str | os.PathLike, hub_id: str) -> Path:
    """Put the files of a model folder (``<weights dir>/<hub id>/``) into a Hugging Face
    cache rooted at ``root``, hard-linked where possible; returns the snapshot folder."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): _link_or_copy(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != "mechinterp-manifest.json"}
    return _write_hf_cache(Path(root), hub_id, files)


def _tokenizer_id(tokenizer) -> str:
    from exercises_lib import tokenizer as course_tokenizers

    for hub_id, make in course_tokenizers.PACKAGED.items():
        if make() is tokenizer:
            return hub_id
    from exercises_lib.models.cache import tokenizer_fingerprint

    return f"local/tokenizer-{tokenizer_fingerprint(tokenizer)[:12]}"


def export_standin(
    name: str,
    root: str | os.PathLike,
    *,
    layout: str = "folder",
    tokenizer=None,
    plants=None,
    placement=None,
    seed: int = 0,
    manifest: bool = False,
) -> Path:
    """Write the stand-in of ``name`` under ``root`` in its real model's hub layout; return the model's folder.

    ``layout``: ``"folder"`` (``<root>/<hub id>/``, for ``MECHINTERP_WEIGHTS_DIR``)
    or ``"hf-cache"`` (a Hugging Face cache rooted at ``root``, for
    ``HF_HUB_CACHE``). ``tokenizer`` (attn-only-4l only; default
    :func:`exercises_lib.tokenizer.default_tokenizer`) is
    the stand-in's tokenizer; when it is not GPT-2's, its files are exported
    too, under the id the checkpoint's ``config.json`` names. ``manifest``
    (folder layout) also writes ``mechinterp-manifest.json``.
    """
    from exercises_lib.standin import build_standin_weights
    from exercises_lib.tokenizer import default_tokenizer, gpt2_tokenizer

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; the course's models are {sorted(MODELS)}")
    if layout not in ("folder", "hf-cache"):
        raise ValueError("layout must be 'folder' or 'hf-cache'")
    if tokenizer is not None and name != "attn-only-4l":
        raise ValueError("only attn-only-4l has a tokenizer of its own; GPT-2's models use GPT-2's")
    tok = tokenizer if tokenizer is not None else default_tokenizer(name)
    tok_id = "gpt2" if tok is gpt2_tokenizer() else _tokenizer_id(tok)
    build = build_standin_weights(name, plants=plants, placement=placement, seed=seed, tokenizer=tok)
    files = _model_files(name, build, tok, tok_id)
    del build
    root = Path(root)
    hub_id = MODELS[name]["hub_id"]
    extra = {} if tok_id == "gpt2" else {tok_id: _tokenizer_repo_files(tok)}
    if layout == "folder":
        out = _write_folder(root / hub_id, files, manifest)
        for repo, repo_files in extra.items():
            _write_folder(root / repo, repo_files, manifest)
    else:
        out = _write_hf_cache(root, hub_id, files)
        for repo, repo_files in extra.items():
            _write_hf_cache(root, repo, repo_files)
    return out


def export_standins(root: str | os.PathLike, *, layout: str = "folder", names=None, manifest: bool = False,
                    attn_only_tokenizer=None) -> dict[str, Path]:
    """:func:`export_standin` for each model (default: all three)."""
    from tqdm.auto import tqdm

    names = list(names or MODELS)
    out = {}
    for name in tqdm(names, desc="exporting stand-ins", leave=False):
        tok = attn_only_tokenizer if name == "attn-only-4l" else None
        out[name] = export_standin(name, root, layout=layout, tokenizer=tok, manifest=manifest)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exercises_lib.models.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("root")
    parser.add_argument("--layout", choices=("folder", "hf-cache"), default="folder")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None)
    parser.add_argument("--gpt2-tokenizer", action="store_true",
                        help="build attn-only-4l with GPT-2's tokenizer instead of the course's code tokenizer")
    parser.add_argument("--manifest", action="store_true", help="write mechinterp-manifest.json in each folder")
    args = parser.parse_args(argv)
    tok = None
    if args.gpt2_tokenizer:
        from exercises_lib.tokenizer import gpt2_tokenizer

        tok = gpt2_tokenizer()
    for name, path in export_standins(args.root, layout=args.layout, names=args.models, manifest=args.manifest,
                                      attn_only_tokenizer=tok).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
