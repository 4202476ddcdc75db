"""The check harness: passes the reference, rejects typical mistakes with clear messages."""

import pytest
import torch

from exercises_lib.checks import CHECKS, CheckFailed, check, compare, register_check, run_check


def _ref(x):
    return x.softmax(dim=-1)


def _cases():
    torch.manual_seed(0)
    return [{"x": torch.randn(3, 5)}, {"x": torch.randn(2, 4, 7)}]


register_check(
    "_test.softmax",
    reference=_ref,
    cases=_cases,
    hint="softmax over the last dimension.",
    mistakes={"softmax over the wrong dimension": lambda x: x.softmax(dim=0)},
)


def test_reference_passes(capsys, monkeypatch):
    monkeypatch.delenv("MECHINTERP_CHECKS_RAISE", raising=False)
    assert check("_test.softmax", _ref)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "student, expected_words",
    [
        (lambda x: None, "returned None"),
        (lambda x: x.softmax(-1).T, "shape"),
        (lambda x: x.softmax(-1).to(torch.int64), "dtype"),
        (lambda x: torch.full_like(x, float("nan")), "NaN"),
        (lambda x: x.softmax(-1) + 0.01, "largest error is at index"),
        (lambda x: x.softmax(dim=0), "softmax over the wrong dimension"),
        (lambda x: 1 / 0, "ZeroDivisionError"),
        (lambda x: x.softmax(-1).to("meta"), "meta device"),
        (lambda x: [1, 2], "expected a torch.Tensor"),
        # right on the visible 2-D example, wrong on the hidden 3-D one:
        (lambda x: x.softmax(dim=1), "hidden test case 1"),
    ],
)
def test_wrong_answers_get_a_message_and_fail(student, expected_words, monkeypatch):
    monkeypatch.delenv("MECHINTERP_CHECKS_RAISE", raising=False)
    result = run_check("_test.softmax", student)
    assert not result.passed
    assert expected_words in result.message, result.message
    assert "Traceback" not in result.message


def test_student_exception_is_shown_as_theirs():
    def student(x):
        raise ValueError("my bad")

    result = run_check("_test.softmax", student)
    assert "your function raised ValueError: my bad" in result.message
    assert "in student" in result.message


def test_not_implemented_is_called_not_written():
    def student(x):
        raise NotImplementedError("fill me in")

    assert "not written yet" in run_check("_test.softmax", student).message


def test_raise_mode_raises_after_printing(monkeypatch, capsys):
    monkeypatch.setenv("MECHINTERP_CHECKS_RAISE", "1")
    with pytest.raises(CheckFailed):
        check("_test.softmax", lambda x: None)
    assert "returned None" in capsys.readouterr().out


def test_unknown_check_and_non_callable(monkeypatch):
    monkeypatch.delenv("MECHINTERP_CHECKS_RAISE", raising=False)
    assert "no check called" in run_check("nope", _ref).message
    assert "Pass your function itself" in run_check("_test.softmax", torch.zeros(3)).message


def test_compare_reports_index_and_size():
    a = torch.zeros(2, 3)
    b = a.clone()
    b[1, 2] = 1.0
    msg = compare(a, b)
    assert "(1, 2)" in msg and "off by -1" in msg
    assert compare(a, a) is None


def test_every_registered_check_passes_its_reference(check_context):
    """Each chapter's checks accept the reference (on the stand-in of their model)."""
    from exercises_lib.checks import _load_check_modules

    _load_check_modules()
    for name, chk in CHECKS.items():
        if name.startswith("_test"):
            continue
        ctx = check_context(chk)
        result = run_check(name, chk.reference, **ctx)
        assert result.passed, f"{name}: {result.message}"
