"""Keep a check's model intact whatever the student's function does to it.

A student's function runs on the notebook's own model. An in-place edit of a
weight (``W_pos = model.W_pos; W_pos -= ...``), a replaced parameter or a hook
left attached would otherwise change every later cell, check and figure. The
check harness wraps each call of the student's function in a :class:`ModelGuard`:

* before: each parameter's fingerprint (storage, autograd version counter and
  the sum of a fixed sample of its entries) and the hooks on each of
  TransformerLens's hook points (the modules of the Hugging Face model inside
  install hooks of their own at the first forward pass: those are left alone);
* after: what differs is described for the student (which parameter, which
  hook point, and how to avoid it), and undone: parameters are restored from a
  copy kept once per parameter (made at the first check that sees the model,
  refreshed only for the parameters that changed since), hooks are removed.

The copy is written to a temporary file per parameter (read back only to undo,
so it costs disk, not memory: 0.7 GB for GPT-2 small); it is what makes an
undo possible. Hooks found on
the model when a check starts (left by an earlier cell) are removed too, and
the message says so: the check's own inputs must run on the plain model.

Students' functions also get copies of the tensors they are given, so that the
diagnosis of a wrong answer (which typical mistake it matches) runs on the
inputs as they were.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Iterable

import torch

#: id(parameter) -> [weak reference to it, its state when copied, the file holding the copy];
#: an entry (and its file) goes when its parameter is garbage-collected.
_KEPT: dict[int, list] = {}
_FOLDER: Path | None = None

#: The models of the last checks (by ids) -> their parameters' states then, to skip comparing copies.
_LAST: dict[tuple, tuple] = {}

_SAMPLE = 256  # entries per parameter compared in its fingerprint
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _kept(p: torch.Tensor) -> list | None:
    entry = _KEPT.get(id(p))
    return entry if entry is not None and entry[0]() is p else None


_PREFIX = "mechinterp-guard-"


def _folder() -> Path:
    """This process's folder of kept copies, ``<tmp>/mechinterp-guard-<pid>-<random>``, removed at exit.

    A process that is killed (a kernel shut down with SIGKILL) cannot remove its folder, so creating
    one first removes the folders of processes that no longer exist."""
    global _FOLDER
    if _FOLDER is None:
        _remove_orphans(Path(tempfile.gettempdir()))
        _FOLDER = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-"))
        atexit.register(shutil.rmtree, _FOLDER, True)
    return _FOLDER


def _remove_orphans(tmp: Path) -> list[Path]:
    """Remove the guard folders in ``tmp`` whose process is gone (and the older ones named without a
    process id); the folders removed."""
    removed = []
    for folder in tmp.glob(f"{_PREFIX}*"):
        pid = folder.name[len(_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _forget(key: int) -> None:
    entry = _KEPT.pop(key, None)
    if entry is not None:
        Path(entry[2]).unlink(missing_ok=True)


def _keep(p: torch.Tensor, state: tuple) -> None:
    from safetensors.torch import save_file

    key = id(p)
    if key not in _KEPT:
        weakref.finalize(p, _forget, key)
    path = _folder() / f"{key}-{os.getpid()}.safetensors"
    save_file({"value": p.detach().to("cpu").contiguous()}, str(path))
    _KEPT[key] = [weakref.ref(p), state, str(path)]


def _kept_value(p: torch.Tensor) -> torch.Tensor:
    """The kept copy of ``p``, read back from its file."""
    from safetensors.torch import load_file

    return load_file(_kept(p)[2])["value"]


def _sample_view(p: torch.Tensor) -> torch.Tensor:
    """A strided view of about _SAMPLE entries of ``p`` spread over all of it (no copy)."""
    flat = p.detach().reshape(-1)
    return flat[:: max(1, flat.numel() // _SAMPLE)]


def modules_in(*values: Any) -> list[torch.nn.Module]:
    """The torch modules among ``values`` (and one level inside dicts), each once."""
    found: dict[int, torch.nn.Module] = {}
    for value in values:
        items = value.values() if isinstance(value, dict) else [value]
        for item in items:
            if isinstance(item, torch.nn.Module):
                found.setdefault(id(item), item)
    return list(found.values())


def clone_inputs(value: Any) -> Any:
    """A copy of ``value`` in which every tensor (also inside lists, tuples, dicts) is cloned.

    Modules, caches and other objects are passed as they are: the guard
    watches the modules; the rest is read-only by convention of the exercises.
    """
    if isinstance(value, torch.nn.Parameter):
        return value  # a model's weight: the guard watches it
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: clone_inputs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone_inputs(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(clone_inputs(v) for v in value)
    return value


def _fingerprints(params: list[torch.Tensor]) -> list[tuple]:
    """Per parameter: (storage pointer, version counter, shape, sum of a fixed sample)."""
    if not params:
        return []
    sums = []
    with torch.no_grad():
        for p in params:
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // _SAMPLE)
            sums.append(flat[::step].sum(dtype=torch.float64))
        by_device: dict = {}
        for i, s in enumerate(sums):
            by_device.setdefault(s.device, []).append(i)
        values = [0.0] * len(sums)
        for idx in by_device.values():
            for i, v in zip(idx, torch.stack([sums[i] for i in idx]).tolist()):
                values[i] = v
    return [(p.data_ptr(), p._version, tuple(p.shape), v) for p, v in zip(params, values)]


def _pretty(name: str) -> str:
    """A parameter's name as a student reads it (the bridge's wrappers left out)."""
    return name.replace("._original_component", "")


class ModelGuard:
    """Snapshot of some modules' parameters and hooks; :meth:`undo` reports and reverts changes.

    A parameter counts as changed when its storage, its autograd version
    counter (bumped by every in-place operation) or one of ~256 entries spread
    over it (which catches edits through ``.data``) differs from the snapshot.
    """

    def __init__(self, modules: Iterable[torch.nn.Module]):
        self.modules = list(modules)
        # (owner module, attribute, parameter, full name) for every parameter slot
        self.slots: list[tuple[torch.nn.Module, str, torch.Tensor, str]] = []
        # TransformerLens's hook points: (module, name as a student writes it)
        self.hook_points: list[tuple[torch.nn.Module, str]] = []
        seen: set[int] = set()
        for model in self.modules:
            for mod_name, mod in model.named_modules():
                if id(mod) in seen:
                    continue
                seen.add(id(mod))
                for attr, p in mod._parameters.items():
                    if p is not None:
                        self.slots.append((mod, attr, p, f"{mod_name}.{attr}" if mod_name else attr))
                # Hugging Face modules install hooks of their own at the first forward
                # pass: only the hook points of TransformerLens are the student's
                if hasattr(mod, "fwd_hooks"):
                    self.hook_points.append((mod, _hook_name(mod, mod_name)))
        self.params: list[torch.Tensor] = []
        ids: set[int] = set()
        for _, _, p, _ in self.slots:
            if id(p) not in ids:
                ids.add(id(p))
                self.params.append(p)
        self.names = {id(p): n for _, _, p, n in reversed(self.slots)}
        self.aliases = self._aliases()
        self.stale_hooks = self._remove_stale_hooks()
        self.hooks = self._hook_keys()
        self._snapshot()
        self._keep_copies()

    # -- parameters ---------------------------------------------------------

    def _states(self) -> list[tuple]:
        return [(p.data_ptr(), p._version, tuple(p.shape)) for p in self.params]

    def _snapshot(self) -> None:
        self.views = [_sample_view(p) for p in self.params]
        self.states = self._states()
        self.sample_all = self._gather()
        self.samples = list(self.sample_all.split([v.numel() for v in self.views])) if self.params else []

    def _gather(self) -> torch.Tensor | None:
        """The sampled entries of every parameter, in one tensor (one copy; no copy of the weights)."""
        if not self.views:
            return None
        with torch.no_grad():
            try:
                return torch.cat(self.views)
            except (RuntimeError, TypeError):  # parameters on several devices or of several dtypes
                return torch.cat([v.to("cpu", torch.float64) for v in self.views])

    def _changed(self) -> list[int]:
        """Indices of the parameters that differ from the snapshot."""
        states = self._states()
        same_values = self.sample_all is None or torch.equal(self._gather(), self.sample_all)
        if states == self.states and same_values:
            return []
        return [
            i for i, (v, s, old) in enumerate(zip(self.views, states, self.states))
            if s != old or not torch.equal(v.to(self.samples[i].device, self.samples[i].dtype), self.samples[i])
        ]

    def _keep_copies(self) -> None:
        """Copy each parameter changed since its kept copy was made (the first time: all)."""
        key = self.key = tuple(id(m) for m in self.modules)
        if not self.params:
            return
        last = _LAST.get(key)
        if (last is not None and last[0] == self.states and torch.equal(last[1], self.sample_all)
                and all(_kept(p) is not None for p in self.params)):
            return  # nothing changed since the last check of these models: the copies are current
        for p, state, sample in zip(self.params, self.states, self.samples):
            kept = _kept(p)
            if kept is None or kept[1][0] != state or not torch.equal(kept[1][1], sample):
                _keep(p, (state, sample))
        _LAST[key] = (self.states, self.sample_all)

    def _aliases(self) -> dict[int, str]:
        """Storage pointer -> TransformerLens name (``model.W_pos``...) for the weights a student reaches directly."""
        out: dict[int, str] = {}
        for model in self.modules:
            for alias in ("W_E", "W_pos", "W_U"):
                try:
                    w = getattr(model, alias)
                except Exception:
                    continue
                if isinstance(w, torch.Tensor):
                    out.setdefault(w.data_ptr(), f"model.{alias}")
        return out

    def _label(self, p: torch.Tensor) -> str:
        name = _pretty(self.names[id(p)])
        alias = self.aliases.get(p.data_ptr())
        return f"{name} ({alias})" if alias else name

    # -- hooks --------------------------------------------------------------

    def _hook_keys(self) -> list[tuple]:
        return [
            (tuple(m._forward_hooks), tuple(m._forward_pre_hooks), tuple(m._backward_hooks), tuple(m._backward_pre_hooks))
            for m, _ in self.hook_points
        ]

    def _remove_stale_hooks(self) -> list[str]:
        """Remove the temporary TransformerLens hooks already on the model (permanent ones stay); where they were."""
        where = []
        for mod, name in self.hook_points:
            handles = [*(getattr(mod, "fwd_hooks", None) or ()), *(getattr(mod, "bwd_hooks", None) or ())]
            if any(not getattr(h, "is_permanent", True) for h in handles) and hasattr(mod, "remove_hooks"):
                mod.remove_hooks("both", including_permanent=False)
                where.append(name)
        return where

    def _remove_new_hooks(self) -> list[str]:
        """Remove the hooks added since the snapshot; the hook points they were on."""
        where = []
        for (mod, name), old, now in zip(self.hook_points, self.hooks, self._hook_keys()):
            if now == old:
                continue
            added = 0
            for d, old_keys in zip(_HOOK_DICTS, old):
                hooks = getattr(mod, d, None)
                if not hooks or len(hooks) == len(old_keys) and tuple(hooks.keys()) == old_keys:
                    continue
                for k in set(hooks.keys()) - set(old_keys):
                    hooks.pop(k, None)
                    for extra in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs"):
                        getattr(mod, extra, {}).pop(k, None)
                    added += 1
            if added:
                for attr in ("fwd_hooks", "bwd_hooks"):  # TransformerLens's own list of the hook point's handles
                    handles = getattr(mod, attr, None)
                    if isinstance(handles, list):
                        handles[:] = [h for h in handles if _handle_alive(h, mod)]
                where.append(name)
        return where

    # -- after the student's function ----------------------------------------

    def undo(self) -> str | None:
        """Revert what changed since the snapshot; a sentence for the student, or None."""
        problems = []
        replaced = []
        for mod, attr, p, name in self.slots:
            if mod._parameters.get(attr) is not p:
                mod._parameters[attr] = p
                replaced.append(_pretty(name))
        changed = [self.params[i] for i in self._changed()]
        if changed:
            with torch.no_grad():
                for p in changed:
                    kept = _kept_value(p)
                    if tuple(p.shape) != tuple(kept.shape) or p.dtype != kept.dtype:
                        p.data = kept.to(p.device, copy=True)
                    else:
                        p.copy_(kept)
            shown = [self._label(p) for p in changed]
            more = f" and {len(shown) - 3} more" if len(shown) > 3 else ""
            problems.append(
                f"your function changed the model's weights in place ({', '.join(shown[:3])}{more}). "
                "An in-place operation (`-=`, `+=`, `.sub_()`, `x[...] = ...`) on a tensor taken from the model "
                "edits the model itself: compute a new tensor instead (`x = x - ...`, or `.clone()` first)"
            )
            self._snapshot()
            for p, state, sample in zip(self.params, self.states, self.samples):  # restored: the kept values
                kept = _kept(p)
                if kept is not None:
                    kept[1] = (state, sample)
            _LAST[self.key] = (self.states, self.sample_all)
        if replaced:
            problems.append(
                f"your function replaced parameters of the model ({', '.join(replaced[:3])}): "
                "work on copies of the weights instead of assigning to the model's attributes"
            )
        left = self._remove_new_hooks()
        if left:
            shown = ", ".join(sorted(set(left))[:3]) + (" ..." if len(set(left)) > 3 else "")
            problems.append(
                f"your function left hooks attached to the model (at {shown}), so they would run in every later "
                "forward pass. Use `model.run_with_hooks(..., fwd_hooks=[...])` or `with model.hooks(...):`, which "
                "remove their hooks when done (or call `model.reset_hooks()` at the end)"
            )
        if not problems:
            return None
        return "; ".join(problems) + ". The check has undone this, so later cells run on the intact model"


def _hook_name(mod: torch.nn.Module, mod_name: str) -> str:
    """A hook point's name as a student writes it (``blocks.1.attn.hook_pattern``)."""
    name = getattr(mod, "name", None)
    return name if isinstance(name, str) and name else _pretty(mod_name)


def _handle_alive(handle: Any, mod: torch.nn.Module) -> bool:
    """Whether a TransformerLens LensHandle still points at a hook registered on ``mod``."""
    inner = getattr(handle, "hook", None)
    hid = getattr(inner, "id", None)
    if hid is None:
        return True
    return any(hid in getattr(mod, d, {}) for d in _HOOK_DICTS)


def describe_stale_hooks(where: list[str]) -> str | None:
    """A note for hooks found on the model before the check ran (and removed)."""
    if not where:
        return None
    shown = ", ".join(sorted(set(where))[:3]) + (" ..." if len(set(where)) > 3 else "")
    return (
        f"Note: the model had hooks attached before this check ran (at {shown}), left by an earlier cell; "
        "the check removed them. Hooks added with `model.add_hook` stay until `model.reset_hooks()`."
    )

