"""Benchmark: top-label ECE of causalgeom against torchmetrics on N x K probabilities.

Measures both in the same run, prints the time ratio (ours / torchmetrics) and checks that the
values agree (|difference| <= 1e-6) for the l1, l2 and max norms.

    python benchmarks/bench_ece.py            # 200,000 x 100 (about a minute on 2 CPU cores)
    python benchmarks/bench_ece.py --full     # 1,000,000 x 100 as in the issue
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _best(fn, repeat):
    best, value = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="samples (default 200,000)")
    parser.add_argument("--k", type=int, default=100, help="classes (default 100)")
    parser.add_argument("--full", action="store_true", help="1,000,000 x 100")
    parser.add_argument("--n-bins", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=3, help="timings per method (best is reported)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = 1_000_000 if args.full else args.n

    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    from causalgeom.metrics.calibration import ece_from_probs

    rng = np.random.default_rng(args.seed)
    logits = rng.standard_normal((n, args.k), dtype=np.float32) * 3.0
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits, out=logits)
    probs /= probs.sum(axis=1, keepdims=True)
    labels = np.where(rng.random(n) < 0.7, probs.argmax(axis=1), rng.integers(0, args.k, n)).astype(np.int64)
    tp, tl = torch.from_numpy(probs), torch.from_numpy(labels)
    print(f"ECE on {n:,} x {args.k} float32 probabilities, {args.n_bins} equal-width bins, "
          f"torch threads={torch.get_num_threads()}")
    ok = True
    for norm in ("l1", "l2", "max"):
        t_ref, ref = _best(lambda: float(multiclass_calibration_error(tp, tl, num_classes=args.k, n_bins=args.n_bins,
                                                                      norm=norm)), args.repeat)
        t_ours, ours = _best(lambda: ece_from_probs(probs, labels, n_bins=args.n_bins, norm=norm), args.repeat)
        agree = abs(ours - ref) <= 1e-6
        ok &= agree
        print(f"  norm={norm:3s}  torchmetrics {t_ref:7.3f} s  value {ref:.8f} | causalgeom {t_ours:7.3f} s  "
              f"value {ours:.8f} | ratio ours/torchmetrics {t_ours / t_ref:5.2f} | |diff| {abs(ours - ref):.1e} "
              f"{'OK' if agree else 'MISMATCH'}")
    print("values agree" if ok else "VALUES DISAGREE")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
