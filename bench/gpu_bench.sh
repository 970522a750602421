#!/usr/bin/env bash
# GPU serving benchmark (issue #6): this app vs `vllm serve`, one phase per call, each < 10 min.
#
#   bash bench/gpu_bench.sh build     # 7B random checkpoint + media payloads + copy bandwidth   (~2-3 min)
#   bash bench/gpu_bench.sh vllm      # vllm serve: cold start + workloads                         (~6-8 min)
#   bash bench/gpu_bench.sh app       # serve run (this app): cold start + the same workloads      (~6-8 min)
#   bash bench/gpu_bench.sh report    # tables: OUT/report.md, OUT/results.json                    (seconds)
#
# Settings (environment): WORKDIR (/tmp/bench), OUT ($OUT or WORKDIR/out), SHAPE (7b | 72b-awq | tiny),
# WORKLOADS (text,image,image-url,video), CONCURRENCY (1,16,48), REQUESTS (16,64,144), WARMUP (4),
# BUDGET_S (540), DEVICE (gpu). Anything after the phase goes to the harness as is
# (e.g. --enforce-eager, --compile-cache shared, --engine-arg max_num_seqs=256, --max-tokens 64).
set -euo pipefail
phase="${1:?usage: gpu_bench.sh build|bw|vllm|app|report|all [harness args...]}"
shift || true
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
if [ -d /tmp/site ]; then  # the GPU machine's staged packages
  export PYTHONPATH="/tmp/site:$repo${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="/tmp/site/bin:$PATH"
else
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
fi
PY="${PYTHON:-python3}"
[ -x "$repo/.venv/bin/python" ] && [ ! -d /tmp/site ] && PY="$repo/.venv/bin/python"
WORKDIR="${WORKDIR:-/tmp/bench}"
OUT="${OUT:-$WORKDIR/out}"
SHAPE="${SHAPE:-7b}"
WORKLOADS="${WORKLOADS:-text,image,image-url,video}"
CONCURRENCY="${CONCURRENCY:-1,16,48}"
REQUESTS="${REQUESTS:-16,64,144}"
WARMUP="${WARMUP:-4}"
BUDGET_S="${BUDGET_S:-540}"
DEVICE="${DEVICE:-gpu}"
case "$phase" in
  build) phases="build,bw" ;;
  *) phases="$phase" ;;
esac
exec "$PY" -m bench.serve_bench.harness --phase "$phases" --device "$DEVICE" --shape "$SHAPE" \
  --workdir "$WORKDIR" --out "$OUT" --workloads "$WORKLOADS" --concurrency "$CONCURRENCY" \
  --requests "$REQUESTS" --warmup "$WARMUP" --budget-s "$BUDGET_S" "$@"
