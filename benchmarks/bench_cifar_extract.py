"""CIFAR-shaped extraction with a PGD ε sweep: ``cg.extract`` end to end vs a bare loop doing the same attacks.

A model (``resnet18``: the package's ResNet-18 with the CIFAR stem, ``cg.models.build_model("resnet18", 10,
cifar_stem=True)``; ``cnn``: the small CNN of ``bench_attacks.py``) is trained for a few steps on synthetic
class-template 32x32 images (so that its clean accuracy is high and samples break at different ε, as in
``bench_attacks.py``), then ``--n`` images are extracted with ``cg.extract(attacks=PGD L-inf, eps=STANDARD_EPS)``
(features, logits, labels, attack outcomes, streamed to Zarr). The baseline is a bare loop that runs the same
PGD at every ε on every sample and evaluates the result (timed on the first ``--baseline-n`` samples and
scaled to ``--n``); ratio = bare time / extract time (target >= 1.0: the sweep's monotone skipping must pay for
the bookkeeping and the Zarr writes). The clean-pass throughput against a bare forward loop is
``bench_extract.py``'s job.

    python benchmarks/bench_cifar_extract.py                           # CPU, small CNN, about a minute
    python benchmarks/bench_cifar_extract.py --device cuda --model resnet18 --n 50000 --batch-size 1024 --amp

The last line is machine-readable: ``RESULT name=... ratio=... target=...``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

import causalgeom as cg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attacks import build_model, synthetic, train  # noqa: E402  (same folder)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(name: str, k: int) -> torch.nn.Module:
    if name == "cnn":
        return build_model("cnn", k)  # bench_attacks' small CNN
    return cg.models.build_model(name, k, cifar_stem=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn", help="'cnn' (bench_attacks' small CNN) or a torchvision name such as "
                   "'resnet18' (cg.models.build_model with the CIFAR stem)")
    p.add_argument("--n", type=int, default=512, help="images extracted (default 512)")
    p.add_argument("--baseline-n", type=int, default=256, help="images of the bare per-eps PGD loop (scaled to --n)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="PGD steps")
    p.add_argument("--train-steps", type=int, default=150)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for the clean pass (both sides)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    k = 10
    g = torch.Generator().manual_seed(0)
    x_all, y_all = synthetic(args.n + 4096, k, 32, g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build(args.model, k).to(dev)
    t0 = time.perf_counter()
    train(model, x_all[args.n:].to(dev), y_all[args.n:].to(dev), args.train_steps, g)
    sync(dev)
    t_train = time.perf_counter() - t0
    x, y = x_all[:args.n], y_all[:args.n]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=args.batch_size,
                                         shuffle=False, pin_memory=dev.type == "cuda")
    eps = list(cg.attacks.STANDARD_EPS)
    pgd = cg.attacks.PGD("linf", steps=args.steps, random_start=True)
    folder = Path(tempfile.mkdtemp(prefix="cg-bench-cifar-"))
    try:
        cg.extract(model, loader, folder / "warmup.zarr", device=dev, amp=args.amp, progress=False)  # warm-up
        # extraction with the PGD sweep vs bare per-eps PGD + evaluation
        sync(dev)
        t = time.perf_counter()
        path = cg.extract(model, loader, folder / "sweep.zarr", attacks=[pgd], eps=eps, device=dev, amp=args.amp,
                          generator=0, progress=False)
        sync(dev)
        t_sweep = time.perf_counter() - t
        ds = cg.open(path, verify=False)
        clean_acc = float(cg.calibration.accuracy(ds))
        robust = cg.robustness.robust_accuracy(ds).values[0]

        nb = min(args.baseline_n, args.n)
        gen = torch.Generator(device=dev).manual_seed(0)
        sync(dev)
        t = time.perf_counter()
        for i in range(0, nb, args.batch_size):
            xb, yb = x[i:i + args.batch_size].to(dev), y[i:i + args.batch_size].to(dev)
            for e in eps:
                xa = pgd.perturb(model, xb, yb, e, generator=gen)
                with torch.no_grad():
                    model(xa)
        sync(dev)
        t_bare_sweep = (time.perf_counter() - t) * args.n / nb
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"CIFAR-shaped extraction  model={args.model} n={args.n} batch={args.batch_size} device={dev} "
          f"amp={args.amp} threads={torch.get_num_threads()} (trained {args.train_steps} steps in {t_train:.1f} s)")
    print(f"  PGD-{args.steps} sweep over eps*255 {[round(e * 255) for e in eps]}: cg.extract {t_sweep:8.2f} s "
          f"({args.n / t_sweep:9.1f} samples/s) | bare per-eps loop {t_bare_sweep:8.2f} s (from {nb} samples) | "
          f"ratio {t_bare_sweep / t_sweep:.3f} (target >= 1.0)")
    print(f"  clean accuracy {clean_acc:.3f}; robust accuracy {[round(float(r), 3) for r in robust]}")
    print(f"RESULT name=cifar_extract_sweep_vs_bare_pgd ratio={t_bare_sweep / t_sweep:.3f} target=>=1.0 "
          f"seconds={t_sweep:.2f} samples_per_s={args.n / t_sweep:.1f} clean_acc={clean_acc:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
