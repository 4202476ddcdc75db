"""The model provider: sources, offline failure, fallback, device, processing, the disk cache, imports."""

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from exercises_lib import models
from exercises_lib.models import ModelUnavailableError, load_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["gpt2-small", "attn-only-4l", "gpt2-noLN"])
def test_real_without_network_fails_fast_and_clearly(no_hub, name):
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as err:
        load_model(name, source="real")
    assert time.monotonic() - start < 5
    msg = str(err.value)
    assert "cannot be loaded" in msg and "source='standin'" in msg and "MECHINTERP_WEIGHTS_DIR" in msg
    assert str(models.local.hf_cache_dir()) in msg  # says where it looked


def test_real_check_really_probes_network_quickly(monkeypatch, tmp_path):
    """The unpatched reachability probe returns within its timeout here (no network)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    start = time.monotonic()
    models._hub_reachable(timeout=2.0)
    assert time.monotonic() - start < 3


def test_auto_falls_back_to_standin_with_reason_in_banner(no_hub, capsys):
    model = load_model("attn-only-4l", device="cpu")
    out = capsys.readouterr().out
    assert model.is_standin
    assert "stand-in" in model.display_name
    assert "[stand-in model]" in out and "Why: The real weights of 'attn-only-4l'" in out


def test_env_var_selects_standin(monkeypatch):
    monkeypatch.setenv("MECHINTERP_SOURCE", "standin")
    called = []
    monkeypatch.setattr(models, "_load_real", lambda *a, **k: called.append(1))
    model = load_model("attn-only-4l", device="cpu", quiet=True)
    assert model.is_standin and not called


def test_misspelt_source_env_var_is_an_error(monkeypatch):
    monkeypatch.setenv("MECHINTERP_SOURCE", "stand-in")
    with pytest.raises(ValueError, match="MECHINTERP_SOURCE='stand-in' is not one of"):
        load_model("attn-only-4l", device="cpu", quiet=True)


def test_unknown_model_and_source():
    with pytest.raises(ValueError, match="gpt2-small"):
        load_model("gpt3")
    with pytest.raises(ValueError, match="source must be"):
        load_model("gpt2-small", source="hub")


def test_corrupt_local_weights_give_clear_error(monkeypatch, tmp_path):
    """A truncated local copy gives ModelUnavailableError naming the file, not a bare traceback."""
    local = tmp_path / "weights" / "gpt2"
    local.mkdir(parents=True)
    (local / "config.json").write_text('{"model_type": "gpt2", "n_layer": 12')  # truncated JSON
    (local / "model.safetensors").write_bytes(b"\x00\x01garbage")
    monkeypatch.setenv("MECHINTERP_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=2.0: False)
    with pytest.raises(ModelUnavailableError, match=r"config\.json is not valid JSON.*truncated or corrupt"):
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


def test_every_model_says_what_it_stands_on(gpt2_standin, attn_only_standin, gpt2_noln_standin):
    for model in (gpt2_standin, attn_only_standin, gpt2_noln_standin):
        assert model.is_standin and "(stand-in" in model.display_name
        assert "Stand-in" in model.provenance or "stand-in" in model.provenance


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

    m1 = build_standin("attn-only-4l", device="cpu", cache=False)
    m2 = build_standin("attn-only-4l", device="cpu", cache=False)
    torch.testing.assert_close(m1.W_Q, m2.W_Q)
    m3 = build_standin("attn-only-4l", device="cpu", seed=1, cache=False)
    assert not torch.allclose(m1.W_E, m3.W_E)


def test_device_argument(gpt2_standin):
    assert models.default_device() in ("cpu", "cuda")
    assert gpt2_standin.W_E.device.type == "cpu"


# ---------------------------------------------------------------------------
# The stand-in disk cache
# ---------------------------------------------------------------------------


@pytest.fixture
def cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MECHINTERP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "standins"


def _same_model(a, b, prompt="def add(a, b):\n    return a + b  # 2024"):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert {k: repr(v) for k, v in vars(a.cfg).items()} == {k: repr(v) for k, v in vars(b.cfg).items()}
    toks = a.to_tokens(prompt)
    la, ca = a.run_with_cache(toks)
    lb, cb = b.run_with_cache(toks)
    assert sorted(ca.keys()) == sorted(cb.keys())
    assert torch.equal(la, lb)
    for k in ca.keys():
        assert torch.equal(ca[k], cb[k]), k


@pytest.mark.parametrize("name", ["attn-only-4l", "gpt2-small", "gpt2-noLN"])
def test_cached_standin_is_the_built_one(cache_dir, name):
    """A stand-in read back from the disk cache equals a fresh build: weights, config, hooks,
    activations (the processed-weights path relies on how TransformerLens stores them: this
    test fails if that changes)."""
    fresh = models.build_standin(name, device="cpu")  # builds and writes the entry
    assert len(list(cache_dir.glob(f"{name}-*.safetensors"))) == 1
    again = models.build_standin(name, device="cpu")  # reads it
    _same_model(fresh, again)
    from exercises_lib.models.cache import ALIGN

    # read in place from the memory-mapped file, yet aligned like fresh allocations
    assert [n for n, p in again.named_parameters() if p.data_ptr() % ALIGN] == []
    assert again.standin_placement == json.loads(json.dumps(fresh.standin_placement))
    assert again.provenance == fresh.provenance
    if name == "gpt2-noLN":
        from exercises_lib.models import layernorm_free_reference

        assert again.layernorm_constants == fresh.layernorm_constants
        toks = fresh.to_tokens("The weather station stood on the hill.")
        torch.testing.assert_close(layernorm_free_reference(again)(toks).logits, layernorm_free_reference(fresh)(toks).logits)


def test_entries_align_every_tensor(tmp_path):
    """An entry's file is plain safetensors (its own reader gets every tensor back) in which each
    tensor starts on a 64-byte boundary, whatever the lengths before it; the fillers that keep
    them there are never loaded."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from exercises_lib.models import cache

    tensors = {"b_odd": torch.randn(50257), "w": torch.randn(7, 3), "mask": torch.tensor([True, False, True]),
               "ids": torch.arange(5), "none": torch.empty(0), "scalar": torch.tensor(3.0), "half": torch.randn(4).half()}
    path = tmp_path / "entry.safetensors"
    cache.write_aligned(path, tensors, {"mechinterp": "{}"})
    back = load_file(str(path))
    assert {k: v for k, v in back.items() if not k.startswith("__align__")}.keys() == tensors.keys()
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t), k
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"mechinterp": "{}"}
        mapped = {k: f.get_tensor(k) for k in tensors}
    assert [k for k, t in mapped.items() if t.numel() and t.data_ptr() % cache.ALIGN] == []


