#!/usr/bin/env bash
# The Ray job itself on one lent GPU, in one device call: Ray Train's GPU worker, the CUDA train
# loop and the data pipeline feeding a GPU, which the CPU machine cannot run. Three legs:
#   1. the yardstick (reference_gpt_step.py, seq 2048, compiled, at the 270m preset's shape: the
#      reference blocks with the GPT-2 vocabulary, VOCAB=50304) and the project's plain step on the
#      270m preset at seq 2048 (jobs/benchmark_gpu_step.py), for same-call ratios;
#   2. the 270m preset through the whole Ray path (coordinator, Ray Data on the demo corpus,
#      TorchTrainer, compile) on the demo's last two stages, 64 rows a step: its progress lines'
#      Tokens/sec at seq 2048 against leg 1's plain step is the Ray path's cost on a GPU;
#   3. the demo curriculum, all ten stages, on the GPU (one worker): must reach its target.
# One more leg, "checkpoint", runs the checkpoint snapshot's GPU test (pinned buffers, fused AdamW)
# and jobs/benchmark_checkpoint.py on the GPU.
# LEGS picks the legs (default "ref step ray_270m demo"; e.g. LEGS="ref checkpoint ray_270m" for a
# call that measures the checkpoint path). The first three legs' limits add up to 430 s; the demo
# takes what is left of 585 s (CALL_BUDGET_S), under the device's 600 s per call; each leg's log is
# in $OUT.
#
# Before the call, here (PyPI reachable):  bash jobs/build_gpu_site.sh   (-> .gpu-site/site.tar.xz)
# and copy ../shared/bench/reference_gpt_step.py into .bench-ref/. Device command:
#   bash jobs/gpu_ray_demo.sh          with carry [".gpu-site", ".bench-ref"]
set -uo pipefail
OUT=${OUT:-/tmp/gpu-ray}
REF=${REF:-.bench-ref/reference_gpt_step.py}
SITE_TAR=${SITE_TAR:-.gpu-site/site.tar.xz}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" /tmp/site
tar -xJf "$SITE_TAR" -C /tmp/site || exit 1
# The repo on the path too: Ray's workers import yxanul_ray, and nothing is pip-installed there.
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

LEGS=" ${LEGS:-ref step ray_270m demo} "
leg() {  # leg LIMIT_S NAME COMMAND...: one leg, its output in $OUT/NAME.log; skipped unless in LEGS
    local limit_s=$1 name=$2
    shift 2
    [[ $LEGS == *" $name "* ]] || return 0
    timeout "$limit_s" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    echo "leg $name exit $rc"
}

nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv
python3 -c "import ray, torch, pyarrow; print('ray', ray.__version__, 'torch', torch.__version__, 'pyarrow',
pyarrow.__version__, torch.cuda.get_device_name())" || exit 1

leg "${REF_S:-110}" ref env L=20 VOCAB=50304 TAG=ref SEQS=2048 MODES=compiled TOKENS_PER_STEP=131072 STEPS=10 python3 "$REF"
leg "${STEP_S:-110}" step python3 jobs/benchmark_gpu_step.py --shape 270m --seqs 2048 --modes compiled \
    --steps 10 --tokens-per-step 131072 --tag step_270m --reference-json "$OUT/ref.json"
leg "${CHECKPOINT_S:-90}" checkpoint bash -c "python3 -m pytest -m gpu -p no:cacheprovider tests/test_checkpoint.py; \
    python3 jobs/benchmark_checkpoint.py --preset 270m --repeats 3"

python3 - <<'EOF'
import yaml
with open("configs/demo.yaml") as f:
    job = yaml.safe_load(f)
stages = job["curriculum"]["stages"][8:10]  # seq_len 1536 and 2048
# One batch size for both stages: the compiled model then runs both seq_lens from one graph
# (the sequence dimension is marked dynamic; a new batch size would compile again, ~70 s).
for st, steps in zip(stages, (10, 30)):
    st.update(batch_size=64, tokens=64 * st["seq_len"] * steps)
job["curriculum"].update(stages=stages, target_tokens=sum(st["tokens"] for st in stages))
job["model"].update(preset="270m", compile=True, backend="auto")
job["optimizer"].update(peak_lr=6e-4, warmup_tokens=5 * 64 * 1536)
# A checkpoint every 10 steps of the last stage as well as at the boundary: the progress lines show
# whether a checkpoint written beside training slows the steps it overlaps.
job["run"].update(use_gpu=True, workers=1, cpus_per_worker=2, storage_path="/tmp/runs", log_every_steps=5,
                  checkpoint_every_tokens=10 * 64 * 2048)
with open("/tmp/gpu_270m.yaml", "w") as f:
    yaml.safe_dump(job, f, sort_keys=False)
EOF
leg "${RAY_270M_S:-210}" ray_270m python3 jobs/train.py --config /tmp/gpu_270m.yaml
# The last leg gets what the earlier ones left of the call (they often end well inside their limits).
leg "${DEMO_S:-$(( ${CALL_BUDGET_S:-585} - SECONDS ))}" demo python3 jobs/train.py --config configs/demo.yaml --set run.use_gpu=true \
    --set run.workers=1 --set run.cpus_per_worker=2 --set run.storage_path=/tmp/runs

echo "== summary"
cd "$OUT" || exit 1
grep -hs "compiled *2048" ref.log step.log
grep -hs "passed\|failed\|training waits" checkpoint.log
grep -hs "REACHED TARGET\|final validation" demo.log ray_270m.log
grep -hs "stage switch" ray_270m.log
grep -hs "Tokens/sec" ray_270m.log | tail -n 6
