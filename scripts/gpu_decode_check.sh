#!/usr/bin/env bash
# Issue 30's GPU check in one call (docs/benchmarks.md, "GPU decode check"): the trainer's whole iteration
# on the Qwen2.5-VL-7B architecture under three decode paths, side by side in this one run, then a short
# `ireasoner train` on a random-weight 7B checkpoint with the static path.
#
#   bash scripts/gpu_decode_check.sh                 # on the GPU machine, from the repository root
#   DRY_RUN=1 bash scripts/gpu_decode_check.sh       # the same steps on CPU, scaled down (minutes)
#
# Results go to $OUT (default /tmp/gpu-decode-check): <path>.md/.json per decode path, versions.txt,
# train.log and metrics.jsonl of the short run, and check.txt with the NaN / KL verdict.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/gpu-decode-check}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then   # packages the bare machine lacks, carried as wheels (docs/benchmarks.md)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

if [ "${DRY_RUN:-0}" = 1 ]; then
    DEVICE_ARGS=(--device cpu --scaled-down --image-pixels 12544)
    MODEL_ARGS=(--scaled-down --device cpu)
    SIZES=${SIZES:-1,2}; COMPILE=${COMPILE:-false}; DTYPE=float32; N=2; DEVICE_ARGS+=(--max-new-tokens 8)
    TOKENS=(--set sampling.solver_max_new_tokens=6 --set sampling.proposer_max_new_tokens=4 --set sampling.num_rollouts=2)
else
    DEVICE_ARGS=(); MODEL_ARGS=(); SIZES=${SIZES:-8,16}; COMPILE=${COMPILE:-true}; DTYPE=bfloat16; TOKENS=(); N=5
fi

"$PY" - <<'EOF' 2>&1 | tee "$OUT/versions.txt" || exit 1
import platform, torch, transformers, peft, pydantic
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"python {platform.python_version()} torch {torch.__version__} transformers {transformers.__version__} "
      f"peft {peft.__version__} pydantic {pydantic.__version__} on {gpu}")
EOF

bench() {   # name, then throughput arguments
    local name=$1; shift
    echo "== $name: $(date -u +%T)"
    "$PY" -m benchmarks.throughput --gpu-7b "${DEVICE_ARGS[@]}" --no-side-by-side --n "$N" --iterations 1 --warmup 1 \
        "${TOKENS[@]}" --output "$OUT/$name" "$@" 2>&1 | grep -v "^\[throughput\]" | tail -30
}
# Hugging Face generate today (dynamic cache), at 8 images only: at ~1 rollout/s it is the slow one.
bench hf-dynamic --images-per-iteration "${SIZES%%,*}"
# Hugging Face generate with a static cache, which transformers compiles itself (CUDA graphs).
bench hf-static --images-per-iteration "${SIZES%%,*}" --cache-implementation static
# The static loop of ireasoner_core/decode.py, its decode step compiled.
bench static --images-per-iteration "$SIZES" --set perf.decode=static --set "perf.compile_decode=$COMPILE"

echo "== short train, static path: $(date -u +%T)"
rm -rf /tmp/q7b /tmp/q7b-imgs /tmp/q7b-run
"$PY" -m benchmarks.qwen7b /tmp/q7b "${MODEL_ARGS[@]}" \
    && "$PY" -m ireasoner_core.cli make-images /tmp/q7b-imgs -n 8 \
    && "$PY" -m ireasoner_core.cli train --config configs/qwen2.5-vl-7b.yaml --set model.name_or_path=/tmp/q7b \
        --set model.dtype=$DTYPE --set data.image_dir=/tmp/q7b-imgs --set schedule.iterations=3 \
        --set perf.decode=static --set "perf.compile_decode=$COMPILE" "${TOKENS[@]}" \
        --output-dir /tmp/q7b-run > "$OUT/train.log" 2>&1
echo "train exit code $?"
cp /tmp/q7b-run/metrics.jsonl "$OUT/" 2>/dev/null
"$PY" - "$OUT" <<'EOF' 2>&1 | tee "$OUT/check.txt"
import json, math, sys
from pathlib import Path
rows = [json.loads(line) for line in (Path(sys.argv[1]) / "metrics.jsonl").read_text().splitlines()]
floats = [(r.get("iteration"), k, v) for r in rows for k, v in r.items() if isinstance(v, float)]
bad = [f for f in floats if not math.isfinite(f[2])]
kl = [(r.get("iteration"), k, v) for r in rows for k, v in r.items() if "kl" in k.lower() and isinstance(v, float)]
first = [v for it, k, v in kl if it == rows[0].get("iteration")]
print(f"{len(rows)} iterations; non-finite values: {bad or 'none'}")
print(f"KL at the first update: {first} (expected 0); after: {[v for it, k, v in kl if it != rows[0].get('iteration')]}")
print("PASS" if rows and not bad and first and all(abs(v) < 1e-6 for v in first) else "FAIL")
EOF
echo "== done $(date -u +%T)"
