#!/usr/bin/env bash
# Every GPU check of splatkit in one run (see scripts/gpu_check.py), for a bare machine
# with an NVIDIA GPU, PyTorch and nvcc but no network. Before it, on a networked machine:
#   scripts/fetch_gpu_wheels.sh            # gsplat + splatkit's pure-Python deps -> .whl/
#   cp -r ../shared/datasets/fox .gpu_data/ # the real capture for parity and the training run
# and carry .whl and .gpu_data. Writes $OUT/gpu_check.json (and the build log).
# Budget: ~60-90 s gsplat build, ~1 min parity, ~1 min overhead, ~2-3 min real runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/splatkit_gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
PY=${PYTHON:-python3}
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "gpu_check: could not install the carried wheels from .whl/" >&2; exit 1; }
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
t0=$(date +%s)
# gsplat JIT-builds its CUDA extension on first use; do it once, timed, with the log kept.
$PY -c "import torch, gsplat; from gsplat.cuda._backend import _C; assert _C is not None; print('gsplat', gsplat.__version__, 'built for', torch.cuda.get_device_name())" \
  > "$OUT/gsplat_build.log" 2>&1 || { tail -40 "$OUT/gsplat_build.log"; echo "gpu_check: gsplat build failed" >&2; exit 1; }
echo "gsplat build: $(( $(date +%s) - t0 )) s"; tail -1 "$OUT/gsplat_build.log"
DATA=${SPLATKIT_DATASETS:-.gpu_data}
$PY scripts/gpu_check.py --out "$OUT/gpu_check.json" --data "$DATA" "$@"
