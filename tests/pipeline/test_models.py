"""Models: pixel-space input with normalization as first module, a final nn.Linear head, right logits shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from causalgeom import models
from causalgeom.errors import ConfigError, WeightsNotFoundError


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


# ------------------------------------------------------------------------------------------- public checkpoints
# Weights are random-init state dicts written where a user's warm cache has them; `models.load` reads them as tensors
# only (tests/pipeline/test_weights_safety.py) and hands them to torchvision's model / timm's pretrained_cfg state-dict path.
def _tv_cache(tmp_path, monkeypatch, arch="resnet18", weights="IMAGENET1K_V1", seed=0):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    w = torchvision.models.get_model_weights(arch)[weights]
    file = models.torch_hub_file(w.url)
    assert file.parent == tmp_path / "torch" / "hub" / "checkpoints"
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = torchvision.models.get_model(arch, weights=None, num_classes=len(w.meta["categories"]))
    torch.save(net.state_dict(), file)
    return net, file


def test_load_torchvision_from_torch_home_cache(tmp_path, monkeypatch):
    import torchvision
    from PIL import Image

    net, file = _tv_cache(tmp_path, monkeypatch)
    model, preprocess = models.load("torchvision:resnet18", weights="IMAGENET1K_V1")
    assert not model.training and model.head_name == "net.fc"
    for key, value in net.state_dict().items():  # exactly the written weights
        assert torch.equal(model.net.state_dict()[key], value), key
    info = getattr(model, models.LOAD_ATTRS)
    assert info["weights"] == "IMAGENET1K_V1" and info["weights_file"] == str(file)
    assert info["confidence"] == "softmax"
    # normalization moved into the model: model(preprocess(img)) == net(weights.transforms()(img))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    x = preprocess(img).unsqueeze(0)
    assert x.shape == (1, 3, 224, 224) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    ref_x = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()(img).unsqueeze(0)
    net.eval()
    with torch.no_grad():
        # (x - mean) / std computed in another order than torchvision's Normalize: float32 rounding, hence atol
        torch.testing.assert_close(model(x), net(ref_x), atol=1e-4, rtol=1e-4)


def test_load_torchvision_absent_file_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(WeightsNotFoundError, match=r"hub/checkpoints/resnet18-f37072fd\.pth.*TORCH_HOME"):
        models.load("torchvision:resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):  # unknown weights: the message lists the options
        models.load("torchvision:resnet18", weights="IMAGENET1K_V9")
    with pytest.raises(ConfigError, match="no classification model"):
        models.load("torchvision:resnet181")


def test_load_timm_local_file_and_hf_cache(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    from PIL import Image
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False)
    save_file(net.state_dict(), str(tmp_path / "r10t.safetensors"))
    model, preprocess = models.load("timm:resnet10t.c3_in1k", weights=tmp_path / "r10t.safetensors")
    assert model.head_name == "net.fc"
    for key, value in net.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key
    cfg = timm.data.resolve_data_config(model=net)
    assert tuple(model.normalize.mean.flatten().tolist()) == pytest.approx(cfg["mean"])
    assert preprocess(Image.new("RGB", (300, 200))).shape == (3, *cfg["input_size"][1:])
    # the Hugging Face cache layout (models--ORG--NAME/snapshots/REV + refs/main), as huggingface-cli leaves it
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(WeightsNotFoundError, match=r"models--timm--resnet10t\.c3_in1k/snapshots"):
        models.load("timm:resnet10t.c3_in1k")
    snap = cache / "models--timm--resnet10t.c3_in1k" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (cache / "models--timm--resnet10t.c3_in1k" / "refs").mkdir()
    (cache / "models--timm--resnet10t.c3_in1k" / "refs" / "main").write_text("abc123")
    save_file(net.state_dict(), str(snap / "model.safetensors"))
    model2, _ = models.load("timm:resnet10t.c3_in1k")
    assert torch.equal(model2.net.fc.weight, net.fc.weight)
    assert getattr(model2, models.LOAD_ATTRS)["weights_file"] == str(snap / "model.safetensors")


def test_load_local_state_dict_pt_and_safetensors(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(1)
    net = torchvision.models.resnet18(num_classes=10)
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    save_file(net.state_dict(), str(tmp_path / "r18.safetensors"))
    for file in ("r18.pt", "r18.safetensors"):
        model, _ = models.load(tmp_path / file, arch="torchvision:resnet18")
        assert model.head.out_features == 10  # read from the file's head
        assert torch.equal(model.net.fc.weight, net.fc.weight)
    with pytest.raises(ConfigError, match="arch"):
        models.load(tmp_path / "r18.pt")
    with pytest.raises(ConfigError, match="num_classes: 100 given"):
        models.load(tmp_path / "r18.pt", arch="torchvision:resnet18", num_classes=100)
    with pytest.raises(WeightsNotFoundError, match="no weights file"):
        models.load(tmp_path / "absent.pt", arch="torchvision:resnet18")
    torch.save({"net": nn.Linear(2, 2)}, tmp_path / "pickle.pt")  # needs unpickling code: refused
    with pytest.raises(ConfigError, match="weights_only=True"):
        models.load(tmp_path / "pickle.pt", arch="torchvision:resnet18")


# ---------------------------------------------------------------------------------------- heads of every shape
def _captured(model: models.NormalizedClassifier, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cap = models._Capture(model.head)
    try:
        with torch.no_grad(), cap.on():
            logits = model(x)
    finally:
        cap.remove()
    assert cap.calls == 1
    return cap.value, logits


def _tv_prelogits(name: str, net: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The classifier's input computed by hand from torchvision's forward code (z: normalized input)."""
    if name == "resnet18":
        h = net.avgpool(net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(z)))))))))
        return torch.flatten(h, 1)
    if name == "convnext_tiny":
        return net.classifier[:-1](net.avgpool(net.features(z)))  # LayerNorm2d, Flatten
    if name in ("efficientnet_b0", "mobilenet_v3_small"):
        h = torch.flatten(net.avgpool(net.features(z)), 1)
        return net.classifier[:-1](h)  # (eval) dropout / Linear-Hardswish-Dropout of the MLP head
    if name == "vit":
        h = net._process_input(z)
        h = torch.cat([net.class_token.expand(h.shape[0], -1, -1), h], dim=1)
        return net.encoder(h)[:, 0]  # class token after the final LayerNorm
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["resnet18", "convnext_tiny", "efficientnet_b0", "mobilenet_v3_small", "vit"])
def test_features_are_prelogits_torchvision(name):
    import torchvision

    torch.manual_seed(0)
    head = None
    if name == "vit":  # a tiny ViT of torchvision's class (vit_b_16 is too big for the quick tier)
        net = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                                   hidden_dim=16, mlp_dim=32, num_classes=7)
    elif name == "convnext_tiny":  # torchvision's ConvNeXt class with a small block setting
        from torchvision.models.convnext import CNBlockConfig, ConvNeXt

        net = ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=7)
    else:
        net = torchvision.models.get_model(name, weights=None, num_classes=7)
    if name == "mobilenet_v3_small":  # Linear-Hardswish-Dropout-Linear: an MLP head needs head=
        with pytest.raises(ConfigError, match=r"MLP head.*--head.*classifier\.3"):
            models.wrap(net, mean=(0.5,) * 3, std=(0.25,) * 3)
        head = "classifier.3"
    model = models.wrap(net, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), head=head).eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    feats, logits = _captured(model, x)
    with torch.no_grad():
        ref = _tv_prelogits(name, net, model.normalize(x))
    # the same operations in the same order: equal up to nondeterministic kernel choice, hence a tight tolerance
    torch.testing.assert_close(feats, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.head(feats), logits)


