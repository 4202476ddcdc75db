"""Manifests of local weight folders: the size and sha256 of each file, checked at load.

A folder under ``MECHINTERP_WEIGHTS_DIR`` (for example ``$MECHINTERP_WEIGHTS_DIR/gpt2/``)
may hold a file ``mechinterp-manifest.json``::

    {
      "format": "mechinterp-weights-manifest",
      "version": 1,
      "files": {
        "config.json": {"size": 665, "sha256": "<64 hex digits>"},
        "model.safetensors": {"size": 548105171, "sha256": "<64 hex digits>"}
      }
    }

Paths are relative to the folder, with ``/`` separators. When the manifest is
there, :func:`exercises_lib.models.load_model` refuses a folder in which a listed
file is missing, has another size, or another sha256 (files not listed are not
checked). Write one with::

    python -m exercises_lib.models.manifest /path/to/weights/gpt2        # one model folder
    python -m exercises_lib.models.manifest --all $MECHINTERP_WEIGHTS_DIR # every folder with a config.json
    python -m exercises_lib.models.manifest --check /path/to/weights/gpt2

A sha256 is computed once per file and remembered (in the course's cache
folder, keyed by the file's path, size, inode and modification time), so later
loads do not read the file twice.

Taught in: chapter 0 (setup).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_FORMAT",
    "file_sha256",
    "git_blob_sha1",
    "write_manifest",
    "read_manifest",
    "check_manifest",
]

MANIFEST_NAME = "mechinterp-manifest.json"
MANIFEST_FORMAT = "mechinterp-weights-manifest"
_SKIP = {MANIFEST_NAME, ".gitattributes"}


def _memo_path(path: Path) -> Path | None:
    from exercises_lib.models.cache import cache_root

    root = cache_root()
    if root is None:
        return None
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()
    return root / "verified" / f"{key}.json"


def _stamp(path: Path) -> dict:
    st = path.stat()  # follows symlinks: the blob behind a cache snapshot
    return {"path": str(path.resolve()), "size": st.st_size, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns}


def file_sha256(path: str | os.PathLike, *, remember: bool = True) -> str:
    """The sha256 of a file, remembered while its path, size, inode and mtime stay the same."""
    path = Path(path)
    memo = _memo_path(path) if remember else None
    stamp = _stamp(path)
    if memo is not None and memo.is_file():
        try:
            saved = json.loads(memo.read_text())
            if {k: saved.get(k) for k in stamp} == stamp:
                return saved["sha256"]
        except (OSError, ValueError, KeyError):
            pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    digest = h.hexdigest()
    if memo is not None:
        _write_json_atomic(memo, {**stamp, "sha256": digest})
    return digest


def git_blob_sha1(path: str | os.PathLike) -> str:
    """Git's object id of a file (``sha1("blob <size>\\0" + content)``): how the hub names small files."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _write_json_atomic(path: Path, obj) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs time


def write_manifest(folder: str | os.PathLike) -> Path:
    """Write ``mechinterp-manifest.json`` for every file under ``folder``; returns its path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(folder)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in _SKIP or rel.startswith(".") or "/." in rel:
            continue
        files[rel] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    out = folder / MANIFEST_NAME
    out.write_text(json.dumps({"format": MANIFEST_FORMAT, "version": 1, "files": files}, indent=2) + "\n")
    return out


def read_manifest(folder: str | os.PathLike) -> dict[str, dict] | None:
    """The ``files`` of the folder's manifest, or ``None`` when it has none.

    Raises ``ValueError`` for a manifest that is not in the format above.
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("files"), dict):
        raise ValueError(f"{path} is not a {MANIFEST_FORMAT} file (see exercises_lib/models/manifest.py)")
    for rel, entry in data["files"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)):
            raise ValueError(f"{path}: entry {rel!r} needs an integer 'size' and a 'sha256'")
    return data["files"]


def check_manifest(folder: str | os.PathLike, only: list[str] | None = None) -> list[str]:
    """Problems of ``folder`` against its manifest (empty list: all listed files match).

    ``only`` restricts the check to those relative paths (when listed).
    """
    folder = Path(folder)
    files = read_manifest(folder)
    if files is None:
        return []
    problems = []
    for rel, entry in files.items():
        if only is not None and rel not in only:
            continue
        path = folder / rel
        if not path.is_file():
            problems.append(f"{path} is listed in {MANIFEST_NAME} but missing")
            continue
        size = path.stat().st_size
        if size != entry["size"]:
            problems.append(f"{path} has {size} bytes; {MANIFEST_NAME} says {entry['size']} (truncated or replaced)")
            continue
        if file_sha256(path) != entry["sha256"].lower():
            problems.append(f"{path} does not match the sha256 in {MANIFEST_NAME} (corrupt or replaced)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exercises_lib.models.manifest",
        description=f"Write (or --check) {MANIFEST_NAME} in local weight folders.",
    )
    parser.add_argument("folders", nargs="+", help="model folders (or, with --all, roots to search)")
    parser.add_argument("--all", action="store_true", help="every folder below the given ones that holds a config.json")
    parser.add_argument("--check", action="store_true", help="check instead of writing")
    args = parser.parse_args(argv)
    folders: list[Path] = []
    for f in map(Path, args.folders):
        folders += sorted(p.parent for p in f.rglob("config.json")) if args.all else [f]
    status = 0
    for folder in folders:
        if args.check:
            if read_manifest(folder) is None:
                print(f"{folder}: no {MANIFEST_NAME}")
                status = 1
                continue
            problems = check_manifest(folder)
            print(f"{folder}: " + ("ok" if not problems else "; ".join(problems)))
            status |= bool(problems)
        else:
            print(f"wrote {write_manifest(folder)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
