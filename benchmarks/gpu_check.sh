#!/usr/bin/env bash
# The GPU path in one command (issue #31): the GPU-marked tests (bf16 autocast, SDPA's flash
# kernel, a compiled train step, nccl DDP and FSDP2 on one GPU), then the GPU bench
# (benchmarks/gpu.py: GPT-2 small against HF with MFU, mdlm_base, KV-cache generation against HF
# generate, cached MDLM sampling, data wait, peak memory). Nothing is downloaded.
#
#   benchmarks/gpu_check.sh [OUT_DIR]             on a machine with a CUDA GPU (about 5-8 minutes on one H100)
#   benchmarks/gpu_check.sh --dry-run [OUT_DIR]   on CPU: the tests are collected and skipped, every bench
#                                                 section runs at a toy size (checks the script, measures nothing)
#
# Writes OUT_DIR (default gpu_check/) with tests.log, bench.md and bench.json. PYTHON picks the interpreter.
set -euo pipefail

dry_run=""
if [[ "${1:-}" == "--dry-run" ]]; then
    dry_run="--dry-run"
    shift
fi
out="$(realpath -m "${1:-gpu_check}")"
python="${PYTHON:-python}"
cd "$(dirname "$0")/.."
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

if [[ -z "$dry_run" ]] && ! "$python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: no CUDA GPU visible to $python; run on a GPU machine, or use --dry-run" >&2
    exit 2
fi
"$python" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU (dry run)')"

echo "== GPU tests"
"$python" -m pytest -q -rs -m gpu -p no:cacheprovider tests/recipes/test_gpu_training.py 2>&1 | tee "$out/tests.log"

echo "== GPU bench"
"$python" -m benchmarks.gpu $dry_run --output "$out/bench.json" 2>&1 | tee "$out/bench.md"
echo "gpu_check: done; results in $out"
