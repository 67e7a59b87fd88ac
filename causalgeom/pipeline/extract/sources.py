"""Data sources of an extraction: (x, y) tensors or a map-style Dataset / DataLoader, cut into chunk-aligned batches."""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Sequence

import torch

from ...errors import ConfigError
from .options import DEFAULT_BATCH_SIZE


def _as_xy(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        x, y = batch[0], batch[1]
    else:
        raise ConfigError(f"data: each batch/sample must be a (x, y) pair, got {type(batch).__name__}")
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    if not torch.is_floating_point(x):
        raise ConfigError(f"data: inputs must be float tensors in [0, 1], got dtype {x.dtype}")
    return x, y.long()


_Batch = tuple[int, int, torch.Tensor, torch.Tensor]  # (chunk, offset in chunk, x, y)


class _TensorSource:
    """(x, y) tensors held in memory; batches are slices."""

    def __init__(self, x: Any, y: Any, batch_size: int):
        self.x, self.y = _as_xy((x, y))
        if self.x.shape[0] != self.y.shape[0]:
            raise ConfigError(f"data: x has {self.x.shape[0]} samples but y has {self.y.shape[0]}")
        if self.y.dim() != 1:
            raise ConfigError(f"data: labels must have shape (n,), got {tuple(self.y.shape)}")
        self.n = int(self.x.shape[0])
        self.batch_size = batch_size

    def batches(self, spans: Sequence[tuple[int, int, int]], pin: bool) -> Iterator[_Batch]:
        for chunk, offset, s, e in _spans_to_batches(spans, self.batch_size):
            xb, yb = self.x[s:e], self.y[s:e]
            if pin and xb.device.type == "cpu":
                xb = xb.pin_memory()
            yield chunk, offset, xb, yb


class _DatasetSource:
    """A map-style Dataset (or a DataLoader's dataset and settings); batches never cross chunks."""

    def __init__(self, dataset: Any, batch_size: int, *, indices: Sequence[int] | None = None,
                 loader_kwargs: Mapping[str, Any] | None = None):
        if isinstance(dataset, torch.utils.data.IterableDataset):
            raise ConfigError("data: an IterableDataset has no length or random access, which resuming and sharding "
                              "need; pass a map-style Dataset, a DataLoader over one, or (x, y) tensors")
        try:
            n = len(dataset) if indices is None else len(indices)
        except TypeError:
            raise ConfigError(f"data: {type(dataset).__name__} has no len(); pass a map-style Dataset") from None
        self.dataset = dataset
        self.indices = indices
        self.n = int(n)
        self.batch_size = batch_size
        self.kwargs = dict(loader_kwargs or {})

    def batches(self, spans: Sequence[tuple[int, int, int]], pin: bool) -> Iterator[_Batch]:
        kw = dict(self.kwargs)
        kw.setdefault("num_workers", 0)
        kw["pin_memory"] = pin or kw.get("pin_memory", False)
        sampler = _BatchSampler(spans, self.batch_size, self.indices)
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, **kw)
        shape: tuple[int, ...] | None = None
        for (chunk, offset, _, _), (idx, batch) in zip(_spans_to_batches(spans, self.batch_size),
                                                       _sized(loader, self)):
            xb, yb = _as_xy(batch)
            if shape is None:
                shape = tuple(xb.shape[1:])
            elif tuple(xb.shape[1:]) != shape:
                self.size_error(idx, shape)
            yield chunk, offset, xb, yb

    def sample_name(self, i: int) -> str:
        """The file (sample id) of dataset item ``i`` when the dataset has ids, else ``sample i``."""
        ids = getattr(self.dataset, "sample_ids", None)
        return f"{ids[i]!r} (sample {i})" if ids is not None and i < len(ids) else f"sample {i}"

    def size_error(self, indices: Sequence[int], shape: tuple[int, ...] | None = None) -> None:
        """Raise `ConfigError` naming the first item of ``indices`` whose size differs from ``shape`` (default: the
        first item's): images of different sizes cannot be batched."""
        for i in indices:
            s = tuple(self.dataset[i][0].shape)
            if shape is None:
                shape = s
            elif s != shape:
                raise ConfigError(
                    f"data: image {self.sample_name(i)} is {'x'.join(map(str, s))} after preprocessing, the images "
                    f"before it {'x'.join(map(str, shape))}; images of different sizes cannot be batched. Resize them "
                    "with the preprocessing (CLI --preprocess resize=N,crop=N or a preset such as imagenet), or "
                    "make them one size")
        raise ConfigError("data: the images of a batch differ in size; resize them with the preprocessing (CLI "
                          "--preprocess resize=N,crop=N)")


