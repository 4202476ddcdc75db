"""No check gives the solution away: what a failed check prints, its typical mistakes'
descriptions and its hint (shown on request) carry no expression of the solution.

The solution is the code between ``# SOLUTION`` and ``# END SOLUTION`` in the course's
function (``exercises_lib.<module>.<function>``). Each of its lines, and each assigned or
returned expression, is a *key expression*; a text gives one away when it holds it

* verbatim (spaces ignored), or
* nearly: once qualifiers are dropped (``model.blocks[0].attn.W_V`` -> ``W_V``) and
  brackets of grouping ignored, 80% of the expression's tokens appear in order within
  a stretch of the text not much longer than the expression (so
  ``W_pos @ W_V[layer, head] @ W_O[layer, head] @ W_in[layer]`` gives away
  ``(model.W_pos @ block.attn.W_V[head]) @ (block.attn.W_O[head] @ block.mlp.W_in)``).
"""

from __future__ import annotations

import inspect
import math
import re

import pytest
import torch

from exercises_lib.checks import CHECKS, check, course_function, hint, load_check_modules, run_check

load_check_modules()
NAMES = sorted(n for n in CHECKS if not n.startswith("_test"))

_OPS = set("@*/+-[]=<>%~&|")
_STRING = re.compile(r"""[fbr]?(["'])(?:(?!\1).)*\1""")  # a string literal: one token, not its words
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*|\d+\.?\d*|\*\*|//|[@*/+\-\[\]=<>%~&|,:]")


def solution_lines(name: str) -> list[str]:
    """The lines of the course's solution of exercise ``name`` (comments dropped)."""
    source = inspect.getsource(course_function(name))
    lines, inside = [], False
    for raw in source.splitlines():
        stripped = raw.strip()
        if stripped.startswith("# SOLUTION"):
            inside = True
            continue
        if stripped.startswith("# END SOLUTION"):
            break
        if inside:
            code = re.sub(r"\s+#.*$", "", stripped) if not stripped.startswith("#") else ""
            if code:
                lines.append(code)
    return lines


def key_expressions(name: str) -> list[str]:
    """Each solution line and each expression it assigns or returns, when it is more than a name."""
    out = []
    for line in solution_lines(name):
        parts = [line]
        if line.startswith("return "):
            parts.append(line[len("return "):])
        m = re.match(r"^[\w\s,\[\]\.]+?\s*(?:[-+*/@]?=)\s*(?!=)(.+)$", line)
        if m:
            parts.append(m.group(1))
        for part in parts:
            tokens = _tokens(_STRING.sub(" STR ", part))
            if len(tokens) >= 5 and sum(t in _OPS for t in tokens) >= 1:
                out.append(part)
    return sorted(set(out))


def _tokens(text: str) -> list[str]:
    """Tokens with qualifiers dropped (``model.W_pos`` -> ``W_pos``), grouping brackets ignored."""
    return [t.rsplit(".", 1)[-1] if "." in t and not t[0].isdigit() else t for t in _TOKEN.findall(text)]


def _in_order_fraction(needle: list[str], hay: list[str]) -> float:
    """The largest fraction of ``needle`` found in order (a subsequence) in a window of ``hay``
    at most 1.6 times its length."""
    n = len(needle)
    width = math.ceil(1.6 * n)
    best = 0
    for start in range(max(1, len(hay) - n + 1)):
        window = hay[start:start + width]
        # longest common subsequence of needle and window
        prev = [0] * (len(window) + 1)
        for a in needle:
            cur = [0]
            for j, b in enumerate(window):
                cur.append(prev[j] + 1 if a == b else max(prev[j + 1], cur[j]))
            prev = cur
        best = max(best, prev[-1])
        if best == n:
            break
    return best / n


def giveaways(name: str, text: str) -> list[str]:
    """The key expressions of ``name``'s solution that ``text`` gives away."""
    flat = re.sub(r"\s+", "", text)
    hay = _tokens(text)
    found = []
    for expr in key_expressions(name):
        if re.sub(r"\s+", "", expr) in flat or _in_order_fraction(_tokens(_STRING.sub(" STR ", expr)), hay) >= 0.8:
            found.append(expr)
    return found


# -- the detector itself ------------------------------------------------------


