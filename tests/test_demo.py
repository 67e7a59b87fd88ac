"""The main job end to end on a tiny preset: train → extract → metrics → mediation → interventions → report."""

from __future__ import annotations

from pathlib import Path

import pytest

import causalgeom as cg
from causalgeom.reporting import SECTION_IDS

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
    assert "adv_correct" in study["ce-s0"] and "adv_features" in study["ce-s0"]  # the decomposition's robust outcome
    assert "data-figure='headline'" in page  # the first screen's figure: every comparison's split
    summary = page.split("<section id='summary'>")[1].split("</section>")[0]
    assert "Estimand: every number below is an effect over training runs" in summary and "robust accuracy" in summary
    logged = capsys.readouterr().out
    assert "[1/3]" in logged and "[3/3]" in logged and "report:" in logged
    # resuming: finished training runs and extracted stores are reused, not redone
    stamps = {p: p.stat().st_mtime_ns for p in (out / "study").glob("*.zarr/zarr.json")}
    cg.demo.run_demo(out, preset=preset, progress=False)
    assert {p: p.stat().st_mtime_ns for p in (out / "study").glob("*.zarr/zarr.json")} == stamps


def test_demo_grid_file_matches_the_embedded_demo_preset():
    from causalgeom import train

    grid = train.load_grid(Path(__file__).resolve().parents[1] / "pipelines" / "digits_demo.toml")
    assert grid == cg.demo.demo_grid()
    runs = grid.expand()
    assert len(runs) == 20  # 4 regularizers x 5 seeds: run-level p-values can reach 2 / C(10, 5)
    for reg in ("ce", "label_smoothing", "mixup", "cutmix"):
        assert sum(c.regularizer == reg for c in runs) == 5
    # everything but the seeds, the epochs and the name is the default training preset
    default = train.default_grid()
    assert grid.datasets == default.datasets and grid.models == default.models
    assert grid.regularizers == default.regularizers
    assert {k: v for k, v in grid.train.items() if k != "epochs"} == \
        {k: v for k, v in default.train.items() if k != "epochs"}
    assert [c.epochs for c in runs] == [cg.demo.DEMO_EPOCHS] * 20
