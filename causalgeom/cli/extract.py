"""``causalgeom extract``: trained checkpoint(s) → Zarr dumps with attack outcomes (calls `causalgeom.extract`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .io import parse_attrs

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
  causalgeom extract --model r18.safetensors --arch torchvision:resnet18 --preprocess cifar10 \
      --data imagefolder:imgs --out study/r18.zarr --attr regularizer=mixup --attr seed=1
  causalgeom extract --model torchvision:resnet18 --weights none --preprocess imagenet \
      --data imagefolder:imgs --out study/random.zarr --no-attack
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``extract`` command."""
    p = subparsers.add_parser("extract", help="extract dumps (features, logits, attacks) from trained models",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="CHECKPOINT_OR_RUNS_DIR", nargs="?",
                   help="checkpoint, run folder, or training output folder (not with --zoo / --model)")
    g = p.add_argument_group("public checkpoints (docs/zoo.md)")
    g.add_argument("--zoo", metavar="FILE", help="zoo file (TOML): one run per checkpoint into the study --out")
    g.add_argument("--model", metavar="NAME",
                   help="torchvision:ARCH, timm:ARCH.TAG or a state-dict file (.pt/.safetensors, with --arch)")
    g.add_argument("--weights", metavar="NAME_OR_FILE",
                   help="torchvision weights enum name, a local file for timm, or 'none': random initialization "
                        "(K = the data's class count; needs --preprocess; recorded as weights=none)")
    g.add_argument("--preprocess", metavar="SPEC",
                   help="preprocessing of a local checkpoint (--model FILE --arch NAME) or of --weights none: "
                        "a preset (imagenet, cifar10, cifar100, none) or resize=N,crop=N,mean=R,G,B,std=R,G,B,"
                        "interpolation=bilinear; torchvision and timm weights keep their own")
    g.add_argument("--arch", metavar="NAME", help="architecture of a state-dict file: torchvision:NAME or timm:NAME")
    g.add_argument("--head", metavar="MODULE", help="qualified name of the final nn.Linear (needed for MLP heads)")
    g.add_argument("--data", metavar="SPEC", help="imagefolder:DIR, cifar10:DIR or cifar100:DIR")
    g.add_argument("--limit", type=int, metavar="N", help="stratified, seeded subset of N images (seed: --seed)")
    g.add_argument("--class-map", metavar="FILE.json", help="{folder name: class index} for a partial folder")
    g.add_argument("--workers", type=int, default=0, metavar="N", help="image-decoding workers (default 0)")
    g.add_argument("--download", action="store_true", help="allow downloading absent weights (default: caches only)")
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
    p.add_argument("--feature-layer", metavar="MODULE",
                   help="store the output of this module as the features (averaged over spatial dims), recorded in "
                        "attrs feature_layer; unless it feeds the head directly, no head is stored and the "
                        "head-based analyses are left out (default: the head's input)")
    p.add_argument("--compressor", choices=("none", "blosc-lz4", "zstd"), default=None,
                   help="chunk compressor of the store (default none: fastest reads, docs/benchmarks.md; CRC32C always)")
    p.add_argument("--features-dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="precision of the stored features (default float32); half precision halves their bytes, "
                        "error bound on rms/cosine in docs/methods_metrics.md; float16 refuses |h| >= 65520")
    p.add_argument("--shard", metavar="RANK/WORLD", help="fill only this share of the store, e.g. 0/2")
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts (default 0)")
    p.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE",
                   help="run attribute (repeatable), e.g. --attr regularizer=mixup --attr strength=0.2 --attr seed=1 "
                        "(value parsed as JSON when it can be)")
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
    from ..pipeline import attacks as A
    from ..pipeline.extract import extract_checkpoint, extract_runs

    if args.no_attack and (args.attack or args.eps):
        raise ConfigError("--no-attack cannot be combined with --attack/--eps")
    attacks = None if args.no_attack else [A.parse_attack(s) for s in (args.attack or ["reference"])]
    eps = A.parse_eps(args.eps) if args.eps else None
    kwargs = dict(attacks=attacks, eps=eps, split=args.split, data_root=args.data_root, batch_size=args.batch_size,
                  device=args.device, amp={"off": False, "clean": True, "all": "all"}[args.amp],
                  save_adv=args.save_adv, shard=_shard(args.shard), generator=args.seed,
                  mode="w" if args.overwrite else "w-", progress=not args.no_progress, compressor=args.compressor)
    if args.features_dtype is not None:  # absent: float32 for new stores, complete ones kept whatever they hold
        kwargs["features_dtype"] = args.features_dtype
    if args.feature_layer is not None:
        kwargs["feature_layer"] = args.feature_layer
    if args.zoo or args.model:
        return _run_public(args, kwargs)
    for flag in ("preprocess", "weights", "arch"):
        if getattr(args, flag) is not None:
            raise ConfigError(f"--{flag} applies to --model / --zoo, not to a causalgeom checkpoint or runs folder")
    if args.source is None:
        raise ConfigError("CHECKPOINT_OR_RUNS_DIR: expected a checkpoint or runs folder, or --zoo FILE / --model NAME")
    source = Path(args.source)
    if not source.exists():
        raise ConfigError(f"CHECKPOINT_OR_RUNS_DIR: nothing at {source}")
    if args.attr:  # one checkpoint: its attributes; a runs folder's runs carry theirs from training
        if not (source.is_file() or (source / "checkpoint.pt").exists()):
            raise ConfigError("--attr labels one run (a checkpoint, or --model); a training folder's runs carry "
                              "their regularizer, strength and seed from training")
        kwargs["attrs"] = parse_attrs(args.attr)
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


