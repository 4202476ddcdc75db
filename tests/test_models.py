"""The model provider: sources, offline failure, fallback, device, processing."""

import time

import pytest
import torch

from exercises_lib import models
from exercises_lib.models import ModelUnavailableError, load_model


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, an empty HF cache and no local weights directory."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("MECHINTERP_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("MECHINTERP_SOURCE", raising=False)
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=2.0: False)


@pytest.mark.parametrize("name", ["gpt2-small", "attn-only-4l", "gpt2-noLN"])
def test_real_without_network_fails_fast_and_clearly(offline, name):
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as err:
        load_model(name, source="real")
    assert time.monotonic() - start < 5
    msg = str(err.value)
    assert "cannot be loaded" in msg and "source='standin'" in msg and "MECHINTERP_WEIGHTS_DIR" in msg


def test_real_check_really_probes_network_quickly(monkeypatch, tmp_path):
    """The unpatched reachability probe returns within its timeout here (no network)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    start = time.monotonic()
    models._hub_reachable(timeout=2.0)
    assert time.monotonic() - start < 3


def test_auto_falls_back_to_standin_with_banner(offline, capsys):
    model = load_model("attn-only-4l", device="cpu")
    out = capsys.readouterr().out
    assert model.is_standin
    assert "stand-in" in model.display_name
    assert "real weights unavailable" in out and "stand-in" in out.lower()


def test_env_var_selects_standin(monkeypatch):
    monkeypatch.setenv("MECHINTERP_SOURCE", "standin")
    called = []
    monkeypatch.setattr(models, "_load_real", lambda *a, **k: called.append(1))
    model = load_model("attn-only-4l", device="cpu", quiet=True)
    assert model.is_standin and not called


def test_unknown_model_and_source():
    with pytest.raises(ValueError, match="gpt2-small"):
        load_model("gpt3")
    with pytest.raises(ValueError, match="source must be"):
        load_model("gpt2-small", source="hub")


def test_corrupt_local_weights_give_clear_error(monkeypatch, tmp_path):
    """A truncated local copy gives ModelUnavailableError naming the problem, not a bare traceback."""
    local = tmp_path / "weights" / "gpt2"
    local.mkdir(parents=True)
    (local / "config.json").write_text('{"model_type": "gpt2", "n_layer": 12')  # truncated JSON
    (local / "model.safetensors").write_bytes(b"\x00\x01garbage")
    monkeypatch.setenv("MECHINTERP_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=2.0: False)
    with pytest.raises(ModelUnavailableError, match="truncated or corrupt"):
        load_model("gpt2-small", source="real", device="cpu")


def test_standin_shapes_match_real_configs(gpt2_standin, attn_only_standin):
    c = gpt2_standin.cfg
    assert (c.n_layers, c.n_heads, c.d_model, c.d_head, c.d_mlp, c.n_ctx, c.d_vocab) == (12, 12, 768, 64, 3072, 1024, 50257)
    assert gpt2_standin.W_E.shape == (50257, 768) and gpt2_standin.W_pos.shape == (1024, 768)
    assert gpt2_standin.W_in.shape == (12, 768, 3072)
    a = attn_only_standin.cfg
    assert (a.n_layers, a.n_heads, a.d_model, a.d_head) == (4, 8, 512, 64)
    assert attn_only_standin.W_Q.shape == (4, 8, 512, 64)
    assert a.attn_only


def test_standin_runs_with_cache_and_hook_names(gpt2_standin):
    toks = gpt2_standin.to_tokens("Hello world, hello again")
    logits, cache = gpt2_standin.run_with_cache(toks)
    assert logits.shape == (1, toks.shape[1], 50257)
    assert torch.isfinite(logits).all()
    for name in ("hook_embed", "hook_pos_embed", "blocks.0.attn.hook_pattern", "blocks.0.mlp.hook_post", "blocks.11.hook_resid_post"):
        assert name in cache, name


def test_folded_standin_matches_unfolded_logits():
    """LN folding and centring change no prediction (logits up to a per-position constant)."""
    from exercises_lib.models import build_standin

    folded = build_standin("attn-only-4l", device="cpu")
    raw = build_standin("attn-only-4l", device="cpu", processing=False)
    toks = folded.to_tokens("def add(a, b):\n    return a + b")
    a, b = folded(toks), raw(toks)
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)


def test_standin_is_deterministic():
    from exercises_lib.models import build_standin

    m1 = build_standin("attn-only-4l", device="cpu")
    m2 = build_standin("attn-only-4l", device="cpu")
    torch.testing.assert_close(m1.W_Q, m2.W_Q)
    m3 = build_standin("attn-only-4l", device="cpu", seed=1)
    assert not torch.allclose(m1.W_E, m3.W_E)


def test_device_argument(gpt2_standin):
    assert models.default_device() in ("cpu", "cuda")
    assert gpt2_standin.W_E.device.type == "cpu"
