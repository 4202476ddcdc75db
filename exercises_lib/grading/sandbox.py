"""Keeping a student's notebook away from the grader: environment, package, processes.

* :func:`clean_env`: the environment a notebook (and a grading worker) gets:
  an allow-list, so tokens and keys in the grader's environment are not
  passed on.
* :class:`PackageGuard`: a copy, in memory, of every file of the installed
  course package (and of Python's start-up hooks: ``*.pth`` files and
  ``sitecustomize``/``usercustomize`` in the site directories). After each
  notebook the grader compares the files with it; a change is reported and
  undone before anything else is graded.
* :class:`ProcessReaper`: on Linux the grading process becomes a "child
  subreaper", so a process a notebook detaches (``setsid``, double fork) is
  re-parented to the grader instead of escaping; after each notebook, every
  process it started is killed.

Taught in: the instructors' guide ("Checking students' work").
"""

from __future__ import annotations

import compileall
import ctypes
import os
import shutil
import signal
import site
import sys
import sysconfig
import tempfile
from pathlib import Path

import psutil

__all__ = ["clean_env", "PackageGuard", "ProcessReaper", "make_undumpable", "TAG_VARIABLE"]

#: Environment variable that marks every process of one notebook's run.
TAG_VARIABLE = "MECHINTERP_GRADE_TAG"

_KEEP = {
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
    "VIRTUAL_ENV", "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS", "TORCH_HOME", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE",
    "TRANSFORMERS_CACHE", "TRANSFORMERS_OFFLINE", "PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG",
}
_KEEP_PREFIXES = ("LC_", "XDG_", "CUDA_", "MECHINTERP_")
#: Never passed on, whatever their prefix.
_DROP = {"MECHINTERP_CHECKS_RAISE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"}


