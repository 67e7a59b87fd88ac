#!/usr/bin/env bash
# CUDA-only checks and benchmarks of causalgeom, in one go (about 4-6 minutes on one H200 before the zoo case of
# section 5, which has not run on a GPU yet; its goal is under 5 more minutes).
#
#   bash benchmarks/gpu_check.sh            # from a bare checkout on a GPU machine
#
# 1. sets up a virtual environment (default .venv-gpu, with --system-site-packages so that a CUDA build of
#    torch already on the machine is reused) and runs `pip install -e .[test]`;
# 2. fails clearly (exit 2/3) when there is no NVIDIA GPU or torch cannot use CUDA;
# 3. functional checks on CUDA: fp32 extraction on cuda equals the CPU one (to 1e-4), bf16 (amp) extraction
#    keeps logits = head(features) in fp32, the torchrun rank device is cuda:LOCAL_RANK;
# 4. benchmarks through benchmarks/run_all.py (table of ratios, peak memory, machine incl. GPU):
#    bench_extract   bf16 extraction throughput vs a bare loop: ResNet-18, 50,000 CIFAR-shaped images;
#    bench_attacks   PGD vs torchattacks and the eps sweep on CUDA (ResNet-18, 10,000 images);
#    bench_cifar_extract  ResNet-18 (CIFAR stem) extraction of 50,000 random 32x32 images with a PGD sweep.
# 5. the zoo case (not yet run on a GPU): ResNet-50 zoo, 10,000 JPEGs, PGD at 4 eps, bf16.
#
# Environment: CG_PYTHON (interpreter, default python3.11 or python3), CG_VENV (default .venv-gpu),
# CG_PIP_ARGS (extra pip arguments, e.g. "--no-index --find-links /wheels"), CG_SKIP_INSTALL=1 (use the
# current interpreter as is), CG_RESULTS (Markdown table, default $OUT/benchmarks_gpu.md when $OUT is set,
# else docs/benchmarks_gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
say() { printf '\n[gpu_check %3ds] %s\n' "$(( $(date +%s) - start ))" "$*"; }
fail() { printf '\n[gpu_check] FAIL: %s\n' "$1" >&2; exit "${2:-1}"; }

# -- 1. a GPU at all? ----------------------------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1; then
  fail "no NVIDIA driver on this machine (nvidia-smi not found); these checks need a CUDA GPU" 2
fi
if ! nvidia-smi -L >/dev/null 2>&1 || [ -z "$(nvidia-smi -L 2>/dev/null)" ]; then
  fail "nvidia-smi finds no GPU: $(nvidia-smi -L 2>&1 | head -3)" 2
fi
say "GPUs: $(nvidia-smi -L | tr '\n' ';')"

# -- 2. environment ------------------------------------------------------------------------------------------
if [ "${CG_SKIP_INSTALL:-0}" = "1" ]; then
  PY="${CG_PYTHON:-python3}"
else
  BASE="${CG_PYTHON:-python3.11}"
  command -v "$BASE" >/dev/null 2>&1 || BASE=python3
  "$BASE" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || fail "causalgeom needs Python >= 3.11, $BASE is $("$BASE" --version 2>&1); set CG_PYTHON" 2
  VENV="${CG_VENV:-.venv-gpu}"
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV ($("$BASE" --version), reusing system site-packages)"
    "$BASE" -m venv --system-site-packages "$VENV"
  fi
  PY="$VENV/bin/python"
  say "pip install -e .[test] ${CG_PIP_ARGS:-}"
  # shellcheck disable=SC2086
  "$PY" -m pip install -q -e ".[test]" ${CG_PIP_ARGS:-} \
    || fail "pip install -e .[test] failed (no package index reachable? set CG_PIP_ARGS, e.g. --find-links DIR)" 2
fi
"$PY" - <<'EOF' || fail "torch cannot use CUDA here (see above); install a CUDA build of torch <= 2.14.1" 3
import sys, torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA build {torch.version.cuda}, "
      f"available: {torch.cuda.is_available()}")
if not torch.cuda.is_available():
    sys.exit(1)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
