"""``causalgeom info | validate | import``: look at, check and bring in dumps."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["register", "parse_attrs"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="dims, sizes, attributes and optional parts of a run or a study",
                       description="Show a run's dims, sizes, attrs and which optional parts are present, "
                                   "or a study's run table.",
                       epilog="example: causalgeom info demo_out/study/ce-s0.zarr")
    p.add_argument("path", help="a run store (RUN.zarr) or a study folder")
    p.add_argument("--json", action="store_true", help="a run: its description as JSON (for programs)")
    p.add_argument("--wide", action="store_true",
                   help=f"a study: every attribute column (default: the run table cut to {WIDTH} characters)")
    p.set_defaults(func=_info)

    p = sub.add_parser("validate", help="check a run (or every run of a study) against schema v1",
                       description="Open the store, compare every file with the manifest in its completion mark "
                                   "(missing, extra, renamed, swapped or altered chunks; metadata), verify every "
                                   "chunk's checksum and check all values (NaN/Inf, label range, logits vs head). "
                                   "A study: every run is checked; exit status 1 if any is damaged or incomplete.",
                       epilog="example: causalgeom validate demo_out/study")
    p.add_argument("path", help="a run store or a study folder")
    p.set_defaults(func=_validate)

    p = sub.add_parser("import", help="import third-party dumps (.npz/.pt/.safetensors/.nc)",
                       description="Import one dump as a run store, or several into a study folder with "
                                   "a run table (CSV with a 'file' column plus run_id, regularizer, "
                                   "strength, seed, ...).",
                       epilog="examples:\n  causalgeom import dump.npz runs/mine.zarr --attr regularizer=ce\n"
                              "  causalgeom import a.npz b.pt c.safetensors my_study --run-table runs.csv",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", nargs="+", help="dump file(s)")
    p.add_argument("dst", help="RUN.zarr for one dump, or a study folder")
    p.add_argument("--run-table", help="CSV giving each dump's run_id, regularizer, strength, seed, ...")
    p.add_argument("--head", help="state-dict prefix of the final linear layer (e.g. 'fc', 'classifier.1')")
    p.add_argument("--features-key"), p.add_argument("--logits-key"), p.add_argument("--labels-key")
    p.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE",
                   help="attribute for a single imported run (value parsed as JSON when it can be); run_id is "
                        "the store's folder name (RUN_ID.zarr) and cannot be set to anything else")
    p.add_argument("--overwrite", action="store_true", help="replace existing runs")
    p.add_argument("--max-bytes", type=_byte_size, metavar="SIZE",
                   help="largest memory one array may take, e.g. 8GiB or 500MB (default: half the memory "
                        "available); checked from each file's metadata before reading")
    p.set_defaults(func=_import)


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 2**10, "m": 1000**2, "mb": 1000**2, "mib": 2**20,
          "g": 1000**3, "gb": 1000**3, "gib": 2**30, "t": 1000**4, "tb": 1000**4, "tib": 2**40}


def _byte_size(text: str) -> int:
    """``--max-bytes`` value: a positive number of bytes with an optional unit (B, kB, KiB, MB, MiB, GB, GiB...)."""
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) * _UNITS[m.group(2).lower()] < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size such as 500MB or 8GiB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _describe(ds) -> dict:
    from ..dump.schema import VARIABLES

    return {
        "dims": dict(ds.sizes),
        "variables": {n: {"dims": list(v.dims), "dtype": str(v.dtype)} for n, v in ds.data_vars.items()},
        "optional_present": [n for n, s in VARIABLES.items() if not s.required and n in ds.data_vars],
        "optional_missing": [n for n, s in VARIABLES.items() if not s.required and n not in ds.data_vars],
        "attacks": [str(a) for a in ds["attack"].values] if "attack" in ds.coords else [],
        "eps": [float(e) for e in ds["eps"].values] if "eps" in ds.coords else [],
        "attrs": dict(ds.attrs),
    }


#: Width of ``info STUDY`` without ``--wide``.
WIDTH = 100
#: Columns of ``info STUDY`` in order of interest; the first that fit in :data:`WIDTH` are shown.
_STUDY_COLUMNS = ("run_id", "regularizer", "strength", "seed", "n_samples", "n_classes", "n_features", "has_head",
                  "model", "dataset", "attacks", "eps", "weights", "preprocess")


def _cell(value) -> str:
    from .._util.eps import eps_label

    if isinstance(value, (list, tuple)) and value and all(isinstance(v, float) for v in value):
        return ",".join(eps_label(v) for v in value)
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, float) and value != value:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _study_table(runs, wide: bool) -> str:
    """The run table as text: every column with ``wide``, else the columns of interest that fit in WIDTH."""
    frame = runs.drop(columns=["path"], errors="ignore")
    frame = frame.assign(**{c: frame[c].map(_cell) for c in frame.columns})
    if wide:
        return frame.to_string(index=False)
    cols, width = [], 0
    for c in [c for c in _STUDY_COLUMNS if c in frame.columns]:
        w = max(len(c), int(frame[c].str.len().max() if len(frame) else 0))
        if w > 30:  # long text (a model path, a preprocessing spec): cut, --wide shows it whole
            frame[c] = frame[c].map(lambda v: v if len(v) <= 30 else v[:29] + "…")
            w = 30
        if width + w + 2 > WIDTH:
            continue
        cols.append(c)
        width += w + 2
    hidden = len(frame.columns) - len(cols)
    return frame[cols].to_string(index=False) + (f"\n({hidden} more columns: causalgeom info --wide)" if hidden else "")


def _run_text(path: Path, d: dict) -> str:
    from .._util.eps import eps_label

    lines = [f"run {path}"]
    lines.append("  dims:       " + ", ".join(f"{k}={v}" for k, v in d["dims"].items()))
    lines.append("  variables:  " + ", ".join(f"{n} ({', '.join(v['dims'])}; {v['dtype']})"
                                              for n, v in d["variables"].items()))
    lines.append("  optional:   present: " + (", ".join(d["optional_present"]) or "none") + "; missing: "
                 + (", ".join(d["optional_missing"]) or "none"))
    if d["attacks"]:
        lines.append(f"  attacks:    {', '.join(d['attacks'])} at eps {', '.join(eps_label(e) for e in d['eps'])}")
    lines.append("  attributes:")
    width = max((len(k) for k in d["attrs"]), default=0)
    for k, v in d["attrs"].items():
        text = json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)
        lines.append(f"    {k:<{width}}  {text}")
    return "\n".join(lines)


def _is_study(path: Path) -> bool:
    return path.is_dir() and not (path / "zarr.json").exists()


def _info(args: argparse.Namespace) -> int:
    from .. import open as open_run
    from ..dump.study import open_study

    path = Path(args.path)
    if _is_study(path):
        study = open_study(path)
        runs = study.runs
        print(f"study {path}: {len(runs)} complete runs" +
              (f", {len(study.incomplete)} incomplete: {study.incomplete}" if study.incomplete else ""))
        if len(runs):
            print(_study_table(runs, args.wide))
        return 0
    desc = _describe(open_run(path, verify=False))
    print(json.dumps(desc, indent=2, default=str) if args.json else _run_text(path, desc))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from ..dump.store import verify
    from ..dump.study import open_study

    path = Path(args.path)
    if _is_study(path):
        from ..errors import SchemaError, StoreError

        study = open_study(path)
        damaged = 0
        for run_id in study.run_ids:
            run_path = study.run_path(run_id)
            try:
                verify(run_path)
            except (StoreError, SchemaError) as exc:  # check every run, then fail
                print(f"DAMAGED  {run_id}: {' '.join(str(exc).split())}")
                damaged += 1
                continue
            print(f"ok  {run_id}{_manifest_note(run_path)}")
        for name in study.incomplete:
            print(f"INCOMPLETE  {name}")
        return 1 if study.incomplete or damaged else 0
    verify(path)
    print(f"ok  {path}{_manifest_note(path)}")
    return 0


def _manifest_note(path: Path) -> str:
    from ..dump.store import has_manifest

    if has_manifest(path):
        return " (every file matches the manifest in its completion mark)"
    return (" (no manifest: written before causalgeom recorded one; chunk files were counted and sized against "
            "the arrays' shapes, stray files looked for, checksums and values checked; swapped chunks cannot be "
            "told apart without a manifest: re-save the run to add one)")


def parse_attrs(items: list[str]) -> dict:
    """``--attr KEY=VALUE`` items -> dict (each value parsed as JSON when it can be, else kept as text)."""
    from ..errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--attr: expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _import(args: argparse.Namespace) -> int:
    from ..dump.adapters import import_dump, import_study
    from ..errors import ConfigError

    keys = dict(features_key=args.features_key, logits_key=args.logits_key, labels_key=args.labels_key,
                head=args.head, max_bytes=args.max_bytes)
    mode = "w" if args.overwrite else "w-"
    dst = Path(args.dst)
    if len(args.src) == 1 and dst.suffix == ".zarr":
        if args.run_table:
            raise ConfigError("--run-table is for importing into a study folder, not a single RUN.zarr")
        attrs = parse_attrs(args.attr)
        if "run_id" in attrs and str(attrs["run_id"]) != dst.stem:
            # a run's folder is RUN_ID.zarr (what a study reads): another run_id would leave it unreadable
            raise ConfigError(f"--attr run_id={attrs['run_id']}: a run store's run_id is its folder name "
                              f"({dst.stem!r} for {dst.name}); name the store {attrs['run_id']}.zarr instead, "
                              "or drop --attr run_id")
        attrs["run_id"] = dst.stem
        made = [p for p in reversed(dst.absolute().parents) if not p.exists()]
        dst.parent.mkdir(parents=True, exist_ok=True)  # `import dump.npz study/run1.zarr` creates study/
        try:
            ds = import_dump(args.src[0], dst, attrs=attrs, mode=mode, **keys)
        except BaseException:
            for folder in reversed(made):  # nothing half written: remove the folders made for it
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            raise
        print(f"imported {args.src[0]} -> {dst} ({ds.sizes['sample']} samples, "
              f"{'with' if 'head_weight' in ds else 'without'} head)")
        return 0
    if args.attr:
        raise ConfigError("--attr applies to a single RUN.zarr import; use --run-table for a study")
    run_ids = import_study(args.src, dst, run_table=args.run_table, mode=mode, **keys)
    print(f"imported {len(run_ids)} runs into study {dst}: {', '.join(run_ids)}")
    return 0
