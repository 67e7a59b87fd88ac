"""Extraction: head capture, store layout and round trip, streaming/resume, shards, errors, CLI."""

from __future__ import annotations

import json
import math
import sys
import threading
import types

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import causalgeom as cg
from tests._helpers import REPO_ROOT
from tests._numerics import F32_ATOL, F32_RTOL, assert_decisions_agree
from causalgeom.pipeline.attacks import FGSM, PGD
from causalgeom.errors import ConfigError, IncompleteStoreError, SchemaError, StoreExistsError
from causalgeom.pipeline.extract import PROGRESS_DIR, extract_runs, find_head


def init_(module: nn.Module, seed: int) -> nn.Module:
    """Re-initialize parameters from an explicit generator (no global seeding)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else p.numel()
            p.copy_((2 * torch.rand(p.shape, generator=g) - 1) / math.sqrt(fan_in))
    return module


class Net(nn.Module):
    """Pixel-space model ending in an nn.Linear head; dropout shows eval mode is used."""

    def __init__(self, k: int = 5, seed: int = 0):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                  nn.Linear(24, 12), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(12, k)
        init_(self, seed)

    def forward(self, x):
        return self.head(self.body((x - 0.5) / 0.25))


def make_data(n: int = 200, k: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, k, (n,), generator=g)


class Items(torch.utils.data.Dataset):
    """Map-style dataset; raises at index ``fail_at`` (simulated crash) and records accessed indices."""

    def __init__(self, x, y, fail_at: int | None = None):
        self.x, self.y, self.fail_at = x, y, fail_at
        self.seen: list[int] = []

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        if self.fail_at is not None and i >= self.fail_at:
            raise RuntimeError(f"simulated crash at sample {i}")
        self.seen.append(int(i))
        return self.x[i], int(self.y[i])


def loaded(path) -> xr.Dataset:
    ds = cg.open(path).load()
    ds.attrs.pop("created", None)
    return ds


ATTACKS = [PGD("linf", steps=2, random_start=True), FGSM("l2")]
EPS = [1 / 255, 8 / 255]


# ----------------------------------------------------------------------------------------------
# content
# ----------------------------------------------------------------------------------------------
def test_features_and_logits_match_independent_hook(tmp_path):
    model = Net()
    model.train()  # extraction must use eval mode and restore the flag
    x, y = make_data(130)
    path = cg.extract(model, (x, y), tmp_path / "r.zarr", batch_size=32, progress=False,
                      attrs={"run_id": "net-s0", "regularizer": "ce", "strength": 0.0, "seed": 3})
    assert model.training
    ds = cg.open(path, check_values=True)
    # independent capture of the head input, eval mode
    captured = []
    h = model.head.register_forward_hook(lambda m, a, o: captured.append(a[0].detach()))
    model.eval()
    with torch.no_grad():
        out = model(x)
    h.remove()
    # 130 images in batches of 32 leave a partial last batch of 2, which BLAS may run through another kernel
    # than the single 130-image pass: the same formula, another summation order -> a few float32 ulp.
    np.testing.assert_allclose(ds["features"].values, captured[0].numpy(), rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_allclose(ds["logits"].values, out.numpy(), rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_array_equal(ds["label"].values, y.numpy())
    W, b = ds["head_weight"].values, ds["head_bias"].values
    np.testing.assert_array_equal(W, model.head.weight.detach().numpy())
    np.testing.assert_allclose(ds["features"].values @ W.T + b, ds["logits"].values, rtol=1e-5, atol=1e-5)
    a = ds.attrs
    assert a["feature_layer"] == "head" and a["model"] == "Net" and a["input_range"] == "[0, 1]"
    assert a["run_id"] == "net-s0" and a["regularizer"] == "ce" and a["seed"] == 3
    assert a["schema_version"] == 1 and "torch" in a["versions"]
    assert not (path / PROGRESS_DIR).exists()
    assert "adv_correct" not in ds


def test_facade_function_and_module_function_agree(tmp_path):
    from causalgeom.pipeline.extract import extract as fn

    assert cg.extract is fn  # the facade name is the function itself

    x, y = make_data(40)
    a = cg.extract(Net(), (x, y), tmp_path / "a.zarr", progress=False)
    b = fn(Net(), (x, y), tmp_path / "b.zarr", progress=False)
    assert a.name == "a.zarr" and cg.open(a).attrs["run_id"] == "a"
    xr.testing.assert_identical(loaded(a).drop_attrs(), loaded(b).drop_attrs())


def test_attack_outcomes_equal_sweep(tmp_path):
    """Deterministic attacks: the store's outcomes are those of cg.attacks.sweep on the same data."""
    model = Net()
    x, y = make_data(150)
    atks = [PGD("linf", steps=2, random_start=False), FGSM("linf")]
    path = cg.extract(model, (x, y), tmp_path / "r.zarr", attacks=atks, eps=EPS, batch_size=64, progress=False,
                      save_adv=True)
    ds = cg.open(path, check_values=True)
    # The reference runs cg.attacks.sweep on the same batches of 64 (64, 64, 22) that extract attacks: the
    # same computation by construction, so the outcomes must be identical.
    parts = [cg.attacks.sweep(model.eval(), x[s:s + 64], y[s:s + 64], atks, EPS, return_features=True)
             for s in range(0, 150, 64)]
    ref = {k: np.concatenate([p[k] for p in parts], axis=-1 if k in ("adv_correct", "adv_margin", "min_flip_eps")
                             else 2) for k in ("adv_correct", "adv_margin", "min_flip_eps", "adv_features",
                                               "adv_logits")}
    assert list(ds["attack"].values) == ["pgd-linf", "fgsm-linf"]
    np.testing.assert_allclose(ds["eps"].values, EPS)
    np.testing.assert_array_equal(ds["adv_correct"].values, ref["adv_correct"])
    np.testing.assert_array_equal(ds["adv_margin"].values, ref["adv_margin"])
    np.testing.assert_array_equal(ds["min_flip_eps"].values, ref["min_flip_eps"])
    np.testing.assert_array_equal(ds["adv_features"].values, ref["adv_features"])
    np.testing.assert_array_equal(ds["adv_logits"].values, ref["adv_logits"])
    # ... and one sweep over all 150 at once (another batch shape, another kernel) agrees within tolerance
    whole = cg.attacks.sweep(model.eval(), x, y, atks, EPS, return_features=True)
    assert_decisions_agree(ds["adv_correct"].values, whole["adv_correct"], whole["adv_margin"])
    assert ds.attrs["attack_params"]["pgd-linf"]["steps"] == 2


