"""Write the book's claims page (``book/claims.md``) from the claims tests' results.

    python tools/claims_page.py [--results _build/claims.json] [--out book/claims.md]

The results file is written by ``tests/claims/conftest.py`` whenever claims tests
run (``$CLAIMS_RESULTS``, default ``_build/claims.json``). For each claim of the
course the page says how it is known here, which tests say so, and whether they
passed. Where the file does not exist, the page lists the claims and says that
the tests were not run. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The course's claims, numbered as the chapters number them, each in a line.
CHAPTERS: dict[str, str] = {
    "1": "Chapter 1: duplicate-token heads and neurons",
    "2": "Chapter 2: contextual heads and neurons",
    "3": "Chapter 3: a polysemantic head (1.4 in attn-only-4l)",
    "4": "Chapter 4: the duality circuit",
    "tools": "Tools across chapters (chapter 5: LayerNorm and patching)",
}
CLAIMS: dict[str, str] = {
    "1.1": "Layer-0 heads 0.1, 0.5 and 0.10 attend to earlier copies of the current token; a duplicate-token score ranks them",
    "1.2": "The LN scale of E[t] + P[i]: E and P nearly orthogonal, |P[i]| about flat past position 100",
    "1.3": "A duplicate-token head outputs a token embedding plus positional information about the copies",
    "1.4": "Head 5's P·V·O column norms single out a few MLP-0 neurons, whose curves are about linear in position",
    "1.5": "Neuron 1168 fires on words repeated occasionally: head 5's positional part against the other heads'",
    "1.6": "A weights-only prediction of neuron 1168's positional term against its activations",
    "2.1": "Positional patterns, computed from the weights alone, barely depend on the destination token",
    "2.2": "A real pattern is the positional pattern times a per-token content factor, normalised",
    "2.3": "Head groups: detokenisation 3, 4, 7; contextual 0, 2, 6, 8, 9, 10; duplicate-token 1, 5; unclear 11",
    "2.4": "The contextual heads' normalisers concentrate; heads 6 and 8 vary most across texts",
    "2.5": "Extended embeddings: the contextual heads' summed output is a decaying bag of tokens",
    "2.6": "Contextual neurons found from the weights (top and bottom tokens of 300, 704, 1621, 1710)",
    "2.7": "The weights-only prediction follows a contextual neuron's shape and decision boundary along texts",
    "2.8": "(Appendix) layer-2 patterns mostly positional; an SVD splits a neuron's sub-features",
    "3.1": "Head 1.4's behaviour distribution: previous-token, induction, bigger indentation, inactive, unknown",
    "3.2": "Three prompt templates with a known next token: induction, bigger indentation, previous token",
    "3.3": "Making head 1.4 attend only to BOS lowers the accuracy and probability of the right token",
    "3.4": "Ablating the other positions one at a time barely matters; the key position does",
    "4.1": "\"... my right hand and my\" -> \" left\", and other dual pairs; \"right\" also pairs with \"wrong\"",
    "4.2": "Logit lens of the logit difference through every resid_pre and resid_mid",
    "4.3": "Direct logit attribution: head 9.7 dominates, attending to the earlier dual word",
    "4.4": "Patching by layer and position: the dual word at resid_pre 6, heads 6.1 and 8.x, MLPs 8 and 10",
    "4.5": "The same heads matter for other dual pairs (partial generalisation)",
    "4.6": "The write-up's hypotheses can be tested (head-level and path patching)",
    "tools.1": "A LayerNorm-free GPT-2, loaded with its LayerNorms disabled, gives Hugging Face's logits",
    "tools.2": "Denoising finds sufficient (OR-like) parts, noising necessary (AND-like) ones: run both",
    "tools.3": "The choice of corrupted tokens matters: corrupt with equivalent tokens",
    "tools.4": "The residual stream's norm grows roughly exponentially over the layers",
}

SOURCES = {"real-layer0": "real layer 0", "standin": "stand-in", "real": "real weights"}
MARK = {"passed": "passed", "failed": "**FAILED**", "error": "**ERROR**", "skipped": "skipped", "not run": "not run"}


def claims_test_functions(claims_dir: Path = ROOT / "tests" / "claims"):
    """(file name, test name, ``claim`` marker arguments) of every test function in ``claims_dir``, read with ast."""
    import ast

    for path in sorted(claims_dir.glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                args = ()
                for dec in node.decorator_list:
                    if isinstance(dec, ast.Call) and ast.unparse(dec.func).endswith("mark.claim"):
                        args = tuple(ast.literal_eval(a) for a in dec.args)
                yield path.name, node.name, args


def tests_by_claim(claims_dir: Path = ROOT / "tests" / "claims") -> dict[str, list[str]]:
    """Claim -> the claims tests that state it, read from the test files (ast) with the results
    hook's own rule (``claim_of`` in ``tests/claims/conftest.py``); empty where that cannot be read."""
    import importlib.util

    try:
        spec = importlib.util.spec_from_file_location("_claims_conftest", claims_dir / "conftest.py")
        conftest = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(conftest)
    except Exception as err:  # noqa: BLE001 - the page still builds, without this column's distinction
        print(f"claims_page: could not read the claims tests' numbering ({err})", file=sys.stderr)
        return {}
    found: dict[str, list[str]] = defaultdict(list)
    for file_name, test_name, args in claims_test_functions(claims_dir):
        claim = conftest.claim_of(file_name, test_name, args)
        if claim:
            found[claim].append(test_name)
    return dict(found)


