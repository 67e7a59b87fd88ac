"""Models: pixel-space input with normalization as first module, a final nn.Linear head, right logits shape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from causalgeom import models
from causalgeom.errors import ConfigError


def _check(model: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    assert isinstance(model, models.NormalizedClassifier)
    assert isinstance(next(iter(model.children())), models.Normalize)  # normalization is the first module
    assert isinstance(model.head, nn.Linear) and model.head.out_features == k
    assert models.head_of(model)[1] is model.head
    model.eval()
    feats = []
    handle = model.head.register_forward_hook(lambda m, i, o: feats.append(i[0]))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    assert logits.shape == (x.shape[0], k)
    assert feats[0].shape == (x.shape[0], model.head.in_features)
    torch.testing.assert_close(model.head(feats[0]), logits)  # the head's input are the features
    return logits


def test_small_cnn_digits_shape_and_normalization():
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = models.build_model("small_cnn", 10, in_channels=1, mean=[0.3], std=[0.4])
    logits = _check(model, x, 10)
    torch.testing.assert_close(logits, model.net((x - 0.3) / 0.4))
    assert model.head_name == "net.head"


def test_resnet18_cifar_stem():
    model = models.build_model("resnet18", 10, mean=[0.5] * 3, std=[0.25] * 3, cifar_stem=True)
    conv = model.net.conv1
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and isinstance(model.net.maxpool, nn.Identity)
    _check(model, torch.rand(2, 3, 16, 16), 10)
    plain = models.build_model("resnet18", 7)
    assert plain.net.conv1.kernel_size == (7, 7) and isinstance(plain.net.maxpool, nn.MaxPool2d)


def test_resnet50_tiny():
    model = models.build_model("resnet50", 100, cifar_stem=True)
    _check(model, torch.rand(1, 3, 32, 32), 100)
    assert model.head.in_features == 2048


def test_mobilenet_v2_cifar_stem_and_dropout():
    model = models.build_model("mobilenet_v2", 10, cifar_stem=True, dropout=0.3)
    assert model.net.features[0][0].stride == (1, 1)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.net.classifier)
    _check(model, torch.rand(1, 3, 32, 32), 10)


def test_any_torchvision_model_by_name_and_in_channels():
    model = models.build_model("shufflenet_v2_x0_5", 5, in_channels=1)
    assert model.net.conv1[0].in_channels == 1
    _check(model, torch.rand(1, 1, 32, 32), 5)


def test_dropout_before_head_keeps_linear_head():
    model = models.build_model("resnet18", 4, dropout=0.5, cifar_stem=True)
    assert model.head_name == "net.fc.linear" and isinstance(model.net.fc.dropout, nn.Dropout)
    small = models.build_model("small_cnn", 4, in_channels=1, dropout=0.2)
    assert isinstance(small.net.dropout, nn.Dropout) and small.head_name == "net.head"


def test_unknown_model_lists_options():
    with pytest.raises(ConfigError) as info:
        models.build_model("resnet19", 10)
    msg = str(info.value)
    assert "'resnet19'" in msg and "small_cnn" in msg and "mobilenet_v2" in msg and "did you mean" in msg


def test_model_without_linear_head_is_refused():
    with pytest.raises(ConfigError, match="nn.Linear"):
        models.build_model("squeezenet1_1", 10)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_classes=1), "num_classes"),
    (dict(num_classes=10, dropout=1.0), "dropout"),
    (dict(num_classes=10, in_channels=1, mean=[0.1, 0.2], std=[1.0, 1.0]), "mean/std"),
    (dict(num_classes=10, mean=[0.0] * 3, std=[1.0, 0.0, 1.0]), "std > 0"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        models.build_model("small_cnn", **kwargs)
