"""The exception hierarchy: every error causalgeom raises on purpose derives from `CausalGeomError`."""

from __future__ import annotations

__all__ = [
    "CausalGeomError",
    "SchemaError",
    "HeadMissingError",
    "StoreError",
    "IncompleteStoreError",
    "StoreExistsError",
    "StoreLockedError",
    "DumpImportError",
    "UnsafeFileError",
    "ConfigError",
    "WeightsNotFoundError",
    "QueryError",
    "WorkerLostError",
]


class CausalGeomError(Exception):
    """Base class of every error that causalgeom raises deliberately."""


class SchemaError(CausalGeomError, ValueError):
    """A dataset breaks the dump contract (schema v1); the message names the variable."""


class HeadMissingError(SchemaError):
    """An analysis needs the final linear layer (``head_weight``/``head_bias``) but the dump has none."""


class StoreError(CausalGeomError, OSError):
    """A Zarr store or study folder cannot be read or written as asked."""


class IncompleteStoreError(StoreError):
    """A store exists but was not completely written (no completion mark, or missing chunks)."""


class StoreExistsError(StoreError, FileExistsError):
    """Refusing to overwrite an existing store without ``mode="w"``."""


class StoreLockedError(StoreError):
    """Another process holds the write lock of this store."""


class DumpImportError(CausalGeomError, ValueError):
    """A third-party dump cannot be imported (unknown format, missing keys, bad shapes)."""


class UnsafeFileError(DumpImportError):
    """A file would need unpickling (running code) to be read, and was refused."""


class ConfigError(CausalGeomError, ValueError):
    """A training / extraction / study configuration is invalid."""


class WeightsNotFoundError(ConfigError):
    """Pretrained weights are not in the local cache (and downloading was not allowed); the message names the
    file and where to put it."""


class QueryError(CausalGeomError, ValueError):
    """A causal query or query file is invalid (unknown column, level, method...)."""


class WorkerLostError(CausalGeomError, RuntimeError):
    """A Dask worker died while computing and the task could not be completed elsewhere."""
