"""The options of an extraction: `ExtractConfig` and its checks, the resolved `_Job`, seeds, chunk size, amp and shard."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from ..._util.checks import check_choice
from ...errors import ConfigError
from ...dump.schema import FEATURES_DTYPES, RUN_ID_PATTERN, package_versions
from ...dump.store import COMPRESSORS


#: Folder inside a store being extracted: ``plan.json`` and one marker file per finished sample chunk.
PROGRESS_DIR = ".progress"
DEFAULT_BATCH_SIZE = 256
_MAX_CHUNK = 4096
_TARGET_CHUNK_BYTES = 32 * 2**20


def _amp_modes(amp: Any) -> tuple[bool, bool]:
    if amp in (False, None, "none"):
        return False, False
    if amp in (True, "clean"):
        return True, False
    if amp == "all":
        return True, True
    raise ConfigError(f"amp: expected False, True/'clean' (bf16 for the clean pass) or 'all' (also attack passes), "
                      f"got {amp!r}")


def _shard(shard: Any) -> tuple[int, int] | None:
    if shard is None:
        return None
    try:
        rank, world = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise ConfigError(f"shard: expected (rank, world) integers, got {shard!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"shard: expected 0 <= rank < world, got rank={rank}, world={world}")
    return rank, world


def _base_seed(generator: torch.Generator | int | None) -> int:
    if generator is None:
        return 0
    if isinstance(generator, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return int(generator)
    raise ConfigError(f"generator: expected None, an int seed or a torch.Generator, got {type(generator).__name__}")


def _chunk_generator(seed: int, chunk: int, device: torch.device) -> torch.Generator:
    h = hashlib.sha256(f"{seed}:{chunk}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(h[:8], "little") & (2**63 - 1))


def _default_chunk(batch_size: int, per_sample_bytes: int) -> int:
    cap = max(1, min(_MAX_CHUNK, _TARGET_CHUNK_BYTES // max(1, per_sample_bytes)))
    if cap >= batch_size:
        return (cap // batch_size) * batch_size
    return cap


def _digest(*arrays: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _cached_versions() -> str:
    return json.dumps(package_versions())


def _package_versions() -> dict[str, str]:
    """``schema.package_versions()``, looked up once per process (importlib.metadata is slow)."""
    return json.loads(_cached_versions())


def _default_run_id(out: Path) -> str:
    stem = out.name[:-5] if out.name.endswith(".zarr") else out.name
    return stem if RUN_ID_PATTERN.match(stem) and ".." not in stem else "run"


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """The options of :func:`extract` (everything but the model, the data and the output path).

    ``extract(model, data, out, head="fc", amp=True)`` and
    ``extract(model, data, out, ExtractConfig(head="fc", amp=True))`` are the same call; keywords given
    next to a config replace its fields. The fields are documented in :func:`extract`.
    """

    head: str | None = None
    attacks: Any = None
    eps: Any = None
    batch_size: int | None = None
    device: str | torch.device = "cpu"
    attrs: Mapping[str, Any] | None = None
    shard: tuple[int, int] | None = None
    amp: bool | str = False
    progress: bool = True
    mode: str = "w-"
    save_adv: bool = False
    sample_chunk: int | None = None
    generator: torch.Generator | int | None = None
    num_workers: int | None = None
    queue_size: int = 8
    compressor: str | None = None
    features_dtype: str | None = "float32"
    feature_layer: str | None = None

    @classmethod
    def from_options(cls, config: ExtractConfig | None = None, **options: Any) -> ExtractConfig:
        """``config`` (default: all defaults) with ``options`` replacing fields; unknown names raise ConfigError."""
        if config is not None and not isinstance(config, ExtractConfig):
            raise ConfigError(f"config: expected an ExtractConfig or None, got {type(config).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ConfigError(f"extract: unknown option(s) {unknown}; expected some of {names}")
        return dataclasses.replace(config or cls(), **options)

    def check(self) -> None:
        """Check the options that need no model or data (the rest are checked by `extract`).

        Raises
        ------
        ConfigError
            Naming the option, what was expected and what was given.
        """
        check_choice(self.mode, "mode", ("w-", "w"))  # 'w-': create or resume; 'w': start over
        if _shard(self.shard) is not None and self.mode == "w":
            raise ConfigError("mode='w' cannot be combined with shard=: one shard would delete the others' work; "
                              "delete the store first and run every shard with mode='w-'")
        _amp_modes(self.amp)
        if self.compressor is not None:  # None: DEFAULT_COMPRESSOR
            check_choice(self.compressor, "compressor", COMPRESSORS)
        if self.features_dtype is not None:  # None: the stored dtype, float32 for a new store
            check_choice(self.features_dtype, "features_dtype", FEATURES_DTYPES)
        for name in ("batch_size", "sample_chunk"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                      or value < 1):
                raise ConfigError(f"{name}: expected a positive integer, got {value!r}")
        if isinstance(self.queue_size, bool) or not isinstance(self.queue_size, (int, np.integer)) \
                or self.queue_size < 1:
            raise ConfigError(f"queue_size: expected a positive integer, got {self.queue_size!r}")


@dataclasses.dataclass
class _Job:
    """What `_run` computes: the resolved options of one `extract` call and the chunks left to do."""

    out: Path
    todo: list[int]
    chunk: int
    n: int
    layout: dict[str, tuple[int, tuple[int, ...], np.dtype]]
    attacks: list
    grid: list[float]
    head_name: str
    head: nn.Linear
    device: torch.device
    amp_clean: bool
    amp_attack: bool
    save_adv: bool
    base_seed: int
    progress: bool
    queue_size: int
    run_id: str
    prepare: Callable[[], bool] | None
    features_dtype: str = "float32"
    layer: tuple[str, nn.Module] | None = None  # feature_layer (name, module); None: the head's input
