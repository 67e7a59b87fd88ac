"""Crash safety and concurrency of training and extraction (issue 10).

* A training run and an extraction, each killed with SIGKILL at a random point (seeded delays after a progress
  marker appears), then resumed, give exactly the result of an uninterrupted run: every state-dict tensor
  ``torch.equal``, the store ``xr.testing.assert_identical``.
* Two processes extracting the same run, or training the same run folder, at once: one of them gets
  ``StoreLockedError`` and the result is never interleaved.

The children are ``python -c`` processes importing this module (repository root on ``PYTHONPATH``); models and
data are tiny and built from explicit seeds, so the parent rebuilds the same ones.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import causalgeom as cg
from causalgeom import train
from causalgeom.pipeline.attacks import PGD
from causalgeom.errors import IncompleteStoreError, StoreLockedError
from causalgeom.pipeline.extract import PROGRESS_DIR

from tests._helpers import REPO_ROOT

ROOT = REPO_ROOT
RELEASE_TIMEOUT = 120  # seconds a blocked child waits for the parent at most

# ------------------------------------------------------------------------------------------------ shared setup
#: A tiny run that still exercises every piece of resumable state: the data-order / Mixup generator, dropout (the
#: global RNG state), momentum (the optimizer state) and the cosine schedule.
TRAIN = dict(regularizer="label_smoothing+mixup", label_smoothing=0.1, mixup_alpha=0.4, dropout=0.2, epochs=30,
             max_train_samples=64, batch_size=16, num_threads=1, seed=3, device="cpu")


class Net(nn.Module):
    """Pixel-space model ending in an nn.Linear head, initialized from an explicit generator."""

    def __init__(self, k: int = 5, seed: int = 0):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                  nn.Linear(24, 12), nn.ReLU())
        self.head = nn.Linear(12, k)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_((2 * torch.rand(p.shape, generator=g) - 1) / math.sqrt(fan_in))

    def forward(self, x):
        return self.head(self.body((x - 0.5) / 0.25))


class Items(torch.utils.data.Dataset):
    """Synthetic images; with ``hold_at``, item ``hold_at`` waits until the file ``release`` exists (after
    creating ``holding``), so a test can act while the extraction provably holds its lock mid-way."""

    def __init__(self, n: int = 800, seed: int = 0, hold_at: int | None = None, holding: str = "",
                 release: str = ""):
        g = torch.Generator().manual_seed(seed)
        self.x, self.y = torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)
        self.hold_at, self.holding, self.release = hold_at, holding, release

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        if self.hold_at is not None and i == self.hold_at:
            _hold(self.holding, self.release)
        return self.x[i], int(self.y[i])


def _hold(holding: str, release: str) -> None:
    Path(holding).touch()
    deadline = time.monotonic() + RELEASE_TIMEOUT
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.02)


N_CHUNKS = 40  # 800 samples in chunks of 20
EXTRACT = dict(attacks=[PGD("linf", steps=5, random_start=True)], eps=[2 / 255, 8 / 255], batch_size=20,
               sample_chunk=20, generator=7, progress=False, attrs={"run_id": "r", "regularizer": "ce"})


def extract_run(out, **data_kw):
    """The extraction every test runs (in this process or in a child)."""
    return cg.extract(Net(), Items(**data_kw), out, **EXTRACT)


def train_run_blocking(out, holding, release):
    """train_run with its second calibration pass held until ``release`` exists (the run lock is held then)."""
    from causalgeom.pipeline.train import loop  # train_run looks `evaluate` up in its own module

    evaluate = loop.evaluate
    calls = []

    def held(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            _hold(holding, release)
        return evaluate(*args, **kwargs)

    loop.evaluate = held
    return train.train_run(train.TrainConfig(**TRAIN), out, progress=False)


# ------------------------------------------------------------------------------------------------ helpers
def _child(code: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    prologue = "import sys, torch\ntorch.set_num_threads(1)\nfrom tests.pipeline.test_crash_resume import *\n"
    return subprocess.Popen([sys.executable, "-c", prologue + textwrap.dedent(code)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> bool:
    """Wait until ``condition()``; False if ``proc`` exited first (it may simply have finished)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            return bool(condition())
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return True


