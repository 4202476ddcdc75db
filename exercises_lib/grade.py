"""Grade students' notebooks: ``python -m exercises_lib.grade NOTEBOOK [NOTEBOOK ...] [-j N]``.

The exercises a notebook must contain come from the course (the checks its
chapter registers), never from the notebook. Each notebook is executed in a
fresh kernel, in a temporary folder, in a session of its own, with an
environment stripped of the grader's secrets, a per-cell timeout
(``--timeout``) and an overall time limit (``--time-limit``); errors do not
stop the run. A cell the grader appends takes each exercise's function out of
the kernel. Then every process the notebook started is killed, the installed
course package is checked against the copy taken at the start (and restored
if the notebook changed it), and a grading worker that the notebook never
touched runs the course's own check on each function
(:mod:`exercises_lib.grading.worker`). The report is written only once every
process of the notebook is dead.

Every exercise gets one status: ``passed``, ``failed`` (with the check's whole
diagnosis), ``not attempted``, ``not run``, ``missing``, ``flagged`` or
``error`` (see :mod:`exercises_lib.grading.report`). The table is printed and
the same goes to a JSON file following
``exercises_lib/grading/report.schema.json`` (``--json``; default
``<notebook>.grade.json`` for one notebook, ``grades.json`` for several).
Exit status: 0 when every exercise of every notebook passed, 1 otherwise,
2 for bad arguments.

Several notebooks are graded in parallel with ``-j N``; each parallel job has
one worker, which loads each model once.

Taught in: the instructors' guide (book/instructors.md, "Checking students' work").
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import exercises_lib
from exercises_lib.chapters import CHAPTERS, Chapter, chapter_of_notebook
from exercises_lib.grading import report as _report
from exercises_lib.grading.kernel import FUNCTIONS_FILE, MANIFEST_FILE
from exercises_lib.grading.sandbox import TAG_VARIABLE, PackageGuard, ProcessReaper, clean_env
from exercises_lib.grading.worker import recv, send

__all__ = ["grade_notebooks", "grade_notebook", "format_table", "main"]

format_table = _report.format_table

#: Seconds the appended extraction cell may take.
EXTRACT_TIMEOUT = 120
_MAX_READ = 1 << 30
_WORKER_BOOT = (
    "import sys, json; sys.path[:0] = json.loads(sys.argv[1]); "
    "from exercises_lib.grading.worker import main; main()"
)


class GradingError(RuntimeError):
    """The grader could not start (a problem of the grading machine, not of a notebook)."""


# ---------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------


class _Worker:
    """A grading worker process (see exercises_lib.grading.worker) and its pipes."""

    def __init__(self, config: dict, folder: Path):
        self.config = config
        self.folder = folder
        self.proc: subprocess.Popen | None = None
        self.checks: list[dict] = []

    def start(self) -> None:
        pkg_parent = str(Path(exercises_lib.__file__).resolve().parent.parent)
        path = [pkg_parent] + [p for p in sys.path if p and os.path.exists(p) and p != pkg_parent]
        env = clean_env({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
        self.log = open(self.folder / f"worker-{secrets.token_hex(4)}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WORKER_BOOT, json.dumps(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env,
            cwd=str(self.folder), bufsize=0, start_new_session=True,
        )
        try:
            send(self.proc.stdin, self.config)
            hello = self.answer(timeout=600)
        except (EOFError, TimeoutError, OSError) as err:
            self.stop()
            raise GradingError(f"the grading worker did not start ({type(err).__name__}): {self.tail()}") from err
        self.checks = hello["checks"]

    def ask(self, header: dict, payload: bytes = b"") -> None:
        assert self.proc is not None
        send(self.proc.stdin, header, payload)

    def answer(self, timeout: float) -> dict:
        assert self.proc is not None
        head, _ = recv(self.proc.stdout, deadline=time.monotonic() + timeout)
        if not head.get("ok"):
            raise GradingError(f"the grading worker failed: {head.get('error')}")
        return head

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            pass
        self.proc = None
        self.log.close()

    def tail(self) -> str:
        try:
            return Path(self.log.name).read_bytes()[-1500:].decode(errors="replace")
        except OSError:
            return ""


# ---------------------------------------------------------------------------
# One notebook
# ---------------------------------------------------------------------------


def _defines(nb_source: str, fname: str) -> bool:
    return bool(re.search(rf"^\s*(async\s+)?def\s+{re.escape(fname)}\s*\(|^\s*{re.escape(fname)}\s*(:[^=\n]*)?=(?!=)", nb_source, re.M))


def _notebook_text(path: Path) -> str:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return "\n".join(
            "".join(c.get("source", "")) if isinstance(c.get("source"), list) else str(c.get("source", ""))
            for c in data.get("cells", []) if c.get("cell_type") == "code"
        )
    except (OSError, ValueError, AttributeError):
        return ""


def _first_error(executed: Path) -> str | None:
    try:
        if executed.stat().st_size > _MAX_READ:
            return None
        data = json.loads(executed.read_text(encoding="utf-8"))
        for cell in data.get("cells", []):
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error" and out.get("ename") != "NotImplementedError":
                    return f"{out.get('ename')}: {out.get('evalue')}"[:300]
    except (OSError, ValueError, AttributeError):
        return None
    return None


def _read_json(path: Path) -> Any:
    try:
        if path.stat().st_size > 10 * 2**20:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class _Run:
    """State shared by the parallel jobs of one grading run."""

    def __init__(self, opts: dict, guard: PackageGuard, reaper: ProcessReaper, checks: list[dict]):
        self.opts = opts
        self.guard = guard
        self.reaper = reaper
        self.checks = checks
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.since_clean: set[str] = set()
        self.changes: dict[str, list[str]] = {}
        self.workers: set[int] = set()
        self.leaders: set[int] = set()

    def keep(self) -> set[int]:
        return self.workers | self.leaders

    def verify(self, key: str) -> None:
        """Compare the package with its snapshot; on a change, restore it and note the suspects."""
        with self.lock:
            changes = self.guard.changes()
            if changes:
                kept = self.guard.restore()
                if kept is not None:
                    changes = changes + [f"the files as they were before this undo are kept in {kept}"]
                suspects = self.since_clean | {key}
                for s in suspects:
                    self.changes.setdefault(s, [])
                    self.changes[s] += [c for c in changes if c not in self.changes[s]]
                self.changes.setdefault("__suspects__", []).append(", ".join(sorted(suspects)))
            self.since_clean = set(self.running)


def _expected(checks: list[dict], module: str) -> list[str]:
    return [c["name"] for c in checks if c["name"].startswith(module + ".")]


def _grade_one(path: Path, chapter: Chapter, worker: _Worker, run: _Run, key: str) -> dict:
    opts = run.opts
    start = time.monotonic()
    expected = _expected(run.checks, chapter.module)
    fnames = [n.split(".", 1)[1] for n in expected]
    folder = Path(tempfile.mkdtemp(prefix="mechinterp-grade-"))
    tag = secrets.token_hex(12)
    execution: dict[str, Any] = {"stopped": None, "first_error": None, "processes_killed": 0, "package_changes": []}
    flags: list[str] = []
    results: dict[str, dict] = {}
    extracted = False
    try:
        nb_copy = folder / path.name
        shutil.copyfile(path, nb_copy)
        spec = {
            "folder": str(folder), "notebook": str(nb_copy), "names": fnames, "executed": "executed.ipynb",
            "status": "status.json", "timeout": opts["timeout"], "time_limit": opts["time_limit"],
            "extract_timeout": EXTRACT_TIMEOUT,
        }
        spec_path = folder / "grader-spec.json"
        spec_path.write_text(json.dumps(spec))
        extra = {
            TAG_VARIABLE: tag,
            "IPYTHONDIR": str(folder / ".ipython"),
            "JUPYTER_RUNTIME_DIR": str(folder / ".jupyter" / "runtime"),
            "JUPYTER_DATA_DIR": str(folder / ".jupyter" / "data"),
            "JUPYTER_CONFIG_DIR": str(folder / ".jupyter" / "config"),
            "MPLCONFIGDIR": str(folder / ".matplotlib"),
            "JUPYTER_PLATFORM_DIRS": "1",
        }
        if opts["kernel_threads"]:
            extra["OMP_NUM_THREADS"] = str(opts["kernel_threads"])
        if opts["source_env"]:
            extra["MECHINTERP_SOURCE"] = opts["source_env"]
        with run.lock:
            run.running.add(key)
            run.since_clean.add(key)
        log = open(folder / "executor.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "exercises_lib.grading.kernel", str(spec_path)],
            cwd=str(folder), env=clean_env(extra), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        with run.lock:
            run.leaders.add(proc.pid)
        hard_limit = opts["time_limit"] + EXTRACT_TIMEOUT + 120
        try:
            proc.wait(timeout=hard_limit)
        except subprocess.TimeoutExpired:
            execution["stopped"] = f"the notebook's time limit ({opts['time_limit']:.0f} s) was reached; the kernel was killed"
        # Nothing of the notebook survives this line: its process group, its descendants,
        # anything marked with its tag and (one job at a time) any orphan.
        execution["processes_killed"] = run.reaper.kill_run(tag, session=proc.pid, keep=run.keep(), strays=opts["jobs"] == 1)
        proc.wait()
        log.close()
        with run.lock:
            run.leaders.discard(proc.pid)
            run.running.discard(key)
        run.verify(key)

        status = _read_json(folder / "status.json")
        if isinstance(status, dict) and execution["stopped"] is None:
            stopped = status.get("stopped")
            execution["stopped"] = str(stopped)[:500] if stopped else None
        execution["first_error"] = _first_error(folder / "executed.ipynb")
        manifest = _read_json(folder / MANIFEST_FILE)
        table = b""
        fpath = folder / FUNCTIONS_FILE
        if isinstance(manifest, dict) and fpath.is_file() and fpath.stat().st_size <= _MAX_READ:
            table = fpath.read_bytes()
            extracted = True
        elif execution["stopped"] is None:
            execution["stopped"] = "the grader's last cell could not read the functions out of the kernel"

        if extracted:
            try:
                worker.ask({"op": "judge", "module": chapter.module, "manifest": manifest, "tag": tag}, table)
                results = worker.answer(timeout=len(expected) * (opts["check_timeout"] + 60) + 600)["results"]
            except (EOFError, TimeoutError, OSError, GradingError) as err:
                died = isinstance(err, (EOFError, OSError))
                why = ("the grading worker was killed while this notebook's functions ran"
                       if died else f"grading did not finish in time ({err})")
                if died:
                    flags.append(why)
                results = {n: {"status": "flagged" if died else "error", "message": why, "check_passed": None, "calls": []}
                           for n in expected}
                with run.lock:
                    run.workers.discard(worker.proc.pid if worker.proc else -1)
                worker.stop()
                run.verify(key)
                worker.start()
                with run.lock:
                    run.workers.add(worker.proc.pid)
            # Whatever the learner's functions started while the worker ran them.
            execution["processes_killed"] += run.reaper.kill_run(tag, keep=run.keep(), strays=opts["jobs"] == 1)
            run.verify(key)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    with run.lock:
        changes = list(run.changes.get(key, []))
    if changes:
        execution["package_changes"] = changes
        flags.append(
            "the course package changed while this notebook ran ("
            + "; ".join(changes[:5]) + ("; ..." if len(changes) > 5 else "")
            + "); it was restored" + ("" if opts["jobs"] == 1 else
                                       " (with several notebooks in parallel, it may be one graded at the same time: re-grade it with -j 1)")
        )

    source = _notebook_text(path)
    exercises = []
    for name, fname in zip(expected, fnames):
        r = results.get(name) or {"absent": True}
        calls = [c for c in r.get("calls", []) if isinstance(c, str)]
        if r.get("absent"):
            if not extracted:
                status, message = "not run", f"the notebook's functions could not be read ({execution['stopped'] or 'no reason given'})"
            elif not _defines(source, fname):
                status, message = "missing", f"the notebook defines no `{fname}`: the exercise's cell was deleted or the function renamed"
            else:
                why = execution["stopped"] or (f"first error: {execution['first_error']}" if execution["first_error"] else None)
                status = "not run" if why else "missing"
                message = f"`{fname}` was not defined when the notebook ended" + (f" ({why})" if why else "")
            check_passed = None
        else:
            status = r["status"] if r.get("status") in _report.STATUSES else "error"
            message = str(r.get("message", ""))
            check_passed = r.get("check_passed")
        own = name in calls
        if own:
            ref = f"exercises_lib.{name}"
            if status == "passed":
                status = "flagged"
                message = f"calls the reference: the function passes only by calling the course's own `{ref}`; the exercise asks for your own implementation"
            else:
                message = f"(the function calls the course's own `{ref}`) " + message
        if status == "passed" and flags:
            status, message = "flagged", "the check passed, but " + flags[0]
        exercises.append({
            "name": name, "function": fname, "status": status, "message": "" if status == "passed" else message,
            "check_passed": check_passed if isinstance(check_passed, bool) else None,
            "calls_reference": own, "uses_course": [c for c in calls if c != name],
        })
    summary = _report.summarise(exercises)
    return {
        "notebook": str(path),
        "chapter": {"number": chapter.number, "slug": chapter.slug, "module": chapter.module, "title": chapter.title},
        "seconds": round(time.monotonic() - start, 1),
        "execution": execution,
        "flags": flags,
        "summary": summary,
        "all_passed": bool(exercises) and summary["passed"] == len(exercises),
        "exercises": exercises,
    }


# ---------------------------------------------------------------------------
# A class
# ---------------------------------------------------------------------------


def grade_notebooks(
    paths: list[str | Path],
    *,
    jobs: int = 1,
    timeout: int = 900,
    time_limit: int = 1800,
    check_timeout: int = 300,
    source: str | None = None,
    chapter: int | None = None,
    progress: bool = True,
) -> dict:
    """Grade ``paths`` (``jobs`` at a time); return the report (see the JSON schema).

    ``chapter`` forces the chapter (by number) when the files are not named
    after it. ``source`` (``auto``, ``real``, ``standin``) is the models' source.
    """
    from tqdm.auto import tqdm

    started = time.monotonic()
    paths = [Path(p) for p in paths]
    chapters = [CHAPTERS[chapter] if chapter is not None else chapter_of_notebook(str(p)) for p in paths]
    jobs = max(1, min(int(jobs), len(paths) or 1))
    source_env = source if source and source != "auto" else None
    worker_source = source or os.environ.get("MECHINTERP_SOURCE") or "auto"
    threads = None
    if "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // jobs)
    opts = {
        "jobs": jobs, "timeout": timeout, "time_limit": time_limit, "check_timeout": check_timeout,
        "source_env": source_env, "kernel_threads": threads,
    }
    folder = Path(tempfile.mkdtemp(prefix="mechinterp-grader-"))
    guard = PackageGuard(Path(exercises_lib.__file__).parent)
    modules = sorted({c.module for c in chapters})
    workers = [_Worker({"source": worker_source, "check_timeout": check_timeout}, folder) for _ in range(jobs)]
    notebooks: list[dict | None] = [None] * len(paths)
    with ProcessReaper() as reaper:
        try:
            # Every worker imports the package and loads its models before any notebook runs.
            with ThreadPoolExecutor(jobs) as pool:
                list(pool.map(lambda w: w.start(), workers))
            for w in workers:
                w.ask({"op": "prepare", "modules": modules})
            for w in workers:
                w.answer(timeout=1800)
            if guard.changes():
                raise GradingError("the course package changed while the grader started: " + "; ".join(guard.changes()[:5]))
            run = _Run(opts, guard, reaper, workers[0].checks)
            run.workers = {w.proc.pid for w in workers if w.proc}
            free: queue.Queue = queue.Queue()
            for w in workers:
                free.put(w)
            bar = tqdm(total=len(paths), desc="grading", unit="notebook", disable=not progress)

            def task(i: int) -> None:
                w = free.get()
                try:
                    notebooks[i] = _grade_one(paths[i], chapters[i], w, run, key=f"{i}:{paths[i]}")
                finally:
                    free.put(w)
                    bar.update(1)

            with ThreadPoolExecutor(jobs) as pool:
                for f in [pool.submit(task, i) for i in range(len(paths))]:
                    f.result()
            bar.close()
        finally:
            for w in workers:
                if w.proc is not None:
                    try:
                        w.ask({"op": "quit"})
                    except OSError:
                        pass
                w.stop()
            shutil.rmtree(folder, ignore_errors=True)
    # Every process of every notebook is dead here (ProcessReaper.__exit__): the report is ours.
    return {
        "schema_version": 1,
        "grader": {
            "exercises_lib": exercises_lib.__version__, "python": sys.version.split()[0], "source": worker_source,
            "jobs": jobs, "timeout": timeout, "time_limit": time_limit, "check_timeout": check_timeout,
            "subreaper": reaper.subreaper,
        },
        "seconds": round(time.monotonic() - started, 1),
        "notebooks": notebooks,
    }


def grade_notebook(path: str | Path, *, timeout: int = 900, source: str | None = None, **kwargs) -> dict:
    """Grade one notebook; return its part of the report (``report["notebooks"][0]``)."""
    return grade_notebooks([path], timeout=timeout, source=source, progress=False, **kwargs)["notebooks"][0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Grade students' course notebooks.")
    parser.add_argument("notebooks", nargs="+", metavar="NOTEBOOK")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="notebooks graded in parallel (default 1)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell (default 900)")
    parser.add_argument("--time-limit", type=int, default=1800, help="seconds per notebook (default 1800)")
    parser.add_argument("--check-timeout", type=int, default=300,
                        help="seconds a learner's function may take on one check's inputs (default 300)")
    parser.add_argument("--chapter", type=int, choices=[c.number for c in CHAPTERS],
                        help="the chapter, when the files are not named after it")
    parser.add_argument("--json", help="where to write the JSON report (default: <notebook>.grade.json, or grades.json for several)")
    parser.add_argument("--source", choices=["auto", "real", "standin"], help="model source (default: auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    missing = [p for p in args.notebooks if not Path(p).is_file()]
    if missing:
        print("No such notebook: " + ", ".join(missing), file=sys.stderr)
        return 2
    if args.chapter is None:
        try:
            for p in args.notebooks:
                chapter_of_notebook(p)
        except ValueError as err:
            print(f"{err}. Name the chapter with --chapter N.", file=sys.stderr)
            return 2
    try:
        report = grade_notebooks(
            args.notebooks, jobs=args.jobs, timeout=args.timeout, time_limit=args.time_limit,
            check_timeout=args.check_timeout, source=args.source, chapter=args.chapter, progress=not args.quiet,
        )
    except GradingError as err:
        print(f"The grader could not run: {err}", file=sys.stderr)
        return 2
    print(_report.format_class(report))
    if args.json:
        out = Path(args.json)
    elif len(args.notebooks) == 1:
        out = Path(args.notebooks[0]).with_suffix(".grade.json")
    else:
        out = Path("grades.json")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    print(f"JSON report: {out}")
    return 0 if report["notebooks"] and all(nb["all_passed"] for nb in report["notebooks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
