"""Half-precision features (issue 18): ``extract(features_dtype=...)`` / ``extract --features-dtype``.

What is checked: the stored layout (float16 Zarr array; bfloat16 as uint16 bit patterns with
``encoded_dtype``), the exact float32 decoding by `causalgeom.open` against torch's own
float32 -> half -> float32 round trip (the same computation, so exact equality), the error bound of
docs/methods_metrics.md on rms and cosine on a dump of a model trained on the digits data, the overflow
refusal, the resume plan and the schema's dtype rule.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import causalgeom as cg
from causalgeom.dump.schema import ENCODED_DTYPE_ATTR, STORED_DTYPE_ATTR, UNIT_ROUNDOFF, bfloat16_bits_to_float32
from causalgeom.dump.store import stored_features_dtype
from causalgeom.errors import ConfigError, IncompleteStoreError, SchemaError, StoreExistsError
from causalgeom.pipeline.extract import already_extracted

from .test_extract import Items, Net, fake_training, make_data  # noqa: F401 - fake_training is a fixture

HALF = ("float16", "bfloat16")
#: float16 rounds |h| < 2^-14 (its smallest normal) to multiples of 2^-24: absolute error <= 2^-25
F16_SUBNORMAL_ABS = 2.0 ** -25


def torch_round_trip(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 -> float16/bfloat16 -> float32 through torch (round to nearest even): the reference."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(getattr(torch, dtype)).float().numpy()


def chunk_bytes(path: Path, var: str = "features") -> int:
    return sum(p.stat().st_size for p in (path / var / "c").rglob("*") if p.is_file())


def features_meta(path: Path) -> dict:
    return json.loads((path / "features" / "zarr.json").read_text())


# ------------------------------------------------------------------------------------------ layout and decoding
def test_half_stores_layout_bytes_and_exact_decoding(tmp_path):
    """float16 is a float16 array, bfloat16 uint16 bits + encoded_dtype; half the bytes; open decodes exactly."""
    x, y = make_data(96)
    paths = {dt: cg.extract(Net(), (x, y), tmp_path / f"{dt}.zarr", progress=False, sample_chunk=32,
                            features_dtype=dt) for dt in ("float32", *HALF)}
    ref = cg.open(paths["float32"]).load()
    f32 = ref["features"].values
    assert STORED_DTYPE_ATTR not in ref["features"].attrs
    for dt in HALF:
        meta = features_meta(paths[dt])
        assert meta["data_type"] == {"float16": "float16", "bfloat16": "uint16"}[dt]
        assert meta["attributes"][STORED_DTYPE_ATTR] == dt
        assert (meta["attributes"].get(ENCODED_DTYPE_ATTR) == "bfloat16") == (dt == "bfloat16")
        assert stored_features_dtype(paths[dt]) == dt
        # no compressor: each chunk file is its raw bytes + a 4-byte CRC32C, so half precision is exactly half
        n_chunks = 3
        assert chunk_bytes(paths[dt]) - 4 * n_chunks == (chunk_bytes(paths["float32"]) - 4 * n_chunks) // 2
        ds = cg.open(paths[dt])
        assert ds["features"].dtype == np.float32 and ds["features"].chunks is not None  # lazy, float32
        assert ds["features"].attrs == {STORED_DTYPE_ATTR: dt}
        got = ds["features"].values
        np.testing.assert_array_equal(got, torch_round_trip(f32, dt))  # same computation: exact
        # everything but the features is the float32 run's, bit for bit (same model, batches and threads)
        xr.testing.assert_identical(ds.drop_vars("features").load().drop_attrs(),
                                    ref.drop_vars("features").drop_attrs())
        cg.verify(paths[dt])  # manifest, checksums and values (logit check widened by the rounding bound)
    assert stored_features_dtype(paths["float32"]) == "float32"


def test_bfloat16_bits_decode_like_torch_including_specials():
    """`bfloat16_bits_to_float32` equals torch's bfloat16 -> float32 on every one of the 65,536 bit patterns."""
    bits = np.arange(2 ** 16, dtype=np.uint16)
    want = torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16).float().numpy()
    got = bfloat16_bits_to_float32(bits)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))  # bitwise: NaNs, -0, subnormals
    with pytest.raises(SchemaError, match="uint16"):
        bfloat16_bits_to_float32(bits.astype(np.int32))


