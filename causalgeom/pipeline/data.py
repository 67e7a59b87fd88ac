# Over 600 lines on purpose: one concern (datasets with fixed splits); short loaders sharing name and split checks.
"""Datasets with fixed train / calibration / test splits: embedded digits, CIFAR-10/100, ImageFolder.

Every dataset yields ``(x, y)`` with ``x`` a float32 tensor of shape ``(C, H, W)`` in pixel space
``[0, 1]`` and ``y`` an ``int`` class index. Normalization is *not* applied here: it lives inside
the model (see :func:`causalgeom.pipeline.models.build_model`), so attacks operate in pixel space.

Splits (fixed and deterministic; documented in ``docs/training.md``):

* ``digits`` -- scikit-learn's shipped 8x8 handwritten digits (1797 images, 10 classes, pixel / 16).
  A permutation drawn once with ``numpy.random.default_rng(0)`` is cut into 60 % train (1078 images),
  15 % calib (269) and 25 % test (450).
* ``cifar10`` / ``cifar100`` -- the CIFAR python batches read from a local folder (never downloaded).
  ``train`` = the official training set without its last ``min(5000, n // 10)`` images (45 000 for
  the real data), ``calib`` = those last images (5 000), ``test`` = the official test set (10 000).
* ``imagefolder`` -- a :class:`torchvision.datasets.ImageFolder` layout. If ``ROOT`` has ``train/``
  and ``test/`` sub-folders, they are used, with ``calib/`` (or ``val/``) as calibration split when
  present and otherwise the last ``max(1, n // 10)`` images of a fixed permutation (seed 0) of
  ``train/``. Otherwise ``ROOT`` itself holds the class folders and is cut like digits (60/15/25).
  Images are converted to RGB, resized (shorter side) and center-cropped to ``image_size``
  (default: the size of the first training image).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import pickle
import stat
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .._util.checks import check_choice
from ..errors import ConfigError

__all__ = [
    "DATASETS",
    "SPLITS",
    "CIFAR_URL",
    "ArrayDataset",
    "dataset_info",
    "load_dataset",
    "check_dataset",
    "default_root",
    "split_indices",
    "EVAL_DATA",
    "EvalImages",
    "open_eval_data",
    "stratified_subset",
    "open_image",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
]

#: Names accepted by :func:`load_dataset` and :func:`dataset_info`.
DATASETS = ("digits", "cifar10", "cifar100", "imagefolder")
#: Split names accepted by :func:`load_dataset`.
SPLITS = ("train", "calib", "test")
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

#: Seed of the fixed permutation that cuts digits (and single-folder ImageFolder data) into splits.
SPLIT_SEED = 0
_FRACTIONS = (0.60, 0.15)  # train, calib; test = the rest

_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz", title="CIFAR-10",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"], meta="batches.meta",
                    meta_key="label_names", label_key="labels", num_classes=10,
                    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": dict(folder="cifar-100-python", archive="cifar-100-python.tar.gz", title="CIFAR-100",
                     train=["train"], test=["test"], meta="meta", meta_key="fine_label_names",
                     label_key="fine_labels", num_classes=100,
                     mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class ArrayDataset(Dataset):
    """An in-memory image dataset: ``images`` (N, C, H, W) uint8 (0..255) or float (0..1), ``labels`` (N,).

    ``dataset[i]`` returns ``(x, y)`` with ``x`` float32 (C, H, W) in [0, 1] and ``y`` an ``int``;
    :meth:`batch` gathers many samples at once (the fast path of the training loop).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str] | None = None) -> None:
        if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ConfigError(f"ArrayDataset: expected images (N, C, H, W) and labels (N,), got "
                              f"{tuple(images.shape)} and {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            return x.to(torch.float32).div_(255.0)
        return x.to(torch.float32)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._to_float(self.images[index]), int(self.labels[index])

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``indices`` as ``(x (B, C, H, W) float32, y (B,) int64)``."""
        return self._to_float(self.images[indices]), self.labels[indices]

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> "ArrayDataset":
        """A new :class:`ArrayDataset` holding the samples ``indices`` (in that order)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        return ArrayDataset(self.images[idx], self.labels[idx], self.classes)


def default_root() -> str:
    """Folder searched for datasets when ``root`` is None: ``$CAUSALGEOM_DATA`` or ``./data``."""
    return os.environ.get("CAUSALGEOM_DATA", "data")


def _check_name(name: Any) -> str:
    return check_choice(name.lower() if isinstance(name, str) else name, "dataset", DATASETS)  # case-insensitive


def _check_split(split: Any) -> str:
    return check_choice(split, "split", SPLITS)


def split_indices(n: int, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """The fixed 60 / 15 / 25 % cut of ``n`` samples used for digits and single-folder ImageFolder data.

    Returns
    -------
    dict
        ``{"train", "calib", "test"}`` -> sorted-by-permutation int64 index arrays that partition ``range(n)``.
    """
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(_FRACTIONS[0] * n)
    n_calib = int(_FRACTIONS[1] * n)
    return {"train": perm[:n_train], "calib": perm[n_train:n_train + n_calib], "test": perm[n_train + n_calib:]}


# --------------------------------------------------------------------------------------------------- digits
_DIGITS_CACHE: dict[str, ArrayDataset] = {}


def _digits_all() -> ArrayDataset:
    if "all" not in _DIGITS_CACHE:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.from_numpy((bunch.images / 16.0).astype(np.float32)).unsqueeze(1)  # (1797, 1, 8, 8)
        labels = torch.from_numpy(bunch.target.astype(np.int64))
        _DIGITS_CACHE["all"] = ArrayDataset(images, labels, [str(c) for c in bunch.target_names])
    return _DIGITS_CACHE["all"]


def _digits(split: str) -> ArrayDataset:
    full = _digits_all()
    return full.subset(split_indices(len(full))[split])


# ---------------------------------------------------------------------------------------------------- CIFAR
def _cifar_dir(name: str, root: str | os.PathLike | None) -> Path:
    spec = _CIFAR[name]
    base = Path(root if root is not None else default_root()).expanduser()
    folder = base if base.name == spec["folder"] else base / spec["folder"]
    needed = [*spec["train"], *spec["test"], spec["meta"]]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise ConfigError(
            f"dataset {name!r}: data_root={str(base)!r} does not hold the {spec['title']} python batches; "
            f"expected ROOT/{spec['folder']}/ containing {', '.join(needed)} (missing: {', '.join(missing)}). "
            f"Download {spec['archive']} from {CIFAR_URL} and extract it into ROOT "
            f"(tar xzf {spec['archive']} -C ROOT); nothing is downloaded at run time")
    return folder


class _CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR python batches, allowing only the globals that plain numpy arrays need."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise ConfigError(f"CIFAR batch file refers to {module}.{name}, which a CIFAR python batch never "
                          "does; refusing to unpickle it")


def _read_batch(path: Path) -> dict:
    # Sizes declared inside the file are checked before allocation: pickletools walks the opcodes first and
    # refuses a declared length longer than the bytes present (the unpickler would allocate it up front), and
    # numpy checks a declared array shape against its buffer.
    import pickletools

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read CIFAR batch file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        for _ in pickletools.genops(io.BytesIO(raw)):
            pass
        entry = _CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad dataset file
        raise ConfigError(f"cannot read CIFAR batch file {str(path)!r}: {type(exc).__name__}: {exc}") from None
    if not isinstance(entry, dict):
        raise ConfigError(f"CIFAR batch file {str(path)!r}: expected a pickled dict, got {type(entry).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _make_cifar_class(name: str):
    """A torchvision CIFAR class that reads a local folder: no md5 check (so subsets and test fixtures load),
    no download, and a restricted unpickler."""
    import torchvision

    base = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    spec = _CIFAR[name]

    class LocalCIFAR(base):  # type: ignore[misc, valid-type]
        def __init__(self, root: str | os.PathLike, train: bool = True) -> None:  # noqa: D107
            folder = _cifar_dir(name, root)
            torchvision.datasets.VisionDataset.__init__(self, str(folder.parent))
            self.train = train
            data, targets = [], []
            for fname in (spec["train"] if train else spec["test"]):
                entry = _read_batch(folder / fname)
                try:
                    arr = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                    labels = list(entry[spec["label_key"]])
                except (KeyError, ValueError) as exc:
                    raise ConfigError(f"CIFAR batch file {str(folder / fname)!r}: expected keys 'data' "
                                      f"(N, 3072) uint8 and {spec['label_key']!r}; {exc}") from None
                try:
                    labels = [int(t) for t in labels]
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"CIFAR batch file {str(folder / fname)!r}: labels must be integers; "
                                      f"{exc}") from None
                bad = [t for t in labels if not 0 <= t < spec["num_classes"]]
                if bad or len(labels) != len(arr):
                    raise ConfigError(f"CIFAR batch file {str(folder / fname)!r}: expected {len(arr)} labels in "
                                      f"[0, {spec['num_classes']}), got {len(labels)} labels"
                                      f"{f' with out-of-range values {sorted(set(bad))[:5]}' if bad else ''}")
                data.append(arr)
                targets.extend(labels)
            self.data = np.concatenate(data).transpose(0, 2, 3, 1)  # HWC, as torchvision keeps it
            self.targets = targets
            meta = _read_batch(folder / spec["meta"])
            self.classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(spec["meta_key"], [])]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

        def _check_integrity(self) -> bool:  # presence only; see _cifar_dir
            return True

    LocalCIFAR.__name__ = LocalCIFAR.__qualname__ = f"Local{base.__name__}"
    return LocalCIFAR


