"""The stand-in disk cache: each built stand-in's weights, in safetensors, keyed by what built them.

Building a stand-in (plants, bridge, weight processing) takes tens of seconds on
a busy laptop; reading it back takes one or two. :func:`exercises_lib.models.build_standin`
stores the finished weights here and a later process (a new kernel, the test
suite, the grader) reads them instead of building again:

* GPT-2 small and attn-only-4l: the weights after compatibility mode processed
  them (LayerNorm folded, centred), so a second load skips the processing too;
* GPT-2 without LayerNorm: the stand-in's weights before the LayerNorm surgery,
  which is redone at load (it is quick, and the chapter's reference model is
  built from these weights).

Where: ``$MECHINTERP_CACHE_DIR/standins/`` (default ``$XDG_CACHE_HOME/mechinterp-course``,
else ``~/.cache/mechinterp-course``). ``MECHINTERP_CACHE_DIR=off`` turns the
cache off. The folder is safe to delete at any time. It is kept under
``MECHINTERP_CACHE_MAX_GB`` (default 5) by removing the least recently used
entries, the chapters' own stand-ins (default plants, placement and seed) last.
The weights of an entry are read lazily (memory-mapped, copy-on-write: editing
a loaded model never touches the file), so kernels on one machine share them.
Each tensor's data starts at a multiple of 64 bytes in the file (filler tensors
between them, which are never loaded), so the mapped weights are as aligned as
freshly allocated ones: oneDNN's kernels, which the patching fast path uses,
run about a quarter slower on a weight that is not.

Never stale: the key of an entry is a sha256 over the builder's inputs (model
name, plants, placement, seed, processing, the tokenizer's full serialisation)
and the builder's version: the source of every module the builder runs (the
``exercises_lib.standin`` package, the model package, and every course module
they import, found by reading their import statements), every packaged data
file, and the versions of torch, transformers, transformer_lens, tokenizers and
safetensors. Change any of them and the key changes.

Concurrency: an entry is written to a temporary file in the same folder and
renamed into place (atomic), so processes building the same stand-in at the
same time (the test suite, nbval's kernels, the grader) each see either no
entry or a complete one. A damaged entry is deleted and rebuilt.

Taught in: chapter 0 (setup).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import struct
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = [
    "CACHE_ENV",
    "cache_root",
    "builder_version",
    "tokenizer_fingerprint",
    "standin_key",
    "load_entry",
    "store_entry",
]

CACHE_ENV = "MECHINTERP_CACHE_DIR"
MAX_GB_ENV = "MECHINTERP_CACHE_MAX_GB"
FORMAT = 2
#: Where each tensor's data starts in an entry's file: a multiple of this many bytes.
ALIGN = 64
_FILLER = "__align__."  # the names of the filler tensors between aligned ones
_SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL"}
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # exercises_lib/
_VERSIONED_DISTRIBUTIONS = ("torch", "transformers", "transformer_lens", "tokenizers", "safetensors")


def cache_root() -> Path | None:
    """The course's cache folder, or ``None`` when ``MECHINTERP_CACHE_DIR=off``."""
    value = os.environ.get(CACHE_ENV)
    if value is not None and value.strip().lower() in ("", "0", "off", "none", "false", "no"):
        return None
    if value:
        return Path(os.path.expanduser(value))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mechinterp-course"


# ---------------------------------------------------------------------------
# The builder's version
# ---------------------------------------------------------------------------


def _module_file(module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] != "exercises_lib":
        return None
    base = _PACKAGE_ROOT.joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _imported_modules(path: Path, module: str) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    # importing a.b.c runs a/__init__ and a/b/__init__ too
    return {".".join(m.split(".")[: i + 1]) for m in found for i in range(len(m.split(".")))}


