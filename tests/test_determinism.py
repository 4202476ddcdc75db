"""Running a notebook twice gives the same sanitised outputs (seeded, deterministic stand-ins)."""

import configparser
import json
import os
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "solutions" / "00_setup_check.ipynb"

pytestmark = pytest.mark.slow


def _sanitisers():
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "tests" / "nbval_sanitize.cfg")
    return [(re.compile(cfg[s]["regex"]), cfg[s]["replace"]) for s in cfg.sections()]


def _outputs(nb) -> list[str]:
    subs = _sanitisers()
    out = []
    for cell in nb.cells:
        if cell.cell_type != "code" or "NBVAL_IGNORE_OUTPUT" in cell.source:
            continue
        for o in cell.outputs:
            if o.output_type == "stream":
                text = o.text
            elif o.output_type in ("display_data", "execute_result"):
                data = dict(o.data)
                data.pop("text/html", None)  # plotly's HTML carries a random div id
                data.pop("application/vnd.jupyter.widget-view+json", None)  # a random model id
                text = json.dumps(data, sort_keys=True)
            else:
                text = json.dumps(o, sort_keys=True, default=str)
            for pattern, repl in subs:
                text = pattern.sub(repl, text)
            out.append(text)
    return out


def _run() -> list[str]:
    from nbclient import NotebookClient

    from exercises_lib import kernel_wait

    kernel_wait.install()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    os.environ["MECHINTERP_SOURCE"] = os.environ.get("MECHINTERP_SOURCE", "standin")
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return _outputs(nb)


def test_notebook_outputs_are_identical_on_two_runs():
    first, second = _run(), _run()
    assert len(first) == len(second) and first, "no outputs compared"
    for a, b in zip(first, second):
        assert a == b
