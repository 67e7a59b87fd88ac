"""The one-copy helpers (`causalgeom._util`), `ExtractConfig` and `causalgeom.testing`."""

from __future__ import annotations

import os

import numpy as np
import pytest

import causalgeom as cg
from causalgeom._util.checks import check_choice
from causalgeom._util.io import atomic_write, file_lock
from causalgeom._util.rng import check_random_state
from causalgeom.errors import ConfigError, QueryError, StoreError, StoreLockedError
from causalgeom.testing import assert_valid_run, make_run, make_study


# ------------------------------------------------------------------------------------------------ io
def test_atomic_write_replaces_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "a.json"
    atomic_write(target, "old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    atomic_write(target, lambda fh: fh.write(b"via callable"))
    assert target.read_text() == "via callable"

    def boom(fh):
        fh.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        atomic_write(target, boom)
    assert target.read_text() == "via callable"  # the old content survives a failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # the temporary file was removed


def test_file_lock_contention_and_release(tmp_path):
    lock = tmp_path / ".x.lock"
    with file_lock(lock, what="thing x is busy"):
        # flock locks belong to the open file description: a second open in this process conflicts too
        with pytest.raises(StoreLockedError, match=r"thing x is busy \(lock .*\.x\.lock is held\)"):
            with file_lock(lock, what="thing x is busy"):
                pass
    with file_lock(lock):  # released
        pass


def test_file_lock_refuses_a_symbolic_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / ".x.lock"
    os.symlink(victim, link)
    with pytest.raises(StoreError, match="symbolic link"):
        with file_lock(link):
            pass
    assert victim.read_text() == "keep me"


def test_store_lock_uses_the_shared_lock(tmp_path):
    with cg.store.store_lock(tmp_path / "r.zarr"):
        with pytest.raises(StoreLockedError, match="being written by another process"):
            with cg.store.store_lock(tmp_path / "r.zarr"):
                pass


# ------------------------------------------------------------------------------------------ rng, choices
def test_check_random_state():
    g = np.random.default_rng(5)
    assert check_random_state(g) is g  # shared state, not a copy
    assert check_random_state(3).integers(0, 10**9) == np.random.default_rng(3).integers(0, 10**9)
    assert isinstance(check_random_state(None), np.random.Generator)
    assert isinstance(check_random_state(np.int64(2)), np.random.Generator)
    with pytest.raises(ConfigError, match="rng: expected a numpy.random.Generator, an integer seed or None, got bool"):
        check_random_state(True)
    with pytest.raises(QueryError, match="seed: expected"):
        check_random_state("0", "seed", error=QueryError)
    with pytest.raises(ValueError):  # ConfigError is a ValueError: `except ValueError` callers keep working
        check_random_state(1.5)


def test_check_choice_lists_the_allowed_values():
    assert check_choice("mass", "binning", ("width", "mass")) == "mass"
    with pytest.raises(ConfigError, match=r"binning: expected one of \['width', 'mass'\], got 'wide'"):
        check_choice("wide", "binning", ("width", "mass"))
    with pytest.raises(ConfigError, match="got \\[1\\]"):  # an unhashable value is refused, not a TypeError
        check_choice([1], "x", {"a"})
    with pytest.raises(ConfigError, match="kind: expected one of"):  # used by the metric modules
        cg.geometry.class_centers(make_run(n=20, d=3, k=2), kind="median")


# ------------------------------------------------------------------------------------------------ torch
def test_device_and_autocast():
    torch = pytest.importorskip("torch")
    from causalgeom._util.torch import autocast, device

    assert device("cpu") == torch.device("cpu")
    assert device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="device: expected 'auto', 'cpu'"):
        device("gpu-please")
    a = torch.ones(4, 4)
    with autocast(torch.device("cpu"), True):
        assert (a @ a).dtype == torch.bfloat16  # autocast works on the CPU too
    with autocast(torch.device("cpu"), False):
        assert (a @ a).dtype == torch.float32


