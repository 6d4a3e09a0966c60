#!/usr/bin/env bash
# The GPU check, for the first machine with a GPU (budgeted for 8 minutes on one H100; not yet run on a GPU), and its
# dry run for CI:
#
#   bash benchmarks/gpu.sh [--out DIR] [--python PYTHON] [--budget SECONDS]   # on a GPU machine
#   bash benchmarks/gpu.sh --dry-run [--out DIR]                               # anywhere: CPU, tiny settings
#
# Steps, each under its own time limit (and the whole run under --budget, default 480 s), each recorded whatever
# happens to the others:
#   1. environment: versions of torch, CUDA, transformers, accelerate, deepspeed, flash_attn, lmms-eval; nvidia-smi
#   2-6. the `gpu`-marked tests in tests/gpu/: bf16 numerics (identity at init, the formula against an fp32
#        reference), flash-attention-2 packed vs padded batches, ZeRO-2 / ZeRO-3 / FSDP2 steps with an exact resume,
#        device_map="auto" generation, lmms-eval at batch 8 vs 1
#   7. benchmarks/overhead.py at the 0.5B OneVision shape in bf16, full depth: prefill and decode, base vs managers
#      every 4th and every layer, peak memory
#   8. benchmarks/packing.py at the 0.5B shape in bf16 with flash-attention-2 (skipped without flash_attn)
#   9. benchmarks/evaluation.py, when the checkout has it (its flags checked against its --help)
# The report: DIR/report.md (a summary table on top, then each step's command, exit status, duration and output
# tail) and DIR/report.json; each step's whole log under DIR/logs/. Exits 1 when a step failed, timed out or was not
# run for want of budget; a skipped step (a package the machine lacks) does not fail the run.
#
# --dry-run: the same steps on the CPU with tiny settings, CUDA hidden: the tests are collected and skipped (the
# report lists each one with its reason), the benchmarks run their tiny CPU variants (overhead.py on the tiny
# OneVision test model), so CI can check that this script runs end to end.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
OUT=""
PY="${PYTHON:-python3}"
BUDGET=480
usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --out) OUT="$2"; shift ;;
    --python) PY="$2"; shift ;;
    --budget) BUDGET="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
OUT="${OUT:-results/gpu-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT/logs" || exit 2
STEPS="$OUT/steps.tsv"
: > "$STEPS"
START=$(date +%s)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ "$DRY_RUN" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=""  # the tests skip, the benchmarks run on the CPU, even on a GPU machine
  MODE="dry run (CPU, tiny settings)"
else
  MODE="GPU"
fi
echo "gpu.sh: $MODE, python $PY, budget ${BUDGET}s, report in $OUT"

N=0
FAILED=0
SKIP=77  # a step's command exits 77 when it cannot run here (automake's convention): recorded as skipped

record() {  # record NAME STATUS RC SECONDS LIMIT LOG JUNIT NOTE COMMAND
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$N" "$@" | tr -d '\r' >> "$STEPS"
  printf '%-22s %-8s %6ss  %s\n' "$1" "$2" "$4" "$8"
}

step() {  # step NAME LIMIT_SECONDS COMMAND [JUNIT]: runs COMMAND (bash) with its output in the step's log
  local name=$1 limit=$2 command=$3 junit=${4:--}
  N=$((N + 1))
  local log
  log="logs/$(printf %02d "$N")-$name.log"
  local left=$((BUDGET - ($(date +%s) - START)))
  if [ "$left" -lt 15 ]; then
    FAILED=1
    echo "not run: ${left}s of the ${BUDGET}s budget left" > "$OUT/$log"
    record "$name" "not-run" "-" 0 "$limit" "$log" "$junit" "budget spent (${left}s left)" "$command"
    return
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  local t0 t1 rc status note=""
  t0=$(date +%s.%N)
  timeout -k 10 "$limit" bash -c "$command" > "$OUT/$log" 2>&1 < /dev/null
  rc=$?
  t1=$(date +%s.%N)
  case $rc in
    0) status=passed ;;
    "$SKIP") status=skipped; note=$(grep -m1 '^skip: ' "$OUT/$log" | cut -c7-) ;;
    124|137) status=timeout; note="stopped at its ${limit}s limit"; FAILED=1 ;;
    *) status=failed; FAILED=1 ;;
  esac
  record "$name" "$status" "$rc" "$(awk "BEGIN {printf \"%.1f\", $t1 - $t0}")" "$limit" "$log" "$junit" "$note" "$command"
}

