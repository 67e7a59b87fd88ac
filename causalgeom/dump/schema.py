"""The dump contract (schema v1): variable specs, `validate`, and `from_arrays`.

One run is one :class:`xarray.Dataset` whose variables, dims and dtypes are listed in
:data:`VARIABLES` and documented in ``docs/schema.md``.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import xarray as xr

from ..errors import HeadMissingError, SchemaError

__all__ = [
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "VARIABLES",
    "VarSpec",
    "LOGITS_RTOL",
    "LOGITS_ATOL",
    "RUN_ID_PATTERN",
    "validate",
    "from_arrays",
    "has_head",
    "require_head",
    "normalize_attrs",
    "check_run_id",
    "FEATURES_DTYPES",
    "ENCODED_DTYPE_ATTR",
    "STORED_DTYPE_ATTR",
    "UNIT_ROUNDOFF",
    "features_storage",
    "bfloat16_bits_to_float32",
]

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)

#: Default tolerance of the check ``|logits - (features @ W.T + b)| <= LOGITS_ATOL + LOGITS_RTOL * max|logits|``.
LOGITS_RTOL = 1e-3
LOGITS_ATOL = 1e-4

#: Precisions ``features`` may be stored at (``extract(features_dtype=...)``). float32 and float16 are plain Zarr
#: arrays; Zarr 3 has no bfloat16, so bfloat16 features are stored as their uint16 bit patterns with the variable
#: attribute ``encoded_dtype = "bfloat16"`` (`ENCODED_DTYPE_ATTR`). Every half-precision store's ``features`` also
#: carries ``stored_dtype`` (`STORED_DTYPE_ATTR`: ``"float16"`` or ``"bfloat16"``); `causalgeom.open` decodes both to
#: float32 (exactly) and keeps ``stored_dtype`` on the decoded variable. No ``stored_dtype``: stored as float32.
FEATURES_DTYPES = ("float32", "float16", "bfloat16")
#: Variable attribute of ``features`` naming the dtype its integer bit patterns encode (only ``"bfloat16"``).
ENCODED_DTYPE_ATTR = "encoded_dtype"
#: Variable attribute of ``features`` naming the precision it was stored at (only for half precision).
STORED_DTYPE_ATTR = "stored_dtype"
#: Unit roundoff u of round-to-nearest storage (relative error of a coordinate in the normal range is <= u):
#: 2^-p for p significant bits (float16: 11, bfloat16: 8); docs/methods_metrics.md, "Half-precision features".
UNIT_ROUNDOFF = {"float32": 2.0 ** -24, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
#: Largest absolute rounding error below the normal range (half the spacing of the subnormals).
_SUBNORMAL_ERROR = {"float32": 2.0 ** -150, "float16": 2.0 ** -25, "bfloat16": 2.0 ** -134}

#: run ids become folder names: letters, digits, ``.``, ``_``, ``-``; no leading dot.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True)
class VarSpec:
    """Specification of one schema variable."""

    name: str
    dims: tuple[str, ...]
    dtype: str  # numpy kind family: "float32", "int64", "bool"
    required: bool
    meaning: str
    finite: bool = False
    trailing_dims_free: bool = False  # adv_features / adv_logits carry a trailing feature/class dim


VARIABLES: dict[str, VarSpec] = {
    v.name: v
    for v in [
        VarSpec("features", ("sample", "feature"), "float32", True,
                "exact input of the final linear layer, eval mode", finite=True),
        VarSpec("logits", ("sample", "class"), "float32", True, "model output", finite=True),
        VarSpec("label", ("sample",), "int64", True, "true class in [0, K)"),
        VarSpec("head_weight", ("class", "feature"), "float32", False, "final linear layer W", finite=True),
        VarSpec("head_bias", ("class",), "float32", False, "final linear layer b", finite=True),
        VarSpec("adv_correct", ("attack", "eps", "sample"), "bool", False,
                "still correctly classified after the attack"),
        VarSpec("adv_margin", ("attack", "eps", "sample"), "float32", False,
                "logit margin (true - best other) after the attack"),
        VarSpec("adv_features", ("attack", "eps", "sample", "feature"), "float32", False,
                "features of the adversarial example"),
        VarSpec("adv_logits", ("attack", "eps", "sample", "class"), "float32", False,
                "logits of the adversarial example"),
        VarSpec("min_flip_eps", ("attack", "sample"), "float32", False,
                "smallest swept eps that flips the sample (inf: never flipped, 0: misclassified clean)"),
    ]
}

#: Attributes every run carries (``from_arrays`` fills defaults where it can).
REQUIRED_ATTRS = ("schema_version", "run_id")
KNOWN_ATTRS = (
    "schema_version", "run_id", "model", "dataset", "split", "regularizer", "regularizer_params",
    "strength", "seed", "feature_layer", "input_range", "normalization", "versions", "created",
    "source", "logits_source", "logits_rtol", "logits_atol",
)


def normalize_attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return ``attrs`` as plain JSON types (what a Zarr store round-trips exactly).

    Raises
    ------
    SchemaError
        If an attribute value cannot be represented in JSON.
    """
    out: dict[str, Any] = {}
    for key, value in dict(attrs or {}).items():
        if not isinstance(key, str):
            raise SchemaError(f"attribute names must be strings, got {key!r}")
        try:
            out[key] = json.loads(json.dumps(_to_jsonable(value), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise SchemaError(
                f"attribute {key!r}: value {value!r} is not JSON-serializable ({exc}); "
                "use numbers, strings, booleans, lists or dicts"
            ) from None
    return out


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    return value


def check_run_id(run_id: Any) -> str:
    """Return ``run_id`` if it is a safe folder name, else raise :class:`SchemaError`."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id) or ".." in run_id:
        raise SchemaError(
            f"attribute 'run_id': expected 1-128 characters of letters, digits, '.', '_' or '-' "
            f"(not starting with '.' and without '..'), got {run_id!r}"
        )
    return run_id


def has_head(ds: xr.Dataset) -> bool:
    """True if the dump carries the final linear layer (``head_weight``)."""
    return "head_weight" in ds.variables


def require_head(ds: xr.Dataset, what: str) -> tuple[xr.DataArray, xr.DataArray]:
    """Return ``(W, b)`` or raise :class:`HeadMissingError` naming the analysis ``what``.

    A missing ``head_bias`` with a present ``head_weight`` is read as ``b = 0``.
    """
    if not has_head(ds):
        raise HeadMissingError(
            f"{what} needs the final linear layer, but this dump has no 'head_weight' "
            f"(run_id={ds.attrs.get('run_id')!r}); import it with head_weight=/head_bias= or a "
            "state dict holding fc.weight/fc.bias"
        )
    W = ds["head_weight"]
    if "head_bias" in ds.variables:
        return W, ds["head_bias"]
    return W, xr.DataArray(np.zeros(W.shape[0], dtype=np.float32), dims=("class",), name="head_bias")


def _dtype_ok(arr: xr.DataArray, expected: str) -> bool:
    return np.dtype(arr.dtype) == np.dtype(expected)


def features_storage(arr: xr.DataArray) -> str:
    """The precision a ``features`` variable holds: ``"float32"``, ``"float16"`` or ``"bfloat16"``.

    A raw store array says it by its dtype (float32, float16) or by ``encoded_dtype = "bfloat16"`` on uint16 bit
    patterns; a decoded one (float32 from `causalgeom.open`) by its ``stored_dtype`` attribute.

    Parameters
    ----------
    arr : xarray.DataArray
        The ``features`` variable, shape (sample, feature).

    Raises
    ------
    SchemaError
        Any other dtype, or an ``encoded_dtype`` / ``stored_dtype`` attribute that disagrees with the dtype.
    """
    dtype = np.dtype(arr.dtype)
    encoded = arr.attrs.get(ENCODED_DTYPE_ATTR)
    stored = arr.attrs.get(STORED_DTYPE_ATTR)
    allowed = ("float32, float16, or uint16 bit patterns of bfloat16 with the attribute "
               f"{ENCODED_DTYPE_ATTR}='bfloat16'")
    if encoded is not None:
        if encoded != "bfloat16" or dtype != np.uint16:
            raise SchemaError(f"variable 'features': attribute {ENCODED_DTYPE_ATTR}={encoded!r} on dtype {dtype}; "
                              f"expected {allowed}")
        return "bfloat16"
    if dtype == np.float16:
        return "float16"
    if dtype == np.float32:
        if stored is None:
            return "float32"
        if stored not in FEATURES_DTYPES:
            raise SchemaError(f"variable 'features': attribute {STORED_DTYPE_ATTR}={stored!r}; expected one of "
                              f"{list(FEATURES_DTYPES)}")
        return str(stored)
    raise SchemaError(f"variable 'features': expected dtype {allowed}; got {dtype}")


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Decode bfloat16 bit patterns (uint16) to float32, exactly: ``(bits.astype(uint32) << 16).view(float32)``.

    bfloat16 is the upper half of a float32 (1 sign, 8 exponent, 7 mantissa bits), so every value, inf and NaN
    maps to the float32 with the same upper 16 bits and zero lower bits.

    Parameters
    ----------
    bits : ndarray of uint16, any shape

    Returns
    -------
    ndarray of float32, same shape
    """
    bits = np.asarray(bits)
    if bits.dtype != np.uint16:
        raise SchemaError(f"variable 'features': bfloat16 bit patterns must be uint16, got {bits.dtype}")
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _decoded_features(ds: xr.Dataset) -> tuple[Any, str]:
    """``features`` as float32 data (dask or numpy, decoded lazily) and the precision it holds."""
    arr = ds["features"]
    kind = features_storage(arr)
    data = arr.data
    if np.dtype(arr.dtype) == np.uint16:
        data = data.map_blocks(bfloat16_bits_to_float32, dtype=np.float32) if hasattr(data, "map_blocks") \
            else bfloat16_bits_to_float32(data)
    elif np.dtype(arr.dtype) == np.float16:
        data = data.astype(np.float32)
    return data, kind


def validate(ds: xr.Dataset, *, check_values: bool = True, logits_rtol: float | None = None,
             logits_atol: float | None = None) -> xr.Dataset:
    """Check ``ds`` against schema v1 and return it unchanged.

    Structure (names, dims, dtypes, sizes, attributes) is always checked. With
    ``check_values=True`` (default) the values are checked too, chunk by chunk for
    dask-backed data (one pass over the store): features/logits/head finite, labels in
    ``[0, K)``, and ``logits`` consistent with ``features @ head_weight.T + head_bias``:
    ``max|logits - (f W^T + b)| <= atol + rtol * max|logits|`` with ``rtol`` /
    ``atol`` from the arguments, else the dump's ``logits_rtol``/``logits_atol`` attrs,
    else :data:`LOGITS_RTOL` / :data:`LOGITS_ATOL`.

    Parameters
    ----------
    ds : xarray.Dataset
        One run (see ``docs/schema.md``).
    check_values : bool
        Also check the values (NaN/Inf, label range, logit consistency).
    logits_rtol, logits_atol : float, optional
        Override the logit-consistency tolerance.

    Returns
    -------
    xarray.Dataset
        ``ds`` itself.

    Raises
    ------
    SchemaError
        Naming the variable and the problem.
    """
    if not isinstance(ds, xr.Dataset):
        raise SchemaError(f"expected an xarray.Dataset, got {type(ds).__name__}")
    version = ds.attrs.get("schema_version")
    if version is None:
        raise SchemaError("attribute 'schema_version' is missing (expected one of "
                          f"{list(SUPPORTED_SCHEMA_VERSIONS)})")
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or int(version) not in SUPPORTED_SCHEMA_VERSIONS:
        raise SchemaError(f"attribute 'schema_version': unknown version {version!r}; this causalgeom "
                          f"reads {list(SUPPORTED_SCHEMA_VERSIONS)}")
    check_run_id(ds.attrs.get("run_id"))

    for name in ("features", "logits", "label"):
        if name not in ds.data_vars:
            raise SchemaError(f"variable {name!r} is missing (required: features, logits, label)")
    for name in ds.data_vars:
        if name not in VARIABLES:
            raise SchemaError(f"variable {name!r} is not part of schema v1 (known: {sorted(VARIABLES)})")
    for name, spec in VARIABLES.items():
        if name not in ds.data_vars:
            continue
        arr = ds[name]
        if tuple(arr.dims) != spec.dims:
            missing = [d for d in spec.dims if d not in arr.dims]
            extra = [d for d in arr.dims if d not in spec.dims]
            detail = []
            if missing:
                detail.append(f"missing dims {missing}")
            if extra:
                detail.append(f"extra dims {extra}")
            if not detail:
                detail.append("dims in the wrong order")
            raise SchemaError(f"variable {name!r}: expected dims {spec.dims}, got {tuple(arr.dims)} "
                              f"({'; '.join(detail)})")
        if name == "features":
            features_storage(arr)
        elif not _dtype_ok(arr, spec.dtype):
            raise SchemaError(f"variable {name!r}: expected dtype {spec.dtype}, got {arr.dtype}")
    if "head_bias" in ds.data_vars and "head_weight" not in ds.data_vars:
        raise SchemaError("variable 'head_bias' is present without 'head_weight'")
    if ("adv_margin" in ds.data_vars) != ("adv_correct" in ds.data_vars):
        raise SchemaError("variables 'adv_correct' and 'adv_margin' must be present together")

    n = ds.sizes.get("sample", 0)
    if n == 0:
        raise SchemaError("dataset is empty: dimension 'sample' has size 0")
    if ds.sizes.get("feature", 0) == 0:
        raise SchemaError("variable 'features': dimension 'feature' has size 0")
    K = ds.sizes.get("class", 0)
    if K < 2:
        raise SchemaError(f"variable 'logits': need at least 2 classes, got {K}")
    # Sizes are shared by name in xarray, so "K disagrees between logits and head" shows up as a
    # conflicting dimension when the Dataset is built; from_arrays reports it with names.
    for coord in ("attack", "eps"):
        if coord in ds.dims and coord not in ds.coords:
            raise SchemaError(f"dimension {coord!r} needs a coordinate (attack names / eps values)")
    if "eps" in ds.coords:
        eps = np.asarray(ds["eps"].values, dtype=float)
        if np.any(~np.isfinite(eps)) or np.any(eps < 0):
            raise SchemaError(f"coordinate 'eps': values must be finite and >= 0, got {eps.tolist()}")
        if eps.size > 1 and np.any(np.diff(eps) <= 0):
            raise SchemaError(f"coordinate 'eps': values must be strictly increasing, got {eps.tolist()}")

    if check_values:
        _check_values(ds, logits_rtol, logits_atol)
    return ds


def _check_values(ds: xr.Dataset, rtol: float | None, atol: float | None) -> None:
    import dask

    K = ds.sizes["class"]
    checks: dict[str, Any] = {}
    f, kind = _decoded_features(ds)
    for name, spec in VARIABLES.items():
        if spec.finite and name in ds.data_vars:
            checks[f"nonfinite:{name}"] = (~np.isfinite(f if name == "features" else ds[name].data)).sum()
    lab = ds["label"].data
    checks["label_min"] = lab.min()
    checks["label_max"] = lab.max()
    if "head_weight" in ds.data_vars:
        W = ds["head_weight"].data
        b = ds["head_bias"].data if "head_bias" in ds.data_vars else 0.0
        lg = ds["logits"].data
        recon = f.astype(np.float64) @ W.astype(np.float64).T + (b.astype(np.float64) if not isinstance(b, float) else b)
        checks["logit_dev"] = abs(lg.astype(np.float64) - recon).max()
        checks["logit_max"] = abs(lg.astype(np.float64)).max()
        if kind != "float32":
            # logits came from the float32 features; the stored ones are rounded: |f - f~| <= u/(1-u) |f~| + eta
            absW = abs(W.astype(np.float64))
            checks["logit_rounding"] = (abs(f.astype(np.float64)) @ absW.T).max()
            checks["head_abs_rowsum"] = absW.sum(axis=1).max()
    (vals,) = dask.compute(checks)
    for key, value in vals.items():
        if key.startswith("nonfinite:") and int(value) > 0:
            name = key.split(":", 1)[1]
            raise SchemaError(f"variable {name!r}: contains {int(value)} NaN/Inf values")
    lo, hi = int(vals["label_min"]), int(vals["label_max"])
    if lo < 0 or hi >= K:
        raise SchemaError(f"variable 'label': values must lie in [0, {K}) (K from 'logits'), "
                          f"got range [{lo}, {hi}]")
    if "logit_dev" in vals:
        rtol = float(ds.attrs.get("logits_rtol", LOGITS_RTOL)) if rtol is None else rtol
        atol = float(ds.attrs.get("logits_atol", LOGITS_ATOL)) if atol is None else atol
        dev, scale = float(vals["logit_dev"]), float(vals["logit_max"])
        tol = atol + rtol * scale
        rounding = ""
        if "logit_rounding" in vals:
            u = UNIT_ROUNDOFF[kind]
            extra = u / (1 - u) * float(vals["logit_rounding"]) + _SUBNORMAL_ERROR[kind] * float(vals["head_abs_rowsum"])
            tol += extra
            rounding = f" + {kind} storage of the features {extra:.6g}"
        if not dev <= tol:
            raise SchemaError(
                f"variable 'logits': inconsistent with features @ head_weight.T + head_bias: max "
                f"deviation {dev:.6g} > tolerance {tol:.6g} (atol={atol:g} + rtol={rtol:g} * "
                f"max|logits|={scale:.6g}{rounding})")


def _as_numpy(x: Any, name: str) -> np.ndarray:
    try:
        import torch
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            if x.dtype == torch.bfloat16:
                x = x.float()
            return x.numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:
        arr = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - anything numpy cannot take
        raise SchemaError(f"variable {name!r}: cannot convert {type(x).__name__} to an array ({exc})") from None
    if arr.dtype == object:
        raise SchemaError(f"variable {name!r}: expected a numeric array, got dtype object (ragged or mixed input)")
    return arr


def _float32(x: Any, name: str, ndim: int) -> np.ndarray:
    arr = _as_numpy(x, name)
    if arr.ndim != ndim:
        raise SchemaError(f"variable {name!r}: expected {ndim} dimensions, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)) or arr.dtype == bool:
        raise SchemaError(f"variable {name!r}: expected a floating-point array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and arr.dtype.itemsize > 4:
        big = np.abs(arr[np.isfinite(arr)]).max(initial=0.0)
        if big > np.finfo(np.float32).max:
            raise SchemaError(f"variable {name!r}: values up to {big:.3g} overflow float32")
    return np.ascontiguousarray(arr, dtype=np.float32)


def from_arrays(features: Any, logits: Any | None, labels: Any, *, head_weight: Any | None = None,
                head_bias: Any | None = None, attrs: Mapping[str, Any] | None = None,
                adv_correct: Any | None = None, adv_margin: Any | None = None,
                attacks: list[str] | None = None, eps: list[float] | None = None,
                validate_values: bool = True) -> xr.Dataset:
    """Build a validated schema-v1 Dataset from numpy arrays or torch tensors.

    Parameters
    ----------
    features : array, shape (n_samples, n_features)
        Input of the final linear layer. Cast to float32.
    logits : array, shape (n_samples, n_classes), or None
        Model output. ``None`` computes ``features @ head_weight.T + head_bias`` (needs the head;
        recorded as ``attrs["logits_source"] = "computed"``).
    labels : array of int, shape (n_samples,)
        True classes in ``[0, n_classes)``.
    head_weight : array, shape (n_classes, n_features), optional
    head_bias : array, shape (n_classes,), optional
    attrs : mapping, optional
        Provenance; must be JSON-serializable. ``run_id`` defaults to ``"run"``.
    adv_correct, adv_margin : array, shape (n_attacks, n_eps, n_samples), optional
        Attack outcomes, with ``attacks`` (names) and ``eps`` (values) as coordinates.
    validate_values : bool
        Run the value checks of :func:`validate` (default True).

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    SchemaError
    """
    f = _float32(features, "features", 2)
    lab = _as_numpy(labels, "label")
    if lab.ndim != 1:
        raise SchemaError(f"variable 'label': expected 1 dimension, got shape {lab.shape}")
    if np.issubdtype(lab.dtype, np.floating):
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise SchemaError("variable 'label': expected integer class indices, got non-integer floats")
    elif not np.issubdtype(lab.dtype, np.integer):
        raise SchemaError(f"variable 'label': expected integer class indices, got dtype {lab.dtype}")
    lab = lab.astype(np.int64)
    if lab.shape[0] != f.shape[0]:
        raise SchemaError(f"variable 'label': {lab.shape[0]} samples but 'features' has {f.shape[0]}")
    attrs = normalize_attrs(attrs)

    W = b = None
    if head_weight is not None:
        W = _float32(head_weight, "head_weight", 2)
        if W.shape[1] != f.shape[1]:
            raise SchemaError(f"variable 'head_weight': feature dim {W.shape[1]} disagrees with "
                              f"'features' feature dim {f.shape[1]}")
        if head_bias is not None:
            b = _float32(head_bias, "head_bias", 1)
            if b.shape[0] != W.shape[0]:
                raise SchemaError(f"variable 'head_bias': {b.shape[0]} classes but 'head_weight' has {W.shape[0]}")
    elif head_bias is not None:
        raise SchemaError("variable 'head_bias' given without 'head_weight'")

    if logits is None:
        if W is None:
            raise SchemaError("variable 'logits' is missing and cannot be computed without 'head_weight'")
        lg = (f.astype(np.float64) @ W.astype(np.float64).T + (0.0 if b is None else b)).astype(np.float32)
        attrs.setdefault("logits_source", "computed")
    else:
        lg = _float32(logits, "logits", 2)
    if lg.shape[0] != f.shape[0]:
        raise SchemaError(f"variable 'logits': {lg.shape[0]} samples but 'features' has {f.shape[0]}")
    if W is not None and W.shape[0] != lg.shape[1]:
        raise SchemaError(f"variable 'head_weight': {W.shape[0]} classes (K) disagrees with 'logits' K={lg.shape[1]}")

    data_vars: dict[str, Any] = {
        "features": (("sample", "feature"), f),
        "logits": (("sample", "class"), lg),
        "label": (("sample",), lab),
    }
    if W is not None:
        data_vars["head_weight"] = (("class", "feature"), W)
    if b is not None:
        data_vars["head_bias"] = (("class",), b)
    coords: dict[str, Any] = {}
    if adv_correct is not None or adv_margin is not None:
        if adv_correct is None or adv_margin is None or attacks is None or eps is None:
            raise SchemaError("attack outcomes need adv_correct, adv_margin, attacks and eps together")
        ac = _as_numpy(adv_correct, "adv_correct")
        if ac.dtype != bool:
            raise SchemaError(f"variable 'adv_correct': expected dtype bool, got {ac.dtype}")
        am = _float32(adv_margin, "adv_margin", 3)
        expect = (len(attacks), len(eps), f.shape[0])
        for name, arr in (("adv_correct", ac), ("adv_margin", am)):
            if arr.shape != expect:
                raise SchemaError(f"variable {name!r}: expected shape (attack, eps, sample)={expect}, got {arr.shape}")
        data_vars["adv_correct"] = (("attack", "eps", "sample"), ac)
        data_vars["adv_margin"] = (("attack", "eps", "sample"), am)
        coords["attack"] = ("attack", np.asarray([str(a) for a in attacks], dtype=object))
        coords["eps"] = ("eps", np.asarray(eps, dtype=np.float64))
    attrs.setdefault("run_id", "run")
    attrs["schema_version"] = SCHEMA_VERSION
    attrs.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    attrs.setdefault("versions", package_versions())
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    return validate(ds, check_values=validate_values)


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a dump's numbers (recorded in ``attrs['versions']``)."""
    from importlib import metadata

    out = {}
    for pkg in ("causalgeom", "torch", "torchvision", "numpy", "xarray", "zarr"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out

