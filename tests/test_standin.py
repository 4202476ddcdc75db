"""The stand-in builder, its registry, and the worked-example plant measured from behaviour."""

import math

import pytest
import torch

from exercises_lib.models import build_standin
from exercises_lib.standin import PLANTS, Layout, build_standin_weights, plants_for

N = 300  # sequence length of the identical-token probe


def classify_layer0_heads(model, layer: int = 0) -> dict[str, set[int]]:
    """Group heads by the pattern they show on a run of identical tokens.

    Measured from behaviour only: the model is run, nothing is read from the plant.
    """
    tokens = torch.full((1, N), model.to_single_token(" the"))
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.attn.hook_pattern")
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]  # head dest src
    dests = torch.arange(100, N)
    groups = {"previous_token": set(), "decaying": set(), "uniform": set(), "other": set()}
    for head in range(pattern.shape[0]):
        rows = pattern[head, dests]  # [dest, src]
        prev = rows[torch.arange(len(dests)), dests - 1].mean()
        last50 = torch.stack([rows[k, d - 49 : d + 1].sum() for k, d in enumerate(dests)]).mean()
        ent = -(rows * rows.clamp_min(1e-12).log()).sum(-1) / torch.log(dests.float() + 1)
        if prev > 0.5:
            groups["previous_token"].add(head)
        elif ent.mean() > 0.97:
            groups["uniform"].add(head)
        elif 0.4 < last50 < 0.9:
            groups["decaying"].add(head)
        else:
            groups["other"].add(head)
    return groups


def test_registry_has_worked_example():
    names = [p.name for p in plants_for("gpt2-small")]
    assert "positional" in names
    assert PLANTS["positional"].default_placement["previous_token"] == [3, 4, 7]


def test_positional_plant_default_placement():
    model = build_standin("gpt2-small", plants=["positional"], device="cpu")
    groups = classify_layer0_heads(model)
    assert groups["previous_token"] == {3, 4, 7}
    assert groups["decaying"] == {0, 2, 6, 8, 9, 10}
    assert 11 in groups["uniform"]  # unplanted heads (1, 5 here) are quiet noise: near-uniform too


def test_positional_plant_elsewhere_is_found_there():
    where = {"previous_token": [1, 5], "decaying": [0, 11], "uniform": [7]}
    model = build_standin("gpt2-small", plants=["positional"], placement={"positional": where}, device="cpu")
    groups = classify_layer0_heads(model)
    assert groups["previous_token"] == {1, 5}
    assert groups["decaying"] == {0, 11}
    assert 7 in groups["uniform"]


def test_positional_plant_in_another_layer():
    where = {"layer": 3, "previous_token": [2], "decaying": [4], "uniform": [9]}
    model = build_standin("gpt2-small", plants=["positional"], placement={"positional": where}, device="cpu")
    # Layer 3 sees layer 0-2 outputs too, but they are quiet: the groups still show.
    groups = classify_layer0_heads(model, layer=3)
    assert 2 in groups["previous_token"] and 4 in groups["decaying"] and 9 in groups["uniform"]


def test_decay_length_is_about_the_planted_one():
    """Attention of a decaying head falls by e over about `decay_tokens` positions."""
    model = build_standin("gpt2-small", plants=["positional"], device="cpu")
    tokens = torch.full((1, N), model.to_single_token(" the"))
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_pattern")
    row = cache["blocks.0.attn.hook_pattern"][0, 0, N - 1]
    d = torch.arange(0, 120)
    logw = row[N - 1 - d].log()
    slope = torch.linalg.lstsq(torch.stack([d.float(), torch.ones_like(d.float())], 1), logw[:, None]).solution[0, 0]
    assert 35 < -1 / slope.item() < 70


def test_positional_embedding_is_gpt2_like():
    model = build_standin("gpt2-small", plants=[], device="cpu")
    # Compatibility mode centres W_pos; the norm past 100 is about 3.35 as in GPT-2.
    norms = model.W_pos.norm(dim=-1)
    assert abs(norms[100:].mean().item() - 3.35) < 0.2
    assert norms[0] > 1.5 * norms[100:].mean()
    cos = torch.nn.functional.cosine_similarity(model.W_E[:2000, None, :], model.W_pos[None, 100:600:50, :], dim=-1)
    assert cos.abs().mean() < 0.1  # nearly orthogonal, as in GPT-2


def test_placement_errors_are_clear():
    with pytest.raises(ValueError, match="no placement keys"):
        build_standin_weights("gpt2-small", plants=["positional"], placement={"positional": {"heads": [1]}})
    with pytest.raises(ValueError, match="unknown plants"):
        build_standin_weights("gpt2-small", plants=["nonexistent"])
    with pytest.raises(ValueError, match="two positional groups"):
        build_standin_weights("gpt2-small", plants=["positional"], placement={"positional": {"uniform": [3]}})


def test_layout_hands_out_orthogonal_centred_directions():
    layout = Layout(64, 16, torch.Generator().manual_seed(0))
    a, b = layout.direction("a", 5), layout.direction("b", 7)
    both = torch.cat([a, b])
    torch.testing.assert_close(both @ both.T, torch.eye(12), atol=1e-5, rtol=0)
    assert both.sum(-1).abs().max() < 1e-5  # orthogonal to the all-ones vector
    assert torch.equal(layout.direction("a", 5), a)
    assert layout.head_dims(0, 1, "qk", 10) == slice(0, 10)
    with pytest.raises(ValueError, match="no 10 free qk"):
        layout.head_dims(0, 1, "qk", 10)
