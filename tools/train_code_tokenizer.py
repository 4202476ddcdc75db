"""Train the course's code tokenizer (exercises_lib/data/code_tokenizer/), offline.

A byte-level BPE tokenizer shaped like attn-only-4l's real one
(``NeelNanda/gpt-neox-tokenizer-digits``, not available offline): a newline
followed by an indentation of 4, 8, 12 ... spaces is one token, every digit is
its own token, and the vocabulary has 48,262 entries (padded with unused tokens
when training yields fewer). Trained with the ``tokenizers`` library on the
course's packaged texts and the Python standard library of the interpreter
that runs this script (PSF licence). Writes the files and a PROVENANCE.md::

    .venv/bin/python tools/train_code_tokenizer.py [--out exercises_lib/data/code_tokenizer]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

VOCAB_SIZE = 48262
SPECIAL = ["<|endoftext|>", "<|padding|>"]
INDENTS = range(4, 41, 4)  # "\n" + 4 ... 40 spaces must each be one token


def corpus() -> tuple[list[str], dict]:
    from exercises_lib import texts

    docs, info = [], {"texts": [], "stdlib_files": 0, "stdlib_bytes": 0}
    for t in texts.list_texts():
        docs.append(texts.load_text(t.name))
        info["texts"].append(t.name)
    files = sorted(texts.python_source_files(n=10**9, max_bytes=10**7), key=lambda p: p.as_posix())
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        docs.append(text)
        info["stdlib_files"] += 1
        info["stdlib_bytes"] += len(text.encode())
    h = hashlib.sha256()
    for d in docs:
        h.update(d.encode())
        h.update(b"\0")
    info["sha256"] = h.hexdigest()
    return docs, info


def train(docs: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n *"), behavior="isolated"),  # a newline and the indentation after it
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=SPECIAL, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def pad_and_force(tok) -> tuple[object, dict]:
    """Add the indentation runs BPE did not learn as merges, then pad the vocabulary to VOCAB_SIZE."""
    from tokenizers import Tokenizer

    data = json.loads(tok.to_str())
    vocab, merges = data["model"]["vocab"], data["model"]["merges"]
    added_runs = []
    for n in INDENTS:
        for k in range(1, n + 1):  # "\n" + k spaces, built up one space at a time where missing
            left, right = "Ċ" + "Ġ" * (k - 1), "Ġ"
            merged = left + right
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append([left, right] if isinstance(merges[0], list) else f"{left} {right}")
                added_runs.append(k)
    learned = len(vocab)
    n_pad = VOCAB_SIZE - learned
    for i in range(max(0, n_pad)):
        vocab[f"<|unused_{i}|>"] = len(vocab)
    if len(vocab) != VOCAB_SIZE:
        raise SystemExit(f"vocabulary has {len(vocab)} entries, not {VOCAB_SIZE}: lower the training target")
    out = Tokenizer.from_str(json.dumps(data))
    return out, {"learned": learned, "padded": max(0, n_pad), "forced_indent_merges": added_runs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "exercises_lib" / "data" / "code_tokenizer"))
    args = parser.parse_args(argv)
    import tokenizers
    import transformers
    from transformers import PreTrainedTokenizerFast

    docs, info = corpus()
    tok, stats = pad_and_force(train(docs))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL[0], eos_token=SPECIAL[0],
                                   pad_token=SPECIAL[1], model_max_length=2048)
    out = Path(args.out)
    tmp = Path(tempfile.mkdtemp())
    fast.save_pretrained(str(tmp))
    out.mkdir(parents=True, exist_ok=True)
    for p in tmp.iterdir():
        shutil.copyfile(p, out / p.name)
    shutil.rmtree(tmp)
    (out / "tokenizer.json").write_text(fast.backend_tokenizer.to_str())  # compact: a third of the size
    checks = {f"\\n+{n} spaces": len(tok.encode("x\n" + " " * n + "y").ids) == 3 for n in INDENTS}
    checks["digits one per token"] = tok.encode("x 2024").tokens[-4:] == ["2", "0", "2", "4"]
    (out / "PROVENANCE.md").write_text(PROVENANCE.format(
        vocab=VOCAB_SIZE, learned=stats["learned"], padded=stats["padded"],
        forced=stats["forced_indent_merges"] or "none", texts=", ".join(info["texts"]),
        n_files=info["stdlib_files"], n_bytes=info["stdlib_bytes"], py=platform.python_version(),
        sha=info["sha256"], tokenizers=tokenizers.__version__, transformers=transformers.__version__,
        checks="\n".join(f"| {k} | {'yes' if v else 'NO'} |" for k, v in checks.items()),
    ))
    print(json.dumps({**stats, **{k: v for k, v in info.items() if k != "texts"}, "checks": checks}, indent=1))
    return 0 if all(checks.values()) else 1


PROVENANCE = """# The course's code tokenizer

A byte-level BPE tokenizer, trained for this course with `tools/train_code_tokenizer.py`
(`tokenizers` {tokenizers}, `transformers` {transformers}), standing in for
attn-only-4l's real tokenizer `NeelNanda/gpt-neox-tokenizer-digits`, which cannot
be downloaded where the course is built. Like the real one it has {vocab} entries,
a newline followed by an indentation run is one token, and every digit is its own
token; its vocabulary is otherwise its own (it is not the GPT-NeoX vocabulary).

| file | what |
|---|---|
| `tokenizer.json` | the tokenizer (vocabulary, merges, pre-tokenizer, decoder) |
| `tokenizer_config.json` | special tokens for `transformers`: `<|endoftext|>` (BOS and EOS, id 0), `<|padding|>` (id 1) |

Vocabulary: {learned} entries learned by BPE (including the 2 special tokens and the
256 byte symbols), padded with {padded} unused tokens `<|unused_N|>` to reach {vocab}.
Indentation runs added as merges after training (run lengths BPE had not learned): {forced}.

Pre-tokenizer: a newline and the spaces after it are isolated (so BPE learns
`\\n` + indentation as tokens), digits are split one by one, then GPT-2's
byte-level rules.

| property | holds |
|---|---|
{checks}

## Training data

* The course's packaged texts (`exercises_lib/data/texts`, see their PROVENANCE.md): {texts}.
* The Python standard library of CPython {py} (the interpreter of the course's
  environment): {n_files} `.py` files, {n_bytes:,} bytes, test folders excluded
  (`exercises_lib.texts.python_source_files`). PSF License Version 2; only the
  trained vocabulary and merges are shipped, no source text.

sha256 of the training corpus (documents joined with NUL): `{sha}`.

Licence of the tokenizer files: MIT, as the course's code.
"""

if __name__ == "__main__":
    sys.exit(main())