# ------------------------------------------------------------------------------------------ the stated error bound
@pytest.fixture(scope="module")
def trained_dumps(tmp_path_factory):
    """One small CNN trained on the digits data, extracted three times (float32, float16, bfloat16), each its own
    study; the bfloat16 one through the CLI."""
    from causalgeom.cli import main
    from causalgeom.pipeline import train
    from causalgeom.pipeline.extract import extract_checkpoint

    root = tmp_path_factory.mktemp("trained")
    run = train.train_run(train.TrainConfig(dataset="digits", model="small_cnn", epochs=3, batch_size=32, lr=0.05,
                                            max_train_samples=64), root / "train", progress=False)
    out = {}
    for dt in ("float32", "float16"):
        out[dt] = extract_checkpoint(run, root / dt, attacks=None, progress=False, features_dtype=dt)
    assert main(["extract", str(run), "--out", str(root / "bfloat16"), "--no-attack", "--features-dtype", "bfloat16",
                 "--no-progress"]) == 0
    out["bfloat16"] = root / "bfloat16" / out["float32"].name  # a study folder each: RUN_ID.zarr
    return out


@pytest.mark.slow  # trains a model (~3 s)
def test_half_precision_error_within_the_stated_bound_on_a_trained_dump(trained_dumps):
    """docs/methods_metrics.md: per sample, |rms~/rms - 1| <= u + eta/rms and |cos~ - cos| <= arcsin(u + sqrt(d)
    eta/||h||) (cosine to the minimal-loss centers), u = 2^-11 (float16) / 2^-8 (bfloat16), eta = 2^-25 (float16
    subnormals) / 0; the decoded features equal torch's round trip of the float32 ones exactly."""
    frames = {dt: cg.open_study(p.parent).to_frame(level="sample", progress=False).sort_values("sample")
              for dt, p in trained_dumps.items()}
    f32 = cg.open(trained_dumps["float32"])["features"].values
    d = f32.shape[1]
    assert (f32 == 0).any() and (f32 > 0).any()  # real ReLU features
    ref = frames["float32"]
    rms, cos = ref["rms"].to_numpy(), ref["cos_true"].to_numpy()
    assert np.isfinite(cos).all() and (rms > 0).all()
    for dt in HALF:
        ds = cg.open(trained_dumps[dt])
        assert ds["features"].attrs[STORED_DTYPE_ATTR] == dt
        np.testing.assert_array_equal(ds["features"].values, torch_round_trip(f32, dt))  # exact (same computation)
        got = frames[dt]
        np.testing.assert_array_equal(got["sample"].to_numpy(), ref["sample"].to_numpy())
        u = UNIT_ROUNDOFF[dt]
        eta = F16_SUBNORMAL_ABS if dt == "float16" else 0.0
        rel = np.abs(got["rms"].to_numpy() / rms - 1)
        # 1e-12: the float64 sums of the two norms round differently (far below the bound, u >= 4.9e-4)
        assert np.all(rel <= u + eta / rms + 1e-12), (dt, rel.max())
        eps = np.minimum(u + math.sqrt(d) * eta / (rms * math.sqrt(d)), 1.0)  # ||h|| = rms sqrt(d)
        for col in ("cos_true", "cos_pred"):
            err = np.abs(got[col].to_numpy() - ref[col].to_numpy())
            assert np.all(err <= np.arcsin(eps) + 1e-12), (dt, col, err.max())
        assert 0 < rel.max()  # the rounding moved the numbers: the check is not vacuous
        # calibration columns come from the logits, which stay float32 (the same forward computation: exact)
        np.testing.assert_array_equal(got["confidence"].to_numpy(), ref["confidence"].to_numpy())


# ------------------------------------------------------------------------------------------ overflow, resume, skip
class Big(nn.Module):
    """Features scaled by ``scale`` from sample ``from_sample`` on (float16 overflows above 65504)."""

    def __init__(self, scale: float, from_sample: int = 0):
        super().__init__()
        self.net, self.scale, self.from_sample, self.seen = Net(), scale, from_sample, 0
        self.head = self.net.head

    def forward(self, x):
        h = self.net.body((x - 0.5) / 0.25)
        n = x.shape[0]
        idx = torch.arange(self.seen, self.seen + n)
        self.seen += n
        h = torch.where((idx >= self.from_sample)[:, None], h * self.scale + self.scale, h)
        return self.head(h)


