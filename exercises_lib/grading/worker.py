"""The grading worker: the course's own checks, run where the notebook never was.

The grader starts one worker per parallel job, before any student notebook
runs, as a fresh interpreter (``python -I -S``: no ``PYTHON*`` variables, no
``.pth`` or ``sitecustomize`` start-up code) that imports the whole course
package at once and loads each model it needs once. It then answers requests
on a pipe:

``judge``
    The serialised functions of one notebook (bytes it never unpickles). For
    each exercise of the chapter, the worker forks a child; the child loads
    the learner's function (a course model it refers to becomes the worker's
    own model), runs it on the check's inputs and sends back its outputs only:
    tensors and plain values, read with ``torch.load(weights_only=True)``. The
    worker then runs the course's check (:func:`exercises_lib.checks.run_check`)
    with a stand-in function that returns those outputs, on its own inputs and
    its own reference. The learner's code never runs in the worker itself, so
    it cannot change the check that judges it.

While the learner's function runs, the child notes every call of a course
reference (by its code object, so ``D.f``, an alias, ``CHECKS[...].reference``
and a ``functools.partial`` are all seen): a function that calls its own
exercise's reference is flagged.

Taught in: the instructors' guide ("Checking students' work").
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
import os
import pickle
import pkgutil
import random
import re
import select
import signal
import struct
import sys
import threading
import time
from typing import Any, BinaryIO

__all__ = ["main", "send", "recv"]

_FRAME = struct.Struct("!Q")
#: Largest output a learner's function may send back for one exercise.
MAX_RESULT_BYTES = 512 * 2**20


# ---------------------------------------------------------------------------
# Framing (also used by the grader's side)
# ---------------------------------------------------------------------------


def send(stream: BinaryIO, header: dict, payload: bytes = b"") -> None:
    head = json.dumps(header).encode()
    stream.write(_FRAME.pack(len(head)) + head + _FRAME.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _read_exact(stream: BinaryIO, n: int, deadline: float | None = None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stream], [], [], left)[0]:
                raise TimeoutError("no answer in time")
        b = stream.read(n - got)
        if not b:
            raise EOFError("the other side closed the pipe")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def recv(stream: BinaryIO, deadline: float | None = None) -> tuple[dict, bytes]:
    """Read one message; ``deadline`` (``time.monotonic()``) needs an unbuffered stream."""
    head = json.loads(_read_exact(stream, _FRAME.unpack(_read_exact(stream, 8, deadline))[0], deadline))
    payload = _read_exact(stream, _FRAME.unpack(_read_exact(stream, 8, deadline))[0], deadline)
    return head, payload


# ---------------------------------------------------------------------------
# In the forked child: the learner's function runs here
# ---------------------------------------------------------------------------


class _MissingModule:
    """Stands for a torch module of the notebook that is not a course model."""

    def __init__(self, kind: str):
        self._kind = kind

    def _fail(self, *_a, **_k):
        raise RuntimeError(
            f"your function uses a torch module from the notebook's globals (a {self._kind}); "
            "the grader cannot take it out of the notebook: pass it to the function as an argument"
        )

    __call__ = _fail

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        self._fail()


class _ReferenceWatch:
    """Records the outermost course references called while it is active."""

    def __init__(self, codes: dict):
        self.codes = codes
        self.called: list[str] = []
        self._outer = None

    def _profile(self, frame, event, arg):
        if event == "call":
            name = self.codes.get(frame.f_code)
            if name is not None and self._outer is None:
                self._outer = frame
                if name not in self.called:
                    self.called.append(name)
        elif event == "return" and frame is self._outer:
            self._outer = None

    def __enter__(self):
        self._outer = None
        threading.setprofile(self._profile)
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]


def _safe(x: Any, depth: int = 0) -> Any:
    """The learner's output as tensors and plain values only (what the worker can read safely)."""
    import torch

    if depth > 20:
        return _opaque(x)
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.device.type == "meta":
            return _opaque(x, "a tensor on the meta device (it has no values)")
        if t.is_sparse or t.layout != torch.strided:
            t = t.to_dense()
        t = t.clone()  # not the whole storage of a view
        if t.device.type != "cpu":
            return {"__grader_device__": str(t.device), "tensor": t.cpu()}
        return t
    if type(x) in (bool, int, float, complex, str, bytes, type(None)):
        return x
    if isinstance(x, (torch.dtype, torch.Size)):
        return x
    if isinstance(x, bool):
        return bool(x)
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return float(x)
    if hasattr(x, "item") and hasattr(x, "dtype") and getattr(x, "shape", None) == ():  # NumPy scalars
        try:
            return _safe(x.item(), depth + 1)
        except Exception:  # noqa: BLE001
            return _opaque(x)
    if isinstance(x, (list, tuple)):
        items = [_safe(v, depth + 1) for v in x]
        return items if isinstance(x, list) else tuple(items)
    if isinstance(x, (set, frozenset)):
        items = {_safe(v, depth + 1) for v in x if isinstance(v, (bool, int, float, str, tuple, type(None)))}
        return items if len(items) == len(x) else _opaque(x)
    if isinstance(x, dict):
        keys_ok = all(isinstance(k, (bool, int, float, str, tuple, type(None))) for k in x)
        return {k: _safe(v, depth + 1) for k, v in x.items()} if keys_ok else _opaque(x)
    return _opaque(x)


