"""Schema v1: every validation error of issue 2, and from_arrays conversions."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import causalgeom as cg
from causalgeom.dump.schema import LOGITS_ATOL, LOGITS_RTOL

from causalgeom.testing import make_run


def test_from_arrays_accepts_numpy_and_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    f = rng.normal(size=(20, 4))
    W, b = rng.normal(size=(3, 4)), rng.normal(size=3)
    labels = rng.integers(0, 3, 20)
    a = cg.from_arrays(f, f @ W.T + b, labels, head_weight=W, head_bias=b, attrs={"run_id": "a"})
    t = cg.from_arrays(torch.tensor(f), torch.tensor(f @ W.T + b), torch.tensor(labels),
                       head_weight=torch.tensor(W), head_bias=torch.tensor(b), attrs={"run_id": "a"})
    assert a.features.dtype == np.float32 and a.label.dtype == np.int64
    np.testing.assert_array_equal(a.features.values, t.features.values)
    np.testing.assert_array_equal(a.logits.values, t.logits.values)
    assert a.attrs["schema_version"] == cg.SCHEMA_VERSION


def test_logits_computed_from_head_when_missing():
    rng = np.random.default_rng(2)
    f, W, b = rng.normal(size=(10, 4)), rng.normal(size=(3, 4)), rng.normal(size=3)
    ds = cg.from_arrays(f, None, rng.integers(0, 3, 10), head_weight=W, head_bias=b)
    np.testing.assert_allclose(ds.logits.values, (f @ W.T + b).astype(np.float32), rtol=1e-5, atol=1e-5)
    assert ds.attrs["logits_source"] == "computed"


def _base():
    return make_run(n=50, d=6, k=4, attacks=True)


def _expect(ds, *words):
    with pytest.raises(cg.SchemaError) as info:
        cg.validate(ds)
    msg = str(info.value)
    for w in words:
        assert w in msg, msg
    return msg


def test_valid_run_passes():
    cg.validate(_base())


def test_missing_variable():
    _expect(_base().drop_vars("logits"), "'logits'", "missing")


def test_extra_variable():
    ds = _base()
    ds["junk"] = ("sample",), np.zeros(ds.sizes["sample"], np.float32)
    _expect(ds, "'junk'", "not part of schema")


def test_missing_and_extra_dims():
    ds = _base()
    bad = ds.assign(label=("obs", ds.label.values))
    _expect(bad, "'label'", "missing dims ['sample']", "extra dims ['obs']")


def test_wrong_dtype():
    ds = _base()
    _expect(ds.assign(features=ds.features.astype(np.float64)), "'features'", "float32", "float64")
    _expect(ds.assign(label=ds.label.astype(np.int32)), "'label'", "int64")


@pytest.mark.parametrize("name", ["features", "logits"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_inf(name, value):
    ds = _base().copy(deep=True)
    ds[name].values[3, 1] = value
    _expect(ds, repr(name), "NaN/Inf")


def test_labels_out_of_range():
    ds = _base().copy(deep=True)
    ds.label.values[0] = 4
    _expect(ds, "'label'", "[0, 4)")
    ds.label.values[0] = -1
    _expect(ds, "'label'", "[-1,")


def test_class_count_disagrees_between_logits_and_head():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(10, 4))
    with pytest.raises(cg.SchemaError, match="'head_weight'.*K"):
        cg.from_arrays(f, rng.normal(size=(10, 3)), rng.integers(0, 3, 10), head_weight=rng.normal(size=(5, 4)))


def test_feature_dim_disagrees_between_features_and_head():
    rng = np.random.default_rng(0)
    with pytest.raises(cg.SchemaError, match="feature dim 7 disagrees"):
        cg.from_arrays(rng.normal(size=(10, 4)), rng.normal(size=(10, 3)), rng.integers(0, 3, 10),
                       head_weight=rng.normal(size=(3, 7)))


def test_inconsistent_logits_report_max_deviation():
    ds = _base().copy(deep=True)
    ds.logits.values[5, 2] += 0.5
    msg = _expect(ds, "'logits'", "inconsistent", "max deviation")
    assert "0.5" in msg
    # within the stated tolerance passes
    ds2 = _base().copy(deep=True)
    tol = LOGITS_ATOL + LOGITS_RTOL * float(np.abs(ds2.logits.values).max())
    ds2.logits.values[5, 2] += 0.5 * tol
    cg.validate(ds2)


def test_unknown_schema_version():
    ds = _base()
    ds.attrs["schema_version"] = 2
    _expect(ds, "schema_version", "unknown version 2")
    del ds.attrs["schema_version"]
    _expect(ds, "schema_version", "missing")


def test_empty_dataset():
    ds = _base().isel(sample=slice(0, 0))
    _expect(ds, "empty")


def test_bad_run_id():
    ds = _base()
    ds.attrs["run_id"] = "../escape"
    _expect(ds, "run_id")


def test_head_bias_without_weight_and_non_json_attrs():
    rng = np.random.default_rng(0)
    with pytest.raises(cg.SchemaError, match="head_bias"):
        cg.from_arrays(rng.normal(size=(5, 2)), rng.normal(size=(5, 3)), [0, 1, 2, 0, 1], head_bias=[0, 0, 0])
    with pytest.raises(cg.SchemaError, match="attribute 'bad'"):
        cg.from_arrays(rng.normal(size=(5, 2)), rng.normal(size=(5, 3)), [0, 1, 2, 0, 1], attrs={"bad": object()})


def test_non_integer_labels_and_ragged_input():
    rng = np.random.default_rng(0)
    with pytest.raises(cg.SchemaError, match="'label'.*integer"):
        cg.from_arrays(rng.normal(size=(3, 2)), rng.normal(size=(3, 3)), [0.5, 1, 2])
    with pytest.raises(cg.SchemaError, match="'features'"):
        cg.from_arrays([[1.0, 2.0], [1.0]], rng.normal(size=(2, 3)), [0, 1])


def test_validate_on_dask_backed_data_reads_chunkwise(tmp_path):
    ds = _base().copy(deep=True)
    cg.save(ds, tmp_path / "r.zarr", sample_chunk=16)
    lazy = cg.open(tmp_path / "r.zarr")
    assert lazy.features.chunks is not None
    cg.validate(lazy)
    bad = lazy.assign(logits=lazy.logits + xr.where(lazy.logits.sample == 40, 1.0, 0.0).astype(np.float32))
    with pytest.raises(cg.SchemaError, match="inconsistent"):
        cg.validate(bad)
