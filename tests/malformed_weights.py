"""Malformed weights files (issue 22) for the malformed-input corpus, and the builders tests/pipeline/test_weights_safety.py
shares: code pickles, forged safetensors headers, stride-0 views, integer keys, state dicts that fit no model.

Every case hands the file to :func:`causalgeom.pipeline.models.load` through one of the four places weights come from (a
local state dict, ``weights=FILE`` for timm, the torch.hub cache, the Hugging Face cache) and expects a
`ConfigError` naming the file. Nothing is written under ``out``; a payload that ran would create ``out/pwned``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shlex
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

import causalgeom as cg
from causalgeom.errors import ConfigError

from .malformed_corpus import register

TV_ARCH = "torchvision:resnet18"
TIMM_SPEC = "resnet10t.c3_in1k"


class Payload:
    """Unpickling this object runs ``touch MARKER`` (``os.system``): the proof that a loader ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def code_pickle(path: Path, marker: Path, *, legacy: bool = False, state: dict | None = None) -> Path:
    """A ``torch.save`` file holding a state dict plus an object whose unpickling creates ``marker``."""
    payload = dict(state if state is not None else {"fc.weight": torch.zeros(2, 2)})
    payload["evil"] = Payload(marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return path


def raw_pickle(path: Path, marker: Path) -> Path:
    """A plain ``pickle.dump`` of the payload (what a hostile ``pytorch_model.bin`` can be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"fc.weight": Payload(marker)}))
    return path


def safetensors_bytes(header, data: bytes = b"", *, length: int | None = None) -> bytes:
    """A safetensors file: 8-byte little-endian header length, JSON header, data."""
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def stride0_pt(path: Path, shape=(10**6, 10**6), key: str = "fc.weight") -> Path:
    """A ~1 KB zip ``.pt`` whose tensor is an expanded view (stride 0) of 256 floats declaring ``shape``
    (4 TB once materialised for the default shape)."""
    torch.save({key: torch.zeros(256).as_strided(shape, (0,) * len(shape))}, path)
    return path


def legacy_bomb(path: Path, numel: int = 10**12) -> Path:
    """A legacy (non-zip) torch file whose storage declares ``numel`` floats while holding 4
    (torch.load would allocate the declared size before reading)."""
    torch.save({"fc.weight": torch.zeros(4)}, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    marker = b"X\x03\x00\x00\x00cpu"
    at = raw.index(marker) + len(marker)
    if raw[at:at + 1] == b"q":  # BINPUT n
        at += 2
    assert raw[at:at + 2] == b"K\x04", raw[at:at + 8]  # BININT1 4: the declared numel
    path.write_bytes(raw[:at] + pickle.LONG1 + bytes([6]) + numel.to_bytes(6, "little") + raw[at + 2:])
    return path


@contextlib.contextmanager
def env(**values: str):
    """Set environment variables for the block (the corpus has no monkeypatch)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def torchvision_cache_file(torch_home: Path) -> Path:
    """The exact file torchvision's ResNet18_Weights.IMAGENET1K_V1 is cached as under ``torch_home``."""
    import torchvision

    with env(TORCH_HOME=str(torch_home)):
        return cg.models.torch_hub_file(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url)


def hf_cache_file(cache: Path, fname: str, repo: str = f"timm/{TIMM_SPEC}") -> Path:
    """``cache/models--ORG--NAME/snapshots/REV/fname`` with ``refs/main``, the layout huggingface_hub reads."""
    base = cache / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text("abc123")
    snap = base / "snapshots" / "abc123"
    snap.mkdir(parents=True, exist_ok=True)
    return snap / fname


def _local(inp: Path, name: str, content: bytes | None = None, arch: str = TV_ARCH):
    path = inp / name
    if content is not None:
        path.write_bytes(content)
    return cg.models.load(path, arch=arch)


def _timm(inp: Path, name: str, state) -> object:
    path = inp / name
    torch.save(state, path)
    return cg.models.load(f"timm:{TIMM_SPEC}", weights=path)


def _timm_state() -> dict:
    import timm

    torch.manual_seed(0)
    return timm.create_model(TIMM_SPEC, pretrained=False).state_dict()


# -- code pickles in the four places -----------------------------------------------------------------------------
register("weights: code pickle as local .pt", ConfigError, r"evil\.pt.*refused.*weights_only")(
    lambda i, o: cg.models.load(code_pickle(i / "evil.pt", o / "pwned"), arch=TV_ARCH))
register("weights: legacy code pickle as local .pth", ConfigError, r"evil\.pth")(
    lambda i, o: cg.models.load(code_pickle(i / "evil.pth", o / "pwned", legacy=True), arch=TV_ARCH))
register("weights: raw pickle as local .bin", ConfigError, r"evil\.bin.*not a torch.save file.*nothing in it was run")(
    lambda i, o: cg.models.load(raw_pickle(i / "evil.bin", o / "pwned"), arch=TV_ARCH))
register("weights: code pickle as timm --weights", ConfigError, r"evil\.pth.*refused")(
    lambda i, o: cg.models.load(f"timm:{TIMM_SPEC}", weights=code_pickle(i / "evil.pth", o / "pwned")))


def _tv_cache_pickle(i: Path, o: Path):
    code_pickle(torchvision_cache_file(i / "torch"), o / "pwned")
    with env(TORCH_HOME=str(i / "torch")):
        return cg.models.load("torchvision:resnet18", weights="IMAGENET1K_V1")


def _hf_cache_pickle(i: Path, o: Path):
    raw_pickle(hf_cache_file(i / "hf", "pytorch_model.bin"), o / "pwned")
    with env(HF_HUB_CACHE=str(i / "hf")):
        return cg.models.load(f"timm:{TIMM_SPEC}")


register("weights: code pickle in the torch.hub cache", ConfigError, r"resnet18-f37072fd\.pth.*refused")(
    _tv_cache_pickle)
register("weights: code pickle in the Hugging Face cache", ConfigError, r"pytorch_model\.bin")(_hf_cache_pickle)

# -- safetensors headers -----------------------------------------------------------------------------------------
register("weights: empty safetensors", ConfigError, r"x\.safetensors.*empty")(
    lambda i, o: _local(i, "x.safetensors", b""))
register("weights: 5-byte safetensors", ConfigError, r"x\.safetensors.*shorter")(
    lambda i, o: _local(i, "x.safetensors", b"\x01\x00\x00\x00\x00"))
register("weights: safetensors JSON-list header", ConfigError, r"x\.safetensors.*JSON list")(
    lambda i, o: _local(i, "x.safetensors", safetensors_bytes([1, 2, 3])))
register("weights: safetensors header length 2**62", ConfigError, r"x\.safetensors.*header length 4611686018427387904")(
    lambda i, o: _local(i, "x.safetensors", safetensors_bytes({}, length=2**62)))
register("weights: safetensors header not JSON", ConfigError, r"x\.safetensors.*not valid JSON")(
    lambda i, o: _local(i, "x.safetensors", safetensors_bytes(b"{not json")))
register("weights: safetensors claims 10^6 x 10^6", ConfigError, r"x\.safetensors.*'fc\.weight'.*1000000, 1000000")(
    lambda i, o: _local(i, "x.safetensors", safetensors_bytes(
        {"fc.weight": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 16]}}, b"\0" * 16)))
