"""Weights files are never unpickled (issue 22): a code pickle planted in each of the four places weights come
from -- the torch.hub cache, ``weights=FILE`` / ``--weights FILE`` for timm, the Hugging Face cache and a local
state dict -- is refused with a causalgeom error naming the file, and the code never runs (its marker file is
never created). Valid files in the same places load exactly. The malformed-file cases live in
tests/malformed_weights.py (the malformed-input corpus)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import causalgeom as cg
from causalgeom._util.io import load_weights_file
from causalgeom.cli import main
from causalgeom.errors import ConfigError

from ..malformed_weights import (TIMM_SPEC, code_pickle, hf_cache_file, legacy_bomb, raw_pickle, stride0_pt,
                                 torchvision_cache_file)


def _resnet18(seed: int = 0) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=1000)


def _timm_net(seed: int = 0) -> torch.nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(seed)
    return timm.create_model(TIMM_SPEC, pretrained=False)


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty torch.hub and Hugging Face caches under tmp_path (the environment variables the libraries read)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def test_the_payload_runs_code_when_unpickled(tmp_path):
    """The planted files are real exploits: an unsafe torch.load runs them (so 'no marker' below means something)."""
    for legacy in (False, True):
        marker = tmp_path / f"ran-{legacy}"
        code_pickle(tmp_path / f"evil-{legacy}.pt", marker, legacy=legacy)
        torch.load(tmp_path / f"evil-{legacy}.pt", weights_only=False)
        assert marker.exists()


def test_torchvision_cache_file_name_is_torchvisions():
    import torchvision

    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert cg.models.torch_hub_file(url).name == os.path.basename(url) == "resnet18-f37072fd.pth"


# (place, how the file is written) -> the file is planted there, then loaded through causalgeom.pipeline.models.load
PLACES = [("torch.hub cache", "zip"), ("torch.hub cache", "legacy"), ("torch.hub cache", "raw"),
          ("timm --weights", "zip"), ("timm --weights", "legacy"), ("timm --weights", "raw"),
          ("Hugging Face cache", "zip"), ("Hugging Face cache", "legacy"), ("Hugging Face cache", "raw"),
          ("Hugging Face cache safetensors name", "zip"),
          ("local .pt", "zip"), ("local .pth", "legacy"), ("local .bin", "raw")]


def _plant(place: str, how: str, root: Path, marker: Path) -> tuple[Path, callable]:
    if place == "torch.hub cache":
        file = torchvision_cache_file(root / "torch")
        load = lambda: cg.models.load("torchvision:resnet18", weights="IMAGENET1K_V1")  # noqa: E731
    elif place == "timm --weights":
        file = root / "downloads" / "evil.pth"
        load = lambda: cg.models.load(f"timm:{TIMM_SPEC}", weights=file)  # noqa: E731
    elif place.startswith("Hugging Face cache"):
        name = "model.safetensors" if place.endswith("safetensors name") else "pytorch_model.bin"
        file = hf_cache_file(root / "hf", name)
        load = lambda: cg.models.load(f"timm:{TIMM_SPEC}")  # noqa: E731
    else:
        file = root / f"evil{place.rpartition(' ')[2]}"
        load = lambda: cg.models.load(file, arch="torchvision:resnet18")  # noqa: E731
    if how == "raw":
        raw_pickle(file, marker)
    else:
        code_pickle(file, marker, legacy=how == "legacy")
    return file, load


@pytest.mark.parametrize("place,how", PLACES, ids=[f"{p}-{h}" for p, h in PLACES])
def test_code_pickle_is_refused_everywhere(place, how, caches):
    if "timm" in place or "Hugging" in place:
        pytest.importorskip("timm")
    marker = caches / "pwned"
    file, load = _plant(place, how, caches, marker)
    with pytest.raises(ConfigError) as info:
        load()
    assert str(file) in str(info.value)
    assert "nothing in it was run" in str(info.value) or "safetensors" in str(info.value)
    assert not marker.exists()


def test_download_is_read_as_tensors_only(caches, monkeypatch):
    """download=True: the fetched bytes go through the same reader (torchvision's unpickling loader is never used)."""
    marker = caches / "pwned"

    def fake_download(url, dst, hash_prefix=None, progress=True):
        code_pickle(Path(dst), marker)

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.hub.load_state_dict_from_url must not be called")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", forbidden)
    with pytest.raises(ConfigError, match=r"resnet18-f37072fd\.pth.*refused"):
        cg.models.load("torchvision:resnet18", weights="IMAGENET1K_V1", download=True)
    assert not marker.exists()


def test_timm_download_is_read_as_tensors_only(caches, monkeypatch):
    pytest.importorskip("timm")
    import huggingface_hub

    marker = caches / "pwned"

    def fake_hf_download(repo, filename, cache_dir=None, **kwargs):
        file = hf_cache_file(Path(cache_dir), filename, repo)
        if filename == "model.safetensors":
            raise huggingface_hub.errors.EntryNotFoundError("no safetensors")
        return str(raw_pickle(file, marker))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_download)
    with pytest.raises(ConfigError, match=r"pytorch_model\.bin.*nothing in it was run"):
        cg.models.load(f"timm:{TIMM_SPEC}", download=True)
    assert not marker.exists()


