#!/bin/bash
# The CUDA checks, as one short run on a machine with an NVIDIA GPU (about 6 minutes on an
# H200): the compiled-step tests on CUDA, then benchmarks/compiled_step.py there (eager,
# compile_step=True and ="reduce-overhead" against torch.optim.Muon and Keller Jordan's
# algorithm). Usage: bash benchmarks/gpu_checks.sh [OUT_DIR]; the records land in
# docs/results/compiled_step/cuda.json and docs/benchmarks.md, copied to OUT_DIR when given.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
out="${1:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_compiled_step.py
timeout 300 python3 benchmarks/compiled_step.py --sets 128x4,256x1,768x12 --repeats 21
if [ -n "$out" ]; then
    cp docs/results/compiled_step/cuda.json docs/benchmarks.md "$out"/
fi
