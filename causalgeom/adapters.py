"""Third-party dumps: `import_dump` reads ``.npz``, ``.pt``/``.pth``, ``.safetensors`` and xarray/netCDF files.

No file is ever unpickled: ``.npz`` is read with ``allow_pickle=False`` and ``.pt`` with
``torch.load(weights_only=True)``, which refuses any pickle that would construct arbitrary objects.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import xarray as xr

from .errors import DumpImportError, SchemaError, UnsafeFileError
from .schema import from_arrays

__all__ = ["import_dump", "import_study", "read_arrays", "FEATURE_KEYS", "LOGIT_KEYS", "LABEL_KEYS", "HEAD_PREFIXES",
           "MAX_HEADER_BYTES"]

FEATURE_KEYS = ("features", "feats", "feature", "embeddings", "penultimate", "h")
LOGIT_KEYS = ("logits", "outputs", "output", "scores")
LABEL_KEYS = ("label", "labels", "targets", "target", "y")
#: State-dict prefixes searched for the final linear layer (``PREFIX.weight`` / ``PREFIX.bias``).
HEAD_PREFIXES = ("fc", "classifier", "head", "linear", "classifier.1", "classifier.6", "heads.head", "head.fc")
#: Refuse files whose declared array sizes exceed this (checked before allocation).
MAX_HEADER_BYTES = 64 * 2**30


def _check_npy_header(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Refuse an ``.npy`` member whose header declares more bytes than the member holds (numpy would allocate the
    declared size before reading)."""
    if not info.filename.endswith(".npy"):
        return
    fmt = np.lib.format
    try:
        with zf.open(info) as fh:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(fh)
            else:
                return  # other versions: numpy's own checks apply
            header = fh.tell()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DumpImportError(f"{path}: member {info.filename!r} is not a valid .npy array ({exc})") from None
    if dtype.hasobject:
        return  # refused as pickled objects when read
    nbytes = dtype.itemsize
    for side in shape:
        nbytes *= int(side)
    if nbytes != info.file_size - header:
        raise DumpImportError(f"{path}: member {info.filename!r} declares shape {tuple(shape)} of {dtype} "
                              f"({nbytes} bytes) but holds {info.file_size - header} bytes of data")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DumpImportError(f"{path}: not a valid .npz file (not a zip archive)") from None
    with zf:
        declared = sum(i.file_size for i in zf.infolist())
        if declared > MAX_HEADER_BYTES:
            raise DumpImportError(f"{path}: declares {declared} bytes of arrays, over the limit {MAX_HEADER_BYTES}")
        for info in zf.infolist():
            _check_npy_header(path, zf, info)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise UnsafeFileError(f"{path}: holds pickled object arrays; refusing to unpickle an untrusted file") from None
        raise DumpImportError(f"{path}: cannot read .npz ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DumpImportError(f"{path}: cannot read .npz ({exc})") from None


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts with ``.``; ``state_dict.``/``model.``/``module.`` prefixes also get bare aliases."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and key != "attrs":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    for key in list(out):
        first, _, rest = key.partition(".")
        if rest and first in ("state_dict", "model", "module") and rest not in out:
            out[rest] = out[key]
    return out


def _read_pt(path: Path) -> dict[str, Any]:
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(
            f"{path}: refused — loading it would need to unpickle arbitrary objects "
            f"(torch.load(weights_only=True) said: {str(exc).splitlines()[0]}). Save a plain dict of "
            "tensors instead") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DumpImportError(f"{path}: cannot read as a torch file ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, torch.Tensor) or not isinstance(obj, Mapping):
        raise DumpImportError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    flat = _flatten(obj)
    return {k: v for k, v in flat.items() if isinstance(v, (torch.Tensor, np.ndarray)) or k == "attrs"}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    import json
    import struct

    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise DumpImportError(f"{path}: truncated safetensors header")
        (n,) = struct.unpack("<Q", head)
        size = path.stat().st_size
        if n > min(size - 8, 100 * 2**20):
            raise DumpImportError(f"{path}: safetensors header length {n} is larger than the file allows")
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            raise DumpImportError(f"{path}: safetensors header is not valid JSON") from None
    for key, info in header.items():
        if key == "__metadata__":
            continue
        start, end = info.get("data_offsets", (0, 0))
        if end > size - 8 - n or start > end:
            raise DumpImportError(f"{path}: tensor {key!r} declares bytes {start}..{end} past the end of the file")
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise DumpImportError(f"{path}: cannot read safetensors ({exc})") from None


def _from_xarray(ds: xr.Dataset, attrs: Mapping[str, Any] | None) -> xr.Dataset:
    """Rebuild a Dataset through `from_arrays`, so dtypes are normalized (netCDF3 has no int64)."""
    missing = [v for v in ("features", "label") if v not in ds.variables]
    if missing:
        raise DumpImportError(f"xarray dump: variable(s) {missing} missing; variables: {sorted(ds.variables)}")
    get = lambda name: ds[name].values if name in ds.variables else None  # noqa: E731
    adv = {}
    if "adv_correct" in ds.variables:
        adv = dict(adv_correct=get("adv_correct").astype(bool), adv_margin=get("adv_margin"),
                   attacks=[str(a) for a in ds["attack"].values], eps=[float(e) for e in ds["eps"].values])
    meta = {k: v for k, v in ds.attrs.items() if k != "schema_version"}
    meta.update(dict(attrs or {}))
    return from_arrays(get("features"), get("logits"), get("label"), head_weight=get("head_weight"),
                       head_bias=get("head_bias"), attrs=meta, **adv)


def _pick(arrays: Mapping[str, Any], given: str | None, candidates: tuple[str, ...], what: str, path: Path,
          required: bool = True) -> Any:
    if given is not None:
        if given not in arrays:
            raise DumpImportError(f"{path}: key {given!r} for {what} not found; keys: {sorted(arrays)}")
        return arrays[given]
    lower = {k.lower(): k for k in arrays}
    for c in candidates:
        if c in lower:
            return arrays[lower[c]]
    if required:
        raise DumpImportError(f"{path}: no {what} found (looked for {list(candidates)}; keys: {sorted(arrays)}); "
                              f"name it with the {what.split()[0]}_key= argument")
    return None


def read_arrays(src: str | os.PathLike) -> dict[str, Any]:
    """Read the named arrays of a ``.npz``, ``.pt``/``.pth`` or ``.safetensors`` file without unpickling."""
    path = Path(src)
    if not path.exists():
        raise DumpImportError(f"no such file: {path}")
    if path.is_dir():
        raise DumpImportError(f"{path} is a folder; expected a .npz/.pt/.pth/.safetensors/.nc file "
                              "(a Zarr store is opened with cg.open)")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path)
    if suffix in (".pt", ".pth"):
        return _read_pt(path)
    if suffix == ".safetensors":
        return _read_safetensors(path)
    raise DumpImportError(f"{path}: unknown dump format {suffix!r}; expected one of .npz, .pt, .pth, "
                          ".safetensors, .nc (or an xarray.Dataset)")


def import_dump(src: str | os.PathLike | xr.Dataset, out: str | os.PathLike | None = None, *,
                features_key: str | None = None, logits_key: str | None = None, labels_key: str | None = None,
                head: str | None = None, head_weight: Any = None, head_bias: Any = None,
                attrs: Mapping[str, Any] | None = None, mode: str = "w-") -> xr.Dataset:
    """Import a third-party dump as a validated schema-v1 Dataset (and save it to ``out`` if given).

    Parameters
    ----------
    src : path or xarray.Dataset
        ``.npz`` (read with ``allow_pickle=False``), ``.pt``/``.pth`` (a dict of tensors, read with
        ``torch.load(weights_only=True)``; nested dicts such as ``{"state_dict": {...}}`` are
        flattened with ``.``), ``.safetensors``, ``.nc`` (netCDF), or an in-memory Dataset.
    out : path, optional
        Where to save the imported run (Zarr); ``mode`` as in :func:`causalgeom.save`.
    features_key, logits_key, labels_key : str, optional
        Array names; by default the first of :data:`FEATURE_KEYS` / :data:`LOGIT_KEYS` /
        :data:`LABEL_KEYS` present (case-insensitive).
    head : str, optional
        State-dict prefix of the final linear layer (``PREFIX.weight``/``PREFIX.bias``); by default
        ``head_weight``/``head_bias`` keys, then :data:`HEAD_PREFIXES` are tried. A dump without a
        head still imports; analyses that need it raise :class:`~causalgeom.HeadMissingError`.
    head_weight, head_bias : array, optional
        The head given directly (overrides the file).
    attrs : mapping, optional
        Provenance attributes (``run_id``, ``regularizer``, ``seed``...); ``source`` is set to the file.

    Returns
    -------
    xarray.Dataset
    """
    attrs = dict(attrs or {})
    if isinstance(src, xr.Dataset):
        ds = _from_xarray(src, attrs)
    elif Path(src).suffix.lower() in (".nc", ".netcdf", ".h5", ".nc4"):
        try:
            with xr.open_dataset(src) as raw:
                raw = raw.load()
        except (OSError, ValueError) as exc:
            raise DumpImportError(f"{src}: cannot read as netCDF ({exc})") from None
        ds = _from_xarray(raw, {"source": Path(src).name, **attrs})
    else:
        path = Path(src)
        arrays = read_arrays(path)
        file_attrs: dict[str, Any] = {}
        if "attrs" in arrays and isinstance(arrays["attrs"], Mapping):
            file_attrs = dict(arrays.pop("attrs"))
        feats = _pick(arrays, features_key, FEATURE_KEYS, "features array", path)
        logits = _pick(arrays, logits_key, LOGIT_KEYS, "logits array", path, required=False)
        labels = _pick(arrays, labels_key, LABEL_KEYS, "labels array", path)
        W, b = head_weight, head_bias
        if W is None:
            prefixes = [head] if head else ["head_weight"] + list(HEAD_PREFIXES)
            for p in prefixes:
                wkey, bkey = (("head_weight", "head_bias") if p == "head_weight" else (f"{p}.weight", f"{p}.bias"))
                if wkey in arrays:
                    W, b = arrays[wkey], arrays.get(bkey)
                    break
            else:
                if head:
                    raise DumpImportError(f"{path}: no '{head}.weight' in the file; keys: {sorted(arrays)}")
        if logits is None and W is None:
            raise DumpImportError(f"{path}: has neither logits (looked for {list(LOGIT_KEYS)}) nor a head to "
                                  "compute them from")
        meta = {"source": path.name, **file_attrs, **attrs}
        try:
            ds = from_arrays(feats, logits, labels, head_weight=W, head_bias=b, attrs=meta)
        except SchemaError as exc:
            raise SchemaError(f"{path}: {exc}") from None
    if out is not None:
        from .store import save

        save(ds, out, mode=mode)
    return ds


def import_study(sources: list[str | os.PathLike], study_dir: str | os.PathLike, *,
                 run_table: str | os.PathLike | None = None, mode: str = "w-", **kwargs: Any) -> list[str]:
    """Import several third-party dumps into one study folder.

    Parameters
    ----------
    sources : list of paths
        Dump files (any format :func:`import_dump` reads).
    study_dir : path
        The study folder (created if missing).
    run_table : path to a CSV, optional
        One row per dump with a ``file`` column (file name or path, matched by name) and the run's
        attributes: ``run_id`` (default: the file's stem), ``regularizer``, ``strength``, ``seed``,
        ``model``, ... Values are stored as the runs' attributes, so the study's analysis and report
        treat these runs exactly like causalgeom's own.
    **kwargs
        Passed to :func:`import_dump` (key names, head prefix).

    Returns
    -------
    list of str
        The run ids written.
    """
    import pandas as pd

    from .study import open_study

    rows: dict[str, dict[str, Any]] = {}
    if run_table is not None:
        try:
            table = pd.read_csv(run_table)
        except (OSError, ValueError) as exc:
            raise DumpImportError(f"run table {run_table}: cannot read as CSV ({exc})") from None
        if "file" not in table.columns:
            raise DumpImportError(f"run table {run_table}: needs a 'file' column naming each dump; "
                                  f"columns: {list(table.columns)}")
        for rec in table.to_dict("records"):
            name = Path(str(rec.pop("file"))).name
            rows[name] = {k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items() if not pd.isna(v)}
    names = [Path(s).name for s in sources]
    if rows:
        unknown = sorted(set(names) - set(rows))
        if unknown:
            raise DumpImportError(f"run table {run_table} has no row for {unknown}")
    run_ids = [str(rows.get(n, {}).get("run_id", Path(n).stem)) for n in names]
    dup = sorted({r for r in run_ids if run_ids.count(r) > 1})
    if dup:
        raise DumpImportError(f"duplicate run_id(s) {dup}; give each dump a unique run_id in the run table")
    # Read and validate everything first (run ids included: they become folder names), so a bad dump or run
    # table leaves the study untouched and creates nothing.
    datasets = []
    for src, name, run_id in zip(sources, names, run_ids):
        attrs = {**rows.get(name, {}), "run_id": run_id}
        datasets.append(import_dump(src, attrs=attrs, **kwargs))
    study = open_study(study_dir, create=True)
    existing = sorted(set(run_ids) & set(study.run_ids)) if mode == "w-" else []
    if existing:
        raise DumpImportError(f"study {study.path} already has run(s) {existing}; nothing was imported")
    for ds in datasets:
        study.add(ds, mode=mode)
    return run_ids
