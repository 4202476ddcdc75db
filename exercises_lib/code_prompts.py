"""Prompt templates of Python-like code, each prompt with its correct next token (chapter 3).

The write-up behind chapter 3 (Jett, cmathw and StefanHex, "Polysemantic
Attention Head in a 4-Layer Transformer", LessWrong, 2023) shows head 1.4's
behaviours matter with three templates; their prompts are images there, so the
generators here follow its descriptions with our own words:

* :func:`induction_texts`: a two-token class name used again at the end;
* :func:`indentation_texts`: a call whose arguments are indented one level
  deeper, then the line that closes it;
* :func:`previous_texts`: ``def __init__(`` after a class with one attribute.

The attn-only-4l stand-in uses the course's code tokenizer, which (like the
real model's) writes a newline and its indentation as one token; with GPT-2's
tokenizer each space is a token. The templates are written for both.

Every generator asks the model's own tokenizer which words are one token, so
the prompts work with GPT-2's tokenizer, the course's code tokenizer (the
stand-in's) and attn-only-4l's own.
:func:`make_prompt_sets` builds all three as
:class:`exercises_lib.polysemantic.TemplatePrompts` (with
:func:`exercises_lib.polysemantic.prompt_and_answer`).

Taught in: chapter 3 (a polysemantic attention head).
"""

from __future__ import annotations

import random
from typing import Callable

from exercises_lib.polysemantic import TemplatePrompts, indentation_depths, prompt_and_answer
from exercises_lib.vocab import single_token_id

__all__ = [
    "NAMES",
    "CLASS_HEADS",
    "CLASS_TAILS",
    "MODULES",
    "induction_texts",
    "indentation_texts",
    "previous_texts",
    "make_prompt_sets",
]


# ---------------------------------------------------------------------------
# Prompt templates
# ---------------------------------------------------------------------------


#: Identifier words for the blue (random) tokens of the templates.
NAMES = (
    "data value name size count items result key path node index total config buffer parent "
    "child width height text line token model state cache offset limit source target handle "
    "query record entry frame event stream label score level mode field table user client "
    "server message request response options prefix suffix number length weight color shape "
    "point start end block output input queue stack flag rate step scale"
).split()
#: The two halves of the class names of the induction and previous-token templates.
CLASS_HEADS = "Data File Node Task User Event Stream Token Query Image Block Table Graph Field Socket Packet Order".split()
CLASS_TAILS = "Manager Handler Builder Parser Loader Writer Reader Client Factory Helper Router Filter Adapter Monitor Visitor".split()


def _one_token(model, text: str) -> bool:
    return single_token_id(model.tokenizer, text) is not None


MODULES = "os sys re json math time random copy string types".split()


def _preamble(modules: list[str], rng: random.Random) -> str:
    """Two import lines, so the template's code does not start at the first positions."""
    a, b = rng.sample(modules, 2)
    return f"import {a}\nimport {b}\n\n\n"


def _vocabulary(model) -> tuple[list[str], list[str]]:
    """Names that are one token with and without a leading space; one-token module names."""
    names = [w for w in NAMES if _one_token(model, w) and _one_token(model, " " + w)]
    modules = [m for m in MODULES if _one_token(model, " " + m)]
    return names, modules


def _class_names(model, rng: random.Random) -> list[tuple[str, str]]:
    """(head, tail) pairs whose name ``" " + head + tail`` is exactly the tokens ``" " + head``, ``tail``."""
    pairs = []
    for a in CLASS_HEADS:
        for b in CLASS_TAILS:
            enc = model.tokenizer.encode(" " + a + b, add_special_tokens=False)
            if len(enc) == 2 and _one_token(model, " " + a) and _one_token(model, b):
                if enc == model.tokenizer.encode(" " + a, add_special_tokens=False) + model.tokenizer.encode(b, add_special_tokens=False):
                    pairs.append((a, b))
    rng.shuffle(pairs)
    return pairs


def _equal_length(model, texts: list[str], n: int, check: Callable[[list[str]], bool]) -> list[str]:
    """The first ``n`` texts of the most common token length whose tokens pass ``check``."""
    from collections import Counter

    str_toks = [model.to_str_tokens(t) for t in texts]
    good = [(t, s) for t, s in zip(texts, str_toks) if check(s)]
    if not good:
        raise ValueError("no text passed the template's checks with this tokenizer")
    length = Counter(len(s) for _, s in good).most_common(1)[0][0]
    kept = [t for t, s in good if len(s) == length]
    if len(kept) < n:
        raise ValueError(f"only {len(kept)} prompts of equal length; asked for {n}")
    return kept[:n]


