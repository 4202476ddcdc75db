"""The check harness: ``check(name, student_fn, **context)``.

A check recomputes the answer with the course's reference implementation on
the same model and inputs, compares, and prints one line when the student's
function is right, or a short paragraph saying what differs (type, shape,
dtype, device, NaN, which index and by how much, and, when the answer matches
a *typical mistake*, which one). It never shows the solution: the check's hint
is shown only on request, after a failed attempt (``f.hint()`` on the result,
``hint("module.f")``, or the collapsed "Hint" under the verdict in a notebook).
It never shows a traceback of its own; an exception raised by the student's
function is reported as theirs.

The student's function runs on copies of its tensor inputs, and inside a guard
of the model (:mod:`exercises_lib.checks._guard`): a weight edited in place, a
parameter replaced or a hook left attached is reported as the student's
mistake and undone, so later cells run on the intact model.

Checks are registered by the chapters' modules in this package
(``checks/duplicate_tokens.py``...) with :func:`register_check`. A check runs
the student's function on several inputs, some of them not shown in the
notebook, so an answer that is right only on the visible example fails.

:func:`check` returns a :class:`CheckResult` that is also the function later
cells should use: the student's when it passed, the course's reference when it
did not (or was not written yet), so a skipped or wrong exercise never breaks
the cells after it. Notebooks write ``f = check("module.f", f, model=model)``;
running that cell again re-checks the student's function, never the reference.

Set ``MECHINTERP_CHECKS_RAISE=1`` (the test suite and the book build do) to
make a failed check raise :class:`CheckFailed` after printing, so a solution
notebook with a wrong answer fails nbval.

Taught in: chapter 0 (setup); every exercise uses it.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import traceback
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from . import _guard

__all__ = [
    "Check", "CheckFailed", "CheckResult", "CHECKS", "register_check", "check", "compare",
    "course_function", "hint", "load_check_modules", "random_pattern", "run_check", "run_with_cache_once",
]


class _Printed(str):
    """Text already printed: a notebook shows nothing more when it is a cell's value."""

    def _ipython_display_(self) -> None:
        pass


class CheckFailed(AssertionError):
    """Raised by :func:`check` after a failure when MECHINTERP_CHECKS_RAISE is set."""


@dataclass
class CheckResult:
    """The verdict of a check, and the function later cells use.

    Attributes:
        name: the check's name, ``"<module>.<function>"``.
        passed: whether the student's function passed.
        message: what the check printed after the verdict.
        submitted: the student's function (None when no function was given).
        function: ``submitted`` when it passed, else the course's reference
            (None when the check does not exist).

    Calling the result calls ``function``, so ``f = check("m.f", f)`` keeps
    every later ``f(...)`` working, with the student's code when it is right.
    """

    name: str
    passed: bool
    message: str
    submitted: Callable | None = None
    function: Callable | None = None
    attempted: bool = False  # the student's function ran (and failed): a hint may be shown

    def __bool__(self) -> bool:
        return self.passed

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.function is None:
            raise RuntimeError(f"check {self.name!r} has no function to run: {self.message}")
        return self.function(*args, **kwargs)

    @property
    def __name__(self) -> str:  # e.g. for functools.partial and hook registries
        return getattr(self.function, "__name__", self.name.rsplit(".", 1)[-1])

    def __repr__(self) -> str:
        used = "yours" if self.passed else "the course's reference"
        return f"CheckResult({self.name!r}, passed={self.passed}; calls {used})"

    def _ipython_display_(self) -> None:
        """Show nothing: check() has already printed its verdict."""

    def hint(self) -> str:
        """Print (and return) the check's hint: only after a failed attempt."""
        if self.passed:
            text = f"{self.name} passed: no hint needed."
        elif not self.attempted:
            text = f"Write your function and run its check first: the hint of {self.name} is shown after a first attempt."
        else:
            chk = CHECKS.get(self.name)
            text = f"Hint for {self.name}: {chk.hint}" if chk else f"There is no check called {self.name!r}."
        print(text)
        return _Printed(text)


