"""PGD throughput vs torchattacks, and the ε sweep vs running torchattacks once per ε.

Targets: ``cg.attacks.PGD(...).perturb`` >= 1.0x torchattacks' ``PGD`` with the same settings
(same number of forward/backward passes); ``cg.attacks.sweep`` over :data:`STANDARD_EPS` >= 1.5x
faster than torchattacks run once per ε followed by an evaluation pass (the sweep skips samples
already misclassified clean or broken at a smaller ε: the monotone rule).

    python benchmarks/bench_attacks.py                        # CPU, small CNN, < 1 min
    python benchmarks/bench_attacks.py --device cuda --n 10000 --batch-size 512 --model resnet18

The model is trained for a few seconds on synthetic class-template images so that its clean
accuracy is high and its samples break at different ε (a random network would make the sweep
look better than it is). Both sides run in the same process, interleaved, best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

import causalgeom as cg


def build_model(name: str, k: int) -> nn.Module:
    if name == "cnn":
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                             nn.Linear(512, k))
    import torchvision

    return getattr(torchvision.models, name)(num_classes=k)


def synthetic(n: int, k: int, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    templates = torch.rand(k, 3, size, size, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    x = (0.3 * templates[y] + 0.7 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)
    return x, y


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, g: torch.Generator) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (128,), generator=g, device="cpu").to(x.device)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn", help="'cnn' or a torchvision model name")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--train-steps", type=int, default=150)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = p.parse_args()
    import torchattacks

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x, y = synthetic(args.n + 2048, args.classes, args.image_size, g)
    with torch.random.fork_rng():  # deterministic initialization without touching the global RNG state
        torch.manual_seed(0)
        model = build_model(args.model, args.classes).to(dev)
    train(model, x[args.n:].to(dev), y[args.n:].to(dev), args.train_steps, g)
    x, y = x[:args.n].to(dev), y[:args.n].to(dev)
    bs = args.batch_size
    batches = [(x[i:i + bs], y[i:i + bs]) for i in range(0, args.n, bs)]
    eps_grid = cg.attacks.STANDARD_EPS
    eps = 8 / 255
    alpha = 2.5 * eps / args.steps

    ours_pgd = cg.attacks.PGD("linf", steps=args.steps, step_size=alpha, random_start=True)
    ta_pgd = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=args.steps, random_start=True)

    def run_ours():
        gen = torch.Generator(device=dev).manual_seed(0)
        for xb, yb in batches:
            ours_pgd.perturb(model, xb, yb, eps, generator=gen)
        sync(dev)

    def run_ta():
        for xb, yb in batches:
            ta_pgd(xb, yb)
        sync(dev)

    sweep_pgd = cg.attacks.PGD("linf", steps=args.steps)  # relative step 2.5 * eps / steps at every eps

    def run_sweep():
        out = cg.attacks.sweep(model, x, y, sweep_pgd, eps_grid, batch_size=bs,
                               generator=torch.Generator(device=dev).manual_seed(0))
        sync(dev)
        return out

    def run_ta_per_eps():
        acc = []
        for e in eps_grid:
            atk = torchattacks.PGD(model, eps=e, alpha=2.5 * e / args.steps, steps=args.steps, random_start=True)
            correct = 0
            for xb, yb in batches:
                xa = atk(xb, yb)
                with torch.no_grad():
                    correct += int((model(xa).argmax(1) == yb).sum())
            acc.append(correct / args.n)
        sync(dev)
        return acc

    run_ours(), run_ta()  # warm-up
    t_ours, t_ta, t_sweep, t_ta_sweep = [], [], [], []
    for _ in range(args.repeats):
        for _ in range(3):  # the single-eps comparison is short: more samples of it against noise
            t_ours.append(timed(run_ours))
            t_ta.append(timed(run_ta))
        t_sweep.append(timed(run_sweep))
        t_ta_sweep.append(timed(run_ta_per_eps))
    out = run_sweep()
    with torch.no_grad():
        clean = float((torch.cat([model(xb).argmax(1) for xb, _ in batches]) == y).float().mean())
    rob = out["adv_correct"][0].mean(-1)
    ta_rob = run_ta_per_eps()
    o, t, s, ts = min(t_ours), min(t_ta), min(t_sweep), min(t_ta_sweep)
    # passes per sample: torchattacks E * (steps + 1); the sweep 1 clean + (steps + 1) per attacked sample
    attacked = [clean] + [float(r) for r in rob[:-1]]
    bound = len(eps_grid) * (args.steps + 1) / (1 + sum(attacked) * (args.steps + 1))
    print(f"attack throughput  model={args.model} n={args.n} batch={bs} image={args.image_size} steps={args.steps} "
          f"device={dev} threads={torch.get_num_threads()}  (best of {args.repeats})")
    print(f"  clean accuracy {clean:.3f}; robust accuracy at eps*255 {[round(e * 255) for e in eps_grid]}: "
          f"sweep {[round(float(r), 3) for r in rob]}, torchattacks {[round(r, 3) for r in ta_rob]}")
    print(f"  PGD L-inf eps=8/255   torchattacks {args.n / t:9.1f} samples/s | causalgeom {args.n / o:9.1f} samples/s"
          f" | ratio {t / o:.3f} (target >= 1.0)")
    print(f"  eps sweep x{len(eps_grid)}        torchattacks per eps {ts:7.3f} s | cg.attacks.sweep {s:7.3f} s"
          f" | ratio {ts / s:.3f} (target >= 1.5; {bound:.2f} if only the skipped work counted)")


if __name__ == "__main__":
    main()
