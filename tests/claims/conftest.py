"""Claims tests: each chapter's claims, stated as assertions, on three sources.

Every claims test takes the ``source`` fixture, parameterised over

``"standin"``
    the offline stand-in (always runs, in CI): expectations are what was
    planted, or what the stand-in shows, measured from behaviour (never read
    from the plant);
``"real-layer0"``
    GPT-2 small's real layer 0 and W_pos, shipped with the course (always
    runs, in CI): only the claims that the real weights decide, asserted with
    the write-up's figures and the tolerances stated in each test. The model is
    the GPT-2 small stand-in, whose layer 0 and W_pos are the real ones; where a
    claim also needs token embeddings, the test says which surrogate it used
    (and the robustness tests in ``tests/test_real_layer0.py`` repeat it over
    many). Only tests marked ``@pytest.mark.real_layer0`` run here; the others
    are skipped with the reason (and the marked ones are skipped as
    ``"standin"``: the stand-in is the same model);
``"real"``
    the real model (skipped, with the reason, when its weights cannot be
    loaded here; instructors' GPU runs execute it).

Use ``course_model(name)`` to get the model: it is loaded once per session.
"""

from __future__ import annotations

import functools

import pytest


@functools.lru_cache(maxsize=None)
def _load(name: str, source: str):
    from exercises_lib.models import default_device, load_model

    return load_model(name, source=source, device=default_device(), quiet=True)


@pytest.fixture(params=["standin", "real-layer0", "real"])
def source(request):
    return request.param


def real_layer0_model(name: str):
    """The model whose real layer 0 the ``"real-layer0"`` source tests: the GPT-2 small stand-in."""
    from exercises_lib.standin import REAL_LAYER0_MODELS

    if name not in REAL_LAYER0_MODELS:
        pytest.skip(f"{name} has no real layer 0 in the course (only {list(REAL_LAYER0_MODELS)})")
    model = _load(name, "standin")
    assert model.weight_sources["blocks.0.attn.W_Q"]["source"] == "real", "the stand-in's layer 0 is not the real one"
    return model


@pytest.fixture
def course_model(source, request):
    """``course_model(name)`` -> the model of that name from this test's source."""
    from exercises_lib.models import ModelUnavailableError, real_weights_available

    def get(name: str):
        if source == "standin" and request.node.get_closest_marker("real_layer0") is not None:
            pytest.skip("decided by GPT-2 small's real layer 0, which the stand-in contains: tested as real-layer0")
        if source == "real-layer0":
            if request.node.get_closest_marker("real_layer0") is None:
                pytest.skip("this claim is not decided by GPT-2 small's real layer 0 alone (it needs weights the "
                            "course does not have: token embeddings, MLP weights or later layers)")
            return real_layer0_model(name)
        if source == "real" and not real_weights_available(name):
            pytest.skip(f"real weights of {name} cannot be loaded here (no network, no local copy)")
        try:
            return _load(name, source)
        except ModelUnavailableError as err:
            pytest.skip(str(err))

    return get


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "real_layer0: a claim (or part of one) that GPT-2 small's real layer 0 decides; runs on that source too"
    )
