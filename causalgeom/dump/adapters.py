# Over 600 lines on purpose: one concern (reading third-party dumps safely): each format's reader with the size checks it needs before any allocation.
"""Third-party dumps: `import_dump` reads ``.npz``, ``.pt``/``.pth``, ``.safetensors`` and xarray/netCDF files.

No file is ever unpickled: ``.npz`` is read with ``allow_pickle=False`` and ``.pt`` with
``torch.load(weights_only=True)``, which refuses any pickle that would construct arbitrary objects.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import xarray as xr

from .._util.io import SAFETENSORS_DTYPES, format_bytes, read_safetensors_header
from ..errors import ConfigError, DumpImportError, SchemaError, UnsafeFileError
from .schema import from_arrays

__all__ = ["import_dump", "import_study", "read_arrays", "read_run_table", "default_max_bytes", "FEATURE_KEYS",
           "LOGIT_KEYS", "LABEL_KEYS", "HEAD_PREFIXES", "MAX_HEADER_BYTES"]

FEATURE_KEYS = ("features", "feats", "feature", "embeddings", "penultimate", "h")
LOGIT_KEYS = ("logits", "outputs", "output", "scores")
LABEL_KEYS = ("label", "labels", "targets", "target", "y")
#: State-dict prefixes searched for the final linear layer (``PREFIX.weight`` / ``PREFIX.bias``).
HEAD_PREFIXES = ("fc", "classifier", "head", "linear", "classifier.1", "classifier.6", "heads.head", "head.fc")
#: Upper bound of the total declared size of an ``.npz`` (checked before allocation), whatever ``max_bytes`` says.
MAX_HEADER_BYTES = 64 * 2**30


def default_max_bytes() -> int:
    """Default limit on the memory one imported array may take: half of the memory available now (psutil)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available // 2)
    except Exception:  # noqa: BLE001 - no psutil or no /proc: a fixed 8 GiB
        return 8 * 2**30


def _limit(max_bytes: int | None) -> int:
    if max_bytes is None:
        return default_max_bytes()
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes <= 0:
        raise ConfigError(f"max_bytes: expected a positive integer (bytes), got {max_bytes!r}")
    return int(max_bytes)


#: numpy dtype kinds an imported array may have: bool, signed/unsigned integers, floats.
_NUMERIC_KINDS = "biuf"
_KIND_NAMES = {"c": "complex", "O": "Python objects", "U": "text strings", "S": "byte strings", "V": "raw/structured",
               "M": "datetimes", "m": "time deltas"}


def _check_declared(path: Path, member: str, shape: tuple[int, ...], dtype: np.dtype | str, itemsize: int,
                    limit: int, kind: str | None = None) -> int:
    """Refuse a declared array whose dtype means nothing in the schema or whose size exceeds ``limit``.

    Returns the size in bytes (computed with Python integers, so a huge shape cannot overflow).
    """
    if kind is not None and kind not in _NUMERIC_KINDS:
        raise DumpImportError(f"{path}: array {member!r} has dtype {dtype} ({_KIND_NAMES.get(kind, kind)}), which has "
                              "no meaning in the dump schema; store numbers (float features/logits, integer labels)")
    if any(not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 0 for s in shape):
        raise DumpImportError(f"{path}: array {member!r} declares an invalid shape {shape!r}")
    nbytes = int(itemsize)
    for side in shape:
        nbytes *= int(side)
    if nbytes > limit:
        raise DumpImportError(f"{path}: array {member!r} declares shape {tuple(int(s) for s in shape)} of {dtype}, "
                              f"{format_bytes(nbytes)} in memory, over the limit of {format_bytes(limit)} "
                              "(max_bytes= / --max-bytes to raise it)")
    return nbytes


