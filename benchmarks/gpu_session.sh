#!/usr/bin/env bash
# One prepared run for a lent H100/H200 (about 11 minutes): CUDA tests, the throughput table and the
# CIFAR-10 GPU recipe, logs and JSON written to OUTDIR.
#
#   cp ../shared/data/cifar10-train-jpeg.tar.gz .data/    # .data/ is git-ignored; carry it
#   bash benchmarks/gpu_session.sh OUTDIR [CIFAR_SECONDS]
#
# Each step has its own time limit, so a slow step cannot eat the next one's time; the CIFAR run's
# per-epoch metrics are copied out even when its limit stops it. OUTDIR gets at most 7 files.
set -uo pipefail
out=${1:?usage: gpu_session.sh OUTDIR [CIFAR_SECONDS]}
cifar_seconds=${2:-420}
throughput_seconds=${THROUGHPUT_SECONDS:-200}
device=${DEVICE:-cuda}  # DEVICE=cpu for a dry run of the plumbing on a machine without a GPU
archive=.data/cifar10-train-jpeg.tar.gz
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  $python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
} 2>&1 | tee "$out/machine.txt"

# 1. the CUDA-only tests (batched augmentation CPU/GPU parity, nvJPEG decoding, GPU residency)
timeout 120 $python -m pytest -q -p no:cacheprovider tests/test_augment.py tests/test_feed.py -k cuda 2>&1 \
  | tee "$out/cuda-tests.log"

# 2. the data once, then images/s: conventional vs ours vs ceiling, plus streaming from files
run=/tmp/simclrv2-gpu
mkdir -p "$run" && tar -xzf "$archive" -C "$run" && data=$(dirname "$(find "$run" -type d -name train | head -1)")
timeout "$throughput_seconds" $python benchmarks/throughput.py --device "$device" --compile --workers 16 --batch-size 512 \
  --data "$data/train" --num-images 50000 --steps 50 --warmup 10 --json "$out/throughput-gpu.json" 2>&1 \
  | tee "$out/throughput-gpu.log"

# 3. the CIFAR-10 semi-supervised benchmark, GPU recipe (progress bars kept apart, their last lines appended)
timeout "$cifar_seconds" $python benchmarks/cifar10_semisup.py --data "$data" --scale gpu --out "$run/cifar10-gpu" \
  --json "$out/cifar10-gpu.json" device="$device" 2>"$run/cifar10-gpu.stderr" | tee "$out/cifar10-gpu.log"
tr '\r' '\n' <"$run/cifar10-gpu.stderr" | grep -v '^\s*$' | tail -n 40 >>"$out/cifar10-gpu.log"
find "$run/cifar10-gpu" -name metrics.jsonl | sort | while read -r f; do
  sed "s|^|${f#"$run"/cifar10-gpu/} |" "$f"
done >"$out/cifar10-gpu-metrics.txt"
ls -la "$out"
