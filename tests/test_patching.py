"""Batched activation patching and path patching (exercises_lib.patching).

The batched sweep must give the numbers of the one-forward-per-site loop; the
resid_mid special case must patch the residual stream itself; path patching
with every later input as a receiver must equal activation patching.
"""

from __future__ import annotations

import pytest
import torch

from exercises_lib import duality as D
from exercises_lib import patching as P
from exercises_lib.patching_fast_path import fast_path_agrees, forward_staggered


@pytest.fixture(scope="module")
def setup(gpt2_standin):
    model = gpt2_standin
    prompts = D.left_right_prompts(model).subset([0, 3])  # one left-correct, one right-correct
    metric = D.logit_diff_metric(prompts)
    return model, prompts, metric


def _close(a, b):
    torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-4)


def test_normalise():
    v = torch.tensor([-2.0, 1.0, 4.0])
    torch.testing.assert_close(P.normalise(v, 4.0, -2.0), torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(P.normalise(v, torch.tensor(-2.0), torch.tensor(4.0)), torch.tensor([1.0, 0.5, 0.0]))


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_batched_equals_loop_resid(setup, direction):
    model, ps, metric = setup
    hooks = ["blocks.2.hook_resid_pre", "blocks.9.hook_resid_mid"]
    positions = [ps.dual_pos, ps.seq_len - 1]
    kw = dict(direction=direction, positions=positions, progress=False)
    batched = P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, hooks, metric, batch_size=4, **kw)
    looped = P.patch_loop(model, ps.clean_tokens, ps.corrupt_tokens, hooks, metric, **kw)
    assert batched.shape == looped.shape == (2, 2)
    _close(batched, looped)


def test_batched_equals_loop_heads(setup):
    model, ps, metric = setup
    hooks = ["blocks.9.attn.hook_z"]
    kw = dict(heads=True, direction="denoise", progress=False, last_position_only=True)
    batched = P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, hooks, metric, **kw)
    looped = P.patch_loop(model, ps.clean_tokens, ps.corrupt_tokens, hooks, metric, **kw)
    assert batched.shape == (1, model.cfg.n_heads)
    _close(batched, looped)


def test_options_do_not_change_the_numbers(setup):
    """Skipping identical sites, chunking and where a pass starts are optimisations only."""
    model, ps, metric = setup
    hooks = ["blocks.4.hook_resid_mid", "blocks.11.hook_resid_post", "hook_embed"]
    positions = [0, ps.dual_pos - 1, ps.dual_pos, ps.seq_len - 1]
    base = P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, hooks, metric, positions=positions, progress=False)
    assert base.shape == (3, 4)
    plain = P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, hooks, metric, positions=positions,
                          progress=False, skip_identical=False, batch_size=2 * 3)
    _close(base, plain)
    # The positions before the dual word are identical in both runs: the unpatched value.
    corrupt = metric(model(ps.corrupt_tokens))
    _close(base[:, :2], corrupt.expand(3, 2))


def test_staggered_pass_equals_loop(setup):
    """One pass whose rows enter at different layers (0 to after the last block) gives the
    loop's numbers, and so does the same sweep split into passes of a few sites."""
    model, ps, metric = setup
    hooks = ["blocks.0.hook_resid_pre", "blocks.3.hook_resid_mid", "blocks.7.hook_resid_pre",
             "blocks.11.hook_resid_post", "ln_final.hook_in"]
    kw = dict(positions=[ps.dual_pos, ps.seq_len - 1], progress=False, last_position_only=True)
    looped = P.patch_loop(model, ps.clean_tokens, ps.corrupt_tokens, hooks, metric, **kw)
    one_pass = P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, hooks, metric, **kw)
    split = P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, hooks, metric, batch_size=6, **kw)
    assert one_pass.shape == looped.shape == (5, 2)
    _close(one_pass, looped)
    _close(split, looped)
    # Not a trivially constant result: patching the dual word's residual stream moves the metric.
    assert float((looped[:, 0] - looped[:, 1]).abs().max()) > 1e-2 or float(looped.std()) > 1e-2