def _opaque(x: Any, text: str | None = None) -> dict:
    try:
        r = text or repr(x)
    except Exception:  # noqa: BLE001
        r = "<unprintable>"
    return {"__grader_opaque__": type(x).__name__, "repr": r[:300]}


def _raised(name: str, err: BaseException) -> dict:
    try:
        from exercises_lib.checks import _student_error

        message = _student_error(name, err)
    except Exception:  # noqa: BLE001 - the harness's helper moved: a plainer message
        message = f"your function raised {type(err).__name__}: {err}"
    return {"kind": "raised", "message": str(message)[:2000], "not_implemented": isinstance(err, NotImplementedError)}


def _refile(fn: Any, files: dict) -> None:
    """Give the learner's functions back their cells' file names (for tracebacks)."""
    from exercises_lib.grading.kernel import function_key, notebook_functions

    def refiled(code, filename):
        consts = tuple(refiled(c, filename) if isinstance(c, type(code)) else c for c in code.co_consts)
        return code.replace(co_filename=filename, co_consts=consts)

    for f in notebook_functions(fn):
        filename = files.get(function_key(f))
        if filename and f.__code__.co_filename == "<dynamic-code>":
            f.__code__ = refiled(f.__code__, filename)


def _child(wfd: int, blob_table: bytes, check_name: str, fname: str, cases: list, placeholders, codes, tag: str) -> None:
    """Body of the forked child (never returns)."""
    result: dict
    try:
        os.setpgid(0, 0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        for fd in range(3, 1024):
            if fd != wfd:
                try:
                    os.close(fd)
                except OSError:
                    pass
        os.environ["MECHINTERP_GRADE_TAG"] = tag
        import numpy as np
        import torch

        random.seed(0)
        np.random.seed(0)
        torch.manual_seed(0)
        torch.set_grad_enabled(False)

        class Unpickler(pickle.Unpickler):
            def persistent_load(self, pid):
                if isinstance(pid, tuple) and len(pid) == 3 and pid[0] == "course-model":
                    return placeholders(str(pid[1]), bool(pid[2]))
                if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == "module":
                    return _MissingModule(str(pid[1]))
                raise pickle.UnpicklingError(f"unknown placeholder {pid!r}")

        # Unpickling runs code: that is why it happens here, in the throw-away child
        # that runs the learner's code anyway, and never in the worker.
        try:
            table = Unpickler(io.BytesIO(blob_table)).load()
            import linecache

            for filename, lines in dict(table.get("sources") or {}).items():
                linecache.cache[filename] = (sum(map(len, lines)), None, list(lines), filename)
            fn = Unpickler(io.BytesIO(table["functions"][fname])).load()
            _refile(fn, dict(table.get("files") or {}))
        except BaseException as err:  # noqa: BLE001
            result = {"error": f"your function could not be loaded outside the notebook ({type(err).__name__}: {err})"[:1000]}
        else:
            watch = _ReferenceWatch(codes)
            records = []
            for kwargs in cases:
                try:
                    with watch:
                        out = fn(**kwargs)
                except BaseException as err:  # noqa: BLE001 - SystemExit too: the learner's
                    records.append(_raised(check_name, err))
                    break
                try:
                    records.append({"kind": "ok", "value": _safe(out)})
                except Exception as err:  # noqa: BLE001
                    records.append({"kind": "ok", "value": _opaque(out, f"an output that could not be read ({err})")})
            result = {"records": records, "calls": watch.called}
        buf = io.BytesIO()
        try:
            torch.save(result, buf)
        except Exception as err:  # noqa: BLE001
            buf = io.BytesIO()
            torch.save({"error": f"your function's output could not be sent back ({type(err).__name__}: {err})"[:1000]}, buf)
        data = buf.getvalue()
        view = memoryview(data)
        while view:
            n = os.write(wfd, view)
            view = view[n:]
    finally:
        os._exit(0)


# ---------------------------------------------------------------------------
# In the worker: inputs, references and verdicts
# ---------------------------------------------------------------------------


class _Opaque:
    """An output of a type the grader does not read back; equal to nothing."""

    def __init__(self, text: str):
        self._text = text

    def __repr__(self) -> str:
        return self._text

    def __eq__(self, other) -> bool:
        return False

    __hash__ = object.__hash__


def _restore(x: Any, devices: list) -> Any:
    if isinstance(x, dict):
        if set(x) == {"__grader_opaque__", "repr"}:
            name = re.sub(r"\W", "", str(x["__grader_opaque__"]))[:60] or "object"
            return type(name, (_Opaque,), {})(str(x["repr"]))
        if set(x) == {"__grader_device__", "tensor"}:
            devices.append(str(x["__grader_device__"]))
            return x["tensor"]
        return {k: _restore(v, devices) for k, v in x.items()}
    if isinstance(x, list):
        return [_restore(v, devices) for v in x]
    if type(x) is tuple:
        return tuple(_restore(v, devices) for v in x)
    return x


class _Replayed(Exception):
    """Raised by the replay in place of the learner's exception."""


class _ReplayedNotImplemented(_Replayed, NotImplementedError):
    pass


class _Memo:
    """The reference, computed once per hidden case in this worker."""

    def __init__(self, fn, cases: list):
        self.fn, self.cases, self.out = fn, cases, {}

    def __call__(self, **kwargs):
        for i, case in enumerate(self.cases):
            if case.keys() == kwargs.keys() and all(kwargs[k] is case[k] for k in case):
                if i not in self.out:
                    self.out[i] = self.fn(**kwargs)
                return self.out[i]
        return self.fn(**kwargs)


def _same_input(a: Any, b: Any) -> bool:
    """Whether the check passed ``a`` where the grader prepared ``b``: the same object, or a copy of it
    (the check harness hands the learner's function copies of its tensor inputs)."""
    if a is b:
        return True
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a.cpu(), b.cpu()))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same_input(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_input(a[k], b[k]) for k in a)
    if isinstance(a, (int, float, str, bool, type(None))) and isinstance(b, (int, float, str, bool, type(None))):
        return a == b
    return False


