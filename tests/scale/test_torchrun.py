"""Extraction with ``torchrun`` (2 CPU processes, gloo): equals a single process; a failed rank is redone alone.

The ranks run a small script (written to the test's folder) that calls `causalgeom.scale.extract`
or `extract_study`; ``python -m torch.distributed.run --standalone --nproc-per-node 2`` starts them. Each
``torchrun`` takes a few seconds (two processes importing torch).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr

import causalgeom as cg
from causalgeom import distributed, train
from causalgeom.cli import main
from causalgeom.errors import ConfigError, IncompleteStoreError

SCRIPT = '''
"""One rank of the torchrun test: a deterministic tiny model and data, this rank's shard of one store."""
import math
import os
import sys
import time

import torch
from torch import nn

import causalgeom as cg
from causalgeom import distributed

N, K, FAIL_AT = 300, 5, 290  # 10 chunks of 32 samples: rank 0 gets chunks 0-4, rank 1 chunks 5-9


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                  nn.Linear(24, 12), nn.ReLU())
        self.head = nn.Linear(12, K)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_((2 * torch.rand(p.shape, generator=g) - 1) / math.sqrt(fan_in))

    def forward(self, x):
        return self.head(self.body(x))


class Items(torch.utils.data.Dataset):
    """Map-style data; with ``fail`` the sample FAIL_AT (in rank 1's last chunk) crashes after a pause."""

    def __init__(self, fail=False):
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.rand(N, 3, 8, 8, generator=g), torch.randint(0, K, (N,), generator=g)
        self.fail = fail

    def __len__(self):
        return N

    def __getitem__(self, i):
        if self.fail and i == FAIL_AT:
            time.sleep(2.0)  # rank 0 has finished its shard by then and waits at the barrier
            raise RuntimeError(f"simulated crash of rank {os.environ.get('RANK')} at sample {i}")
        return self.x[i], int(self.y[i])


KWARGS = dict(attacks=[cg.attacks.PGD("linf", steps=2, random_start=True)], eps=[1 / 255, 4 / 255], batch_size=16,
              sample_chunk=32, generator=5, progress=False, attrs={"run_id": "r", "regularizer": "ce"})

if __name__ == "__main__":
    fail = os.environ.get("FAIL_RANK") == os.environ.get("RANK")
    path = distributed.extract(Net(), Items(fail), sys.argv[1], device="auto", **KWARGS)
    print(f"rank {os.environ.get('RANK')} done: {path}", flush=True)
'''

STUDY_SCRIPT = '''
import sys

from causalgeom import distributed

if __name__ == "__main__":
    distributed.extract_study(sys.argv[1], sys.argv[2], attacks="pgd:linf:eps=1/255,4/255:steps=2", batch_size=32,
                              sample_chunk=64, generator=3, progress=False)
