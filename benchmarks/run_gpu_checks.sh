#!/usr/bin/env bash
# Every GPU measurement attnrl makes, as one command that ends within TOTAL_S seconds (default 570, inside a
# 10-minute call):
#   bash benchmarks/run_gpu_checks.sh [OUT_DIR]              on a CUDA machine (default benchmarks/results/gpu)
#   CPU_CHECK=1 bash benchmarks/run_gpu_checks.sh [OUT_DIR]  every Python step in its --cpu-check form, on CPU
#   PLAN=1 bash benchmarks/run_gpu_checks.sh                 print the steps and their time limits, run nothing
# Steps, each under its own time limit (cut to what is left of TOTAL_S; a step that fails does not stop the rest):
#   wheels   pip-install the wheels in .whl/ (benchmarks/fetch_gpu_wheels.sh: trl, datasets, math-verify, ...)
#            into a temporary --target folder put on PYTHONPATH (skipped when .whl/ is absent)
#   layer    benchmarks/bench_attention_stats.py --skip-model-forward: one layer, T = 2K..32K, ratio to SDPA
#   model    benchmarks/bench_attention_stats.py --model-forward --model-batches 1 8: statistics inside a ~0.5B
#            model forward by device time, with the peers (paper's approach, eager statistics, chunked PyTorch)
#   grpo     benchmarks/bench_gpu_grpo_step.py: AttnGRPOTrainer vs trl.GRPOTrainer step time; Triton vs torch gamma
#   tests    tests/test_triton_stats.py with ATTNRL_TEST_GPU=1 (compiled kernels; pytest-xdist when present)
#   profile  benchmarks/bench_attention_stats.py --profile: torch.profiler tables of the forward with statistics
# OUT_DIR receives 8 files (the most a device call brings back): attention_stats_<gpu>.{json,md},
# model_forward_<gpu>.{json,md}, grpo_step_<gpu>.{json,md}, profile_model_forward.txt and gpu_checks.log (versions,
# every step's output, the summary). Exit status: 0 when every step exited 0.
# Works from a source checkout without installing: attnrl/, kernels/ and rewards/ are laid out as the installed
# package (attnrl.kernels, attnrl.rewards) in a temporary folder first.
set -uo pipefail
cd "$(dirname "$0")/.."

STEPS=(wheels layer model grpo tests profile)
declare -A LIMIT=([wheels]=20 [layer]=120 [model]=130 [grpo]=150 [tests]=100 [profile]=30)
TOTAL_S="${TOTAL_S:-570}"

if [[ "${PLAN:-0}" == 1 ]]; then
  sum=0
  for s in "${STEPS[@]}"; do echo "$s ${LIMIT[$s]}"; sum=$((sum + LIMIT[$s])); done
  echo "total $sum (cap $TOTAL_S)"
  exit 0
fi

CPU_CHECK="${CPU_CHECK:-0}"
if [[ "$CPU_CHECK" == 1 ]]; then  # the Triton interpreter is slow: three times the GPU limits
  for s in "${STEPS[@]}"; do LIMIT[$s]=$((3 * LIMIT[$s])); done
  TOTAL_S=$((3 * TOTAL_S))
  CHECK=(--cpu-check)
  OUT_DIR="${1:-$(mktemp -d)}"
  PY="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo "$PWD/.venv/bin/python" || echo python3 )}"
else
  CHECK=()
  OUT_DIR="${1:-benchmarks/results/gpu}"
  PY="${PYTHON:-python3}"
fi
mkdir -p "$OUT_DIR"
OUT_DIR="$(realpath "$OUT_DIR")"
LOG="$OUT_DIR/gpu_checks.log"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

source benchmarks/gpu_env.sh
PKG="$(mktemp -d)"
layout_package "$PKG" && cp -r tests pyproject.toml "$PKG/"
export PYTHONPATH="$PKG${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