def builder_sources() -> list[Path]:
    """Every course module a stand-in build runs: the stand-in and model packages and what they import."""
    start = {"exercises_lib.tokenizer"}
    for pkg in ("standin", "models"):
        for path in (_PACKAGE_ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(_PACKAGE_ROOT).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            start.add(".".join(["exercises_lib", *parts]))
    seen: dict[str, Path] = {}
    todo = list(start)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = _module_file(module)
        if path is None:
            continue
        seen[module] = path
        todo.extend(m for m in _imported_modules(path, module) if m.startswith("exercises_lib") and m not in seen)
    return sorted(set(seen.values()))


@functools.lru_cache(maxsize=1)
def builder_version() -> str:
    """sha256 of the builder's sources, the packaged data and the library versions."""
    from importlib import metadata

    h = hashlib.sha256(f"format {FORMAT}\n".encode())
    for path in builder_sources():
        h.update(f"{path.relative_to(_PACKAGE_ROOT).as_posix()}\n".encode())
        h.update(path.read_bytes())
    data = _PACKAGE_ROOT / "data"
    for path in sorted(p for p in data.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(f"{path.relative_to(_PACKAGE_ROOT).as_posix()}\n".encode())
        h.update(path.read_bytes())
    for dist in _VERSIONED_DISTRIBUTIONS:
        try:
            h.update(f"{dist}={metadata.version(dist)}\n".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{dist}=?\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------

_fingerprints: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of a tokenizer's full serialisation (vocabulary, merges, special tokens)."""
    try:
        return _fingerprints[tokenizer]
    except (KeyError, TypeError):
        pass
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    specials = {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    h.update(json.dumps(specials, sort_keys=True).encode())
    digest = h.hexdigest()
    try:
        _fingerprints[tokenizer] = digest
    except TypeError:
        pass
    return digest


def _canonical(obj):
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(_canonical(v) for v in obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    raise TypeError(f"cannot key a stand-in on {type(obj).__name__}")


def standin_key(name: str, *, plants, placement, seed: int, processing: bool, tokenizer) -> str | None:
    """The cache key of a stand-in build, or ``None`` when its inputs cannot be keyed."""
    try:
        inputs = {
            "name": name,
            "plants": None if plants is None else sorted(_canonical(list(plants))),
            "placement": _canonical(placement or {}),
            "seed": int(seed),
            "processing": bool(processing),
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "builder": builder_version(),
        }
    except TypeError:
        return None
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------
# Entries
# ---------------------------------------------------------------------------


def entry_path(name: str, key: str) -> Path | None:
    """Where the entry of ``key`` lives (whether or not it exists yet)."""
    root = cache_root()
    return None if root is None else root / "standins" / f"{name}-{key[:24]}.safetensors"


def load_entry(name: str, key: str, skip: str | None = None) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The cached weights and metadata of a stand-in, or ``None`` (a damaged entry is removed).

    Tensors whose names start with ``skip`` are not read.
    """
    path = entry_path(name, key)
    if path is None or not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["mechinterp"])
            if meta.get("key") != key:
                return None
            tensors = {k: f.get_tensor(k) for k in f.keys()
                       if not k.startswith(_FILLER) and not (skip and k.startswith(skip))}
        for alias, original in meta.get("aliases", {}).items():
            if original in tensors:
                tensors[alias] = tensors[original]
    except Exception:  # damaged or half-written by a foreign tool: rebuild
        _remove(path)
        return None
    try:
        os.utime(path)  # least recently used goes first
    except OSError:
        pass
    return tensors, meta


def store_entry(name: str, key: str, tensors: Mapping[str, torch.Tensor], meta: dict) -> Path | None:
    """Write an entry atomically; returns its path (``None`` when the cache is off or unwritable)."""
    path = entry_path(name, key)
    if path is None:
        return None
    from safetensors.torch import save_file

    plain: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}  # a parameter reachable under several names is stored once
    first: dict[tuple, str] = {}
    for k, t in tensors.items():
        t = t.detach().to("cpu")
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if ident in first:
            aliases[k] = first[ident]
            continue
        first[ident] = k
        plain[k] = t.contiguous()
    # distinct tensors may still overlap (views of one storage): safetensors needs them apart
    storages: set[int] = set()
    for k, t in plain.items():
        ptr = t.untyped_storage().data_ptr()
        if ptr in storages:
            plain[k] = t.clone()
        storages.add(plain[k].untyped_storage().data_ptr())
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        metadata = {"mechinterp": json.dumps({**meta, "key": key, "format": FORMAT, "aliases": aliases})}
        if all(t.dtype in _SAFETENSORS_DTYPES for t in plain.values()):
            write_aligned(tmp, plain, metadata)
        else:
            save_file(plain, tmp, metadata=metadata)
        os.replace(tmp, path)
        tmp = None
    except OSError:
        return None
    finally:
        if tmp is not None:
            _remove(Path(tmp))
    _prune(path.parent, keep=path)
    return path


def write_aligned(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``tensors`` (contiguous, on the CPU) as a safetensors file in which every tensor's data
    starts at a multiple of :data:`ALIGN` bytes from the start of the file.

    safetensors' own writer puts the data right after a header padded to 8 bytes and the
    tensors back to back, so one tensor of an odd length (GPT-2's 50257 logit biases) shifts
    every later one off alignment. Here the header is padded with spaces (which the format
    allows) and a filler tensor (``U8``, named ``__align__.<n>``) closes each gap, since the
    format allows no holes in the data; :func:`load_entry` skips the fillers.
    """
    header: dict[str, Any] = {"__metadata__": metadata}
    parts: list[torch.Tensor | bytes] = []
    offset = 0
    for name, t in tensors.items():
        gap = -offset % ALIGN
        if gap:
            header[f"{_FILLER}{len(parts)}"] = {"dtype": "U8", "shape": [gap], "data_offsets": [offset, offset + gap]}
            parts.append(bytes(gap))
            offset += gap
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        parts.append(t)
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % ALIGN)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for part in parts:
            f.write(part if isinstance(part, bytes) else part.reshape(-1).view(torch.uint8).numpy().data)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _is_default(path: Path) -> bool:
    """Whether an entry is a stand-in as the chapters load it (default plants, placement and seed)."""
    import struct

    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            meta = json.loads(json.loads(f.read(n))["__metadata__"]["mechinterp"])
        return bool(meta.get("default"))
    except Exception:
        return False


def _prune(folder: Path, keep: Path) -> None:
    """Stay under the size limit: remove the least recently used entries, the chapters' own
    stand-ins (default plants, placement and seed) last."""
    try:
        limit = float(os.environ.get(MAX_GB_ENV, "5")) * 1e9
    except ValueError:
        limit = 5e9
    now = time.time()
    entries = []
    for p in folder.iterdir():
        try:
            st = p.stat()
        except OSError:
            continue
        if p.name.startswith(".tmp-"):
            if now - st.st_mtime > 3600:  # left by a process that died while writing
                _remove(p)
            continue
        if p.suffix == ".safetensors":
            entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    if total <= limit:
        return
    for _, size, p in sorted(entries, key=lambda e: (_is_default(e[2]), e[0])):
        if total <= limit:
            break
        if p != keep:
            _remove(p)
            total -= size
