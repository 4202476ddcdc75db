"""Executing a student's notebook, and taking its exercises' functions out of the kernel.

``python -m exercises_lib.grading.kernel SPEC.json`` is the *executor*: the
grader starts it in a temporary folder, in a session of its own, with a clean
environment. It runs the notebook top to bottom in a fresh kernel (errors do
not stop the run; a per-cell timeout and an overall time limit do), then one
last cell that calls :func:`extract_functions` in the kernel, and writes the
executed notebook and what that cell produced into the folder.

Nothing written here is trusted by the grader: the kernel runs the student's
code and could write anything in its place. The grader only reads the
functions to run them elsewhere, and the executed notebook to say why an
exercise was not run.

Taught in: the instructors' guide ("Checking students' work").
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import pickle
import re
import sys
import time
import types
from pathlib import Path
from typing import Any

__all__ = ["extract_functions", "extraction_source", "GradingKernelManager", "main"]

#: Files the extraction cell writes into the notebook's folder.
FUNCTIONS_FILE = "grader-functions.pkl"
MANIFEST_FILE = "grader-manifest.json"
#: Largest serialised function the grader accepts (it pulls in the globals it uses).
MAX_FUNCTION_BYTES = 256 * 2**20


# ---------------------------------------------------------------------------
# In the student's kernel
# ---------------------------------------------------------------------------


class _TooLarge(Exception):
    pass


class _LimitedFile(io.RawIOBase):
    def __init__(self, limit: int):
        self.buf = io.BytesIO()
        self.limit = limit

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if self.buf.tell() + len(b) > self.limit:
            raise _TooLarge()
        return self.buf.write(b)


def _unwrap(obj: Any) -> Any:
    """The learner's function behind what ``check()`` returned (``.submitted``)."""
    for _ in range(5):
        inner = getattr(obj, "submitted", None)
        if inner is None or inner is obj:
            break
        obj = inner
    return obj


