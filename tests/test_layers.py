"""The package's shape: no import cycles, each layer imports only from the layers below it, numpy-only analysis
without torch.

The import graph is read from the source (AST), not from ``sys.modules``: every ``import`` / ``from ... import``
statement counts, at module level and inside functions, relative and absolute. An edge ``a -> b`` means module
``a`` imports module ``b`` (``from .x import name`` is an edge to ``x``, or to ``x.name`` when that is a module;
importing ``causalgeom.p.m`` also runs ``causalgeom.p``'s ``__init__``, so it adds an edge to ``causalgeom.p``).
The root package ``causalgeom/__init__.py`` is the public facade and is left out of the cycle check: every
submodule import runs it, so counting it would make every module part of one cycle.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "causalgeom"
PKG = "causalgeom"

#: The layers, bottom to top, and what each may import (besides itself). See docs/CONTRACTS.md.
#: ``pipeline`` (torch: data, models, training, attacks, extraction) is a side branch on ``dump``; ``scale`` (Dask
#: and torchrun entry points) is imported only by the CLI and the facade.
ALLOWED: dict[str, set[str]] = {
    "_util": set(),
    "dump": {"_util"},
    "pipeline": {"_util", "dump"},
    "metrics": {"_util", "dump"},
    "causal": {"_util", "dump", "metrics"},
    "interventions": {"_util", "dump", "metrics", "causal", "pipeline"},
    "report": {"_util", "dump", "metrics", "causal", "interventions", "pipeline"},
    "scale": {"_util", "dump", "metrics", "causal", "interventions", "pipeline"},
    "cli": {"_util", "dump", "metrics", "causal", "interventions", "pipeline", "report", "scale"},
    "testing": {"_util", "dump"},
    "facade": {"_util", "dump", "metrics", "causal", "interventions", "pipeline", "report", "scale", "cli",
               "testing"},
}

#: Sub-package folders that are a layer as a whole (``causalgeom/causal/...`` is layer ``causal``). Once the
#: planned folder move is done (docs/CONTRACTS.md), every layer is a folder and `MODULE_LAYER` only keeps the
#: few top-level files.
FOLDER_LAYERS = ("_util", "dump", "pipeline", "metrics", "causal", "interventions", "report", "scale", "cli")

#: Layer of each top-level module that is not (yet) inside its layer's folder.
MODULE_LAYER: dict[str, str] = {
    "errors": "_util",
    "extract": "pipeline",  # the shim that makes `causalgeom.extract` the function
    "report": "report", "reporting": "report", "demo": "report",
    "testing": "testing",
    "__main__": "facade",
}

def _now(module: str) -> str:
    """The current path of a module named by its path before the folder move (``causalgeom.MOVED_MODULES``)."""
    import causalgeom

    return getattr(causalgeom, "MOVED_MODULES", {}).get(module, module)


#: Imports that go up a layer on purpose, each with its reason. Keep this list short.
UPWARD_EXCEPTIONS: dict[tuple[str, str], str] = {
    (_now("causalgeom.study"), _now("causalgeom.table")):
        "Study.to_frame() is public API (cg.open_study(p).to_frame()); it calls the metrics layer's column "
        "registry, causalgeom.table.study_frame, lazily inside the method",
}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _targets(mod: str, node: ast.Import | ast.ImportFrom, is_pkg: bool, mods: dict[str, Path]) -> set[str]:
    """The causalgeom modules that one import statement of ``mod`` runs."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = mod.split(".") if is_pkg else mod.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        names = [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]
    out = set()
    for name in names:
        if name != PKG and not name.startswith(PKG + "."):
            continue
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        parts = name.split(".")
        for i in range(2, len(parts) + 1):  # importing a.b.c runs a.b's __init__ too (not the root facade)
            parent = ".".join(parts[:i])
            if parent in mods and parent != mod and not mod.startswith(parent + "."):
                out.add(parent)
    return out


