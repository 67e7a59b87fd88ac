"""Malformed-input cases of issue 22 (reads checked at read time, stores without manifests, malformed manifest
entries, --attr run_id), registered in the corpus of tests/malformed_corpus.py.

Each ``run(inp, out)`` builds its store under ``inp`` and either reads it or writes a copy under ``out``; the corpus
test expects the causalgeom error named here and ``out`` left empty.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import causalgeom as cg
from causalgeom.errors import ConfigError, IncompleteStoreError, StoreError

from .malformed_corpus import _edit_json, _small_store, _strip_manifest, register


# -- a store changed after `cg.open`: every read checks the file at that moment ------------------------------------
def _after_open(change, action):
    def run(i, o):
        p = _small_store(i)
        ds = cg.open(p)
        change(p)
        return action(ds, o)
    return run


def _delete(key):
    return lambda p: (p / key).unlink()


def _truncate(key, keep=12):
    return lambda p: (p / key).write_bytes((p / key).read_bytes()[:keep])


def _copy(ds, o):
    return cg.save(ds, o / "copy.zarr")


def _fused(ds, o):
    from causalgeom.metrics.table import fused_run

    return fused_run(ds)


def _values(name):
    return lambda ds, o: np.asarray(ds[name].values)


register("after open: label chunk deleted, then copied", StoreError, r"label/c/1 is missing at read time")(
    _after_open(_delete("label/c/1"), _copy))
register("after open: label chunk deleted, then read", StoreError, r"label/c/2 is missing at read time")(
    _after_open(_delete("label/c/2"), _values("label")))
register("after open: features chunk deleted, fused pass", StoreError, r"features: chunk file c/3/0 .* is missing")(
    _after_open(_delete("features/c/3/0"), _fused))
register("after open: logits chunk deleted, fused pass", StoreError, r"logits: chunk file c/0/0 .* is missing")(
    _after_open(_delete("logits/c/0/0"), _fused))
register("after open: adv_correct chunk deleted, read", StoreError, r"adv_correct/c/0/0/1 is missing at read time")(
    _after_open(_delete("adv_correct/c/0/0/1"), _values("adv_correct")))
register("after open: features chunk truncated, fused pass", StoreError, r"features: chunk file c/1/0 .* has 12 bytes")(
    _after_open(_truncate("features/c/1/0"), _fused))
register("after open: logits chunk truncated, copied", StoreError, r"logits/c/2/0 holds 12 bytes at read time")(
    _after_open(_truncate("logits/c/2/0"), _copy))
register("after open: label chunk emptied, read", StoreError, r"label/c/0 holds 0 bytes at read time")(
    _after_open(_truncate("label/c/0", 0), _values("label")))


# -- stores written before manifests: chunk files counted and sized against the arrays' shapes ---------------------
def _old_store(change, *, verify=True):
    def run(i, o):
        p = _small_store(i)
        _strip_manifest(p)
        change(p)
        return cg.verify(p) if verify else cg.open(p, verify=False)
    return run


def _both(*changes):
    return lambda p: [c(p) for c in changes]


def _write(key, data=b"x"):
    return lambda p: (p / key).write_bytes(data)


register("no manifest: label chunk deleted and a stray file", StoreError,
         r"label/c/0 is missing.*stray file label/c/\.DS_Store")(
    _old_store(_both(_delete("label/c/0"), _write("label/c/.DS_Store", b"\0\0\0\1Bud1"))))
register("no manifest: label chunk deleted", IncompleteStoreError, r"'label': chunk file label/c/3 is missing")(
    _old_store(_delete("label/c/3"), verify=False))
register("no manifest: features chunk deleted", IncompleteStoreError, r"features/c/1/0 is missing")(
    _old_store(_delete("features/c/1/0")))
register("no manifest: label chunk truncated", StoreError, r"label/c/1 holds 12 bytes; an uncompressed chunk")(
    _old_store(_truncate("label/c/1"), verify=False))
register("no manifest: features chunk grown", StoreError, r"features/c/0/0 holds \d+ bytes; an uncompressed")(
    _old_store(lambda p: (p / "features/c/0/0").write_bytes((p / "features/c/0/0").read_bytes() + b"\0" * 8)))
register("no manifest: chunk outside the grid", StoreError, r"stray file label/c/9")(
    _old_store(lambda p: (p / "label/c/9").write_bytes((p / "label/c/0").read_bytes()), verify=False))
register("no manifest: chunk renamed", StoreError, r"label/c/1 is missing.*stray file label/c/1\.orig")(
    _old_store(lambda p: (p / "label/c/1").rename(p / "label/c/1.orig")))
register("no manifest: stray file at the top", StoreError, r"the root: stray file notes\.txt")(
    _old_store(_write("notes.txt"), verify=False))
register("no manifest: chunk grid edited", StoreError, r"'features': chunk file features/c/\d/0 (is missing|holds)")(
    _old_store(lambda p: _edit_json(p, "features/zarr.json", lambda d: d["chunk_grid"]["configuration"].update(
        chunk_shape=[7, 4])), verify=False))
register("no manifest: dtype edited", StoreError, r"'label': chunk file label/c/0 holds \d+ bytes")(
    _old_store(lambda p: _edit_json(p, "label/zarr.json", lambda d: d.update(data_type="int32")), verify=False))


def _old_after_open(change, action):
    def run(i, o):
        p = _small_store(i)
        _strip_manifest(p)
        ds = cg.open(p)
        change(p)
        return action(ds, o)
    return run


register("after open, no manifest: label chunk deleted", StoreError, r"label/c/1 is missing at read time")(
    _old_after_open(_delete("label/c/1"), _copy))
register("after open, no manifest: features chunk deleted, fused pass", StoreError,
         r"features: chunk file c/2/0 .* is missing")(_old_after_open(_delete("features/c/2/0"), _fused))
register("after open, no manifest: label chunk truncated", StoreError, r"label/c/3 holds 12 bytes at read time")(
    _old_after_open(_truncate("label/c/3"), _values("label")))


# -- malformed manifest entries ------------------------------------------------------------------------------------
def _manifest_entry(section, key, value):
    def change(p: Path) -> None:
        import zarr

        g = zarr.open_group(str(p), mode="r+", zarr_format=3)
        mark = json.loads(json.dumps(dict(g.attrs[cg.store.COMPLETE_ATTR])))
        k = key if key in mark["manifest"][section] else sorted(mark["manifest"][section])[0]
        mark["manifest"][section][k] = value
        g.attrs[cg.store.COMPLETE_ATTR] = mark
    return change


def _manifest_case(section, key, value):
    def run(i, o):
        p = _small_store(i)
        _manifest_entry(section, key, value)(p)
        return cg.open(p, verify=False)
    return run


for _what, _value in [("null", None), ("a string", "1604"), ("one element", [1604]),
                      ("three elements", [1604, "ab" * 16, 0]), ("a negative size", [-1, "ab" * 16]),
                      ("a digest that is a number", [1604, 7]), ("an object", {"size": 1604})]:
    register(f"manifest: file entry that is {_what}", StoreError,
             r"manifest in its completion mark \(zarr\.json.*entry 'files'\['label/c/1'\] is .*expected a pair")(
        _manifest_case("files", "label/c/1", _value))
register("manifest: array entry that is null", StoreError, r"entry 'arrays'\['label'\] is null; expected an object")(
    _manifest_case("arrays", "label", None))
register("manifest: array entry that is a list", StoreError, r"entry 'arrays'\['logits'\] is \[1, 2\]")(
    _manifest_case("arrays", "logits", [1, 2]))


# -- import --attr run_id that disagrees with the store's name ------------------------------------------------------
def _import_attr(value, dst="study/x.zarr"):
    def run(i, o):
        from causalgeom.cli.io import _import
        import argparse

        from .malformed_corpus import _good

        a = _good()
        np.savez(i / "a.npz", features=a["features"], logits=a["logits"], labels=a["labels"])
        (o / "study").mkdir()
        try:
            _import(argparse.Namespace(src=[str(i / "a.npz")], dst=str(o / dst), run_table=None, head=None,
                                       features_key=None, logits_key=None, labels_key=None, max_bytes=None,
                                       attr=[f"run_id={value}"], overwrite=False))
        finally:
            (o / "study").rmdir()  # the test's "nothing under out": the study folder was made here, not by import
    return run


register("import: --attr run_id other than the store name", ConfigError, r"--attr run_id=y: a run store's run_id")(
    _import_attr("y"))
register("import: --attr run_id that is a number", ConfigError, r"--attr run_id=5: .*'x'")(_import_attr("5"))