@pytest.mark.parametrize("model,extra", [
    ("torchvision:resnet18", ["--weights", "IMAGENET1K_V1"]),
    ("timm", None),
    ("local", ["--arch", "torchvision:resnet18", "--preprocess", "imagenet"]),
])
def test_cli_extract_refuses_code_pickles(model, extra, caches, capsys):
    """``causalgeom extract --model ...`` with a planted pickle: exit 2, one line naming the file, no code, no store."""
    if model == "timm":
        pytest.importorskip("timm")
        file = code_pickle(caches / "evil.pth", caches / "pwned")
        model, extra = f"timm:{TIMM_SPEC}", ["--weights", str(file)]
    elif model == "local":
        file = code_pickle(caches / "evil.pt", caches / "pwned")
        model = str(file)
    else:
        file = code_pickle(torchvision_cache_file(caches / "torch"), caches / "pwned")
    (caches / "images" / "a").mkdir(parents=True)
    rc = main(["extract", "--model", model, *extra, "--data", f"imagefolder:{caches / 'images'}",
               "--out", str(caches / "out.zarr"), "--no-attack"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert str(file) in err and "refused" in err and "Traceback" not in err
    assert not (caches / "pwned").exists() and not (caches / "out.zarr").exists()


def test_cli_extract_malformed_file_exit_2(tmp_path, capsys):
    big = stride0_pt(tmp_path / "big.pt")
    assert big.stat().st_size < 4096
    rc = main(["extract", "--model", str(big), "--arch", "torchvision:resnet18", "--preprocess", "imagenet", "--data",
               f"imagefolder:{tmp_path}", "--out", str(tmp_path / "o.zarr"), "--no-attack"])
    err = capsys.readouterr().err
    assert rc == 2 and str(big) in err and "stride-0" in err
    assert not (tmp_path / "o.zarr").exists()


# ------------------------------------------------------------------------------------------------- valid files
@pytest.mark.parametrize("how", ["zip", "legacy", "safetensors"])
def test_random_weights_under_the_torchvision_name_load_exactly(how, caches, monkeypatch):
    """A state dict saved as the exact file torchvision expects loads, bit for bit, in each format torch.hub holds
    (torchvision's unpickling loader is never called)."""
    from safetensors.torch import save_file

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("unsafe loader called")))
    net = _resnet18(seed=3)
    file = torchvision_cache_file(caches / "torch")
    file.parent.mkdir(parents=True)
    if how == "safetensors":
        save_file(net.state_dict(), str(file))  # safetensors bytes under the .pth name: told by content
    else:
        torch.save(net.state_dict(), file, _use_new_zipfile_serialization=how == "zip")
    model, _ = cg.models.load("torchvision:resnet18", weights="IMAGENET1K_V1")
    got = model.net.state_dict()
    assert list(got) == list(net.state_dict())
    for key, value in net.state_dict().items():
        assert torch.equal(got[key], value), key
    assert getattr(model, cg.models.LOAD_ATTRS)["weights_file"] == str(file)


def test_random_weights_in_the_hf_cache_load_exactly(caches):
    net = _timm_net(seed=4)
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, hf_cache_file(caches / "hf", "pytorch_model.bin"))
    model, _ = cg.models.load(f"timm:{TIMM_SPEC}")
    for key, value in net.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key


def test_reader_checks(tmp_path):
    # tied weights (two names, one storage) are a valid state dict
    w = torch.randn(4, 3)
    torch.save({"a.weight": w, "b.weight": w, "module.c": torch.arange(3)}, tmp_path / "tied.pt")
    state = load_weights_file(tmp_path / "tied.pt", limit=2**20, error=ConfigError)
    assert set(state) == {"a.weight", "b.weight", "c"} and torch.equal(state["b.weight"], w)
    # the limit is on the materialised bytes (48 + 48 + 24 = 120 here)
    with pytest.raises(ConfigError, match=r"tied\.pt.*together take 120 B, over the limit of 100 B"):
        load_weights_file(tmp_path / "tied.pt", limit=100, error=ConfigError)
    # a stride-0 view of a storage: refused before anything is materialised; an in-bounds slice is fine
    stride0_pt(tmp_path / "s0.pt", shape=(8, 64))  # 2 KiB of views on 1 KiB
    with pytest.raises(ConfigError, match=r"s0\.pt.*\(8, 64\).*stride-0"):
        load_weights_file(tmp_path / "s0.pt", limit=2**30, error=ConfigError)
    torch.save({"x": torch.arange(100.0)[10:20]}, tmp_path / "slice.pt")
    assert torch.equal(load_weights_file(tmp_path / "slice.pt", limit=2**20)["x"], torch.arange(10.0, 20.0))
    # legacy storages are sized before torch.load allocates them
    with pytest.raises(ConfigError, match=r"bomb\.pt.*declare"):
        load_weights_file(legacy_bomb(tmp_path / "bomb.pt"), limit=2**40, error=ConfigError)
    legacy = {"x": torch.randn(5, 2), "y": torch.arange(4)}
    torch.save(legacy, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    got = load_weights_file(tmp_path / "legacy.pt", limit=2**20, error=ConfigError)
    assert all(torch.equal(got[k], v) for k, v in legacy.items())