def _random_kill_point(count, total: int, proc: subprocess.Popen, rng: np.random.Generator, what: str) -> None:
    """Wait until ``count()`` (finished units of work: epochs, chunks) reaches 1, time the next few units, then
    sleep a random share (seeded) of the estimated remaining time; returns early if ``proc`` exits."""
    if not _wait_for(lambda: count() >= 1, proc, f"the first {what}"):
        return
    t1 = time.perf_counter()
    probe = min(4, total - 1)
    if not _wait_for(lambda: count() >= 1 + probe, proc, f"{what} {1 + probe}"):
        return
    per_unit = (time.perf_counter() - t1) / probe
    time.sleep(float(rng.uniform(0.0, 0.8)) * per_unit * max(total - 1 - probe, 0))


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)


def _state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / train.CHECKPOINT, map_location="cpu", weights_only=True)["model"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), f"state-dict tensor {k!r} differs"


def _loaded(path) -> xr.Dataset:
    ds = cg.open(path, verify=True).load()
    ds.attrs.pop("created", None)  # creation time: the only attribute allowed to differ
    return ds


@pytest.fixture(scope="module")
def reference_training(tmp_path_factory):
    """The weights of an uninterrupted run (trained in this process)."""
    run_dir = train.train_run(train.TrainConfig(**TRAIN), tmp_path_factory.mktemp("ref_train"), progress=False)
    return _state(run_dir)


@pytest.fixture(scope="module")
def reference_extraction(tmp_path_factory):
    """The store of an uninterrupted extraction (in this process)."""
    return _loaded(extract_run(tmp_path_factory.mktemp("ref_extract") / "r.zarr"))


# ------------------------------------------------------------------------------------------------ SIGKILL + resume
@pytest.mark.slow
def test_sigkilled_training_resumes_to_identical_weights(tmp_path, reference_training):
    reference = reference_training
    rng = np.random.default_rng(2024)  # seeded kill points
    interrupted = 0
    for trial in range(2):
        out = tmp_path / f"trial{trial}"
        run_dir = out / "runs" / train.TrainConfig(**TRAIN).validate(check_data=False).run_id
        proc = _child(f"train.train_run(train.TrainConfig(**TRAIN), {str(out)!r}, progress=False)")

        def epochs_done() -> int:  # curves.csv is rewritten atomically after each epoch's checkpoint
            try:
                return len((run_dir / train.CURVES).read_text().splitlines()) - 1
            except FileNotFoundError:
                return 0

        try:
            _random_kill_point(epochs_done, TRAIN["epochs"], proc, rng, "epoch")
        finally:
            _kill(proc)
        assert proc.returncode in (-signal.SIGKILL, 0), proc.stderr.read()[-2000:]
        print(f"training trial {trial}: killed after {epochs_done()} of {TRAIN['epochs']} epochs")
        if proc.returncode == -signal.SIGKILL and not (run_dir / train.DONE).exists():
            interrupted += 1
            assert train.run_status(run_dir) in ("new", "partial")
        resumed = train.train_run(train.TrainConfig(**TRAIN), out, progress=False)  # finished: a no-op
        assert train.run_status(resumed) == "done"
        assert len((resumed / train.CURVES).read_text().splitlines()) == 1 + TRAIN["epochs"]
        assert not list(resumed.glob(".*.tmp*")), "a temporary file of the killed save was left behind"
        _assert_same_weights(_state(resumed), reference)
        model, _ = train.load_checkpoint(resumed)  # and it loads as a model
        _assert_same_weights(model.state_dict(), reference)
    assert interrupted >= 1, "no kill landed mid-training; the test did not test resuming"


@pytest.mark.slow
def test_sigkilled_extraction_resumes_to_identical_store(tmp_path, reference_extraction):
    reference = reference_extraction
    rng = np.random.default_rng(7)  # seeded kill points
    interrupted = 0
    for trial in range(2):
        out = tmp_path / f"trial{trial}" / "r.zarr"
        proc = _child(f"extract_run({str(out)!r})")
        progress = out / PROGRESS_DIR
        try:
            _random_kill_point(lambda: len(list(progress.glob("chunk-*"))) if progress.exists() else 0, N_CHUNKS,
                               proc, rng, "chunk")
        finally:
            _kill(proc)
        assert proc.returncode in (-signal.SIGKILL, 0), proc.stderr.read()[-2000:]
        print(f"extraction trial {trial}: killed after {len(list(progress.glob('chunk-*')))} of {N_CHUNKS} chunks"
              if progress.exists() else f"extraction trial {trial}: finished before the kill")
        if proc.returncode == -signal.SIGKILL and not cg.store.is_complete(out):
            interrupted += 1
            with pytest.raises(IncompleteStoreError):
                cg.open(out)
            # resuming recomputes only the chunks without a marker (chunks finish in order)
            done = sorted(int(p.name[6:-5]) for p in progress.glob("chunk-*"))
            assert done == list(range(len(done)))
            seen: list[int] = []

            class Counting(Items):
                def __getitem__(self, i):
                    seen.append(int(i))
                    return super().__getitem__(i)

            cg.extract(Net(), Counting(), out, **EXTRACT)
            assert sorted(set(seen)) == list(range(20 * len(done), 20 * N_CHUNKS))
        if not cg.store.is_complete(out):
            extract_run(out)
        else:  # finished before the kill: a second call is refused, the store stays as it is
            with pytest.raises(cg.StoreExistsError):
                extract_run(out)
        xr.testing.assert_identical(_loaded(out), reference)
        assert not (out / PROGRESS_DIR).exists()
    assert interrupted >= 1, "no kill landed mid-extraction; the test did not test resuming"