'''


def loaded(path) -> xr.Dataset:
    ds = cg.open(path).load()
    ds.attrs.pop("created", None)
    return ds


def torchrun(tmp_path: Path, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    full_env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    full_env.update(OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(cmd, cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "rank.py"
    path.write_text(SCRIPT)
    spec = importlib.util.spec_from_file_location("cg_torchrun_rank", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


@pytest.mark.slow
def test_two_rank_torchrun_equals_single_process(tmp_path, script):
    path, rank = script
    single = cg.extract(rank.Net(), rank.Items(), tmp_path / "single.zarr", **rank.KWARGS)
    proc = torchrun(tmp_path, str(path), str(tmp_path / "dist.zarr"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank 0 done" in proc.stdout and "rank 1 done" in proc.stdout
    xr.testing.assert_identical(loaded(single), loaded(tmp_path / "dist.zarr"))


@pytest.mark.slow
def test_failed_rank_leaves_store_incomplete_and_is_redone_alone(tmp_path, script):
    path, rank = script
    target = tmp_path / "dist.zarr"
    proc = torchrun(tmp_path, str(path), str(target), env={"FAIL_RANK": "1"})
    assert proc.returncode != 0
    assert "simulated crash of rank 1" in proc.stdout + proc.stderr
    with pytest.raises(IncompleteStoreError):  # not marked complete: rank 1's shard is unfinished
        cg.open(target)
    done = {int(p.name[6:-5]) for p in (target / ".progress").glob("chunk-*.done")}
    assert set(range(5)) <= done and 9 not in done  # rank 0's shard is complete, rank 1's is not
    # redo rank 1 alone (no torchrun: RANK/WORLD_SIZE by hand); rank 0's chunks are not touched
    env = {k: v for k, v in os.environ.items() if k != "MASTER_ADDR"}
    redo = subprocess.run([sys.executable, str(path), str(target)], cwd=tmp_path, capture_output=True, text=True,
                          env={**env, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "OMP_NUM_THREADS": "1"},
                          timeout=120)
    assert redo.returncode == 0, redo.stdout + redo.stderr
    single = cg.extract(rank.Net(), rank.Items(), tmp_path / "single.zarr", **rank.KWARGS)
    xr.testing.assert_identical(loaded(single), loaded(target))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny digits runs (real checkpoints)."""
    out = tmp_path_factory.mktemp("train")
    grid = train.GridConfig.from_dict({"seeds": [0], "train": dict(epochs=1, batch_size=32, max_train_samples=64,
                                                                   num_threads=1),
                                       "regularizers": [{"name": "ce"}, {"name": "label_smoothing",
                                                                         "strengths": [0.1]}]})
    train.run_grid(grid, out, progress=False, scheduler=False)
    return out


@pytest.mark.slow
def test_torchrun_study_of_trained_runs_equals_single_process(tmp_path, trained):
    script = tmp_path / "study.py"
    script.write_text(STUDY_SCRIPT)
    proc = torchrun(tmp_path, str(script), str(trained), str(tmp_path / "dist"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cg.extraction.extract_runs(trained, tmp_path / "single", attacks="pgd:linf:eps=1/255,4/255:steps=2",
                               batch_size=32, sample_chunk=64, generator=3, progress=False)
    dist, single = cg.open_study(tmp_path / "dist"), cg.open_study(tmp_path / "single")
    assert dist.run_ids == single.run_ids == ["ce-s0", "label_smoothing0.1-s0"] and not dist.incomplete
    for run_id in dist.run_ids:
        xr.testing.assert_identical(loaded(dist.run_path(run_id)), loaded(single.run_path(run_id)))


@pytest.mark.slow
def test_cli_extract_distributed_under_torchrun(tmp_path, trained):
    proc = torchrun(tmp_path, "-m", "causalgeom", "extract", str(trained), "--out", str(tmp_path / "dist"),
                    "--distributed", "--attack", "fgsm:linf:eps=1/255", "--no-progress", "--seed", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert main(["extract", str(trained), "--out", str(tmp_path / "single"), "--attack", "fgsm:linf:eps=1/255",
                 "--no-progress", "--seed", "1"]) == 0
    for run_id in ("ce-s0", "label_smoothing0.1-s0"):
        xr.testing.assert_identical(loaded(tmp_path / "dist" / f"{run_id}.zarr"),
                                    loaded(tmp_path / "single" / f"{run_id}.zarr"))


@pytest.mark.slow
def test_rank_environment(monkeypatch):
    assert distributed.torchrun_env({}) == distributed.RankInfo(0, 1, 0, False)
    info = distributed.torchrun_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h"})
    assert info == distributed.RankInfo(3, 4, 1, True)
    assert distributed.rank_device("cpu", info) == "cpu"
    assert distributed.rank_device("auto", info) == "cpu"  # no CUDA here
    with pytest.raises(ConfigError, match="0 <= RANK < WORLD_SIZE"):
        distributed.torchrun_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="expected integers"):
        distributed.torchrun_env({"RANK": "a"})
    with pytest.raises(ConfigError, match="do not pass shard"):
        distributed.extract(None, None, "x.zarr", shard=(0, 2))


@pytest.mark.slow
def test_cli_distributed_flag_checks(monkeypatch, trained, tmp_path, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert main(["extract", str(trained), "--distributed", "--shard", "0/2", "--no-progress"]) == 2
    assert "do not also pass --shard" in capsys.readouterr().err
    assert main(["extract", str(trained), "--distributed", "--overwrite", "--no-progress"]) == 2
    assert "--overwrite cannot be combined" in capsys.readouterr().err
    # rank 1 of 2 alone: a one-chunk store has nothing in rank 1's share, so the store is created but not complete
    assert main(["extract", str(trained / "runs" / "ce-s0"), "--out", str(tmp_path / "r.zarr"), "--distributed",
                 "--no-attack", "--no-progress"]) == 0
    assert json.loads((tmp_path / "r.zarr" / ".progress" / "plan.json").read_text())["n_samples"] == 450
    with pytest.raises(IncompleteStoreError):
        cg.open(tmp_path / "r.zarr")
