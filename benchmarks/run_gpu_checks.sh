#!/usr/bin/env bash
# Every GPU measurement attnrl makes, as one command (needs torch, triton, transformers, pytest, hypothesis):
#   bash benchmarks/run_gpu_checks.sh [OUT_DIR]
# 1. benchmarks/bench_attention_stats.py (kernels at T = 2K..32K and the ~0.5B model forward);
# 2. torch.profiler tables of the model forward with statistics (benchmarks/bench_attention_stats.py --profile);
# 3. the Triton kernel tests compiled for the GPU (ATTNRL_TEST_GPU=1), against the PyTorch reference.
# Works from a source checkout without installing: attnrl/, kernels/ and rewards/ are laid out as the installed
# package (attnrl.kernels, attnrl.rewards) in a temporary folder first.
set -uo pipefail
OUT_DIR="${1:-benchmarks/results}"
mkdir -p "$OUT_DIR"
PKG="$(mktemp -d)"
cp -r attnrl "$PKG/attnrl" && cp -r kernels "$PKG/attnrl/kernels" && cp -r rewards "$PKG/attnrl/rewards"
export PYTHONPATH="$PKG${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT_DIR/gpu_env.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT_DIR/gpu_env.txt"
status=0
timeout 300 python3 benchmarks/bench_attention_stats.py ${BENCH_ARGS:-} --out "$OUT_DIR" 2>&1 | tee "$OUT_DIR/gpu_bench.log" || status=1
timeout 120 python3 benchmarks/bench_attention_stats.py --profile --out "$OUT_DIR" > "$OUT_DIR/gpu_profile.log" 2>&1 || status=1
# the tests run from the laid-out copy, so that `attnrl.kernels` resolves there and not to the source tree
cp -r tests pyproject.toml "$PKG/"
LOG="$(realpath "$OUT_DIR")/gpu_kernel_tests.log"
(cd "$PKG" && ATTNRL_TEST_GPU=1 timeout 240 python3 -m pytest tests/test_triton_stats.py -q -p no:cacheprovider 2>&1 \
  | tee "$LOG") || status=1
exit $status
