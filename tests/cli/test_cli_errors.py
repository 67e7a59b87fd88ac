"""No raw traceback from any CLI command (issue 16): bad input exits 2 with one line; ``--debug`` shows the traceback.

Each command gets a nonexistent run or study, an unreadable table, an existing file (or folder) in the way of its
output, and out-of-range numbers. The test runs `causalgeom.cli.main` in-process and checks the exit status, that
stderr is exactly one line starting ``causalgeom COMMAND: error``, and that no traceback was printed.
"""

from __future__ import annotations

import pytest

from causalgeom.cli import main
from causalgeom.testing import make_study

_MEDIATE = ["--treatment", "regularizer", "--treated", "label_smoothing", "--mediators", "rms",
            "--outcome", "overconfidence", "--no-progress"]

#: (case id, argv with {S} = study, {F} = an existing file, {D} = an existing folder, {R} = a ragged CSV,
#: {E} = an empty CSV, {B} = a binary file named .csv; expected text in the error line)
CASES = [
    ("demo: preset missing", ["demo", "--preset", "nope.toml", "--out", "{T}/d"], "not found"),
    ("demo: out is a file", ["demo", "--out", "{F}"], "in the way"),
    ("train: config missing", ["train", "nope.toml", "--out", "{T}/o"], "not found"),
    ("train: config not TOML", ["train", "{R}", "--out", "{T}/o"], "not valid TOML"),
    ("train: epochs out of range", ["train", "{G}", "--out", "{T}/o"], "epochs"),
    ("extract: checkpoint missing", ["extract", "nope.pt", "--no-attack"], "nothing at nope.pt"),
    ("extract: not a runs folder", ["extract", "{S}", "--no-attack", "--out", "{F}"], "no finished runs"),
    ("extract: batch size not a number", ["extract", "nope.pt", "--batch-size", "x"], "invalid int value"),
    ("extract: out is a file", ["extract", "{K}", "--out", "{F}", "--no-attack", "--no-progress"], "Not a directory"),
    ("extract: out store is a file", ["extract", "{K}", "--out", "{Z}", "--no-attack", "--no-progress"],
     "a file (not a store folder) is in the way"),
    ("extract: zero batch size", ["extract", "{K}", "--out", "{T}/r.zarr", "--no-attack", "--batch-size", "0"],
     "batch_size: expected a positive integer, got 0"),
    ("info: run missing", ["info", "nope.zarr"], "no store"),
    ("info: a file", ["info", "{F}"], "is a file"),
    ("validate: run missing", ["validate", "{S}/nope.zarr"], "no store"),
    ("validate: a file", ["validate", "{F}"], "is a file"),
    ("import: dump missing", ["import", "nope.npz", "{T}/r.zarr"], "no such file"),
    ("import: table is not a dump", ["import", "{R}", "{T}/r.zarr"], "unknown dump format"),
    ("import: destination is a file", ["import", "{N}", "{N2}", "{F}"], "a file"),
    ("import: ragged run table", ["import", "{N}", "{N2}", "{T}/s", "--run-table", "{R}"], "run table"),
    ("import: empty run table", ["import", "{N}", "{N2}", "{T}/s", "--run-table", "{E}"], "run table"),
    ("import: binary run table", ["import", "{N}", "{N2}", "{T}/s", "--run-table", "{B}"], "run table"),
    ("metrics: study missing", ["metrics", "nope"], "no study folder"),
    ("metrics: zero bins", ["metrics", "{S}", "--n-bins", "0"], "--n-bins"),
    ("metrics: ci above 1", ["metrics", "{S}", "--ci", "2"], "--ci"),
    ("mediate: study missing", ["mediate", "nope", *_MEDIATE], "no study folder"),
    ("mediate: empty table", ["mediate", "{E}", *_MEDIATE], "unreadable table"),
    ("mediate: binary table", ["mediate", "{B}", *_MEDIATE], "UTF-8"),
    ("mediate: ragged table", ["mediate", "{R}", *_MEDIATE], "not in the table"),
    ("mediate: negative n_boot", ["mediate", "{S}", *_MEDIATE, "--n-boot", "-3"], "n_boot"),
    ("mediate: ci level above 1", ["mediate", "{S}", *_MEDIATE, "--ci-level", "3"], "ci_level"),
    ("mediate: unknown method", ["mediate", "{S}", *_MEDIATE, "--method", "bayes"], "invalid choice"),
    ("decompose: study missing", ["decompose", "nope", "--treated", "label_smoothing"], "no study folder"),
    ("decompose: table is a file", ["decompose", "{R}", "--treated", "label_smoothing"], "is a file"),
    ("decompose: negative n_boot", ["decompose", "{S}", "--treated", "label_smoothing", "--n-boot", "-1"], "n_boot"),
    ("intervene: run missing", ["intervene", "{S}", "--run", "nope", "--rescale", "0.5"], "no run 'nope'"),
    ("intervene: study missing", ["intervene", "nope", "--rescale", "0.5"], "no study folder"),
    ("intervene: negative scale", ["intervene", "{S}", "--rescale", "-1"], "scales"),
    ("intervene: rotation above 1", ["intervene", "{S}", "--rotate", "2"], "alphas"),
    ("intervene: negative n_boot", ["intervene", "{S}", "--rescale", "0.5", "--n-boot", "-1"], "n_boot"),
    ("intervene: scale not a number", ["intervene", "{S}", "--rescale", "a"], "rescale"),
    ("report: study missing", ["report", "nope"], "no study folder"),
    ("report: query not TOML", ["report", "{S}", "--query", "{R}", "--no-interventions", "--no-refute"],
     "not valid TOML"),
    ("unknown command", ["frobnicate"], "invalid choice"),
    ("unknown option", ["info", "{S}", "--frobnicate"], "unrecognized arguments"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import numpy as np

    root = tmp_path_factory.mktemp("cli_errors")
    make_study(root / "study", 4, n=24, d=4, k=3)
    (root / "file.txt").write_text("x")
    (root / "ragged.csv").write_text("a,b\n1,2,3\n4\n")
    (root / "empty.csv").write_text("")
    (root / "bin.csv").write_bytes(b"\xff\xfe\x00\x01")
    (root / "grid.toml").write_text('dataset = "digits"\nseeds = [0]\n[train]\nepochs = 0\n[[regularizers]]\nname = "ce"\n')
    from ..malformed_corpus import _checkpoint

    (root / "ck").mkdir()
    (root / "store.zarr").write_text("x")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        f = rng.normal(size=(10, 3)).astype(np.float32)
        np.savez(root / f"{name}.npz", features=f, logits=f[:, :2], labels=rng.integers(0, 2, 10))
    return {"S": root / "study", "F": root / "file.txt", "R": root / "ragged.csv", "E": root / "empty.csv",
            "B": root / "bin.csv", "G": root / "grid.toml", "N": root / "a.npz", "N2": root / "b.npz",
            "T": root / "out", "K": _checkpoint(root / "ck"), "Z": root / "store.zarr"}


def _argv(argv, files):
    return [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]


@pytest.mark.parametrize("argv,expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(argv, expect, files, capsys, tmp_path):
    files = {**files, "T": tmp_path}
    try:
        code = main(_argv(argv, files))
    except SystemExit as exc:  # argparse's usage errors exit through SystemExit
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"causalgeom {argv[0]}: error") or err.startswith("causalgeom: error"), err
    assert "Traceback" not in err and expect in err, err


def test_internal_error_is_one_line_and_debug_shows_the_traceback(files, capsys, monkeypatch):
    from causalgeom.cli import io as cli_io

    def boom(args):
        raise RuntimeError("something broke inside")

    monkeypatch.setattr(cli_io, "_info", boom)
    assert main(["info", str(files["S"])]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("causalgeom info: internal error: RuntimeError: something broke inside") and "--debug" in err
    assert main(["info", str(files["S"]), "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in boom" in err
    monkeypatch.setenv("CAUSALGEOM_DEBUG", "1")
    assert main(["info", str(files["S"])]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_library_errors_are_classed(files, capsys, monkeypatch):
    """Foreign exceptions that mean bad input (a missing file, a KeyError for a name) exit 2 with their class."""
    from causalgeom.cli import io as cli_io

    for exc, text in [(FileNotFoundError(2, "No such file or directory", "x.csv"), "no such file or folder"),
                      (PermissionError(13, "Permission denied", "x.csv"), "permission denied"),
                      (KeyError("no run 'q'"), "unknown name"), (ValueError("bad"), "invalid value")]:
        monkeypatch.setattr(cli_io, "_info", lambda args, exc=exc: (_ for _ in ()).throw(exc))
        assert main(["info", str(files["S"])]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and text in err and "Traceback" not in err, err


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["metrics", "{S}", "--out", "{F}", "--no-progress"],
                                  ["mediate", "{S}", *_MEDIATE, "--out", "{F}"],
                                  ["intervene", "{S}", "--rescale", "0.5", "--out", "{F}", "--n-boot", "0"]],
                         ids=["metrics", "mediate", "intervene"])
def test_existing_file_as_out_exits_2(argv, files, capsys):
    """These commands find the file in the way only when they write (after computing): still one line, exit 2."""
    code = main(_argv(argv, files))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "in the way" in err[0] and "Traceback" not in err[0], err
