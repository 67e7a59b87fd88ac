"""The documentation runs (issue 25, item 7).

* Every ```python block of README.md and docs/*.md is executed, in order per file, in an empty temporary folder.
  A block that cannot run here is preceded by ``<!-- not-run: REASON -->`` (the reason is required); a block that
  needs inputs a reader would already have (the demo study of quickstart.md) is preceded by
  ``<!-- doc-test setup: CODE -->``, which is run first.
* Every shell example in the ``--help`` texts runs from an empty folder once the inputs it names exist
  (created here, as a reader's own files would be); the few that need trained checkpoints say why they are
  skipped.
* Keyword arguments that have no effect under the chosen options warn (``n_boot`` with CR2 inference).
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

import causalgeom as cg

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_BLOCK = re.compile(r"(?:<!--\s*(not-run|doc-test setup):?(.*?)-->\s*\n)?```python\n(.*?)```", re.S)
#: At most this many blocks may be marked not-run (keep them few: a marked block is an untested promise).
MAX_NOT_RUN = 6


def _blocks(path: Path) -> list[tuple[str | None, str, str]]:
    """(mark, mark text, code) of every python block of ``path``."""
    return [(m.group(1), (m.group(2) or "").strip(), m.group(3)) for m in _BLOCK.finditer(path.read_text())]


def test_every_block_is_found_and_marks_have_reasons():
    total = not_run = 0
    for path in DOCS:
        text = path.read_text()
        blocks = _blocks(path)
        assert len(blocks) == text.count("```python"), path.name  # the pattern sees every block
        for mark, why, _ in blocks:
            total += 1
            if mark == "not-run":
                not_run += 1
                assert len(why.split()) >= 3, f"{path.name}: a not-run mark needs a reason, got {why!r}"
            elif mark:
                assert why, f"{path.name}: an empty doc-test setup"
    assert total >= 8 and not_run <= MAX_NOT_RUN, (total, not_run)


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in DOCS if any(m != "not-run" for m, _, _ in _blocks(p))],
                         ids=lambda p: p.name)
def test_python_blocks_run(path, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__doc__"}
    for i, (mark, setup, code) in enumerate(_blocks(path)):
        if mark == "not-run":
            continue
        if mark == "doc-test setup":
            exec(compile(setup, f"{path.name}[{i}] setup", "exec"), namespace)  # noqa: S102 - our documentation
        exec(compile(code, f"{path.name}[{i}]", "exec"), namespace)  # noqa: S102 - our documentation
    if path.name == "README.md":
        assert (tmp_path / "my_runs" / "mine.zarr").is_dir() and (tmp_path / "report.html").is_file()
        assert len(namespace["dec"].summary()) and len(namespace["res"].summary())


# -- --help examples ------------------------------------------------------------------------------------------------

#: Examples that cannot run in a test, with the reason.
HELP_SKIPS = {
    "causalgeom demo": "trains the 20-run demo grid (minutes); tests/test_demo.py runs it (slow)",
    "causalgeom train ": "trains the full digits grid (minutes); tests/pipeline/test_train.py trains small grids",
    "causalgeom extract runs_out": "needs finished training runs (causalgeom train, minutes); tests/pipeline/test_extract.py",
    "causalgeom decompose study --treated mixup --outcome robust_accuracy":
        "needs adversarial features (extract --save-adv on trained models); tests/causal/test_decompose.py",
}


def _help_examples() -> list[str]:
    from causalgeom.cli import build_parser

    parser = build_parser()
    parsers = [parser] + [sp for a in parser._actions if isinstance(a, argparse._SubParsersAction)
                          for sp in a.choices.values()]
    out: list[str] = []
    for p in parsers:
        lines = (p.epilog or "").splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1].rstrip() + " " + lines[i].strip()
            if line.startswith("causalgeom "):
                # cut the description: two or more spaces not followed by an option ("--x"), e.g. "  -> file"
                line = re.split(r"\s{2,}(?=[^\s-]|->)", line)[0]
                out.append(" ".join(line.split()))
            i += 1
    return out


def _inputs(root: Path) -> None:
    """The files the examples name, as a reader would have them."""
    import pandas as pd
    import safetensors.numpy
    import torch
    from PIL import Image

    # demo_out/study as `causalgeom demo` leaves it: every arm trained with seeds 0, 1, 2, all scoring the same
    # images, and same-seed runs sharing an initialisation, recorded (as `causalgeom train` does) in init_digest
    study = cg.open_study(root / "demo_out" / "study", create=True)
    labels = np.random.default_rng(0).integers(0, 3, 80)
    for arm, (reg, tag, strength, scale) in enumerate((("ce", "ce", 0.0, 1.0), ("label_smoothing", "ls", 0.1, 0.7),
                                                       ("mixup", "mx", 1.0, 0.8))):
        for s in range(3):
            run = cg.testing.make_run(n=80, d=6, k=3, seed=10 * arm + s, run_id=f"{tag}-s{s}", scale=scale,
                                      labels=labels, regularizer=reg, strength=strength, init_digest=f"init-{s}")
            run.attrs["seed"] = s  # the training seed (the synthetic numbers differ per arm)
            study.add(run)
    rng = np.random.default_rng(0)
    W = rng.normal(size=(3, 6)).astype("float32")
    for i, name in enumerate(("dump", "a", "b", "c")):
        y = rng.integers(0, 3, 60)
        f = (2 * W[y] + rng.normal(size=(60, 6))).astype("float32")
        arrays = {"features": f, "logits": f @ W.T, "labels": y, "fc.weight": W, "fc.bias": np.zeros(3, "float32")}
        if name in ("dump", "a"):
            np.savez(root / f"{name}.npz", **arrays)
        elif name == "b":
            torch.save({k: torch.as_tensor(v) for k, v in arrays.items()}, root / "b.pt")
        else:
            safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                                        str(root / "c.safetensors"))
    (root / "runs.csv").write_text("file,run_id,regularizer,strength,seed\na.npz,ce-s0,ce,0,0\n"
                                   "b.pt,ls-s0,label_smoothing,0.1,0\nc.safetensors,mx-s0,mixup,1.0,0\n")
    (root / "q.toml").write_text('[[query]]\ntreatment = "regularizer"\ncontrol = "ce"\ntreated = "label_smoothing"\n'
                                 'mediators = ["rms", "cos_true"]\noutcomes = ["overconfidence"]\n')
    (root / "pipelines" / "queries").mkdir(parents=True)
    shutil.copy(ROOT / "pipelines" / "queries" / "demo.toml", root / "pipelines" / "queries" / "demo.toml")
    study = cg.open_study(root / "demo_out" / "study")
    pd.DataFrame(study.to_frame(level="run", progress=False)).to_parquet(root / "table.parquet")
    for c in range(2):  # an image folder of two classes
        (root / "imgs" / f"class{c}").mkdir(parents=True)
        for j in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "imgs" / f"class{c}" / f"{j}.png")
    import torchvision

    net = torchvision.models.resnet18(weights=None, num_classes=2)  # the image folder's two classes
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(root / "r18.safetensors"))


def test_help_examples_are_found():
    examples = _help_examples()
    assert len(examples) >= 20 and all(e.startswith("causalgeom ") for e in examples)
    assert "causalgeom import dump.npz study/run1.zarr" in examples
    assert any(e.endswith("--inference permutation") for e in examples)  # a continued line is joined


@pytest.mark.slow
def test_help_examples_run_from_an_empty_folder(tmp_path, monkeypatch, capsys):
    from causalgeom.cli import main

    monkeypatch.chdir(tmp_path)
    _inputs(tmp_path)
    ran, failed = [], []
    for example in _help_examples():
        if any(example.startswith(k) for k in HELP_SKIPS):
            continue
        try:
            rc = main(shlex.split(example)[1:])  # verbatim
        except SystemExit as exc:  # a usage error
            rc = exc.code
        err = capsys.readouterr().err
        ran.append(example)
        if rc != 0:
            failed.append(f"{example}: exit {rc}: {err.strip().splitlines()[-1] if err.strip() else ''}")
    assert not failed, "\n".join(failed)
    assert len(ran) >= 18
    assert (tmp_path / "study" / "run1.zarr").is_dir()  # the import example made its own folder


# -- keywords without effect ---------------------------------------------------------------------------------------

def test_n_boot_without_effect_warns(tmp_path):
    import warnings

    table = cg.testing.make_study(tmp_path / "s", n_runs=6, n=60, d=5, k=3).to_frame(progress=False)
    kw = dict(treatment="regularizer", control="ce", treated="label_smoothing", mediators=["rms"],
              outcome="overconfidence")
    with pytest.warns(UserWarning, match=r"n_boot= \(1000\) has no effect under inference='cr2'"):
        a = cg.causal.mediate(table, n_boot=1000, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        b = cg.causal.mediate(table, **kw)  # the default: no n_boot, no warning
        cg.causal.mediate(table, inference="wild", n_boot=99, rng=0, **kw)  # n_boot counts wild replicates
    np.testing.assert_array_equal(a.summary()["estimate"], b.summary()["estimate"])  # and indeed changes nothing
    np.testing.assert_array_equal(a.summary()["ci_low"], b.summary()["ci_low"])


def test_save_creates_parent_folders_but_not_through_a_file(tmp_path):
    ds = cg.testing.make_run(n=20, d=3, k=2)
    out = cg.save(ds, tmp_path / "a" / "b" / "run.zarr")
    assert cg.open(out).sizes["sample"] == 20
    (tmp_path / "f").write_text("x")
    with pytest.raises(cg.StoreError, match="is a file, not a folder"):
        cg.save(ds, tmp_path / "f" / "sub" / "run.zarr")
    assert not (tmp_path / "f").is_dir()