def test_float16_overflow_is_refused_naming_run_and_option(tmp_path):
    x, y = make_data(96)
    # first batch overflows: nothing is created
    with pytest.raises(ConfigError, match=r"features_dtype='float16': run 'big'.*sample 0.*65504"):
        cg.extract(Big(1e5), (x, y), tmp_path / "big.zarr", progress=False, features_dtype="float16", batch_size=32)
    assert not (tmp_path / "big.zarr").exists()
    # overflow in the third chunk: the first two chunks are kept (resumable), the store is not complete
    out = tmp_path / "late.zarr"
    with pytest.raises(ConfigError, match=r"run 'late'.*first at sample 64"):
        cg.extract(Big(1e5, from_sample=64), (x, y), out, progress=False, features_dtype="float16", batch_size=32,
                   sample_chunk=32)
    with pytest.raises(IncompleteStoreError):
        cg.open(out)
    # bfloat16 has float32's range: the same model extracts, restarting the unfinished store
    cg.extract(Big(1e5, from_sample=64), (x, y), out, progress=False, features_dtype="bfloat16", batch_size=32,
               sample_chunk=32, mode="w")
    f = cg.open(out)["features"].values
    assert np.isfinite(f).all() and np.abs(f).max() > 65504


def test_nonfinite_features_are_caught_in_bfloat16_bits(tmp_path):
    """NaN/Inf produced by the model is reported by the writer's finite check also on bfloat16 bit patterns."""
    x, y = make_data(64)
    with pytest.raises(SchemaError, match="NaN/Inf"):
        cg.extract(Big(float("nan"), from_sample=40), (x, y), tmp_path / "nan.zarr", progress=False,
                   features_dtype="bfloat16", batch_size=32, sample_chunk=64)


def test_features_dtype_is_part_of_the_resume_plan(tmp_path):
    x, y = make_data(96)
    out = tmp_path / "r.zarr"
    with pytest.raises(RuntimeError, match="simulated crash"):
        cg.extract(Net(), Items(x, y, fail_at=70), out, progress=False, batch_size=32, sample_chunk=32)
    with pytest.raises(StoreExistsError, match=r"differing: \['features_dtype'\]"):
        cg.extract(Net(), Items(x, y), out, progress=False, batch_size=32, sample_chunk=32, features_dtype="float16")
    cg.extract(Net(), Items(x, y), out, progress=False, batch_size=32, sample_chunk=32)  # same plan: resumes
    assert stored_features_dtype(out) == "float32"


def test_complete_store_of_another_precision_is_not_silently_kept(tmp_path):
    x, y = make_data(40)
    out = cg.extract(Net(), (x, y), tmp_path / "s.zarr", progress=False)
    assert already_extracted(out, overwrite=False, progress=False, tag="t")  # no precision asked: kept
    assert already_extracted(out, overwrite=False, progress=False, tag="t", features_dtype="float32")
    with pytest.raises(StoreExistsError, match="stored as float32, but features_dtype='bfloat16'"):
        already_extracted(out, overwrite=False, progress=False, tag="t", features_dtype="bfloat16")
    assert not already_extracted(out, overwrite=True, progress=False, tag="t", features_dtype="bfloat16")


def test_unknown_features_dtype_lists_the_allowed(tmp_path):
    x, y = make_data(20)
    with pytest.raises(ConfigError, match=r"features_dtype: expected one of \['float32', 'float16', 'bfloat16'\]"):
        cg.extract(Net(), (x, y), tmp_path / "u.zarr", progress=False, features_dtype="float64")
    assert not (tmp_path / "u.zarr").exists()


# ------------------------------------------------------------------------------------------ schema and save
def test_schema_accepts_half_features_and_refuses_other_dtypes(run_ds):
    f32 = run_ds["features"].values
    f16 = run_ds.copy()
    f16["features"] = (("sample", "feature"), f32.astype(np.float16))
    cg.validate(f16)  # logits were computed from float32: the check allows the float16 rounding, no more
    bits = torch.from_numpy(f32).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    bf = run_ds.copy()
    bf["features"] = xr.Variable(("sample", "feature"), bits, attrs={ENCODED_DTYPE_ATTR: "bfloat16"})
    cg.validate(bf)
    bad_logits = bf.copy()
    bad_logits["logits"] = bf["logits"] * 1.5 + 1.0  # far beyond any rounding of the features
    with pytest.raises(SchemaError, match="bfloat16 storage of the features"):
        cg.validate(bad_logits)
    no_attr = run_ds.copy()
    no_attr["features"] = (("sample", "feature"), bits)
    with pytest.raises(SchemaError, match=r"features.*expected dtype float32, float16, or uint16 .*got uint16"):
        cg.validate(no_attr)
    wrong = run_ds.copy()
    wrong["features"] = xr.Variable(("sample", "feature"), f32, attrs={ENCODED_DTYPE_ATTR: "bfloat16"})
    with pytest.raises(SchemaError, match="encoded_dtype='bfloat16' on dtype float32"):
        cg.validate(wrong)
    f64 = run_ds.copy()
    f64["features"] = (("sample", "feature"), f32.astype(np.float64))
    with pytest.raises(SchemaError, match="got float64"):
        cg.validate(f64, check_values=False)


