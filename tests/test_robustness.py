"""Every check, fed bad answers, fails with a message: never a pass, never a harness crash.

For each registered check and each kind of bad answer (None, a wrong shape, a
wrong dtype, a tensor on another device (meta), NaN, inf, an exception raised
by the student, and an answer that is right on the visible example but wrong on
the hidden cases), ``run_check`` must return a failed result whose message is
one paragraph of text without a traceback.
"""

from __future__ import annotations

import math

import pytest
import torch

from exercises_lib.checks import CHECKS, load_check_modules, run_check

load_check_modules()
CHECK_NAMES = sorted(n for n in CHECKS if not n.startswith("_test"))
BAD_KINDS = ["none", "wrong_shape", "wrong_dtype", "meta_device", "nan", "inf", "exception", "memorised_visible"]


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def _corrupt(out, kind):
    """A bad version of a correct output, or None when the kind does not apply."""
    t = _first_tensor(out)
    if kind == "none":
        return None
    if t is None:  # non-tensor outputs: a value of the wrong type stands for all tensor kinds
        return "not the answer" if kind in ("wrong_shape", "wrong_dtype") else _SKIP
    if kind == "wrong_shape":
        bad = t.unsqueeze(0)
    elif kind == "wrong_dtype":
        bad = t.to(torch.int64) if t.dtype.is_floating_point else t.to(torch.float32) + 0.5
    elif kind == "meta_device":
        bad = t.to("meta")
    elif kind in ("nan", "inf"):
        if not t.dtype.is_floating_point or t.numel() == 0:
            return _SKIP
        bad = t.contiguous().clone()
        bad.view(-1)[t.numel() // 2] = math.nan if kind == "nan" else math.inf
    else:
        raise ValueError(kind)
    if isinstance(out, torch.Tensor):
        return bad
    return type(out)([bad, *out[1:]])


_SKIP = object()


def _case_index(kw: dict, cases: list[dict]) -> int:
    """Which case run_check is calling with (it passes each case's values as **kwargs)."""
    for i, case in enumerate(cases):
        if case.keys() == kw.keys() and all(case[k] is kw[k] for k in kw):
            return i
    raise AssertionError("unknown case")


@pytest.mark.parametrize("name", CHECK_NAMES)
def test_check_rejects_bad_answers(name, check_context, monkeypatch):
    chk = CHECKS[name]
    ctx = check_context(chk)
    with torch.no_grad():  # as run_check builds them
        cases = chk.cases(**ctx)
    expected = [chk.reference(**kw) for kw in cases]
    monkeypatch.setattr(chk, "cases", lambda **_: cases)  # the same objects on every call
    for kind in BAD_KINDS:
        if kind == "exception":
            def student(**kw):
                raise RuntimeError("student bug")
        elif kind == "memorised_visible":
            if len(cases) < 2:
                pytest.fail(f"{name} has no hidden test case: an answer right only on the visible example would pass")

            def student(**kw):
                return expected[0]
        else:
            bad = [_corrupt(out, kind) for out in expected]
            if any(b is _SKIP for b in bad):
                continue

            def student(_bad=bad, **kw):
                return _bad[_case_index(kw, cases)]
        result = run_check(name, student, **ctx)
        assert not result.passed, f"{name} passed a bad answer ({kind})"
        assert result.message and "Traceback" not in result.message, (kind, result.message)
        assert "The check itself failed" not in result.message, (kind, result.message)
        if kind == "exception":
            assert "student bug" in result.message



def test_check_inputs_do_not_track_gradients(check_context):
    """Inputs a check builds from the model's weights reach the learner's function without autograd
    (a ``float()`` of one would otherwise warn), even when the caller has gradients on."""
    chk = CHECKS["contextual.classify_heads"]
    seen = []

    def student(**kw):
        seen.extend(t.requires_grad for t in kw.values() if isinstance(t, torch.Tensor))
        return chk.reference(**kw)

    with torch.enable_grad():
        assert run_check(chk.name, student, **check_context(chk)).passed
    assert seen and not any(seen), seen