def _npy_header(fh: Any) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Parse an ``.npy`` header of any version (1.0, 2.0, 3.0) without reading the data: shape, fortran, dtype, size."""
    import ast
    import struct

    magic = fh.read(8)
    if len(magic) != 8 or magic[:6] != b"\x93NUMPY":
        raise ValueError("not an .npy array (no NUMPY magic)")
    major = magic[6]
    if major == 1:
        (hlen,) = struct.unpack("<H", fh.read(2))
        start = 10
    elif major in (2, 3):
        (hlen,) = struct.unpack("<I", fh.read(4))
        start = 12
    else:
        raise ValueError(f"unknown .npy format version {major}.{magic[7]}")
    if hlen > 1 << 20:
        raise ValueError(f"header of {hlen} bytes")
    raw = fh.read(hlen)
    if len(raw) != hlen:
        raise ValueError("truncated header")
    header = ast.literal_eval(raw.decode("utf8" if major == 3 else "latin1"))
    if not isinstance(header, dict) or not {"descr", "fortran_order", "shape"} <= set(header) \
            or not isinstance(header["shape"], tuple):
        raise ValueError(f"header is not an .npy header dict: {raw[:80]!r}")
    dtype = np.lib.format.descr_to_dtype(header["descr"])
    return header["shape"], bool(header["fortran_order"]), dtype, start + hlen


def _read_npz(path: Path, limit: int) -> dict[str, np.ndarray]:
    """Read every member of an ``.npz`` (with or without the ``.npy`` suffix, any ``.npy`` version) after checking
    each declared shape and dtype against ``limit`` and against the bytes the member holds."""
    import struct

    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise DumpImportError(f"{path}: not a valid .npz file (not a zip archive)") from None
    out: dict[str, np.ndarray] = {}
    with zf:
        members = [i for i in zf.infolist() if not i.is_dir()]
        total = 0
        names: dict[str, str] = {}
        for info in members:
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if name in names:
                raise DumpImportError(f"{path}: members {names[name]!r} and {info.filename!r} both name array {name!r}")
            names[name] = info.filename
            try:
                with zf.open(info) as fh:
                    shape, _, dtype, header = _npy_header(fh)
            except (ValueError, SyntaxError, TypeError, OSError, EOFError, struct.error, zipfile.BadZipFile,
                    NotImplementedError, RuntimeError) as exc:
                raise DumpImportError(f"{path}: member {info.filename!r} is not a valid .npy array ({exc})") from None
            if dtype.hasobject:
                raise UnsafeFileError(f"{path}: member {info.filename!r} holds pickled object arrays; refusing to "
                                      "unpickle an untrusted file")
            nbytes = _check_declared(path, info.filename, shape, dtype, dtype.itemsize, limit, dtype.kind)
            if nbytes != info.file_size - header:
                raise DumpImportError(f"{path}: member {info.filename!r} declares shape {tuple(shape)} of {dtype} "
                                      f"({nbytes} bytes) but holds {info.file_size - header} bytes of data")
            total += nbytes
        if total > min(limit, MAX_HEADER_BYTES):
            raise DumpImportError(f"{path}: its arrays together take {format_bytes(total)}, over the limit of "
                                  f"{format_bytes(min(limit, MAX_HEADER_BYTES))} (max_bytes= / --max-bytes)")
        for info in members:
            try:
                with zf.open(info) as fh:
                    out[info.filename[:-4] if info.filename.endswith(".npy") else info.filename] = \
                        np.lib.format.read_array(fh, allow_pickle=False)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as exc:
                raise DumpImportError(f"{path}: cannot read member {info.filename!r} ({exc})") from None
    return out


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


def _torch_load(path: Path, mmap: bool) -> Any:
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(
            f"{path}: refused — loading it would need to unpickle arbitrary objects "
            f"(torch.load(weights_only=True) said: {str(exc).splitlines()[0]}). Save a plain dict of "
            "tensors instead") from None


#: torch dtypes an imported tensor may have (numbers and booleans; no complex, float8, quantized or bit types).
_TORCH_OK = ("bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64", "float16", "bfloat16",
             "float32", "float64")


def _check_tensor(path: Path, key: str, t: Any, limit: int) -> np.ndarray:
    """A tensor of a ``.pt`` file as numpy, after checking its layout, dtype and materialized size.

    The size is ``numel * element_size``: what the tensor takes once contiguous, so an expanded (stride-0) tensor
    or a view declares its full size even though its storage is small.
    """
    import torch

    if t.layout != torch.strided:
        raise DumpImportError(f"{path}: tensor {key!r} has layout {t.layout} (sparse or other); the dump schema "
                              "needs dense tensors (call .to_dense() before saving)")
    if t.is_quantized or t.is_meta:
        raise DumpImportError(f"{path}: tensor {key!r} is {'quantized' if t.is_quantized else 'a meta tensor'}; "
                              "the dump schema needs plain numbers")
    name = str(t.dtype).removeprefix("torch.")
    if name not in _TORCH_OK:
        raise DumpImportError(f"{path}: tensor {key!r} has dtype {name}, which has no meaning in the dump schema "
                              "(complex, float8, quantized and bit types are refused); store float32 / int64")
    _check_declared(path, key, tuple(t.shape), name, t.element_size(), limit)
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return np.ascontiguousarray(t.numpy())


def _read_pt(path: Path, limit: int) -> dict[str, Any]:
    import torch

    try:
        try:
            obj = _torch_load(path, mmap=True)  # storages are mapped, not read: sizes are checked before any copy
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zip" not in str(exc).lower():
                raise
            if path.stat().st_size > limit:
                raise DumpImportError(f"{path}: a legacy (non-zip) torch file of {format_bytes(path.stat().st_size)}, "
                                      f"over the limit of {format_bytes(limit)}") from None
            obj = _torch_load(path, mmap=False)  # legacy format: storages take at most the file's size
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, TypeError, KeyError, IndexError,
            AttributeError) as exc:
        if isinstance(exc, DumpImportError):
            raise
        raise DumpImportError(f"{path}: cannot read as a torch file ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, torch.Tensor) or not isinstance(obj, Mapping):
        raise DumpImportError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    flat = _flatten(obj)
    out: dict[str, Any] = {}
    for k, v in flat.items():
        if isinstance(v, torch.Tensor):
            out[k] = _check_tensor(path, k, v, limit)
        elif isinstance(v, np.ndarray):
            _check_declared(path, k, v.shape, v.dtype, v.dtype.itemsize, limit, v.dtype.kind)
            out[k] = v
        elif k == "attrs":
            out[k] = v
    return out


#: safetensors dtype names with their item sizes; any other (complex, float8, 4-bit...) is refused.
_ST_DTYPES = {k: v for k, v in SAFETENSORS_DTYPES.items() if not k.startswith("F8")}


def _read_safetensors(path: Path, limit: int) -> dict[str, np.ndarray]:
    header = read_safetensors_header(
        path, limit=limit, error=DumpImportError, what="", dtypes=_ST_DTYPES,
        dtype_note=", which has no meaning in the dump schema",
        check=lambda key, shape, dtype, itemsize: _check_declared(path, key, shape, dtype, itemsize, limit),
        limit_hint=" (max_bytes= / --max-bytes)")
    if any(isinstance(i, dict) and i.get("dtype") == "BF16" for i in header.values()):
        from safetensors.torch import load_file as load_torch

        try:
            return {k: _check_tensor(path, k, v, limit) for k, v in load_torch(str(path)).items()}
        except DumpImportError:
            raise
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise DumpImportError(f"{path}: cannot read safetensors ({exc})") from None
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise DumpImportError(f"{path}: cannot read safetensors ({exc})") from None


#: Dimension names each variable of an xarray/netCDF dump must carry (any order; they are transposed to this one).
_XR_DIMS = {"features": ("sample", "feature"), "logits": ("sample", "class"), "label": ("sample",),
            "head_weight": ("class", "feature"), "head_bias": ("class",), "adv_correct": ("attack", "eps", "sample"),
            "adv_margin": ("attack", "eps", "sample")}


def _check_xarray_sizes(ds: xr.Dataset, where: str, limit: int) -> None:
    """Refuse variables of a (lazily opened) Dataset whose size exceeds ``limit`` or whose dtype is not numeric."""
    total = 0
    for name in [n for n in _XR_DIMS if n in ds.variables] + [c for c in ("attack", "eps") if c in ds.variables]:
        var = ds.variables[name]
        kind = var.dtype.kind if name != "attack" else None
        total += _check_declared(Path(where), name, tuple(var.shape), var.dtype, var.dtype.itemsize, limit, kind)
    if total > limit:
        raise DumpImportError(f"{where}: its variables together take {format_bytes(total)}, over the limit of "
                              f"{format_bytes(limit)} (max_bytes= / --max-bytes)")


def _from_xarray(ds: xr.Dataset, attrs: Mapping[str, Any] | None, where: str = "xarray dump") -> xr.Dataset:
    """Rebuild a Dataset through `from_arrays`, so dtypes are normalized (netCDF3 has no int64).

    Variables are matched by name and dimension name, never by position: each variable of `_XR_DIMS` must carry
    exactly those dimension names, and attack outcomes need ``attack`` and ``eps`` coordinates.
    """
    missing = [v for v in ("features", "label") if v not in ds.variables]
    if missing:
        raise DumpImportError(f"{where}: variable(s) {missing} missing; variables: {sorted(ds.variables)}")
    for name, dims in _XR_DIMS.items():
        if name in ds.variables and set(ds[name].dims) != set(dims):
            raise DumpImportError(f"{where}: variable {name!r} has dims {tuple(ds[name].dims)}; expected {dims} "
                                  "(rename them, e.g. ds.rename({'old': 'new'}), before importing)")
    get = lambda name: ds[name].transpose(*_XR_DIMS[name]).values if name in ds.variables else None  # noqa: E731
    adv = {}
    if "adv_correct" in ds.variables or "adv_margin" in ds.variables:
        absent = [c for c in ("attack", "eps") if c not in ds.variables]
        if absent:
            raise DumpImportError(f"{where}: attack outcomes need the coordinate(s) {absent} (attack names and eps "
                                  "values); add them with ds.assign_coords(...) - they are not guessed from positions")
        correct = get("adv_correct")
        if correct is not None and correct.dtype != bool:
            if correct.dtype.kind == "f" and np.isnan(correct).any():
                raise DumpImportError(f"{where}: variable 'adv_correct' holds {int(np.isnan(correct).sum())} NaN "
                                      "value(s); a boolean outcome must be True/False for every sample")
            if correct.dtype.kind not in "biuf" or not np.isin(correct, (0, 1)).all():
                raise DumpImportError(f"{where}: variable 'adv_correct' must be boolean (or 0/1), got dtype "
                                      f"{correct.dtype} with other values")
            correct = correct.astype(bool)
        eps = ds["eps"].values
        if eps.dtype.kind not in "iuf":
            raise DumpImportError(f"{where}: coordinate 'eps' must be numbers, got dtype {eps.dtype}")
        adv = dict(adv_correct=correct, adv_margin=get("adv_margin"),
                   attacks=[str(a) for a in ds["attack"].values], eps=[float(e) for e in eps])
    meta = {k: v for k, v in ds.attrs.items() if k != "schema_version"}
    meta.update(dict(attrs or {}))
    _check_numeric_attrs(meta, where)
    try:
        return from_arrays(get("features"), get("logits"), get("label"), head_weight=get("head_weight"),
                           head_bias=get("head_bias"), attrs=meta, **adv)
    except SchemaError as exc:
        raise SchemaError(f"{where}: {exc}") from None


#: Run attributes that must be numbers when given (``seed``: an integer).
_NUMERIC_ATTRS = ("strength", "seed")


def _check_numeric_attrs(meta: Mapping[str, Any], where: str) -> None:
    for key in _NUMERIC_ATTRS:
        if key not in meta or meta[key] is None:
            continue
        v = meta[key]
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (key == "seed" and not float(v).is_integer()) \
                or not np.isfinite(v):
            what = "whole number" if key == "seed" else "number"
            raise DumpImportError(f"{where}: attribute {key!r} must be a {what}, got {meta[key]!r}")


def _read_netcdf(path: Path, attrs: Mapping[str, Any], limit: int) -> xr.Dataset:
    """Open a netCDF file lazily, check its variables' sizes and dtypes, then load and convert it."""
    if not path.exists():
        raise DumpImportError(f"no such file: {path}")
    if not path.is_file():
        raise DumpImportError(f"{path} is not a regular file; expected a netCDF file")
    try:
        raw = xr.open_dataset(path)
    except Exception as exc:  # noqa: BLE001 - the netCDF backends raise OSError, ValueError, IndexError, KeyError...
        raise DumpImportError(f"{path}: cannot read as netCDF ({type(exc).__name__}: {exc})") from None
    with raw:
        _check_xarray_sizes(raw, str(path), limit)
        try:
            raw = raw.load()
        except Exception as exc:  # noqa: BLE001 - decoding errors of any backend
            raise DumpImportError(f"{path}: cannot read its variables ({type(exc).__name__}: {exc})") from None
    return _from_xarray(raw, {"source": path.name, **attrs}, where=str(path))


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