def _sized(loader: Any, source: "_DatasetSource") -> Iterator[tuple[list[int], Any]]:
    """``(indices, batch)`` of ``loader``; a batch whose images differ in size becomes a `ConfigError` naming the
    first such file (instead of torch's "stack expects each tensor to be equal size")."""
    it = iter(loader)
    for indices in iter(loader.batch_sampler):
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError as exc:
            if "stack expects each tensor to be equal size" in str(exc):
                source.size_error(indices)
            raise
        yield indices, batch


def _spans_to_batches(spans: Sequence[tuple[int, int, int]], batch_size: int) -> Iterator[tuple[int, int, int, int]]:
    """(chunk, offset in chunk, start, stop) of every batch; batches never cross a chunk boundary."""
    for chunk, start, stop in spans:
        for s in range(start, stop, batch_size):
            yield chunk, s - start, s, min(stop, s + batch_size)


class _BatchSampler:
    """Index lists of the batches of ``spans``, generated lazily (O(1) memory for any dataset size)."""

    def __init__(self, spans: Sequence[tuple[int, int, int]], batch_size: int, indices: Sequence[int] | None):
        self.spans, self.batch_size, self.indices = spans, batch_size, indices

    def __iter__(self) -> Iterator[list[int]]:
        for _, _, s, e in _spans_to_batches(self.spans, self.batch_size):
            yield list(range(s, e)) if self.indices is None else [int(self.indices[i]) for i in range(s, e)]

    def __len__(self) -> int:
        return sum(math.ceil((stop - start) / self.batch_size) for _, start, stop in self.spans)


def _make_source(data: Any, batch_size: int | None, num_workers: int | None):
    from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data, Dataset):
        return _TensorSource(data[0], data[1], int(batch_size or DEFAULT_BATCH_SIZE))
    if isinstance(data, DataLoader):
        sampler = data.sampler
        if isinstance(sampler, RandomSampler):
            raise ConfigError("data: the DataLoader shuffles (shuffle=True); extraction needs a fixed sample order to "
                              "resume and to shard. Pass shuffle=False (or the dataset itself)")
        indices = None if isinstance(sampler, SequentialSampler) else list(iter(sampler))
        kw: dict[str, Any] = {"collate_fn": data.collate_fn, "num_workers": data.num_workers,
                              "pin_memory": data.pin_memory, "worker_init_fn": data.worker_init_fn,
                              "timeout": data.timeout}
        if data.num_workers > 0:
            kw["prefetch_factor"] = data.prefetch_factor
            kw["multiprocessing_context"] = data.multiprocessing_context
        if num_workers is not None:
            kw["num_workers"] = int(num_workers)
        bs = int(batch_size or data.batch_size or DEFAULT_BATCH_SIZE)
        return _DatasetSource(data.dataset, bs, indices=indices, loader_kwargs=kw)
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        kw = {"num_workers": int(num_workers or 0)}
        return _DatasetSource(data, int(batch_size or DEFAULT_BATCH_SIZE), loader_kwargs=kw)
    raise ConfigError(f"data: expected a torch Dataset, a DataLoader, or a tuple (x, y) of tensors, got "
                      f"{type(data).__name__}")
