"""`Query` and its TOML query file: round trips, validation, use."""

from __future__ import annotations

import tomllib

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from causalgeom.causal import MediationResult, Query, read_queries, simulate_mediation, write_queries
from causalgeom.errors import QueryError

names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=","), min_size=1, max_size=12)
scalars = st.one_of(names, st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                    st.booleans())


@st.composite
def queries(draw):
    return Query(treatment=draw(names), mediators=draw(st.lists(names, min_size=1, max_size=3)),
                 outcomes=draw(st.lists(names, min_size=1, max_size=3)),
                 control=draw(st.none() | scalars), treated=draw(st.none() | scalars),
                 covariates=draw(st.lists(names, max_size=2)), cluster=draw(st.none() | names),
                 level=draw(st.sampled_from(["sample", "run"])),
                 method=draw(st.sampled_from(["regression", "statsmodels", "dowhy"])),
                 n_boot=draw(st.integers(0, 10**5)), seed=draw(st.none() | st.integers(0, 2**32)),
                 bootstrap=draw(st.sampled_from(["cluster", "cluster+samples", "naive"])),
                 ci_level=draw(st.floats(0.01, 0.999)), outcome_model=draw(st.sampled_from(["linear", "logistic"])),
                 interaction=draw(st.booleans()), ordered=draw(st.booleans()),
                 name=draw(st.none() | st.text(max_size=30)),
                 attack=draw(st.none() | st.lists(names, min_size=1, max_size=2)),
                 eps=draw(st.none() | st.lists(st.floats(0, 1), min_size=1, max_size=3)))


@settings(max_examples=60, deadline=None)
@given(queries())
def test_toml_round_trip(q):
    text = q.dumps()
    tomllib.loads(text)  # valid TOML
    assert Query.loads(text) == q


def test_file_round_trip(tmp_path):
    q = Query(treatment="regularizer", control="ce", treated="label_smoothing", mediators=["rms", "cos_true"],
              outcomes=["overconfidence", "robust[pgd-linf@1/255]"], covariates=["label"], n_boot=500,
              seed=3, name='ls "vs" ce')
    path = q.to_toml(tmp_path / "q.toml")
    assert Query.from_toml(path) == q
    assert Query.from_toml(str(path)) == q
    text = path.read_text()
    assert "[query]" in text and 'treatment = "regularizer"' in text and "seed = 3" in text
    assert "n_boot = 500" in text


def test_several_queries(tmp_path):
    qs = [Query(treatment="regularizer", treated=t, mediators="rms", outcomes="nll") for t in ("mixup", "cutmix")]
    path = write_queries(qs, tmp_path / "qs.toml")
    assert "[[query]]" in path.read_text()
    assert read_queries(path) == qs
    with pytest.raises(QueryError, match="holds 2"):
        Query.from_toml(path)


def test_flat_file_and_defaults(tmp_path):
    path = tmp_path / "flat.toml"
    path.write_text('treatment = "strength"\nmediators = ["rms"]\noutcomes = ["ece"]\nlevel = "run"\n')
    q = Query.from_toml(path)
    assert q.level == "run" and q.method == "regression" and q.n_boot is None and q.cluster == "run_id"
    assert q.seed == 0 and q.control is None


@pytest.mark.parametrize("text, match", [
    ('[query]\ntreatment = "r"\nmediators = ["m"]\noutcomes = ["y"]\nn_bot = 3\n',
     r"unknown query key\(s\) \['n_bot'\]"),
    ('[query]\ntreatment = "r"\nmediators = ["m"]\n', "missing the required key 'outcomes'"),
    ('[query]\ntreatment = "r"\nmediators = ["m"]\noutcomes = ["y"]\nmethod = "ml"\n', r"method: expected one of \[.*\], got 'ml'"),
    ('[query]\ntreatment = "r"\nmediators = []\noutcomes = ["y"]\n', "at least one mediator"),
    ('[query]\ntreatment = "r"\nmediators = ["m"]\noutcomes = ["y"]\nn_boot = 1.5\n', "n_boot"),
    ('[query]\ntreatment = "r"\nmediators = ["m"]\noutcomes = ["y"]\nci_level = 2\n', "ci_level"),
    ('[query]\ntreatment = "r"\nmediators = ["m"]\noutcomes = ["y"]\ninteraction = "yes"\n', "interaction"),
    ('[query]\ntreatment = "r"\nmediators = ["m"]\noutcomes = ["y"]\ncontrol = [1]\n', "control"),
    ('[query]\ntreatment = "r"\n[other]\n', r"unexpected top-level key\(s\) \['other'\]"),
    ("[query\n", "not valid TOML"),
])
def test_bad_query_files(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(QueryError, match=match):
        Query.from_toml(path)


def test_missing_file(tmp_path):
    with pytest.raises(QueryError, match="does not exist"):
        Query.from_toml(tmp_path / "nope.toml")


def test_run_and_kwargs():
    table, _ = simulate_mediation(n_runs_per_arm=5, n_samples=20, rng=0)
    q = Query(treatment="regularizer", control="ce", treated="treated", mediators=["m1"], outcomes=["y"],
              covariates=["x"], n_boot=50, seed=1, inference="bootstrap")
    res = q.run(table)
    assert isinstance(res, MediationResult) and res.n_boot == 50
    assert res.design.startswith("paired by image")  # paired_by="auto" reaches mediate
    perm = Query(treatment="regularizer", mediators=["m1"], outcomes=["y"], inference="permutation",
                 paired_by=None).run(table)
    assert perm.design == "unpaired: paired_by=None" and "randomization" in perm.p_value_method
    assert Query.loads(Query(treatment="t", mediators="m", outcomes="y", paired_by=None).dumps()).paired_by is None
    again = q.run(table)
    pd.testing.assert_frame_equal(res.summary(), again.summary())  # the seed makes it reproducible
    kw = q.mediate_kwargs("y")
    assert kw["outcome"] == "y" and isinstance(kw["rng"], np.random.Generator)
    with pytest.raises(QueryError, match="not one of this query's outcomes"):
        q.mediate_kwargs("nll")
    assert q.table_kwargs() == {"level": "sample", "attack": None, "eps": None, "center": "minimal_loss"}


def test_numpy_scalars_and_comma_lists():
    q = Query(treatment="strength", control=np.float64(0.0), treated=np.float32(0.5), mediators="rms,cos_true",
              outcomes="nll", eps=0.1)
    assert isinstance(q.control, float) and q.mediators == ["rms", "cos_true"] and q.eps == [0.1]
    assert Query.loads(q.dumps()) == q