@pytest.mark.parametrize("name,kwargs", [
    ("resnet10t", {}), ("convnext_atto", {}),
    ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=1)),
    ("efficientnet_b0", {}), ("mobilenetv3_small_050", {}),
])
def test_features_are_prelogits_timm(name, kwargs):
    timm = pytest.importorskip("timm")

    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, num_classes=5, **kwargs)
    model = models.wrap(net, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    feats, logits = _captured(model, x)
    with torch.no_grad():  # timm's own pre-logits: forward_head(forward_features(x), pre_logits=True)
        ref = net.forward_head(net.forward_features(model.normalize(x)), pre_logits=True)
    torch.testing.assert_close(feats, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.head(feats), logits)


def test_mlp_head_error_and_bce_flag(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))

    class WithMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Flatten()
            self.classifier = mlp

        def forward(self, x):
            return self.classifier(self.body(x))

    with pytest.raises(ConfigError, match=r"MLP head.*--head"):
        models.wrap(WithMLP(), mean=(0.0,) * 3, std=(1.0,) * 3)
    assert models.wrap(WithMLP(), mean=(0.0,) * 3, std=(1.0,) * 3, head="classifier.3").head is mlp[3]
    # timm's A1/A2/A3 ("ResNet strikes back") recipes were trained with BCE: flagged as sigmoid confidences
    net18 = timm.create_model("resnet18", pretrained=False)
    save_file(net18.state_dict(), str(tmp_path / "r18.safetensors"))
    model, _ = models.load("timm:resnet18.a1_in1k", weights=tmp_path / "r18.safetensors")
    assert getattr(model, models.LOAD_ATTRS)["loss"] == "bce"
    assert getattr(model, models.LOAD_ATTRS)["confidence"] == "sigmoid"
    model, _ = models.load("timm:resnet18.tv_in1k", weights=tmp_path / "r18.safetensors")
    assert getattr(model, models.LOAD_ATTRS)["confidence"] == "softmax"


def test_load_names_errors():
    pytest.importorskip("timm")
    with pytest.raises(ConfigError, match=r"no pretrained weights 'resnet50\.zzz'.*resnet50\.a1_in1k"):
        models.load("timm:resnet50.zzz")
    with pytest.raises(ConfigError, match=r"timm has no model 'resnet5O' \(did you mean"):
        models.load("timm:resnet5O")
    with pytest.raises(ConfigError, match="expected 'torchvision:ARCH', 'timm:ARCH.TAG' or a state-dict file"):
        models.load("resnet50")


def test_load_torchvision_mirrors_the_builders_shape(tmp_path, monkeypatch):
    """googlenet's weights need the builder's transform_input/aux_logits settings; the aux heads are dropped."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    w = torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1
    torch.manual_seed(0)
    ref = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False, transform_input=True)
    file = models.torch_hub_file(w.url)
    file.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), file)
    model, _ = models.load("torchvision:googlenet", "IMAGENET1K_V1")
    assert model.net.aux1 is None and model.head_name == "net.fc"
    ref.eval()
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the same operations; the tolerance only allows another convolution algorithm choice
        torch.testing.assert_close(model(x), ref((x - model.normalize.mean) / model.normalize.std), atol=1e-5,
                                   rtol=1e-5)
