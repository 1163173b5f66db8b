#!/usr/bin/env bash
# Download the wheels the GPU machine lacks into .whl/ (git-ignored), for CPython 3.12 manylinux x86_64:
#   bash benchmarks/fetch_gpu_wheels.sh [DEST]     # default DEST=.whl
#   bash benchmarks/fetch_gpu_wheels.sh --list     # print the pinned requirements, download nothing
# The GPU image has torch, triton, transformers, peft, accelerate, pyarrow, pandas, xxhash, ... but not trl,
# datasets (nor its dill / multiprocess) or math-verify (nor latex2sympy2_extended / antlr4): those travel with the
# checkout (64 MiB in all) and benchmarks/run_gpu_checks.sh installs them with pip --target. The pins are the
# versions the CPU tests run on (tests/test_gpu_bench_cpu.py checks that they match the installed ones).
set -euo pipefail
REQUIREMENTS=(
  trl==1.16.0
  datasets==5.2.0
  dill==0.4.1
  multiprocess==0.70.19
  math-verify==0.9.0
  latex2sympy2_extended==1.11.0
  antlr4-python3-runtime==4.13.2
)
if [[ "${1:-}" == "--list" ]]; then
  printf '%s\n' "${REQUIREMENTS[@]}"
  exit 0
fi
DEST="${1:-.whl}"
PYTHON="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}"
mkdir -p "$DEST"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${REQUIREMENTS[@]}"
# one version of each package, or the install on the GPU machine stops
dupes=$(ls "$DEST" | sed -E 's/-[0-9][^-]*-.*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d)
if [[ -n "$dupes" ]]; then
  echo "several versions of: $dupes in $DEST; delete $DEST and run again" >&2
  exit 1
fi
ls -l "$DEST"
echo "total: $(du -sk "$DEST" | cut -f1) KiB in $(ls "$DEST" | wc -l) wheels (the checkout travels with at most 64 MiB)"
