"""Training: soft targets vs their definitions, one loss vs torch's cross-entropy, runs, resume, grids, CLI."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from causalgeom import train
from causalgeom.cli import main
from causalgeom.errors import ConfigError
from causalgeom.pipeline import data as data_mod
from causalgeom.pipeline.train import GridConfig, SoftTargets, TrainConfig

from tests._helpers import REPO_ROOT

REPO = REPO_ROOT

#: A tiny digits run: 64 training images, 3 epochs (well under a second).
TINY = dict(dataset="digits", model="small_cnn", epochs=3, batch_size=32, lr=0.05, max_train_samples=64)


def _batch(b: int = 8, k: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, 6, 6, generator=g)
    y = torch.arange(b) % k  # consecutive samples have different labels
    return x, y


# ------------------------------------------------------------------------------------------ soft targets
def test_ce_targets_are_one_hot():
    x, y = _batch()
    x2, q = SoftTargets(5)(x, y)
    assert torch.equal(x2, x) and torch.equal(q, F.one_hot(y, 5).float())


def test_label_smoothing_matches_definition_and_torch_loss():
    x, y = _batch()
    eps, k = 0.1, 5
    _, q = SoftTargets(k, label_smoothing=eps)(x, y)
    torch.testing.assert_close(q, (1 - eps) * F.one_hot(y, k).float() + eps / k)
    logits = torch.randn(8, k, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(train.soft_cross_entropy(logits, q), F.cross_entropy(logits, y, label_smoothing=eps))
    torch.testing.assert_close(train.soft_cross_entropy(logits, F.one_hot(y, k).float()), F.cross_entropy(logits, y))


def test_mixup_matches_definition():
    x, y = _batch()
    x2, q = SoftTargets(5, mixup_alpha=1.0)(x, y, torch.Generator().manual_seed(3))
    lam = float(q[0, y[0]])  # y[0] != y[-1]: q = lam onehot(y) + (1 - lam) onehot(roll(y))
    expected_q = lam * F.one_hot(y, 5).float() + (1 - lam) * F.one_hot(y.roll(1), 5).float()
    torch.testing.assert_close(q, expected_q)
    torch.testing.assert_close(x2, lam * x + (1 - lam) * x.roll(1, 0))
    torch.testing.assert_close(q.sum(1), torch.ones(8))


def test_cutmix_matches_definition():
    x, y = _batch()
    x2, q = SoftTargets(5, cutmix_alpha=1.0)(x, y, torch.Generator().manual_seed(4))
    # kept fraction = pixels (of every channel) still equal to the sample's own image
    own = (x2 == x).all(dim=1).float().mean(dim=(1, 2))
    pasted = (x2 == x.roll(1, 0)).all(dim=1).float().mean(dim=(1, 2))
    torch.testing.assert_close(own + pasted, torch.ones(8))
    torch.testing.assert_close(q[torch.arange(8), y], own)
    torch.testing.assert_close(q[torch.arange(8), y.roll(1)], pasted)
    torch.testing.assert_close(q.sum(1), torch.ones(8))


def test_combination_smooths_the_mixed_targets():
    x, y = _batch()
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    _, q_mix = SoftTargets(5, mixup_alpha=0.4)(x, y, gen())
    _, q = SoftTargets(5, label_smoothing=0.2, mixup_alpha=0.4)(x, y, gen())
    torch.testing.assert_close(q, 0.8 * q_mix + 0.2 / 5)


def test_soft_targets_deterministic_and_leave_global_rng_alone():
    x, y = _batch()
    before = torch.get_rng_state()
    a = SoftTargets(5, mixup_alpha=1.0, cutmix_alpha=1.0)(x.clone(), y, torch.Generator().manual_seed(7))
    b = SoftTargets(5, mixup_alpha=1.0, cutmix_alpha=1.0)(x.clone(), y, torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@settings(max_examples=25, deadline=None)
@given(eps=st.floats(0, 0.99), mix=st.sampled_from([0.0, 0.2, 1.0]), cut=st.sampled_from([0.0, 1.0]),
       seed=st.integers(0, 1000))
def test_soft_targets_are_distributions(eps, mix, cut, seed):
    x, y = _batch(b=6, k=4, seed=seed)
    _, q = SoftTargets(4, label_smoothing=eps, mixup_alpha=mix, cutmix_alpha=cut)(
        x, y, torch.Generator().manual_seed(seed))
    assert q.shape == (6, 4) and bool((q >= 0).all())
    torch.testing.assert_close(q.sum(1), torch.ones(6))


# ----------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("kwargs, match", [
    (dict(regularizer="dropblock"), r"regularizer: unknown component\(s\) 'dropblock'"),
    (dict(regularizer="label_smoothing", label_smoothing=-0.1),
     r"label_smoothing: expected a number in \[0, 1\), got -0.1"),
    (dict(regularizer="mixup", mixup_alpha=-1.0), r"mixup_alpha: expected a number >= 0, got -1.0"),
    (dict(regularizer="mixup"), "mixup_alpha must be > 0"),
    (dict(regularizer="ce", label_smoothing=0.1), "does not include 'label_smoothing'"),
    (dict(regularizer="ce+mixup", mixup_alpha=1.0), "cannot be combined"),
    (dict(epochs=0), "epochs: expected an integer >= 1, got 0"),
    (dict(optimizer="lbfgs"), r"optimizer: expected one of \['sgd', 'adamw'\], got 'lbfgs'"),
    (dict(model="resnet7"), "model: unknown name 'resnet7'"),
    (dict(run_id="../x"), "run_id"),
    (dict(dataset="cifar10", data_root="/nonexistent/cifar"), "cifar-10-batches-py"),
])
def test_bad_config_fails_before_training(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        train.train_run(TrainConfig(**{**TINY, **kwargs}), tmp_path, progress=False)
    assert not (tmp_path / "runs").exists()  # nothing written


def test_config_dict_round_trip_and_attrs():
    cfg = TrainConfig(regularizer="mixup+label_smoothing", label_smoothing=0.1, mixup_alpha=1.0, seed=2).validate()
    assert cfg.regularizer == "label_smoothing+mixup" and cfg.run_id == "label_smoothing0.1_mixup1.0-s2"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    attrs = cfg.run_attrs()
    assert attrs["strength"] == 0.1 and attrs["regularizer_params"] == {"label_smoothing": 0.1, "mixup_alpha": 1.0}
    assert TrainConfig(regularizer="ce").validate().run_attrs()["strength"] == 0.0
    assert TrainConfig(regularizer="weight_decay", weight_decay=5e-4).validate().run_id == "weight_decay0.0005-s0"
    with pytest.raises(ConfigError, match="unknown key"):
        TrainConfig.from_dict({"epochz": 3})


# -------------------------------------------------------------------------------------------------- runs
def _curves(run_dir: Path) -> list[dict]:
    with open(run_dir / "curves.csv") as fh:
        return list(csv.DictReader(fh))


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def test_tiny_run_trains_and_writes_its_folder(tmp_path):
    cfg = TrainConfig(**{**TINY, "epochs": 5, "max_train_samples": 256, "num_threads": 2})
    threads = torch.get_num_threads()
    run_dir = train.train_run(cfg, tmp_path, progress=False)
    assert torch.get_num_threads() == threads  # restored
    assert run_dir == tmp_path / "runs" / "ce-s0"
    assert {p.name for p in run_dir.iterdir()} == {"checkpoint.pt", "config.json", "curves.csv", "DONE"}
    rows = _curves(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert float(rows[-1]["train_loss"]) < 0.5 * float(rows[0]["train_loss"])
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 5 and set(ckpt) >= {"model", "config", "optimizer", "epoch"}
    stored = json.loads((run_dir / "config.json").read_text())
    assert stored["regularizer"] == "ce" and stored["strength"] == 0.0 and stored["regularizer_params"] == {}
    assert stored["seed"] == 0 and stored["run_id"] == "ce-s0"
    model, config = train.load_checkpoint(run_dir)
    assert not model.training and next(model.parameters()).device.type == "cpu"
    assert config["model_spec"]["num_classes"] == 10
    calib = train.evaluate(model, data_mod.load_dataset("digits", "calib"))
    assert calib["accuracy"] == pytest.approx(float(rows[-1]["calib_acc"]))


def test_same_seed_same_weights_and_no_global_rng_side_effect(tmp_path):
    cfg = TrainConfig(**{**TINY, "regularizer": "cutmix", "cutmix_alpha": 1.0, "dropout": 0.2, "epochs": 2})
    before = torch.get_rng_state()
    a = _weights(train.train_run(cfg, tmp_path / "a", progress=False))
    assert torch.equal(torch.get_rng_state(), before)
    b = _weights(train.train_run(cfg, tmp_path / "b", progress=False))
    c = _weights(train.train_run(TrainConfig(**{**cfg.to_dict(), "seed": 1}), tmp_path / "c", progress=False))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    cfg = TrainConfig(**{**TINY, "regularizer": "label_smoothing+mixup", "label_smoothing": 0.1,
                         "mixup_alpha": 1.0, "dropout": 0.3, "epochs": 4})
    full = train.train_run(cfg, tmp_path / "full", progress=False)
    part = train.train_run(cfg, tmp_path / "part", progress=False, stop_after=2)  # "killed" after epoch 2
    assert train.run_status(part) == "partial" and len(_curves(part)) == 2
    assert torch.load(part / "checkpoint.pt", weights_only=True)["epoch"] == 2
    train.train_run(cfg, tmp_path / "part", progress=False)  # resumes at epoch 3
    assert train.run_status(part) == "done"
    a, b = _weights(full), _weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in _curves(full)] == [r["train_loss"] for r in _curves(part)]


def test_partial_run_with_other_config_is_refused(tmp_path):
    cfg = TrainConfig(**TINY, run_id="r")
    train.train_run(cfg, tmp_path, progress=False, stop_after=1)
    with pytest.raises(ConfigError, match="different config"):
        train.train_run(TrainConfig(**{**TINY, "lr": 0.01}, run_id="r"), tmp_path, progress=False)


def test_finished_run_is_skipped(tmp_path):
    run_dir = train.train_run(TrainConfig(**{**TINY, "epochs": 1}), tmp_path, progress=False)
    stamp = (run_dir / "checkpoint.pt").stat().st_mtime_ns
    train.train_run(TrainConfig(**{**TINY, "epochs": 1}), tmp_path, progress=False)
    assert (run_dir / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_train_on_fake_cifar_with_augmentation(tmp_path):
    base = tmp_path / "data" / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, 4).tolist()}
        (base / fname).write_bytes(pickle.dumps(entry, protocol=2))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}, protocol=2))
    cfg = TrainConfig(dataset="cifar10", data_root=str(tmp_path / "data"), model="small_cnn", epochs=1,
                      batch_size=8, augment="flip_crop", regularizer="cutmix", cutmix_alpha=1.0)
    run_dir = train.train_run(cfg, tmp_path / "out", progress=False)
    model, config = train.load_checkpoint(run_dir / "checkpoint.pt")
    assert config["dataset"] == "cifar10" and model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_flip_crop_returns_shifted_or_flipped_crops():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5) + 1
    out = train.loop._flip_crop(x, torch.Generator().manual_seed(0), pad=0)
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(2))
    out = train.loop._flip_crop(x, torch.Generator().manual_seed(1), pad=2)
    assert out.shape == x.shape and set(out.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


# ------------------------------------------------------------------------------------------------- grids
def test_default_preset_file_matches_embedded_preset():
    grid = train.load_grid(REPO / "pipelines" / "digits_default.toml")
    assert grid == train.default_grid()
    ids = [c.run_id for c in grid.expand()]
    assert len(ids) == 12 and ids[:3] == ["ce-s0", "ce-s1", "ce-s2"] and "mixup1.0-s2" in ids
    assert {c.regularizer for c in grid.expand()} == {"ce", "label_smoothing", "mixup", "cutmix"}


def test_example_pipelines_parse():
    grids = [p for p in sorted((REPO / "pipelines").glob("*.toml")) if not p.name.startswith("zoo_")]
    assert len(grids) >= 3
    for path in grids:  # training grids (zoo_*.toml list checkpoints: tests/pipeline/test_zoo.py reads them)
        configs = train.load_grid(path).expand(check_data=False)
        assert configs and len({c.run_id for c in configs}) == len(configs), path


def test_grid_combination_tags_and_errors():
    grid = GridConfig.from_dict({"seeds": [0], "train": {"epochs": 1}, "regularizers": [
        {"name": "label_smoothing+mixup", "strengths": [0.1, 0.2], "mixup_alpha": 0.4},
        {"name": "ce"}, {"name": "ce", "tag": "wd", "weight_decay": 1e-4}]})
    ids = [c.run_id for c in grid.expand()]
    assert ids == ["label_smoothing0.1_mixup0.4-s0", "label_smoothing0.2_mixup0.4-s0", "ce-s0", "ce_wd-s0"]
    dup = GridConfig.from_dict({"regularizers": [{"name": "ce"}, {"name": "ce", "dropout": 0.1}]})
    with pytest.raises(ConfigError, match="duplicate run ids"):
        dup.expand()
    with pytest.raises(ConfigError, match=r"run 'mixup' strength=-1.0"):
        GridConfig.from_dict({"regularizers": [{"name": "mixup", "strengths": [-1.0]}]}).expand()
    with pytest.raises(ConfigError, match="unknown key"):
        GridConfig.from_dict({"regularizers": [{"name": "ce"}], "epochs": 3})


def test_run_grid_validates_everything_first(tmp_path):
    grid = GridConfig.from_dict({"train": {**{k: v for k, v in TINY.items() if k not in ("dataset", "model")}},
                                 "regularizers": [{"name": "ce"}, {"name": "mixup", "strengths": [1.0, -2.0]}]})
    with pytest.raises(ConfigError, match="mixup_alpha"):
        train.run_grid(grid, tmp_path, progress=False)
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------------------------- CLI
def test_cli_trains_then_skips(tmp_path, capsys):
    toml = tmp_path / "tiny.toml"
    toml.write_text('name = "tiny"\ndataset = "digits"\nmodel = "small_cnn"\nseeds = [0, 1]\n'
                    "[train]\nepochs = 1\nbatch_size = 32\nmax_train_samples = 32\n"
                    '[[regularizers]]\nname = "ce"\n[[regularizers]]\nname = "mixup"\nstrengths = [1.0]\n')
    out = tmp_path / "out"
    assert main(["train", str(toml), "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir() if not p.name.startswith(".")) == \
        ["ce-s0", "ce-s1", "mixup1.0-s0", "mixup1.0-s1"]
    stamp = (out / "runs" / "ce-s0" / "checkpoint.pt").stat().st_mtime_ns
    assert main(["train", str(toml), "--out", str(out), "--no-progress"]) == 0
    assert (out / "runs" / "ce-s0" / "checkpoint.pt").stat().st_mtime_ns == stamp
    assert "4/4 runs done" in capsys.readouterr().err


def test_cli_bad_config_is_an_error_not_a_traceback(tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text('[[regularizers]]\nname = "label_smoothing"\nstrengths = [-0.1]\n')
    assert main(["train", str(toml), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "label_smoothing" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.toml"), "--no-progress"]) == 2
