"""Datasets: fixed digits splits, CIFAR from its real on-disk format (python pickle batches), ImageFolder."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from causalgeom import data
from causalgeom.errors import ConfigError


def write_fake_cifar(root: Path, name: str = "cifar10", per_batch: int = 4, n_test: int = 6, seed: int = 0) -> dict:
    """Write the CIFAR python-batch layout (pickled dicts of (N, 3072) uint8 rows, channel-major) with few images."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder, train_files, test_files, meta, meta_key, label_key, k = (
            "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
            "label_names", "labels", 10)
    else:
        folder, train_files, test_files, meta, meta_key, label_key, k = (
            "cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", "fine_labels", 100)
    base = root / folder
    base.mkdir(parents=True)
    written: dict[str, list] = {"train": [], "test": []}
    for split, files, n in (("train", train_files, per_batch), ("test", test_files, n_test)):
        for fname in files:
            arr = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
            labels = rng.integers(0, k, size=n).tolist()
            entry = {"batch_label": f"fake {fname}", "data": arr, label_key: labels,
                     "filenames": [f"img{i}.png" for i in range(n)]}
            with open(base / fname, "wb") as fh:
                pickle.dump(entry, fh, protocol=2)
            written[split].append((arr, labels))
    with open(base / meta, "wb") as fh:
        pickle.dump({meta_key: [f"class{i}" for i in range(k)], "num_cases_per_batch": per_batch}, fh, protocol=2)
    return {s: (np.concatenate([a for a, _ in v]), sum((lab for _, lab in v), [])) for s, v in written.items()}


