"""Checks guard the model: a student's function that edits weights in place, replaces a
parameter, leaves hooks attached or mutates its inputs is caught, told what it did, and
undone, so the next check and every later cell run on the intact model."""

import functools

import pytest
import torch

from exercises_lib import duplicate_tokens, polysemantic
from exercises_lib.checks import CHECKS, check, run_check
from exercises_lib.checks import _guard

PROMPT = "The red hat and the red hat sat on the mat."


@pytest.fixture(autouse=True)
def _no_raise(monkeypatch):
    monkeypatch.delenv("MECHINTERP_CHECKS_RAISE", raising=False)


@pytest.fixture(scope="module")
def model(gpt2_standin):
    return gpt2_standin


@pytest.fixture(scope="module")
def attn_only(attn_only_standin):
    """The model chapter 3's checks are written for."""
    return attn_only_standin


def _logits(model):
    with torch.no_grad():
        return model(model.to_tokens(PROMPT))


def _hook_count(model) -> int:
    """Hooks on TransformerLens's hook points (the Hugging Face modules inside have hooks of their own)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules() if hasattr(m, "fwd_hooks"))


def test_in_place_weight_edit_is_reported_and_undone(model):
    """The learner's `W_pos = model.W_pos; W_pos -= W_pos.mean(0)` inside layer0_ln_scale."""
    before = _logits(model)
    w_pos = model.W_pos.detach().clone()

    def layer0_ln_scale(model, tokens):
        with torch.no_grad():
            W_pos = model.W_pos
            W_pos -= W_pos.mean(0)
        return duplicate_tokens.layer0_ln_scale(model, tokens)

    result = run_check("duplicate_tokens.layer0_ln_scale", layer0_ln_scale, model=model)
    assert not result.passed
    assert "changed the model's weights in place" in result.message and "model.W_pos" in result.message
    assert "undone" in result.message and "clone" in result.message
    torch.testing.assert_close(model.W_pos.detach(), w_pos, rtol=0, atol=0)
    torch.testing.assert_close(_logits(model), before, rtol=0, atol=0)
    # later cells use the course's function, and the next check runs on the intact model
    assert result.function is duplicate_tokens.layer0_ln_scale
    assert run_check("duplicate_tokens.layer0_ln_scale", duplicate_tokens.layer0_ln_scale, model=model).passed


def test_edit_through_data_is_caught(model):
    """`.data` bypasses autograd's version counter: the sampled fingerprint still sees it."""
    before = _logits(model)

    def layer0_ln_scale(model, tokens):
        model.blocks[0].ln1.w.data.mul_(2.0)
        return duplicate_tokens.layer0_ln_scale(model, tokens)

    result = run_check("duplicate_tokens.layer0_ln_scale", layer0_ln_scale, model=model)
    assert not result.passed and "in place" in result.message, result.message
    torch.testing.assert_close(_logits(model), before, rtol=0, atol=0)


def test_replaced_parameter_is_put_back(model):
    before = _logits(model)
    wpe = model.transformer.wpe._original_component if hasattr(model, "transformer") else None
    if wpe is None:
        pytest.skip("this bridge has no transformer.wpe")

    def layer0_ln_scale(model, tokens):
        out = duplicate_tokens.layer0_ln_scale(model, tokens)
        wpe.weight = torch.nn.Parameter(torch.zeros_like(wpe.weight))
        return out

    result = run_check("duplicate_tokens.layer0_ln_scale", layer0_ln_scale, model=model)
    assert not result.passed and "replaced parameters" in result.message, result.message
    torch.testing.assert_close(_logits(model), before, rtol=0, atol=0)


def test_hook_left_attached_is_reported_and_removed(attn_only):
    """A clean_vs_ablated that adds its hook with model.add_hook and never removes it."""
    assert _hook_count(attn_only) == 0
    before = _logits(attn_only)

    def clean_vs_ablated(model, tokens, answers, layer, head):
        hook = functools.partial(polysemantic.bos_ablation_hook, head=head, dest_positions=tokens.shape[1] - 1)
        out = torch.zeros(2, 2)
        for i in range(2):
            if i == 1:
                model.add_hook(f"blocks.{layer}.attn.hook_pattern", hook)
            logits = polysemantic.logits_at(model, tokens, tokens.shape[1] - 1)
            p = logits.float().softmax(-1)[torch.arange(len(answers)), answers]
            out[i] = torch.stack([(logits.argmax(-1) == answers).float().mean(), p.mean()])
        return out

    result = run_check("polysemantic.clean_vs_ablated", clean_vs_ablated, model=attn_only)
    assert not result.passed
    assert "left hooks attached" in result.message and "blocks.1.attn.hook_pattern" in result.message, result.message
    assert "run_with_hooks" in result.message
    assert _hook_count(attn_only) == 0
    torch.testing.assert_close(_logits(attn_only), before, rtol=0, atol=0)