def test_last_block_sites_with_the_last_position_only(setup):
    """With ``last_position_only`` the last block runs its queries, output and MLP at the last
    position only: patches of that block at earlier positions (which cannot reach the metric there,
    except through keys and values) and at the last position give the loop's numbers."""
    model, ps, metric = setup
    last = model.cfg.n_layers - 1
    hooks = [f"blocks.{last}.hook_resid_pre", f"blocks.{last}.hook_resid_mid", f"blocks.{last}.hook_mlp_out",
             f"blocks.{last}.hook_resid_post", f"blocks.{last - 1}.hook_resid_post"]
    kw = dict(positions=[ps.dual_pos, ps.seq_len - 2, ps.seq_len - 1], progress=False, last_position_only=True)
    looped = P.patch_loop(model, ps.clean_tokens, ps.corrupt_tokens, hooks, metric, **kw)
    batched = P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, hooks, metric, **kw)
    _close(batched, looped)
    heads = dict(kw, heads=True)
    _close(P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, [f"blocks.{last}.attn.hook_z"], metric, **heads),
           P.patch_loop(model, ps.clean_tokens, ps.corrupt_tokens, [f"blocks.{last}.attn.hook_z"], metric, **heads))
    # Not constant: the last position's own patches move the metric, the earlier ones of the
    # last block's outputs cannot.
    assert float((looped[:, 2] - looped[:, 0]).abs().max()) > 1e-2


@pytest.mark.parametrize("budget", [None, 1])
def test_metrics_that_keep_or_edit_their_logits(setup, monkeypatch, budget):
    """The sweep reuses one block of logits for its sites: a metric whose value is a view of its
    logits, and one that edits its logits in place (and reads a position before the patch, which
    the sweep takes from the target run), give the loop's numbers, with several sites per block of
    logits and with one (``budget=1``)."""
    model, ps, metric = setup
    if budget is not None:
        monkeypatch.setattr(P, "LOGITS_BUDGET", budget)

    def view(logits):
        return logits[:, -1, :4]

    def editing(logits):
        logits.mul_(-1.0)
        return logits[:, 0, :4].sum(-1) + logits[:, -1, :4].sum(-1)

    hooks = ["blocks.1.hook_resid_pre", "blocks.6.hook_resid_pre", "blocks.11.hook_resid_post"]
    kw = dict(positions=[0, ps.dual_pos, ps.seq_len - 1], progress=False)
    for m in (view, editing):
        looped = P.patch_loop(model, ps.clean_tokens, ps.corrupt_tokens, hooks, m, **kw)
        _close(P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, hooks, m, **kw), looped)
        assert float(looped[:, 1:].std()) > 1e-3, m.__name__  # the sites differ
        _close(P.path_patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, (3, 2), ["blocks.7.ln1.hook_in",
               "blocks.9.ln2.hook_in"], m, progress=False),
               torch.stack([P.path_patch(model, ps.clean_tokens, ps.corrupt_tokens, (3, 2), r, m)
                            for r in ("blocks.7.ln1.hook_in", "blocks.9.ln2.hook_in")]))


@pytest.mark.parametrize("last_position_only", [False, True])
def test_block_outputs_enter_the_next_block(setup, last_position_only):
    """A patched MLP output or block output becomes the residual stream entering the next block (the
    rows skip the patched block): the loop's numbers at every position, at chosen positions, and for
    the last block, whose output goes straight to the final LayerNorm."""
    model, ps, metric = setup
    last = model.cfg.n_layers - 1
    hooks = ["blocks.0.hook_mlp_out", "blocks.6.hook_mlp_out", "blocks.5.hook_resid_post",
             f"blocks.{last}.hook_mlp_out", f"blocks.{last}.hook_resid_post"]
    for positions in ("all", [ps.dual_pos, ps.seq_len - 1]):
        kw = dict(positions=positions, progress=False, last_position_only=last_position_only)
        looped = P.patch_loop(model, ps.clean_tokens, ps.corrupt_tokens, hooks, metric, **kw)
        _close(P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, hooks, metric, **kw), looped)
        assert float(looped.std()) > 1e-2  # the sites differ from each other


