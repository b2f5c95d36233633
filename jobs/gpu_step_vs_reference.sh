#!/usr/bin/env bash
# The GPU step check of one device call: the yardstick (reference_gpt_step.py) and the project's
# real train step (jobs/benchmark_gpu_step.py) at the same shape, on the same card, one after the
# other, so every ratio compares runs of one process tree on one GPU.
#
#   REF=.bench-ref/reference_gpt_step.py bash jobs/gpu_step_vs_reference.sh
#
# The reference script's default depth is 16 layers; L=20 gives it the shape `--shape reference`
# builds (d1024 L20 H16 KV4 FFN2816, vocab 32768, tied). Compiled at 131,072 tokens per step, as
# the bench README's table; eager at 32,768 (eager at 131,072 ran out of an H200's memory there).
# Each leg has its own time limit, so one slow leg still leaves the others' tables in $OUT.
# On an H200 (2026-11-27) the rows' own times add up to about 230 s for each compiled leg (the
# reference spent 70 s and 103 s on its first two shapes, compiling; the project compiled twice,
# ~70 s each) and about 30 s for each eager leg. With the machine's start that is close to the
# device's 600 s per call: LEGS=compiled and LEGS=eager split it into two calls on one warm machine.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-step}
REF=${REF:-.bench-ref/reference_gpt_step.py}
SEQS=${SEQS:-8,16,32,64,128,256,512,768,1536,2048}
STEPS=${STEPS:-10}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

leg() {  # leg LIMIT_S COMMAND...: run one leg, its output kept in $OUT/log.txt
    local limit_s=$1
    shift
    timeout "$limit_s" "$@" 2>&1 | tee -a "$OUT/log.txt"
    echo "leg exit ${PIPESTATUS[0]}: $*" | tee -a "$OUT/log.txt"
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,memory.used --format=csv \
    | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

LEGS=${LEGS:-compiled eager}
if [[ " $LEGS " == *" compiled "* ]]; then
leg "${REF_COMPILED_S:-270}" env L=20 TAG=ref SEQS="$SEQS" MODES=compiled TOKENS_PER_STEP=131072 STEPS="$STEPS" \
    python3 "$REF"
leg "${PROJECT_COMPILED_S:-250}" python3 jobs/benchmark_gpu_step.py --shape reference --seqs "$SEQS" \
    --modes compiled --steps "$STEPS" --tokens-per-step 131072 --tag project --reference-json "$OUT/ref.json"
fi
if [[ " $LEGS " == *" eager "* ]]; then
leg "${REF_EAGER_S:-60}" env L=20 TAG=ref_eager SEQS="$SEQS" MODES=eager TOKENS_PER_STEP=32768 STEPS="$STEPS" \
    python3 "$REF"
leg "${PROJECT_EAGER_S:-60}" python3 jobs/benchmark_gpu_step.py --shape reference --seqs "$SEQS" \
    --modes eager --steps "$STEPS" --tokens-per-step 32768 --tag project_eager \
    --reference-json "$OUT/ref_eager.json"
fi