def test_hook_tied_to_one_length_does_not_break_the_next_check(attn_only, capsys):
    """A hook left behind that only works for one sequence length: the next check still runs."""

    def clean_vs_ablated(model, tokens, answers, layer, head):
        seq = tokens.shape[1]

        def hook(pattern, hook):
            assert pattern.shape[-1] == seq, "wrong length"
            return pattern

        model.add_hook(f"blocks.{layer}.attn.hook_pattern", hook)
        return polysemantic.clean_vs_ablated(model, tokens, answers, layer, head)

    first = check("polysemantic.clean_vs_ablated", clean_vs_ablated, model=attn_only)
    assert not first.passed and _hook_count(attn_only) == 0
    second = check("polysemantic.ablation_sweep", polysemantic.ablation_sweep, model=attn_only)
    out = capsys.readouterr().out
    assert second.passed, out
    assert "Please report this" not in out


def test_hooks_left_by_an_earlier_cell_are_removed_before_the_check(attn_only, capsys):
    attn_only.add_hook("blocks.0.attn.hook_pattern", lambda pattern, hook: pattern * 0)
    result = check("polysemantic.clean_vs_ablated", polysemantic.clean_vs_ablated, model=attn_only)
    out = capsys.readouterr().out
    assert result.passed, out
    assert "hooks attached before this check ran" in out and "blocks.0.attn.hook_pattern" in out
    assert _hook_count(attn_only) == 0


def test_student_gets_copies_of_its_inputs_and_the_diagnosis_sees_the_originals(monkeypatch):
    """A function that mutates its input: the mistake is still named from the pristine input."""
    name = "basics.attention_entropy"
    chk = CHECKS.get(name) or pytest.skip(f"no check {name}")
    mistake, wrong_fn = next(iter(chk.mistakes.items()))

    def mutating(pattern):
        out = wrong_fn(pattern)
        pattern.zero_()  # mutates its input after computing the (wrong) answer
        return out

    result = run_check(name, mutating)
    assert not result.passed and mistake in result.message, result.message


def test_guard_leaves_a_well_behaved_function_alone(model):
    result = run_check("duplicate_tokens.layer0_ln_scale", duplicate_tokens.layer0_ln_scale, model=model)
    assert result.passed, result.message


def test_clone_inputs_copies_tensors_in_containers():
    x = torch.zeros(3)
    p = torch.nn.Parameter(torch.zeros(2))
    copied = _guard.clone_inputs({"a": [x, (x, 1)], "p": p, "s": "text"})
    copied["a"][0].add_(1)
    copied["a"][1][0].add_(1)
    assert x.sum() == 0 and copied["p"] is p and copied["s"] == "text"


def test_guard_folders_of_killed_processes_are_removed(tmp_path, monkeypatch):
    """A kernel killed at shutdown cannot remove its folder of kept copies (hundreds of MB); the next
    process that makes one removes the folders whose process is gone, and only those."""
    import os
    import subprocess
    import sys
    import tempfile

    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead = tmp_path / f"mechinterp-guard-{finished.pid}-abc123"
    live = tmp_path / f"mechinterp-guard-{os.getppid()}-def456"
    unnamed = tmp_path / "mechinterp-guard-x8f3iq7j"  # no process id in the name
    other = tmp_path / "something-else"
    for folder in (dead, live, unnamed, other):
        folder.mkdir()
        (folder / "copy.safetensors").write_bytes(b"0" * 1024)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(_guard, "_FOLDER", None)
    mine = _guard._folder()
    assert mine.parent == tmp_path and mine.name.startswith(f"mechinterp-guard-{os.getpid()}-")
    assert not dead.exists() and not unnamed.exists()
    assert live.exists() and other.exists() and mine.exists()