@pytest.mark.parametrize("last_position_only", [False, True])
def test_block_outputs_in_one_pass_with_the_reference_runs(setup, monkeypatch, last_position_only):
    """Whole block outputs run in one pass with both reference runs (every weight read once): the
    loop's numbers with prompts sharing their opening tokens (computed once) and with prompts that
    share none, with the source run stopping early (outputs of early blocks only); outputs that are
    the same in both runs (two MLPs switched off) give the unpatched value without rows of their own."""
    model, ps, metric = setup
    calls = []
    one_pass = P.forward_block_outputs
    monkeypatch.setattr(P, "forward_block_outputs", lambda *a, **k: calls.append(one_pass(*a, **k)) or calls[-1])
    kw = dict(positions="all", progress=False, last_position_only=last_position_only)
    clean, corrupt = ps.clean_tokens.clone(), ps.corrupt_tokens.clone()
    unshared = (clean.clone(), corrupt.clone())
    unshared[0][1, 0] = unshared[1][1, 0] = model.to_single_token(" The")  # the prompts differ from position 0
    assert int(clean[:, 0].ne(clean[0, 0]).sum()) == 0 and int(unshared[0][:, 0].ne(unshared[0][0, 0]).sum()) > 0
    cases = [(clean, corrupt, P.resid_hook_names(model, "mlp_out")),
             (*unshared, ["blocks.1.hook_mlp_out", "blocks.4.hook_resid_post", "blocks.1.hook_mlp_out"])]
    for c, k, hooks in cases:
        looped = P.patch_loop(model, c, k, hooks, metric, **kw)
        _close(P.patch_sweep(model, c, k, hooks, metric, **kw), looped)
        assert float(looped.std()) > 1e-2
    proj = [dict(model.named_parameters())[f"transformer.h.{layer}._original_component.mlp._original_component."
                                           f"c_proj._original_component.{n}"] for layer in (3, 7)
            for n in ("weight", "bias")]
    saved = [w.detach().clone() for w in proj]
    try:
        with torch.no_grad():
            for w in proj:
                w.zero_()
        hooks = ["blocks.3.hook_mlp_out", "blocks.5.hook_mlp_out", "blocks.7.hook_mlp_out"]
        swept = P.patch_sweep(model, clean, corrupt, hooks, metric, **kw)
        _close(swept, P.patch_loop(model, clean, corrupt, hooks, metric, **kw))
        assert torch.equal(swept[0], swept[2]) and not torch.equal(swept[0], swept[1])
        _, rows, _, same = calls[-1]
        assert same == [True, False, True] and rows.shape[0] == len(clean)  # the layer-5 output's rows only
    finally:
        with torch.no_grad():
            for w, v in zip(proj, saved):
                w.copy_(v)
    assert len(calls) == 3


def test_a_hook_attached_to_the_model_is_honoured(setup):
    """A hook the caller attached (here: head 9.1 ablated) runs in every pass of the sweep: the
    direct path, which would not run it, stands aside."""
    model, ps, metric = setup
    hooks = ["blocks.3.hook_resid_pre", "blocks.8.hook_mlp_out"]
    kw = dict(positions=[ps.dual_pos, ps.seq_len - 1], progress=False, last_position_only=True)

    def ablate(z, hook):
        z = z.clone()
        z[:, :, 1] = 0.0
        return z

    plain = P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, hooks, metric, **kw)
    with model.hooks(fwd_hooks=[("blocks.9.attn.hook_z", ablate)]):
        hooked = P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, hooks, metric, **kw)
        looped = P.patch_loop(model, ps.clean_tokens, ps.corrupt_tokens, hooks, metric, **kw)
    assert float((hooked - plain).abs().max()) > 1e-3  # the ablation changes the numbers
    _close(hooked, looped)


def test_the_fast_path_holds_for_this_transformer_lens(setup):
    """What exercises_lib.patching_fast_path relies on in the bridge: blocks run one by one from a cached
    residual stream (rows joining at different blocks) give the model's logits, and hooks fire inside
    them. A TransformerLens release that breaks it fails here, not in a silent fallback to full passes."""
    model, ps, _ = setup
    logits, cache = model.run_with_cache(ps.clean_tokens)
    L = model.cfg.n_layers
    resid = {0: cache["blocks.0.hook_resid_pre"], 5: cache["blocks.5.hook_resid_pre"], L: cache[f"blocks.{L - 1}.hook_resid_post"]}
    rows = torch.arange(len(ps)).repeat(3)
    fired = []
    hooks = [("blocks.7.attn.hook_z", lambda z, hook: fired.append(z.shape[0]))]
    again = forward_staggered(model, [0] * len(ps) + [5] * len(ps) + [L] * len(ps), resid, rows, hooks, False)
    for k in range(3):
        _close(again[k * len(ps) : (k + 1) * len(ps)], logits)
    assert fired == [2 * len(ps)]  # the rows that started at blocks 0 and 5 pass block 7
    assert fast_path_agrees(model, ps.clean_tokens, resid, logits)


