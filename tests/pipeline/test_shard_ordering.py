"""Sharded extraction without races: every ordering of ranks ends cleanly, forced deterministically.

A torchrun job runs ``cg.extract(..., shard=(rank, world))`` once per rank, concurrently. The interleavings
that matter are forced here in one process, never by timing: whole calls in a chosen order (ranks with no
chunk, ranks that finish first, late ranks called again after the store is complete), and calls of one rank
run *inside* another rank's call at the moment the race would hit (wrapping the module's ``_prepare_store``
or ``_finalize``), e.g. the CI flake of issue 22: a rank with no chunk passes its first check, another rank
completes the store, and the first rank then prepares the store and met "already exists and is complete".
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import xarray as xr
from torch import nn

import causalgeom as cg
from causalgeom.errors import IncompleteStoreError, StoreExistsError
from causalgeom.pipeline import extract as ex


class Net(nn.Module):
    def __init__(self, k: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU())
        self.head = nn.Linear(6, k)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_((2 * torch.rand(p.shape, generator=g) - 1) / math.sqrt(fan_in))

    def forward(self, x):
        return self.head(self.body(x))


def data(n: int):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 2, 2, generator=g), torch.randint(0, 4, (n,), generator=g)


KW = dict(attacks=[cg.attacks.FGSM()], eps=[1 / 255], batch_size=8, sample_chunk=10, progress=False,
          attrs={"run_id": "r"})


def loaded(path) -> xr.Dataset:
    ds = cg.open(path).load()  # cg.open verifies the manifest (checksums) of a small store
    ds.attrs.pop("created", None)
    return ds


def run(target, n, rank, world):
    return cg.extract(Net(), data(n), target, shard=(rank, world), **KW)


@pytest.fixture(scope="module")
def singles(tmp_path_factory):
    base = tmp_path_factory.mktemp("single")
    return {n: loaded(cg.extract(Net(), data(n), base / f"single{n}.zarr", **KW)) for n in (10, 20, 30)}


# n samples in chunks of 10 over `world` ranks: (10, 3) one chunk for three ranks, (20, 3) two chunks,
# (30, 2) three chunks for two ranks (rank 0 gets two).
@pytest.mark.slow
@pytest.mark.parametrize("n,world", [(10, 3), (20, 3), (30, 2)])
def test_every_order_of_whole_calls_ends_clean(tmp_path, singles, n, world):
    for i, order in enumerate(itertools.permutations(range(world))):
        target = tmp_path / f"o{i}.zarr"
        for j, rank in enumerate(order):
            assert run(target, n, rank, world) == target
            owners = [r for r in order[:j + 1]]
            has_all = all(r in owners for r in range(min(world, n // 10)))
            assert cg.store.is_complete(target) == has_all, (order, rank)
        xr.testing.assert_identical(singles[n], loaded(target))
        # late ranks: every rank called again after completion returns the store, which is unchanged
        before = (target / "zarr.json").read_bytes()
        for rank in order:
            assert run(target, n, rank, world) == target
        assert (target / "zarr.json").read_bytes() == before
        assert cg.store.check_store(target) is True


def test_rank_with_no_chunk_meets_the_store_completed_before_it_prepares(tmp_path, singles, monkeypatch):
    """The CI flake: rank 1 of 2 (one chunk, none for rank 1) finds no store, then rank 0 creates and completes
    it, then rank 1 calls prepare."""
    target = tmp_path / "r.zarr"
    original = ex._prepare_store
    calls = []

    def prepare(path, plan, build, mode, shard=None):
        calls.append(shard)
        if shard == (1, 2) and calls.count((1, 2)) == 1:
            assert not path.exists()  # rank 1 got here before the store existed
            assert run(target, 10, 0, 2) == target  # rank 0 runs in full now
            assert cg.store.is_complete(target)
        return original(path, plan, build, mode, shard)

    monkeypatch.setattr(ex, "_prepare_store", prepare)
    assert run(target, 10, 1, 2) == target
    assert calls == [(1, 2), (0, 2)]
    monkeypatch.undo()
    xr.testing.assert_identical(singles[10], loaded(target))


def test_rank_resuming_an_existing_store_meets_it_completed(tmp_path, singles, monkeypatch):
    """Rank 2 of 3 (no chunk) finds the store created by rank 1 (unfinished), then rank 0 completes it before
    rank 2 takes the meta lock."""
    target = tmp_path / "r.zarr"
    run(target, 20, 1, 3)
    with pytest.raises(IncompleteStoreError):
        cg.open(target)
    original = ex._prepare_store
    fired = []

    def prepare(path, plan, build, mode, shard=None):
        if shard == (2, 3) and not fired:
            fired.append(True)
            assert path.exists() and not cg.store.is_complete(path)
            run(target, 20, 0, 3)
            assert cg.store.is_complete(target)
        return original(path, plan, build, mode, shard)

    monkeypatch.setattr(ex, "_prepare_store", prepare)
    assert run(target, 20, 2, 3) == target
    assert fired
    monkeypatch.undo()
    xr.testing.assert_identical(singles[20], loaded(target))


def test_rank_with_chunks_whose_writer_meets_the_store_completed(tmp_path, singles, monkeypatch):
    """A rank's writer thread prepares the store after its first batch; by then the whole store was written and
    completed by another process with the same plan (here a single-process extraction, e.g. a redo): the rank
    stops without writing into the complete store."""
    target = tmp_path / "r.zarr"
    original = ex._prepare_store
    fired = []

    def prepare(path, plan, build, mode, shard=None):
        if shard == (0, 2) and not fired:
            fired.append(True)
            cg.extract(Net(), data(20), target, **KW)
            assert cg.store.is_complete(target)
        return original(path, plan, build, mode, shard)

    monkeypatch.setattr(ex, "_prepare_store", prepare)
    assert run(target, 20, 0, 2) == target
    assert fired
    monkeypatch.undo()
    assert cg.store.check_store(target) is True
    xr.testing.assert_identical(singles[20], loaded(target))


def test_rank_finishing_first_meets_the_store_completed_before_it_finalizes(tmp_path, singles, monkeypatch):
    """Rank 0 writes its chunks; before its finalization the other rank runs in full and completes the store."""
    target = tmp_path / "r.zarr"
    original = ex._finalize
    fired = []

    def finalize(path, n_chunks, info):
        if not fired:
            fired.append(True)
            assert run(target, 30, 1, 2) == target  # rank 1 finds rank 0's markers and completes the store
            assert cg.store.is_complete(target)
        return original(path, n_chunks, info)

    monkeypatch.setattr(ex, "_finalize", finalize)
    assert run(target, 30, 0, 2) == target
    assert fired
    monkeypatch.undo()
    xr.testing.assert_identical(singles[30], loaded(target))


def test_complete_store_of_another_plan_is_refused(tmp_path):
    target = tmp_path / "r.zarr"
    cg.extract(Net(), data(20), target, **KW)
    with pytest.raises(StoreExistsError, match="different settings"):
        cg.extract(Net(), data(20), target, shard=(1, 2), **{**KW, "eps": [2 / 255]})
    with pytest.raises(StoreExistsError, match="already exists and is complete"):  # no shard: never reused
        cg.extract(Net(), data(20), target, **KW)
    # the same plan under a shard is this extraction's store: done
    assert cg.extract(Net(), data(20), target, shard=(1, 2), **KW) == target