# ------------------------------------------------------------------------------------------------ concurrency
@pytest.mark.slow
def test_second_extraction_of_a_running_store_gets_lock_error(tmp_path, reference_extraction):
    reference = reference_extraction
    out, holding, release = tmp_path / "r.zarr", tmp_path / "holding", tmp_path / "release"
    first = _child(f"extract_run({str(out)!r}, hold_at=250, holding={str(holding)!r}, release={str(release)!r})")
    try:
        assert _wait_for(holding.exists, first, "the first extraction to hold mid-way"), first.stderr.read()[-2000:]
        # a second process, same run: refused at once, writes nothing
        second = _child(f"""
            try:
                extract_run({str(out)!r})
            except cg.StoreLockedError as exc:
                print(exc)
                sys.exit(3)
        """)
        assert second.wait(120) == 3, second.stderr.read()[-2000:]
        message = second.stdout.read()
        assert "being written by another process" in message and str(out) in message
        with pytest.raises(StoreLockedError):  # and in this process too
            extract_run(out)
        chunks = sorted(p.name for p in (out / PROGRESS_DIR).glob("chunk-*"))
        assert chunks == [f"chunk-{c:08d}.done" for c in range(len(chunks))] and len(chunks) < N_CHUNKS
    finally:
        release.touch()
    assert first.wait(120) == 0, first.stderr.read()[-2000:]
    xr.testing.assert_identical(_loaded(out), reference)


@pytest.mark.slow
def test_racing_extractions_never_interleave(tmp_path, reference_extraction):
    reference = reference_extraction
    out = tmp_path / "r.zarr"
    code = f"""
        try:
            extract_run({str(out)!r})
        except cg.StoreLockedError:
            sys.exit(3)
        except cg.StoreExistsError:
            sys.exit(4)
    """
    procs = [_child(code) for _ in range(2)]
    codes = sorted(p.wait(180) for p in procs)
    assert codes[0] == 0 and codes[1] in (3, 4), [p.stderr.read()[-2000:] for p in procs]
    xr.testing.assert_identical(_loaded(out), reference)


@pytest.mark.slow
def test_second_training_of_a_running_run_gets_lock_error(tmp_path, reference_training):
    reference = reference_training
    out, holding, release = tmp_path / "out", tmp_path / "holding", tmp_path / "release"
    first = _child(f"train_run_blocking({str(out)!r}, {str(holding)!r}, {str(release)!r})")
    run_dir = out / "runs" / train.TrainConfig(**TRAIN).validate(check_data=False).run_id
    try:
        assert _wait_for(holding.exists, first, "the first training to hold mid-way"), first.stderr.read()[-2000:]
        before = (run_dir / train.CHECKPOINT).read_bytes()
        with pytest.raises(StoreLockedError, match="being trained by another process"):
            train.train_run(train.TrainConfig(**TRAIN), out, progress=False)
        # the grid runner skips a run another process is training (and says so) instead of failing
        grid = train.GridConfig.from_dict({"regularizers": [{"name": "label_smoothing+mixup", "strengths": [0.1],
                                                             "mixup_alpha": 0.4}], "seeds": [3],
                                           "train": {k: v for k, v in TRAIN.items()
                                                     if k not in ("regularizer", "label_smoothing", "mixup_alpha",
                                                                  "seed")}})
        assert [p.name for p in train.run_grid(grid, out, progress=False)] == [run_dir.name]
        assert (run_dir / train.CHECKPOINT).read_bytes() == before  # nothing written by the refused writers
        assert train.run_status(run_dir) == "partial"
    finally:
        release.touch()
    assert first.wait(180) == 0, first.stderr.read()[-2000:]
    assert train.run_status(run_dir) == "done"
    _assert_same_weights(_state(run_dir), reference)
