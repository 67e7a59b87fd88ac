"""Real data and zoo studies: ImageFolder/CIFAR evaluation sets, stratified subsets, zoo files, extract --zoo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from causalgeom import data, zoo
from causalgeom.errors import ConfigError

from tests._helpers import REPO_ROOT
from .test_data import write_fake_cifar

CLASSES = ("n01440764", "n01443537", "n01484850")  # ImageNet-1k wnids 0, 1, 2


def write_imagefolder(root: Path, per_class: int = 8, size: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    """CLASS/IMAGE.JPEG tree of random RGB JPEGs (the ImageNet validation layout)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"ILSVRC2012_val_{c[-3:]}{i:03d}.JPEG", quality=90)
    return root


# ---------------------------------------------------------------------------------------------- stratified subsets
def test_stratified_subset_known_allocation():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    idx = data.stratified_subset(y, 10, seed=3)
    assert np.bincount(y[idx]).tolist() == [5, 3, 2]  # exact proportional allocation
    assert np.all(np.diff(idx) > 0) and len(set(idx.tolist())) == 10
    y3 = np.repeat([0, 1, 2], 3)  # quotas 4/3 each: floor 1 each, the one place left goes to class 0 (tie rule)
    assert np.bincount(y3[data.stratified_subset(y3, 4)]).tolist() == [2, 1, 1]
    assert np.array_equal(data.stratified_subset(y, 10, seed=3), idx)  # seeded
    assert not np.array_equal(data.stratified_subset(y, 10, seed=4), idx)
    assert np.array_equal(data.stratified_subset(y, 1000), np.arange(100))
    with pytest.raises(ConfigError, match="limit"):
        data.stratified_subset(y, 0)


# -------------------------------------------------------------------------------------------------- ImageFolder
def test_imagefolder_mapping_checked_against_the_model(tmp_path):
    root = write_imagefolder(tmp_path / "val", per_class=2)
    ds = data.open_eval_data(f"imagefolder:{root}", num_classes=3)
    assert len(ds) == 6 and ds.classes == list(CLASSES)
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    img, y = ds[2]
    assert img.size == (48, 40) and y == 1  # PIL image without a transform
    assert ds.sample_ids[0] == f"{CLASSES[0]}/ILSVRC2012_val_764000.JPEG"
    with pytest.raises(ConfigError, match=r"3 classes but the model has num_classes=1000.*class_map"):
        data.open_eval_data(f"imagefolder:{root}", num_classes=1000)
    # a partial folder with an explicit {folder: model index} map
    (tmp_path / "map.json").write_text(json.dumps({CLASSES[0]: 0, CLASSES[1]: 391, CLASSES[2]: 999}))
    ds = data.open_eval_data(f"imagefolder:{root}", num_classes=1000, class_map=tmp_path / "map.json")
    assert ds.labels.tolist() == [0, 0, 391, 391, 999, 999]
    with pytest.raises(ConfigError, match=r"class indices must lie in \[0, 500\)"):
        data.open_eval_data(f"imagefolder:{root}", num_classes=500, class_map=tmp_path / "map.json")
    with pytest.raises(ConfigError, match="no index for the class folder"):
        data.open_eval_data(f"imagefolder:{root}", class_map={CLASSES[0]: 0})
    with pytest.raises(ConfigError, match="imagefolder:DIR, cifar10:DIR, cifar100:DIR"):
        data.open_eval_data(f"folder:{root}")
    with pytest.raises(ConfigError, match="not a folder"):
        data.open_eval_data(f"imagefolder:{tmp_path / 'absent'}")


