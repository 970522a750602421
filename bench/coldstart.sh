#!/usr/bin/env bash
# Cold-start breakdown (issue #12): the app and `vllm serve`, fresh and warm, one step per device call (< 10 min each).
#
#   bash bench/gpu_setup.sh && bash bench/gpu_bench.sh build      # as for the serving bench (SHAPE, WORKDIR)
#   bash bench/coldstart.sh vllm-fresh       # FIRST launch on the machine: vllm serve, empty cache root A
#   bash bench/coldstart.sh vllm-warm        # vllm serve again on root A (every cache kept)
#   bash bench/coldstart.sh app-fresh        # the app, empty cache root B (page cache and .pyc now warm)
#   bash bench/coldstart.sh app-warm         # the app again on root B: an engine replica on a warm node
#   bash bench/coldstart.sh warmup           # python -m serve_app.engine.warmup into empty root C
#   bash bench/coldstart.sh app-after-warmup # the app on root C: what the warm-up job buys
#   bash bench/coldstart.sh report           # OUT/report.md: the cold-start table, one column per step
#
# Every cache of both servers (vLLM, Inductor, Triton, FlashInfer JIT, CUDA) lives under the root's
# keyed directory (serve_app/engine/cache_env.py), so "empty root" = nothing compiled on this machine
# before; each step records the files/bytes per cache before and after (compile_cache.inventory_*).
# Only the first step of a machine is a true fresh machine (weights not in the page cache, Python
# bytecode not compiled): run vllm-fresh first, or set DROP_CACHES=1 (needs root) to drop the page
# cache before a step. The FlashInfer sampler stays ON (vLLM's default): its JIT is part of what is
# measured (set SAMPLER=0 for VLLM_USE_FLASHINFER_SAMPLER=0). Each launch: ready, one probe, stop —
# no load (WORKLOADS=none). Other settings as bench/gpu_bench.sh (WORKDIR, OUT, SHAPE) plus any
# harness flags after the step (e.g. --tp 2 --max-model-len 8192).
set -euo pipefail
step="${1:?usage: coldstart.sh vllm-fresh|vllm-warm|app-fresh|app-warm|warmup|app-after-warmup|report [harness args...]}"
shift || true
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORKDIR="${WORKDIR:-/tmp/bench}"
export WORKDIR WORKLOADS=none
roots="$WORKDIR/cache-roots"
extra=()
[ "${SAMPLER:-1}" = "0" ] && extra+=(--server-env VLLM_USE_FLASHINFER_SAMPLER=0)
if [ "${DROP_CACHES:-0}" = "1" ]; then
  sync && echo 3 > /proc/sys/vm/drop_caches && echo "[coldstart] page cache dropped"
fi
fresh() {  # an empty root: refuse to reuse one silently
  if [ -e "$1" ]; then echo "[coldstart] $1 exists: remove it (or use the *-warm step)" >&2; exit 2; fi
}
case "$step" in
  vllm-fresh)       fresh "$roots/vllm";   exec bash "$here/gpu_bench.sh" vllm --cache-root "$roots/vllm" --tag fresh ${extra[@]+"${extra[@]}"} "$@" ;;
  vllm-warm)        exec bash "$here/gpu_bench.sh" vllm --cache-root "$roots/vllm" --tag warm ${extra[@]+"${extra[@]}"} "$@" ;;
  app-fresh)        fresh "$roots/app";    exec bash "$here/gpu_bench.sh" app --cache-root "$roots/app" --tag fresh ${extra[@]+"${extra[@]}"} "$@" ;;
  app-warm)         exec bash "$here/gpu_bench.sh" app --cache-root "$roots/app" --tag warm ${extra[@]+"${extra[@]}"} "$@" ;;
  warmup)           fresh "$roots/warmup"; exec bash "$here/gpu_bench.sh" warmup --cache-root "$roots/warmup" ${extra[@]+"${extra[@]}"} "$@" ;;
  app-after-warmup) exec bash "$here/gpu_bench.sh" app --cache-root "$roots/warmup" --tag after-warmup ${extra[@]+"${extra[@]}"} "$@" ;;
  report)           exec bash "$here/gpu_bench.sh" report "$@" ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
