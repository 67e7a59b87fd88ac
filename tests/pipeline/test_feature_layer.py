"""``extract(feature_layer=...)`` / ``--feature-layer`` (issue 25, item 5): the output of any module as features.

Checked against a forward hook computed independently (one full-batch forward pass; tolerance
`tests._numerics.F32_RTOL`: another batch size, another summation order).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import causalgeom as cg
from causalgeom.pipeline.extract import extract
from causalgeom.pipeline.models import SmallCNN
from tests._numerics import F32_ATOL, F32_RTOL


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    model = SmallCNN(3, in_channels=1, width=16).eval()
    x = torch.rand(40, 1, 8, 8)
    y = torch.randint(0, 3, (40,))
    return model, (x, y)


def _hooked(model: nn.Module, x: torch.Tensor, name: str) -> np.ndarray:
    """The module's output for all of x in one pass, averaged over its spatial dims by hand (copied in the hook:
    SmallCNN's next ReLU works in place)."""
    got = {}
    handle = dict(model.named_modules())[name].register_forward_hook(lambda m, a, o: got.__setitem__("o", o.clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    o = got["o"].double()
    return (o.mean(dim=(2, 3)) if o.dim() == 4 else o).numpy()


def test_spatial_layer_is_averaged_and_run_is_headless(model_and_data, tmp_path):
    model, (x, y) = model_and_data
    out = extract(model, (x, y), tmp_path / "conv2.zarr", feature_layer="conv2", batch_size=16, progress=False)
    ds = cg.open(out)
    assert ds.attrs["feature_layer"] == "conv2" and ds.sizes["feature"] == 64
    assert "head_weight" not in ds and "head_bias" not in ds  # conv2 does not feed the head
    np.testing.assert_allclose(ds["features"].values, _hooked(model, x, "conv2"), rtol=F32_RTOL, atol=F32_ATOL)
    with torch.no_grad():
        np.testing.assert_allclose(ds["logits"].values, model(x).numpy(), rtol=F32_RTOL, atol=F32_ATOL)
    # every analysis the data allows: cosines to the mean class centers, calibration
    with pytest.warns(UserWarning, match="mean class centers"):
        row = cg.summary.run_metrics(ds)
    assert row["center_kind"] == "mean" and np.isfinite(row["cos_true"]) and np.isfinite(row["ece"])


def test_layer_feeding_the_head_keeps_the_head(model_and_data, tmp_path):
    model, (x, y) = model_and_data
    a = cg.open(extract(model, (x, y), tmp_path / "relu3.zarr", feature_layer="relu3", batch_size=16, progress=False))
    b = cg.open(extract(model, (x, y), tmp_path / "default.zarr", batch_size=16, progress=False))
    assert a.attrs["feature_layer"] == "relu3" and b.attrs["feature_layer"] == "head"
    # the same forward passes on the same batches: the head's input and relu3's output are the same tensor
    np.testing.assert_array_equal(a["features"].values, b["features"].values)
    np.testing.assert_array_equal(a["head_weight"].values, model.head.weight.detach().numpy())


def test_adv_features_come_from_the_layer(model_and_data, tmp_path):
    model, (x, y) = model_and_data
    ds = cg.open(extract(model, (x[:12], y[:12]), tmp_path / "adv.zarr", feature_layer="avgpool", batch_size=12,
                         attacks=[cg.attacks.PGD("linf", steps=2)], eps=[2 / 255], save_adv=True, progress=False))
    assert ds.sizes["feature"] == 64 and "head_weight" not in ds  # avgpool (n, 64, 4, 4) -> 64, then fc1
    assert ds["adv_features"].shape == (1, 1, 12, 64)
    assert ds["adv_logits"].shape == (1, 1, 12, 3)
    np.testing.assert_allclose(ds["features"].values, _hooked(model, x[:12], "avgpool"), rtol=F32_RTOL, atol=F32_ATOL)


def test_layer_before_an_inplace_relu(model_and_data, tmp_path):
    model, (x, y) = model_and_data
    ds = cg.open(extract(model, (x, y), tmp_path / "fc1.zarr", feature_layer="fc1", batch_size=16, progress=False))
    ref = _hooked(model, x, "fc1")
    assert (ref < 0).any()  # the values before relu3 (in place) are what is stored
    np.testing.assert_allclose(ds["features"].values, ref, rtol=F32_RTOL, atol=F32_ATOL)


def test_unknown_layer_and_amp(model_and_data, tmp_path):
    model, data = model_and_data
    with pytest.raises(cg.ConfigError, match="feature_layer='conv9': SmallCNN has no submodule"):
        extract(model, data, tmp_path / "x.zarr", feature_layer="conv9", progress=False)
    with pytest.raises(cg.ConfigError, match="amp: feature_layer='conv2' does not feed the head"):
        extract(model, data, tmp_path / "y.zarr", feature_layer="conv2", amp=True, progress=False)
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()


@pytest.mark.slow
def test_cli_feature_layer_on_a_torchvision_model(tmp_path, capsys):
    from PIL import Image

    from causalgeom.cli import main

    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "imgs" / f"c{c}").mkdir(parents=True)
        for j in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"c{c}" / f"{j}.png")
    base = ["extract", "--model", "torchvision:resnet18", "--weights", "none", "--preprocess", "none", "--data",
            f"imagefolder:{tmp_path / 'imgs'}", "--no-attack", "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "l3.zarr"), "--feature-layer", "layer3"]) == 0
    ds = cg.open(tmp_path / "l3.zarr")
    assert ds.attrs["feature_layer"] == "layer3" and ds.sizes["feature"] == 256 and "head_weight" not in ds
    assert main(base + ["--out", str(tmp_path / "pool.zarr"), "--feature-layer", "avgpool"]) == 0
    ds = cg.open(tmp_path / "pool.zarr")  # avgpool (n, 512, 1, 1) -> flatten -> fc: feeds the head
    assert ds.attrs["feature_layer"] == "avgpool" and ds.sizes["feature"] == 512 and "head_weight" in ds
    assert main(base + ["--out", str(tmp_path / "bad.zarr"), "--feature-layer", "nope"]) == 2
    assert "--feature-layer nope: NormalizedClassifier has no submodule" in capsys.readouterr().err