def test_limit_gives_the_same_ids_whatever_the_transform(tmp_path):
    from torchvision.transforms import v2

    root = write_imagefolder(tmp_path / "val", per_class=4)
    a = data.open_eval_data(f"imagefolder:{root}", v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]),
                            limit=6, seed=1)
    b = data.open_eval_data(f"imagefolder:{root}", v2.Compose([v2.ToImage(), v2.Resize(16)]), limit=6, seed=1)
    assert a.sample_ids == b.sample_ids and a.digest() == b.digest()
    assert np.bincount(a.labels).tolist() == [2, 2, 2]
    assert a[0][0].shape == (3, 40, 48) and a[0][0].dtype == torch.float32
    assert data.open_eval_data(f"imagefolder:{root}", limit=6, seed=2).digest() != a.digest()
    import pickle  # DataLoader workers started with "spawn" receive the dataset pickled

    c = pickle.loads(pickle.dumps(a))
    assert c.sample_ids == a.sample_ids and torch.equal(c[3][0], a[3][0]) and c[3][1] == a[3][1]


def test_cifar_eval_data(tmp_path):
    written = write_fake_cifar(tmp_path, "cifar10", n_test=6)
    ds = data.open_eval_data(f"cifar10:{tmp_path}", num_classes=10)
    assert len(ds) == 6 and ds.labels.tolist() == written["test"][1]
    img, _ = ds[1]
    expected = written["test"][0][1].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(np.asarray(img), expected)  # the same pixels, as a PIL image
    with pytest.raises(ConfigError, match="num_classes=100"):
        data.open_eval_data(f"cifar10:{tmp_path}", num_classes=100)
    with pytest.raises(ConfigError, match="only for imagefolder"):
        data.open_eval_data(f"cifar10:{tmp_path}", class_map={"class0": 0})
    written100 = write_fake_cifar(tmp_path / "c100", "cifar100", n_test=5)
    ds100 = data.open_eval_data(f"cifar100:{tmp_path / 'c100'}", num_classes=100, limit=3)
    assert len(ds100) == 3 and set(ds100.labels.tolist()) <= set(written100["test"][1])
    assert ds100.classes[:2] == ["class0", "class1"] and ds100.sample_ids[0].startswith("test/")


# ------------------------------------------------------------------------------------------------------ zoo files
def test_zoo_files_in_pipelines_parse():
    pipelines = REPO_ROOT / "pipelines"
    z = zoo.read_zoo(pipelines / "zoo_resnet50_imagenet.toml")
    assert z["control"] == "tv_in1k"
    assert [m["id"] for m in z["models"]] == ["tv_in1k", "tv_v2", "tv2_in1k", "a1_in1k", "a2_in1k", "a3_in1k"]
    assert z["models"][0]["weights"] == "IMAGENET1K_V1" and z["models"][1]["weights"] == "IMAGENET1K_V2"
    for m in z["models"]:
        assert set(zoo.LABEL_KEYS) <= set(m["labels"]), m["id"]
    assert {m["id"] for m in z["models"] if m["labels"]["loss"] == "bce"} == {"a1_in1k", "a2_in1k", "a3_in1k"}
    local = zoo.read_zoo(pipelines / "zoo_cifar10_local.toml")
    assert all(Path(m["model"]).is_absolute() and m["arch"].startswith("torchvision:") for m in local["models"])


def test_zoo_file_errors(tmp_path):
    f = tmp_path / "z.toml"
    f.write_text('[[models]]\nid = "a"\nmodel = "torchvision:resnet18"\nweight = "X"\n')
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['weight'\].*'weights'"):
        zoo.read_zoo(f)
    f.write_text('control = "b"\n[[models]]\nid = "a"\nmodel = "torchvision:resnet18"\n')
    with pytest.raises(ConfigError, match="control 'b' is not one of the ids"):
        zoo.read_zoo(f)
    f.write_text('[[models]]\nid = "a"\nmodel = "m"\n[[models]]\nid = "a"\nmodel = "m"\n')
    with pytest.raises(ConfigError, match="duplicate id"):
        zoo.read_zoo(f)


