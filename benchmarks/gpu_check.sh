#!/usr/bin/env bash
# Device check of the data pipeline on a CUDA machine: the GPU tests, then the loading
# benchmark with the batch transform on the GPU. Usage: benchmarks/gpu_check.sh DATA_ROOT [OUT]
set -uo pipefail
root=${1:?usage: benchmarks/gpu_check.sh DATA_ROOT [OUT]}
out=${2:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CELEBA_SUBSET=$root
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$python" -c "import torch, torchvision, lightning as L; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'lightning', L.__version__)"
"$python" -m pytest tests/test_gpu.py -q -p no:cacheprovider -rs 2>&1 | tail -5
for workers in 2 8; do
  "$python" benchmarks/data_loading.py --root "$root" --cache-dir /tmp/bench-cache --batches 100 \
    --workers "$workers" --output "$out/data_loading_b32_w$workers.json"
done
"$python" benchmarks/data_loading.py --root "$root" --cache-dir /tmp/bench-cache --batches 40 \
  --batch-size 256 --workers 8 --output "$out/data_loading_b256_w8.json"
