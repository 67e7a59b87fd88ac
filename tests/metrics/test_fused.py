"""The fused pass of the analysis table (issue 18): one read of each run's features and logits, same numbers.

References: cosines against scikit-learn's ``cosine_similarity``, NLL against scipy's ``log_softmax``, the
Brier score and the logit margin in closed form, ECE against `calibration.ece` (itself checked against
torchmetrics in tests/metrics/test_calibration.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import causalgeom as cg
from causalgeom import calibration, geometry
from causalgeom.metrics.kernels import FUSED_FIELDS, fused_block
from causalgeom.metrics.table import fused_run

from .._reads import ReadCounter
from causalgeom.testing import make_run


def test_fused_block_matches_outside_references():
    from scipy.special import log_softmax, softmax
    from sklearn.metrics.pairwise import cosine_similarity

    rng = np.random.default_rng(0)
    n, d, K = 200, 12, 6
    f = rng.normal(size=(n, d)).astype(np.float32)
    f[3] = 0.0  # zero feature: cosines NaN
    z = rng.normal(size=(n, K)) * 3
    y = rng.integers(0, K, n)
    C = rng.normal(size=(K, d))
    out = fused_block(f, z, y, C)
    col = {k: out[:, i] for i, k in enumerate(FUSED_FIELDS)}
    rows = np.arange(n)
    pred = z.argmax(1)
    ref_cos = cosine_similarity(f.astype(np.float64), C)
    ok = rows != 3
    # different summation orders of the same float64 dot products: 1e-12 relative
    np.testing.assert_allclose(col["cos_true"][ok], ref_cos[ok, y[ok]], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(col["cos_pred"][ok], ref_cos[ok, pred[ok]], rtol=1e-12, atol=1e-14)
    assert np.isnan(col["cos_true"][3]) and np.isnan(col["cos_pred"][3])
    np.testing.assert_allclose(col["norm"], np.linalg.norm(f.astype(np.float64), axis=1), rtol=1e-12)
    p = softmax(z, axis=1)
    np.testing.assert_allclose(col["nll"], -log_softmax(z, axis=1)[rows, y], rtol=1e-12)
    np.testing.assert_allclose(col["confidence"], p.max(1), rtol=1e-12)
    onehot = np.eye(K)[y]
    np.testing.assert_allclose(col["brier"], ((p - onehot) ** 2).sum(1), rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(col["correct"], (pred == y).astype(float))
    np.testing.assert_array_equal(col["pred"], pred)
    other = np.where(onehot.astype(bool), -np.inf, z).max(1)
    np.testing.assert_array_equal(col["margin"], z[rows, y] - other)  # same subtraction: exact
    assert np.all((col["margin"] > 0) == (pred == y))


@pytest.fixture(scope="module")
def five_chunk_study(tmp_path_factory):
    """Two runs, each variable stored in 5 chunks (the read counts below depend on it)."""
    st = cg.open_study(tmp_path_factory.mktemp("fused") / "study", create=True)
    for i in range(2):
        ds = make_run(n=300, d=8, k=4, seed=i, run_id=f"r{i}", regularizer="ce", strength=0.0)
        cg.save(ds, st.run_path(f"r{i}"), sample_chunk=64)  # 5 chunks per variable
    return st


@pytest.mark.parametrize("level", ["sample", "run"])
def test_to_frame_reads_each_chunk_of_features_and_logits_once(five_chunk_study, monkeypatch, level):
    # the first open of a small store verifies its checksums (reads files); not counted
    for rid in five_chunk_study.run_ids:
        five_chunk_study[rid]
    reads = ReadCounter(monkeypatch)
    frame = five_chunk_study.to_frame(level=level, progress=False)
    assert len(frame) == (600 if level == "sample" else 2)
    for var in ("features", "logits"):
        got = reads.chunks(var)
        # 2 runs x ceil(300 / 64) = 5 sample chunks, each read exactly once
        assert len(got) == 10, sorted(got)
        assert set(got.values()) == {1}, got
    assert reads.direct == 2 * 5 * 3  # default codec (none): features, logits, label read from their files


def test_compressed_store_reads_each_chunk_once_through_zarr(tmp_path, monkeypatch):
    ds = make_run(n=300, d=8, k=4, seed=3, run_id="z", regularizer="ce", strength=0.0)
    cg.save(ds, tmp_path / "z.zarr", sample_chunk=64, compressor="zstd")
    run = cg.open(tmp_path / "z.zarr")
    reads = ReadCounter(monkeypatch)
    fused_run(run)
    assert reads.direct == 0  # not the direct reader's kind: Zarr decodes
    for var in ("features", "logits"):
        got = reads.chunks(var)
        assert len(got) == 5 and set(got.values()) == {1}, got


def test_mean_centers_take_one_more_pass(five_chunk_study, monkeypatch):
    for rid in five_chunk_study.run_ids:
        five_chunk_study[rid]
    reads = ReadCounter(monkeypatch)
    five_chunk_study.to_frame(level="sample", progress=False, center="mean")
    got = reads.chunks("features")
    assert len(got) == 10 and set(got.values()) == {2}  # class means first, then the fused pass
    assert reads.direct == 2 * 5 * (2 + 1 + 2)  # both passes read the files directly (features, logits, label)
    assert set(reads.chunks("logits").values()) == {1}


def test_fused_run_equals_metric_functions_and_run_level_ece(five_chunk_study):
    ds = five_chunk_study["r1"]
    cols = fused_run(ds)
    mag, cos = geometry.magnitude(ds).compute(), geometry.cosine_to_center(ds).compute()
    cal = calibration.per_sample(ds).compute()
    # the same formulas on the same blocks; only summation order may differ: rtol 1e-12
    for a, b in ((cols["norm"], mag.norm), (cols["rms"], mag.rms), (cols["cos_true"], cos.cos_true),
                 (cols["cos_pred"], cos.cos_pred), (cols["confidence"], cal.confidence), (cols["nll"], cal.nll),
                 (cols["brier"], cal.brier)):
        np.testing.assert_allclose(a, b.values, rtol=1e-12)
    runs = five_chunk_study.to_frame(level="run", progress=False)
    row = runs[runs.run_id == "r1"].iloc[0]
    # bin sums over all samples at once vs per chunk: 1e-12
    assert row.ece == pytest.approx(float(calibration.ece(ds)), rel=1e-12, abs=1e-15)
    assert row.signed_ece == pytest.approx(float(calibration.signed_ece(ds)), rel=1e-12, abs=1e-15)


def test_fused_run_in_memory_equals_dask(five_chunk_study):
    ds = five_chunk_study["r0"]
    lazy = fused_run(ds)
    mem = fused_run(ds.load())
    for k in lazy:
        np.testing.assert_allclose(mem[k], lazy[k], rtol=1e-12)  # same blocks or one block: summation order


def test_fused_run_errors(five_chunk_study):
    ds = five_chunk_study["r0"]
    with pytest.raises(cg.ConfigError, match="kind"):
        fused_run(ds, center="median")
    headless = ds.drop_vars([v for v in ("head_weight", "head_bias") if v in ds.variables])
    with pytest.warns(UserWarning, match="no head_weight.*center='mean'"):
        cols = fused_run(headless)
    np.testing.assert_array_equal(cols["cos_true"], fused_run(headless, center="mean")["cos_true"])  # same pass
    assert np.isfinite(cols["cos_true"]).all() and np.isfinite(cols["nll"]).all()


# unit roundoff of round-to-nearest storage: float16 has 11 significant bits, bfloat16 8 (docs/methods_metrics.md)
HALF_UNIT_ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
#: float16 rounds numbers below its smallest normal (2^-14) to multiples of 2^-24: absolute error <= 2^-25
F16_SUBNORMAL_ABS = 2.0 ** -25


def _half_round(x: np.ndarray, dtype: str) -> np.ndarray:
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return t.to(getattr(torch, dtype)).to(torch.float32).numpy()


@pytest.fixture(scope="module")
def real_dump(tmp_path_factory):
    """A dump extracted by `cg.extract` from a ReLU conv net (non-negative, partly zero features)."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 6))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel() if p.dim() > 1 else p.numel()))
    x = torch.rand(256, 3, 8, 8, generator=g)
    y = torch.randint(0, 6, (256,), generator=g)
    ds = torch.utils.data.TensorDataset(x, y)
    path = cg.extract(model, ds, tmp_path_factory.mktemp("half") / "run.zarr", batch_size=64, progress=False,
                      attrs={"run_id": "half", "regularizer": "ce", "seed": 0})
    return cg.open(path).load()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_error_on_rms_and_cosine_within_the_stated_bound(real_dump, dtype):
    ds = real_dump
    f32 = ds["features"].values
    assert (f32 == 0).any() and (f32 >= 0).all()  # real ReLU features, zeros included
    half = ds.copy()
    half["features"] = (("sample", "feature"), _half_round(f32, dtype))
    ref, got = fused_run(ds), fused_run(half)
    u = HALF_UNIT_ROUNDOFF[dtype]
    d = f32.shape[1]
    sub = F16_SUBNORMAL_ABS * math.sqrt(d) if dtype == "float16" else 0.0
    # |rms~ - rms| <= u rms + sqrt(d) eta / sqrt(d)  (triangle inequality on ||delta||)
    rms_err = np.abs(got["rms"] - ref["rms"])
    assert np.all(rms_err <= u * ref["rms"] + sub / math.sqrt(d) + 1e-12)
    # |cos~ - cos| <= angle(h, h~) <= arcsin(eps), eps = ||delta|| / ||h|| <= u + sqrt(d) eta / ||h||
    eps = np.minimum(u + sub / ref["norm"], 1.0)
    for c in ("cos_true", "cos_pred"):
        ok = np.isfinite(ref[c])
        err = np.abs(got[c][ok] - ref[c][ok])
        assert np.all(err <= np.arcsin(eps[ok]) + 1e-12), (dtype, c, err.max())
    # the bound is not vacuous: rounding did move the numbers, by at most the bound and at least a bit
    assert rms_err.max() > 0 and rms_err.max() <= u * ref["rms"].max()
