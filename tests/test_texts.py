"""Tests of exercises_lib.texts: packaged texts, provenance, stdlib code."""

import random
import re
from importlib import resources

import pytest

from exercises_lib import texts

TEXTS_DIR = resources.files("exercises_lib") / "data" / "texts"
NAMES = [info.name for info in texts.list_texts()]


def test_expected_names_are_listed():
    required = {
        "bible_genesis", "bible_psalms", "legal_gpl3", "python_docs",
        "british_prose", "american_prose", "war_history", "cooking", "fiction",
    }
    assert required <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_text_loads_and_is_non_empty(name):
    text = texts.load_text(name)
    assert len(text.strip()) > 1000
    assert "\r" not in text
    assert text.endswith("\n")


def test_metadata_matches_the_files():
    for info in texts.list_texts():
        assert info.n_chars == len(texts.load_text(info.name))
        assert info.genre and info.source and info.licence


def test_every_file_is_registered_and_total_size_is_small():
    files = sorted(p.name for p in TEXTS_DIR.iterdir() if p.name.endswith(".txt"))
    assert files == sorted(f"{name}.txt" for name in NAMES)
    total = sum(len(texts.load_text(name).encode("utf-8")) for name in NAMES)
    assert total < 400_000


def test_provenance_lists_every_file():
    provenance = (TEXTS_DIR / "PROVENANCE.md").read_text(encoding="utf-8")
    for name in NAMES:
        assert f"`{name}.txt`" in provenance, name


def test_bible_passage_is_long_in_gpt2_tokens():
    tokenizer = pytest.importorskip(
        "exercises_lib.tokenizer", reason="exercises_lib.tokenizer is not available yet"
    )
    tok = tokenizer.gpt2_tokenizer()
    assert len(tok(texts.load_text("bible_genesis"))["input_ids"]) >= 1000


def test_bible_text_has_no_verse_numbers():
    for name in texts.texts_by_genre("religious"):
        text = texts.load_text(name)
        assert not re.search(r"\d", text), name
        assert "God" in text or "LORD" in text


def _words(name):
    return set(re.findall(r"[a-z]+", texts.load_text(name).lower()))


def test_british_prose_uses_british_english():
    words = _words("british_prose")
    assert {"colour", "favour", "organised", "centre", "programme"} <= words
    assert {"lorry", "pavements", "queue", "flats", "nhs", "mps", "pounds"} <= words
    assert not {"color", "favor", "center", "program", "sidewalk", "truck"} & words


def test_american_prose_uses_american_english():
    words = _words("american_prose")
    assert {"color", "favor", "organized", "centers", "program"} <= words
    assert {"truck", "sidewalks", "line", "apartments", "congress", "dollars"} <= words
    assert not {"colour", "favour", "centre", "programme", "pavement", "lorry"} & words


def test_neutral_texts_have_no_dialect_markers():
    markers = {"colour", "color", "favour", "favor", "centre", "center",
               "programme", "lorry", "truck", "pavement", "sidewalk"}
    for name in ["war_history", "cooking", "fiction"]:
        assert not markers & _words(name), name


def test_texts_by_genre():
    news = texts.texts_by_genre("news")
    assert set(news) == {"british_prose", "american_prose"}
    assert news["british_prose"] == texts.load_text("british_prose")
    with pytest.raises(KeyError, match="religious"):
        texts.texts_by_genre("poetry")


def test_unknown_name_raises_key_error_listing_names():
    with pytest.raises(KeyError) as excinfo:
        texts.load_text("bible_revelation")
    message = str(excinfo.value)
    assert "bible_revelation" in message
    for name in NAMES:
        assert name in message


def test_python_source_files_are_deterministic_stdlib_files():
    files = texts.python_source_files(n=20, seed=0)
    assert files == texts.python_source_files(n=20, seed=0)
    assert files != texts.python_source_files(n=20, seed=1)
    assert len(files) == 20 and len(set(files)) == 20
    for path in files:
        assert path.suffix == ".py"
        assert path.stat().st_size <= 20_000
        assert not {"test", "tests", "site-packages"} & set(path.parts)


def test_python_source_snippets_are_deterministic_code():
    snippets = texts.python_source_snippets(8, 400, seed=0)
    assert snippets == texts.python_source_snippets(8, 400, seed=0)
    assert snippets != texts.python_source_snippets(8, 400, seed=1)
    assert len(snippets) == 8 and all(len(s) == 400 for s in snippets)
    joined = "\n".join(snippets)
    assert re.search(r"^\s*(def|class|import|from|return|if) ", joined, re.M)


def test_snippets_start_at_a_line_boundary():
    text = "".join(f"line {i} = {i * i}\n" for i in range(200))
    rng = random.Random(0)
    for _ in range(50):
        snippet = texts._snippet(text, 60, rng)
        start = text.index(snippet)
        assert start == 0 or text[start - 1] == "\n"
        assert snippet.startswith("line ")
    assert texts._snippet("short\n", 60, rng) is None
