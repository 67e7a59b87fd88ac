"""Property-based tests: generated inputs are either accepted and round-trip exactly, or raise a causalgeom error."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import causalgeom as cg

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.floats(min_value=-1e6, max_value=1e6, width=32))
dtypes = st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.int64, np.bool_, np.uint8])


@st.composite
def array_inputs(draw):
    n = draw(st.integers(0, 12))
    d = draw(st.integers(0, 4))
    k = draw(st.integers(0, 5))
    n_l = draw(st.sampled_from([n, n, n, max(n - 1, 0), n + 1]))
    if draw(st.booleans()):
        f = draw(hnp.arrays(draw(dtypes), (n, d)))  # hypothesis picks values valid for the dtype
    else:
        f = draw(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), elements=floats))
    logits = draw(st.one_of(st.none(), hnp.arrays(np.float32, (n, k), elements=floats)))
    labels = draw(hnp.arrays(draw(st.sampled_from([np.int64, np.int8, np.float64])), (n_l,),
                             elements=st.integers(-2, 6)))
    head = draw(st.sampled_from(["none", "good", "bad_k", "bad_d"]))
    W = b = None
    if head != "none" and f.ndim == 2:
        kk = k + (head == "bad_k")
        dd = f.shape[1] + (head == "bad_d")
        W = draw(hnp.arrays(np.float32, (kk, dd), elements=st.floats(-3, 3, width=32)))
        b = draw(hnp.arrays(np.float32, (kk,), elements=st.floats(-3, 3, width=32)))
        if logits is not None and head == "good" and draw(st.booleans()) and f.dtype.kind == "f":
            with np.errstate(all="ignore"):
                logits = (f.astype(np.float64) @ W.T.astype(np.float64) + b).astype(np.float32)
    return f, logits, labels, W, b


def _roundtrip(ds):
    with tempfile.TemporaryDirectory() as tmp:
        p = cg.save(ds, Path(tmp) / "r.zarr")
        xr.testing.assert_identical(ds, cg.open(p).load())


@SETTINGS
@given(array_inputs())
def test_from_arrays_accepts_and_round_trips_or_raises(inp):
    f, logits, labels, W, b = inp
    try:
        with np.errstate(all="ignore"):
            ds = cg.from_arrays(f, logits, labels, head_weight=W, head_bias=b, attrs={"run_id": "p"})
    except cg.CausalGeomError:
        return
    cg.validate(ds)
    assert ds.features.dtype == np.float32 and ds.label.dtype == np.int64
    assert np.isfinite(ds.features.values).all() and np.isfinite(ds.logits.values).all()
    assert ds.label.values.min() >= 0 and ds.label.values.max() < ds.sizes["class"]
    _roundtrip(ds)


@SETTINGS
@given(array_inputs(), st.sampled_from([".npz", ".pt", ".safetensors"]))
def test_import_dump_accepts_and_round_trips_or_raises(inp, suffix):
    f, logits, labels, W, b = inp
    arrays = {"features": f, "labels": labels}
    if logits is not None:
        arrays["logits"] = logits
    if W is not None:
        arrays["fc.weight"], arrays["fc.bias"] = W, b
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / f"d{suffix}"
        try:
            if suffix == ".npz":
                np.savez(p, **arrays)
            elif suffix == ".pt":
                import torch
                torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, p)
            else:
                from safetensors.numpy import save_file
                save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(p))
        except Exception:  # noqa: BLE001 - the writer library refuses some generated arrays; nothing to import
            return
        try:
            with np.errstate(all="ignore"):
                ds = cg.import_dump(p, attrs={"run_id": "p"})
        except cg.CausalGeomError:
            return
    cg.validate(ds)
    np.testing.assert_array_equal(ds.features.values, np.asarray(f, dtype=np.float32))
    _roundtrip(ds)


@SETTINGS
@given(st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=5), st.floats(),
                                                       st.lists(st.integers(), max_size=3),
                                                       st.tuples(st.integers(), st.booleans()),
                                                       st.none()), max_size=4),
       st.text(max_size=20))
def test_validate_attrs_and_run_ids(attrs, run_id):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(4, 2)).astype(np.float32)
    try:
        ds = cg.from_arrays(f, rng.normal(size=(4, 3)), [0, 1, 2, 0], attrs={**attrs, "run_id": run_id})
    except cg.CausalGeomError:
        return
    assert cg.schema.RUN_ID_PATTERN.match(ds.attrs["run_id"]) and ".." not in ds.attrs["run_id"]
    _roundtrip(ds)


@SETTINGS
@given(st.data())
def test_validate_never_raises_foreign_errors(data):
    """validate on arbitrary mutations of a good dataset raises SchemaError or nothing."""
    from causalgeom.testing import make_run

    ds = make_run(n=20, d=3, k=3, attacks=data.draw(st.booleans())).copy(deep=True)
    name = data.draw(st.sampled_from(sorted(ds.data_vars)))
    action = data.draw(st.sampled_from(["astype", "drop", "rename_dim", "poke", "attr"]))
    if action == "astype":
        ds[name] = ds[name].astype(data.draw(st.sampled_from(["float64", "int32", "bool", "float16"])))
    elif action == "drop":
        ds = ds.drop_vars(name)
    elif action == "rename_dim":
        ds[name] = ds[name].rename({ds[name].dims[0]: "zz"})
    elif action == "poke" and ds[name].dtype.kind == "f":
        flat = ds[name].values.reshape(-1)
        flat[data.draw(st.integers(0, flat.size - 1))] = data.draw(floats)
    elif action == "attr":
        ds.attrs["schema_version"] = data.draw(st.one_of(st.integers(-1, 3), st.text(max_size=2), st.none()))
    try:
        cg.validate(ds)
    except cg.SchemaError:
        pass


# -- the query parser ----------------------------------------------------------------------------------------------
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402

from causalgeom.causal.options import ESTIMANDS, INFERENCE, PAIRED_BY  # noqa: E402
from causalgeom.causal.query import BOOTSTRAP_SCHEMES, LEVELS, METHODS, OUTCOME_MODELS, TREATMENT_TYPES  # noqa: E402
from causalgeom.causal.query import Query, read_queries  # noqa: E402

QUERY_FIELDS = [f.name for f in dataclasses.fields(Query)]
QUERY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)
scalars = st.one_of(st.booleans(), st.integers(-3, 3000), st.integers(-2**63, 2**63 - 1),
                    st.floats(allow_nan=True, allow_infinity=True), names)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.lists(names, min_size=1, max_size=3),
                   st.dictionaries(st.sampled_from(["a", "b"]), scalars, max_size=2))
columns = st.sampled_from(["rms", "cos_true", "nll", "x y", "é", 'a"b', "run_id"]) | st.text(min_size=1, max_size=6)
#: per field: values a query accepts, and values it must refuse (with a QueryError)
VALID = {
    "treatment": columns,
    "mediators": st.lists(columns, min_size=1, max_size=3) | st.sampled_from(["rms", "rms,cos_true"]),
    "outcomes": st.lists(columns, min_size=1, max_size=3) | st.just("nll,ece"),
    "control": st.sampled_from(["ce", 0, 0.5, -1, True]) | columns | st.floats(allow_nan=False, allow_infinity=False),
    "treated": st.sampled_from(["label_smoothing", 0.1, 1]) | columns,
    "covariates": st.lists(columns, max_size=2),
    "cluster": st.sampled_from(["run_id", False]) | columns,
    "level": st.sampled_from(LEVELS), "method": st.sampled_from(METHODS),
    "n_boot": st.integers(0, 5000), "seed": st.integers(0, 2**63 - 1) | st.just(False),
    "bootstrap": st.sampled_from(BOOTSTRAP_SCHEMES), "ci_level": st.floats(0.01, 0.99),
    "outcome_model": st.sampled_from(OUTCOME_MODELS), "interaction": st.booleans(), "ordered": st.booleans(),
    "treatment_type": st.sampled_from(TREATMENT_TYPES), "name": names,
    "attack": st.lists(st.sampled_from(["pgd-linf", "fgsm-l2"]) | columns, max_size=2) | columns,
    "eps": st.lists(st.sampled_from([0.0, 1 / 255, 8 / 255]) | st.floats(0, 1), max_size=3) | st.floats(0, 1),
    "center": st.sampled_from(["minimal_loss", "mean", "weight"]),
    "inference": st.sampled_from(INFERENCE), "paired_by": st.sampled_from([p for p in PAIRED_BY if p is not None] + [False]),  # false = None
    "estimand": st.sampled_from(ESTIMANDS),
}
INVALID = {
    "treatment": st.sampled_from(["", 1, ["regularizer"]]),
    "mediators": st.sampled_from(["rms, ", ",", [], [""], [1], 3]),
    "outcomes": st.sampled_from([[], "", [1.5], {"a": 1}]),
    "control": st.sampled_from([math.nan, -math.inf, [1], {"a": 1}]),
    "treated": st.sampled_from([math.nan, math.inf, []]),
    "covariates": st.sampled_from([[""], [2]]),
    "cluster": st.sampled_from([True, "", 3]),
    "n_boot": st.sampled_from([-1, 2.5, True, "10"]), "seed": st.sampled_from([-1, 1.5, True, "0"]),
    "ci_level": st.sampled_from([0, 1, 1.5, -0.1, math.nan, True, "0.9"]),
    "interaction": st.sampled_from([1, "yes"]), "ordered": st.sampled_from([0, "no"]),
    "name": st.sampled_from([1, [], False]),
    "attack": st.sampled_from([[1], "", [""]]),
    "eps": st.sampled_from([[math.nan], [math.inf], [-0.1], -1.0, True, ["a"], [True], {"a": 1}]),
    "center": st.sampled_from(["median", 5, {"a": 1}, [], ""]),
    **{k: st.sampled_from(["", "bogus", "Sample", 1]) for k in ("level", "method", "bootstrap", "outcome_model",
                                                               "treatment_type", "inference", "estimand",
                                                               "paired_by")},
}


def _odds(k, n):
    """True with probability about k/n (sampled_from is uniform; st.integers favours its bounds)."""
    return st.sampled_from([True] * k + [False] * (n - k))


@st.composite
def query_dicts(draw):
    """Valid query tables, or ones with exactly one thing wrong: a bad value, a missing key or an unknown key."""
    d = {k: draw(VALID[k]) for k in ("treatment", "mediators", "outcomes")}
    for key in QUERY_FIELDS[3:]:
        if draw(_odds(1, 3)):
            d[key] = draw(VALID[key])
    fault = draw(st.sampled_from(["none", "none", "value", "value", "any", "missing", "unknown"]))
    if fault == "value":
        key = draw(st.sampled_from(sorted(INVALID)))
        d[key] = draw(INVALID[key])
    elif fault == "any":
        d[draw(st.sampled_from(QUERY_FIELDS))] = draw(values)
    elif fault == "missing":
        del d[draw(st.sampled_from(["treatment", "mediators", "outcomes"]))]
    elif fault == "unknown":
        d[draw(st.sampled_from(["mediator", "Treatment", "n-boot", "x y", ""]) | names)] = draw(values)
    return d


def _toml(v):
    """A small, independent TOML writer for the generated tables (inline tables included)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list):
        return "[" + ", ".join(map(_toml, v)) + "]"
    return "{" + ", ".join(f"{_toml_key(k)} = {_toml(x)}" for k, x in v.items()) + "}"


