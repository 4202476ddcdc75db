"""The check harness, and every registered check: it passes the reference and rejects each
typical mistake (and a few hand-written wrong answers) with a message that names it."""

import functools

import pytest
import torch

from exercises_lib import duality as D
from exercises_lib.checks import CHECKS, CheckFailed, check, compare, course_function, load_check_modules, register_check, run_check


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


def test_check_returns_the_function_later_cells_use(monkeypatch, capsys):
    monkeypatch.delenv("MECHINTERP_CHECKS_RAISE", raising=False)
    x = torch.randn(2, 3)
    good = check("_test.softmax", _ref)
    assert good.passed and good.submitted is _ref and good.function is _ref and "your softmax" in capsys.readouterr().out

    def wrong(x):
        return x

    bad = check("_test.softmax", wrong)
    assert not bad and bad.submitted is wrong and bad.function is _ref  # no library module: the check's reference
    assert "the course's softmax" in capsys.readouterr().out
    torch.testing.assert_close(bad(x), _ref(x))
    again = check("_test.softmax", bad)  # re-running the cell checks the student's function, not the reference
    assert not again and again.submitted is wrong
    assert isinstance(functools.partial(bad, x)(), torch.Tensor) and bad.__name__ == "_ref"


load_check_modules()
NAMES = sorted(n for n in CHECKS if not n.startswith("_test"))
MISTAKES = [(n, d) for n in NAMES for d in CHECKS[n].mistakes]


@pytest.mark.parametrize("name", NAMES)
def test_reference_passes_and_at_least_two_mistakes_are_named(name, check_context):
    """Each chapter's checks accept the reference (on the stand-in of their model)."""
    chk = CHECKS[name]
    assert len(chk.mistakes) >= 2, name
    result = run_check(name, chk.reference, **check_context(chk))
    assert result.passed, f"{name}: {result.message}"
    assert course_function(name).__name__ == name.rsplit(".", 1)[1]  # the course's function: exercises_lib.<module>.<fn>


@pytest.mark.parametrize("name, mistake", MISTAKES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(MISTAKES)])
def test_each_typical_mistake_fails_and_is_named(name, mistake, check_context):
    result = run_check(name, CHECKS[name].mistakes[mistake], **check_context(CHECKS[name]))
    assert not result.passed, f"{name}: the mistake {mistake!r} passed"
    assert mistake in result.message, result.message


def _hook_in_place_not_renormalised(pattern, hook, head, dest_positions):
    pos = torch.as_tensor(dest_positions).expand(pattern.shape[0])
    pattern[torch.arange(pattern.shape[0]), head, pos, 0] = 1.0  # forgets to zero the rest
    return pattern


def _hook_first_position_for_all(pattern, hook, head, dest_positions):
    d = int(torch.as_tensor(dest_positions).reshape(-1)[0])
    pattern[:, head, d] = 0.0
    pattern[:, head, d, 0] = 1.0
    return pattern


# Wrong answers as a student might write them, besides the registered mistakes: (check, answer, words in the message)
WRONG = [
    ("polysemantic.bos_ablation_hook", _hook_in_place_not_renormalised, "not renormalised"),
    ("polysemantic.bos_ablation_hook", _hook_first_position_for_all, "not yet"),
    ("duality.logit_diff_directions", lambda model, correct, incorrect: model.W_U[:, correct] - model.W_U[:, incorrect], "shape"),
    ("duality.logit_lens_logit_diff",
     lambda cache, directions: (cache.accumulated_resid(layer=-1, pos_slice=-1) * directions[None]).sum(-1), "shape"),
    ("duality.patch_resid_pre", lambda model, target_tokens, source_cache, layer, pos, metric:
        D.patch_resid_pre(model, target_tokens, source_cache, 3, pos, metric), "hidden test case"),
    ("layernorm.max_logit_difference", None, "hf_model"),  # called without the Hugging Face model
]


@pytest.mark.parametrize("name, wrong, words", WRONG, ids=[f"{n}-{w}" for n, _, w in WRONG])
def test_hand_written_wrong_answers_are_caught(name, wrong, words, check_context, monkeypatch, capsys):
    monkeypatch.delenv("MECHINTERP_CHECKS_RAISE", raising=False)
    ctx = check_context(CHECKS[name])
    if wrong is None:
        ctx.pop("hf_model")
        wrong = CHECKS[name].reference
    result = check(name, wrong, **ctx)
    assert not result.passed and words in capsys.readouterr().out