# ------------------------------------------------------------------------------------------- end to end (slow)
def _warm_caches(tmp_path, monkeypatch) -> dict[str, torch.Tensor]:
    """resnet18 IMAGENET1K_V1 in TORCH_HOME and timm's resnet18.a1_in1k in a Hugging Face cache (random init)."""
    import timm
    import torchvision
    from safetensors.torch import save_file

    from causalgeom.pipeline.models import torch_hub_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    torch.manual_seed(0)
    tv = torchvision.models.resnet18()
    file = torch_hub_file(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url)
    file.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), file)
    tm = timm.create_model("resnet18", pretrained=False)
    repo = tmp_path / "hf" / "models--timm--resnet18.a1_in1k"
    (repo / "snapshots" / "r1").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("r1")
    save_file(tm.state_dict(), str(repo / "snapshots" / "r1" / "model.safetensors"))
    return {"tv": tv.fc.weight.detach().clone(), "a1": tm.fc.weight.detach().clone()}


@pytest.mark.slow
def test_extract_zoo_cli_then_report(tmp_path, monkeypatch, capsys):
    pytest.importorskip("timm")
    import causalgeom as cg
    from causalgeom.cli import main

    heads = _warm_caches(tmp_path, monkeypatch)
    root = write_imagefolder(tmp_path / "val", per_class=4)
    (tmp_path / "map.json").write_text(json.dumps({c: i for i, c in enumerate(CLASSES)}))
    zf = tmp_path / "zoo.toml"
    zf.write_text('name = "tiny"\ncontrol = "tv"\n'
                  '[[models]]\nid = "tv"\nmodel = "torchvision:resnet18"\nweights = "IMAGENET1K_V1"\n'
                  'labels = { regularizer = "ce", loss = "ce", label_smoothing = 0.0, mixup = 0.0, cutmix = 0.0 }\n'
                  '[[models]]\nid = "a1"\nmodel = "timm:resnet18.a1_in1k"\n'
                  'labels = { regularizer = "a1", loss = "bce", label_smoothing = 0.1, mixup = 0.2, cutmix = 1.0 }\n')
    study = tmp_path / "study"
    rc = main(["extract", "--zoo", str(zf), "--data", f"imagefolder:{root}", "--class-map", str(tmp_path / "map.json"),
               "--limit", "6", "--attack", "fgsm:linf:eps=1/255", "--out", str(study), "--batch-size", "6",
               "--no-progress"])
    assert rc == 0
    s = cg.open_study(study)
    assert sorted(s.run_ids) == ["a1", "tv"]
    tv, a1 = s["tv"], s["a1"]
    assert tv.sizes["sample"] == a1.sizes["sample"] == 6
    assert tv.attrs["sample_ids_sha256"] == a1.attrs["sample_ids_sha256"]  # the same images, paired by id
    np.testing.assert_array_equal(tv["label"].values, a1["label"].values)
    assert tv.attrs["regularizer"] == "ce" and a1.attrs["regularizer"] == "a1" and a1.attrs["zoo_control"] == "ce"
    assert tv.attrs["confidence"] == "softmax" and a1.attrs["confidence"] == "sigmoid"
    assert tv.attrs["model"] == "torchvision:resnet18" and a1.attrs["model"] == "timm:resnet18.a1_in1k"
    np.testing.assert_array_equal(tv["head_weight"].values, heads["tv"].numpy())  # the cached weights were used
    np.testing.assert_array_equal(a1["head_weight"].values, heads["a1"].numpy())
    assert tv.sizes["class"] == 1000
    zoo_args = ["extract", "--zoo", str(zf), "--data", f"imagefolder:{root}", "--out", str(study)]
    assert main([*zoo_args, "--class-map", str(tmp_path / "map.json"), "--limit", "6"]) == 0  # complete: skipped
    assert "tv: already extracted, skipping" in capsys.readouterr().err
    rc = main(["report", str(study), "--out", str(tmp_path / "report.html"), "--no-refute"])  # refuters: test_report
    assert rc == 0 and (tmp_path / "report.html").stat().st_size > 0
    summary = (tmp_path / "report.md").read_text().lower()
    assert "model-conditional" in summary  # one model per arm: the report says which estimand it reports


