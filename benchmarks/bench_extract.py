"""Extraction throughput vs a bare ``torch.no_grad()`` forward loop over the same DataLoader.

Target: ``cg.extract`` (features via hook, logits, labels, streamed to Zarr by a writer thread)
runs at >= 0.9x the samples/s of the bare loop, on CPU and on CUDA.

    python benchmarks/bench_extract.py                          # CPU, resnet18 at 32x32, < 1 min
    python benchmarks/bench_extract.py --device cuda --n 50000 --batch-size 512 --image-size 64 --amp
    python benchmarks/bench_extract.py --jpeg --workers 2       # decode JPEGs from an ImageFolder tree too
    python benchmarks/bench_extract.py --jpeg --data /path/to/imagenet/val --n 10000 --image-size 224 --workers 8

With ``--jpeg`` both loops read the same ImageFolder tree of JPEG files through
``cg.data.open_eval_data("imagefolder:DIR")`` and a DataLoader with ``--workers`` decoding processes (pinned
memory on CUDA), so the images/s include decoding; without ``--data`` the random images are first written as
JPEGs into a temporary tree.

Both loops run in the same process, interleaved, best of ``--repeats``; the printed ratio is
ours / baseline throughput.

Write share (issue 18): during the extractions the benchmark wraps the writer thread's methods
(``causalgeom.pipeline.extract.writer._Writer``: ``_handle``, ``_open``, ``put``, ``close``) and ``zarr.Array.__setitem__`` (only calls
from the writer thread, outside store creation) with timers; the library itself is unchanged. Printed for the best
repeat: the time inside the Zarr writes of the sample chunks (encode, CRC32C, file writes) and the writer thread's
whole busy time (also creating the store, assembling chunk buffers, the finite check and the progress markers), each as a share of the extraction's wall time; and how long the compute
loop waited for the writer (a full queue, then the final flush after the last batch). Writer time beyond that wait
ran while the forward pass computed (overlapped in wall time; on a small CPU the two still share its cores).
``--compressor`` / ``--features-dtype`` are passed to ``cg.extract`` (default: the store's default codec,
``causalgeom.dump.store.DEFAULT_COMPRESSOR``, and float32 features).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import nn

import causalgeom as cg


def small_cnn(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, num_classes))


def build_model(name: str, num_classes: int) -> nn.Module:
    if name == "cnn":
        return small_cnn(num_classes)
    import torchvision

    return getattr(torchvision.models, name)(num_classes=num_classes)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def baseline(model: nn.Module, loader, device: torch.device, amp: bool) -> float:
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for x, _ in loader:
            model(x.to(device, non_blocking=True))
    sync(device)
    return time.perf_counter() - t0


class WriterTimer:
    """Seconds the extraction writer thread spends busy and in Zarr writes, and the compute loop's waits on it.

    Wraps ``_Writer._handle`` (one queued batch: assemble, check, write a finished chunk), ``_Writer.put`` (blocks
    while the queue is full), ``_Writer.close`` (waits for the last writes) and ``zarr.Array.__setitem__`` (counted
    only in the writer thread), accumulating ``time.perf_counter`` differences.
    """

    WRITER_THREAD = "causalgeom-extract-writer"

    def __init__(self) -> None:
        self.reset()
        self._install()

    def reset(self) -> None:
        self.busy = self.zarr = self.create = self.put_wait = self.close_wait = 0.0
        self.creating = False

    def _timed(self, func, field: str, only_writer: bool = False):
        timer = self

        def wrapper(*args, **kwargs):
            if only_writer and (threading.current_thread().name != self.WRITER_THREAD or timer.creating):
                return func(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                setattr(timer, field, getattr(timer, field) + time.perf_counter() - t0)

        return wrapper

    def _install(self) -> None:
        import zarr
        from causalgeom.pipeline.extract import writer as _ex

        writer = _ex._Writer
        timed_open = self._timed(writer._open, "create")
        timer = self

        def _open(*args, **kwargs):  # store creation (the template's metadata and head): counted apart
            timer.creating = True
            try:
                return timed_open(*args, **kwargs)
            finally:
                timer.creating = False

        writer._open = _open
        writer._handle = self._timed(writer._handle, "busy")
        writer.put = self._timed(writer.put, "put_wait")
        writer.close = self._timed(writer.close, "close_wait")
        zarr.Array.__setitem__ = self._timed(zarr.Array.__setitem__, "zarr", only_writer=True)

    def snapshot(self) -> dict[str, float]:
        return {"busy": self.busy, "zarr": self.zarr, "create": self.create, "wait": self.put_wait + self.close_wait,
                "close": self.close_wait}


def ours(model: nn.Module, loader, device: torch.device, amp: bool, folder: Path, i: int,
         timer: WriterTimer | None = None, **options) -> tuple[float, dict[str, float]]:
    sync(device)
    if timer is not None:
        timer.reset()
    t0 = time.perf_counter()
    cg.extract(model, loader, folder / f"run{i}.zarr", device=device, amp=amp, progress=False, **options)
    sync(device)
    dt = time.perf_counter() - t0
    shutil.rmtree(folder / f"run{i}.zarr")
    return dt, (timer.snapshot() if timer is not None else {})


def jpeg_dataset(args: argparse.Namespace, x: torch.Tensor, root: Path):
    """An ImageFolder tree of JPEGs (``--data``, or ``x`` written as JPEGs into ``root``), read through
    ``cg.data.open_eval_data`` with a resize to ``--image-size`` and ToTensor."""
    import torchvision.transforms as T
    from PIL import Image

    if args.data is None:
        for i in range(x.shape[0]):
            d = root / f"class{i % args.classes:04d}"
            d.mkdir(parents=True, exist_ok=True)
            img = (x[i] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(img).save(d / f"{i:06d}.jpg", quality=90)
    spec = f"imagefolder:{args.data or root}"
    transform = T.Compose([T.Resize((args.image_size, args.image_size)), T.ToTensor()])
    limit = args.n if args.data is not None else None
    ds = cg.data.open_eval_data(spec, transform, num_classes=args.classes, limit=limit)
    return ds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18", help="'cnn' or a torchvision model name (default resnet18)")
    p.add_argument("--n", type=int, default=1024, help="samples (default 1024)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for the clean pass (both loops)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--jpeg", action="store_true", help="read JPEG files from an ImageFolder tree (decoding included)")
    p.add_argument("--data", default=None, help="with --jpeg: an existing ImageFolder tree (default: a temporary one)")
    p.add_argument("--compressor", default=None, help="store codec (default: causalgeom.dump.store.DEFAULT_COMPRESSOR)")
    p.add_argument("--features-dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="precision of the stored features (default float32)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.n, 3, args.image_size, args.image_size, generator=g)
    y = torch.randint(0, args.classes, (args.n,), generator=g)
    folder = Path(tempfile.mkdtemp(prefix="cg-bench-"))
    dataset = torch.utils.data.TensorDataset(x, y)
    if args.jpeg:
        dataset = jpeg_dataset(args, x, folder / "jpeg")
        args.n = len(dataset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False,
                                         num_workers=args.workers, pin_memory=device.type == "cuda")
    model = build_model(args.model, args.classes).to(device).eval()
    from causalgeom.dump.store import DEFAULT_COMPRESSOR

    codec = args.compressor or DEFAULT_COMPRESSOR
    options = {"compressor": codec, "features_dtype": args.features_dtype}
    timer = WriterTimer()
    try:
        baseline(model, loader, device, args.amp)  # warm-up
        ours(model, loader, device, args.amp, folder, -1, timer, **options)
        tb, to = [], []
        for i in range(args.repeats):
            tb.append(baseline(model, loader, device, args.amp))
            to.append(ours(model, loader, device, args.amp, folder, i, timer, **options))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    b = min(tb)
    o, w = min(to, key=lambda r: r[0])
    print(f"extract throughput  model={args.model} n={args.n} batch={args.batch_size} "
          f"image={args.image_size} device={device} amp={args.amp} threads={torch.get_num_threads()} "
          f"source={'JPEG folder, ' + str(args.workers) + ' workers' if args.jpeg else 'tensors in memory'}")
    print(f"  bare no_grad loop : {args.n / b:10.1f} samples/s  (best of {args.repeats}: {b:.3f} s)")
    print(f"  cg.extract        : {args.n / o:10.1f} samples/s  (best of {args.repeats}: {o:.3f} s)")
    print(f"  ratio extract/bare: {b / o:.3f}   (target >= 0.9)")
    print(f"  store             : codec {codec!r}{' (DEFAULT_COMPRESSOR)' if codec == DEFAULT_COMPRESSOR else ''} "
          f"+ CRC32C, features {args.features_dtype}")
    print(f"  write share       : {w['zarr'] / o:6.1%} of extraction time inside Zarr writes ({w['zarr']:.3f} s of "
          f"{o:.3f} s); writer thread busy {w['busy'] / o:.1%} ({w['busy']:.3f} s: creating the store "
          f"{w['create']:.3f} s, then assembling chunks, finite check, writes, markers)")
    print(f"  overlap           : the compute loop waited {w['wait'] / o:.1%} ({w['wait']:.3f} s, of which final flush "
          f"{w['close']:.3f} s) for the writer; the other {max(0.0, w['busy'] - w['wait']):.3f} s of writer time "
          "overlapped the forward pass")


if __name__ == "__main__":
    main()
