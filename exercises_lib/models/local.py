"""Finding a local copy of a real model, and refusing a bad one before anything loads it.

Where a copy is looked for, in order:

1. ``$MECHINTERP_WEIGHTS_DIR/<hub id>/`` (for example ``$MECHINTERP_WEIGHTS_DIR/gpt2/``,
   ``$MECHINTERP_WEIGHTS_DIR/NeelNanda/Attn_Only_4L512W_C4_Code/``): the files as the
   hub serves them;
2. ``$MECHINTERP_WEIGHTS_DIR/models--<org>--<name>/``: a Hugging Face cache copied there;
3. the Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``): the snapshot ``refs/main`` points at.

Everything here is plain file reading: no Hugging Face library is imported and
nothing touches the network, so a local copy loads the same with or without one.

What is checked before a file is read as weights (each failure is a
:class:`~exercises_lib.models.ModelUnavailableError` naming the file and the fix):

* the files the model needs are there; a folder with only pickle weights
  (``pytorch_model.bin``) is refused: the course reads safetensors, and the one
  checkpoint the hub has only as a pickle (``attn-only-4l``'s ``model_final.pth``)
  is opened with ``torch.load(weights_only=True)``, which builds tensors and nothing else;
* ``config.json`` parses and describes the expected model (shapes; for
  ``gpt2_noLN`` the hub's neutralised LayerNorm, ``layer_norm_epsilon = 1e12``);
* a safetensors header parses and its tensors fill the file exactly (a truncated
  file is caught here, in microseconds);
* hashes where they are known: a Hugging Face cache names each large file's blob
  by its sha256 and each small file's by its git object id; a folder under
  ``MECHINTERP_WEIGHTS_DIR`` may carry a manifest (:mod:`exercises_lib.models.manifest`);
* after loading (:func:`check_tensors`): no NaN or infinity, and no weight matrix
  whose last quarter is exactly zero (a file zero-filled from some point on).

Taught in: chapter 0 (setup).
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from exercises_lib.models.manifest import MANIFEST_NAME, check_manifest, file_sha256, git_blob_sha1, read_manifest
from exercises_lib.models.registry import MODELS, ModelUnavailableError

__all__ = [
    "WEIGHTS_DIR_ENV",
    "LocalCopy",
    "hf_cache_dir",
    "find_local",
    "weights_file",
    "read_config",
    "check_config",
    "check_safetensors",
    "check_hashes",
    "check_tensors",
    "tokenizer_folder",
]

WEIGHTS_DIR_ENV = "MECHINTERP_WEIGHTS_DIR"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


@dataclass(frozen=True)
class LocalCopy:
    """A folder holding a hub repository's files."""

    hub_id: str
    folder: Path
    origin: str  # "MECHINTERP_WEIGHTS_DIR" or "the Hugging Face cache"

    def describe(self) -> str:
        return f"{self.folder} ({self.origin})"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved from the environment as ``huggingface_hub`` does."""
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(hub)))


def _repo_folder_name(hub_id: str) -> str:
    return "models--" + hub_id.replace("/", "--")


def _snapshot(repo_dir: Path) -> Path | None:
    """The snapshot a cached repository's ``refs/main`` points at (or its only snapshot)."""
    snaps = repo_dir / "snapshots"
    if not snaps.is_dir():
        return None
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        commit = ref.read_text().strip()
        if (snaps / commit).is_dir():
            return snaps / commit
    found = [p for p in snaps.iterdir() if p.is_dir()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def find_local(hub_id: str) -> LocalCopy | None:
    """The first local copy of ``hub_id`` (see the module docstring for the order), or ``None``."""
    root = os.environ.get(WEIGHTS_DIR_ENV)
    if root:
        plain = Path(root) / hub_id
        if plain.is_dir():
            return LocalCopy(hub_id, plain, WEIGHTS_DIR_ENV)
        snap = _snapshot(Path(root) / _repo_folder_name(hub_id))
        if snap is not None:
            return LocalCopy(hub_id, snap, f"{WEIGHTS_DIR_ENV}, Hugging Face cache layout")
    snap = _snapshot(hf_cache_dir() / _repo_folder_name(hub_id))
    if snap is not None:
        return LocalCopy(hub_id, snap, "the Hugging Face cache")
    return None


def _fix(copy: LocalCopy) -> str:
    if copy.origin == WEIGHTS_DIR_ENV:
        where = f"replace the folder {copy.folder} with a fresh download of {copy.hub_id}"
    else:
        repo = copy.folder.parent.parent
        where = f"delete {repo} and download {copy.hub_id} again"
    return f"To fix it, {where}; or continue offline with source='standin'."


def _error(copy: LocalCopy, problem: str) -> ModelUnavailableError:
    return ModelUnavailableError(f"The local copy of {copy.hub_id} in {copy.describe()} cannot be used: {problem}. {_fix(copy)}")


# ---------------------------------------------------------------------------
# Which files
# ---------------------------------------------------------------------------


def weights_file(copy: LocalCopy, layout: str) -> Path:
    """The weights file of a copy: ``model.safetensors`` (Hugging Face GPT-2) or ``*final.pth`` (legacy).

    Raises :class:`ModelUnavailableError` when it is missing, or only a pickle is there.
    """
    folder = copy.folder
    if layout == "hf-gpt2":
        path = folder / "model.safetensors"
        if path.is_file():
            return path
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
        if pickles:
            raise _error(copy, f"it has only {', '.join(sorted(pickles))}, a pickle file, and no model.safetensors. "
                               "The course reads weights from safetensors only (a pickle can run code when loaded); "
                               f"download model.safetensors from {copy.hub_id}")
        raise _error(copy, f"{path} is missing")
    if layout == "tl-legacy":
        found = sorted(p for p in folder.glob("*final.pth") if p.is_file())
        if not found:
            raise _error(copy, f"no *final.pth checkpoint in {folder} (the hub's file is model_final.pth)")
        return found[0]
    raise ValueError(f"unknown layout {layout!r}")


def read_config(copy: LocalCopy) -> dict:
    path = copy.folder / "config.json"
    if not path.is_file():
        raise _error(copy, f"{path} is missing")
    try:
        cfg = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise _error(copy, f"{path} is not valid JSON ({err}); the file is truncated or corrupt") from None
    if not isinstance(cfg, dict):
        raise _error(copy, f"{path} is not a JSON object")
    return cfg


def check_config(name: str, copy: LocalCopy, cfg: Mapping) -> None:
    """Refuse a ``config.json`` that describes another model than ``name``."""
    expect = MODELS[name].get("expect", {})
    wrong = {k: (cfg.get(k), v) for k, v in expect.items() if cfg.get(k) != v}
    if wrong:
        details = ", ".join(f"{k}={got!r} (expected {want!r})" for k, (got, want) in wrong.items())
        raise _error(copy, f"{copy.folder / 'config.json'} describes another model: {details}")
    eps = cfg.get("layer_norm_epsilon")
    if name == "gpt2-noLN" and not (isinstance(eps, (int, float)) and eps >= 1e6):
        raise _error(copy, f"{copy.folder / 'config.json'} has layer_norm_epsilon={eps!r}: this folder holds a GPT-2 "
                           "with working LayerNorms, not gpt2_noLN (whose LayerNorms the hub neutralises with "
                           "layer_norm_epsilon=1e12)")
    if name == "gpt2-small" and isinstance(eps, (int, float)) and eps >= 1e6:
        raise _error(copy, f"{copy.folder / 'config.json'} has layer_norm_epsilon={eps!r}: this folder holds a "
                           "LayerNorm-free GPT-2 (gpt2_noLN), not GPT-2 small")


# ---------------------------------------------------------------------------
# File integrity
# ---------------------------------------------------------------------------


def check_safetensors(copy: LocalCopy, path: Path) -> dict:
    """Parse a safetensors header and check that its tensors fill the file exactly; return the header."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _error(copy, f"{path} is {size} bytes long: truncated, not a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100_000_000):
            raise _error(copy, f"{path} does not start with a safetensors header (header length {n} for a "
                               f"{size}-byte file): the file is corrupt or not safetensors")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise _error(copy, f"{path} has a garbled safetensors header: the file is corrupt") from None
    if not isinstance(header, dict):
        raise _error(copy, f"{path} has a garbled safetensors header: the file is corrupt")
    data = size - 8 - n
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            start, stop = info["data_offsets"]
            count = 1
            for d in info["shape"]:
                count *= int(d)
            nbytes = count * _DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise _error(copy, f"{path} has a garbled entry {key!r} in its safetensors header: the file is corrupt") from None
        if stop - start != nbytes or start < 0:
            raise _error(copy, f"{path}: tensor {key!r} has {stop - start} bytes for shape {info['shape']}: the file is corrupt")
        end = max(end, stop)
    if end > data:
        raise _error(copy, f"{path} is truncated: its header describes {end:,} bytes of tensors, the file holds {data:,}")
    if end < data:
        raise _error(copy, f"{path} has {data - end:,} bytes after its last tensor: the file is corrupt")
    return header


def check_hashes(copy: LocalCopy, paths: Iterable[Path]) -> None:
    """Check every hash that is known for ``paths``: the manifest's, and the cache's blob names."""
    paths = list(paths)
    try:
        listed = read_manifest(copy.folder)
    except ValueError as err:
        raise _error(copy, str(err)) from None
    if listed is not None:
        rels = [p.relative_to(copy.folder).as_posix() for p in paths]
        missing = [r for r in rels if r not in listed]
        problems = check_manifest(copy.folder, only=rels)
        if problems:
            raise _error(copy, "; ".join(problems))
        if missing:
            raise _error(copy, f"{MANIFEST_NAME} does not list {missing}: write it again "
                               f"(python -m exercises_lib.models.manifest {copy.folder})")
    for path in paths:
        if not path.is_symlink():
            continue
        blob = Path(os.path.realpath(path))
        if blob.parent.name != "blobs":
            continue
        if _HEX64.match(blob.name):
            if file_sha256(blob) != blob.name:
                raise _error(copy, f"{path} (blob {blob.name[:12]}...) does not match the sha256 the hub gave it: "
                                   "the download is truncated or corrupt")
        elif _HEX40.match(blob.name):
            if git_blob_sha1(blob) != blob.name:
                raise _error(copy, f"{path} (blob {blob.name[:12]}...) does not match its git object id: the file is corrupt")


def check_tensors(copy: LocalCopy, path: Path, tensors: Iterable[tuple[str, "object"]]) -> None:
    """After loading: no NaN or infinity, and no weight matrix whose last quarter is all zeros.

    Each distinct tensor is read once (a parameter may appear under several names).
    """
    import torch

    seen = set()
    with torch.no_grad():
        for key, t in tensors:
            if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
                continue
            ident = (t.data_ptr(), t.numel())
            if ident in seen:
                continue
            seen.add(ident)
            if not torch.isfinite(t.sum()):  # NaN and infinity survive a sum
                raise _error(copy, f"{path}: tensor {key!r} contains NaN or infinity: the file is corrupt")
            if t.dim() >= 2 and t.numel() >= 4096:
                tail = t.reshape(-1)[-(t.numel() // 4):]
                if not tail.any():
                    raise _error(copy, f"{path}: tensor {key!r} ends in {tail.numel():,} zeros: the file is "
                                       "zero-filled from some point on (an interrupted copy or download)")


def tokenizer_folder(tokenizer_id: str) -> LocalCopy | None:
    """A local copy of a tokenizer repository (the same places as weights)."""
    return find_local(tokenizer_id)