def test_reference_preset_and_all_broken_chunks(tmp_path):
    """A model wrong on every sample: adv_correct is all False (fill-value chunks must still be written)."""
    model = Net()
    x, _ = make_data(70)
    with torch.no_grad():
        y = (model.eval()(x).argmax(1) + 1) % 5
    path = cg.extract(model, (x, y), tmp_path / "r.zarr", attacks=cg.attacks.REFERENCE, batch_size=32,
                      sample_chunk=32, progress=False)
    ds = cg.open(path, verify=True)
    assert ds.sizes["eps"] == 1 and not ds["adv_correct"].values.any()
    assert (ds["min_flip_eps"].values == 0).all()


@pytest.mark.parametrize("kind", ["dataset", "loader"])
def test_dataset_and_loader_equal_tensors(tmp_path, kind):
    x, y = make_data(90)
    ref = cg.extract(Net(), (x, y), tmp_path / "t.zarr", attacks=ATTACKS, eps=EPS, batch_size=16, progress=False,
                     attrs={"run_id": "r"})
    data = Items(x, y)
    if kind == "loader":
        data = torch.utils.data.DataLoader(data, batch_size=16, shuffle=False)
    other = cg.extract(Net(), data, tmp_path / "d.zarr", attacks=ATTACKS, eps=EPS, progress=False,
                       batch_size=16, attrs={"run_id": "r"})
    xr.testing.assert_identical(loaded(ref), loaded(other))