register("weights: safetensors offsets past the end", ConfigError, r"x\.safetensors.*past the end")(
    lambda i, o: _local(i, "x.safetensors", safetensors_bytes(
        {"fc.weight": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}, b"\0" * 16)))
register("weights: safetensors unknown dtype", ConfigError, r"x\.safetensors.*dtype C64")(
    lambda i, o: _local(i, "x.safetensors", safetensors_bytes(
        {"a": {"dtype": "C64", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 16)))
register("weights: safetensors negative shape", ConfigError, r"x\.safetensors.*header entry")(
    lambda i, o: _local(i, "x.safetensors", safetensors_bytes(
        {"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8)))
register("weights: safetensors JSON-list header under a .bin name", ConfigError, r"x\.bin.*JSON list")(
    lambda i, o: _local(i, "x.bin", safetensors_bytes([1, 2, 3])))

# -- torch files ---------------------------------------------------------------------------------------------------
register("weights: stride-0 1 KB .pt asking for 4 TB", ConfigError, r"big\.pt.*'fc\.weight'.*stride-0")(
    lambda i, o: cg.models.load(stride0_pt(i / "big.pt"), arch=TV_ARCH))
register("weights: legacy .pt declaring a 4 TB storage", ConfigError, r"bomb\.pt.*storages declare 3\.64 TiB")(
    lambda i, o: cg.models.load(legacy_bomb(i / "bomb.pt"), arch=TV_ARCH))
register("weights: empty .pt", ConfigError, r"x\.pt.*empty")(lambda i, o: _local(i, "x.pt", b""))
register("weights: text named .pt", ConfigError, r"x\.pt.*neither a torch file")(
    lambda i, o: _local(i, "x.pt", b"this is not a checkpoint at all\n"))


def _truncated(i: Path, o: Path):
    torch.save({"fc.weight": torch.zeros(64, 64)}, i / "cut.pt")
    raw = (i / "cut.pt").read_bytes()
    (i / "cut.pt").write_bytes(raw[: len(raw) // 2])
    return cg.models.load(i / "cut.pt", arch=TV_ARCH)


register("weights: truncated zip .pt", ConfigError, r"cut\.pt.*cannot be read as a torch file")(_truncated)


def _save_local(name: str, obj):
    def run(i: Path, o: Path):
        torch.save(obj, i / name)
        return cg.models.load(i / name, arch=TV_ARCH)
    return run


register("weights: integer state-dict keys", ConfigError, r"ints\.pt.*keys must be strings.*'0', '1'")(
    _save_local("ints.pt", {0: torch.zeros(2), 1: torch.zeros(2)}))
register("weights: state-dict values not tensors", ConfigError, r"strs\.pt.*must be tensors.*'fc\.weight': str")(
    _save_local("strs.pt", {"fc.weight": "zeros"}))
register("weights: a list, not a state dict", ConfigError, r"list\.pt.*expected a state dict.*list")(
    _save_local("list.pt", [torch.zeros(2)]))
register("weights: empty state dict", ConfigError, r"none\.pt.*empty")(_save_local("none.pt", {}))
register("weights: foreign state dict for a torchvision arch", ConfigError, r"foreign\.pt.*does not fit")(
    _save_local("foreign.pt", {"fc.weight": torch.zeros(10, 512), "conv9.weight": torch.zeros(1)}))

# -- state dicts given to timm -------------------------------------------------------------------------------------
register("weights: garbage state dict given to timm", ConfigError,
         r"junk\.pth does not fit timm:resnet10t.*missing keys \['conv1\.0\.weight'.*unexpected keys \['foo'")(
    lambda i, o: _timm(i, "junk.pth", {"foo": torch.zeros(3), "bar.weight": torch.ones(2, 2)}))


def _timm_foreign(i: Path, o: Path):
    import torchvision

    return _timm(i, "tv.pth", torchvision.models.resnet18().state_dict())


def _timm_wrong_shape(i: Path, o: Path):
    state = _timm_state()
    state["fc.weight"] = torch.zeros(7, state["fc.weight"].shape[1])
    return _timm(i, "shape.pth", state)


register("weights: torchvision state dict given to timm", ConfigError, r"tv\.pth does not fit timm.*keys")(
    _timm_foreign)
register("weights: wrong head shape given to timm", ConfigError, r"shape\.pth does not fit timm.*fc\.weight \(7, ")(
    _timm_wrong_shape)
register("weights: integer keys given to timm", ConfigError, r"ints\.pth.*keys must be strings")(
    lambda i, o: _timm(i, "ints.pth", OrderedDict([(0, torch.zeros(2))])))


def _tv_cache_garbage(i: Path, o: Path):
    torchvision_cache_file(i / "torch").parent.mkdir(parents=True)
    torchvision_cache_file(i / "torch").write_bytes(b"<html>not found</html>")  # an error page saved as weights
    with env(TORCH_HOME=str(i / "torch")):
        return cg.models.load("torchvision:resnet18", weights="IMAGENET1K_V1")


def _hf_cache_stride0(i: Path, o: Path):
    stride0_pt(hf_cache_file(i / "hf", "pytorch_model.bin"))
    with env(HF_HUB_CACHE=str(i / "hf")):
        return cg.models.load(f"timm:{TIMM_SPEC}")


register("weights: garbage in the torch.hub cache", ConfigError, r"resnet18-f37072fd\.pth.*neither a torch file")(
    _tv_cache_garbage)
register("weights: stride-0 file in the Hugging Face cache", ConfigError, r"pytorch_model\.bin.*stride-0")(
    _hf_cache_stride0)


def _zip_not_torch(i: Path, o: Path):
    with zipfile.ZipFile(i / "z.pt", "w") as zf:
        zf.writestr("hello.txt", "not a torch archive")
    return cg.models.load(i / "z.pt", arch=TV_ARCH)


register("weights: a zip that is not a torch file", ConfigError, r"z\.pt.*cannot be read as a torch file")(
    _zip_not_torch)