skip() {  # skip NAME REASON COMMAND: a step that cannot run here, recorded with the reason
  N=$((N + 1))
  local log
  log="logs/$(printf %02d "$N")-$1.log"
  echo "skip: $2" > "$OUT/$log"
  record "$1" "skipped" "-" 0 0 "$log" "-" "$2" "$3"
}

tests() {  # tests NAME LIMIT FILE: one file of tests/gpu/ through pytest, with a JUnit file for the report
  local junit
  junit="logs/$(printf %02d $((N + 1)))-$1.xml"
  step "$1" "$2" "$PY -m pytest -q -rA -p no:cacheprovider --junitxml=$OUT/$junit tests/gpu/$3" "$junit"
}

has() { "$PY" -c "import $1" > /dev/null 2>&1; }

# 1. the machine
step environment 60 "$PY benchmarks/gpu_report.py --environment && if [ -z \"\${CUDA_VISIBLE_DEVICES+x}\" ] && command -v nvidia-smi > /dev/null; then nvidia-smi; fi"
if [ "$DRY_RUN" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2> /dev/null; then
  echo "gpu.sh: torch sees no CUDA GPU: the tests will skip and the benchmarks fail (use --dry-run on a CPU)" >&2
fi

# 2-6. the GPU tests (skipped in the dry run: CUDA hidden)
tests numerics 90 test_numerics.py
tests packing-flash 75 test_packing_flash.py
tests engines 180 test_engines.py
tests device-map 60 test_device_map.py
tests lmms-eval-batch 150 test_lmms_eval_batch.py

# 7. the managers' overhead at the 0.5B shape in bf16 (prefill, decode, base vs patched; published-shape FLOPs)
OVERHEAD="$PY benchmarks/overhead.py --family llava_onevision --checkpoint llava-onevision-qwen2-0.5b-ov --full-depth"
if [ "$DRY_RUN" = 1 ]; then
  step overhead 120 "$PY benchmarks/overhead.py --family llava_onevision --tiny --device cpu --text-layers 4 --repeats 1 --intervals 1 4 --memory"
else
  step overhead 150 "$OVERHEAD --device cuda --dtype bfloat16 --repeats 3 --intervals 1 4 --memory"
fi

# 8. padded vs packed batches with flash-attention-2 at the 0.5B shape
PACKING="$PY benchmarks/packing.py --batch-size 4"
if [ "$DRY_RUN" = 1 ]; then
  step packing 120 "$PACKING --shape small --device cpu --dtype float32 --attn sdpa --samples 4 --repeats 1 --max-packed-tokens 2048"
elif has flash_attn; then
  step packing 120 "$PACKING --shape 0.5b --device cuda --dtype bfloat16 --attn flash_attention_2 --samples 32 --repeats 3"
else
  skip packing "flash_attn is not importable: pip install flash-attn" "$PACKING --shape 0.5b --device cuda --dtype bfloat16 --attn flash_attention_2 --samples 32 --repeats 3"
fi

# 9. the evaluation benchmark, if this checkout has it: only the flags its --help lists
if [ -f benchmarks/evaluation.py ]; then
  HELP=$("$PY" benchmarks/evaluation.py --help 2>&1)
  flag() { grep -qE -- "(^|[[:space:],[])$1([[:space:],=]|]|$)" <<< "$HELP"; }
  EVAL_ARGS=""
  if [ "$DRY_RUN" = 1 ]; then
    WANTED=("--device cpu" "--dtype float32" "--repetitions 1" "--repeats 1" "--docs 2" "--samples 2" "--limit 2")
  else
    WANTED=("--device cuda" "--dtype bfloat16" "--repetitions 3" "--repeats 3")
  fi
  for wanted in "${WANTED[@]}"; do
    flag "${wanted%% *}" && EVAL_ARGS+=" $wanted"
  done
  step evaluation 120 "$PY benchmarks/evaluation.py$EVAL_ARGS"
else
  skip evaluation "benchmarks/evaluation.py is not in this checkout" "$PY benchmarks/evaluation.py"
fi

# the report
ELAPSED=$(($(date +%s) - START))
if "$PY" benchmarks/gpu_report.py "$OUT" --mode "$MODE" --elapsed "$ELAPSED" --budget "$BUDGET"; then
  REPORT_FAILED=0
else
  REPORT_FAILED=1
  {  # the report helper itself failed: the table of steps, plain
    echo "# GPU check: $MODE (gpu_report.py failed; plain table)"
    echo
    cut -f1-6,9 "$STEPS"
  } > "$OUT/report.md"
fi
echo "gpu.sh: ${ELAPSED}s; report: $OUT/report.md"
[ "$FAILED" = 0 ] && [ "$REPORT_FAILED" = 0 ]
