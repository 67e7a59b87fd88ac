"""A new user's path on real files (issue 25): an ImageFolder of PNG and JPEG images of mixed sizes, local
``.safetensors`` ResNet-18 state dicts with ``--arch`` and ``--preprocess``, then extract -> metrics -> report."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _imagefolder(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = [(64, 64), (80, 50), (33, 47), (64, 64), (50, 80), (40, 40)]
    for c in range(3):
        d = root / f"c{c}"
        d.mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            img = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))
            img.save(d / (f"{i}.png" if i % 2 else f"{i}.jpg"))
    return root


@pytest.mark.slow
def test_local_safetensors_with_arch_and_preprocess_to_report(tmp_path, capsys):
    import torchvision
    from safetensors.torch import save_file

    import causalgeom as cg
    from causalgeom.cli import main

    root = _imagefolder(tmp_path / "imgs")
    study = tmp_path / "study"
    for i, reg in enumerate(("ce", "ce", "mixup", "mixup")):
        gen = torch.Generator().manual_seed(i)
        net = torchvision.models.resnet18(num_classes=3)
        with torch.no_grad():  # random weights, made explicit by the generator
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        save_file(net.state_dict(), str(tmp_path / f"r18_{i}.safetensors"))
        args = ["extract", "--model", str(tmp_path / f"r18_{i}.safetensors"), "--arch", "torchvision:resnet18",
                "--data", f"imagefolder:{root}", "--out", str(study / f"{reg}-s{i}.zarr"), "--no-progress",
                "--attack", "fgsm:linf:eps=1/255,2/255", "--batch-size", "5", "--attr", f"regularizer={reg}",
                "--attr", f"seed={i}", "--attr", f"strength={0.0 if reg == 'ce' else 0.2}"]
        if i == 0:  # no preprocessing named: refused, naming the flag, nothing written
            assert main(args) == 2 and "--preprocess" in capsys.readouterr().err
            assert not (study / "ce-s0.zarr").exists()
        assert main([*args, "--preprocess", "resize=24,crop=24,mean=0.5,0.5,0.5,std=0.25,0.25,0.25"]) == 0
    s = cg.open_study(study)
    assert sorted(s.runs["regularizer"]) == ["ce", "ce", "mixup", "mixup"]
    ds = s["mixup-s2"]
    assert ds.sizes["sample"] == 18 and ds.attrs["preprocess"].startswith("resize=24,crop=24,mean=0.5,0.5,0.5")
    cg.validate(ds)

    assert main(["metrics", str(study)]) == 0
    out = capsys.readouterr().out
    assert "robust_acc[fgsm-linf@1/255]" in out or "fgsm-linf@1/255" in out
    assert main(["report", str(study), "--out", str(tmp_path / "report.html"), "--no-progress", "--no-refute"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "resize=24,crop=24" in text  # the preprocessing is in the provenance
    assert "0.00392157" not in text and "1/255" in text