def read_arrays(src: str | os.PathLike, *, max_bytes: int | None = None) -> dict[str, Any]:
    """Read the named arrays of a ``.npz``, ``.pt``/``.pth`` or ``.safetensors`` file without unpickling.

    Every array's size in memory is computed from the file's own metadata (``.npy`` headers of any version, with
    or without the suffix; tensor shapes, also of expanded/stride-0 tensors and views; safetensors offsets) and
    compared with ``max_bytes`` before anything is allocated. Dtypes without meaning in the schema (complex,
    float8, object, strings, sparse or quantized layouts) are refused.

    Parameters
    ----------
    src : path-like
    max_bytes : int, optional
        Largest size in bytes that one array, and all arrays together, may take in memory (default:
        `default_max_bytes`, half the memory available now).

    Raises
    ------
    DumpImportError
        The message names the member and its declared size.
    UnsafeFileError
        The file would need unpickling.
    """
    limit = _limit(max_bytes)
    path = Path(src)
    if not path.exists():
        raise DumpImportError(f"no such file: {path}")
    if path.is_dir():
        raise DumpImportError(f"{path} is a folder; expected a .npz/.pt/.pth/.safetensors/.nc file "
                              "(a Zarr store is opened with cg.open)")
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DumpImportError(f"{path} is not a regular file (a FIFO, device or socket); refusing to read it")
    if suffix == ".npz":
        return _read_npz(path, limit)
    if suffix in (".pt", ".pth"):
        return _read_pt(path, limit)
    if suffix == ".safetensors":
        return _read_safetensors(path, limit)
    raise DumpImportError(f"{path}: unknown dump format {suffix!r}; expected one of .npz, .pt, .pth, "
                          ".safetensors, .nc (or an xarray.Dataset)")