@dataclass
class Check:
    """One exercise's check.

    Attributes:
        name: ``"<chapter topic>.<function>"``, e.g. ``"duplicate_tokens.duplicate_token_score"``.
        reference: the course's implementation (same signature as the student's).
        cases: ``cases(**context) -> list[dict]``: keyword arguments for each call;
            the first is the one shown in the notebook, the rest are hidden.
        hint: shown on request after a failed attempt; says where to look, not what to
            write (no expression of the solution: ``tests/test_check_hints.py`` checks it).
        mistakes: ``{description: fn}``: typical wrong implementations; when the
            student's output matches one, the message names it.
        atol, rtol: tolerances of :func:`torch.testing.assert_close`.
        compare_fn: optional ``(actual, expected, kwargs) -> str | None`` for
            outputs that are not tensors (lists, dicts, sets); None means equal.
        needs: names of the context values the check requires (e.g. ``("model",)``).
        model: the course model the check's cases expect when it needs one
            (``"gpt2-small"``, ``"attn-only-4l"``...), for tests and grading.
    """

    name: str
    reference: Callable
    cases: Callable[..., list[dict]]
    hint: str
    mistakes: Mapping[str, Callable] = field(default_factory=dict)
    atol: float = 1e-4
    rtol: float = 1e-4
    compare_fn: Callable | None = None
    needs: Sequence[str] = ()
    model: str | None = None


CHECKS: dict[str, Check] = {}


def register_check(
    name: str,
    *,
    reference: Callable,
    cases: Callable[..., list[dict]],
    hint: str,
    mistakes: Mapping[str, Callable] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    compare_fn: Callable | None = None,
    needs: Sequence[str] = (),
    model: str | None = None,
) -> Check:
    """Register a check (see :class:`Check`)."""
    if name in CHECKS:
        raise ValueError(f"check {name!r} registered twice")
    if "model" in needs and model is None:
        raise ValueError(f"check {name!r} needs a model: say which one (model='gpt2-small'...)")
    chk = Check(name, reference, cases, hint, dict(mistakes or {}), atol, rtol, compare_fn, tuple(needs), model)
    CHECKS[name] = chk
    return chk