def test_per_prompt_metric_and_all_positions(setup):
    model, ps, _ = setup
    per_prompt = D.logit_diff_metric(ps, per_prompt=True)
    out = P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, ["blocks.5.hook_resid_pre"], per_prompt,
                        positions="all", progress=False)
    assert out.shape == (1, len(ps))
    clean = D.logit_diff(model(ps.clean_tokens), ps.correct, ps.incorrect)
    _close(out[0], clean)  # patching every position of the residual stream restores the clean run


def test_resid_mid_patches_the_residual_stream(setup):
    """Patching resid_mid at every position gives the source run's logits exactly; writing to the
    bridge's hook_resid_mid (= ln2.hook_in) does not: it only changes the MLP's input."""
    model, ps, _ = setup
    clean_logits, cache = model.run_with_cache(ps.clean_tokens)

    def last_logits(logits):
        return logits[:, -1, :200]

    out = P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, ["blocks.10.hook_resid_mid"], last_logits,
                        positions="all", progress=False)
    _close(out[0], clean_logits[:, -1, :200])
    naive = model.run_with_hooks(ps.corrupt_tokens, fwd_hooks=[
        ("blocks.10.hook_resid_mid", lambda act, hook: cache["blocks.10.hook_resid_mid"])])
    assert (naive[:, -1, :200] - clean_logits[:, -1, :200]).abs().max() > 1.0


def test_patch_together_and_path_patch(setup):
    model, ps, metric = setup
    def receivers_after(layer: int, attention: bool) -> list[str]:
        names = [f"blocks.{layer}.ln2.hook_in"] if attention else []
        for later in range(layer + 1, model.cfg.n_layers):
            names += [f"blocks.{later}.ln1.hook_in", f"blocks.{later}.ln2.hook_in"]
        return names + ["ln_final.hook_in"]

    layer, head = 9, 2  # any head: the identity holds for all of them
    cases = [((layer, head), receivers_after(layer, True), (f"blocks.{layer}.attn.hook_z", head, None)),
             ("blocks.8.hook_mlp_out", receivers_after(8, False), ("blocks.8.hook_mlp_out", None, None))]
    for sender, receivers, site in cases:
        via_paths = P.path_patch(model, ps.clean_tokens, ps.corrupt_tokens, sender, receivers, metric)
        direct = P.patch_together(model, ps.clean_tokens, ps.corrupt_tokens, [site], metric)
        _close(via_paths, direct)
    # Nothing received: nothing changes.
    none = P.path_patch(model, ps.clean_tokens, ps.corrupt_tokens, (3, 0), "blocks.2.ln1.hook_in", metric)
    _close(none, metric(model(ps.clean_tokens)))


def test_head_output_is_attn_out_minus_bias(setup):
    model, ps, _ = setup
    _, cache = model.run_with_cache(ps.clean_tokens)
    total = sum(P.head_output(model, cache, 4, h) for h in range(model.cfg.n_heads))
    _close(total + model.b_O[4], cache["blocks.4.hook_attn_out"])


def test_errors(setup):
    model, ps, metric = setup
    with pytest.raises(ValueError, match="direction"):
        P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, ["blocks.0.hook_resid_pre"], metric, direction="both")
    with pytest.raises(ValueError, match="head axis"):
        P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens, ["blocks.0.hook_resid_pre"], metric, heads=True)
    with pytest.raises(ValueError, match="same shape"):
        P.patch_sweep(model, ps.clean_tokens, ps.corrupt_tokens[:, :-1], ["blocks.0.hook_resid_pre"], metric)
    with pytest.raises(ValueError, match="component input"):
        P.path_patch(model, ps.clean_tokens, ps.corrupt_tokens, (1, 1), "blocks.3.hook_resid_pre", metric)


def test_hook_helpers(gpt2_standin):
    assert P.resid_hook_names(gpt2_standin, "resid_mid")[3] == "blocks.3.hook_resid_mid"
    assert P.hook_layer(gpt2_standin, "blocks.7.attn.hook_z") == 7
    assert P.hook_layer(gpt2_standin, "hook_embed") == -1
    assert P.hook_layer(gpt2_standin, "ln_final.hook_scale") == gpt2_standin.cfg.n_layers


