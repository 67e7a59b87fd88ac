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
import re
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
    "reporting": "report", "demo": "report",  # reporting/ is a package: its modules are layer report too
    "testing": "testing",
    "__main__": "facade",
}

#: Imports that go up a layer on purpose, each with its reason. Keep this list short.
UPWARD_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("causalgeom.dump.study", "causalgeom.metrics.table"):
        "Study.to_frame() is public API (cg.open_study(p).to_frame()); it calls the metrics layer's column "
        "registry, causalgeom.metrics.table.study_frame, lazily inside the method",
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
    assert "causalgeom.metrics.table" in graph["causalgeom.dump.study"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = {m: d for m, d in import_graph().items() if m != PKG}
    cycles = find_cycles(graph)
    detail = "\n".join(" <-> ".join(c) + "\n    " + "\n    ".join(
        f"{a} -> {sorted(graph[a] & set(c))}" for a in c) for c in cycles)
    assert not cycles, f"import cycles among causalgeom modules (imports inside functions count):\n{detail}"


#: Module paths from before the folder move, and the two modules that were replaced by functions. None of them is
#: importable any more; the public names (``cg.geometry``, ``cg.report(...)``) are attributes of the package facade
#: (``causalgeom._FACADE``). Written here so that the scan below can find them.
OLD_MODULES = ("schema", "store", "study", "adapters", "data", "models", "train", "attacks", "extraction", "zoo",
               "_blocks", "kernels", "geometry", "calibration", "robustness", "table", "summary", "distributed")
_OLD_PATH = re.compile(
    r"\bcausalgeom\.(?:" + "|".join(re.escape(m) for m in OLD_MODULES) + r")(?![A-Za-z0-9_])"
    # causalgeom.report / causalgeom.extract are functions now: used as a module (an attribute, an import) they
    # are an old path, called (``causalgeom.extract(...)``) or named they are the function
    r"|\b(?:causalgeom|cg)\.(?:report|extract)\.[A-Za-z_]"
    r"|\b(?:from|import)\s+causalgeom\.(?:report|extract)\b")
#: Where the scan looks (relative to the repository root) and which files it reads there.
SCANNED = ("causalgeom", "tests", "docs", "benchmarks", "pipelines", "README.md")
_SCANNED_SUFFIXES = {".py", ".md", ".toml", ".sh", ".txt", ".cfg", ".rst"}


def old_path_uses(text: str) -> list[str]:
    """The old module paths ``text`` spells (see `OLD_MODULES`)."""
    return [m.group(0) for m in _OLD_PATH.finditer(text)]


def test_old_path_scan_finds_old_paths():
    """The scan itself: old module paths are found, the new ones and the facade's function calls are not."""
    assert old_path_uses("from causalgeom.geometry import magnitude; import causalgeom._blocks") == [
        "causalgeom.geometry", "causalgeom._blocks"]
    assert old_path_uses("`causalgeom.distributed.client`, cg.extract.extract_runs(x)") == [
        "causalgeom.distributed", "cg.extract.e"]
    assert old_path_uses("from causalgeom.report import SECTION_IDS") == ["from causalgeom.report"]
    assert old_path_uses("causalgeom.metrics.geometry; causalgeom.dump.study; causalgeom.reporting.SECTION_IDS; "
                         "cg.extract(model, data, out); causalgeom.report(study); cg.geometry.magnitude; "
                         "causalgeom.data_root") == []


def test_no_old_module_path_anywhere():
    """No file of the package, tests, docs, benchmarks or pipelines spells a module path that no longer exists."""
    repo = ROOT.parent
    here = Path(__file__).resolve()
    bad = []
    for top in SCANNED:
        base = repo / top
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.suffix in _SCANNED_SUFFIXES)
        for path in files:
            if path.resolve() == here or "__pycache__" in path.parts:
                continue  # this file names them on purpose
            for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                bad += [f"{path.relative_to(repo)}:{lineno}: {hit}" for hit in old_path_uses(line)]
    assert not bad, "old module paths (use the new path, or the facade name cg.X):\n" + "\n".join(bad)