def load_check_modules() -> None:
    """Import every check module of this package, so that :data:`CHECKS` is complete."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def random_pattern(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """A random causal attention pattern of shape ``[*shape, n]`` with ``n = shape[-1]`` (for check inputs).

    Softmax over the source axis of ``scale`` times standard normal scores,
    sources after the destination masked: every row sums to 1 over ``i <= n``.
    """
    n = shape[-1]
    scores = scale * torch.randn(*shape, n, generator=torch.Generator().manual_seed(seed))
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


#: Per model: the state of its weights and the runs of check inputs made in that state.
_RUNS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@torch.no_grad()
def run_with_cache_once(model, tokens: torch.Tensor):
    """``model.run_with_cache(tokens)`` for check inputs, run once per model, tokens and weights.

    The runs are remembered with the state of the model's weights (each
    parameter's storage and version counter): after ``.to()`` or an edit of a
    weight, the inputs run again.
    """
    state = tuple((p.data_ptr(), p._version) for p in model.parameters())
    entry = _RUNS.get(model)
    if entry is None or entry[0] != state:
        entry = _RUNS[model] = (state, {})
    key = (tuple(tokens.shape), tuple(tokens.flatten().tolist()))
    if key not in entry[1]:
        entry[1][key] = model.run_with_cache(tokens)
    return entry[1][key]


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}, dtype {x.dtype}, on {x.device}"
    return f"{type(x).__name__} {x!r}"[:200]


def compare(actual: Any, expected: Any, *, atol: float = 1e-4, rtol: float = 1e-4) -> str | None:
    """Compare a student's output with the reference; None if they agree, else why not.

    Handles tensors (shape, dtype, device, NaN/inf, values), tuples/lists of
    tensors (element by element) and plain Python values.
    """
    if isinstance(expected, (tuple, list)) and expected and isinstance(expected[0], torch.Tensor):
        if not isinstance(actual, (tuple, list)) or len(actual) != len(expected):
            return f"expected a {type(expected).__name__} of {len(expected)} tensors, got {_describe(actual)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            why = compare(a, e, atol=atol, rtol=rtol)
            if why:
                return f"element {i} of your output: {why}"
        return None
    if not isinstance(expected, torch.Tensor):
        if isinstance(expected, float) and isinstance(actual, (int, float, torch.Tensor)):
            actual_f = float(actual) if not isinstance(actual, torch.Tensor) or actual.numel() == 1 else None
            if actual_f is None:
                return f"expected a number, got {_describe(actual)}"
            if actual_f != actual_f:
                return "your output is NaN"
            if abs(actual_f - expected) > atol + rtol * abs(expected):
                return f"expected {expected:.6g}, got {actual_f:.6g} (off by {actual_f - expected:+.3g})"
            return None
        return None if actual == expected else f"expected {expected!r}, got {_describe(actual)}"
    if actual is None:
        return "your function returned None: did you forget the `return`?"
    if not isinstance(actual, torch.Tensor):
        return f"expected a torch.Tensor, got {_describe(actual)}"
    if actual.device.type == "meta":
        return "your output is on the meta device (it has no values): compute it from real tensors"
    if actual.shape != expected.shape:
        extra = ""
        if actual.numel() == expected.numel():
            extra = " (same number of elements: a transpose or a reshape in the wrong order?)"
        elif sorted(actual.shape) == sorted(expected.shape):
            extra = " (same sizes in another order: check the order of your dimensions)"
        return f"shape {tuple(actual.shape)}, expected {tuple(expected.shape)}{extra}"
    if actual.dtype.is_floating_point != expected.dtype.is_floating_point or (
        actual.dtype == torch.bool
    ) != (expected.dtype == torch.bool):
        return f"dtype {actual.dtype}, expected {expected.dtype}"
    if actual.device != expected.device:
        return f"your output is on {actual.device}, the reference on {expected.device}: keep it on the input's device"
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(torch.float64)
    bad = ~torch.isfinite(a) & torch.isfinite(e)
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        kind = "NaN" if torch.isnan(a[idx]) else "inf"
        return f"{int(bad.sum())} entries are NaN or inf (first: {kind} at index {idx})"
    if expected.dtype in (torch.bool, torch.int64, torch.int32, torch.long) and not expected.dtype.is_floating_point:
        wrong = a != e
        if wrong.any():
            idx = tuple(int(i) for i in wrong.nonzero()[0])
            return f"{int(wrong.sum())} of {wrong.numel()} entries differ (first at index {idx}: {a[idx].item():g}, expected {e[idx].item():g})"
        return None
    err = (a - e).abs()
    tol = atol + rtol * e.abs()
    wrong = (err > tol) & torch.isfinite(e)
    if wrong.any():
        flat = int((err - tol).argmax())
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), err.shape))
        return (
            f"{int(wrong.sum())} of {wrong.numel()} values differ; the largest error is at "
            f"index {idx}: you have {a[idx].item():.6g}, expected {e[idx].item():.6g} "
            f"(off by {(a[idx] - e[idx]).item():+.3g})"
        )
    return None


def _student_error(name: str, err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    here = os.path.dirname(__file__)
    theirs = [f for f in frames if not f.filename.startswith(here)]
    where = ""
    if theirs:
        f = theirs[-1]
        where = f" (in {f.name}, line {f.lineno}: `{(f.line or '').strip()}`)"
    if isinstance(err, NotImplementedError):
        return f"your function is not written yet: it raised NotImplementedError{where}. {err}".strip()
    return f"your function raised {type(err).__name__}: {err}{where}"


def run_check(name: str, student_fn: Callable, **context: Any) -> CheckResult:
    """Run a check and return its result without printing (see :func:`check`).

    ``student_fn`` may be the result of an earlier check: its ``submitted``
    function is checked again (never the reference it stood in with).
    """
    if isinstance(student_fn, CheckResult):
        student_fn = student_fn.submitted
    result = _run_check(name, student_fn, **context)
    result.submitted = student_fn
    result.function = student_fn if result.passed else course_function(name)
    return result


def course_function(name: str) -> Callable | None:
    """The course's function for exercise ``name``: ``exercises_lib.<module>.<function>``
    (the check's reference when there is no such function; None for an unknown check)."""
    module, _, function = name.rpartition(".")
    try:
        return getattr(importlib.import_module(f"exercises_lib.{module}"), function)
    except (ImportError, AttributeError, ValueError):
        chk = CHECKS.get(name)
        return chk.reference if chk else None


def _run_check(name: str, student_fn: Callable, **context: Any) -> CheckResult:
    load_check_modules()
    if name not in CHECKS:
        return CheckResult(name, False, f"There is no check called {name!r}. Known checks: {sorted(CHECKS)}")
    chk = CHECKS[name]
    missing = [k for k in chk.needs if context.get(k) is None]
    if missing:
        return CheckResult(name, False, f"This check needs {', '.join(missing)}: call check({name!r}, your_function, {', '.join(f'{k}={k}' for k in missing)}).")
    if not callable(student_fn):
        return CheckResult(name, False, f"Pass your function itself (not its result): got {_describe(student_fn)}.")
    guard = _guard.ModelGuard(_guard.modules_in(context))
    note = _guard.describe_stale_hooks(guard.stale_hooks)
    try:
        result = _run_cases(chk, student_fn, guard, context)
    except BaseException:
        guard.undo()  # whatever happened, the model leaves the check as it came in
        raise
    if note:
        result.message = f"{result.message} {note}"
    return result


def _run_cases(chk: Check, student_fn: Callable, guard: "_guard.ModelGuard", context: dict) -> CheckResult:
    name = chk.name
    try:
        with torch.no_grad():  # inputs, not something to differentiate: no autograd in the learner's function
            cases = chk.cases(**context)
    except Exception as err:  # a broken context (e.g. a model of the wrong kind)
        return CheckResult(name, False, f"Could not prepare the check's inputs: {type(err).__name__}: {err}")
    for i, kwargs in enumerate(cases):
        label = "the example in the notebook" if i == 0 else f"hidden test case {i}"
        expected = chk.reference(**_guard.clone_inputs(kwargs))
        try:
            actual = student_fn(**_guard.clone_inputs(kwargs))
        except Exception as err:
            damage = guard.undo()
            msg = f"On {label}, {_student_error(name, err)}"
            if damage:
                msg += f". Also, {damage}."
            return CheckResult(name, False, msg, attempted=not isinstance(err, NotImplementedError))
        damage = guard.undo()
        if damage:
            return CheckResult(name, False, f"On {label}, {damage}.", attempted=True)
        try:
            why = (
                chk.compare_fn(actual, expected, kwargs)
                if chk.compare_fn
                else compare(actual, expected, atol=chk.atol, rtol=chk.rtol)
            )
        except Exception as err:  # a comparison we did not foresee: still no harness traceback
            why = f"your output could not be compared with the reference ({type(err).__name__}: {err}); it is {_describe(actual)}"
        if why:
            diagnosis = _diagnose(chk, student_fn, guard, cases, i, actual)
            msg = f"On {label}: {why}."
            if diagnosis:
                msg += f" It matches a typical mistake: {diagnosis}."
            return CheckResult(name, False, msg, attempted=True)
    return CheckResult(name, True, f"all {len(cases)} test cases pass")


def _matches(chk: Check, wrong_fn: Callable, actual: Any, kwargs: dict) -> bool:
    """Whether ``actual`` is what the mistake ``wrong_fn`` gives on ``kwargs``."""
    try:
        wrong = wrong_fn(**_guard.clone_inputs(kwargs))
        return (
            chk.compare_fn(actual, wrong, kwargs)
            if chk.compare_fn
            else compare(actual, wrong, atol=chk.atol, rtol=chk.rtol)
        ) is None
    except Exception:
        return False


def _diagnose(chk: Check, student_fn: Callable, guard: "_guard.ModelGuard", cases: list, failed: int,
              actual: Any) -> str | None:
    """The typical mistake the learner's output on case ``failed`` matches. Where several mistakes give
    that same output, the learner's function is run on the other cases to tell them apart."""
    found = [d for d, fn in chk.mistakes.items() if _matches(chk, fn, actual, cases[failed])]
    for j, kwargs in enumerate(cases):
        if len(found) < 2:
            break
        if j == failed:
            continue
        try:
            other = student_fn(**_guard.clone_inputs(kwargs))
        except Exception:
            other = None
        if guard.undo():
            break
        narrowed = [d for d in found if other is not None and _matches(chk, chk.mistakes[d], other, kwargs)]
        found = narrowed or found
    return found[0] if found else None


#: Checks that failed an attempt in this session: their hints may be shown.
_FAILED: set[str] = set()


def hint(name: str) -> str:
    """Print (and return) the hint of check ``name``, once the check has failed an attempt."""
    load_check_modules()
    if name not in CHECKS:
        text = f"There is no check called {name!r}."
    elif name not in _FAILED:
        text = f"Run check({name!r}, ...) on your function first: its hint is shown after a first failed attempt."
    else:
        text = f"Hint for {name}: {CHECKS[name].hint}"
    print(text)
    return _Printed(text)


def _show_collapsed_hint(name: str) -> None:
    """In a notebook, a collapsed "Hint" under the verdict (nothing elsewhere)."""
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return
    import html as _html

    display(HTML(
        '<details class="course-hint"><summary>Hint (open it once you have tried)</summary>'
        f"<p>{_html.escape(CHECKS[name].hint)}</p></details>"
    ))


def check(name: str, student_fn: Callable, **context: Any) -> CheckResult:
    """Check ``student_fn`` against the reference of exercise ``name``; print the verdict.

    Context (e.g. ``model=model``) is passed to the check's input builder.
    Returns a :class:`CheckResult`: truthy when passed, and callable: it runs
    the student's function when it passed, the course's reference otherwise
    (one printed line says which). Write ``f = check("module.f", f, ...)`` and
    use ``f`` in later cells.
    """
    try:
        result = run_check(name, student_fn, **context)
    except Exception as err:  # a bug of ours: say so plainly, still no traceback
        submitted = student_fn.submitted if isinstance(student_fn, CheckResult) else student_fn
        result = CheckResult(name, False, f"The check itself failed ({type(err).__name__}: {err}). Please report this.",
                             submitted, course_function(name))
    mark = "\u2714" if result.passed else "\u2718"
    text = f"{mark} {name}: {'passed' if result.passed else 'not yet'} - {result.message}"
    print(text)
    fn_name = name.rsplit(".", 1)[-1]
    offer = result.attempted and not result.passed and name in CHECKS
    if offer:
        _FAILED.add(name)
        print(f"  Stuck? `{fn_name}.hint()` shows a hint (or open the Hint below).")
    if result.passed:
        print(f"  Later cells use your {fn_name}.")
    elif result.function is not None:
        print(f"  Later cells use the course's {fn_name} until yours passes (edit it, then run this cell again).")
    if offer:
        _show_collapsed_hint(name)
    if not result.passed and os.environ.get("MECHINTERP_CHECKS_RAISE"):
        raise CheckFailed(text)
    return result
