#!/usr/bin/env bash
# The comparison protocol of issue #15 on a GPU machine: build the 7B shape, then the campaign
# (bench/serve_bench/campaign.py) in the background so it outlives one device call, and collect.
#
#   bash bench/campaign.sh start     # install /tmp/site, build (if needed), start the campaign, then wait
#   bash bench/campaign.sh wait      # wait (up to WAIT_S) and copy what finished to $OUT
#   bash bench/campaign.sh report    # the report from what finished (also written by the campaign at its end)
#
# Settings (environment): WORKDIR (/tmp/bench), PLAN, LEVELS, LEVEL_S (60), RAMP_S (10), WAIT_S (560),
# MAX_MODEL_LEN (32768: a multiturn request carries 5 images of 2400x1080 = ~16.8k tokens),
# BENCH_REVISION (the commit the tree is from: there is no .git on the GPU machine).
set -euo pipefail
step="${1:?usage: campaign.sh start|wait|report}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH="/tmp/site:$repo" PATH="/tmp/site/bin:$PATH"
WORKDIR="${WORKDIR:-/tmp/bench}"
OUT="${OUT:-$WORKDIR/out}"
PLAN="${PLAN:-warm:vllm-asc8,warm:app,vllm-asc8,app,vllm-asc1,app,vllm-asc8,app,vllm-asc4,app,vllm-asc8}"
LEVELS="${LEVELS:-text@1,image@32,multiturn@16}"
WAIT_S="${WAIT_S:-560}"
mkdir -p "$WORKDIR" "$OUT"
harness=(python3 -m bench.serve_bench.harness --device gpu --shape 7b --workdir "$WORKDIR" --out "$WORKDIR/out"
         --max-model-len "${MAX_MODEL_LEN:-32768}" --compile-cache shared
         --plan "$PLAN" --levels "$LEVELS" --level-s "${LEVEL_S:-60}" --ramp-s "${RAMP_S:-10}"
         --conversations "${CONVERSATIONS:-40}" --workloads text --concurrency 1 --requests 1)
collect() {
  mkdir -p "$OUT/campaign" "$OUT/logs"
  cp -f "$WORKDIR"/campaign/*.json "$OUT/campaign/" 2>/dev/null || true
  cp -f "$WORKDIR"/out/campaign/report.md "$OUT/campaign/" 2>/dev/null || true
  cp -f "$WORKDIR"/campaign.log "$OUT/" 2>/dev/null || true
  for f in "$WORKDIR"/logs/*.log; do [ -f "$f" ] && tail -c 3000000 "$f" > "$OUT/logs/$(basename "$f")"; done
  # the app's replica logs (engine start-up lines), newest launch's only when large
  for d in "$WORKDIR"/rt-*; do
    [ -d "$d" ] || continue
    mkdir -p "$OUT/logs/$(basename "$d")"
    find "$d/ray/session_latest/logs" -maxdepth 2 \( -name 'replica_*Engine*.log' -o -name 'worker-*.err' \) -size +0 \
      -exec sh -c 'tail -c 1500000 "$1" > "$2/$(basename "$1")"' _ {} "$OUT/logs/$(basename "$d")" \; 2>/dev/null || true
  done
}
wait_collect() {
  local t0; t0=$(date +%s)
  while pgrep -f "bench.serve_bench.harness.*--phase campaign" > /dev/null && [ $(( $(date +%s) - t0 )) -lt "$WAIT_S" ]; do
    sleep 5
  done
  pgrep -f "bench.serve_bench.harness.*--phase campaign" > /dev/null && echo "campaign still running" || echo "campaign finished"
  collect
  tail -n 25 "$WORKDIR/campaign.log"
}
case "$step" in
  start)
    bash bench/gpu_setup.sh
    [ -f "$WORKDIR/model-7b/bench_checkpoint.json" ] || "${harness[@]}" --phase build,bw > "$OUT/build.log" 2>&1
    tail -n 5 "$OUT/build.log" || true
    setsid nohup "${harness[@]}" --phase campaign > "$WORKDIR/campaign.log" 2>&1 < /dev/null &
    echo "campaign started: $WORKDIR/campaign.log"
    wait_collect ;;
  wait)
    wait_collect ;;
  report)
    "${harness[@]}" --phase campaign-report | tail -n 60
    collect ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
