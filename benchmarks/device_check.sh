#!/usr/bin/env bash
# One prepared script for a lent NVIDIA GPU (never needed by CI). From the repository root:
#
#   bash benchmarks/device_check.sh [OUT]        # OUT defaults to $OUT, else /tmp/avgk-device
#
# Steps (each logged to OUT/<step>.txt; OUT/summary.txt lists exit codes and wall times):
#   1. gpu:      nvidia-smi, torch's view of the device
#   2. tests:    the CUDA tests (dtype/device matrix, ops) on the GPU
#   3. losses:   loss + calibration benchmark on CUDA          -> OUT/bench_losses_cuda.json
#   4. training: ResNet-18 throughput, bf16/fp16/fp32 autocast x channels_last, and the share of a
#                step the noised top-K loss costs              -> OUT/bench_gpu_training_cuda.json
#   5. chapter:  one chapter at the colab preset with papermill (CHAPTER=04_label_noise,
#                PRESET=colab; its dataset must be under AVGK_DATA_DIR: the machine is offline)
# The JSON files carry the provenance block (git commit, versions, GPU name); commit them by
# copying them into book/avgk_book/reference_results/. Environment: PYTHON (default python3), CHAPTER,
# PRESET, CHAPTER_TIMEOUT (seconds, default 1500), AVGK_DATA_DIR.
set -uo pipefail
out=${1:-${OUT:-/tmp/avgk-device}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
chapter=${CHAPTER:-04_label_noise}
preset=${PRESET:-colab}
export PYTHONUNBUFFERED=1 AVGK_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export AVGK_CACHE_DIR="$out/cache"
: > "$out/summary.txt"

step() {  # step NAME COMMAND...: run, log, record exit code and seconds
  local name=$1 start rc
  shift
  start=$(date +%s)
  echo "== $name: $*" > "$out/$name.txt"
  "$@" >> "$out/$name.txt" 2>&1
  rc=$?
  tail -n 25 "$out/$name.txt"
  printf '%-9s rc=%-3s %5ss\n' "$name" "$rc" "$(( $(date +%s) - start ))" | tee -a "$out/summary.txt"
}

step gpu bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv && $py -c \
'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name())'"
step tests "$py" -m pytest -q -p no:cacheprovider tests/test_dtypes_devices.py tests/test_ops.py
step losses "$py" benchmarks/bench_losses.py --device cuda --json "$out/bench_losses_cuda.json"
step training "$py" benchmarks/bench_gpu_training.py --variants bf16+cl bf16 fp16+cl off+cl off \
  --json "$out/bench_gpu_training_cuda.json"
step chapter timeout "${CHAPTER_TIMEOUT:-1500}" "$py" -m papermill "notebooks/$chapter.ipynb" \
  "$out/${chapter}_$preset.ipynb" -p PRESET "$preset" -p DEVICE cuda --cwd notebooks --no-progress-bar
cat "$out/summary.txt"