@pytest.mark.slow
def test_no_causalgeom_finder_on_the_import_path():
    """Importing the package adds nothing to ``sys.meta_path``: every module has one importable path."""
    # setuptools' editable install puts its own finder (module ``__editable___causalgeom_*``) on the path: that one
    # belongs to the installation, not to the package
    code = ("import sys\n"
            "before = list(sys.meta_path)\n"
            "import causalgeom as cg\n"
            "for name in cg._FACADE: getattr(cg, name)\n"
            "added = [f for f in sys.meta_path if f not in before]\n"
            "mod = lambda f: (f if isinstance(f, type) else type(f)).__module__ or ''\n"
            "ours = [f for f in sys.meta_path if mod(f).startswith('causalgeom')]\n"
            "assert not added and not ours, (added, ours)\n"
            "from importlib.machinery import PathFinder\n"
            "for old in ('geometry', 'report', 'extract', 'distributed'):\n"
            "    assert PathFinder.find_spec('causalgeom.' + old, cg.__path__) is None, old\n"
            "print('OK')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=ROOT.parent)
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr[-3000:]


def test_facade_names_resolve_to_their_targets():
    """Every public name of the facade is the module, or the module's attribute, that `_FACADE` says."""
    import importlib

    import causalgeom as cg

    for name, (module_path, attribute) in cg._FACADE.items():
        module = importlib.import_module(module_path)
        assert getattr(cg, name) is (module if attribute is None else getattr(module, attribute)), name
    assert callable(cg.report) and callable(cg.extract)
    assert cg.report.__module__ == "causalgeom.reporting" and cg.extract.__module__ == "causalgeom.pipeline.extract"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cg.nope  # noqa: B018


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
    store, geometry, train = "causalgeom.dump.store", "causalgeom.metrics.geometry", "causalgeom.pipeline.train"
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
NUMPY_MODULES = ("causalgeom.causal", "causalgeom.interventions", "causalgeom.metrics.table",
                 "causalgeom.metrics.summary", "causalgeom.scale", "causalgeom.testing")


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


# ------------------------------------------------------------------------------- private names across layers
def private_imports(mods: dict[str, Path] | None = None) -> list[str]:
    """``from causalgeom.X import _name`` (or a private module ``causalgeom.X._m``) where X is another layer.

    The layer folder ``_util`` is not private by its name; a private name of one's own layer is fine.
    """
    mods = _modules() if mods is None else mods
    bad = []
    for mod, path in sorted(mods.items()):
        is_pkg = path.name == "__init__.py"
        here = layer_of(mod)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    target = ".".join(base[:len(base) - (node.level - 1)] + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for full in names:
                if not full.startswith(PKG + "."):
                    continue
                owner = full
                while owner not in mods and "." in owner:
                    owner = owner.rsplit(".", 1)[0]
                there = layer_of(owner)
                if there in (here, "facade"):
                    continue
                parts = [p for p in full.split(".")[1:] if p != "_util"]
                if any(p.startswith("_") and not p.startswith("__") for p in parts):
                    bad.append(f"{mod} ({here}) imports {full} ({there})")
    return bad


def test_private_import_check_flags_a_private_name(tmp_path):
    """The check itself, on a made-up package: a private name of another layer is found, its own layer's is not."""
    (tmp_path / "causalgeom" / "scale").mkdir(parents=True)
    (tmp_path / "causalgeom" / "causal").mkdir()
    a = tmp_path / "causalgeom" / "scale" / "dask.py"
    a.write_text("from ..causal.mediation import _as_rng, build_result\nfrom .._util.dask import client\n")
    b = tmp_path / "causalgeom" / "causal" / "mediation.py"
    b.write_text("from ._backends import _helper\n")
    mods = {"causalgeom.scale.dask": a, "causalgeom.causal.mediation": b}
    assert private_imports(mods) == [
        "causalgeom.scale.dask (scale) imports causalgeom.causal.mediation._as_rng (causal)"]


def test_no_private_name_of_another_layer_is_imported():
    bad = private_imports()
    assert not bad, "imports of another layer's private names (make them public there, with a docstring):\n" + \
        "\n".join(bad)


#: Test files that cross layers and so sit at the top of tests/ (every other test file sits in its layer's folder).
CROSS_LAYER_TESTS = {"test_layers", "test_docs", "test_docs_run", "test_malformed", "test_properties", "test_demo",
                     "test_facade", "test_module_size", "test_report", "test_report_screen"}
#: The test folders: one per layer of the package (``util`` for ``_util``).
TEST_FOLDERS = {"util", "dump", "metrics", "causal", "interventions", "reporting", "pipeline", "scale", "cli"}


def test_test_files_are_laid_out_by_layer():
    """Tests live in a folder per layer (a package each); only the cross-layer ones sit at the top of tests/."""
    tests = Path(__file__).resolve().parent
    assert {p.stem for p in tests.glob("test_*.py")} <= CROSS_LAYER_TESTS
    folders = {p.parent.name for p in tests.glob("*/test_*.py")}
    assert folders <= TEST_FOLDERS, folders - TEST_FOLDERS
    assert all((tests / f / "__init__.py").is_file() for f in folders)
    assert {p.parent.name for p in tests.glob("*/*/test_*.py")} == set()  # one level deep