def test_mlp_pre_at_one_position_is_the_models(setup):
    """The direct layer-0 reading chapter 1's copy-distance curves use: the MLP's pre-activation at one
    position equals the model's own (the bridge's cache); with a hook attached it stands aside."""
    from exercises_lib.duplicate_tokens import run_layer0, single_copy_sequences
    from exercises_lib.patching_fast_path import mlp_pre_at

    model, _, _ = setup
    seqs = single_copy_sequences(model, 120, 40, 3, 0)
    want = run_layer0(model, seqs)["blocks.0.mlp.hook_pre"][:, 120]
    got = mlp_pre_at(model, seqs, 0, 120)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    deeper = mlp_pre_at(model, seqs, 2, 100)
    _, cache = model.run_with_cache(seqs, names_filter=lambda n: n == "blocks.2.mlp.hook_pre")
    torch.testing.assert_close(deeper, cache["blocks.2.mlp.hook_pre"][:, 100], atol=1e-4, rtol=1e-4)
    with model.hooks(fwd_hooks=[("blocks.0.hook_mlp_out", lambda act, hook: act)]):
        assert mlp_pre_at(model, seqs, 0, 120) is None


def test_the_two_reference_runs_together_are_the_models(setup):
    """Both unpatched runs computed together (the source run from the first position where the prompts
    differ, every weight multiplying both runs' tokens at once) record what the bridge's cache records,
    for every kind of activation, in both runs; identical prompts give one run."""
    from exercises_lib.patching_fast_path import Gpt2Weights, forward_pair

    model, prompts, _ = setup
    target, source = prompts.clean_tokens, prompts.corrupt_tokens
    assert 0 < int((target != source).any(0).nonzero()[0]) < target.shape[1]  # a shared prefix to reuse
    kinds = ("hook_resid_pre", "attn.hook_k", "attn.hook_v", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
             "mlp.hook_pre", "hook_mlp_out", "hook_resid_post")
    names = [f"blocks.{l}.{k}" for l in (0, 5, model.cfg.n_layers - 1) for k in kinds]
    source_names = [n for n in names if not n.startswith(f"blocks.{model.cfg.n_layers - 1}.")]
    weights = Gpt2Weights(model)
    logits, got_t, got_s = forward_pair(weights, target, names, "all", source, source_names)
    want_logits, want_t = model.run_with_cache(target)
    _, want_s = model.run_with_cache(source)
    torch.testing.assert_close(logits, want_logits, atol=1e-3, rtol=1e-4)
    for got, want, wanted in ((got_t, want_t, names), (got_s, want_s, source_names)):
        assert sorted(got) == sorted(wanted)
        for n in wanted:
            torch.testing.assert_close(got[n], want[n], atol=1e-4, rtol=1e-4, msg=lambda m, n=n: f"{n}: {m}")
    last, same_t, same_s = forward_pair(weights, target, names[:3], "last", target.clone(), names[3:6])
    torch.testing.assert_close(last, want_logits[:, -1:], atol=1e-3, rtol=1e-4)
    for n in names[3:6]:
        torch.testing.assert_close(same_s[n], want_t[n], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("last_position_only", [False, True])
def test_path_patch_sweep_senders_anywhere_in_one_or_several_passes(setup, monkeypatch, last_position_only):
    """The sweep runs the target past the sender's block alongside its first pass's rows; the later
    passes take that run's keys, values and residual streams. Senders early (the target runs alone
    for some blocks before any receiver) and in the last block, in one pass or in passes of one set,
    give path_patch's numbers (the bridge with hooks); a sender whose output does not change gives
    the unpatched metric."""
    model, ps, metric = setup
    L, clean, corrupt = model.cfg.n_layers, ps.clean_tokens, ps.corrupt_tokens
    lpo = dict(last_position_only=last_position_only, progress=False)
    m = (lambda lg: metric(lg[:, -1:])) if last_position_only else metric
    cases = [((2, 3), ["blocks.9.ln1.hook_in", "blocks.10.ln2.hook_in", "ln_final.hook_in"]),
             ((L - 1, 5), [f"blocks.{L - 1}.ln2.hook_in", "ln_final.hook_in"]),
             ("blocks.4.hook_mlp_out", ["blocks.4.ln2.hook_in", "blocks.5.ln1.hook_in", "blocks.7.ln2.hook_in"])]
    for sender, receivers in cases:
        want = torch.stack([P.path_patch(model, clean, corrupt, sender, r, m) for r in receivers])
        _close(P.path_patch_sweep(model, clean, corrupt, sender, receivers, metric, **lpo), want)
        with monkeypatch.context() as mp:
            mp.setattr(P, "PATH_PASS_TOKENS", 1)  # one receiver set per pass
            _close(P.path_patch_sweep(model, clean, corrupt, sender, receivers, metric, **lpo), want)
        assert float(want.std()) > 1e-3, sender  # the receivers differ
    unchanged = P.path_patch_sweep(model, clean, clean.clone(), (6, 1), cases[0][1], metric, **lpo)
    _close(unchanged, torch.stack([torch.as_tensor(m(model(clean))).float()] * 3))


def test_products_give_addmms_numbers(monkeypatch):
    """The fast path's products (oneDNN's linear kernel on a CPU where PyTorch has it) give addmm's
    numbers for both weight layouts the model holds (``[in, out]``, and ``[out, in]`` seen transposed),
    with and without GPT-2's GELU; a weight that is a view into a wider matrix, and a product that
    tracks gradients, go through addmm."""
    from exercises_lib import patching_fast_path as F

    kernel = F._cpu_linear()
    calls = []
    if kernel is not None:
        monkeypatch.setattr(F, "_CPU_LINEAR", [lambda *a: calls.append(1) or kernel(*a)])
    g = torch.Generator().manual_seed(0)
    x, wide, b = (torch.randn(*s, generator=g) for s in ((37, 96), (96, 160), (80,)))
    layouts = {"[in, out]": (wide[:, :80].contiguous(), True), "[out, in] seen transposed": (wide[:, :80].T.contiguous().T, True),
               "a view into a wider matrix": (wide[:, :80], False)}
    for name, (w, by_kernel) in layouts.items():
        for bias in (b, None):
            for gelu in (False, True):
                calls.clear()
                with torch.no_grad():
                    got = F._linear(x, w, bias, gelu)
                want = x @ w if bias is None else torch.addmm(bias, x, w)
                torch.testing.assert_close(got, F._gelu_new(want) if gelu else want, atol=1e-5, rtol=1e-5,
                                           msg=lambda m, name=name: f"{name}: {m}")
                assert len(calls) == (1 if by_kernel and kernel is not None else 0), name
    calls.clear()
    w = wide[:, :80].contiguous().requires_grad_()
    with torch.enable_grad():  # with gradients: addmm, which has them
        F._linear(x, w, b).sum().backward()
    assert not calls and w.grad is not None


def test_the_kernel_is_used_only_where_it_gives_addmms_numbers(monkeypatch):
    """Without PyTorch's oneDNN linear op, with one whose numbers are not addmm's, or with one that
    takes other arguments, the products are addmm's."""
    from exercises_lib import patching_fast_path as F

    class Without:  # a PyTorch build without the op
        pass

    class Wrong:  # an op that drops the bias
        @staticmethod
        def _linear_pointwise(x, w, b, *rest):
            return x @ w.T

    class Older:  # an op of another signature
        @staticmethod
        def _linear_pointwise(x, w, b):
            return torch.addmm(b, x, w.T)

    for ops in (Without(), Wrong(), Older()):
        monkeypatch.setattr(F, "_CPU_LINEAR", [])
        monkeypatch.setattr(torch.ops, "mkldnn", ops)
        assert F._cpu_linear() is None
        x, w, b = torch.ones(3, 4), torch.ones(4, 2), torch.ones(2)
        with torch.no_grad():
            torch.testing.assert_close(F._linear(x, w, b), torch.full((3, 2), 5.0))


def test_sweeps_are_the_same_with_either_kernel(setup, monkeypatch):
    """Every fast path (one pass of block outputs, incremental rows, path patching) gives the same
    numbers with oneDNN's products as with addmm's."""
    from exercises_lib import patching_fast_path as F

    model, ps, metric = setup
    clean, corrupt = ps.clean_tokens, ps.corrupt_tokens

    def sweeps():
        kw = dict(progress=False, last_position_only=True)
        return [P.patch_sweep(model, clean, corrupt, P.resid_hook_names(model, "mlp_out"), metric, positions="all", **kw),
                P.patch_sweep(model, clean, corrupt, P.resid_hook_names(model, "resid_pre"), metric, **kw),
                P.patch_sweep(model, clean, corrupt, P.resid_hook_names(model, "resid_pre"), metric, progress=False),
                P.path_patch_sweep(model, clean, corrupt, (6, 1), [f"blocks.{l}.ln1.hook_in" for l in range(7, 12)],
                                   metric, progress=False)]

    first = sweeps()
    monkeypatch.setattr(F, "_CPU_LINEAR", [None])
    for a, b in zip(first, sweeps()):
        _close(a, b)
