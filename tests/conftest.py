"""Shared fixtures of the unit tests: each stand-in is built once per session."""

from __future__ import annotations

import pytest


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache, no weights folder, no source forced, and a hub that must not be
    asked (it answers unreachable); returns the list of times it was asked."""
    from exercises_lib import models

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("MECHINTERP_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("MECHINTERP_SOURCE", raising=False)
    asked = []
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=2.0: asked.append(1) or False)
    return asked


@pytest.fixture(scope="session")
def gpt2_standin():
    from exercises_lib.models import load_model

    return load_model("gpt2-small", source="standin", device="cpu", quiet=True)


@pytest.fixture(scope="session")
def attn_only_standin():
    from exercises_lib.models import load_model

    return load_model("attn-only-4l", source="standin", device="cpu", quiet=True)


@pytest.fixture(scope="session")
def gpt2_noln_standin():
    from exercises_lib.models import load_model

    return load_model("gpt2-noLN", source="standin", device="cpu", quiet=True)


@pytest.fixture(scope="session")
def check_context(request):
    """``check_context(chk)`` -> the keyword arguments a check needs (its model, and the
    Hugging Face twin of the LayerNorm-free model for chapter 5), built once per session."""
    cache: dict = {}

    def model_of(name: str):
        if name not in cache:
            fixture = {"gpt2-small": "gpt2_standin", "attn-only-4l": "attn_only_standin",
                       "gpt2-noLN": "gpt2_noln_standin"}[name]
            cache[name] = request.getfixturevalue(fixture)
        return cache[name]

    def build(chk) -> dict:
        ctx = {}
        if "model" in chk.needs:
            ctx["model"] = model_of(chk.model)
        if "hf_model" in chk.needs:
            if ("hf", chk.model) not in cache:
                from exercises_lib.layernorm import layernorm_free_reference

                cache[("hf", chk.model)] = layernorm_free_reference(model_of(chk.model))
            ctx["hf_model"] = cache[("hf", chk.model)]
        unknown = set(chk.needs) - {"model", "hf_model"}
        assert not unknown, f"tests do not know how to provide {unknown} for {chk.name}"
        return ctx

    return build


# ---------------------------------------------------------------------------
# Long subprocess jobs run beside the suite (tests/_background.py)
# ---------------------------------------------------------------------------


def pytest_collection_modifyitems(session, config, items):
    """Start the background jobs of the selected tests: those of modules marked ``BACKGROUND_FIRST`` (the
    longest single jobs) first, then in the order the tests come."""
    if config.option.collectonly:
        return
    import _background

    def module_of(item):
        return getattr(item, "module", None)

    ordered = sorted(items, key=lambda item: not getattr(module_of(item), "BACKGROUND_FIRST", False))
    for item in ordered:
        jobs_for = getattr(module_of(item), "background_jobs_for", None)
        if jobs_for is not None:
            _background.start(jobs_for(item))


def pytest_sessionfinish(session, exitstatus):
    import _background

    _background.stop()
