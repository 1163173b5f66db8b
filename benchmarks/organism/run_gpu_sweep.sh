#!/usr/bin/env bash
# The organism credit sweep (budget B of benchmarks/organism/PREREGISTRATION.md) on one GPU machine, as one command
# that ends within TOTAL_S seconds (default 540, inside a 10-minute device call):
#   bash benchmarks/organism/run_gpu_sweep.sh OUT_DIR              on a CUDA machine (device tool: OUT_DIR=$OUT,
#                                                                   carry .whl from benchmarks/fetch_gpu_wheels.sh)
#   CPU_CHECK=1 bash benchmarks/organism/run_gpu_sweep.sh OUT_DIR  the same steps on CPU with a 2-step budget
# Steps: install the carried wheels (trl, datasets, math-verify, ... into a temporary --target folder); copy the
# committed GPU results folder (benchmarks/results/organism_sampled_gpu: budget.json, base, finished cells) to a
# work folder so that the sweep resumes; run python -m benchmarks.organism.sweep --device cuda with JOBS cells at once
# (default 16, one CPU thread each: the machine's 16 cores drive generation) until TOTAL_S minus a margin; pack the
# folder (cells, logs, base, summary; no training runs) into OUT_DIR/organism_sampled_gpu.tar.gz. A cell still
# running at the deadline is lost (a cell is only written when it finishes), so each call adds the cells that fit.
# Back here: tar -xzf <files_at>/organism_sampled_gpu.tar.gz -C benchmarks/results, then
# python -m benchmarks.organism.summarize --out benchmarks/results/organism_sampled_gpu, and commit.
# GPU cells never mix with CPU cells: the budget's `device` differs, and sweep.py refuses mixed folders.
set -uo pipefail
cd "$(dirname "$0")/../.."

OUT_DIR="${1:?usage: run_gpu_sweep.sh OUT_DIR}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(realpath "$OUT_DIR")"
exec > >(tee -a "$OUT_DIR/gpu_sweep.log") 2>&1
TOTAL_S="${TOTAL_S:-540}"
JOBS="${JOBS:-16}"
NAME=organism_sampled_gpu
CPU_CHECK="${CPU_CHECK:-0}"
if [[ "$CPU_CHECK" == 1 ]]; then
  PY="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo "$PWD/.venv/bin/python" || echo python3 )}"
  BUDGET=(--device cpu --steps 2 --eval-every 1 --eval-size 8 --train-size 16 --prompts-per-step 2
          --num-generations 2 --max-completion-length 24 --eval-samples 2)
  CELLS=(--strategies uniform coupled --seeds 0)
  SOURCE=/nonexistent  # a check never resumes the real results
  JOBS=2
else
  PY="${PYTHON:-python3}"
  BUDGET=(--device cuda --eval-samples 4)  # budget B: every other setting at sweep.py's (registered) defaults
  CELLS=()  # the core strategies, seeds 0-11; a later call adds the second pass with STRATEGIES=...
  [[ -n "${STRATEGIES:-}" ]] && CELLS=(--strategies $STRATEGIES)
  SOURCE="benchmarks/results/$NAME"
fi

echo "attnrl organism GPU sweep $(date -u +%FT%TZ), CPU_CHECK=$CPU_CHECK, JOBS=$JOBS, TOTAL_S=$TOTAL_S"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

source benchmarks/gpu_env.sh
PKG="$(mktemp -d)"
layout_package "$PKG"
# the laid-out package first, then the checkout root for the study package (benchmarks.*); PYTHONSAFEPATH keeps
# `python -m` from putting the working directory (whose attnrl/ lacks attnrl.kernels) in front of them
export PYTHONPATH="$PKG:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [[ "$CPU_CHECK" != 1 ]] && ls .whl/*.whl > /dev/null 2>&1 && wheels_match "$PY"; then
  SITE="$(mktemp -d)"
  "$PY" "${WHEEL_INSTALL_ARGS[@]}" --target "$SITE" .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:$SITE" && echo "$(ls .whl | wc -l) wheels installed in $SITE"
fi
"$PY" -c 'import platform, torch, transformers, trl; print("python", platform.python_version(), "torch",
torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__, "cuda", torch.cuda.is_available())'

WORK="$(mktemp -d)/$NAME"
mkdir -p "$WORK"
if [[ -d "$SOURCE" ]]; then
  cp -r "$SOURCE"/. "$WORK"/
  echo "resuming: $(ls "$WORK/cells" 2> /dev/null | wc -l) cells already finished"
fi
rm -rf "$WORK/runs"
MARGIN=40  # for packing and the summary after the sweep is stopped
LIMIT=$((TOTAL_S - SECONDS - MARGIN))
if ((LIMIT < 5)); then  # (timeout 0 would mean no limit at all)
  echo "=== sweep skipped: ${LIMIT}s left before the margin"
  rc=124
else
  echo "=== sweep, limit ${LIMIT}s"
  timeout -k 10 "$LIMIT" "$PY" -m benchmarks.organism.sweep "${BUDGET[@]}" "${CELLS[@]}" --jobs "$JOBS" \
    --threads 1 --out "$WORK"
  rc=$?
fi
echo "=== sweep rc=$rc (124: stopped at the deadline; the cells finished before it are kept)"
timeout 30 "$PY" -m benchmarks.organism.summarize --out "$WORK" > /dev/null || echo "summary skipped (rc=$?)"
rm -rf "$WORK/runs"
tar -czf "$OUT_DIR/$NAME.tar.gz" -C "$(dirname "$WORK")" "$NAME"
echo "packed $(ls "$WORK/cells" 2> /dev/null | wc -l) finished cells into $OUT_DIR/$NAME.tar.gz"
# 0 when the sweep finished or was stopped at the deadline with its cells kept
[[ $rc == 0 || $rc == 124 ]]
