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

Each claims test says which claim of the course it tests (the numbering of the
chapters' claims: ``"2.3"``, and ``"tools.N"`` for the tools shared by the
chapters): by ``@pytest.mark.claim("2.3")``, or else by its name
(``test_claim_2_3_...``, ``test_claim3_...`` in chapter 1's file,
``test_across_2_...`` for tools claim 2); :func:`claim_of` reads both. When claims
tests run, their results (test, claim, source, outcome, skip reason) are written
as JSON to ``$CLAIMS_RESULTS`` (default ``_build/claims.json``), from which
``tools/claims_page.py`` builds the book's claims page. Without ``$CLAIMS_RESULTS``,
a run of part of the claims tests writes ``_build/claims-partial.json`` instead,
so that the page never presents a partial run as the whole suite.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS_ENV = "CLAIMS_RESULTS"
DEFAULT_RESULTS = ROOT / "_build" / "claims.json"


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


# ---------------------------------------------------------------------------
# Which claim a test tests, and the results file of the book's claims page
# ---------------------------------------------------------------------------

_CHAPTER_FILE = re.compile(r"test_ch0?(\d+)_")


def claim_of(file_name: str, test_name: str, marker_args: tuple = ()) -> str | None:
    """The claim a claims test tests: its ``claim`` marker, else read from its name.

    ``test_claim_2_3_x`` -> ``"2.3"``; ``test_claim3_x`` in ``test_ch01_*.py`` ->
    ``"1.3"``; ``test_across_2_x`` -> ``"tools.2"``; anything else -> ``None``.
    """
    if marker_args:
        return str(marker_args[0])
    name = test_name.split("[", 1)[0]
    if m := re.match(r"test_claim_(\d+)_(\d+)(_|$)", name):
        return f"{m[1]}.{m[2]}"
    if m := re.match(r"test_across_(\d+)(_|$)", name):
        return f"tools.{m[1]}"
    chapter = _CHAPTER_FILE.match(Path(file_name).name)
    if chapter and (m := re.match(r"test_claim(\d+)(_|$)", name)):
        return f"{int(chapter[1])}.{m[1]}"
    return None


_RESULTS: dict[str, dict] = {}


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr or "")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    record = _RESULTS.get(item.nodeid)
    if record is None:
        marker = item.get_closest_marker("claim")
        doc = (getattr(item.function, "__doc__", None) or "").strip().splitlines()
        callspec = getattr(item, "callspec", None)
        record = _RESULTS[item.nodeid] = {
            "test": item.nodeid,
            "claim": claim_of(item.path.name, item.name, marker.args if marker else ()),
            "source": callspec.params.get("source") if callspec else None,
            "doc": doc[0] if doc else "",
            "outcome": "not run",
            "skip_reason": None,
        }
    if report.when == "setup" and report.skipped:
        record.update(outcome="skipped", skip_reason=_skip_reason(report))
    elif report.failed:
        record["outcome"] = "failed" if report.when == "call" else "error"
    elif report.when == "call":
        if report.skipped:
            record.update(outcome="skipped", skip_reason=_skip_reason(report))
        else:
            record["outcome"] = "passed"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


_DESELECTED: list[str] = []


def pytest_deselected(items):
    _DESELECTED.extend(item.nodeid for item in items if Path(str(item.path)).parent == Path(__file__).parent)


def _whole_suite_ran() -> bool:
    """Whether every claims test was collected and none deselected (``-k``, ``-m``, a single file...)."""
    ran = {Path(r["test"].split("::", 1)[0]).name for r in _RESULTS.values()}
    files = {p.name for p in Path(__file__).parent.glob("test_*.py")}
    return not _DESELECTED and files <= ran


def pytest_sessionfinish(session, exitstatus):
    if not _RESULTS or hasattr(session.config, "workerinput"):  # nothing ran here, or an xdist worker
        return
    if os.environ.get(RESULTS_ENV):
        path = Path(os.environ[RESULTS_ENV])
    elif _whole_suite_ran():
        path = DEFAULT_RESULTS
    else:  # a partial run must not stand for the whole suite on the claims page
        path = DEFAULT_RESULTS.with_name("claims-partial.json")
    payload = {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "pytest_args": list(session.config.invocation_params.args),
        "results": sorted(_RESULTS.values(), key=lambda r: r["test"]),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1) + "\n")
    except OSError as err:  # the tests' outcome must not depend on a writable results folder
        print(f"\nclaims results not written to {path}: {err}")