def import_dump(src: str | os.PathLike | xr.Dataset, out: str | os.PathLike | None = None, *,
                features_key: str | None = None, logits_key: str | None = None, labels_key: str | None = None,
                head: str | None = None, head_weight: Any = None, head_bias: Any = None,
                attrs: Mapping[str, Any] | None = None, mode: str = "w-",
                max_bytes: int | None = None) -> xr.Dataset:
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
        ``strength`` must be a number and ``seed`` a whole number.
    max_bytes : int, optional
        Limit on the memory one array (and all together) may take, checked from the file's metadata before
        allocation (default: half the memory available now); see `read_arrays`.

    Returns
    -------
    xarray.Dataset
    """
    attrs = dict(attrs or {})
    limit = _limit(max_bytes)
    if isinstance(src, xr.Dataset):
        _check_xarray_sizes(src, "xarray dump", limit)
        ds = _from_xarray(src, attrs)
    elif Path(src).suffix.lower() in (".nc", ".netcdf", ".h5", ".nc4"):
        ds = _read_netcdf(Path(src), attrs, limit)
    else:
        path = Path(src)
        arrays = read_arrays(path, max_bytes=limit)
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
                _refuse_nested_head(arrays, feats, logits, path)
        if logits is None and W is None:
            raise DumpImportError(f"{path}: has neither logits (looked for {list(LOGIT_KEYS)}) nor a head to "
                                  "compute them from")
        meta = {"source": path.name, **file_attrs, **attrs}
        _check_numeric_attrs(meta, str(path))
        try:
            ds = from_arrays(feats, logits, labels, head_weight=W, head_bias=b, attrs=meta)
        except SchemaError as exc:
            raise SchemaError(f"{path}: {exc}") from None
    if out is not None:
        from .store import save

        save(ds, out, mode=mode)
    return ds


def _refuse_nested_head(arrays: Mapping[str, Any], feats: Any, logits: Any, path: Path) -> None:
    """A head stored as several layers under a known prefix (an ``nn.Sequential`` such as ``classifier.0`` ...
    ``classifier.3``) is not guessed: `DumpImportError` naming the candidates and ``head=`` (``--head``)."""
    n_classes = int(np.shape(logits)[1]) if logits is not None and np.ndim(logits) == 2 else None
    nested = sorted(k for k in arrays if k.endswith(".weight") and np.ndim(arrays[k]) == 2
                    and any(k.startswith(p + ".") for p in HEAD_PREFIXES))
    if not nested or (n_classes is not None and not any(np.shape(arrays[k])[0] == n_classes for k in nested)):
        return
    final = [k[:-len(".weight")] for k in nested if n_classes is None or np.shape(arrays[k])[0] == n_classes]
    shapes = ", ".join(f"{k} {tuple(np.shape(arrays[k]))}" for k in nested[:6])
    raise DumpImportError(f"{path}: the head is not a single linear layer (weights {shapes}; an nn.Sequential head?). "
                          f"Pass head={final[-1]!r} naming the final linear layer, whose input the stored "
                          f"features (width {np.shape(feats)[-1]}) must be, or store head_weight/head_bias")


def import_study(sources: list[str | os.PathLike], study_dir: str | os.PathLike, *,
                 run_table: str | os.PathLike | None = None, mode: str = "w-", **kwargs: Any) -> list[str]:
    """Import several third-party dumps into one study folder, all or nothing.

    Parameters
    ----------
    sources : list of paths
        Dump files (any format :func:`import_dump` reads); their file names must differ.
    study_dir : path
        The study folder (created if missing). A run store, a file, or a non-empty folder holding no runs is
        refused.
    run_table : path to a CSV, optional
        One row per dump with a ``file`` column (file name or path, matched by name) and the run's
        attributes: ``run_id`` (default: the file's stem), ``regularizer``, ``strength``, ``seed``,
        ``model``, ... Read as text (`read_run_table`): ids such as ``007`` and values such as ``NA`` stay as
        written; ``strength`` and ``seed`` must be numbers. Values are stored as the runs' attributes, so the
        study's analysis and report treat these runs exactly like causalgeom's own.
    mode : {"w-", "w"}
        ``"w-"`` refuses run ids the study already has; ``"w"`` replaces them.
    **kwargs
        Passed to :func:`import_dump` (key names, head prefix, ``max_bytes``).

    Returns
    -------
    list of str
        The run ids written.

    Notes
    -----
    Every dump is read and validated first; then every run's lock is taken (a run being written by another
    process refuses the whole import), each run is saved to a hidden staging store in the study folder, and only
    then are the staged stores renamed into place. A failure before the renames leaves the study as it was.
    """
    from .study import open_study

    rows = read_run_table(run_table) if run_table is not None else {}
    names = [Path(s).name for s in sources]
    dup_names = sorted({n for n in names if names.count(n) > 1})
    if dup_names:
        raise DumpImportError(f"dump file names {dup_names} appear more than once; rows of a run table are matched "
                              "by file name, so each dump needs its own name")
    if rows:
        unknown = sorted(set(names) - set(rows))
        if unknown:
            raise DumpImportError(f"run table {run_table} has no row for {unknown}")
    run_ids = [str(rows.get(n, {}).get("run_id", Path(n).stem)) for n in names]
    dup = sorted({r for r in run_ids if run_ids.count(r) > 1})
    if dup:
        raise DumpImportError(f"duplicate run_id(s) {dup}; give each dump a unique run_id in the run table")
    _check_study_destination(Path(study_dir))
    # Read and validate everything first (run ids included: they become folder names), so a bad dump or run
    # table leaves the study untouched and creates nothing.
    datasets = []
    for src, name, run_id in zip(sources, names, run_ids):
        attrs = {**rows.get(name, {}), "run_id": run_id}
        datasets.append(import_dump(src, attrs=attrs, **kwargs))
    study = open_study(study_dir, create=True)
    _publish_all(study, datasets, mode)
    return run_ids


def _check_study_destination(path: Path) -> None:
    """Refuse a study destination that is a run store, a file, or a non-empty folder that holds no runs."""
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise DumpImportError(f"destination {path} is a file, not a study folder")
    if (path / "zarr.json").exists() or path.suffix == ".zarr":
        raise DumpImportError(f"destination {path} is a run store (RUN.zarr), not a study folder; import several "
                              "dumps into a study folder, or one dump into a RUN.zarr path")
    visible = [e for e in path.iterdir() if not e.name.startswith(".")]
    if visible and not any(e.name.endswith(".zarr") and e.is_dir() for e in visible):
        shown = sorted(e.name for e in visible)[:5]
        raise DumpImportError(f"destination {path} is a folder holding {shown}{' ...' if len(visible) > 5 else ''} "
                              "but no runs; give an empty or new folder, or an existing study")


def _publish_all(study: Any, datasets: list[xr.Dataset], mode: str) -> None:
    """Save ``datasets`` into ``study`` all or nothing: take every run's lock, stage, then rename into place."""
    import contextlib
    import shutil
    import uuid

    from ..errors import StoreExistsError
    from .store import save, store_lock

    targets = [study.run_path(ds.attrs["run_id"]) for ds in datasets]
    staged: list[Path] = []
    with contextlib.ExitStack() as locks:
        for target in sorted(targets):  # one order for every process
            locks.enter_context(store_lock(target))
        existing = sorted(t.stem for t in targets if os.path.lexists(t)) if mode == "w-" else []
        if existing:
            raise StoreExistsError(f"study {study.path} already has run(s) {existing}; nothing was imported "
                                   "(--overwrite / mode='w' replaces them)")
        published: list[tuple[Path, Path | None]] = []
        try:
            for ds, target in zip(datasets, targets):
                tmp = target.parent / f".{target.name}.staged-{uuid.uuid4().hex[:8]}"
                staged.append(tmp)
                save(ds, tmp, mode="w-")
            for tmp, target in zip(staged, targets):
                old = None
                if os.path.lexists(target):
                    old = target.parent / f".{target.name}.trash-{uuid.uuid4().hex[:8]}"
                    os.rename(target, old)
                os.rename(tmp, target)
                published.append((target, old))
        except BaseException:
            for target, old in reversed(published):  # undo the renames that happened
                shutil.rmtree(target, ignore_errors=True)
                if old is not None:
                    os.rename(old, target)
            raise
        finally:
            for tmp in staged:
                shutil.rmtree(tmp, ignore_errors=True)
                with contextlib.suppress(OSError):
                    os.unlink(tmp.parent / f".{tmp.name}.lock")
        for _, old in published:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)


