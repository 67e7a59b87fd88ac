"""Chunk-read counting shared by the read-count tests (tests/metrics/test_fused.py, tests/scale/test_scale_reads.py)."""

from __future__ import annotations

from collections import Counter

import zarr.storage

from causalgeom.dump.chunks import ChunkReader


class ReadCounter:
    """Counts chunk reads by ``STORE/VAR/c/i/0`` key: through Zarr's LocalStore and through the fused pass's direct
    chunk-file reader (`causalgeom.dump.chunks.ChunkReader`); ``direct`` counts the latter alone."""

    def __init__(self, monkeypatch):
        self.keys: Counter[str] = Counter()
        self.direct = 0
        counter = self
        orig_get = zarr.storage.LocalStore.get
        orig_partial = zarr.storage.LocalStore.get_partial_values
        orig_read = ChunkReader.read

        async def get(self, key, *args, **kwargs):
            counter.keys[f"{self.root.name}/{key}"] += 1
            return await orig_get(self, key, *args, **kwargs)

        async def get_partial_values(self, prototype, key_ranges):
            key_ranges = list(key_ranges)
            for key, _ in key_ranges:
                counter.keys[f"{self.root.name}/{key}"] += 1
            return await orig_partial(self, prototype, key_ranges)

        def read(self, i):
            key = "/".join(["c", str(i)] + ["0"] * (len(self.shape) - 1))
            counter.keys[f"{self.path.parent.name}/{self.path.name}/{key}"] += 1
            counter.direct += 1
            return orig_read(self, i)

        monkeypatch.setattr(zarr.storage.LocalStore, "get", get)
        monkeypatch.setattr(zarr.storage.LocalStore, "get_partial_values", get_partial_values)
        monkeypatch.setattr(ChunkReader, "read", read)

    def chunks(self, var: str) -> Counter[str]:
        """Reads of ``var``'s chunks, by key."""
        return Counter({k: v for k, v in self.keys.items() if f"/{var}/c" in k})