def _cifar(name: str, split: str, root: str | os.PathLike | None) -> ArrayDataset:
    cls = _make_cifar_class(name)
    tv = cls(root, train=(split != "test"))
    images = torch.from_numpy(np.ascontiguousarray(tv.data.transpose(0, 3, 1, 2)))  # (N, 3, 32, 32) uint8
    labels = torch.as_tensor(tv.targets, dtype=torch.int64)
    ds = ArrayDataset(images, labels, tv.classes or None)
    if split == "test":
        return ds
    n = len(ds)
    n_calib = min(5000, n // 10)
    return ds.subset(np.arange(n - n_calib) if split == "train" else np.arange(n - n_calib, n))


# ---------------------------------------------------------------------------------------------- ImageFolder
def _imagefolder_layout(root: str | os.PathLike | None) -> dict[str, Any]:
    if root is None:
        raise ConfigError("dataset 'imagefolder': data_root is required (a folder of class sub-folders, or one "
                          "with train/ and test/ sub-folders of class sub-folders), got None")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ConfigError(f"dataset 'imagefolder': data_root={str(base)!r} is not a folder; expected ROOT/CLASS/IMAGE "
                          "or ROOT/{train,test}/CLASS/IMAGE (torchvision ImageFolder layout)")
    if (base / "train").is_dir() and (base / "test").is_dir():
        calib = next((base / c for c in ("calib", "val") if (base / c).is_dir()), None)
        return {"split_folders": True, "train": base / "train", "test": base / "test", "calib": calib}
    return {"split_folders": False, "all": base}


#: File name endings read as images (torchvision ImageFolder's ``IMG_EXTENSIONS``, compared lower-cased).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Largest image read, in pixels (width x height; Pillow's default ``Image.MAX_IMAGE_PIXELS``, about 9459 x 9459).
#: Checked from the header before anything is decoded: a larger image (a decompression bomb) is a `ConfigError`
#: naming the file, whatever Pillow's own (warning-only up to twice the limit) setting is.
MAX_IMAGE_PIXELS = 89_478_485


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "folder")):
        if test(mode):
            return name
    return "special file"


