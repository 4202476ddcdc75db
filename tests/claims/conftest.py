"""Claims tests: each chapter's claims, stated as assertions, on two kinds of model.

Every claims test takes the ``source`` fixture, parameterised over
``"standin"`` (always runs, in CI) and ``"real"`` (skipped, with the reason,
when the real weights cannot be loaded here; instructors' GPU runs execute it).
Use ``course_model(name, source)`` to get the model: it is loaded once per
session.

On the real model, expectations come from the source write-ups' figures with
the tolerances stated in each test; on the stand-in, from what was planted,
measured from behaviour (never read from the plant).
"""

from __future__ import annotations

import functools

import pytest


@functools.lru_cache(maxsize=None)
def _load(name: str, source: str):
    from exercises_lib.models import default_device, load_model

    return load_model(name, source=source, device=default_device(), quiet=True)


@pytest.fixture(params=["standin", "real"])
def source(request):
    return request.param


@pytest.fixture
def course_model(source):
    """``course_model(name)`` -> the model of that name from this test's source."""
    from exercises_lib.models import ModelUnavailableError, real_weights_available

    def get(name: str):
        if source == "real" and not real_weights_available(name):
            pytest.skip(f"real weights of {name} cannot be loaded here (no network, no local copy)")
        try:
            return _load(name, source)
        except ModelUnavailableError as err:
            pytest.skip(str(err))

    return get