def test_cache_key_follows_every_input(cache_dir):
    from exercises_lib.models import cache
    from exercises_lib.tokenizer import code_tokenizer, gpt2_tokenizer

    base = dict(plants=None, placement=None, seed=0, processing=True, tokenizer=gpt2_tokenizer())
    key = cache.standin_key("attn-only-4l", **base)
    assert key == cache.standin_key("attn-only-4l", **base)
    variants = [
        cache.standin_key("gpt2-small", **base),
        cache.standin_key("attn-only-4l", **{**base, "seed": 1}),
        cache.standin_key("attn-only-4l", **{**base, "plants": []}),
        cache.standin_key("attn-only-4l", **{**base, "placement": {"polysemantic": {"layer": 2}}}),
        cache.standin_key("attn-only-4l", **{**base, "processing": False}),
        cache.standin_key("attn-only-4l", **{**base, "tokenizer": code_tokenizer()}),
    ]
    assert len({key, *variants}) == 1 + len(variants)


def test_builder_version_covers_the_builder_and_what_it_imports():
    from exercises_lib.models import cache

    files = {p.relative_to(ROOT / "exercises_lib").as_posix() for p in cache.builder_sources()}
    assert {"standin/__init__.py", "standin/positional.py", "models/_bridges.py", "tokenizer.py", "texts.py"} <= files
    assert "grade.py" not in files  # nothing the build does not run


