"""Shared fixtures of the unit tests: each stand-in is built once per session."""

from __future__ import annotations

import pytest


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
