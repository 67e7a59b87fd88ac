"""Warnings of the command line speak its words: flags and query keys, not Python keywords (issue 26)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import causalgeom as cg

ROOT = Path(__file__).resolve().parents[1]
_MESSAGE = ("n_boot= (200) has no effect under inference='cr2' (the default), which resamples nothing; pass "
            "inference='wild' for replicates, or leave n_boot= out")


def _command(name: str):
    from causalgeom.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    return sub.choices[name]


def test_mediate_names_the_flag_and_the_query_key():
    from causalgeom.cli import cli_words

    text = cli_words(_MESSAGE, _command("mediate"))
    assert "n_boot=" not in text and "inference='" not in text
    assert text.startswith("--n-boot / query key n_boot (200) has no effect under --inference cr2")
    assert "pass --inference wild" in text and text.endswith("leave --n-boot / query key n_boot out")


def test_a_command_without_query_file_names_only_the_flag():
    from causalgeom.cli import cli_words

    text = cli_words(_MESSAGE, _command("decompose"))  # decompose has --n-boot, no --query, no --inference
    assert text.startswith("--n-boot (200) has no effect") and "query key" not in text
    assert "inference='wild'" in text  # not an option of decompose: left as it is


@pytest.mark.slow
def test_console_mediate_warning_from_a_query_file(tmp_path):
    cg.testing.make_study(tmp_path / "study", n_runs=6, n=60, d=4, k=3, paired=True)
    (tmp_path / "q.toml").write_text('[[query]]\ntreatment = "regularizer"\ncontrol = "ce"\n'
                                     'treated = "label_smoothing"\nmediators = ["rms"]\n'
                                     'outcomes = ["overconfidence"]\nn_boot = 200\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "causalgeom", "mediate", "study", "--query", "q.toml", "--out", "m"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "warning:" in line and "n-boot" in line]
    assert warning, proc.stderr
    assert "query key n_boot (200)" in warning[0] and "n_boot=" not in warning[0]
