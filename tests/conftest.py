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
