"""Word lists shared by the chapters and the stand-ins' plants, and the one single-token lookup.

A word list lives here when both an analysis and a plant use it (a plant
builds a stand-in's mechanism from it; a chapter measures or prompts with it),
so that the two can never disagree and neither imports the other. Plants
import from here, chapters import from here; this module imports nothing of
the course.

Every word is written as GPT-2 tokenizes it in running text: with its leading
space where it follows another word.

Taught in: chapter 2 (stopwords), chapter 4 (dual pairs), chapter 5 (the AND/OR
example's colours and animals).
"""

from __future__ import annotations

from typing import Iterable

__all__ = [
    "STOPWORDS",
    "DUAL_PAIRS",
    "OPPOSITE",
    "SECOND_OPPOSITE",
    "COLOURS",
    "ANIMALS",
    "TRIGGERS",
    "GATE_ANSWERS",
    "single_token_id",
    "single_token_ids",
]

#: Common English function words (without spaces or capitals; users add those
#: forms). Chapter 2 measures a text's share of them; the GPT-2 stand-in's
#: contextual plant makes one head prefer them (its "stopword head").
STOPWORDS: tuple[str, ...] = tuple(
    (
        "the of and to a in is that for it as with was on be by at this are or from not but "
        "have an which they he his their I you we she her its had were been has will would "
        "there all so if when who what them him unto shall"
    ).split()
)

#: Dual pairs of chapter 4: each word is one GPT-2 token with a leading space.
DUAL_PAIRS: tuple[tuple[str, str], ...] = (
    (" left", " right"),
    (" up", " down"),
    (" in", " out"),
    (" me", " you"),
    (" day", " night"),
    (" hot", " cold"),
    (" top", " bottom"),
    (" north", " south"),
    (" men", " women"),
    (" rich", " poor"),
    (" husband", " wife"),
)

#: Each dual word's opposite.
OPPOSITE: dict[str, str] = {a: b for a, b in DUAL_PAIRS} | {b: a for a, b in DUAL_PAIRS}

#: Dual words with a second opposite outside the pairs: " right" is also the opposite of " wrong"
#: (the write-up's explanation of why right- and left-correct prompts differ).
SECOND_OPPOSITE: dict[str, str] = {" right": " wrong", " wrong": " right"}

#: The two word classes of chapter 5's AND/OR example (single GPT-2 tokens).
COLOURS: tuple[str, ...] = (" red", " blue", " green", " yellow", " black", " white", " brown", " pink", " grey", " purple")
ANIMALS: tuple[str, ...] = (" dog", " cat", " horse", " cow", " bird", " fish", " sheep", " pig", " goat", " duck")
#: The colour and the animal the example's gates look for.
TRIGGERS: tuple[str, str] = (" red", " dog")
#: The answer pairs of the two gates: the logit difference ``first - second`` is each gate's output.
GATE_ANSWERS: dict[str, tuple[str, str]] = {"and": (" both", " none"), "or": (" either", " neither")}


def single_token_id(tokenizer, text: str) -> int | None:
    """The id of ``text`` when the tokenizer writes it as exactly one token, else None.

    No special tokens are added (``add_special_tokens=False``). For a loaded
    model, ``model.to_single_token(text)`` does the same and raises instead.
    """
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def single_token_ids(tokenizer, words: Iterable[str]) -> list[int]:
    """Sorted ids of those ``words`` that are one token each (the others are skipped)."""
    ids = {single_token_id(tokenizer, w) for w in words}
    return sorted(i for i in ids if i is not None)
