"""A notebook's outputs repeat exactly: on one core or two, and as committed.

Chapter 0's solution is executed twice, as ``python -m exercises_lib.generate
--execute`` executes it, once with one thread for the kernel and once with
two. The outputs are compared cell by cell, each cell's stream outputs merged
(a print may reach the client as one stream message or as two), after
removing what legitimately varies (durations, memory addresses, progress
bars, devices, plotly's and ipywidgets' random ids):

* between the two runs, exactly: every number to its last printed digit;
* against the committed notebook, every number to a relative 1e-4 (the
  committed outputs may come from another CPU or BLAS build, whose last bits
  differ), and everything else exactly.
"""

from __future__ import annotations

import base64
import configparser
import json
import os
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest

from exercises_lib import kernel_wait

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "solutions" / "00_setup_check.ipynb"

pytestmark = pytest.mark.slow

NUMBER = re.compile(r"-?\d+\.\d+(?:[eE][-+]?\d+)?|-?\d+[eE][-+]?\d+")


def _sanitisers(*, floats: bool):
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "tests" / "nbval_sanitize.cfg")
    return [(re.compile(cfg[s]["regex"]), cfg[s]["replace"]) for s in cfg.sections() if floats or not s.startswith("floats")]


def _decode_arrays(x):
    """Plotly's typed arrays ({"bdata": base64, "dtype": ...}) as lists of numbers."""
    if isinstance(x, dict):
        if "bdata" in x and "dtype" in x:
            values = np.frombuffer(base64.b64decode(x["bdata"]), dtype=x["dtype"])
            return values.astype(float).tolist()
        return {k: _decode_arrays(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode_arrays(v) for v in x]
    return x


def cell_outputs(nb, *, floats: bool = True) -> list[dict]:
    """Per code cell (NBVAL_IGNORE_OUTPUT cells skipped): merged stdout, merged stderr, other outputs."""
    subs = _sanitisers(floats=floats)

    def clean(text: str) -> str:
        for pattern, repl in subs:
            text = pattern.sub(repl, text)
        return text

    cells = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "NBVAL_IGNORE_OUTPUT" in cell.source:
            continue
        streams = {"stdout": "", "stderr": ""}
        other = []
        for o in cell.get("outputs", []):
            if o.output_type == "stream":
                streams[o.name] = streams.get(o.name, "") + o.text
            elif o.output_type in ("display_data", "execute_result"):
                data = dict(o.data)
                data.pop("text/html", None)  # plotly's HTML carries a random div id
                data.pop("application/vnd.jupyter.widget-view+json", None)  # a random model id
                other.append(clean(json.dumps(_decode_arrays(data), sort_keys=True)))
            else:
                other.append(clean(json.dumps({k: o[k] for k in ("ename", "evalue") if k in o}, sort_keys=True)))
        cells.append({"cell": index, "stdout": clean(streams["stdout"]), "stderr": clean(streams["stderr"]), "other": other})
    return cells


def numbers_differ(a: str, b: str, rtol: float = 1e-4, atol: float = 1e-6) -> str | None:
    """Why ``a`` and ``b`` differ beyond the tolerance (numbers) or at all (the rest); None if they agree."""
    if NUMBER.sub("#", a) != NUMBER.sub("#", b):
        return "the text differs"
    for x, y in zip(NUMBER.findall(a), NUMBER.findall(b)):
        if abs(float(x) - float(y)) > atol + rtol * abs(float(y)):
            return f"{x} against {y}"
    return None


def _execute(threads: int):
    """Execute the notebook as `generate --execute` does, with `threads` threads in the kernel."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = {
        "MECHINTERP_SOURCE": "standin", "MECHINTERP_CHECKS_RAISE": "1", "MECHINTERP_SMALL_OUTPUTS": "1",
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        kernel_wait.notebook_client(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
        ).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


@pytest.fixture(scope="module")
def runs():
    return {threads: _execute(threads) for threads in (1, 2)}


def test_merging_streams_hides_how_a_print_was_split():
    one = nbformat.v4.new_code_cell("print('a b')")
    one.outputs = [nbformat.v4.new_output("stream", name="stdout", text="a b\n")]
    two = nbformat.v4.new_code_cell("print('a b')")
    two.outputs = [nbformat.v4.new_output("stream", name="stdout", text="a "),
                   nbformat.v4.new_output("stream", name="stdout", text="b\n")]
    nb1, nb2 = nbformat.v4.new_notebook(cells=[one]), nbformat.v4.new_notebook(cells=[two])
    assert cell_outputs(nb1) == cell_outputs(nb2)
    two.outputs[1].text = "c\n"
    assert cell_outputs(nb1) != cell_outputs(nb2)


def test_numbers_differ():
    assert numbers_differ('{"x": [0.1234567, 2.5]}', '{"x": [0.1234568, 2.5]}') is None
    assert numbers_differ('{"x": [0.1234567]}', '{"x": [0.1244567]}') == "0.1234567 against 0.1244567"
    assert numbers_differ("head 3", "head 4") == "the text differs"


def test_outputs_do_not_depend_on_the_core_count(runs):
    one, two = cell_outputs(runs[1], floats=False), cell_outputs(runs[2], floats=False)
    assert one and sum(bool(c["other"]) for c in one) >= 3, "no figures compared"
    for a, b in zip(one, two):
        assert a == b, f"cell {a['cell']} differs between 1 and 2 threads"
    assert len(one) == len(two)


def test_outputs_match_the_committed_notebook(runs):
    committed = cell_outputs(nbformat.read(NOTEBOOK, as_version=4), floats=False)
    fresh = cell_outputs(runs[2], floats=False)
    assert [c["cell"] for c in committed] == [c["cell"] for c in fresh]
    for c, f in zip(committed, fresh):
        for key in ("stdout", "stderr"):
            why = numbers_differ(f[key], c[key])
            assert why is None, f"cell {c['cell']} {key}: {why} (re-execute the notebook: python -m exercises_lib.generate --execute)"
        assert len(c["other"]) == len(f["other"]), f"cell {c['cell']}: not the same outputs"
        for a, b in zip(f["other"], c["other"]):
            why = numbers_differ(a, b)
            assert why is None, f"cell {c['cell']}: {why} (re-execute the notebook: python -m exercises_lib.generate --execute)"
