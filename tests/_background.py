"""Long subprocess jobs of the suite, started when the session starts and run beside it.

Some tests only wait for a process they start (a notebook executed through the
real path, an exercise notebook run blank, a fresh install): the suite's own
process is mostly idle meanwhile, and the unit tests and nbval keep one core
busy while the other waits. So a module may define

    def background_jobs() -> dict[str, Callable[[Path], object]]

(job id -> function of a private temporary folder). ``tests/conftest.py``
calls it for every selected module once collection is done, and every job
starts on a pool of one worker per core, longest first (the order the modules
give). A test reads its job's result with :func:`result`, which waits for it
(the exception of a job is raised there). Running one test alone starts only
its module's jobs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

_pool: ThreadPoolExecutor | None = None
_jobs: dict[str, Future] = {}
_root: Path | None = None


def workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def start(jobs: dict[str, Callable[[Path], object]]) -> None:
    """Submit ``jobs`` (those not started yet) to the shared pool."""
    global _pool, _root
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="suite-background")
        _root = Path(tempfile.mkdtemp(prefix="mechinterp-suite-"))
    for job_id, fn in jobs.items():
        if job_id in _jobs:
            continue
        folder = _root / "".join(c if c.isalnum() or c in "-_." else "-" for c in job_id)
        folder.mkdir(parents=True, exist_ok=True)
        _jobs[job_id] = _pool.submit(fn, folder)


def result(job_id: str, jobs: Callable[[], dict[str, Callable[[Path], object]]] | None = None):
    """The result of ``job_id``, waiting for it; ``jobs`` (the module's ``background_jobs``) starts it if
    nothing did (a module imported outside the usual collection)."""
    if job_id not in _jobs:
        if jobs is None:
            raise KeyError(f"no background job {job_id!r} was started")
        start(jobs())
    return _jobs[job_id].result()


def stop() -> None:
    """Cancel the jobs that did not start, wait for the running ones, remove the temporary folder."""
    global _pool, _root
    if _pool is not None:
        _pool.shutdown(wait=True, cancel_futures=True)
        _pool = None
    if _root is not None:
        shutil.rmtree(_root, ignore_errors=True)
        _root = None
    _jobs.clear()
