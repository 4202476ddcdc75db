"""GPT-2 without LayerNorm (exercises_lib.models.layernorm_free): the loader on a tiny
checkpoint in the hub's format, the stand-in's constants, and the reference model."""

from __future__ import annotations

import math

import pytest
import torch

from exercises_lib import layernorm as LN
from exercises_lib.models import layernorm_free as LF

PROMPT = "The red hat sat on the dog, so the answer is"


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _tiny_hub_checkpoint(path, seed: int = 0) -> str:
    """A small random GPT-2 with its LayerNorms neutralised the hub's way (eps 1e12, weights x 1e6)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    torch.set_grad_enabled(False)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=50257, n_positions=64, layer_norm_epsilon=1e12)
    hf = GPT2LMHeadModel(cfg)
    for name, p in hf.named_parameters():
        if ".ln_" in name and name.endswith("weight"):
            p.copy_((1 + 0.3 * torch.randn_like(p)) * 1e6 / 2.0)
        elif ".ln_" in name and name.endswith("bias"):
            p.copy_(0.2 * torch.randn_like(p))
        elif name.endswith("weight"):
            p.mul_(5.0)  # logits of a few units, not hundredths
    hf.save_pretrained(path)
    torch.set_grad_enabled(True)
    return str(path)


@pytest.fixture(scope="module")
def tiny_noln(tmp_path_factory):
    path = _tiny_hub_checkpoint(tmp_path_factory.mktemp("gpt2_noLN_tiny"))
    model = LF.load_real_layernorm_free(path, "cpu")
    model.enable_compatibility_mode(disable_warnings=True, no_processing=True)  # as load_model does
    return model, path


def test_loader_matches_the_hub_model(tiny_noln):
    model, _ = tiny_noln
    ref = LF.layernorm_free_reference(model)
    tokens = model.to_tokens(["Hello world, this is a test.", "And one more prompt here!!"])
    logits = model(tokens)
    assert logits.abs().max() > 0.3  # not vanishingly small
    diff = LN.max_logit_difference(model, ref, tokens)
    assert diff < 1e-5 * logits.abs().max() + 1e-6
    torch.testing.assert_close(ref(tokens).logits, logits, atol=1e-5, rtol=1e-5)


def test_loader_disables_every_layernorm(tiny_noln):
    model, _ = tiny_noln
    tokens = model.to_tokens(PROMPT)
    _, cache = model.run_with_cache(tokens)
    for name in LN.ln_hook_names(model.cfg.n_layers):
        assert torch.equal(cache[f"{name}.hook_scale"], torch.ones_like(cache[f"{name}.hook_scale"]))
    assert model.layernorm_constants == [1e6] * 5


def test_loader_is_not_a_model_with_layernorm(tiny_noln):
    """Undo the hub's trick (eps back to 1e-5, weights / 1e6): the logits change. So
    the LayerNorms were really removed, not merely left as they are."""
    from transformers import GPT2LMHeadModel

    model, path = tiny_noln
    with_ln = GPT2LMHeadModel.from_pretrained(path).eval()
    for module in with_ln.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.weight.div_(1e6)
            module.eps = 1e-5
    tokens = model.to_tokens(PROMPT)
    assert (with_ln(tokens).logits - model(tokens)).abs().max() > 0.1


def test_standin_constants_are_median_scales(tiny_noln):
    from transformers import GPT2LMHeadModel

    from exercises_lib.tokenizer import gpt2_tokenizer

    _, path = tiny_noln
    hf = GPT2LMHeadModel.from_pretrained(path).eval()
    for module in hf.modules():  # an ordinary LayerNorm model
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 1e-5
            module.weight.div_(1e6)
    constants = LF._standin_constants(hf, gpt2_tokenizer(), n_tokens=32)
    assert len(constants) == 5 and all(c > 0 for c in constants)
    # ln_1 of block 0 reads the embeddings: its median scale, by hand.
    from exercises_lib.texts import load_text

    ids = [50256] + gpt2_tokenizer().encode(load_text("fiction"))[:31]
    x = hf.transformer.wte.weight[ids] + hf.transformer.wpe.weight[: len(ids)]
    s = (x.var(-1, unbiased=False) + 1e-5).sqrt()[1:]
    assert math.isclose(constants[0], float(s.median()), rel_tol=1e-5)


def test_reference_needs_a_layernorm_free_model(gpt2_standin):
    with pytest.raises(ValueError, match="gpt2-noLN"):
        LF.layernorm_free_reference(gpt2_standin)