def _run_public(args: argparse.Namespace, kwargs: dict) -> int:
    """``--zoo FILE`` or ``--model NAME``: public checkpoints on ``--data`` (docs/zoo.md)."""
    from ..pipeline.data import open_eval_data
    from ..pipeline.extract import extract
    from ..pipeline.zoo import extract_zoo, is_random_weights, load_entry

    if args.source is not None:
        raise ConfigError(f"CHECKPOINT_OR_RUNS_DIR ({args.source!r}) cannot be combined with --zoo / --model")
    if args.zoo and args.model:
        raise ConfigError("--zoo and --model are exclusive: a zoo file lists its models")
    if not args.data:
        raise ConfigError("--data is required with --zoo / --model: imagefolder:DIR, cifar10:DIR or cifar100:DIR")
    if not args.out:
        raise ConfigError("--out is required with --zoo (a study folder) / --model (a *.zarr store or study folder)")
    if args.data_root is not None or args.split != "test":
        raise ConfigError("--data-root / --split do not apply to --zoo / --model: --data names the images")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("split", "data_root")}
    kwargs["num_workers"] = args.workers
    extra = parse_attrs(args.attr)
    if args.zoo:
        if args.attr or args.preprocess or args.weights or args.arch or args.head:
            raise ConfigError("--attr / --preprocess / --weights / --arch / --head apply to --model; a zoo file "
                              "gives them per entry (attrs, preprocess, weights, arch, head keys)")
        paths = extract_zoo(args.zoo, args.data, args.out, limit=args.limit, seed=args.seed,
                            class_map=args.class_map, download=args.download, **kwargs)
        print(f"{len(paths)} runs in {args.out}")
        return 0
    entry = {"model": args.model, "weights": args.weights, "arch": args.arch, "head": args.head,
             "preprocess": args.preprocess}
    n_classes = None
    if is_random_weights(args.weights):
        n_classes = len(set(open_eval_data(args.data, None, class_map=args.class_map).classes))
    model, preprocess, info = load_entry(entry, args.download, num_classes=n_classes, seed=args.seed)
    data = open_eval_data(args.data, preprocess, num_classes=int(model.head.out_features), limit=args.limit,
                          seed=args.seed, class_map=args.class_map)
    out = Path(args.out)
    run_id = str(extra.get("run_id", "")) or (out.stem if out.suffix == ".zarr" else "")
    if not run_id:  # a study folder: the run is named after the model and its weights
        run_id = Path(args.model).stem if info["model_name"] != args.model else args.model.split(":", 1)[1]
        run_id = "".join(c if c.isalnum() or c in "-_." else "-" for c in f"{run_id}-{info['weights']}")
    if out.suffix != ".zarr":
        out = out / f"{run_id}.zarr"
    # the treatment is what --attr says; a file name is not a regularizer
    attrs = {**info, "run_id": run_id, "model": info["model_name"], "regularizer": "unknown",
             "dataset": args.data, "split": "eval", "sample_ids_sha256": data.digest(), "data_limit": args.limit or 0,
             "data_seed": args.seed, **extra}
    print(extract(model, data, out, attrs=attrs, **kwargs))
    return 0