def test_extract_model_cli_local_state_dict(tmp_path, capsys):
    import torchvision

    import causalgeom as cg
    from causalgeom.cli import main

    root = write_imagefolder(tmp_path / "val", per_class=2, size=(32, 32))
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3)
    torch.save(net.state_dict(), tmp_path / "mine.pt")
    out = tmp_path / "mine.zarr"
    args = ["extract", "--model", str(tmp_path / "mine.pt"), "--arch", "torchvision:resnet18", "--data",
            f"imagefolder:{root}", "--no-attack", "--out", str(out), "--no-progress"]
    assert main(args) == 2 and not out.exists()  # no preprocessing named: refused (issue 25)
    assert "--preprocess" in capsys.readouterr().err
    rc = main([*args, "--preprocess", "mean=0.485,0.456,0.406,std=0.229,0.224,0.225"])
    assert rc == 0
    ds = cg.open(out)
    assert ds.sizes["sample"] == 6 and ds.attrs["weights_file"] == str(tmp_path / "mine.pt")
    np.testing.assert_array_equal(ds["label"].values, [0, 0, 1, 1, 2, 2])
    # the dumped logits are the network's on ImageNet-normalized pixels of the same JPEGs
    ref = data.open_eval_data(f"imagefolder:{root}")
    x = torch.stack([torch.from_numpy(np.array(ref[i][0])).permute(2, 0, 1).float() / 255 for i in range(6)])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net.eval()((x - mean) / std)
    # another batch composition / normalization order than the extraction's: float32 rounding, hence atol
    np.testing.assert_allclose(ds["logits"].values, expected.numpy(), atol=1e-4, rtol=1e-4)
    assert main(["extract", "--zoo", "z.toml", "--out", str(tmp_path / "s")]) != 0
    assert "--data is required" in capsys.readouterr().err
    assert main(["extract", "--zoo", "z.toml", "--model", "m.pt", "--data", f"imagefolder:{root}", "--out", "s"]) != 0
    assert "--zoo and --model are exclusive" in capsys.readouterr().err


@pytest.mark.slow
def test_zoo_of_causalgeom_runs_on_cifar(tmp_path):
    import causalgeom as cg
    from causalgeom import train

    write_fake_cifar(tmp_path / "data", "cifar10", per_batch=8, n_test=12)
    for reg, extra in (("ce", {}), ("label_smoothing", {"label_smoothing": 0.1})):
        train.train_run(dict(dataset="cifar10", data_root=str(tmp_path / "data"), model="small_cnn", epochs=1,
                             run_id=f"{reg}-s0", regularizer=reg, device="cpu", batch_size=8, **extra),
                        tmp_path / "out", progress=False)
    zf = tmp_path / "zoo.toml"  # run folders relative to the zoo file
    zf.write_text('control = "ce"\n'
                  '[[models]]\nid = "ce"\nmodel = "out/runs/ce-s0"\nlabels = { regularizer = "ce" }\n'
                  '[[models]]\nid = "ls"\nmodel = "out/runs/label_smoothing-s0/checkpoint.pt"\n'
                  'labels = { regularizer = "label_smoothing", label_smoothing = 0.1 }\n')
    paths = zoo.extract_zoo(zf, f"cifar10:{tmp_path / 'data'}", tmp_path / "study", attacks=None, progress=False)
    assert [p.name for p in paths] == ["ce.zarr", "ls.zarr"]
    ds = cg.open(paths[1]).load()
    assert ds.attrs["trained_regularizer"] == "label_smoothing" and ds.attrs["regularizer"] == "label_smoothing"
    # the dumped logits are the trained model's on the CIFAR test images (same computation on CPU, batch of 12)
    model, _ = train.load_checkpoint(tmp_path / "out" / "runs" / "label_smoothing-s0")
    test = cg.data.load_dataset("cifar10", "test", tmp_path / "data")
    x, y = test.batch(torch.arange(len(test)))
    with torch.no_grad():
        expected = model(x)
    np.testing.assert_array_equal(ds["label"].values, y.numpy())
    np.testing.assert_allclose(ds["logits"].values, expected.numpy(), atol=1e-5, rtol=1e-5)  # batch size may differ