def test_builder_version_changes_with_a_source(monkeypatch, tmp_path):
    """Copy the package, change one plant's source: the version (hence every key) changes."""
    import shutil

    from exercises_lib.models import cache

    pkg = tmp_path / "exercises_lib"
    shutil.copytree(ROOT / "exercises_lib", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "_PACKAGE_ROOT", pkg)
    before = cache.builder_version.__wrapped__()
    assert before == cache.builder_version()
    with open(pkg / "standin" / "positional.py", "a") as f:
        f.write("\n# edited\n")
    edited = cache.builder_version.__wrapped__()
    (pkg / "data" / "texts" / "fiction.txt").write_text("changed")
    assert len({before, edited, cache.builder_version.__wrapped__()}) == 3


def test_damaged_cache_entry_is_rebuilt(cache_dir):
    first = models.build_standin("attn-only-4l", device="cpu")
    (entry,) = cache_dir.glob("attn-only-4l-*.safetensors")
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    again = models.build_standin("attn-only-4l", device="cpu")
    _same_model(first, again)
    (entry,) = cache_dir.glob("attn-only-4l-*.safetensors")
    assert entry.stat().st_size > 1e8  # written again, whole


def test_cache_can_be_turned_off(monkeypatch, tmp_path):
    monkeypatch.setenv("MECHINTERP_CACHE_DIR", "off")
    assert models.cache.cache_root() is None
    models.build_standin("attn-only-4l", device="cpu", plants=[])
    assert not any(tmp_path.iterdir())


_CONCURRENT = """
import sys, time
from exercises_lib.models import build_standin
m = build_standin("attn-only-4l", device="cpu", plants=[], seed=7)
print(float(m.W_Q.sum()))
"""


def test_concurrent_builders_share_one_complete_entry(cache_dir):
    """Two processes build the same stand-in at once: each gets the same model, and the
    entry left behind is complete (written to a temporary file and renamed into place)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outs)) == 1
    (entry,) = cache_dir.glob("attn-only-4l-*.safetensors")
    assert not list(cache_dir.glob(".tmp-*"))
    from safetensors import safe_open

    with safe_open(str(entry), framework="pt") as f:
        assert len(list(f.keys())) > 10
    reread = subprocess.run([sys.executable, "-c", _CONCURRENT], env=env, capture_output=True, text=True, check=True)
    assert reread.stdout.strip() == outs[0]


def test_cache_stays_under_its_size_limit(cache_dir, monkeypatch):
    """Least recently used first, the chapters' own stand-ins last."""
    from exercises_lib.models import cache

    monkeypatch.setenv("MECHINTERP_CACHE_MAX_GB", "0.5")  # room for two attn-only entries (0.23 GB each)
    models.build_standin("attn-only-4l", device="cpu")  # the default
    models.build_standin("attn-only-4l", device="cpu", seed=1)
    models.build_standin("attn-only-4l", device="cpu", seed=2)
    entries = sorted(cache_dir.glob("attn-only-4l-*.safetensors"), key=lambda p: p.stat().st_mtime)
    assert len(entries) == 2 and cache._is_default(entries[0]) and not cache._is_default(entries[1])


# ---------------------------------------------------------------------------
# Imports point one way
# ---------------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_transformer_lens_internals_only_in_the_model_package():
    """Private TransformerLens modules (a name starting with "_") are imported by the model package only."""
    offenders = []
    for path in sorted((ROOT / "exercises_lib").rglob("*.py")):
        if "models" in path.relative_to(ROOT / "exercises_lib").parts[:1]:
            continue
        for name in _imports(path):
            if name.startswith("transformer_lens") and any(p.startswith("_") for p in name.split(".")[1:]):
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, offenders


def test_model_package_imports_no_chapter_module():
    from exercises_lib.chapters import CHAPTERS

    chapter_modules = {f"exercises_lib.{c.module}" for c in CHAPTERS if getattr(c, "module", None)}
    assert chapter_modules, "the chapters table names the chapters' modules"
    for path in sorted((ROOT / "exercises_lib" / "models").rglob("*.py")):
        bad = {m for m in _imports(path) if any(m == c or m.startswith(c + ".") for c in chapter_modules)}
        assert not bad, f"{path.name} imports chapter modules {bad}"
