"""The stand-ins exported in their real models' hub layouts, written once per builder version.

``standin_exports()`` returns a folder holding

* ``weights/``: ``<hub id>/`` folders, what ``MECHINTERP_WEIGHTS_DIR`` points at;
* ``hf-cache/``: the same files as a Hugging Face cache (``HF_HUB_CACHE``);
* ``weights-code-tokenizer/``: attn-only-4l built with the course's code
  tokenizer, and that tokenizer's repository folder.

It lives in the repository's ignored ``.cache/real-path/<builder version>/``
(``MECHINTERP_EXPORTS_DIR`` overrides the parent folder), so the real-path
tests and the real-path notebook run share one export, and a later run reuses
it until the stand-in builder changes. Concurrent test processes wait on a lock.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def exports_parent() -> Path:
    return Path(os.environ.get("MECHINTERP_EXPORTS_DIR") or ROOT / ".cache" / "real-path")


def standin_exports() -> Path:
    from exercises_lib.models import MODELS
    from exercises_lib.models.cache import builder_version
    from exercises_lib.models.export import export_standin, export_standins, folder_to_hf_cache
    from exercises_lib.tokenizer import code_tokenizer

    base = exports_parent()
    version = builder_version()[:16]
    out = base / version
    if (out / "COMPLETE").is_file():
        return out
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "COMPLETE").is_file():
            return out
        for old in base.iterdir():  # exports of other builder versions
            if old.is_dir() and old.name != version:
                shutil.rmtree(old, ignore_errors=True)
        tmp = base / f".partial-{version}"
        shutil.rmtree(tmp, ignore_errors=True)
        export_standins(tmp / "weights")
        for info in MODELS.values():
            folder_to_hf_cache(tmp / "weights" / info["hub_id"], tmp / "hf-cache", info["hub_id"])
        export_standin("attn-only-4l", tmp / "weights-code-tokenizer", tokenizer=code_tokenizer())
        (tmp / "COMPLETE").write_text(version + "\n")
        os.replace(tmp, out)
    return out
