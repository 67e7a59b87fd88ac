"""``causalgeom extract``: trained checkpoint(s) → Zarr dumps with attack outcomes (calls `causalgeom.extract`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError

__all__ = ["register"]

DESCRIPTION = """\
Extract features, logits, labels, the head and attack outcomes of trained models into Zarr stores.

SOURCE is a checkpoint file or run folder (OUT/runs/RUN_ID), or a training output folder (OUT, or
OUT/runs): then every finished run (with a DONE file) is extracted into one study folder (--out,
default OUT/study) in one call; runs already extracted are skipped, interrupted ones resume.
"""

EPILOG = """\
attack specs (--attack, repeatable; all attacks share one eps grid, the union of the specs' eps):
  reference                              PGD L-inf, 7 steps of 0.2/255, eps 0.4/255 (default)
  pgd:linf:eps=1/255,2/255:steps=7       PGD, absolute step with step=0.5/255, restarts=N, loss=ce|margin|dlr
  pgd:l2:eps=0.25,0.5:steps=10:random_start=false
  fgsm:linf:eps=standard                 standard = 1/255,2/255,4/255,8/255
examples:
  causalgeom extract runs_out                             every finished run -> runs_out/study
  causalgeom extract runs_out/runs/ce-s0 --out ce.zarr --attack pgd:linf:eps=standard
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``extract`` command."""
    p = subparsers.add_parser("extract", help="extract dumps (features, logits, attacks) from trained models",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="CHECKPOINT_OR_RUNS_DIR", help="checkpoint, run folder, or training output folder")
    p.add_argument("--out", metavar="PATH",
                   help="store (*.zarr) or study folder (default for a training folder: OUT/study)")
    p.add_argument("--attack", action="append", metavar="SPEC", help="attack spec (repeatable; default: reference)")
    p.add_argument("--no-attack", action="store_true", help="record clean outputs only")
    p.add_argument("--eps", metavar="LIST", help="eps grid for every attack, e.g. 1/255,2/255 or 'standard'")
    p.add_argument("--split", default="test", help="dataset split (default: test)")
    p.add_argument("--data-root", metavar="DIR", help="dataset folder (default: the run's config)")
    p.add_argument("--batch-size", type=int, default=256, metavar="N")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")
    p.add_argument("--amp", choices=("off", "clean", "all"), default="off",
                   help="bf16 autocast: for the clean pass, or also attack passes (default: off)")
    p.add_argument("--save-adv", action="store_true", help="also store adv_features and adv_logits")
    p.add_argument("--shard", metavar="RANK/WORLD", help="fill only this share of the store, e.g. 0/2")
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts (default 0)")
    p.add_argument("--overwrite", action="store_true", help="start over instead of refusing/resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        rank, world = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard: expected RANK/WORLD such as 0/2, got {text!r}") from None
    return rank, world


def run(args: argparse.Namespace) -> int:
    """Run the command (library calls only)."""
    from .. import attacks as A
    from ..extraction import extract_checkpoint, extract_runs

    if args.no_attack and (args.attack or args.eps):
        raise ConfigError("--no-attack cannot be combined with --attack/--eps")
    attacks = None if args.no_attack else [A.parse_attack(s) for s in (args.attack or ["reference"])]
    eps = A.parse_eps(args.eps) if args.eps else None
    kwargs = dict(attacks=attacks, eps=eps, split=args.split, data_root=args.data_root, batch_size=args.batch_size,
                  device=args.device, amp={"off": False, "clean": True, "all": "all"}[args.amp],
                  save_adv=args.save_adv, shard=_shard(args.shard), generator=args.seed,
                  mode="w" if args.overwrite else "w-", progress=not args.no_progress)
    source = Path(args.source)
    if not source.exists():
        raise ConfigError(f"CHECKPOINT_OR_RUNS_DIR: nothing at {source}")
    is_run = source.is_file() or (source / "checkpoint.pt").exists()
    if is_run:
        if not args.out:
            raise ConfigError("--out is required for a single checkpoint (a *.zarr store or a study folder)")
        path = extract_checkpoint(source, args.out, **kwargs)
        print(path)
        return 0
    paths = extract_runs(source, args.out, **kwargs)
    study = paths[0].parent if paths else args.out
    print(f"{len(paths)} runs in {study}")
    return 0
