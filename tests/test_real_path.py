"""The real-model path, run offline on the stand-ins exported in their real models' hub layouts.

``load_model(name, source="real")`` is what Colab and the instructors' GPU runs
execute. Here it loads files written exactly as the hub (or a Hugging Face
cache) holds the real models, with the network unreachable, and must give the
stand-in back: same weights after processing, same logits, same hook names,
``is_standin`` false and no stand-in banner. Every kind of bad local copy gives
one clear :class:`ModelUnavailableError` naming the file and the fix, and
``source="auto"`` then falls back to the stand-in with that reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _exports import standin_exports
from exercises_lib import models
from exercises_lib.models import MODELS, ModelUnavailableError, load_model

PROMPTS = ["Hello world, hello again. The cat sat on the mat.", "def f(x):\n    return x + 1  # 2024"]


@pytest.fixture(scope="module")
def exports() -> Path:
    return standin_exports()


def assert_same_model(real, standin):
    assert not real.is_standin and real.display_name == MODELS[real.course_name]["display"]
    assert "Real weights of" in real.provenance
    tokens = real.to_tokens(PROMPTS)
    assert torch.equal(tokens, standin.to_tokens(PROMPTS))
    logits, cache = real.run_with_cache(tokens)
    ref_logits, ref_cache = standin.run_with_cache(tokens)
    assert sorted(cache.keys()) == sorted(ref_cache.keys())
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    a, b = real.state_dict(), standin.state_dict()
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5, msg=k)


def test_transformer_lens_legacy_loader_reads_the_attn_only_export(exports, monkeypatch):
    """TransformerLens's own ``boot_tl_legacy``, its hub calls answered from the export, loads
    the same weights as the course's offline loader: the export is in the format it reads."""
    import huggingface_hub
    from transformer_lens.model_bridge import TransformerBridge

    import transformer_lens.model_bridge.sources  # noqa: F401
    from exercises_lib.tokenizer import gpt2_tokenizer

    hub_id = MODELS["attn-only-4l"]["hub_id"]
    folder = exports / "weights" / hub_id

    class Api:
        def list_repo_files(self, repo_id):
            assert repo_id == hub_id
            return sorted(p.name for p in folder.iterdir())

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename, **kw: str(folder / filename))
    theirs = TransformerBridge.boot_tl_legacy(hub_id, tokenizer=gpt2_tokenizer(), device="cpu")
    monkeypatch.setenv("MECHINTERP_WEIGHTS_DIR", str(exports / "weights"))
    ours = models._load_real("attn-only-4l", "cpu")
    a, b = theirs.state_dict(), ours.state_dict()
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_gpt2_export_is_what_transformers_reads(exports):
    """Plain ``transformers`` loads the GPT-2 export with nothing missing (the causal-mask
    buffers are the only keys it does not use)."""
    from transformers import GPT2LMHeadModel

    hf, info = GPT2LMHeadModel.from_pretrained(str(exports / "weights" / "gpt2"), output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert hf.lm_head.weight is hf.transformer.wte.weight


# ---------------------------------------------------------------------------
# Bad local copies
# ---------------------------------------------------------------------------


def _copy(exports: Path, name: str, dst_root: Path) -> Path:
    """A copy of one model folder (files hard-linked: replace a file before changing it)."""
    hub_id = MODELS[name]["hub_id"]
    dst = dst_root / hub_id
    shutil.copytree(exports / "weights" / hub_id, dst, copy_function=os.link)
    return dst


def _replace(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def _zero_second_half(path: Path) -> None:
    data = bytearray(path.read_bytes())
    half = len(data) // 2
    data[half:] = bytes(len(data) - half)
    _replace(path, bytes(data))


def _fails(name, match: str, limit_s: float = 20.0):
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError, match=match) as err:
        load_model(name, source="real", device="cpu")
    assert time.monotonic() - start < limit_s
    msg = str(err.value)
    assert "To fix it" in msg or "Download" in msg, msg
    assert "weights_only=False" not in msg
    return msg


def test_truncated_safetensors(exports, no_hub, tmp_path, monkeypatch, capsys):
    folder = _copy(exports, "gpt2-small", tmp_path / "w")
    f = folder / "model.safetensors"
    _replace(f, f.read_bytes()[: f.stat().st_size // 2])
    monkeypatch.setenv("MECHINTERP_WEIGHTS_DIR", str(tmp_path / "w"))
    msg = _fails("gpt2-small", r"is truncated: its header describes", limit_s=5)
    assert str(f) in msg and "replace the folder" in msg
    model = load_model("gpt2-small", device="cpu")  # auto: the stand-in, and why
    out = capsys.readouterr().out
    assert model.is_standin and "[stand-in model]" in out and "Why:" in out and str(f) in out


def test_garbage_safetensors_header(exports, no_hub, tmp_path, monkeypatch):
    folder = _copy(exports, "gpt2-small", tmp_path / "w")
    f = folder / "model.safetensors"
    data = f.read_bytes()
    monkeypatch.setenv("MECHINTERP_WEIGHTS_DIR", str(tmp_path / "w"))
    _replace(f, b"\xff" * 8 + data[8:])
    _fails("gpt2-small", "does not start with a safetensors header", limit_s=5)
    _replace(f, data[:8] + b"#" * 40 + data[48:])
    _fails("gpt2-small", "garbled safetensors header", limit_s=5)


def test_pickle_weights_are_refused(exports, no_hub, tmp_path, monkeypatch):
    folder = _copy(exports, "gpt2-small", tmp_path / "w")
    (folder / "model.safetensors").unlink()
    torch.save({"wte.weight": torch.zeros(3)}, folder / "pytorch_model.bin")
    monkeypatch.setenv("MECHINTERP_WEIGHTS_DIR", str(tmp_path / "w"))
    msg = _fails("gpt2-small", r"pytorch_model\.bin, a pickle file", limit_s=5)
    assert "safetensors only" in msg


def test_second_half_zeros_in_a_plain_folder(exports, no_hub, tmp_path, monkeypatch):
    folder = _copy(exports, "gpt2-small", tmp_path / "w")
    _zero_second_half(folder / "model.safetensors")
    monkeypatch.setenv("MECHINTERP_WEIGHTS_DIR", str(tmp_path / "w"))
    _fails("gpt2-small", "zero-filled from some point on")


def test_second_half_zeros_against_a_manifest(exports, no_hub, tmp_path, monkeypatch):
    from exercises_lib.models.manifest import main as manifest_main

    folder = _copy(exports, "attn-only-4l", tmp_path / "w")
    assert manifest_main([str(folder)]) == 0
    assert manifest_main(["--check", str(folder)]) == 0
    _zero_second_half(folder / "model_final.pth")
    assert manifest_main(["--check", str(folder)]) == 1
    monkeypatch.setenv("MECHINTERP_WEIGHTS_DIR", str(tmp_path / "w"))
    _fails("attn-only-4l", r"does not match the sha256 in mechinterp-manifest\.json", limit_s=10)


def test_second_half_zeros_in_the_hf_cache(exports, no_hub, tmp_path, monkeypatch):
    """The cache names a large file's blob by its sha256: a damaged blob is caught."""
    from exercises_lib.models.export import folder_to_hf_cache

    hub_id = MODELS["gpt2-small"]["hub_id"]
    snap = folder_to_hf_cache(_copy(exports, "gpt2-small", tmp_path / "w"), tmp_path / "hub", hub_id)
    _zero_second_half(Path(os.path.realpath(snap / "model.safetensors")))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    msg = _fails("gpt2-small", "does not match the sha256 the hub gave it", limit_s=10)
    assert "delete" in msg and "models--gpt2" in msg


def test_small_cached_file_checked_against_its_git_id(exports, no_hub, tmp_path, monkeypatch):
    from exercises_lib.models.export import folder_to_hf_cache

    snap = folder_to_hf_cache(_copy(exports, "attn-only-4l", tmp_path / "w"), tmp_path / "hub", MODELS["attn-only-4l"]["hub_id"])
    blob = Path(os.path.realpath(snap / "config.json"))
    _replace(blob, blob.read_bytes().replace(b'"n_layers": 4', b'"n_layers":  4'))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    _fails("attn-only-4l", "does not match its git object id", limit_s=5)


def test_layernorm_free_folder_holding_ordinary_gpt2(exports, no_hub, tmp_path, monkeypatch):
    hub_id = MODELS["gpt2-noLN"]["hub_id"]
    shutil.copytree(exports / "weights" / "gpt2", tmp_path / "w" / hub_id, copy_function=os.link)
    monkeypatch.setenv("MECHINTERP_WEIGHTS_DIR", str(tmp_path / "w"))
    _fails("gpt2-noLN", r"layer_norm_epsilon=1e-05: this folder holds a GPT-2 with working LayerNorms", limit_s=5)


def test_config_of_another_model(exports, no_hub, tmp_path, monkeypatch):
    folder = _copy(exports, "gpt2-small", tmp_path / "w")
    cfg = json.loads((folder / "config.json").read_text())
    _replace(folder / "config.json", json.dumps({**cfg, "n_layer": 6}).encode())
    monkeypatch.setenv("MECHINTERP_WEIGHTS_DIR", str(tmp_path / "w"))
    _fails("gpt2-small", r"describes another model: n_layer=6 \(expected 12\)", limit_s=5)


def test_truncated_legacy_checkpoint(exports, no_hub, tmp_path, monkeypatch):
    folder = _copy(exports, "attn-only-4l", tmp_path / "w")
    f = folder / "model_final.pth"
    _replace(f, f.read_bytes()[: f.stat().st_size // 2])
    monkeypatch.setenv("MECHINTERP_WEIGHTS_DIR", str(tmp_path / "w"))
    msg = _fails("attn-only-4l", "cannot be read as a weights-only checkpoint", limit_s=10)
    assert str(f) in msg


def test_legacy_checkpoint_needs_its_tokenizer(exports, no_hub, tmp_path, monkeypatch):
    folder = _copy(exports, "attn-only-4l", tmp_path / "w")
    cfg = json.loads((folder / "config.json").read_text())
    real_tok = MODELS["attn-only-4l"]["tokenizer_id"]
    _replace(folder / "config.json", json.dumps({**cfg, "tokenizer_name": real_tok}).encode())
    monkeypatch.setenv("MECHINTERP_WEIGHTS_DIR", str(tmp_path / "w"))
    with pytest.raises(ModelUnavailableError, match=f"needs the tokenizer {real_tok}") as err:
        load_model("attn-only-4l", source="real", device="cpu")
    assert f"$MECHINTERP_WEIGHTS_DIR/{real_tok}/" in str(err.value)


def test_incomplete_cache_offline(exports, no_hub, tmp_path, monkeypatch):
    """Only config.json in the cache (as after ``AutoConfig.from_pretrained``), no network."""
    from exercises_lib.models.export import folder_to_hf_cache

    folder = tmp_path / "w" / "gpt2"
    folder.mkdir(parents=True)
    shutil.copyfile(exports / "weights" / "gpt2" / "config.json", folder / "config.json")
    folder_to_hf_cache(folder, tmp_path / "hub", "gpt2")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    _fails("gpt2-small", r"model\.safetensors is missing", limit_s=5)


# ---------------------------------------------------------------------------
# No network at all, in a fresh process
# ---------------------------------------------------------------------------

_OFFLINE = r"""
import contextlib, io, json, socket, sys, time
attempts = []
def blocked(*args, **kwargs):
    attempts.append(repr(args[:2]))
    raise OSError("network unreachable (blocked by the test)")
socket.socket.connect = blocked
socket.socket.connect_ex = blocked
socket.create_connection = blocked
socket.getaddrinfo = blocked
import torch
t0 = time.perf_counter()
import transformer_lens, transformer_lens.model_bridge.sources
from exercises_lib.models import load_model
t1 = time.perf_counter()
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    real = load_model(sys.argv[1], source="auto", device="cpu")
t2 = time.perf_counter()
standin = load_model(sys.argv[1], source="standin", device="cpu", quiet=True)
prompts = json.loads(sys.argv[2])
tokens = real.to_tokens(prompts)
logits, cache = real.run_with_cache(tokens)
ref_logits, ref_cache = standin.run_with_cache(tokens)
a, b = real.state_dict(), standin.state_dict()
print(json.dumps({
    "import_s": t1 - t0, "load_s": t2 - t1, "attempts": attempts, "printed": printed.getvalue(),
    "is_standin": real.is_standin, "display_name": real.display_name, "provenance": real.provenance,
    "same_tokens": bool(torch.equal(tokens, standin.to_tokens(prompts))),
    "same_hooks": sorted(cache.keys()) == sorted(ref_cache.keys()),
    "logit_diff": float((logits - ref_logits).abs().max()),
    "logit_scale": float(ref_logits.abs().max()),
    "same_weight_names": sorted(a) == sorted(b),
    "weight_diff": max(float((a[k] - b[k]).abs().max()) for k in a),
}))
"""


@pytest.mark.parametrize("where", ["weights-dir", "hf-cache"])
@pytest.mark.parametrize("name", list(MODELS))
def test_real_path_loads_the_export_offline(exports, tmp_path, name, where):
    """In a fresh process with every socket call failing and ``HF_HUB_OFFLINE`` unset, the
    default source loads the export through the real path: no network attempt, no banner,
    the stand-in's weights after processing, logits and hook names; timed after
    TransformerLens is imported."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MECHINTERP_SOURCE",
                                                            "MECHINTERP_WEIGHTS_DIR", "HF_HUB_CACHE", "HF_HOME")}
    env["HF_HOME"] = str(tmp_path / "hf")
    if where == "weights-dir":
        env["MECHINTERP_WEIGHTS_DIR"] = str(exports / "weights")
    else:
        env["HF_HUB_CACHE"] = str(exports / "hf-cache")
    out = subprocess.run([sys.executable, "-c", _OFFLINE, name, json.dumps(PROMPTS)], env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{name} from {where}: loaded in {r['load_s']:.1f} s after importing TransformerLens")
    assert r["attempts"] == [] and not r["is_standin"] and "[stand-in model]" not in r["printed"]
    assert r["display_name"] == MODELS[name]["display"] and r["provenance"].startswith(f"Real weights of {MODELS[name]['hub_id']}")
    assert r["same_tokens"] and r["same_hooks"] and r["same_weight_names"]
    # float32 rounding, relative to the logits' size (the LayerNorm-free model's reach ~2e4, one ulp ~2e-3 there)
    assert r["logit_diff"] < 1e-4 + 1e-6 * r["logit_scale"] and r["weight_diff"] < 1e-5


# ---------------------------------------------------------------------------
# attn-only-4l with a tokenizer that is not GPT-2's
# ---------------------------------------------------------------------------


def test_attn_only_with_the_code_tokenizer_through_the_real_path(exports, no_hub, monkeypatch):
    from exercises_lib.models import build_standin
    from exercises_lib.tokenizer import CODE_TOKENIZER_ID, code_tokenizer

    folder = exports / "weights-code-tokenizer"
    assert json.loads((folder / MODELS["attn-only-4l"]["hub_id"] / "config.json").read_text())["tokenizer_name"] == CODE_TOKENIZER_ID
    assert (folder / CODE_TOKENIZER_ID / "tokenizer.json").is_file()  # exported beside it, read from there
    monkeypatch.setenv("MECHINTERP_WEIGHTS_DIR", str(folder))
    real = load_model("attn-only-4l", source="real", device="cpu")
    assert real.cfg.d_vocab == 48262 and len(real.tokenizer) == 48262
    indent = real.to_tokens("x\n        y", prepend_bos=False)[0]
    assert len(indent) == 3  # "\n" + 8 spaces is one token
    standin = build_standin("attn-only-4l", tokenizer=code_tokenizer(), device="cpu")
    assert_same_model(real, standin)
