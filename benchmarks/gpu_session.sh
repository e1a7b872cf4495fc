#!/usr/bin/env bash
# One prepared run for a lent H100/H200: CUDA tests, the throughput table, the CIFAR-10 GPU recipe, the
# Imagenette rows and the lightly ratio, logs and JSON written to OUTDIR. The default limits add up to
# 505 s (plus unpacking the archives), so that it fits one device call of at most 600 s.
#
#   cp ../shared/data/cifar10-train-jpeg.tar.gz .data/    # .data/ is git-ignored; carry it
#   python benchmarks/subset_archive.py ../shared/data/imagenette2-160-train.tar.gz .data/imagenette-subset.tar.gz
#                                                         # optional: the Imagenette rows (steps 4-6; the
#                                                         # whole archive is over the 64 MiB a call carries)
#   python -m pip download --no-deps -d .data/wheels lightly==1.6.0  # step 6: the GPU image has no lightly
#   bash benchmarks/gpu_session.sh OUTDIR [CIFAR_SECONDS]
#
# Imagenette (steps 4-5, only when its archive is in .data/): IMAGENETTE_SECONDS (default 75) for
# the 128-px semi-supervised run, IMAGENETTE_EPOCHS (default 100) pretraining epochs, and a
# throughput run on the photos (crops from the whole image: streamed + on-device vs PIL in workers);
# then (step 6, PEERS_SECONDS, default 150) benchmarks/peers.py: ours vs lightly with 16 workers.
#
# Each step has its own time limit, so a slow step cannot eat the next one's time; the CIFAR run's
# per-epoch metrics are copied out even when its limit stops it. OUTDIR gets at most 14 files.
set -uo pipefail
out=${1:?usage: gpu_session.sh OUTDIR [CIFAR_SECONDS]}
cifar_seconds=${2:-120}
throughput_seconds=${THROUGHPUT_SECONDS:-50}
device=${DEVICE:-cuda}  # DEVICE=cpu for a dry run of the plumbing on a machine without a GPU
archive=.data/cifar10-train-jpeg.tar.gz
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
# wheels carried in .data/wheels (lightly for step 6), installed beside the machine's packages
if ls .data/wheels/*.whl >/dev/null 2>&1; then
  $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .data/wheels/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi

{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  $python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
} 2>&1 | tee "$out/machine.txt"

# 1. the CUDA-only tests (batched augmentation CPU/GPU parity, nvJPEG decoding, GPU residency)
timeout 60 $python -m pytest -q -p no:cacheprovider tests/test_augment.py tests/test_feed.py -k cuda 2>&1 \
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
# 4-5. Imagenette: photo throughput, then the GPU scale (128-px views, ResNet-18, batch 256)
nette_archive=.data/imagenette-subset.tar.gz
[ -f "$nette_archive" ] || nette_archive=.data/imagenette2-160-train.tar.gz
if [ -f "$nette_archive" ]; then
  nette_seconds=${IMAGENETTE_SECONDS:-75}
  nette_epochs=${IMAGENETTE_EPOCHS:-100}
  mkdir -p "$run/nette" && tar -xzf "$nette_archive" -C "$run/nette"
  nette=$(dirname "$(find "$run/nette" -type d -name train | head -1)")
  timeout "$throughput_seconds" $python benchmarks/throughput.py --device "$device" --compile --workers 16 \
    --batch-size 256 --image-size 128 --strength 1.0 --data "$nette/train" --num-images 9469 --steps 30 --warmup 5 \
    --json "$out/throughput-imagenette-gpu.json" 2>&1 | tee "$out/throughput-imagenette-gpu.log"
  timeout "$nette_seconds" $python benchmarks/semisup.py --dataset imagenette --data "$nette" --scale gpu \
    --out "$run/imagenette-gpu" --json "$out/imagenette-gpu.json" device="$device" pretrain.epochs="$nette_epochs" \
    2>"$run/imagenette-gpu.stderr" | tee "$out/imagenette-gpu.log"
  tr '\r' '\n' <"$run/imagenette-gpu.stderr" | grep -v '^\s*$' | tail -n 40 >>"$out/imagenette-gpu.log"
  # 6. side by side with lightly's SimCLR example (16 DataLoader workers), when lightly is installed
  timeout "${PEERS_SECONDS:-150}" $python benchmarks/peers.py --data "$nette/train" --device "$device" --work "$run/peers" \
    --lightly-workers 16 --threads 16 --ours decoded --image-size 128 --batch-size 256 --train-per-class 256 \
    --repeats 1 --json "$out/peers-gpu.json" --markdown "$out/peers-gpu.md" 2>&1 | tee "$out/peers-gpu.log"
fi
ls -la "$out"
