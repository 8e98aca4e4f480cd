#!/usr/bin/env bash
# Every GPU path in one run, at most 8 minutes on one GPU:
#   1. the test suite with MOPE_TEST_DEVICE=cuda (browser test excluded)
#   2. python bench/score.py --device cuda          (demo sweep fast vs naive, ViT-B-32 layer passes)
#   3. python bench/arch.py --arch ViT-B-32 --device cuda  (full sweep bf16, peak memory, pruned speed)
#   4. python bench/data.py --device cuda --batch 256      (distillation images/s, data wait share)
# Each step's output goes to bench/results/gpu-<step>.log; bench/results/gpu.csv gets one row per step
# (status, seconds, the step's headline lines) and the table is printed at the end (--dry-run: gpu-dry-run.*).
#
#   bash bench/gpu.sh [--wheels DIR] [--dry-run]
#
# --wheels DIR: install DIR/*.whl first (no index, no deps; into /tmp/mope-site, put on PYTHONPATH), for a
#   GPU machine that lacks packages and reaches no index (bench/wheels.sh downloads them here).
# --dry-run: the same plumbing on the CPU with tiny sizes and the small ViT-S-32-alt in the arch step (a check of
#   the script, not of the GPU; 7.5 minutes on this shared 2-core CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=""
DEVICE=cuda
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS=$2; shift 2 ;;
    --dry-run) DEVICE=cpu; shift ;;
    *) echo "usage: bash bench/gpu.sh [--wheels DIR] [--dry-run]" >&2; exit 2 ;;
  esac
done

if [ -n "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mope-site \
    "$WHEELS"/*.whl || { echo "error: installing the wheels in $WHEELS failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/mope-site${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False PYTHONUNBUFFERED=1
export MOPE_HOME=${MOPE_HOME:-$(mktemp -d /tmp/mope-gpu-XXXX)}
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "error: no CUDA device visible to $PY (use --dry-run to check the script on a CPU)" >&2; exit 2
fi

if [ "$DEVICE" = cuda ]; then
  TESTS=(-m pytest -q --ignore=tests/test_browser.py)
  SCORE=(bench/score.py --device cuda)
  ARCH=(bench/arch.py --arch ViT-B-32 --device cuda)
  DATA=(bench/data.py --device cuda --batch 256 --steps 60 --workers 0,8 --rounds 1)
  LIMITS=(210 50 140 50)  # 450 s: with the wheels installed first, the whole run stays under 8 minutes
else
  TESTS=(-m pytest -q tests/test_streams.py)
  SCORE=(bench/score.py --device cpu --n 8 --data shapes:target=shape)
  ARCH=(bench/arch.py --arch ViT-S-32-alt --device cpu --data shapes:target=shape --n 8 --subset-n 2 --memory-n 8 --batch 2 --repeats 1)
  DATA=(bench/data.py --device cpu --batch 8 --steps 6 --warmup 1 --workers 0,1 --rounds 1)
  LIMITS=(600 600 900 600)
fi

mkdir -p bench/results
CSV=bench/results/gpu.csv
[ "$DEVICE" = cpu ] && CSV=bench/results/gpu-dry-run.csv  # gpu.csv holds GPU results only
echo "step,status,seconds,result" > "$CSV"
# headline lines of each step's log (the figures the README quotes)
PICK=('passed|failed|error' 'speedup|largest|fast  |naive' 'full sweep|images:|speedup /|pruned ==' 'workers')

run_step() {  # name limit pattern command...
  local name=$1 limit=$2 pattern=$3; shift 3
  local log=bench/results/gpu-$name$([ "$DEVICE" = cpu ] && echo -dry-run).log start=$SECONDS status
  echo "== $name: $*"
  MOPE_TEST_DEVICE=$DEVICE timeout "$limit" "$PY" "$@" > "$log" 2>&1
  status=$?
  [ $status -eq 124 ] && echo "(stopped after $limit s)" >> "$log"
  tail -n 3 "$log"
  local result
  result=$(grep -E "$pattern" "$log" | tail -n 6 | tr '\n' ';' | tr -s ' ' | sed 's/"/'"'"'/g')
  echo "$name,$status,$((SECONDS - start)),\"$result\"" >> "$CSV"
}

run_step tests "${LIMITS[0]}" "${PICK[0]}" "${TESTS[@]}"
run_step score "${LIMITS[1]}" "${PICK[1]}" "${SCORE[@]}"
run_step arch "${LIMITS[2]}" "${PICK[2]}" "${ARCH[@]}"
run_step distill "${LIMITS[3]}" "${PICK[3]}" "${DATA[@]}"

"$PY" - "$CSV" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(f"\n{'step':8} {'status':>6} {'s':>5}  result")
for r in rows:
    lines = [x.strip() for x in r["result"].split(";") if x.strip()] or [""]
    print(f"{r['step']:8} {r['status']:>6} {r['seconds']:>5}  {lines[0]}")
    for line in lines[1:]:
        print(f"{'':22}{line}")
sys.exit(max(int(r["status"]) for r in rows) and 1)
EOF
