#!/usr/bin/env bash
# One prepared script for a lent GPU: CUDA tests, loss benchmark on CUDA, training throughput.
# Usage on the device machine (repo root): bash benchmarks/device_check.sh "$OUT"
set -uo pipefail
out=${1:-/tmp/avgk-device}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install -q -e ".[test]" 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python3 -m pytest -q tests/test_dtypes_devices.py tests/test_ops.py 2>&1 | tail -5 | tee "$out/cuda_tests.txt"
python3 benchmarks/bench_losses.py --device cuda --json "$out/bench_losses_cuda.json" 2>&1 | tee "$out/bench_losses_cuda.txt"
python3 benchmarks/bench_gpu_training.py --json "$out/bench_gpu_training.json" 2>&1 | tee "$out/bench_gpu_training.txt"