class Worker:
    def __init__(self, source: str, check_timeout: float):
        from exercises_lib import checks
        from exercises_lib.checks import CHECKS

        checks.load_check_modules()
        # Loaded once, now: a module a notebook might write into checks/ later is never imported here.
        checks.load_check_modules = lambda: None
        self.checks = CHECKS
        self.source = source
        self.check_timeout = check_timeout
        self.models: dict[tuple[str, bool | None], Any] = {}
        self.contexts: dict[str, dict] = {}
        self.cases: dict[str, list] = {}
        self.memos: dict[str, _Memo] = {}
        self.codes = {}
        for name, chk in CHECKS.items():
            code = getattr(inspect.unwrap(chk.reference), "__code__", None)
            if code is not None:
                self.codes[code] = name

    # -- models and contexts -------------------------------------------------

    def model(self, name: str, standin: bool | None = None):
        """The worker's copy of a course model (loaded once, on the CPU)."""
        from exercises_lib.models import load_model

        key = (name, standin)
        if key not in self.models:
            source = self.source if standin is None else ("standin" if standin else "real")
            model = load_model(name, device="cpu", source=source, quiet=True)
            self.models[key] = model
            self.models.setdefault((name, bool(model.is_standin)), model)
        return self.models[key]

    def placeholder(self, name: str, standin: bool):
        """The model put in place of a course model a learner's function refers to."""
        from exercises_lib.models import MODELS

        if name not in MODELS:
            return _MissingModule(f"model {name!r}")
        if (name, standin) in self.models:
            return self.models[(name, standin)]
        try:
            return self.model(name, standin)
        except Exception:  # noqa: BLE001 - e.g. real weights not here: the grader's own choice
            return self.model(name)

    def context(self, chk) -> dict:
        if chk.name not in self.contexts:
            ctx: dict[str, Any] = {}
            for need in chk.needs:
                if need == "model":
                    ctx["model"] = self.model(chk.model)
                elif need == "hf_model":
                    from exercises_lib.layernorm import layernorm_free_reference

                    ctx["hf_model"] = layernorm_free_reference(self.model(chk.model))
                else:
                    raise RuntimeError(f"the grader does not know how to build {need!r} for {chk.name}")
            self.contexts[chk.name] = ctx
        return self.contexts[chk.name]

    def cases_for(self, chk, ctx: dict) -> list:
        if chk.name not in self.cases:
            _seed()
            self.cases[chk.name] = list(chk.cases(**ctx))
            self.memos[chk.name] = _Memo(chk.reference, self.cases[chk.name])
        return self.cases[chk.name]

    def prepare(self, module: str) -> None:
        for name, chk in self.checks.items():
            if name.startswith(module + "."):
                self.cases_for(chk, self.context(chk))

    # -- one exercise ----------------------------------------------------------

    def _in_child(self, table: bytes, chk, fname: str, cases: list, tag: str) -> dict:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child ends in os._exit
            os.close(r)
            _child(w, table, chk.name, fname, cases, self.placeholder, self.codes, tag)
        os.close(w)
        deadline = time.monotonic() + self.check_timeout
        chunks, size, why = [], 0, None
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    why = f"your function did not finish within {self.check_timeout:.0f} s on the check's inputs"
                    break
                ready, _, _ = select.select([r], [], [], min(left, 1.0))
                if not ready:
                    continue
                b = os.read(r, 1 << 20)
                if not b:
                    break
                size += len(b)
                if size > MAX_RESULT_BYTES:
                    why = f"your function's outputs exceed {MAX_RESULT_BYTES // 2**20} MB"
                    break
                chunks.append(b)
        finally:
            os.close(r)
            for target in (-pid, pid):
                try:
                    os.kill(target, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            _, status = os.waitpid(pid, 0)
        if why:
            return {"error": why}
        data = b"".join(chunks)
        if not data:
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            return {"error": "the process running your function ended without an answer"
                    + (f" (signal {signal.Signals(sig).name})" if sig else "")}
        import torch

        buffer = io.BytesIO(data)
        try:
            out = torch.load(buffer, weights_only=True, map_location="cpu")
        except Exception as err:  # noqa: BLE001
            return {"error": f"your function's outputs could not be read ({type(err).__name__})"}
        return out if isinstance(out, dict) else {"error": "your function's outputs could not be read"}

    def judge_one(self, chk, fname: str, table: bytes, tag: str) -> dict:
        from exercises_lib import checks

        ctx = self.context(chk)
        cases = self.cases_for(chk, ctx)
        out = self._in_child(table, chk, fname, cases, tag)
        if "error" in out:
            return {"status": "failed", "message": str(out["error"]), "check_passed": False, "calls": []}
        records = out.get("records") or []
        calls = [str(c) for c in out.get("calls") or []]
        state: dict[str, Any] = {"i": 0, "raised": None, "devices": [], "bad": None}

        def prepared(kwargs, case) -> bool:
            return case.keys() == kwargs.keys() and all(_same_input(kwargs[k], case[k]) for k in case)

        def replay(**kwargs):
            i = state["i"]
            state["i"] += 1
            # The check runs the cases in order; after a failure its diagnosis may run the function on
            # other cases to name the mistake: those calls are answered from the same records.
            in_order = i < len(cases) and prepared(kwargs, cases[i])
            j = i if in_order else next((k for k, case in enumerate(cases) if prepared(kwargs, case)), None)
            if j is None:
                state["bad"] = f"the check called the function with inputs the grader did not prepare (call {i})"
                raise _Replayed(state["bad"])
            if j >= len(records):
                if not in_order:  # the learner's function raised before this case: nothing to tell apart
                    raise _Replayed(f"no output recorded for case {j}")
                state["bad"] = f"no output recorded for case {j}"
                raise _Replayed(state["bad"])
            rec = records[j]
            if rec.get("kind") == "ok":
                return _restore(rec.get("value"), state["devices"])
            err = (_ReplayedNotImplemented if rec.get("not_implemented") else _Replayed)(str(rec.get("message")))
            if in_order:
                state["raised"] = (err, rec)
            raise err

        try:
            replay.__signature__ = inspect.signature(chk.reference)  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            pass
        saved = chk.cases, chk.reference
        chk.cases, chk.reference = (lambda **_: cases), self.memos[chk.name]
        try:
            _seed()
            result = checks.run_check(chk.name, replay, **ctx)
        finally:
            chk.cases, chk.reference = saved
        if state["bad"]:
            return {"status": "error", "message": f"The grader could not run this check: {state['bad']}.",
                    "check_passed": None, "calls": calls}
        message = str(result.message)
        if not result.passed and result.attempted:
            message += f" Hint: {chk.hint}"  # the instructor's report has the hint a learner asks for
        status = "passed" if result.passed else "failed"
        if state["raised"] is not None:
            # The check describes the replay's exception; put the learner's own description in its place.
            err, rec = state["raised"]
            describe = getattr(checks, "_student_error", None)
            ours = describe(chk.name, err) if describe else None
            theirs = str(rec.get("message"))
            message = message.replace(ours, theirs) if ours and ours in message else theirs
            if rec.get("not_implemented"):
                status = "not attempted"
        if result.passed and state["devices"]:
            status = "failed"
            message = (f"your output is on {state['devices'][0]}, the inputs are on the CPU: "
                       "keep it on the input's device")
        return {"status": status, "message": message, "check_passed": bool(result.passed), "calls": calls}

    def judge(self, module: str, manifest: Any, table: bytes, tag: str) -> dict:
        functions = manifest.get("functions") if isinstance(manifest, dict) else None
        functions = functions if isinstance(functions, dict) else {}
        models = manifest.get("models") if isinstance(manifest, dict) else None
        for m in (models if isinstance(models, list) else [])[:6]:
            if isinstance(m, list) and len(m) == 3 and m[0] == "course-model":
                try:
                    self.placeholder(str(m[1]), bool(m[2]))
                except Exception:  # noqa: BLE001 - the child reports it if it matters
                    pass
        results: dict[str, dict] = {}
        for name, chk in self.checks.items():
            if not name.startswith(module + "."):
                continue
            fname = name.split(".", 1)[1]
            info = functions.get(fname)
            if not isinstance(info, dict) or not info.get("found"):
                results[name] = {"absent": True}
            elif info.get("error"):
                results[name] = {"status": "failed", "message": str(info["error"])[:1000], "check_passed": False, "calls": []}
            else:
                try:
                    results[name] = self.judge_one(chk, fname, table, tag)
                except Exception as err:  # noqa: BLE001 - a grader-side problem, said as such
                    results[name] = {"status": "error", "check_passed": None, "calls": [],
                                     "message": f"The grader could not run this check ({type(err).__name__}: {err})."}
        return results


def _seed() -> None:
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def _import_everything() -> None:
    """Import every module of the course package now, before any notebook runs."""
    import exercises_lib

    for info in pkgutil.walk_packages(exercises_lib.__path__, "exercises_lib."):
        try:
            importlib.import_module(info.name)
        except Exception:  # noqa: BLE001 - an optional module (e.g. Colab-only); not needed here
            pass


def main() -> None:
    """Serve requests on fds 0/1 (see the module docstring)."""
    from exercises_lib.grading.sandbox import make_undumpable

    make_undumpable()
    # The protocol keeps the original pipes; anything else printed goes to stderr.
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    import torch

    torch.set_num_threads(1)  # a forked child must not inherit a thread pool (OpenMP would hang)
    torch.set_grad_enabled(False)
    header, _ = recv(proto_in)
    _import_everything()
    worker = Worker(source=header.get("source") or "auto", check_timeout=float(header.get("check_timeout", 300)))
    checks = [{"name": n, "model": c.model, "needs": list(c.needs)} for n, c in worker.checks.items()]
    send(proto_out, {"ok": True, "pid": os.getpid(), "checks": checks})
    while True:
        try:
            header, payload = recv(proto_in)
        except EOFError:
            return
        op = header.get("op")
        try:
            if op == "quit":
                return
            if op == "prepare":
                start = time.monotonic()
                for module in header.get("modules", []):
                    worker.prepare(module)
                send(proto_out, {"ok": True, "seconds": time.monotonic() - start})
            elif op == "judge":
                results = worker.judge(header["module"], header.get("manifest"), payload, header.get("tag", ""))
                send(proto_out, {"ok": True, "results": results})
            else:
                send(proto_out, {"ok": False, "error": f"unknown request {op!r}"})
        except Exception as err:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            send(proto_out, {"ok": False, "error": f"{type(err).__name__}: {err}"})


if __name__ == "__main__":
    main()