def test_the_detector_finds_solutions_in_code_and_not_in_words():
    name = "duplicate_tokens.pvo_contributions"
    if name not in CHECKS:
        pytest.skip(f"no check {name}")
    assert key_expressions(name), "no key expression found between the SOLUTION markers"
    assert giveaways(name, "Hint: W_pos @ W_V[layer, head] @ W_O[layer, head] @ W_in[layer]: one matrix product.")
    assert giveaways(name, "return (model.W_pos @ block.attn.W_V[head]) @ (block.attn.W_O[head] @ block.mlp.W_in)")
    assert not giveaways(name, "Follow the positional embedding through the head's value and output "
                               "weights, then into the neuron's input weights: one chain of products.")


# -- what is shown: the hint, the mistakes, and a failed check's print-out ------


@pytest.mark.parametrize("name", NAMES)
def test_hint_and_mistakes_give_no_solution_expression(name):
    chk = CHECKS[name]
    for label, text in [("hint", chk.hint), *((f"mistake {d!r}", d) for d in chk.mistakes)]:
        found = giveaways(name, text)
        assert not found, f"{name}: the {label} gives away {found}: {text!r}"


def _perturbed(out):
    if isinstance(out, torch.Tensor):
        if out.dtype == torch.bool:
            return ~out
        if out.dtype.is_floating_point:
            return out + 0.5 * (out.abs().float().mean() + 1).to(out.dtype)
        return out + 1
    if isinstance(out, (tuple, list)) and out and all(isinstance(o, torch.Tensor) for o in out):
        return type(out)(_perturbed(o) for o in out)
    if isinstance(out, bool):
        return not out
    if isinstance(out, (int, float)):
        return out + 1
    if isinstance(out, str):
        return out + " (wrong)"
    if isinstance(out, list):
        return list(reversed(out)) + ["wrong"]
    if isinstance(out, dict):
        return {}
    return None


def _wrong_shape(out):
    if isinstance(out, torch.Tensor):
        return out.unsqueeze(0)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return type(out)(o.unsqueeze(0) for o in out)
    return [out, out]


def _nan(out):
    if isinstance(out, torch.Tensor):
        return torch.full(out.shape, float("nan"), device=out.device)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return type(out)(torch.full(o.shape, float("nan"), device=o.device) for o in out)
    return float("nan")


WRONG = {"perturbed": _perturbed, "wrong shape": _wrong_shape, "NaN": _nan}


@pytest.mark.parametrize("name", NAMES)
def test_failed_check_prints_no_solution_expression(name, check_context, monkeypatch, capsys):
    """The reference's output perturbed, reshaped and NaN: the check fails and prints no solution."""
    monkeypatch.delenv("MECHINTERP_CHECKS_RAISE", raising=False)
    chk = CHECKS[name]
    ctx = check_context(chk)
    for label, spoil in WRONG.items():
        def student(*args, _spoil=spoil, **kwargs):
            return _spoil(chk.reference(*args, **kwargs))

        result = check(name, student, **ctx)
        printed = capsys.readouterr().out
        assert not result.passed, f"{name}: the {label} output passed"
        shown = printed + "\n" + result.hint() + "\n" + hint(name)
        capsys.readouterr()
        found = giveaways(name, shown)
        assert not found, f"{name} ({label} output) prints {found}:\n{shown}"


def test_hint_is_shown_only_after_a_failed_attempt(monkeypatch, capsys):
    monkeypatch.delenv("MECHINTERP_CHECKS_RAISE", raising=False)
    name = "basics.attention_entropy"
    from exercises_lib.checks import _FAILED

    _FAILED.discard(name)
    assert "after a first failed attempt" in hint(name)

    def not_written(pattern):
        raise NotImplementedError

    blank = check(name, not_written)
    assert "Stuck?" not in capsys.readouterr().out
    assert "after a first attempt" in blank.hint()
    wrong = check(name, lambda pattern: pattern.sum(-1))
    out = capsys.readouterr().out
    assert "Stuck? `attention_entropy.hint()`" in out and CHECKS[name].hint not in out
    assert wrong.hint().startswith(f"Hint for {name}:") and hint(name).startswith(f"Hint for {name}:")
    assert "no hint needed" in check(name, CHECKS[name].reference).hint()
