"""Imports point one way: a static walk of every import in exercises_lib (module level and inside functions).

* no cycle between the package's modules (the package root, which every
  submodule import runs first anyway, is not a node);
* chapter and analysis code never imports the stand-ins' plants
  (``exercises_lib.standin``): only the model module builds stand-ins;
* a plant imports nothing of the course but the stand-in package and the
  shared word lists, tokenizer and texts (never a chapter module);
* no private TransformerLens module (a path part starting with ``_``) is
  imported outside the model module.
"""

from __future__ import annotations

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1] / "exercises_lib"
PACKAGE = "exercises_lib"
PLANT_MAY_IMPORT = {"exercises_lib.vocab", "exercises_lib.tokenizer", "exercises_lib.texts"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """Every module an import statement of ``path`` names (``from a import b`` names ``a.b`` when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in MODULES}
    return found


MODEL_MODULES = {m for m in MODULES if m == "exercises_lib.models" or m.startswith("exercises_lib.models.")}
GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _cycles() -> set[tuple[str, ...]]:
    """The strongly connected components of more than one module, as sorted tuples (Tarjan)."""
    edges = {m: {d for d in deps if d in MODULES and d != PACKAGE} for m, deps in GRAPH.items() if m != PACKAGE}
    index, low, stack, on_stack, out = {}, {}, [], set(), set()

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.add(tuple(sorted(component)))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_the_package():
    assert {"exercises_lib.models", "exercises_lib.standin.duality", "exercises_lib.duality"} <= set(MODULES)
    assert "exercises_lib.vocab" in GRAPH["exercises_lib.standin.duality"]


def test_no_import_cycle():
    assert _cycles() == set(), "import cycles"


def test_chapter_code_never_imports_the_plants():
    bad = sorted((m, d) for m, deps in GRAPH.items() for d in deps
                 if d.startswith("exercises_lib.standin") and not m.startswith("exercises_lib.standin")
                 and m not in MODEL_MODULES)
    assert not bad, bad


def test_plants_import_no_chapter_module():
    bad = sorted((m, d) for m, deps in GRAPH.items() if m.startswith("exercises_lib.standin") for d in deps
                 if d.startswith(PACKAGE + ".") and not d.startswith("exercises_lib.standin") and d not in PLANT_MAY_IMPORT)
    assert not bad, bad


def test_private_transformer_lens_only_in_the_model_module():
    found = {(m, d) for m, deps in GRAPH.items() for d in deps
             if d.startswith("transformer_lens") and any(p.startswith("_") for p in d.split(".")) and m not in MODEL_MODULES}
    assert not found, f"private TransformerLens imports outside the model package: {sorted(found)}"