#: Run-table columns that are always text, and those that must be numbers (``seed``: a whole number).
_TEXT_COLUMNS = ("file", "run_id", "regularizer", "model", "dataset", "split")
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def read_run_table(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read a run table (CSV) as text: file name -> the run's attributes.

    Every cell is read as written (no ``NA``/``None`` conversion, no numeric coercion: run id ``007`` stays
    ``"007"``). An empty cell leaves that attribute unset. ``strength`` must be a number and ``seed`` a whole
    number; any other column whose non-empty cells are all plain decimal numbers (no leading zeros) becomes
    numeric, the rest stay text. Two rows for one file are refused.

    Returns
    -------
    dict
        ``{file name: {column: value}}`` (the ``file`` column is matched by name, folders dropped).
    """
    import csv

    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            body = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DumpImportError(f"run table {path}: cannot read as a UTF-8 CSV file "
                              f"({getattr(exc, 'strerror', None) or exc})") from None
    if not header:
        raise DumpImportError(f"run table {path}: is empty; expected a header row with a 'file' column")
    header = [h.strip() for h in header]
    if "file" not in header:
        raise DumpImportError(f"run table {path}: needs a 'file' column naming each dump; columns: {header}")
    dup_cols = sorted({h for h in header if header.count(h) > 1})
    if dup_cols or "" in header:
        raise DumpImportError(f"run table {path}: column names must be unique and non-empty; got {header}")
    records = []
    for i, row in enumerate(body, start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DumpImportError(f"run table {path}: line {i} has {len(row)} fields, the header has {len(header)}")
        records.append((i, dict(zip(header, row))))
    numeric = set()
    for col in header:
        values = [r[col].strip() for _, r in records if r[col].strip()]
        if col in ("strength", "seed"):
            bad = [v for v in values if not _NUMBER.fullmatch(v) and not _is_float(v)]
            if bad:
                raise DumpImportError(f"run table {path}: column {col!r} must hold numbers, got {bad[:3]}")
            if col == "seed" and any(not float(v).is_integer() for v in values):
                raise DumpImportError(f"run table {path}: column 'seed' must hold whole numbers, got "
                                      f"{[v for v in values if not float(v).is_integer()][:3]}")
            numeric.add(col)
        elif col not in _TEXT_COLUMNS and values and all(_NUMBER.fullmatch(v) for v in values):
            numeric.add(col)
    out: dict[str, dict[str, Any]] = {}
    lines: dict[str, int] = {}
    for line, rec in records:
        name = Path(rec["file"].strip()).name
        if not name:
            raise DumpImportError(f"run table {path}: line {line} has an empty 'file' cell")
        if name in out:
            raise DumpImportError(f"run table {path}: file {name!r} has two rows (lines {lines[name]} and {line}); "
                                  "give each dump one row")
        lines[name] = line
        attrs: dict[str, Any] = {}
        for col, value in rec.items():
            value = value.strip() if col in numeric else value
            if col == "file" or value == "":
                continue
            if col in numeric:
                num = float(value)
                attrs[col] = int(num) if (col == "seed" or ("." not in value and "e" not in value.lower())) else num
            else:
                attrs[col] = value
        out[name] = attrs
    return out


def _is_float(v: str) -> bool:
    try:
        return np.isfinite(float(v))
    except ValueError:
        return False