def chapter_of(claim: str) -> str:
    return claim.split(".", 1)[0]


def claim_sort_key(claim: str) -> tuple:
    head, _, tail = claim.partition(".")
    return (head == "tools", int(head) if head.isdigit() else 0, int(tail) if tail.isdigit() else 0)


def how_known(records: list[dict], has_tests: bool = False) -> tuple[str, str]:
    """(how the claim is known here, result) from the records of its tests."""
    if not records:
        if has_tests:
            return "not in these results (its tests did not run)", "not run"
        return "write-up only (no claims test)", "no test"
    passed = {r["source"] for r in records if r["outcome"] == "passed"}
    failed = [r for r in records if r["outcome"] in ("failed", "error")]
    kinds = [SOURCES.get(s, str(s)) for s in SOURCES if s in passed]
    kinds += sorted(str(s) for s in passed if s not in SOURCES)
    if kinds:
        how = ", ".join(kinds)
    elif failed:
        how = ", ".join(dict.fromkeys(SOURCES.get(r["source"], str(r["source"])) for r in failed)) + " (failed there)"
    elif any(r["source"] == "real" and r["outcome"] == "skipped" for r in records):
        how = "real weights only (skipped here)"
    elif all(r["outcome"] == "not run" for r in records):
        how = "not run"
    else:
        how = "not decided here (every test skipped)"
    if failed:
        return how, f"**FAILED** ({len(failed)} of {len(records)})"
    if passed:
        return how, "passed"
    return how, "skipped" if any(r["outcome"] == "skipped" for r in records) else "not run"


def _test_name(nodeid: str) -> str:
    return nodeid.split("::")[-1].split("[", 1)[0]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def tests_cell(records: list[dict]) -> str:
    by_test: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_test[_test_name(r["test"])].append(r)
    parts = []
    for name, rs in by_test.items():
        outcomes = "; ".join(f"{SOURCES.get(r['source'], r['source'] or 'one run')}: {MARK.get(r['outcome'], r['outcome'])}"
                             for r in sorted(rs, key=lambda r: list(SOURCES).index(r["source"]) if r["source"] in SOURCES else 9))
        parts.append(f"`{name}` ({outcomes})")
    return "<br>".join(parts) if parts else "-"


