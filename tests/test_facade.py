"""The package facade (`causalgeom._FACADE`), the one study-or-path coercion (`as_study`) and the shared `study`
fixture of tests/conftest.py."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import causalgeom as cg
from causalgeom.dump.study import Study, as_study
from causalgeom.errors import ConfigError, StoreError
from causalgeom.metrics.summary import run_frame
from tests._helpers import STUDY_STORAGE

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------- the facade
_FACADE_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path

    import torch
    from torch import nn

    import causalgeom
    from causalgeom.testing import make_study

    out = Path(sys.argv[1])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))
    x, y = torch.rand(20, 1, 3, 4), torch.arange(20) % 3
    path = causalgeom.extract(model, (x, y), out / "run.zarr", progress=False)
    assert causalgeom.open(path).sizes["sample"] == 20
    study = make_study(out / "study", n_runs=4, n=40, d=4, k=3)
    html = causalgeom.report(study, out=out / "report.html", progress=False, interventions=False, refute=False)
    assert Path(html).read_text().startswith("<!DOCTYPE html>")
    assert "causalgeom.reporting" in sys.modules and "causalgeom.report" not in sys.modules
    assert "causalgeom.extract" not in sys.modules
    print("OK")
""")


@pytest.mark.slow  # a fresh interpreter that imports torch, extracts and writes a report: about 15 s
def test_extract_and_report_through_a_fresh_import(tmp_path):
    """``import causalgeom; causalgeom.extract(...); causalgeom.report(...)`` with nothing else imported first."""
    script = tmp_path / "facade.py"
    script.write_text(_FACADE_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-4000:]


def test_facade_names_are_cached_and_listed():
    assert cg.geometry is __import__("causalgeom.metrics.geometry", fromlist=["x"])
    assert "geometry" in vars(cg)  # resolved once, then an ordinary attribute
    assert {"report", "extract", "geometry", "distributed"} <= set(dir(cg)) and "report" in cg.__all__
    from causalgeom import calibration, distributed

    assert calibration.ece is cg.calibration.ece and distributed.__name__ == "causalgeom.scale"


# -------------------------------------------------------------------------------------------- as_study
def test_as_study_takes_a_study_or_a_path_and_refuses_the_rest(study, tmp_path):
    assert as_study(study) is study
    for spelled in (study.path, str(study.path)):
        opened = as_study(spelled)
        assert isinstance(opened, Study) and opened.path == study.path and opened.run_ids == study.run_ids
    with pytest.raises(ConfigError, match=r"^runs: expected a causalgeom Study or the path of a study folder, "
                                          r"got list$"):
        as_study([study.path], "runs")
    with pytest.raises(StoreError, match="no study folder"):
        as_study(tmp_path / "missing")


@pytest.mark.slow
def test_functions_taking_a_study_accept_its_path(study):
    """The report's run table and the post hoc study interventions give the same answer for a path."""
    import pandas as pd

    pd.testing.assert_frame_equal(run_frame(str(study.path), progress=False), run_frame(study, progress=False))
    with pytest.raises(ConfigError, match="study: expected a causalgeom Study"):
        cg.interventions.rescale_study(42, scales=[1.0])
    with pytest.raises(ConfigError, match="study: expected a causalgeom Study"):
        cg.causal.decompose(42, treatment="regularizer", control="ce", treated="label_smoothing")


# ------------------------------------------------------------------------------------- the study fixture
def test_study_fixture_is_stored_as_its_parameter_says(study, request):
    storage = STUDY_STORAGE[request.node.callspec.params["study"]]
    assert study.run_ids == ["ce-s0", "ce-s1", "ls-s2", "ls-s3"]
    for run_id in study.run_ids:
        ds = study[run_id]
        assert ds.sizes["sample"] == 120
        assert set(ds["features"].chunks[0][:-1]) <= {storage["sample_chunk"]}
        meta = json.loads((study.run_path(run_id) / "features" / "zarr.json").read_text())
        codecs = {c["name"] for c in meta["codecs"]}
        assert ("zstd" in codecs) == (storage.get("compressor") == "zstd"), codecs
