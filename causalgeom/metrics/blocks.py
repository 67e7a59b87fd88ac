"""Run one numpy function over blocks of samples, the same way for in-memory and dask-backed arrays.

The metric modules (`geometry`, `calibration`, `robustness`) write each computation once as a
numpy function of a block of samples; these helpers apply it to a whole run, lazily and in
bounded memory when the arrays are dask arrays chunked along ``sample`` (what `causalgeom.open`
returns), and block by block when they are numpy arrays. Both paths call the same function on
row blocks, so they give the same numbers (up to the order of floating-point sums).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import xarray as xr

from .._util.dask import compute_arrays
from ..dump import chunks
from ..errors import SchemaError

__all__ = ["is_dask", "raw", "run_array", "one_blas_thread", "sample_reduce", "sample_map", "compute", "check_run",
           "require_vars", "NUMPY_BLOCK_ROWS"]

#: Rows per block when a numpy array is reduced block by block (bounds temporaries).
NUMPY_BLOCK_ROWS = 1 << 15


def is_dask(x: Any) -> bool:
    """True if ``x`` (an array or a DataArray) is backed by dask."""
    data = x.data if isinstance(x, (xr.DataArray, xr.Variable)) else x
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - dask is a dependency
        return False
    return isinstance(data, da.Array)


def raw(x: xr.DataArray) -> Any:
    """The DataArray's numpy or dask array; dask arrays are rechunked to one chunk off the first axis."""
    data = x.data
    if is_dask(data) and data.ndim > 1 and any(len(c) > 1 for c in data.chunks[1:]):
        data = data.rechunk({i: -1 for i in range(1, data.ndim)})
    return data


def run_array(ds: xr.Dataset, name: str) -> Any:
    """Variable ``name`` of run ``ds`` for a block pass: read straight from its chunk files where the store allows
    it (an untouched, uncompressed store opened by `causalgeom.open`: `causalgeom.dump.chunks.direct_array`, the
    same bytes and CRC32C check as Zarr's read at a fraction of its CPU), else `raw` (through dask and Zarr)."""
    direct = chunks.direct_array(ds, name)
    return raw(ds[name]) if direct is None else direct


def one_blas_thread() -> Any:
    """One BLAS thread per Dask thread during the fused pass (its matmuls are small; two BLAS threads under each
    of two Dask threads on two cores made the pass 1.4x slower in bench_geometry). A no-op without threadpoolctl."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn brings it
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def sample_reduce(func: Callable[..., np.ndarray], *arrays: Any, shape: Sequence[int],
                  dtype: Any = np.float64, block_rows: int = NUMPY_BLOCK_ROWS) -> Any:
    """Sum ``func(*blocks)`` over row blocks of ``arrays`` (first axis = sample).

    Parameters
    ----------
    func : callable
        Takes aligned row blocks (numpy) of each array and returns an array of ``shape``.
        It must be additive over samples (a sum of per-sample terms).
    *arrays : numpy or dask arrays
        Same length along the first axis. Non-dask arrays are aligned to the dask chunks.
    shape : tuple of int
        Shape of ``func``'s result.
    dtype : numpy dtype
    block_rows : int
        Rows per block for the numpy path.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        A numpy array if no input is a dask array, else a lazy dask array.
    """
    shape = tuple(int(s) for s in shape)
    if not any(is_dask(a) for a in arrays):
        n = arrays[0].shape[0]
        out = np.zeros(shape, dtype=dtype)
        for start in range(0, max(n, 1), block_rows):
            stop = min(start + block_rows, n)
            out += func(*[a[start:stop] for a in arrays])
        return out
    import dask
    import dask.array as da

    _, aligned = _aligned_blocks(arrays)
    fn = dask.delayed(func, pure=False)
    parts = [da.from_delayed(fn(*blocks), shape=shape, dtype=dtype) for blocks in zip(*aligned)]
    return da.stack(parts).sum(axis=0)


def _aligned_blocks(arrays: Sequence[Any]) -> tuple[tuple[int, ...], list[Any]]:
    """Sample chunks of the first dask array and each array's row blocks as flat arrays of delayed objects."""
    import dask.array as da

    ref = next(a for a in arrays if is_dask(a))
    chunks0 = ref.chunks[0]
    aligned = []
    for a in arrays:
        a = a if is_dask(a) else da.from_array(np.asarray(a), chunks=(chunks0,) + tuple(np.shape(a)[1:]))
        a = a.rechunk({0: chunks0, **{i: -1 for i in range(1, a.ndim)}})
        aligned.append(a.to_delayed(optimize_graph=False).reshape(-1))
    return chunks0, aligned