def _toml_key(k):
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml(k)


def _assert_round_trips(q, tmp):
    text = q.dumps()  # a query that parsed can be written ...
    assert Query.loads(text) == q  # ... and reads back exactly
    assert read_queries(text) == [q]
    assert Query.from_dict(q.to_dict()) == q
    path = q.to_toml(Path(tmp) / "q.toml")
    assert Query.from_toml(path) == q


@QUERY_SETTINGS
@given(query_dicts(), st.sampled_from(["[query]", "top-level", "[[query]]"]))
def test_query_files_parse_and_round_trip_or_raise_query_error(d, layout):
    lines = [f"{_toml_key(k)} = {_toml(v)}" for k, v in d.items()]
    header = [] if layout == "top-level" else [layout]
    text = "\n".join(header + lines) + "\n"
    try:
        q = Query.loads(text)
    except cg.QueryError:
        return
    assert isinstance(q, Query)
    with tempfile.TemporaryDirectory() as tmp:
        _assert_round_trips(q, tmp)


@QUERY_SETTINGS
@given(query_dicts().map(lambda d: {k: (None if v == "bogus" else v) for k, v in d.items()}))
def test_query_dicts_parse_and_round_trip_or_raise_query_error(d):
    try:
        q = Query.from_dict(d)
    except cg.QueryError:
        return
    with tempfile.TemporaryDirectory() as tmp:
        _assert_round_trips(q, tmp)


@QUERY_SETTINGS
@given(st.text(max_size=80) | st.sampled_from(["[query]\n", "[[query]]\n[[query]]\n", "query = 3\n", "query = []\n",
                                                "[query]\ntreatment = 1\n", "a = 1\n[query]\n"]))
def test_arbitrary_query_text_raises_only_query_error(text):
    try:
        queries = read_queries(text)
    except cg.QueryError:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for q in queries:
            _assert_round_trips(q, tmp)