def clean_env(extra: dict[str, str] | None = None, keep: tuple[str, ...] = ()) -> dict[str, str]:
    """The grader's environment reduced to an allow-list, plus ``extra``.

    Kept: locale, paths, thread counts, the Hugging Face and torch cache
    locations, ``CUDA_*``, ``XDG_*`` and ``MECHINTERP_*`` (except
    ``MECHINTERP_CHECKS_RAISE``), and the names in ``keep``. Everything else
    (tokens, keys, passwords, cloud credentials...) is left out.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if (k in _KEEP or k.startswith(_KEEP_PREFIXES) or k in keep) and k not in _DROP
    }
    env.update(extra or {})
    return env


# ---------------------------------------------------------------------------
# The installed package
# ---------------------------------------------------------------------------


def _site_dirs() -> list[Path]:
    dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    try:
        dirs.update(site.getsitepackages())
    except AttributeError:  # some virtualenvs
        pass
    user = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    if user:
        dirs.add(user)
    return sorted(Path(d) for d in dirs if d and Path(d).is_dir())


class PackageGuard:
    """The files of a package directory and of Python's start-up hooks, kept in memory.

    ``changes()`` lists what differs now (added, changed, removed files);
    ``restore()`` puts the files back as they were. Compiled files
    (``__pycache__``) are compiled first, so that no ordinary import writes
    one later, and only this interpreter's (``cpython-3XY``) are watched.
    """

    def __init__(self, root: str | Path, *, hooks: bool = True):
        self.root = Path(root).resolve()
        self.hooks = hooks
        compileall.compile_dir(str(self.root), quiet=2, force=False)
        self.files: dict[Path, bytes] = {p: p.read_bytes() for p in self._paths()}

    def _paths(self) -> list[Path]:
        tag = sys.implementation.cache_tag
        paths = []
        for dirpath, _dirnames, filenames in os.walk(self.root):
            in_cache = os.path.basename(dirpath) == "__pycache__"
            for name in filenames:
                if in_cache and f".{tag}." not in name:
                    continue  # another interpreter's compiled files
                paths.append(Path(dirpath) / name)
        if self.hooks:
            for d in _site_dirs():
                for p in d.iterdir():
                    if p.suffix == ".pth" or p.name in ("sitecustomize.py", "usercustomize.py"):
                        if p.is_file():
                            paths.append(p)
        return sorted(paths)

    def changes(self) -> list[str]:
        """What differs from the snapshot: ``["added <path>", "changed <path>", ...]``."""
        now = self._paths()
        out = []
        for p in now:
            if p not in self.files:
                out.append(f"added {self._name(p)}")
            else:
                try:
                    if p.read_bytes() != self.files[p]:
                        out.append(f"changed {self._name(p)}")
                except OSError:
                    out.append(f"unreadable {self._name(p)}")
        seen = set(now)
        out += [f"removed {self._name(p)}" for p in self.files if p not in seen]
        return out

    def restore(self) -> Path | None:
        """Remove added files and write back changed or removed ones.

        Nothing is lost: the added and changed files are first copied to a new
        folder (returned; ``None`` when nothing had to be undone), e.g. an edit
        someone made to a checkout of the course while it was grading.
        """
        backup = None

        def keep(p: Path) -> None:
            nonlocal backup
            if backup is None:
                backup = Path(tempfile.mkdtemp(prefix="mechinterp-grader-undone-"))
            target = backup / self._name(p).lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copy2(p, target)
            except OSError:
                pass

        for p in self._paths():
            if p not in self.files:
                keep(p)
                p.unlink(missing_ok=True)
        for p, data in self.files.items():
            try:
                if p.read_bytes() == data:
                    continue
                keep(p)
            except OSError:
                pass
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + ".grader-restore")
            tmp.write_bytes(data)
            os.replace(tmp, p)
        return backup

    def _name(self, p: Path) -> str:
        try:
            return f"exercises_lib/{p.relative_to(self.root)}"
        except ValueError:
            return str(p)


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


def _prctl(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _is_subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        flag = ctypes.c_int(0)
        return libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) == 0 and bool(flag.value)
    except (OSError, AttributeError):
        return False


def make_undumpable() -> bool:
    """Linux: forbid other processes of this user to attach to this one (ptrace, /proc/PID/mem)."""
    return _prctl(_PR_SET_DUMPABLE, 0)


def _kill(procs: list[psutil.Process]) -> int:
    """SIGKILL each process (and whatever descends from it); reap our children. Returns how many."""
    everyone: dict[int, psutil.Process] = {}
    for p in procs:
        try:
            everyone[p.pid] = p
            for c in p.children(recursive=True):
                everyone[c.pid] = c
        except psutil.Error:
            continue
    for p in everyone.values():
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(list(everyone.values()), timeout=5)
    return len(everyone)


class ProcessReaper:
    """Find and kill every process a notebook run started, wherever it went.

    Used as a context manager around a grading run: on Linux the current
    process is a child subreaper inside it (an orphan is re-parented here, not
    to init), and on leaving it every process that appeared under it and is
    still alive is killed.
    """

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.before: set[int] = set()
        self.was_subreaper = False
        self.subreaper = False

    def __enter__(self) -> "ProcessReaper":
        self.before = {p.pid for p in self.me.children()}
        self.was_subreaper = _is_subreaper()
        self.subreaper = self.was_subreaper or _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        return self

    def __exit__(self, *exc) -> None:
        self.kill_strays(keep=set())
        if self.subreaper and not self.was_subreaper:
            _prctl(_PR_SET_CHILD_SUBREAPER, 0)

    def kill_run(self, tag: str, *, session: int | None = None, keep: set[int], strays: bool) -> int:
        """Kill everything of one notebook's run; return how many processes were alive.

        The run's processes are those in ``session`` (the executor started
        one of its own; its id is the executor's pid), those whose
        environment carries ``tag``, and, when ``strays``, every orphan
        re-parented to us that is not in ``keep``.
        """
        victims: dict[int, psutil.Process] = {}
        if session is not None:
            try:
                os.killpg(session, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for p in self._mine():
            try:
                if (session is not None and os.getsid(p.pid) == session) or p.environ().get(TAG_VARIABLE) == tag:
                    victims[p.pid] = p
            except (psutil.Error, OSError):
                continue
        if strays:
            for p in self._strays(keep):
                victims[p.pid] = p
        for pid in list(keep) + [os.getpid()]:
            victims.pop(pid, None)
        return _kill(list(victims.values()))

    def kill_strays(self, keep: set[int]) -> int:
        """Kill processes re-parented to us (orphans of a notebook) that are not in ``keep``."""
        return _kill(self._strays(keep))

    def _strays(self, keep: set[int]) -> list[psutil.Process]:
        try:
            kids = self.me.children()
        except psutil.Error:
            return []
        return [p for p in kids if p.pid not in self.before and p.pid not in keep]

    @staticmethod
    def _mine() -> list[psutil.Process]:
        """This user's processes."""
        uid = os.getuid() if hasattr(os, "getuid") else None
        out = []
        for p in psutil.process_iter(["uids"]):
            try:
                if uid is None or (p.info["uids"] and p.info["uids"].real == uid):
                    out.append(p)
            except psutil.Error:
                continue
        return out
