"""Explicit preprocessing of local checkpoints, random weights, run attributes, zoo preflight, CLI wording."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from causalgeom._util.eps import eps_label, parse_eps_label
from causalgeom.errors import ConfigError, WeightsNotFoundError
from causalgeom.pipeline import data as data_mod
from causalgeom.pipeline.preprocess import PRESETS, Preprocess, parse_preprocess
from causalgeom.pipeline.zoo import extract_zoo, load_entry, missing_weights


def _folder(root, sizes, fmt="png"):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, cls_sizes in enumerate(sizes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i, (h, w) in enumerate(cls_sizes):
            Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(d / f"{i}.{fmt}")
    return root


# --- the spec ------------------------------------------------------------------------------------------------

def test_presets_and_key_value_specs():
    assert parse_preprocess("cifar10") == PRESETS["cifar10"]
    # CIFAR statistics are those of causalgeom.pipeline.data (one copy of the numbers)
    assert PRESETS["cifar10"].mean == tuple(data_mod.dataset_info("cifar10")["mean"])
    assert PRESETS["cifar100"].std == tuple(data_mod.dataset_info("cifar100")["std"])
    p = parse_preprocess("resize=36,crop=32,mean=0.5,0.4,0.3,std=0.2,0.2,0.2,interpolation=bicubic")
    assert p == Preprocess(resize=36, crop=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), interpolation="bicubic")
    q = parse_preprocess("imagenet,resize=300")
    assert q.resize == 300 and q.crop == 224 and q.mean == PRESETS["imagenet"].mean and q.name == "imagenet+"
    assert parse_preprocess({"preset": "none", "resize": 8}).resize == 8
    assert parse_preprocess({"mean": [0.5], "std": [0.5]}).mean == (0.5,)
    assert "mean=0.5,0.4,0.3" in p.spec() and "resize=36" in p.spec()


@pytest.mark.parametrize("spec, words", [("imagnet", "unknown preset"), ("resize=-1", "positive"),
                                         ("size=3", "unknown key"), ("mean=0.5,std=0.1,0.1", "one value per channel"),
                                         ("std=0,1,1,mean=0,0,0", "positive"), ("interpolation=cubic", "bilinear"),
                                         ("", "expected a preset")])
def test_bad_specs_name_the_flag(spec, words):
    with pytest.raises(ConfigError, match="--preprocess") as err:
        parse_preprocess(spec)
    assert words in str(err.value)


def test_transform_resizes_every_image_to_one_size():
    from PIL import Image

    tf = parse_preprocess("resize=32,crop=32").transform()
    for size in ((80, 50), (64, 64), (31, 90)):
        x = tf(Image.new("RGB", size, (255, 0, 0)))
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert torch.allclose(x[0], torch.ones(32, 32)) and float(x[1:].abs().max()) == 0.0  # pixels in [0, 1]


# --- loading ---------------------------------------------------------------------------------------------------

def test_local_checkpoint_needs_preprocess_and_uses_its_statistics(tmp_path):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3).eval()
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    entry = {"model": str(tmp_path / "r18.pt"), "arch": "torchvision:resnet18"}
    with pytest.raises(ConfigError, match="--preprocess"):
        load_entry(entry)
    model, tf, info = load_entry({**entry, "preprocess": "cifar10"})
    assert info["preprocess"].startswith("cifar10: resize=32,crop=32,mean=0.4914")
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(PRESETS["cifar10"].mean).view(1, 3, 1, 1)
    std = torch.tensor(PRESETS["cifar10"].std).view(1, 3, 1, 1)
    with torch.no_grad():  # the same network on CIFAR-normalized pixels; two float32 paths: tolerance
        torch.testing.assert_close(model(x), net((x - mean) / std), rtol=1e-4, atol=1e-4)


def test_random_weights_are_recorded_and_seeded():
    entry = {"model": "torchvision:resnet18", "weights": "none"}
    with pytest.raises(ConfigError, match="--preprocess"):
        load_entry(entry, num_classes=4)
    m1, _, info = load_entry({**entry, "preprocess": "none"}, num_classes=4, seed=3)
    m2, _, _ = load_entry({**entry, "preprocess": "none"}, num_classes=4, seed=3)
    m3, _, _ = load_entry({**entry, "preprocess": "none"}, num_classes=4, seed=4)
    assert info["weights"] == "none" and info["init_seed"] == 3 and "random" in info["init"]
    assert m1.head.out_features == 4
    assert torch.equal(m1.head.weight, m2.head.weight) and not torch.equal(m1.head.weight, m3.head.weight)
    with pytest.raises(ConfigError, match="--preprocess"):  # torchvision weights keep their own transforms
        load_entry({"model": "torchvision:resnet18", "preprocess": "imagenet"})


def test_zoo_lists_every_missing_weights_file_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    zf = tmp_path / "zoo.toml"
    zf.write_text('name = "z"\n'
                  '[[models]]\nid = "a"\nmodel = "torchvision:resnet18"\nweights = "IMAGENET1K_V1"\n'
                  '[[models]]\nid = "b"\nmodel = "b.safetensors"\narch = "torchvision:resnet18"\npreprocess = "imagenet"\n'
                  '[[models]]\nid = "c"\nmodel = "c.pt"\narch = "torchvision:resnet18"\npreprocess = "imagenet"\n'
                  '[[models]]\nid = "r"\nmodel = "torchvision:resnet18"\nweights = "none"\npreprocess = "none"\n')
    root = _folder(tmp_path / "imgs", [[(8, 8)], [(8, 8)]])
    with pytest.raises(WeightsNotFoundError) as err:
        extract_zoo(zf, f"imagefolder:{root}", tmp_path / "study", progress=False)
    msg = str(err.value)
    assert "3 of 4 entries" in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert str(tmp_path / "b.safetensors") in msg and str(tmp_path / "c.pt") in msg
    assert not (tmp_path / "study" / "r.zarr").exists()  # nothing extracted before the error
    assert missing_weights({"id": "r", "model": "torchvision:resnet18", "weights": "none"}) is None


def test_zoo_preprocess_key_is_checked_when_read(tmp_path):
    from causalgeom.pipeline.zoo import read_zoo

    zf = tmp_path / "zoo.toml"
    zf.write_text('[[models]]\nid = "a"\nmodel = "a.pt"\narch = "torchvision:resnet18"\npreprocess = "cifar11"\n')
    with pytest.raises(ConfigError, match=r"models\[0\]\.preprocess.*unknown preset"):
        read_zoo(zf)
    zf.write_text('[[models]]\nid = "a"\nmodel = "a.pt"\narch = "torchvision:resnet18"\n'
                  'preprocess = { preset = "cifar10" }\nattrs = { seed = 2, strength = 0.1 }\n')
    e = read_zoo(zf)["models"][0]
    assert e["attrs"] == {"seed": 2, "strength": 0.1} and e["preprocess"] == {"preset": "cifar10"}


def test_mixed_sizes_without_resize_name_the_first_offending_file(tmp_path, capsys):
    from causalgeom.cli import main

    root = _folder(tmp_path / "imgs", [[(16, 16), (16, 16)], [(12, 20), (16, 16)]])
    args = ["extract", "--model", "torchvision:resnet18", "--weights", "none", "--data", f"imagefolder:{root}",
            "--no-attack", "--no-progress", "--out", str(tmp_path / "r.zarr")]
    assert main([*args, "--preprocess", "none"]) == 2
    err = capsys.readouterr().err
    assert "'class1/0.png'" in err and "3x12x20" in err and "3x16x16" in err and "--preprocess" in err
    assert "please report" not in err and "stack expects" not in err
    assert main([*args, "--preprocess", "none,resize=16,crop=16", "--attr", "regularizer=mixup",
                 "--attr", "seed=1"]) == 0
    import causalgeom as cg

    ds = cg.open(tmp_path / "r.zarr")
    assert ds.attrs["regularizer"] == "mixup" and ds.attrs["seed"] == 1 and ds.attrs["weights"] == "none"
    assert ds.attrs["preprocess"].startswith("none+: resize=16,crop=16") and ds.attrs["run_id"] == "r"


def test_local_model_without_attr_says_treatment_unknown(tmp_path):
    import torchvision

    import causalgeom as cg
    from causalgeom.cli import main

    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), tmp_path / "r18_a.pt")
    root = _folder(tmp_path / "imgs", [[(16, 16)], [(16, 16)]])
    assert main(["extract", "--model", str(tmp_path / "r18_a.pt"), "--arch", "torchvision:resnet18",
                 "--preprocess", "none", "--data", f"imagefolder:{root}", "--no-attack", "--no-progress",
                 "--out", str(tmp_path / "study")]) == 0
    (run,) = list((tmp_path / "study").glob("*.zarr"))
    assert cg.open(run).attrs["regularizer"] == "unknown"  # not the file name


# --- one eps formatter, CLI wording ------------------------------------------------------------------------------

@pytest.mark.parametrize("eps, text", [(2 / 255, "2/255"), (np.float32(8 / 255), "8/255"), (0.4 / 255, "0.4/255"),
                                       (0.5, "0.5"), (0.25, "0.25"), (0.0, "0"), (1e-3, "0.001")])
def test_eps_label_round_trip(eps, text):
    assert eps_label(eps) == text
    assert parse_eps_label(text) == pytest.approx(float(eps), rel=1e-6)


def test_column_names_and_report_use_the_one_formatter():
    from causalgeom import reporting
    from causalgeom.metrics.table import robust_column, robust_key

    assert robust_key("pgd-linf", 2 / 255) == "robust_acc[pgd-linf@2/255]"
    assert robust_column("pgd-l2", 0.5) == "robust[pgd-l2@0.5]"
    assert reporting.eps_label is eps_label


def test_errors_name_flags_not_keywords():
    from causalgeom.cli import _command_parser, build_parser, cli_words

    p = build_parser()
    imp, ext, med = (_command_parser(p, c) for c in ("import", "extract", "mediate"))
    assert cli_words("no labels array; name it with the labels_key= argument", imp) == \
        "no labels array; name it with --labels-key"
    assert cli_words("store x already exists; pass mode='w' to overwrite it", ext) == \
        "store x already exists; pass --overwrite to overwrite it"
    assert cli_words("method='dowhy' fits unpaired models; use method='regression'", med) == \
        "--method dowhy fits unpaired models; use --method regression"
    assert cli_words("pass mode='w' (--overwrite) to re-extract", ext) == "pass --overwrite to re-extract"
    assert cli_words("unknown_thing='x' stays", ext) == "unknown_thing='x' stays"


def test_cli_errors_reachable_say_flags(tmp_path, capsys):
    from causalgeom.cli import main

    np.savez(tmp_path / "d.npz", features=np.ones((4, 2), np.float32), logits=np.ones((4, 3), np.float32),
             stuff=np.zeros(4, np.int64))
    assert main(["import", str(tmp_path / "d.npz"), str(tmp_path / "new" / "r.zarr")]) == 2
    err = capsys.readouterr().err
    assert "--labels-key" in err and "labels_key" not in err and "argument" not in err
    assert not (tmp_path / "new").exists()  # the folder made for it is removed again
    np.savez(tmp_path / "ok.npz", features=np.ones((4, 2), np.float32), logits=np.ones((4, 3), np.float32),
             labels=np.zeros(4, np.int64))
    assert main(["import", str(tmp_path / "ok.npz"), str(tmp_path / "study" / "run1.zarr")]) == 0
    assert main(["import", str(tmp_path / "ok.npz"), str(tmp_path / "study" / "run1.zarr")]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "mode=" not in err


def test_info_reads_as_text(tmp_path, capsys):
    import causalgeom as cg
    from causalgeom.cli import main
    from causalgeom.testing import make_study

    study = make_study(tmp_path / "s", n_runs=4)
    run = study.run_path(study.run_ids[0])
    assert main(["info", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100 and "run_id" in out and "--wide" in out
    assert main(["info", str(tmp_path / "s"), "--wide"]) == 0
    assert "path" not in capsys.readouterr().out.splitlines()[1]
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("run ") and "attributes:" in out and "/255" in out and not out.lstrip().startswith("{")
    assert main(["info", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dims"]["sample"] == cg.open(run).sizes["sample"]