print(f"  bf16 supported: {torch.cuda.is_bf16_supported()}")
EOF

# -- 3. functional checks on CUDA ----------------------------------------------------------------------------
say "functional checks: cuda vs cpu extraction, bf16 extraction, rank device"
timeout 300 "$PY" - <<'EOF' || fail "functional CUDA checks failed (output above)" 1
import math, tempfile, time
from pathlib import Path
import numpy as np, torch
import causalgeom as cg
from causalgeom import distributed

tmp = Path(tempfile.mkdtemp(prefix="cg-gpu-check-"))
g = torch.Generator().manual_seed(0)
x, y = torch.rand(2048, 3, 32, 32, generator=g), torch.randint(0, 10, (2048,), generator=g)
with torch.random.fork_rng(devices=[]):
    torch.manual_seed(0)
    model = cg.models.build_model("resnet18", 10, cifar_stem=True).eval()
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
kw = dict(batch_size=256, progress=False, attacks=[cg.attacks.PGD("linf", steps=3)], eps=[1 / 255, 4 / 255],
          generator=0)
cpu = cg.open(cg.extract(model, (x, y), tmp / "cpu.zarr", device="cpu", **kw)).load()
gpu = cg.open(cg.extract(model, (x, y), tmp / "gpu.zarr", device="cuda", **kw)).load()
for v in ("features", "logits"):
    d = float(np.abs(cpu[v].values - gpu[v].values).max())
    print(f"  fp32 {v}: max |cuda - cpu| = {d:.2e}")
    assert d < 1e-3 * max(1.0, float(np.abs(cpu[v].values).max())), v
agree = float((cpu["adv_correct"].values == gpu["adv_correct"].values).mean())
print(f"  PGD outcomes agree on {agree:.4f} of (attack, eps, sample) (random starts differ between devices)")
amp = cg.open(cg.extract(model, (x, y), tmp / "amp.zarr", device="cuda", amp=True, batch_size=256,
                         progress=False)).load()
W, b = amp["head_weight"].values.astype(np.float64), amp["head_bias"].values.astype(np.float64)
resid = float(np.abs(amp["features"].values.astype(np.float64) @ W.T + b - amp["logits"].values).max())
dfeat = float(np.abs(amp["features"].values - cpu["features"].values).max() / np.abs(cpu["features"].values).max())
print(f"  bf16: logits = head(features) to {resid:.1e}; features vs fp32 relative {dfeat:.1e}")
assert resid < 1e-3 and dfeat < 0.1
assert distributed.rank_device("cuda", distributed.RankInfo(0, 1, 0, False)) == "cuda:0"
print("functional checks passed")
EOF

# -- 4. benchmarks ---------------------------------------------------------------------------------------------
RESULTS="${CG_RESULTS:-${OUT:+$OUT/benchmarks_gpu.md}}"
RESULTS="${RESULTS:-docs/benchmarks_gpu.md}"
say "benchmarks (table -> $RESULTS)"
timeout 420 "$PY" benchmarks/run_all.py --only extract,attacks,cifar_extract --timeout 240 --doc "$RESULTS" \
  --args extract="--device cuda --model resnet18 --n 50000 --batch-size 512 --image-size 32 --amp --repeats 3" \
  --args attacks="--device cuda --model resnet18 --n 10000 --batch-size 512 --repeats 2" \
  --args cifar_extract="--device cuda --model resnet18 --n 50000 --baseline-n 5000 --batch-size 1024 --steps 7 --amp" \
  || fail "a benchmark failed or timed out (output above)" 1

# -- 5. zoo case (NOT YET RUN ON A GPU: written and dry-run on CPU with CG_ZOO_N=24 CG_ZOO_DEVICE=cpu only) -------
# The ResNet-50 zoo (pipelines/zoo_resnet50_imagenet.toml, 6 checkpoints) on CG_ZOO_N (10,000) images of a folder,
# the reference PGD sweep at 4 eps, bf16 (amp="all"), images/s printed per checkpoint. Goal on one H200: < 5 min.
# CG_ZOO_DATA=DIR (an ImageNet val layout) with warm weight caches uses them; otherwise random JPEGs (1000 wnid-like
# folders) and random-init weights written under the caches' file names (the device has no network). CG_SKIP_ZOO=1
# skips this case.
if [ "${CG_SKIP_ZOO:-0}" != "1" ]; then
  say "zoo case: ResNet-50 zoo, ${CG_ZOO_N:-10000} images, reference PGD at 4 eps, bf16"
  timeout 480 "$PY" - <<'EOF' || fail "zoo case failed or timed out (output above)" 1
