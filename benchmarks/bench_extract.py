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
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
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


def ours(model: nn.Module, loader, device: torch.device, amp: bool, folder: Path, i: int) -> float:
    sync(device)
    t0 = time.perf_counter()
    cg.extract(model, loader, folder / f"run{i}.zarr", device=device, amp=amp, progress=False)
    sync(device)
    dt = time.perf_counter() - t0
    shutil.rmtree(folder / f"run{i}.zarr")
    return dt


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
    try:
        baseline(model, loader, device, args.amp)  # warm-up
        ours(model, loader, device, args.amp, folder, -1)
        tb, to = [], []
        for i in range(args.repeats):
            tb.append(baseline(model, loader, device, args.amp))
            to.append(ours(model, loader, device, args.amp, folder, i))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    b, o = min(tb), min(to)
    print(f"extract throughput  model={args.model} n={args.n} batch={args.batch_size} "
          f"image={args.image_size} device={device} amp={args.amp} threads={torch.get_num_threads()} "
          f"source={'JPEG folder, ' + str(args.workers) + ' workers' if args.jpeg else 'tensors in memory'}")
    print(f"  bare no_grad loop : {args.n / b:10.1f} samples/s  (best of {args.repeats}: {b:.3f} s)")
    print(f"  cg.extract        : {args.n / o:10.1f} samples/s  (best of {args.repeats}: {o:.3f} s)")
    print(f"  ratio extract/bare: {b / o:.3f}   (target >= 0.9)")


if __name__ == "__main__":
    main()
