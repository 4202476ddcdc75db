"""The book's claims page: the results hook's claim numbers and the page generator (``tools/claims_page.py``)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


page = _load("claims_page", ROOT / "tools" / "claims_page.py")
claims_conftest = _load("claims_conftest", ROOT / "tests" / "claims" / "conftest.py")


@pytest.mark.parametrize(
    "file, name, marker, expected",
    [
        ("test_ch02_contextual.py", "test_claim_2_3_head_groups[real-layer0]", (), "2.3"),
        ("test_ch01_duplicate_tokens.py", "test_claim4_pvo_norm_map[standin]", (), "1.4"),
        ("test_ch04_duality.py", "test_across_2_patching_directions[real]", (), "tools.2"),
        ("test_ch05_layernorm.py", "test_residual_norm_growth[real]", ("tools.4",), "tools.4"),
        ("test_ch05_layernorm.py", "test_residual_norm_growth[real]", (), None),
        ("test_other.py", "test_claim3_something", (), None),  # no chapter in the file name
    ],
)
def test_claim_of(file, name, marker, expected):
    assert claims_conftest.claim_of(file, name, marker) == expected


def test_every_claims_test_names_a_claim_of_the_course():
    found = {(f, n): claims_conftest.claim_of(f, n, a) for f, n, a in page.claims_test_functions()}
    assert len(found) >= 20
    unknown = {k: v for k, v in found.items() if v not in page.CLAIMS}
    assert not unknown, f"claims tests whose claim is not one of the course's (tools/claims_page.py CLAIMS): {unknown}"


def _record(test, claim, source, outcome, reason=None):
    return {"test": f"tests/claims/{test}[{source}]", "claim": claim, "source": source, "doc": "",
            "outcome": outcome, "skip_reason": reason}


FAKE = {
    "generated": "2025-01-01T00:00:00+00:00",
    "commit": "abc1234",
    "pytest_args": ["tests/claims"],
    "results": [
        _record("test_ch02_contextual.py::test_claim_2_3_head_groups", "2.3", "real-layer0", "passed"),
        _record("test_ch02_contextual.py::test_claim_2_3_head_groups", "2.3", "standin", "skipped", "tested as real-layer0"),
        _record("test_ch02_contextual.py::test_claim_2_3_head_groups", "2.3", "real", "skipped", "real weights cannot be loaded"),
        _record("test_ch04_duality.py::test_claim_4_1_opposite_predicted", "4.1", "standin", "passed"),
        _record("test_ch04_duality.py::test_claim_4_1_opposite_predicted", "4.1", "real", "skipped", "real weights cannot be loaded"),
        _record("test_ch04_duality.py::test_claim_4_2_logit_lens", "4.2", "standin", "failed"),
        _record("test_ch05_layernorm.py::test_residual_norm_growth", "tools.4", "standin", "skipped", "not planted"),
        _record("test_ch05_layernorm.py::test_residual_norm_growth", "tools.4", "real", "skipped", "real weights cannot be loaded"),
        _record("test_ch05_layernorm.py::test_helper_without_claim", None, "standin", "passed"),
    ],
}


def _row(text: str, claim: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {claim} |"))


def test_page_from_a_small_results_file(tmp_path):
    results, out = tmp_path / "claims.json", tmp_path / "claims.md"
    results.write_text(json.dumps(FAKE))
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "claims_page.py"), "--results", str(results), "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "commit `abc1234`" in text and "9 claims-test runs" in text
    row = _row(text, "2.3")
    assert "| real layer 0 |" in row and row.endswith("| passed |") and "`test_claim_2_3_head_groups`" in row
    assert "| stand-in |" in _row(text, "4.1") and _row(text, "4.1").endswith("| passed |")
    assert "**FAILED** (1 of 1)" in _row(text, "4.2") and "| stand-in (failed there) |" in _row(text, "4.2")
    assert "| real weights only (skipped here) |" in _row(text, "tools.4") and _row(text, "tools.4").endswith("| skipped |")
    # 1.6 has a claims test in tests/claims, absent from these results
    assert "| not in these results (its tests did not run) |" in _row(text, "1.6")
    assert "`test_claim6_" in _row(text, "1.6")
    assert "* not planted: tools.4 `test_residual_norm_growth` (stand-in)" in text
    assert "## Tests that name no claim" in text and "test_helper_without_claim" in text
    for claim in page.CLAIMS:  # every claim has its row
        _row(text, claim)


def test_a_claim_without_any_test_is_write_up_only():
    text = page.render(FAKE, known={"2.3": ["test_claim_2_3_head_groups"]})
    assert "| write-up only (no claims test) |" in _row(text, "1.6") and _row(text, "1.6").endswith("| no test |")
    assert "| real layer 0 |" in _row(text, "2.3")


def test_page_without_results_says_the_tests_were_not_run(tmp_path):
    out = tmp_path / "claims.md"
    page.main(["--results", str(tmp_path / "missing.json"), "--out", str(out)])
    text = out.read_text()
    assert "were not run for this build" in text
    assert _row(text, "2.3").endswith("| not run |")


def test_corrupt_results_file_is_reported_not_raised(tmp_path, capsys):
    results, out = tmp_path / "claims.json", tmp_path / "claims.md"
    results.write_text("{not json")
    page.main(["--results", str(results), "--out", str(out)])
    assert "not valid JSON" in capsys.readouterr().err
    assert "were not run for this build" in out.read_text()


def test_results_hook_writes_the_outcome_of_each_claims_test(tmp_path):
    """The conftest hook, end to end, on a throwaway claims folder with a pass, a failure and a skip."""
    folder = tmp_path / "tests" / "claims"
    folder.mkdir(parents=True)
    (folder / "conftest.py").write_text((ROOT / "tests" / "claims" / "conftest.py").read_text())
    (folder / "test_ch02_fake.py").write_text(
        "import pytest\n"
        "def test_claim_2_1_ok():\n    '''Positional patterns.'''\n"
        "def test_claim_2_2_bad():\n    assert False\n"
        "@pytest.mark.claim('tools.4')\n"
        "def test_growth():\n    pytest.skip('no real weights here')\n"
    )
    results = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-o", "markers=claim", str(folder)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "CLAIMS_RESULTS": str(results)},
    )
    assert proc.returncode == 1, proc.stdout[-2000:]  # one test fails
    got = {r["test"].split("::")[-1]: r for r in json.loads(results.read_text())["results"]}
    assert got["test_claim_2_1_ok"]["outcome"] == "passed" and got["test_claim_2_1_ok"]["claim"] == "2.1"
    assert got["test_claim_2_1_ok"]["doc"] == "Positional patterns."
    assert got["test_claim_2_2_bad"]["outcome"] == "failed" and got["test_claim_2_2_bad"]["claim"] == "2.2"
    assert got["test_growth"] == {**got["test_growth"], "outcome": "skipped", "claim": "tools.4",
                                  "skip_reason": "no real weights here"}