import os, sys, tempfile, time
from pathlib import Path
import numpy as np, torch
import causalgeom as cg
from causalgeom.pipeline.zoo import read_zoo, extract_zoo

n = int(os.environ.get("CG_ZOO_N", "10000"))
device = os.environ.get("CG_ZOO_DEVICE", "cuda")
tmp = Path(tempfile.mkdtemp(prefix="cg-zoo-"))
zoo = read_zoo("pipelines/zoo_resnet50_imagenet.toml")
data_dir = os.environ.get("CG_ZOO_DATA")
if not data_dir:  # synthetic: random JPEGs and random-init weights under the caches' file names
    import timm, torchvision
    from PIL import Image
    from safetensors.torch import save_file
    from concurrent.futures import ThreadPoolExecutor
    os.environ["TORCH_HOME"] = str(tmp / "torch")
    os.environ["HF_HUB_CACHE"] = str(tmp / "hf")
    data_dir = str(tmp / "val")
    k, per = 1000, max(1, -(-n // 1000))
    rng = np.random.default_rng(0)
    def write(c):
        d = Path(data_dir) / f"n{c:08d}"
        d.mkdir(parents=True)
        r = np.random.default_rng(c)
        for i in range(per):
            Image.fromarray(r.integers(0, 256, (256, 320, 3), dtype=np.uint8)).save(d / f"{i}.JPEG", quality=85)
    t = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count() or 4) as ex:
        list(ex.map(write, range(k)))
    print(f"  wrote {k * per} random JPEGs (256x320) in {time.perf_counter() - t:.1f} s")
    tv = torchvision.models.resnet50().state_dict()
    for name in ("IMAGENET1K_V1", "IMAGENET1K_V2"):
        f = cg.models.torch_hub_file(torchvision.models.ResNet50_Weights[name].url)
        f.parent.mkdir(parents=True, exist_ok=True)
        torch.save(tv, f)
    tm = timm.create_model("resnet50", pretrained=False).state_dict()
    for e in zoo["models"]:
        if e["model"].startswith("timm:"):
            repo = tmp / "hf" / ("models--timm--" + e["model"][5:])
            (repo / "snapshots" / "r").mkdir(parents=True)
            (repo / "refs").mkdir()
            (repo / "refs" / "main").write_text("r")
            save_file(tm, str(repo / "snapshots" / "r" / "model.safetensors"))
eps = [0.5 / 255, 1 / 255, 2 / 255, 4 / 255]
total = time.perf_counter()
for e in zoo["models"]:
    one = {**zoo, "models": [e]}
    t = time.perf_counter()
    extract_zoo(one, f"imagefolder:{data_dir}", tmp / "study", limit=n, seed=0, attacks="reference", eps=eps,
                device=device, amp="all" if device.startswith("cuda") else False, batch_size=256,
                num_workers=min(12, os.cpu_count() or 1), progress=False)
    dt = time.perf_counter() - t
    print(f"  {e['id']:>9}: {n} images in {dt:6.1f} s = {n / dt:7.1f} images/s (decode + clean + PGD 7 steps x 4 eps)")
dt = time.perf_counter() - total
study = cg.open_study(tmp / "study")
digests = {study[r].attrs["sample_ids_sha256"] for r in study.run_ids}
assert len(study.run_ids) == len(zoo["models"]) and len(digests) == 1, "runs must share their sample ids"
print(f"zoo case: {len(study.run_ids)} checkpoints x {n} images in {dt:.1f} s ({len(study.run_ids) * n / dt:.1f} "
      f"images/s overall); goal on one H200: < 300 s end to end")
EOF
fi
say "done in $(( $(date +%s) - start )) s; results in $RESULTS"