START=$SECONDS
WHEELS_RC=1
SUMMARY=()
status=0
step() {  # step NAME COMMAND...: run under min(LIMIT[NAME], time left of TOTAL_S), record rc and seconds
  local name=$1 limit=${LIMIT[$1]}
  shift
  local left=$((TOTAL_S - (SECONDS - START)))
  ((limit > left)) && limit=$left
  if ((limit < 5)); then
    echo "=== [$name] skipped: ${left}s left of TOTAL_S=${TOTAL_S}"
    SUMMARY+=("$name: skipped (no time left)")
    status=1
    return
  fi
  echo "=== [$name] limit ${limit}s: $*"
  local t0=$SECONDS rc
  timeout -k 5 "$limit" "$@"
  rc=$?
  printf -v "${name^^}_RC" %d "$rc"
  local took=$((SECONDS - t0))
  case $rc in
    0) SUMMARY+=("$name: ok in ${took}s (limit ${limit}s)") ;;
    124 | 137) SUMMARY+=("$name: TIMED OUT after ${took}s (limit ${limit}s)"); status=1 ;;
    *) SUMMARY+=("$name: FAILED rc=$rc after ${took}s"); status=1 ;;
  esac
  echo "=== [$name] rc=$rc in ${took}s"
}

echo "attnrl GPU checks $(date -u +%FT%TZ), CPU_CHECK=$CPU_CHECK, out $OUT_DIR"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if [[ -d .whl ]] && ls .whl/*.whl > /dev/null 2>&1; then
  SITE="$(mktemp -d)"
  # --python-version: the wheels are for the GPU machine's CPython 3.12 (a CPU check elsewhere installs them too)
  step wheels "$PY" "${WHEEL_INSTALL_ARGS[@]}" --target "$SITE" .whl/*.whl
  if ((WHEELS_RC == 0)) && wheels_match "$PY"; then
    export PYTHONPATH="$PYTHONPATH:$SITE"
    echo "$(ls .whl | wc -l) wheels in $SITE, on PYTHONPATH"
  else
    echo "wheels in $SITE not put on PYTHONPATH (install rc=$WHEELS_RC; they are for Python 3.12)"
  fi
else
  echo "=== [wheels] no .whl/ folder: using the installed packages"
  SUMMARY+=("wheels: none carried")
fi
"$PY" - << 'EOF'
import importlib.metadata as md, platform
names = ("torch", "triton", "transformers", "trl", "peft", "accelerate", "datasets", "pyarrow", "fsspec",
         "huggingface_hub", "tokenizers", "pytest", "pytest-xdist", "hypothesis")
def v(n):
    try:
        return md.version(n)
    except md.PackageNotFoundError:
        return "MISSING"
print("python", platform.python_version(), "|", ", ".join(f"{n} {v(n)}" for n in names))
EOF

step layer "$PY" benchmarks/bench_attention_stats.py "${CHECK[@]}" --skip-model-forward --out "$OUT_DIR"
if [[ "$CPU_CHECK" == 1 ]]; then
  step model "$PY" benchmarks/bench_attention_stats.py --cpu-check --model-forward --model-batches 1 2 --out "$OUT_DIR"
else
  step model "$PY" benchmarks/bench_attention_stats.py --model-forward --model-batches 1 8 --out "$OUT_DIR"
fi
step grpo "$PY" benchmarks/bench_gpu_grpo_step.py "${CHECK[@]}" --out "$OUT_DIR"

# the kernel tests run from the laid-out copy, so that `attnrl.kernels` resolves there and not to the source tree
if [[ "$CPU_CHECK" == 1 ]]; then  # interpreter mode: one quick test proves the invocation
  TEST_ARGS=(-k "${KERNEL_TESTS_K:-test_padded_positions_are_zero}")
  TEST_ENV=()
else
  TEST_ARGS=()
  TEST_ENV=(ATTNRL_TEST_GPU=1)
  "$PY" -c "import xdist" 2> /dev/null && TEST_ARGS=(-n 8)
fi
step tests env -C "$PKG" "${TEST_ENV[@]}" "$PY" -m pytest tests/test_triton_stats.py -q -p no:cacheprovider "${TEST_ARGS[@]}"

step profile "$PY" benchmarks/bench_attention_stats.py --profile "${CHECK[@]}" --out "$OUT_DIR"

echo
echo "=== summary ($((SECONDS - START))s of TOTAL_S=${TOTAL_S}s)"
printf '  %s\n' "${SUMMARY[@]}"
ls -l "$OUT_DIR"
rm -rf "$PKG"
exec 1>&- 2>&-
wait "$TEE_PID"  # the log is complete before the command returns
exit $status
