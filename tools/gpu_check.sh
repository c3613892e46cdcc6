#!/usr/bin/env bash
# The GPU checks of issues 14 (inference) and 15 (training), as one run on a CUDA machine with torch >= 2.11 and
# timm >= 1.0.29 installed (no install step, no network): from the repository root,
#   OUT=gpu-results bash tools/gpu_check.sh
# writes cuda-tests.log and bench-*.txt under $OUT (every baseline is measured in the same run as ours).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python -c "import torch, timm, torchvision; print('torch', torch.__version__, 'timm', timm.__version__, 'torchvision', torchvision.__version__)" | tee -a "$OUT/device.txt"

# correctness: the cuda-marked tests (parity with timm's TF port, bf16 spread, compile, CUDA graphs, gradients)
python -m pytest -m cuda tests/test_cuda.py -q -s -p no:cacheprovider 2>&1 | tee "$OUT/cuda-tests.log"

bench() { python benchmarks/bench.py --device cuda --no-memory "$@"; }
# issue 14: B0 at 224, bf16 autocast, channels_last, batch 256 (and batch-1 latency), eager then compiled; B7 at 600
bench --models b0 --modes infer,fast --dtype bf16 --channels-last --batch-sizes 1,256 --rounds 20 2>&1 | tee "$OUT/bench-infer-b0.txt"
bench --models b0 --modes infer --dtype bf16 --channels-last --batch-sizes 256 --compile --rounds 20 2>&1 | tee "$OUT/bench-infer-b0-compiled.txt"
bench --models b0 --modes infer --batch-sizes 1 --rounds 50 2>&1 | tee "$OUT/bench-latency-b0-fp32.txt"
bench --models b7 --modes infer --dtype bf16 --channels-last --batch-sizes 32 --rounds 10 2>&1 | tee "$OUT/bench-infer-b7.txt"
# issue 15: training step, B0 at 224, bf16 autocast, channels_last, batch 128: eager, compiled, grad checkpointing
python benchmarks/bench.py --device cuda --models b0 --modes train --dtype bf16 --channels-last --train-batch 128 --rounds 10 2>&1 | tee "$OUT/bench-train-b0.txt"
python benchmarks/bench.py --device cuda --models b0 --modes train --dtype bf16 --channels-last --train-batch 128 --compile --rounds 10 2>&1 | tee "$OUT/bench-train-b0-compiled.txt"
python benchmarks/bench.py --device cuda --models b0 --modes train --dtype bf16 --channels-last --train-batch 128 --grad-checkpointing --rounds 10 2>&1 | tee "$OUT/bench-train-b0-ckpt.txt"
python benchmarks/bench.py --device cuda --models b3 --modes train --dtype bf16 --channels-last --train-batch 64 --rounds 5 2>&1 | tee "$OUT/bench-train-b3.txt"
