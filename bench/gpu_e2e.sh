#!/usr/bin/env bash
# The flagship end to end on one lent GPU, in one device call: train_gpt.py trains for WALLCLOCK seconds,
# exports (GPTQ, LQER, fit to budget, brotli) and scores the artifact with compiled score-first TTT and the
# n-gram tilt, through bench/gpu_proxy.py; then, if the call has time left, the artifact is scored again
# from disk (EVAL_ONLY) under an eval deadline set to fall in the middle of TTT, to see the deadline cut.
# Two departures from the defaults, both to fit a lease of a few minutes, both said in the JSON's command:
# one training length (SEQ_LEN_SCHEDULE=2048@1.0: each length is another compile of about a minute) and
# 2 GPTQ calibration batches. Logs land in $OUT as they are written. Usage, carrying the sample and .whl:
#     bash bench/gpu_e2e.sh            # WALLCLOCK=30 BUDGET=520 by default
set -u
OUT=${OUT:-/tmp/gpu_e2e_out}
WALLCLOCK=${WALLCLOCK:-30}
BUDGET=${BUDGET:-520}
start=$(date +%s)
mkdir -p "$OUT" /tmp/run
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,temperature.gpu --format=csv 2>&1 | tee "$OUT/gpu.txt"
if ! python3 -c "import brotli, zstandard" 2>/dev/null; then  # the device machine has neither
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONUNBUFFERED=1 SEQ_LEN_SCHEDULE=${SEQ_LEN_SCHEDULE:-2048@1.0} WARMUP_STEPS=${WARMUP_STEPS:-2}
export GPTQ_CALIBRATION_BATCHES=${GPTQ_CALIBRATION_BATCHES:-2}
timeout $((BUDGET - 20)) python3 bench/gpu_proxy.py --out "$OUT/gpu_proxy.json" --wallclock "$WALLCLOCK" \
  --logdir /tmp/run 2>&1 | grep -v '^hparam ' | tail -c 20000 > "$OUT/train_stdout.txt"
grep -v '^hparam ' /tmp/run/gpu_proxy.txt | sed -n '/^python:/,$p' > "$OUT/gpu_proxy_log.txt"
left=$((BUDGET - ($(date +%s) - start)))
echo "e2e_done elapsed_s:$(($(date +%s) - start)) left_s:$left"
# The deadline run: the eval clock up to TTT's start (load, hints, compile warmup) plus half of TTT's time.
deadline=$(python3 - "$OUT/gpu_proxy_log.txt" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r"^eval_time_s:\S+ (.*)$", text, re.M)
parts = dict(kv.split(":") for kv in m.group(1).split()) if m else {}
if "ttt_eval" in parts:
    before = sum(float(parts.get(k, 0)) for k in ("ngram_hints", "load", "compile_warmup"))
    print(f"{before + float(parts['ttt_eval']) / 2:.0f}")
EOF
)
if [ -n "$deadline" ] && [ -f /tmp/run/gpu_proxy.ptz ] && [ "$left" -gt $((deadline + 60)) ]; then
  echo "deadline_run eval_max_seconds:$deadline"
  EVAL_ONLY=/tmp/run/gpu_proxy.ptz EVAL_MAX_SECONDS=$deadline RUN_ID=deadline LOG_DIR=/tmp/run \
    DATA_PATH=data/datasets/sample_caseops_sp8192 TOKENIZER_PATH=data/datasets/sample_caseops_sp8192/tokenizer.model \
    timeout $((left - 10)) python3 train_gpt.py 2>&1 | grep -v '^hparam ' | tail -c 8000 > "$OUT/deadline_stdout.txt"
  grep -v '^hparam ' /tmp/run/deadline.txt | sed -n '/^python:/,$p' > "$OUT/deadline_log.txt"
fi
echo "all_done elapsed_s:$(($(date +%s) - start))"
grep -hE "^(warmup_step|step:|looping|stopping|gptq|train_done|peak|quantize|fit_|ttt_warmup|ttt_phase|ttt_adapted|eval_deadline|final|artifact|eval_time|error)" \
  "$OUT/gpu_proxy_log.txt" "$OUT"/deadline_log.txt 2>/dev/null | cut -c1-220
