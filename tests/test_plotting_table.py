"""The chapters' summary table: four columns, a fixed vocabulary for "how we know"."""

import pytest

from exercises_lib.plotting import HOW_WE_KNOW, summary_table


class _Model:
    display_name = "GPT-2 small (stand-in)"


def test_summary_table_names_the_model_and_spells_out_how_we_know():
    table = summary_table(_Model(), [("top heads", "0.1, 0.5", "0.1, 0.5", "real layer 0")], show=False)
    html = table._repr_html_()
    assert "GPT-2 small (stand-in)" in html and HOW_WE_KNOW["real layer 0"] in html
    assert HOW_WE_KNOW["real layer 0"] in repr(table)


@pytest.mark.parametrize("row", [("a", "b", "c"), ("a", "b", "c", "measured")])
def test_summary_table_refuses_a_row_it_cannot_classify(row):
    with pytest.raises(ValueError):
        summary_table(_Model(), [row], show=False)


def test_say_continues_a_line_too_wide_for_the_book_at_its_gaps(capsys):
    from exercises_lib.plotting import LINE_WIDTH, say

    measured = "mean cos(E[t], P[i]): -0.000"
    say(_Model(), f"{measured}  [planted: token embeddings; real: W_pos]  (the write-up: {'x' * LINE_WIDTH})")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"[GPT-2 small (stand-in)] {measured}  [planted: token embeddings; real: W_pos]"
    assert lines[1].startswith("    (the write-up: ")  # too long itself, but it has no gap to break at
    say(_Model(), "short  line")
    assert capsys.readouterr().out == "[GPT-2 small (stand-in)] short  line\n"