# ---------------------------------------------------------------------------------------------- digits
def test_digits_splits_fixed_disjoint_and_complete():
    splits = {s: data.load_dataset("digits", s) for s in data.SPLITS}
    assert [len(splits[s]) for s in data.SPLITS] == [1078, 269, 450]
    idx = data.split_indices(1797)
    all_idx = np.concatenate([idx[s] for s in data.SPLITS])
    assert sorted(all_idx.tolist()) == list(range(1797))
    again = data.load_dataset("digits", "calib")
    assert torch.equal(again.images, splits["calib"].images) and torch.equal(again.labels, splits["calib"].labels)
    x, y = splits["train"][0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    assert float(splits["train"].images.min()) >= 0.0 and float(splits["train"].images.max()) <= 1.0


def test_digits_matches_sklearn():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    idx = data.split_indices(len(bunch.target))["test"]
    test = data.load_dataset("digits", "test")
    np.testing.assert_allclose(test.images[:, 0].numpy(), bunch.images[idx] / 16.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(test.labels.numpy(), bunch.target[idx])


def test_dataset_info_digits_and_cifar():
    info = data.dataset_info("digits")
    assert info["num_classes"] == 10 and info["in_channels"] == 1 and info["image_size"] == (8, 8)
    train = data.load_dataset("digits", "train").images
    assert info["mean"][0] == pytest.approx(float(train.mean()), abs=1e-4)
    assert info["std"][0] == pytest.approx(float(train.std()), abs=1e-4)
    c100 = data.dataset_info("cifar100")
    assert c100["num_classes"] == 100 and len(c100["mean"]) == 3 and c100["image_size"] == (32, 32)


def test_unknown_name_and_split():
    with pytest.raises(ConfigError, match=r"dataset: expected one of \['digits'"):
        data.load_dataset("mnist", "train")
    with pytest.raises(ConfigError, match=r"split: expected one of \['train', 'calib', 'test'\], got 'val'"):
        data.load_dataset("digits", "val")


# ----------------------------------------------------------------------------------------------- CIFAR
def test_fake_cifar10_in_real_format_loads(tmp_path):
    written = write_fake_cifar(tmp_path, "cifar10", per_batch=4, n_test=6)
    n = 20
    n_calib = n // 10
    train = data.load_dataset("cifar10", "train", tmp_path)
    calib = data.load_dataset("cifar10", "calib", tmp_path)
    test = data.load_dataset("cifar10", "test", tmp_path)
    assert (len(train), len(calib), len(test)) == (n - n_calib, n_calib, 6)
    arr, labels = written["train"]
    # row layout: 1024 red, 1024 green, 1024 blue values, each 32x32 row-major
    x, y = calib[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == labels[n - n_calib]
    np.testing.assert_allclose(x.numpy(), arr[n - n_calib].reshape(3, 32, 32) / 255.0, atol=1e-7)
    x, y = test[5]
    np.testing.assert_allclose(x.numpy(), written["test"][0][5].reshape(3, 32, 32) / 255.0, atol=1e-7)
    assert y == written["test"][1][5]
    # root may also point at the batches folder itself
    assert len(data.load_dataset("cifar10", "test", tmp_path / "cifar-10-batches-py")) == 6
    data.check_dataset("cifar10", tmp_path)


def test_fake_cifar100_loads(tmp_path):
    written = write_fake_cifar(tmp_path, "cifar100", per_batch=30, n_test=5)
    train = data.load_dataset("cifar100", "train", tmp_path)
    assert len(train) == 27 and len(data.load_dataset("cifar100", "calib", tmp_path)) == 3
    assert train[3][1] == written["train"][1][3]


def test_missing_cifar_folder_says_what_to_put_where(tmp_path):
    with pytest.raises(ConfigError) as info:
        data.load_dataset("cifar10", "train", tmp_path / "nowhere")
    msg = str(info.value)
    assert "cifar-10-batches-py" in msg and "https://www.cs.toronto.edu/~kriz/cifar.html" in msg
    assert "data_batch_1" in msg and "nowhere" in msg
    with pytest.raises(ConfigError, match="cifar-100-python"):
        data.check_dataset("cifar100", tmp_path)


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/nonexistent-dir/should-not-exist"),))


def test_cifar_batch_with_foreign_globals_is_refused(tmp_path):
    write_fake_cifar(tmp_path, "cifar10", per_batch=2, n_test=2)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        pickle.dump({"data": _Evil(), "labels": [0]}, fh, protocol=2)
    with pytest.raises(ConfigError, match="refusing to unpickle"):
        data.load_dataset("cifar10", "test", tmp_path)


# ----------------------------------------------------------------------------------------- ImageFolder
def _write_images(folder: Path, classes: list[str], per_class: int, size=(12, 10), seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (folder / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
            Image.fromarray(arr).save(folder / c / f"{i}.png")


def test_imagefolder_with_split_folders(tmp_path):
    _write_images(tmp_path / "train", ["cat", "dog"], 5)
    _write_images(tmp_path / "test", ["cat", "dog"], 2, seed=1)
    info = data.dataset_info("imagefolder", tmp_path)
    assert info["num_classes"] == 2 and info["in_channels"] == 3 and info["image_size"] == (12, 10)
    train, calib, test = (data.load_dataset("imagefolder", s, tmp_path) for s in data.SPLITS)
    assert (len(train), len(calib), len(test)) == (9, 1, 4)
    x, y = test[3]
    assert x.shape == (3, 12, 10) and x.dtype == torch.float32 and y == 1
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    from PIL import Image

    ref = np.asarray(Image.open(tmp_path / "test" / "dog" / "1.png").convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), ref, atol=1e-6)
    small = data.load_dataset("imagefolder", "train", tmp_path, image_size=6)
    assert small[0][0].shape == (3, 6, 6)


def test_imagefolder_single_folder_is_cut_60_15_25(tmp_path):
    _write_images(tmp_path, ["a", "b", "c", "d"], 5)
    sizes = [len(data.load_dataset("imagefolder", s, tmp_path)) for s in data.SPLITS]
    assert sizes == [12, 3, 5]


def test_imagefolder_missing_root(tmp_path):
    with pytest.raises(ConfigError, match="imagefolder.*not a folder"):
        data.load_dataset("imagefolder", "train", tmp_path / "missing")
    with pytest.raises(ConfigError, match="data_root is required"):
        data.check_dataset("imagefolder", None)


def test_imagefolder_check_is_cheap_and_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no class sub-folders"):
        data.check_dataset("imagefolder", tmp_path / "empty")
    _write_images(tmp_path / "ok", ["a", "b"], 1)
    data.check_dataset("imagefolder", tmp_path / "ok")
