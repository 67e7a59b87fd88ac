"""The main job end to end on a tiny preset: train → extract → metrics → mediation → interventions → report."""

from __future__ import annotations

import pytest

import causalgeom as cg
from causalgeom.report import SECTION_IDS

TINY = """
name = "tiny"
dataset = "digits"
model = "small_cnn"
seeds = [0, 1]

[train]
epochs = 3
batch_size = 64
lr = 0.05
max_train_samples = 120
device = "cpu"
num_threads = 1

[[regularizers]]
name = "ce"

[[regularizers]]
name = "label_smoothing"
strengths = [0.1]
"""


@pytest.mark.slow
def test_demo_pipeline_end_to_end_and_resume(tmp_path, capsys):
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY)
    out = tmp_path / "demo"
    path = cg.demo.run_demo(out, preset=preset, progress=False)
    assert path == out / "report" / "report.html"
    page = path.read_text()
    for sid in SECTION_IDS:
        assert f"<section id='{sid}'>" in page
    for fig in ("robust_rescale", "robust_rotate"):  # in-model interventions under attack
        assert f"data-figure='{fig}'" in page
    study = cg.open_study(out / "study")
    assert sorted(study.runs.regularizer) == ["ce", "ce", "label_smoothing", "label_smoothing"]
    assert "adv_correct" in study["ce-s0"]
    logged = capsys.readouterr().out
    assert "[1/3]" in logged and "[3/3]" in logged and "report:" in logged
    # resuming: finished training runs and extracted stores are reused, not redone
    stamps = {p: p.stat().st_mtime_ns for p in (out / "study").glob("*.zarr/zarr.json")}
    cg.demo.run_demo(out, preset=preset, progress=False)
    assert {p: p.stat().st_mtime_ns for p in (out / "study").glob("*.zarr/zarr.json")} == stamps