def test_extract_config_is_the_keyword_api(tmp_path):
    torch = pytest.importorskip("torch")
    from causalgeom.pipeline.extract import ExtractConfig

    cfg = ExtractConfig.from_options(None, batch_size=8, progress=False)
    assert cfg.batch_size == 8 and cfg.progress is False and cfg.mode == "w-"
    assert ExtractConfig.from_options(cfg, mode="w").batch_size == 8  # keywords replace fields of a config
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['batchsize'\]; expected some of \['head'"):
        ExtractConfig.from_options(None, batchsize=8)
    with pytest.raises(ConfigError, match="sample_chunk: expected a positive integer, got 0"):
        ExtractConfig(sample_chunk=0).check()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    x, y = torch.rand(20, 1, 3, 4), torch.arange(20) % 3
    a = cg.extract(model, (x, y), tmp_path / "a.zarr", batch_size=8, progress=False)
    b = cg.extract(model, (x, y), tmp_path / "b.zarr", ExtractConfig(batch_size=8, progress=False))
    da, db = assert_valid_run(a, n=20, d=6, k=3).load(), assert_valid_run(b).load()
    for name in ("features", "logits", "label", "head_weight"):  # the same computation: exactly equal
        np.testing.assert_array_equal(da[name].values, db[name].values)


# ---------------------------------------------------------------------------------------------- testing
def test_make_run_scale_and_assert_valid_run():
    base, small = make_run(n=30, d=4, k=3, seed=2), make_run(n=30, d=4, k=3, seed=2, scale=0.5)
    # same draws, features scaled: equal up to float32 rounding of the product
    np.testing.assert_allclose(small["features"].values, 0.5 * base["features"].values, rtol=1e-6)
    assert_valid_run(base, n=30, d=4, k=3)
    with pytest.raises(AssertionError, match="dim 'class': expected 4, got 3"):
        assert_valid_run(base, k=4)
    broken = base.copy(deep=True)
    broken["logits"].values[0, 0] += 1.0
    with pytest.raises(AssertionError, match="not a valid schema-v1 run: variable 'logits': inconsistent"):
        assert_valid_run(broken)  # the rule is causalgeom.dump.schema.validate's


def test_make_study(tmp_path):
    study = make_study(tmp_path / "s", n_runs=4, n=30, d=4, k=3, seed=10)
    runs = study.runs.set_index("run_id")
    assert list(runs.index) == ["ce-s10", "ce-s11", "ls-s12", "ls-s13"]
    assert list(runs["regularizer"]) == ["ce", "ce", "label_smoothing", "label_smoothing"]
    np.testing.assert_allclose(study["ls-s12"]["features"].values,
                               0.7 * make_run(n=30, d=4, k=3, seed=12)["features"].values, rtol=1e-6)
    with pytest.raises(ConfigError, match="n_runs: expected at least 2"):
        make_study(tmp_path / "t", n_runs=1)


# --------------------------------------------------------------------------------------------- run_grid
class _InlineExecutor:
    """A concurrent.futures-style executor that runs each call at submit time (records the calls)."""

    def __init__(self):
        self.calls = []

    def submit(self, fn, *args):
        from concurrent.futures import Future

        self.calls.append(args)
        fut = Future()
        try:
            fut.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - handed to the caller through the future
            fut.set_exception(exc)
        return fut


@pytest.mark.slow  # trains twice (about 3 s)
def test_run_grid_takes_an_executor(tmp_path):
    torch = pytest.importorskip("torch")
    from causalgeom import train

    grid = train.GridConfig.from_dict({"name": "tiny", "seeds": [0], "regularizers": [{"name": "ce"}], "train": {
        "epochs": 1, "batch_size": 32, "max_train_samples": 32, "num_threads": 1}})  # digits, small_cnn
    ref = train.run_grid(grid, tmp_path / "here", progress=False, scheduler=False)
    ex = _InlineExecutor()
    dirs = train.run_grid(grid, tmp_path / "there", progress=False, executor=ex)
    assert [d.name for d in dirs] == [d.name for d in ref] == ["ce-s0"] and len(ex.calls) == 1
    # the same training computation in the same process: the checkpoints are identical
    assert (dirs[0] / "checkpoint.pt").exists() and train.run_status(dirs[0]) == "done"
    wa = torch.load(ref[0] / "checkpoint.pt", weights_only=True)["model"]
    wb = torch.load(dirs[0] / "checkpoint.pt", weights_only=True)["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert train.run_grid(grid, tmp_path / "there", progress=False, executor=ex) == dirs and len(ex.calls) == 1
    with pytest.raises(ConfigError, match="give scheduler or executor, not both"):
        train.run_grid(grid, tmp_path / "x", progress=False, scheduler="local", executor=ex)
    with pytest.raises(ConfigError, match="executor: expected an object with submit"):
        train.run_grid(grid, tmp_path / "y", progress=False, executor=object())
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # refused before anything is written