@functools.lru_cache(maxsize=1)
def _graph() -> dict[str, frozenset[str]]:
    return {m: frozenset(d) for m, d in _scan().items()}


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` over every import statement of the package (functions included)."""
    return {m: set(d) for m, d in _graph().items()}


def _scan() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= _targets(mod, node, path.name == "__init__.py", mods)
        deps.discard(mod)
        graph[mod] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_of(module: str) -> str:
    """The layer of a causalgeom module (by folder, else by `MODULE_LAYER`)."""
    parts = module.split(".")[1:]
    if not parts:
        return "facade"
    if parts[0] in FOLDER_LAYERS and (len(parts) > 1 or parts[0] not in MODULE_LAYER):
        return parts[0]
    if parts[0] in MODULE_LAYER:
        return MODULE_LAYER[parts[0]]
    raise KeyError(f"module {module} has no layer: add it to MODULE_LAYER in tests/test_layers.py "
                   "(and to the module map of docs/CONTRACTS.md), or move it into its layer's folder")


# --------------------------------------------------------------------------------------------------- the scan
def test_scanner_sees_imports_inside_functions_and_relative_ones():
    """The scanner itself: a function-level relative import and a two-module cycle are found."""
    graph = import_graph()
    # a relative import inside a function (Study.to_frame imports the table lazily)
    assert _now("causalgeom.table") in graph[_now("causalgeom.study")]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = {m: d for m, d in import_graph().items() if m != PKG}
    cycles = find_cycles(graph)
    detail = "\n".join(" <-> ".join(c) + "\n    " + "\n    ".join(
        f"{a} -> {sorted(graph[a] & set(c))}" for a in c) for c in cycles)
    assert not cycles, f"import cycles among causalgeom modules (imports inside functions count):\n{detail}"


def test_no_module_imports_an_old_module_path():
    """Old paths (served by `causalgeom.MOVED_MODULES` after the folder move) are for users, not for the package:
    the scan cannot see through them."""
    import causalgeom

    moved = set(getattr(causalgeom, "MOVED_MODULES", {}))
    mods = _modules()
    bad = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bad += [f"{mod}: import {a.name}" for a in node.names if a.name in moved]
            elif isinstance(node, ast.ImportFrom):
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)] if node.level else []
                target = ".".join(base + [node.module]) if node.module else ".".join(base)
                names = [target] + [f"{target}.{a.name}" for a in node.names]
                bad += [f"{mod}: from {target} import ..." for n in names if n in moved]
    assert not bad, "imports of old module paths inside causalgeom (import the new path):\n" + "\n".join(bad)


def test_every_module_has_a_layer():
    for mod in import_graph():
        layer_of(mod)  # raises KeyError naming the module


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Edges of ``graph`` against the layer rule (`ALLOWED`), minus `UPWARD_EXCEPTIONS` (and their parents)."""
    bad = []
    for mod, deps in sorted(graph.items()):
        here = layer_of(mod)
        for dep in sorted(deps):
            there = layer_of(dep)
            excepted = any(mod == a and (dep == b or b.startswith(dep + ".")) for a, b in UPWARD_EXCEPTIONS)
            if there != here and there not in ALLOWED[here] and not excepted:
                bad.append(f"{mod} ({here}) imports {dep} ({there})")
    return bad


def test_layer_check_flags_an_upward_import():
    """The check itself, on made-up edges: dump -> metrics and pipeline -> metrics are refused."""
    store, geometry, train = _now("causalgeom.store"), _now("causalgeom.geometry"), _now("causalgeom.train")
    assert layer_violations({store: {geometry}, train: {geometry}}) == [
        f"{store} (dump) imports {geometry} (metrics)", f"{train} (pipeline) imports {geometry} (metrics)"]
    assert layer_violations({geometry: {store}}) == []


def test_layers_import_only_downward():
    bad = layer_violations(import_graph())
    assert not bad, "imports against the layer rule (docs/CONTRACTS.md):\n" + "\n".join(bad)


def test_upward_exceptions_are_still_needed():
    graph = import_graph()
    stale = [pair for pair in UPWARD_EXCEPTIONS if pair[1] not in graph.get(pair[0], set())]
    assert not stale, f"remove these from UPWARD_EXCEPTIONS, the import is gone: {stale}"


def test_only_torch_modules_import_torch_at_module_level():
    """A top-level ``import torch`` only in the pipeline layer, `_util.torch` and `interventions.model`."""
    torch_ok = {"causalgeom._util.torch", "causalgeom.interventions.model"}
    bad = []
    for mod, path in _modules().items():
        if layer_of(mod) == "pipeline" or mod in torch_ok:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n == "torch" or n.startswith("torch.") for n in names):
                bad.append(mod)
    assert not bad, f"these modules import torch at module level (numpy-only analysis must not need it): {bad}"


# --------------------------------------------------------------------------------------- analysis without torch
_NO_TORCH = textwrap.dedent("""
    import sys

    class _Block:
        # a meta-path finder that makes torch (and torchvision, timm) unimportable
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "timm", "torchattacks", "torchmetrics"):
                raise ImportError(f"torch is blocked in this test ({name})")
            return None

    sys.meta_path.insert(0, _Block())
    for name in [m for m in sys.modules if m.split(".")[0] == "torch"]:
        del sys.modules[name]

    import numpy as np
    import causalgeom as cg
    from causalgeom.testing import make_study

    study = make_study(sys.argv[1], n_runs=6, n=60, seed=0)
    study = cg.open_study(sys.argv[1])
    frame = study.to_frame()
    assert len(frame) == 6 * 60, len(frame)
    res = cg.causal.mediate(frame, treatment="regularizer", mediators="norm", outcome="nll",
                            control="ce", treated="label_smoothing", n_boot=50, rng=0)
    s = res.summary()
    assert set(s["effect"]) >= {"total", "direct", "indirect"}, s
    out = cg.interventions.rescale(study[study.run_ids[0]], scales=[0.5, 1.0, 2.0], n_boot=20, rng=0)
    assert "scale" in out.dims
    assert "torch" not in sys.modules
    print("OK")
""")


@pytest.mark.slow  # a subprocess that builds a study and bootstraps: about 5 s
def test_numpy_analysis_runs_without_torch(tmp_path):
    """Open a study, build its table, run `mediate` and a post-hoc intervention with torch unimportable."""
    script = tmp_path / "no_torch.py"
    script.write_text(_NO_TORCH)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "study")], capture_output=True, text=True,
                          timeout=120, cwd=ROOT.parent)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-4000:]


#: Modules of the numpy-only analysis path: importing them must not import torch.
NUMPY_MODULES = ("causalgeom.causal", "causalgeom.interventions", "causalgeom.table", "causalgeom.summary",
                 "causalgeom.distributed", "causalgeom.testing")


def test_analysis_modules_import_without_torch():
    code = ("import sys\n"
            "class B:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch': raise ImportError('torch is blocked: ' + name)\n"
            "sys.meta_path.insert(0, B())\n"
            + "".join(f"import {m}\n" for m in NUMPY_MODULES)
            + "assert 'torch' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=ROOT.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