def test_save_round_trips_half_stores_and_writes_decoded_ones_back_in_their_precision(tmp_path, run_ds):
    bits = torch.from_numpy(run_ds["features"].values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    bf = run_ds.copy()
    bf["features"] = xr.Variable(("sample", "feature"), bits, attrs={ENCODED_DTYPE_ATTR: "bfloat16"})
    p = cg.save(bf, tmp_path / "bf.zarr")
    assert features_meta(p)["data_type"] == "uint16" and stored_features_dtype(p) == "bfloat16"
    opened = cg.open(p)
    np.testing.assert_array_equal(opened["features"].values, bfloat16_bits_to_float32(bits))
    assert opened["features"].attrs[STORED_DTYPE_ATTR] == "bfloat16"
    # a decoded run saved again is written back as bfloat16 bits (issue 22): what it says it holds, and it validates
    again = cg.save(opened, tmp_path / "again.zarr")
    assert stored_features_dtype(again) == "bfloat16" and features_meta(again)["data_type"] == "uint16"
    reopened = cg.verify(again)
    assert reopened["features"].attrs[STORED_DTYPE_ATTR] == "bfloat16"
    np.testing.assert_array_equal(reopened["features"].values, opened["features"].values)
    # float32 features without the note are written as float32
    plain = opened.copy()
    plain["features"].attrs.pop(STORED_DTYPE_ATTR)
    assert stored_features_dtype(cg.save(plain, tmp_path / "f32.zarr", check_values=False)) == "float32"


def test_float16_refusal_threshold_is_where_torch_rounds_to_inf():
    """65519 rounds to float16's largest value 65504 (kept, error < u); |h| >= 65520 rounds to inf (refused)."""
    from causalgeom.pipeline.extract.writer import _encode_features

    kept = _encode_features(torch.tensor([[65519.0, -65519.0, 1.0]]), "float16", "r", 0)
    assert kept.dtype == torch.float16 and kept.float().tolist() == [[65504.0, -65504.0, 1.0]]
    with pytest.raises(ConfigError, match=r"run 'r'.*first at sample 7"):
        _encode_features(torch.tensor([[1.0, 2.0], [3.0, -65520.0]]), "float16", "r", 6)
    bits = _encode_features(torch.tensor([[3.0e38, -1.0]]), "bfloat16", "r", 0)  # float32's range: no refusal
    assert bits.dtype == torch.int16
    np.testing.assert_array_equal(bfloat16_bits_to_float32(bits.numpy().view(np.uint16)),
                                  torch.tensor([[3.0e38, -1.0]]).to(torch.bfloat16).float().numpy())


def test_cli_features_dtype_on_a_training_folder(fake_training, capsys):
    """--features-dtype reaches every run; re-running with another precision is refused, without it kept."""
    from causalgeom.cli import main

    out, _ = fake_training
    study = out / "study"
    args = ["extract", str(out), "--no-attack", "--no-progress", "--batch-size", "16"]
    assert main(args + ["--features-dtype", "float16"]) == 0
    assert [stored_features_dtype(study / f"{r}.zarr") for r in ("ce-s0", "ls-s0")] == ["float16", "float16"]
    assert main(args + ["--features-dtype", "bfloat16"]) == 2
    err = capsys.readouterr().err
    assert "stored as float16" in err and "--features-dtype bfloat16 was asked" in err and "--overwrite" in err
    assert main(args) == 0  # no precision asked: complete stores are kept as they are
    assert main(args + ["--features-dtype", "bfloat16", "--overwrite"]) == 0
    assert stored_features_dtype(study / "ce-s0.zarr") == "bfloat16"
    with pytest.raises(SystemExit) as exc:  # argparse refuses the choice, listing the allowed ones
        main(args + ["--features-dtype", "float64"])
    assert exc.value.code == 2
    assert "invalid choice: 'float64'" in capsys.readouterr().err