def render(results: dict | None, results_path: str = "_build/claims.json",
           known: dict[str, list[str]] | None = None) -> str:
    lines = [
        "# The course's claims, and how each is known here",
        "",
        "Every numbered claim of the course (the write-ups' findings, as each chapter states them) is an assertion",
        "in a claims test (`tests/claims/`). Each test runs on up to three sources: **real layer 0** (GPT-2 small's",
        "real layer 0 and W_pos, shipped with the course), the **stand-in** (a model with the real one's shapes in",
        "which the mechanism is built or planted: a pass says the chapter's analysis finds it there, not that",
        "GPT-2 has it) and the **real weights** (skipped where they cannot be loaded, as when this page was built",
        "offline). *How it is known here* lists the sources on which a test of the claim passed; *real weights only*",
        "means every test that could decide the claim needs weights the course does not have, and *write-up only*",
        "that no test states it.",
        "",
    ]
    if results is None:
        lines += [
            "```{note}",
            f"The claims tests were not run for this build (no results file `{results_path}`): the table lists the",
            "claims only. Run `.venv/bin/python -m pytest tests/claims -q`, then build the book again.",
            "```",
            "",
        ]
        records: list[dict] = []
    else:
        records = list(results.get("results", []))
        counts = defaultdict(int)
        for r in records:
            counts[r["outcome"]] += 1
        summary = ", ".join(f"{counts[k]} {k}" for k in ("passed", "failed", "error", "skipped", "not run") if counts[k])
        args = " ".join(results.get("pytest_args") or []) or "(none)"
        lines += [
            f"Results of {len(records)} claims-test runs ({summary}), "
            f"at commit `{results.get('commit') or 'unknown'}`, {results.get('generated', 'time unknown')}; "
            f"pytest arguments: `{_cell(args)}`.",
            "",
        ]
    by_claim: dict[str, list[dict]] = defaultdict(list)
    unclaimed = []
    for r in records:
        if r.get("claim") in CLAIMS:
            by_claim[r["claim"]].append(r)
        else:
            unclaimed.append(r)
    for chapter, title in CHAPTERS.items():
        claims = sorted((c for c in CLAIMS if chapter_of(c) == chapter), key=claim_sort_key)
        lines += [f"## {title}", "", "| claim | what | how it is known here | tests | result |", "|---|---|---|---|---|"]
        skipped: dict[str, list[str]] = defaultdict(list)
        for claim in claims:
            rs = by_claim.get(claim, [])
            how, result = how_known(rs, bool((known or {}).get(claim))) if results is not None else ("not run", "not run")
            tests = tests_cell(rs) if rs else ("<br>".join(f"`{t}`" for t in (known or {}).get(claim, [])) or "-")
            lines.append(f"| {claim} | {_cell(CLAIMS[claim])} | {how} | {tests} | {result} |")
            for r in rs:
                if r["outcome"] == "skipped" and r.get("skip_reason"):
                    skipped[r["skip_reason"]].append(f"{claim} `{_test_name(r['test'])}` ({SOURCES.get(r['source'], r['source'])})")
        lines.append("")
        if skipped:
            lines += ["Why tests were skipped:", ""]
            for reason, where in skipped.items():
                lines.append(f"* {_cell(reason)}: {', '.join(where)}")
            lines.append("")
    if unclaimed:
        lines += ["## Tests that name no claim", "", "| test | source | result |", "|---|---|---|"]
        for r in unclaimed:
            lines.append(f"| `{r['test']}` | {SOURCES.get(r['source'], r['source'])} | {MARK.get(r['outcome'], r['outcome'])} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=None, help="results JSON (default: $CLAIMS_RESULTS or _build/claims.json)")
    parser.add_argument("--out", default=str(ROOT / "book" / "claims.md"))
    args = parser.parse_args(argv)
    import os

    results_path = Path(args.results or os.environ.get("CLAIMS_RESULTS") or ROOT / "_build" / "claims.json")
    results = None
    if results_path.is_file():
        try:
            results = json.loads(results_path.read_text())
        except json.JSONDecodeError as err:
            print(f"claims_page: {results_path} is not valid JSON ({err}); the page says the tests were not run",
                  file=sys.stderr)
    shown = os.path.relpath(results_path, ROOT) if results_path.is_absolute() else str(results_path)
    Path(args.out).write_text(render(results, shown, tests_by_claim()))
    print(f"claims_page: wrote {args.out} ({'from ' + shown if results else 'tests not run'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