def _dumps(obj: Any, models: list) -> bytes:
    """cloudpickle ``obj`` by value; a torch module becomes a placeholder.

    A course model (it has ``course_name``) is recorded as
    ``("course-model", name, is_standin)`` and replaced in the grader by the
    grader's own copy; any other ``torch.nn.Module`` as ``("module", type)``,
    which fails with a message if the function uses it.
    """
    import cloudpickle
    import torch

    class Pickler(cloudpickle.Pickler):
        def persistent_id(self, x):
            if isinstance(x, torch.nn.Module):
                name = getattr(x, "course_name", None)
                if isinstance(name, str):
                    key = ("course-model", name, bool(getattr(x, "is_standin", False)))
                    if key not in models:
                        models.append(key)
                    return key
                return ("module", type(x).__name__)
            return None

    f = _LimitedFile(MAX_FUNCTION_BYTES)
    Pickler(f, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return f.buf.getvalue()


def function_key(f: types.FunctionType) -> str:
    return f"{f.__qualname__}:{f.__code__.co_firstlineno}"


def notebook_functions(fn: Any, depth: int = 3) -> list[types.FunctionType]:
    """``fn`` and the functions it calls by global name, ``depth`` levels down."""
    seen: dict[int, types.FunctionType] = {}
    todo = [(fn, 0)]
    while todo:
        f, d = todo.pop()
        f = getattr(f, "__wrapped__", f)
        if not isinstance(f, types.FunctionType) or id(f) in seen:
            continue
        seen[id(f)] = f
        if d < depth:
            todo += [(f.__globals__.get(n), d + 1) for n in f.__code__.co_names]
    return list(seen.values())


def extract_functions(namespace: dict, names: list[str], folder: str) -> None:
    """Serialise ``namespace[name]`` for each exercise ``name`` into ``folder``.

    Writes :data:`FUNCTIONS_FILE` (a pickled ``{"functions": {name: bytes},
    "sources": {cell file: lines}, "files": {function: cell file}}``) and
    :data:`MANIFEST_FILE` (JSON: which names were found, which could not be
    serialised and why, which course models the functions refer to).
    """
    blobs: dict[str, bytes] = {}
    info: dict[str, dict] = {}
    models: list = []
    for name in names:
        if name not in namespace:
            info[name] = {"found": False}
            continue
        obj = _unwrap(namespace[name])
        if not callable(obj):
            info[name] = {"found": True, "error": f"`{name}` is {type(obj).__name__}, not a function"}
            continue
        try:
            blobs[name] = _dumps(obj, models)
            info[name] = {"found": True}
        except _TooLarge:
            info[name] = {"found": True, "error": (
                f"`{name}` pulls in more than {MAX_FUNCTION_BYTES // 2**20} MB of notebook globals "
                "(a cache or a large tensor it uses without taking it as an argument)")}
        except Exception as err:  # noqa: BLE001 - reported, never raised
            info[name] = {"found": True, "error": f"`{name}` could not be taken out of the notebook: {type(err).__name__}: {err}"[:500]}
    # The cells' source lines and which cell each function comes from (cloudpickle
    # drops code objects' file names), so that a traceback in the grader can quote
    # the learner's line.
    import linecache

    cells = re.compile(r"[/\\]ipykernel_\d+[/\\]\d+\.py$")
    sources = {f: list(v[2]) for f, v in list(linecache.cache.items()) if isinstance(f, str) and cells.search(f)}
    files: dict[str, str] = {}
    for name in blobs:
        for f in notebook_functions(_unwrap(namespace[name])):
            if f.__code__.co_filename in sources:
                files[function_key(f)] = f.__code__.co_filename
    table = {"functions": blobs, "sources": sources, "files": files}
    Path(folder, FUNCTIONS_FILE).write_bytes(pickle.dumps(table, protocol=pickle.HIGHEST_PROTOCOL))
    manifest = {"functions": info, "models": [list(m) for m in models]}
    Path(folder, MANIFEST_FILE).write_text(json.dumps(manifest))


def extraction_source(names: list[str], folder: str) -> str:
    """The code of the cell the grader appends to the notebook."""
    return (
        "# Appended by the grader: serialise the exercises' functions.\n"
        "from exercises_lib.grading.kernel import extract_functions as __grader_extract\n"
        f"__grader_extract(globals(), {names!r}, {folder!r})\n"
    )


# ---------------------------------------------------------------------------
# The executor
# ---------------------------------------------------------------------------


def _kernel_manager_class():
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from traitlets import Instance, default

    from exercises_lib.kernel_wait import ChunkedAsyncKernelManager

    class FixedKernelSpecs(KernelSpecManager):
        """Always this interpreter's ipykernel: a kernel spec planted in a Jupyter
        folder by an earlier notebook cannot replace the kernel."""

        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            return KernelSpec(
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                display_name="Python 3 (grader)", language="python", resource_dir="", metadata={},
            )

    class GradingKernelManager(ChunkedAsyncKernelManager):
        kernel_spec_manager = Instance(KernelSpecManager)

        @default("kernel_spec_manager")
        def _fixed_specs(self):
            return FixedKernelSpecs()

    return GradingKernelManager


GradingKernelManager = None  # set on first use (importing jupyter_client is not free)


async def _execute(spec: dict) -> dict:
    import nbformat

    global GradingKernelManager
    GradingKernelManager = GradingKernelManager or _kernel_manager_class()
    folder = Path(spec["folder"])
    nb = nbformat.read(spec["notebook"], as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(extraction_source(spec["names"], str(folder))))
    deadline = time.monotonic() + spec["time_limit"]
    status: dict[str, Any] = {"stopped": None, "extracted": False}
    # A kernel that dies before it answers its first request has run none of the notebook: an
    # infrastructure failure (seen on a loaded machine), not the learner's. It gets one more start.
    for attempt in range(2):
        progress = {"cells": 0}
        status = await _run_cells(nb, spec, folder, deadline, progress)
        if progress["cells"] or not status["stopped"] or attempt:
            break
    nb.cells.pop()
    nbformat.write(nb, str(folder / spec["executed"]))
    return status


async def _run_cells(nb, spec: dict, folder: Path, deadline: float, progress: dict) -> dict:
    """Execute ``nb``'s cells in one kernel (the last cell: the extraction); ``progress["cells"]`` counts
    the cells started, so that a kernel that never ran one can be told apart."""
    from nbclient.exceptions import DeadKernelError

    from exercises_lib.kernel_wait import notebook_client

    client = notebook_client(
        nb, timeout=spec["timeout"], kernel_name="python3", allow_errors=True,
        interrupt_on_timeout=True, kernel_manager_class=GradingKernelManager,
        error_on_timeout={"ename": "CellTimeoutError", "evalue": "the cell ran past its time limit and was interrupted", "traceback": []},
        resources={"metadata": {"path": str(folder)}},
    )
    status: dict[str, Any] = {"stopped": None, "extracted": False}
    limit_reached = f"the notebook's time limit ({spec['time_limit']:.0f} s) was reached"
    last = len(nb.cells) - 1
    try:
        async with client.async_setup_kernel(cwd=str(folder)):
            for index, cell in enumerate(nb.cells[:last]):
                left = deadline - time.monotonic()
                if left <= 0:
                    status["stopped"] = f"{limit_reached} before cell {index}"
                    break
                # A cell running past its timeout is interrupted and gets an error output.
                client.timeout = max(1, math.ceil(min(spec["timeout"], left)))
                started = time.monotonic()
                progress["cells"] += 1
                await client.async_execute_cell(cell, index)
                if left < spec["timeout"] and time.monotonic() - started >= client.timeout:
                    status["stopped"] = f"{limit_reached} in cell {index}, which was interrupted"
                    break
            client.timeout = spec["extract_timeout"]
            progress["cells"] += 1
            await client.async_execute_cell(nb.cells[last], last)
            status["extracted"] = Path(folder, MANIFEST_FILE).is_file()
    except DeadKernelError:
        status["stopped"] = "the kernel died (out of memory, or the notebook ended its own process)"
    except Exception as err:  # noqa: BLE001 - the grader reports it
        status["stopped"] = f"the notebook could not be executed: {type(err).__name__}: {err}"[:500]
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    status = asyncio.run(_execute(spec))
    Path(spec["folder"], spec["status"]).write_text(json.dumps(status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