def test_shuffled_loader_refused(tmp_path):
    x, y = make_data(20)
    loader = torch.utils.data.DataLoader(Items(x, y), batch_size=8, shuffle=True)
    with pytest.raises(ConfigError, match="shuffle"):
        cg.extract(Net(), loader, tmp_path / "r.zarr", progress=False)


def test_amp_clean_pass_keeps_logits_consistent(tmp_path):
    x, y = make_data(40)
    path = cg.extract(Net(), (x, y), tmp_path / "r.zarr", amp=True, progress=False)
    ds = cg.open(path, check_values=True)  # logits = features @ W.T + b within the default tolerance
    assert "amp" in ds.attrs["logits_source"]


# ----------------------------------------------------------------------------------------------
# streaming: interruption, resume, shards
# ----------------------------------------------------------------------------------------------
def test_interrupted_extraction_resumes_and_equals_uninterrupted(tmp_path):
    x, y = make_data(200)
    kw = dict(attacks=ATTACKS, eps=EPS, batch_size=20, sample_chunk=40, progress=False, generator=11,
              attrs={"run_id": "r"})
    full = cg.extract(Net(), Items(x, y), tmp_path / "full.zarr", **kw)

    crash = Items(x, y, fail_at=130)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cg.extract(Net(), crash, tmp_path / "r.zarr", **kw)
    with pytest.raises(IncompleteStoreError):
        cg.open(tmp_path / "r.zarr")
    done = sorted(p.name for p in (tmp_path / "r.zarr" / PROGRESS_DIR).glob("chunk-*"))
    assert len(done) == 3  # samples 0..119 were written by the writer thread before the error surfaced

    resumed = Items(x, y)
    cg.extract(Net(), resumed, tmp_path / "r.zarr", **kw)
    assert min(resumed.seen) == 120  # finished chunks were not recomputed
    xr.testing.assert_identical(loaded(full), loaded(tmp_path / "r.zarr"))


KILL_SCRIPT = """
import sys, time
from tests.pipeline.test_extract import ATTACKS, EPS, Items, Net, make_data
import causalgeom as cg

class Stalls(Items):
    def __getitem__(self, i):
        if i >= 130:
            open(sys.argv[2], "w").close()
            time.sleep(600)  # killed here
        return super().__getitem__(i)

x, y = make_data(200)
cg.extract(Net(), Stalls(x, y), sys.argv[1], attacks=ATTACKS, eps=EPS, batch_size=20, sample_chunk=40,
           progress=False, generator=11, attrs={"run_id": "r"})
"""