def sample_map(func: Callable[..., np.ndarray], *arrays: Any, ncols: int, dtype: Any = np.float64,
               block_rows: int = NUMPY_BLOCK_ROWS) -> Any:
    """Apply ``func(*blocks) -> (rows, ncols)`` to aligned row blocks of ``arrays``; stack the results.

    The per-sample counterpart of `sample_reduce`: one task per sample chunk that sees the chunk of every
    array at once, so a pass computing many quantities from the same chunk reads it once.

    Parameters
    ----------
    func : callable
        Takes aligned row blocks (numpy) of each array, returns an array of shape (rows, ncols).
    *arrays : numpy or dask arrays
        Same length n along the first axis; non-dask arrays are aligned to the dask chunks.
    ncols : int
    dtype : numpy dtype
    block_rows : int
        Rows per block for the numpy path.

    Returns
    -------
    numpy.ndarray or dask.array.Array, shape (n, ncols)
    """
    if not any(is_dask(a) for a in arrays):
        n = arrays[0].shape[0]
        out = np.empty((n, ncols), dtype=dtype)
        for start in range(0, n, block_rows):
            stop = min(start + block_rows, n)
            out[start:stop] = func(*[a[start:stop] for a in arrays])
        return out
    import dask
    import dask.array as da

    chunks0, aligned = _aligned_blocks(arrays)
    fn = dask.delayed(func, pure=False)
    parts = [da.from_delayed(fn(*blocks), shape=(int(c), ncols), dtype=dtype)
             for c, blocks in zip(chunks0, zip(*aligned))]
    return da.concatenate(parts, axis=0) if parts else da.zeros((0, ncols), dtype=dtype)


def _is_dask_collection(x: Any) -> bool:
    """A dask array, ``dask.delayed`` object or other dask collection (not an xarray object)."""
    if is_dask(x):
        return True
    if isinstance(x, (xr.Dataset, xr.DataArray, xr.Variable)) or not hasattr(x, "__dask_graph__"):
        return False
    from dask.base import is_dask_collection

    return is_dask_collection(x)


def compute(*objs: Any) -> tuple[Any, ...]:
    """Compute dask-backed objects in one pass (shared chunks are read once); others pass through.

    The one compute of causalgeom (``causalgeom.scale.compute`` is this function). Accepts xarray
    Datasets / DataArrays, dask arrays, ``dask.delayed`` objects, and dicts / lists / tuples of them. The
    underlying dask arrays are computed with one ``dask.compute`` call and put back into copies of
    the xarray objects. (Handing xarray objects whose variables share graph layers to
    ``dask.compute`` directly loses dependencies under graph optimization in this dask/xarray
    generation, pydata/xarray#11329; raw dask arrays are not affected.)
    """
    if not any(_is_lazy(o) for o in objs):
        return objs
    arrays: list[Any] = []

    def collect(obj: Any) -> Any:
        if isinstance(obj, xr.Dataset):
            return ("ds", obj, {n: collect(v.data) for n, v in obj.variables.items() if is_dask(v.data)})
        if isinstance(obj, xr.DataArray):
            return ("da", obj, collect(obj.to_dataset(name="__cg_value__")))
        if isinstance(obj, dict):
            return ("dict", {k: collect(v) for k, v in obj.items()})
        if isinstance(obj, (list, tuple)):
            return ("seq", type(obj), [collect(v) for v in obj])
        if _is_dask_collection(obj):
            arrays.append(obj)
            return ("arr", len(arrays) - 1)
        return ("raw", obj)

    def rebuild(spec: Any, values: tuple[Any, ...]) -> Any:
        tag = spec[0]
        if tag == "arr":
            return values[spec[1]]
        if tag == "raw":
            return spec[1]
        if tag == "dict":
            return {k: rebuild(v, values) for k, v in spec[1].items()}
        if tag == "seq":
            return spec[1](rebuild(v, values) for v in spec[2])
        if tag == "ds":
            out = spec[1].copy(deep=False)
            for name, sub in spec[2].items():
                var = out.variables[name]
                out.variables[name].data = np.asarray(rebuild(sub, values)).reshape(var.shape)
            return out
        if tag == "da":
            obj = spec[1]
            out = rebuild(spec[2], values)["__cg_value__"]
            out.name = obj.name
            return out
        raise AssertionError(tag)  # pragma: no cover

    specs = [collect(o) for o in objs]
    values = compute_arrays(*arrays)  # on the active Dask cluster, if any; worker loss -> WorkerLostError
    return tuple(rebuild(s, values) for s in specs)


def _is_lazy(obj: Any) -> bool:
    if isinstance(obj, xr.Dataset):
        return any(is_dask(v) for v in obj.variables.values())
    if isinstance(obj, (xr.DataArray, xr.Variable)):
        return is_dask(obj) or any(is_dask(c) for c in getattr(obj, "coords", {}).values())
    if isinstance(obj, dict):
        return any(_is_lazy(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_is_lazy(v) for v in obj)
    return _is_dask_collection(obj)


def check_run(ds: Any, what: str) -> xr.Dataset:
    """Return ``ds`` if it is an xarray Dataset, else raise :class:`SchemaError` naming ``what``."""
    if not isinstance(ds, xr.Dataset):
        raise SchemaError(f"{what}: expected an xarray.Dataset holding one schema-v1 run, got {type(ds).__name__}")
    return ds


def require_vars(ds: xr.Dataset, names: Sequence[str], what: str) -> None:
    """Raise :class:`SchemaError` if any variable in ``names`` is missing from ``ds``."""
    check_run(ds, what)
    missing = [n for n in names if n not in ds.variables]
    if missing:
        raise SchemaError(f"{what} needs variable(s) {missing}, which this dump does not have "
                          f"(run_id={ds.attrs.get('run_id')!r}; present: {sorted(ds.data_vars)})")
