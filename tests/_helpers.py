"""Shared constants and helpers of the tests (import them from here; tests/conftest.py holds fixtures only)."""

from __future__ import annotations

from pathlib import Path

#: How the `study` fixture stores its runs: ``in-memory``, each run in one chunk (read whole, as a run that fits
#: in memory is); ``on-disk``, each run in several 32-sample chunks (read chunk by chunk, the out-of-core
#: path); ``compressed``, the same chunks Zstandard-compressed (a codec in the read path).
STUDY_STORAGE = {
    "in-memory": {"sample_chunk": 120},
    "on-disk": {"sample_chunk": 32},
    "compressed": {"sample_chunk": 32, "compressor": "zstd"},
}

#: The repository root (tests sit one or two folders below it: use this instead of counting ``parents``).
REPO_ROOT = Path(__file__).resolve().parents[1]