@pytest.mark.slow
def test_sigkilled_extraction_resumes(tmp_path):
    """A process killed with SIGKILL mid-extraction (no cleanup at all) leaves a resumable store."""
    import os
    import signal
    import subprocess
    import time

    root = REPO_ROOT
    script = tmp_path / "kill_me.py"
    script.write_text(KILL_SCRIPT)
    target, flag = tmp_path / "r.zarr", tmp_path / "stalled"
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(target), str(flag)], cwd=root, env=env,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the extraction subprocess did not reach the stall point"
            time.sleep(0.1)
        while len(list((target / PROGRESS_DIR).glob("chunk-*"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with pytest.raises(IncompleteStoreError):
        cg.open(target)
    x, y = make_data(200)
    kw = dict(attacks=ATTACKS, eps=EPS, batch_size=20, sample_chunk=40, progress=False, generator=11,
              attrs={"run_id": "r"})
    resumed = Items(x, y)
    cg.extract(Net(), resumed, target, **kw)
    assert min(resumed.seen) == 120
    full = cg.extract(Net(), (x, y), tmp_path / "full.zarr", **kw)
    xr.testing.assert_identical(loaded(full), loaded(target))


def test_resume_with_other_settings_refused(tmp_path):
    x, y = make_data(100)
    kw = dict(batch_size=20, sample_chunk=40, progress=False)
    with pytest.raises(RuntimeError):
        cg.extract(Net(), Items(x, y, fail_at=50), tmp_path / "r.zarr", **kw)
    with pytest.raises(StoreExistsError, match="head"):
        cg.extract(Net(seed=1), Items(x, y), tmp_path / "r.zarr", **kw)
    with pytest.raises(StoreExistsError, match="attacks"):
        cg.extract(Net(), Items(x, y), tmp_path / "r.zarr", attacks=[FGSM()], eps=EPS, **kw)
    cg.extract(Net(seed=1), Items(x, y), tmp_path / "r.zarr", mode="w", **kw)
    assert cg.open(tmp_path / "r.zarr").sizes["sample"] == 100


def test_complete_store_not_overwritten(tmp_path):
    x, y = make_data(30)
    path = cg.extract(Net(), (x, y), tmp_path / "r.zarr", progress=False)
    with pytest.raises(StoreExistsError, match="mode='w'"):
        cg.extract(Net(), (x, y), path, progress=False)
    cg.extract(Net(seed=2), (x, y), path, progress=False, mode="w")
    np.testing.assert_array_equal(cg.open(path)["head_weight"].values, Net(seed=2).head.weight.detach().numpy())


def test_two_shards_equal_single_process(tmp_path):
    x, y = make_data(170)
    kw = dict(attacks=ATTACKS, eps=EPS, batch_size=16, sample_chunk=32, progress=False, generator=5,
              attrs={"run_id": "r"})
    single = cg.extract(Net(), (x, y), tmp_path / "single.zarr", **kw)
    target = tmp_path / "sharded.zarr"
    cg.extract(Net(), (x, y), target, shard=(1, 2), **kw)
    with pytest.raises(IncompleteStoreError):
        cg.open(target)
    cg.extract(Net(), (x, y), target, shard=(0, 2), **kw)
    xr.testing.assert_identical(loaded(single), loaded(target))


def test_concurrent_shards_create_one_store(tmp_path):
    """Three shards started at once (threads here; processes use the same file locks) race to create the store."""
    x, y = make_data(150)
    kw = dict(attacks=[FGSM()], eps=EPS, batch_size=25, sample_chunk=25, progress=False, attrs={"run_id": "r"})
    single = cg.extract(Net(), (x, y), tmp_path / "single.zarr", **kw)
    target = tmp_path / "sharded.zarr"
    errors = []

    def work(rank):
        try:
            cg.extract(Net(), (x, y), target, shard=(rank, 3), **kw)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    xr.testing.assert_identical(loaded(single), loaded(target))


def test_shard_arguments_checked(tmp_path):
    x, y = make_data(20)
    with pytest.raises(ConfigError, match="rank"):
        cg.extract(Net(), (x, y), tmp_path / "r.zarr", shard=(2, 2), progress=False)
    with pytest.raises(ConfigError, match="mode='w'"):
        cg.extract(Net(), (x, y), tmp_path / "r.zarr", shard=(0, 2), mode="w", progress=False)


# ----------------------------------------------------------------------------------------------
# finding the head; models that do not fit
# ----------------------------------------------------------------------------------------------
class ConvHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x)


class Softmaxed(Net):
    def forward(self, x):
        return super().forward(x).softmax(1)


class TupleOut(Net):
    def forward(self, x):
        return super().forward(x), None


class FakeTimm(Net):
    def __init__(self, num_classes=5):
        super().__init__(k=max(num_classes, 1))
        if num_classes == 0:
            self.head = nn.Identity()

    def get_classifier(self):
        return self.head


def test_find_head_rules():
    assert find_head(Net())[0] == "head"
    assert find_head(Net(), "body.4")[0] == "body.4"
    assert find_head(FakeTimm())[0] == "head"
    with pytest.raises(ConfigError, match="no submodule named 'fc'"):
        find_head(Net(), "fc")
    with pytest.raises(ConfigError, match="expected nn.Linear"):
        find_head(Net(), "body.0")
    with pytest.raises(ConfigError, match="get_classifier"):
        find_head(FakeTimm(num_classes=0))


@pytest.mark.parametrize("model,err,match", [
    (ConvHead(), ConfigError, "no nn.Linear"),
    (Softmaxed(), SchemaError, "not the output of its final linear layer"),
    (TupleOut(), SchemaError, "tensor of logits"),
])
def test_models_that_do_not_fit_get_clear_errors(tmp_path, model, err, match):
    x, y = make_data(10)
    with pytest.raises(err, match=match):
        cg.extract(model, (x, y), tmp_path / "r.zarr", progress=False)
    assert not (tmp_path / "r.zarr").exists()  # nothing is created when the first batch is refused
    with pytest.raises(err, match=match):
        find_head(model, example=x)


def test_wrong_head_name_detected_on_first_batch(tmp_path):
    x, y = make_data(10)
    with pytest.raises(SchemaError, match="body.4"):
        cg.extract(Net(), (x, y), tmp_path / "r.zarr", head="body.4", progress=False)


def test_nonfinite_features_refused(tmp_path):
    class NaNs(Net):
        def forward(self, x):
            return self.head(self.body(x) * float("nan"))

    x, y = make_data(10)
    with pytest.raises(SchemaError, match="NaN"):
        cg.extract(NaNs(), (x, y), tmp_path / "r.zarr", progress=False)


def test_inputs_out_of_range_refused_for_attacks(tmp_path):
    x, y = make_data(10)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        cg.extract(Net(), (x * 255, y), tmp_path / "r.zarr", attacks=[FGSM()], progress=False)


def test_torchvision_classifier(tmp_path):
    tv = pytest.importorskip("torchvision")
    model = tv.models.resnet18(num_classes=3)
    assert find_head(model)[0] == "fc"
    assert find_head(tv.models.mobilenet_v3_small(num_classes=3))[0] == "classifier.3"
    with pytest.raises(ConfigError, match="no nn.Linear"):
        find_head(tv.models.squeezenet1_1(num_classes=3))
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 3, 32, 32, generator=g), torch.randint(0, 3, (6,), generator=g)
    ds = cg.open(cg.extract(model, (x, y), tmp_path / "r.zarr", progress=False), check_values=True)
    assert ds.sizes["feature"] == 512 and ds.attrs["model"] == "ResNet"


@pytest.mark.parametrize("arch, size", [("resnet10t", 32), ("vit_tiny_patch16_224", 32)])
def test_timm_features_are_pre_logits(tmp_path, arch, size):
    """timm models (a CNN and a ViT, random init): the stored features are the classifier's input, i.e.
    timm's own ``forward_head(forward_features(x), pre_logits=True)`` — for a ViT that is after the final norm
    and the token pooling."""
    import timm  # a test dependency (pyproject's `test` extra): this test never skips

    kw = dict(img_size=size) if arch.startswith("vit") else {}
    model = timm.create_model(arch, pretrained=False, num_classes=3, **kw).eval()
    name, head = find_head(model)
    assert head is model.get_classifier()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(5, 3, size, size, generator=g), torch.randint(0, 3, (5,), generator=g)
    ds = cg.open(cg.extract(model, (x, y), tmp_path / "r.zarr", batch_size=2, progress=False), check_values=True)
    assert ds.attrs["feature_layer"] == name
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model(x)
    assert ds.sizes["feature"] == pre.shape[1] == model.num_features
    # batches of 2 (a partial last one) vs one pass of 5: float32 reassociation tolerance
    np.testing.assert_allclose(ds["features"].values, pre.numpy(), rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_allclose(ds["logits"].values, logits.numpy(), rtol=F32_RTOL, atol=F32_ATOL)


# ----------------------------------------------------------------------------------------------
# checkpoints, training grids and the CLI (train/data replaced by stand-ins)
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def fake_training(tmp_path, monkeypatch):
    """A training output folder with two finished runs and one unfinished, plus stand-in loaders."""
    x, y = make_data(60)
    out = tmp_path / "train_out"
    configs = {}
    for i, rid in enumerate(["ce-s0", "ls-s0", "mix-s0"]):
        d = out / "runs" / rid
        d.mkdir(parents=True)
        cfg = {"run_id": rid, "regularizer": "ce" if i == 0 else "label_smoothing", "strength": 0.1 * i,
               "regularizer_params": {"alpha": 0.1 * i}, "seed": 0, "model": "net", "dataset": "toy"}
        (d / "config.json").write_text(json.dumps(cfg))
        (d / "checkpoint.pt").write_text("stand-in")
        if rid != "mix-s0":
            (d / "DONE").write_text("")
        configs[rid] = cfg
    loads = []

    def load_checkpoint(path):
        path = type(out)(path)
        run_dir = path if path.is_dir() else path.parent
        loads.append(run_dir.name)
        return Net(seed=len(run_dir.name)).eval(), json.loads((run_dir / "config.json").read_text())

    def load_dataset(name, split, root=None):
        assert name == "toy"
        return torch.utils.data.TensorDataset(x, y)

    monkeypatch.setitem(sys.modules, "causalgeom.pipeline.train", types.SimpleNamespace(load_checkpoint=load_checkpoint))
    monkeypatch.setitem(sys.modules, "causalgeom.pipeline.data", types.SimpleNamespace(load_dataset=load_dataset))
    return out, loads


def test_extract_runs_into_one_study_and_skip_done(fake_training):
    out, loads = fake_training
    paths = extract_runs(out, attacks="fgsm:linf:eps=1/255,4/255", progress=False, batch_size=32)
    assert [p.name for p in paths] == ["ce-s0.zarr", "ls-s0.zarr"]
    study = cg.open_study(out / "study")
    assert study.run_ids == ["ce-s0", "ls-s0"]
    runs = study.runs.set_index("run_id")
    assert runs.loc["ls-s0", "regularizer"] == "label_smoothing" and runs.loc["ls-s0", "split"] == "test"
    assert runs.loc["ce-s0", "attacks"] == ["fgsm-linf"]
    n = len(loads)
    extract_runs(out / "runs", progress=False)  # all done: nothing is loaded again
    assert len(loads) == n


def test_cli_extract(fake_training, capsys):
    from causalgeom.cli import main

    out, _ = fake_training
    assert main(["extract", str(out), "--attack", "pgd:linf:eps=1/255:steps=2", "--no-progress",
                 "--batch-size", "16"]) == 0
    assert cg.open_study(out / "study").run_ids == ["ce-s0", "ls-s0"]
    ds = cg.open(out / "study" / "ce-s0.zarr")
    assert list(ds["attack"].values) == ["pgd-linf"] and ds.sizes["eps"] == 1
    single = out / "one.zarr"
    assert main(["extract", str(out / "runs" / "mix-s0"), "--out", str(single), "--no-attack",
                 "--no-progress"]) == 0
    assert cg.open(single).attrs["run_id"] == "mix-s0"
    assert main(["extract", str(out / "runs" / "mix-s0"), "--out", str(single), "--no-attack",
                 "--no-progress"]) == 2  # complete store, no --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["extract", str(out), "--attack", "pgd:foo=1", "--no-progress"]) == 2


def test_compressor_option_reaches_the_store(tmp_path):
    """extract(compressor=...) writes the chosen codec (plus CRC32C); the default writes none; unknown names fail."""
    import json as _json

    x, y = make_data(40)

    def codecs(path):
        meta = _json.loads((path / "features" / "zarr.json").read_text())
        return [c["name"] for c in meta["codecs"]]

    plain = cg.extract(Net(), (x, y), tmp_path / "a.zarr", progress=False)
    zstd = cg.extract(Net(), (x, y), tmp_path / "b.zarr", progress=False, compressor="zstd")
    assert "zstd" not in codecs(plain) and "crc32c" in codecs(plain)
    assert "zstd" in codecs(zstd) and "crc32c" in codecs(zstd)
    xr.testing.assert_identical(loaded(plain).drop_attrs(), loaded(zstd).drop_attrs())  # same values, another codec
    with pytest.raises(ConfigError, match="compressor"):
        cg.extract(Net(), (x, y), tmp_path / "c.zarr", progress=False, compressor="gzip")
    assert not (tmp_path / "c.zarr").exists()