def induction_texts(model, n: int = 120, n_pairs: int = 3, seed: int = 0) -> list[str]:
    """Induction prompts: a two-token class name, used again at the end.

    ``class {A}{B}:`` is defined with a method, then a later line starts
    ``{x} = {A}``: the destination is ``{A}`` and the answer ``{B}``, the
    token after the earlier copy of ``{A}``. ``n_pairs`` class names; the
    method, attribute and variable names and the indentation (2 or 4 spaces)
    vary. (All prompts of a set must have the same length: with GPT-2's
    tokenizer, where each space is a token, that keeps one indentation.)
    """
    rng = random.Random(seed)
    names, modules = _vocabulary(model)
    pairs = _class_names(model, rng)[:n_pairs]
    texts = []
    for _ in range(6 * n):
        a, b = rng.choice(pairs)
        method = rng.choice(names)
        attr, var = rng.sample(names, 2)
        ind = rng.choice(["    ", "  "])
        texts.append(
            _preamble(modules, rng)
            + f"class {a}{b}:\n{ind}def {method}(self):\n{ind}{ind}return self.{attr}\n\n\n{var} = {a}{b}"
        )

    def check(s: list[str]) -> bool:  # answer = token after the earlier copy of the destination
        dest = s[-2]
        copies = [i for i in range(1, len(s) - 2) if s[i] == dest]
        return len(copies) == 1 and s[copies[0] + 1] == s[-1]

    return _equal_length(model, texts, n, check)


def indentation_texts(model, n: int = 50, seed: int = 0) -> list[str]:
    """Bigger-indentation prompts: a call whose arguments are on deeper lines.

    ``{r} = {g}(`` then two argument lines, indented one level deeper, then
    the line that closes the call: the destination is the newline+indent
    token of that line, the answer its ``)``.
    """
    rng = random.Random(seed)
    names, modules = _vocabulary(model)
    texts = []
    for _ in range(4 * n):
        f = rng.choice(names)
        a, b, r, g = rng.sample(names, 4)
        texts.append(_preamble(modules, rng) + f"def {f}({a}, {b}):\n    {r} = {g}(\n        {a},\n        {b},\n    )")

    def check(s: list[str]) -> bool:
        return s[-1].strip() == ")" and indentation_depths(s)[-2] >= 0

    return _equal_length(model, texts, n, check)


def previous_texts(model, n: int = 50, seed: int = 0) -> list[str]:
    """Previous-token prompts: the bracket of ``def __init__(``, answer ``self``.

    A class ``{A}{B}`` with one class attribute ``{attr} = {val}``, then
    ``def __init__(``: the destination is the token that ends with the
    bracket (``'('`` with GPT-2's tokenizer, ``'__('`` with the code
    tokenizer), whose previous token says which function is being defined;
    the answer is ``self``. The class line has no brackets, so the bracket
    has no earlier copy (no induction).
    """
    rng = random.Random(seed)
    names, modules = _vocabulary(model)
    pairs = _class_names(model, rng)
    texts = []
    for _ in range(4 * n):
        a, b = rng.choice(pairs)
        attr = rng.choice(names)
        val = rng.choice(names)
        texts.append(_preamble(modules, rng) + f"class {a}{b}:\n    {attr} = {val}\n\n    def __init__(self")

    def check(s: list[str]) -> bool:
        return s[-1].strip() == "self" and s[-2].strip().endswith("(") and s.count(s[-2]) == 1

    return _equal_length(model, texts, n, check)


def make_prompt_sets(model, sizes: dict | None = None, seed: int = 0) -> dict[str, TemplatePrompts]:
    """The three templates (sizes as in the write-up: 120, 50, 50)."""
    sizes = {"induction": 120, "indentation": 50, "previous": 50, **(sizes or {})}
    makers = {
        "induction": (induction_texts, "token after an earlier copy of the destination token"),
        "indentation": (indentation_texts, "newline+indent token closing a call whose arguments are indented deeper"),
        "previous": (previous_texts, "bracket after __init__, answer self"),
    }
    sets = {}
    for name, (make, description) in makers.items():
        texts = make(model, n=sizes[name], seed=seed)
        tokens, answers = prompt_and_answer(model, texts)
        sets[name] = TemplatePrompts(name, tokens, answers, texts, description)
    return sets
