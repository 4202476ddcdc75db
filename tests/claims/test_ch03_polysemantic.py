"""Chapter 3's claims (a polysemantic head, 1.4 in attn-only-4l), one test per claim.

On the stand-in (built with the course's code tokenizer, which has
newline+indent tokens like the real model's), all four behaviours of the
write-up are planted at 1.4: previous token, induction, bigger indentation,
inactive. Expectations are measured from behaviour; the destination of a
template is its last position by construction of the template, and where an
ablation sweep drops most is found from the drops. On the real model they
come from the write-up (Jett, cmathw, StefanHex 2023) with the tolerances
stated in each test; our templates follow the write-up's descriptions but are
our own, so the tolerances are loose.

``tests/test_claims_mutations_ch03.py`` breaks the analysis behind each test
and checks that the test then fails.
"""

from __future__ import annotations

import functools

from exercises_lib import code_prompts
from exercises_lib import polysemantic as P

LAYER, HEAD = 1, 4
#: The destination tokens the write-up shows examples for.
WRITEUP_TOKENS = ["\n   ", " R", "\n       ", " width", " dict"]
#: The behaviour each template is built to bring out.
EXPECTED = {"induction": "induction", "indentation": "bigger-indentation", "previous": "previous"}


@functools.lru_cache(maxsize=None)
def _prompt_sets(model):
    return code_prompts.make_prompt_sets(model)


def test_claim_3_1_behaviour_distribution(course_model):
    """1.4 is polysemantic over Python source, and its behaviour depends on the destination token.

    The write-up's Figure 1 (real model) shows several behaviours overall,
    very different bars per destination token, and attention from
    newline+indent tokens to lines of bigger indentation as a common pattern
    (no numbers). Asserted: at least two labels other than 'unknown' with >=
    10% of positions; one label whose share differs by >= 0.3 between two
    destination tokens; and on some newline+indent destination token the
    bigger-indentation label takes >= 10% of positions, more than overall.
    """
    from exercises_lib.texts import python_source_snippets

    model = course_model("attn-only-4l")
    code = P.code_tokens(model, python_source_snippets(16, 1500, seed=0), n_tokens=256)
    res = P.label_positions(model, code, LAYER, HEAD)
    groups = [None] + P.token_groups(res["dest_tokens"], wanted=WRITEUP_TOKENS, min_count=5)
    table = P.behaviour_table(res["labels"], res["dest_tokens"], groups)
    overall = dict(zip(P.BEHAVIOURS, table[0].tolist()))
    assert sum(v >= 0.10 for b, v in overall.items() if b != "unknown") >= 2, overall
    assert (table[1:].max(0).values - table[1:].min(0).values).max() >= 0.3
    col = P.BEHAVIOURS.index("bigger-indentation")
    indent_rows = [g for g, group in enumerate(groups) if group is not None and "\n" in group and group.strip() == ""]
    assert indent_rows, groups
    best = max(float(table[g, col]) for g in indent_rows)
    assert best >= 0.10 and best > overall["bigger-indentation"], (best, overall)


def test_claim_3_2_templates(course_model):
    """Each template brings out its own behaviour of 1.4 at the destination: the template's
    behaviour is the majority label there, and it is far more common (by >= 0.5) in its own
    template than in the other two. (The prompt counts, 120/50/50, are set by our
    generator, so they are not asserted.)"""
    model = course_model("attn-only-4l")
    sets = _prompt_sets(model)
    shares = {name: P.destination_labels(model, sets[name], LAYER, HEAD) for name in EXPECTED}
    for name, label in EXPECTED.items():
        assert shares[name].get(label, 0) >= 0.5, (name, shares[name])
        for other in EXPECTED:
            if other != name:
                assert shares[name].get(label, 0) - shares[other].get(label, 0) >= 0.5, (name, other, shares)


def test_claim_3_3_bos_ablation_table(course_model):
    """BOS-ablating 1.4 at the destination costs much of the correct token's probability.

    Write-up (real): induction 93%->25%, 0.28->0.09; indentation 100%->4%,
    0.55->0.11; previous 100%->80%, 0.87->0.40. Asserted for each template
    (:func:`exercises_lib.polysemantic.ablation_pattern`): clean accuracy >=
    0.8, probability drop >= 0.15 and to <= 60% of clean, accuracy not higher
    when ablated; on the real model also each clean and ablated probability
    within 0.35 of the write-up's (different prompts).
    """
    model = course_model("attn-only-4l")
    sets = _prompt_sets(model)
    for name in EXPECTED:
        table = P.clean_vs_ablated(model, sets[name].tokens, sets[name].answers, LAYER, HEAD)
        pattern = P.ablation_pattern(table)
        assert all(pattern.values()), (name, pattern, table.tolist())
        if not model.is_standin:
            (_, p), (_, p_abl) = table.tolist()
            assert abs(p - P.WRITEUP_ABLATION[name]["clean_prob"]) <= 0.35, (name, p)
            assert abs(p_abl - P.WRITEUP_ABLATION[name]["ablated_prob"]) <= 0.35, (name, p_abl)


def test_claim_3_4_only_the_destination_matters(course_model):
    """Ablating 1.4 at one position at a time: the largest drop of p(correct), found from the
    drops alone, is at the destination and >= 0.15; every other position moves it by < 0.05
    (write-up: < 5 points). On the real model the drop at the destination is also within
    0.25 of the write-up's (about 0.20, 0.40, 0.45; different prompts)."""
    model = course_model("attn-only-4l")
    sets = _prompt_sets(model)
    n = 8 if model.is_standin else 50
    for name in EXPECTED:
        drops = P.ablation_sweep(model, sets[name].tokens[:n], sets[name].answers[:n], LAYER, HEAD)
        found = P.sweep_summary(drops)
        assert found["position"] == len(drops) - 1, (name, found)
        assert found["drop"] >= 0.15 and found["largest_elsewhere"] < 0.05, (name, found)
        if not model.is_standin:
            assert abs(found["drop"] - P.WRITEUP_KEY_POSITION_DROP[name]) <= 0.25, (name, found)