class _ImageFolderScan:
    """torchvision's ImageFolder rule, walked with ``lstat``: no FIFOs, devices or symbolic-link loops.

    ``classes`` are the sorted names of the sub-folders of ``root`` (symbolic links to folders count); ``samples``
    are ``(path, class index)`` of every file with an image ending (`IMAGE_EXTENSIONS`) under each class folder,
    in torchvision's order (sorted folder paths, then sorted file names), so sample ids match
    ``torchvision.datasets.ImageFolder``. Every folder is entered once: a folder reached a second time (a link loop
    or a second link to one folder) is a `ConfigError` naming both paths, as is an image name that is not a regular file
    (a FIFO would block the reader forever) and a link that cannot be resolved. Picklable (DataLoader workers).
    """

    def __init__(self, root: str) -> None:
        self.root = root
        try:
            with os.scandir(root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise ConfigError(f"dataset 'imagefolder': cannot read {root!r} as ROOT/CLASS/IMAGE: "
                              f"{exc.strerror or exc}") from None
        self.classes = [e.name for e in entries if self._is_dir(e.path)]
        if not self.classes:
            raise ConfigError(f"dataset 'imagefolder': cannot read {root!r} as ROOT/CLASS/IMAGE: no class "
                              "sub-folders in it")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        st = os.stat(root)
        seen: dict[tuple[int, int], str] = {(st.st_dev, st.st_ino): root}  # a link up to the root is a loop too
        self.samples: list[tuple[str, int]] = []
        empty = []
        for c in self.classes:
            files = self._walk(os.path.join(root, c), seen)
            if not files:
                empty.append(c)
            self.samples.extend((f, self.class_to_idx[c]) for f in files)
        if empty:
            raise ConfigError(f"dataset 'imagefolder': no image file (endings {', '.join(IMAGE_EXTENSIONS)}) in the "
                              f"class folder(s) {empty[:5]} of {root!r}")
        self.targets = [t for _, t in self.samples]

    @staticmethod
    def _is_dir(path: str) -> bool:
        try:
            return stat.S_ISDIR(os.stat(path).st_mode)  # a link to a folder is a class folder
        except OSError:
            return False

    def _walk(self, top: str, seen: dict[tuple[int, int], str]) -> list[str]:
        found: list[tuple[str, list[str]]] = []
        stack = [top]
        while stack:
            folder = stack.pop()
            try:
                st = os.stat(folder)
            except OSError as exc:
                raise ConfigError(f"dataset 'imagefolder': cannot enter {folder!r}: {exc.strerror or exc} (a "
                                  "symbolic link loop or a broken link?)") from None
            key = (st.st_dev, st.st_ino)
            if key in seen:
                raise ConfigError(f"dataset 'imagefolder': {seen[key]!r} and {folder!r} are the same folder (a "
                                  "symbolic link loop, or a second link to one folder); each image must be counted "
                                  "once: remove the link")
            seen[key] = folder
            try:
                with os.scandir(folder) as it:
                    names = sorted(e.name for e in it)
            except OSError as exc:
                raise ConfigError(f"dataset 'imagefolder': cannot list {folder!r}: {exc.strerror or exc}") from None
            files = []
            for name in names:
                path = os.path.join(folder, name)
                is_image = name.lower().endswith(IMAGE_EXTENSIONS)
                mode = os.lstat(path).st_mode
                if stat.S_ISLNK(mode):
                    try:
                        mode = os.stat(path).st_mode
                    except OSError as exc:
                        if is_image:
                            raise ConfigError(f"dataset 'imagefolder': {path!r} is a symbolic link that cannot be "
                                              f"followed ({exc.strerror or exc})") from None
                        continue
                if stat.S_ISDIR(mode):
                    stack.append(path)
                elif is_image:
                    if not stat.S_ISREG(mode):
                        raise ConfigError(f"dataset 'imagefolder': {path!r} is a {_file_kind(mode)}, not a regular "
                                          "image file; remove it (it would block or never end)")
                    files.append(path)
            found.append((folder, files))
        return [f for _, files in sorted(found, key=lambda x: x[0]) for f in files]

    def __len__(self) -> int:
        return len(self.samples)

    @staticmethod
    def loader(path: str) -> Any:
        """The RGB image at ``path`` (`open_image`)."""
        return open_image(path).convert("RGB")


def open_image(path: str | os.PathLike, *, header_only: bool = False) -> Any:
    """Read the image file ``path`` with Pillow, refusing what is not a regular file and decompression bombs.

    The file is opened without blocking (a FIFO swapped in after the scan is refused, not waited on) and must be a
    regular file; an image of more than `MAX_IMAGE_PIXELS` pixels is refused from its header, before decoding.

    Parameters
    ----------
    path : path-like
    header_only : bool
        Return the opened (not decoded) image, to read its size.

    Returns
    -------
    PIL.Image.Image
        Decoded (loaded) unless ``header_only``.

    Raises
    ------
    ConfigError
        Naming the file: not a regular file, too many pixels, or not an image Pillow can read.
    """
    from PIL import Image

    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ConfigError(f"image {path!r}: cannot open it: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"image {path!r}: a {_file_kind(mode)}, not a regular image file")
        try:
            img = Image.open(fh)
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ConfigError(f"image {path!r}: {w} x {h} = {w * h:,} pixels exceeds the limit of "
                                  f"{MAX_IMAGE_PIXELS:,} (causalgeom.pipeline.data.MAX_IMAGE_PIXELS; a decompression bomb?)")
            if not header_only:
                img.load()
            return img
        except ConfigError:
            raise
        except Image.DecompressionBombError as exc:  # Pillow's own limit set lower than ours
            raise ConfigError(f"image {path!r}: refused as a decompression bomb ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types (OSError, SyntaxError, DecompressionBomb...)
            raise ConfigError(f"image {path!r}: not a readable image ({type(exc).__name__}: {exc})") from None


@functools.lru_cache(maxsize=8)
def _image_folder_cached(path: str, mtimes: tuple[int, ...]) -> _ImageFolderScan:
    return _ImageFolderScan(path)


def _folder_mtimes(path: Path) -> tuple[int, ...]:
    """Modification times of ``path`` and of its immediate sub-folders (the class folders)."""
    out = [path.stat().st_mtime_ns]
    with os.scandir(path) as it:
        for e in sorted(it, key=lambda e: e.name):
            with contextlib.suppress(OSError):
                st = os.stat(e.path)
                if stat.S_ISDIR(st.st_mode):
                    out.append(st.st_mtime_ns)
    return tuple(out)


def _image_folder(path: Path) -> _ImageFolderScan:
    """The (cached) scan of ``path`` (`_ImageFolderScan`); rescanned when the folder's or a class folder's mtime
    changes."""
    try:
        return _image_folder_cached(str(path.resolve()), _folder_mtimes(path))
    except (FileNotFoundError, RuntimeError) as exc:
        raise ConfigError(f"dataset 'imagefolder': cannot read {str(path)!r} as ROOT/CLASS/IMAGE: {exc}") from None


class _ImageFolderSplit(Dataset):
    """Part of an ImageFolder, converted to RGB float tensors of size ``image_size``."""

    def __init__(self, folder, indices: np.ndarray, image_size: tuple[int, int]) -> None:
        from torchvision.transforms import v2

        self.folder = folder
        self.indices = np.asarray(indices, dtype=np.int64)
        self.classes = list(folder.classes)
        self.transform = v2.Compose([v2.ToImage(), v2.Resize(min(image_size), antialias=True),
                                     v2.CenterCrop(image_size), v2.ToDtype(torch.float32, scale=True)])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.folder.samples[int(self.indices[index])]
        img = self.folder.loader(path).convert("RGB")
        return self.transform(img), int(target)


def _imagefolder_parts(root: str | os.PathLike | None) -> dict[str, tuple[Any, np.ndarray]]:
    layout = _imagefolder_layout(root)
    if not layout["split_folders"]:
        folder = _image_folder(layout["all"])
        return {s: (folder, idx) for s, idx in split_indices(len(folder)).items()}
    train = _image_folder(layout["train"])
    test = _image_folder(layout["test"])
    parts = {"test": (test, np.arange(len(test)))}
    if layout["calib"] is not None:
        calib = _image_folder(layout["calib"])
        parts["calib"] = (calib, np.arange(len(calib)))
        parts["train"] = (train, np.arange(len(train)))
    else:
        perm = np.random.default_rng(SPLIT_SEED).permutation(len(train))
        n_calib = max(1, len(train) // 10)
        parts["train"] = (train, perm[:-n_calib])
        parts["calib"] = (train, perm[-n_calib:])
    for split, (folder, _) in parts.items():
        if folder.classes != parts["test"][0].classes:
            raise ConfigError(f"dataset 'imagefolder': the {split} folder has classes {folder.classes}, the test "
                              f"folder {parts['test'][0].classes}; they must be the same")
    return parts


def _first_image_size(folder) -> tuple[int, int]:
    with open_image(folder.samples[0][0], header_only=True) as img:
        w, h = img.size
    return (h, w)


# ---------------------------------------------------------------------------------------------------- public
def check_dataset(name: str, root: str | os.PathLike | None = None) -> None:
    """Raise :class:`~causalgeom.errors.ConfigError` unless dataset ``name`` is readable from ``root``.

    Cheap: checks names, files and folders, reads no image data (ImageFolder: the lstat scan of every folder,
    cached for the loaders, and the header of the first training image). Digits is always available (shipped with
    scikit-learn).
    """
    name = _check_name(name)
    if name in _CIFAR:
        _cifar_dir(name, root)
    elif name == "imagefolder":
        layout = _imagefolder_layout(root)
        folders = [layout["train"], layout["test"]] if layout["split_folders"] else [layout["all"]]
        for folder in folders:
            if not any(p.is_dir() for p in folder.iterdir()):
                raise ConfigError(f"dataset 'imagefolder': {str(folder)!r} has no class sub-folders; expected "
                                  "FOLDER/CLASS/IMAGE (torchvision ImageFolder layout)")
        _first_image_size(_imagefolder_parts(root)["train"][0])  # scans (FIFOs, loops) and checks the pixel limit


def dataset_info(name: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Shape and normalization constants of dataset ``name``.

    Returns
    -------
    dict
        ``num_classes`` (int), ``in_channels`` (int), ``image_size`` ((H, W) tuple), ``mean`` and ``std``
        (tuples of ``in_channels`` floats, per-channel statistics of the training images in [0, 1]; the
        published CIFAR values, the digits train-split values, ImageNet's for ImageFolder).

    Raises
    ------
    ConfigError
        Unknown name, or (ImageFolder) a missing / unreadable folder.
    """
    name = _check_name(name)
    if name == "digits":
        x = _digits("train").images
        return dict(num_classes=10, in_channels=1, image_size=(8, 8), mean=(round(float(x.mean()), 4),),
                    std=(round(float(x.std()), 4),))
    if name in _CIFAR:
        spec = _CIFAR[name]
        return dict(num_classes=spec["num_classes"], in_channels=3, image_size=(32, 32), mean=tuple(spec["mean"]),
                    std=tuple(spec["std"]))
    parts = _imagefolder_parts(root)
    folder = parts["train"][0]
    return dict(num_classes=len(folder.classes), in_channels=3, image_size=_first_image_size(folder),
                mean=_IMAGENET_MEAN, std=_IMAGENET_STD)


def load_dataset(name: str, split: str, root: str | os.PathLike | None = None, *,
                 image_size: tuple[int, int] | int | None = None) -> Dataset:
    """One fixed split of a dataset, as a torch ``Dataset`` of ``(x, y)``.

    Parameters
    ----------
    name : {"digits", "cifar10", "cifar100", "imagefolder"}
    split : {"train", "calib", "test"}
        Fixed, deterministic splits (see the module docstring and ``docs/training.md``).
    root : path, optional
        Dataset folder (CIFAR: the folder *containing* ``cifar-10-batches-py/`` or ``cifar-100-python/``;
        ImageFolder: the image root). Default :func:`default_root`. Unused for digits.
    image_size : int or (H, W), optional
        ImageFolder only: output size (default: the size of the first training image).

    Returns
    -------
    torch.utils.data.Dataset
        Items ``(x, y)``: ``x`` float32 (C, H, W) in [0, 1], ``y`` int. Digits and CIFAR return an
        :class:`ArrayDataset` (in memory).

    Raises
    ------
    ConfigError
        Unknown name or split, or a missing dataset folder (the message says what to put where).
    """
    name = _check_name(name)
    split = _check_split(split)
    if name == "digits":
        return _digits(split)
    if name in _CIFAR:
        return _cifar(name, split, root)
    parts = _imagefolder_parts(root)
    if image_size is None:
        size = _first_image_size(parts["train"][0])
    elif isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = tuple(int(s) for s in image_size)  # type: ignore[assignment]
    folder, idx = parts[split]
    return _ImageFolderSplit(folder, idx, size)


# ------------------------------------------------------------------------------------ evaluation data of a model
#: Prefixes of :func:`open_eval_data` specs.
EVAL_DATA = ("imagefolder", "cifar10", "cifar100")


def stratified_subset(labels: Sequence[int] | np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """A seeded, stratified subset of ``limit`` sample indices (sorted).

    Each class ``c`` with ``n_c`` of the ``n`` samples gets ``floor(limit * n_c / n)`` places, the places left
    going to the largest remainders (ties: lower class index), i.e. proportional allocation by the
    largest-remainder (Hamilton) method; within a class the samples are drawn without replacement with
    ``numpy.random.default_rng(seed)``.

    Parameters
    ----------
    labels : array of int, shape (n,)
    limit : int
        Subset size in [1, n] (``limit >= n`` returns every index).
    seed : int

    Returns
    -------
    numpy.ndarray of int64, shape (min(limit, n),)
    """
    y = np.asarray(labels, dtype=np.int64)
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ConfigError(f"limit: expected a positive integer, got {limit!r}")
    n = len(y)
    if limit >= n:
        return np.arange(n, dtype=np.int64)
    classes, counts = np.unique(y, return_counts=True)
    quota = limit * counts / n
    take = np.floor(quota).astype(np.int64)
    rest = limit - int(take.sum())
    order = np.lexsort((classes, -(quota - take)))  # largest remainder first, then lower class
    take[order[:rest]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(y == c), size=int(t), replace=False) for c, t in zip(classes, take) if t]
    return np.sort(np.concatenate(picked)).astype(np.int64)


class _FolderImages:
    """Picklable ``i -> PIL RGB image`` of an ImageFolder's samples (DataLoader workers may be spawned)."""

    def __init__(self, folder) -> None:
        self.folder = folder

    def __call__(self, i: int) -> Any:
        return self.folder.loader(self.folder.samples[i][0]).convert("RGB")


class _ArrayImages:
    """Picklable ``i -> PIL image`` of uint8 images (N, C, H, W)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __call__(self, i: int) -> Any:
        from torchvision.transforms.functional import to_pil_image

        return to_pil_image(self.images[i])


class EvalImages(Dataset):
    """Images of an evaluation set with the model's own preprocessing: items ``(transform(PIL image), label)``.

    Attributes
    ----------
    sample_ids : list of str
        One stable id per item (ImageFolder: the path relative to the root; CIFAR: ``"test/INDEX"``), the
        same for every model scored on the same data, limit and seed.
    labels : numpy.ndarray of int64, shape (n,)
    classes : list of str
        Class names in index order (the mapping used).
    spec : str
        The data spec (``"imagefolder:DIR"``...).
    """

    def __init__(self, get_image: Any, index: np.ndarray, ids: list[str], labels: np.ndarray, transform: Any,
                 classes: list[str], spec: str) -> None:
        self._get = get_image
        self._index = np.asarray(index, dtype=np.int64)
        self.sample_ids = ids
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.classes = classes
        self.spec = spec

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self._get(int(self._index[index]))
        return (self.transform(img) if self.transform is not None else img), int(self.labels[index])

    def digest(self) -> str:
        """SHA-256 of the ordered sample ids and labels (equal digests: the same images in the same order)."""
        import hashlib

        h = hashlib.sha256()
        for sid, y in zip(self.sample_ids, self.labels.tolist()):
            h.update(f"{sid}\t{y}\n".encode())
        return h.hexdigest()


def _class_map(class_map: Any, classes: list[str], root: Path, num_classes: int | None = None) -> dict[str, int]:
    """``{class folder: model class index}``: integers (not floats, not booleans), in ``[0, num_classes)``, one
    folder per index; a map given as a file is named in every error."""
    if class_map is None:
        return {c: i for i, c in enumerate(classes)}
    where = "class_map"
    if isinstance(class_map, (str, os.PathLike)):
        import json

        where = f"class_map {str(class_map)!r}"
        try:
            class_map = json.loads(Path(class_map).read_text())
        except (OSError, ValueError, RecursionError) as exc:
            raise ConfigError(f"{where}: cannot read it as a JSON object {{folder name: class index}}: "
                              f"{type(exc).__name__}: {exc}") from None
    if not isinstance(class_map, dict):
        raise ConfigError(f"{where}: expected {{folder name: class index}}, got {type(class_map).__name__}")
    missing = [c for c in classes if c not in class_map]
    if missing:
        raise ConfigError(f"{where}: no index for the class folder(s) {missing[:5]} of {root}")
    out: dict[str, int] = {}
    owner: dict[int, str] = {}
    for c in classes:
        v = class_map[c]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ConfigError(f"{where}: the index of folder {c!r} must be an integer, got {v!r} "
                              f"({type(v).__name__})")
        v = int(v)
        if v < 0 or (num_classes is not None and v >= num_classes):
            bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
            raise ConfigError(f"{where}: class indices must lie in {bound} for this model; folder {c!r} has {v}")
        if v in owner:
            raise ConfigError(f"{where}: folders {owner[v]!r} and {c!r} are both mapped to class {v}; each class "
                              "index takes one folder")
        owner[v] = c
        out[c] = v
    return out


def open_eval_data(spec: str, transform: Any = None, *, num_classes: int | None = None, limit: int | None = None,
                   seed: int = 0, class_map: Any = None) -> EvalImages:
    """The evaluation images of a model: ``imagefolder:DIR``, ``cifar10:DIR`` or ``cifar100:DIR``.

    Parameters
    ----------
    spec : str
        ``imagefolder:DIR``: every image of ``DIR/CLASS/IMAGE`` (e.g. the ImageNet validation folder with its
        1000 wnid folders); class index = position of the folder name in sorted order (torchvision's
        ImageFolder rule, which is ImageNet-1k's index order for wnid folders), unless ``class_map`` is given.
        ``cifar10:DIR`` / ``cifar100:DIR``: the official test set from torchvision's on-disk python batches.
    transform : callable, optional
        PIL image -> tensor (the ``preprocess`` returned by :func:`causalgeom.pipeline.models.load`).
    num_classes : int, optional
        The model's K: the data's class indices must fit it, and without ``class_map`` the folder count must
        equal it (a mismatch is a :class:`ConfigError`: the folder indices would not be the model's).
    limit : int, optional
        A stratified, seeded subset of this many images (:func:`stratified_subset`).
    seed : int
    class_map : dict or path to a JSON file, optional
        ``{folder name: model class index}`` (for a folder holding some of the model's classes).

    Returns
    -------
    EvalImages
    """
    if not isinstance(spec, str) or ":" not in spec or spec.partition(":")[0] not in EVAL_DATA:
        raise ConfigError(f"data: expected one of {', '.join(p + ':DIR' for p in EVAL_DATA)}, got {spec!r}")
    kind, _, root = spec.partition(":")
    if kind in _CIFAR:
        if class_map is not None:
            raise ConfigError("class_map: only for imagefolder data (CIFAR has its own class indices)")
        arr = _cifar(kind, "test", root)
        classes = list(arr.classes or [str(i) for i in range(_CIFAR[kind]["num_classes"])])
        labels = arr.labels.numpy()
        ids = [f"test/{i}" for i in range(len(arr))]
        get: Any = _ArrayImages(arr.images)
        index = np.arange(len(arr))
    else:
        base = Path(root).expanduser()
        if not base.is_dir():
            raise ConfigError(f"data: {spec!r}: {str(base)!r} is not a folder; expected DIR/CLASS/IMAGE")
        folder = _image_folder(base)
        classes = list(folder.classes)
        mapping = _class_map(class_map, classes, base, num_classes)
        ids = [os.path.relpath(p, base) for p, _ in folder.samples]
        labels = np.asarray([mapping[classes[t]] for _, t in folder.samples], dtype=np.int64)
        get = _FolderImages(folder)
        index = np.arange(len(ids))
        if class_map is not None:
            classes = [c for c, _ in sorted(mapping.items(), key=lambda kv: kv[1])]
    if num_classes is not None:
        k_data = len(set(classes)) if class_map is None else None
        if k_data is not None and k_data != num_classes:
            raise ConfigError(f"data: {spec!r} has {k_data} classes but the model has num_classes={num_classes}; "
                              "the folder's class indices would not be the model's. Use the model's full "
                              "evaluation set, or give class_map (CLI --class-map FILE.json) mapping each folder "
                              "to the model's class index")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ConfigError(f"data: {spec!r}: class indices must lie in [0, {num_classes}) for this model, got "
                              f"[{labels.min()}, {labels.max()}]")
    if limit is not None:
        index = stratified_subset(labels, limit, seed)
    return EvalImages(get, index, [ids[i] for i in index], labels[index], transform, classes, spec)
