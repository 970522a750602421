#!/usr/bin/env bash
# Multi-GPU runs of issue #11: the 72B-AWQ shape served tensor-parallel through the app and through
# `vllm serve` with the same engine arguments and environment, plus the unpadded checkpoint refused.
# One phase per device call (each < 10 min), state in $WORKDIR (kept while the machine stays warm).
#
#   bash bench/multigpu.sh check    # GPUs, NVLink-multicast variables, the staged stack
#   bash bench/multigpu.sh build    # install /tmp/site, 72B-AWQ padded (38 GB) + unpadded 4-layer copy, bandwidth
#   bash bench/multigpu.sh vllm     # vllm serve --tensor-parallel-size $TP: cold start + workloads
#   bash bench/multigpu.sh app      # this app, engine TP=$TP: cold start + the same workloads
#   bash bench/multigpu.sh fail     # the app on the unpadded checkpoint: DEPLOY_FAILED, the cause, attempts
#   bash bench/multigpu.sh report   # $OUT/report.md + results.json
#
# Settings (environment): TP (2), FUSION (off | trtllm: args.engine.allreduce_fusion, also given to
# vllm serve), WORKDIR (/tmp/bench72), WORKLOADS (text,image,video), CONCURRENCY (1,16,48),
# REQUESTS (8,32,64), BUDGET_S (500). Extra arguments go to the harness.
set -euo pipefail
phase="${1:?usage: multigpu.sh check|build|vllm|app|fail|report [harness args...]}"
shift || true
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# Never let anything started here use NVLink multicast (the lent hosts have it off; a program that
# uses it there can take the host's GPUs out of service). Every process inherits these.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TP="${TP:-2}" FUSION="${FUSION:-off}"
export WORKDIR="${WORKDIR:-/tmp/bench72}" SHAPE=72b-awq
export WORKLOADS="${WORKLOADS:-text,image,video}" CONCURRENCY="${CONCURRENCY:-1,16,48}"
export REQUESTS="${REQUESTS:-8,32,64}" BUDGET_S="${BUDGET_S:-500}"
unpadded="$WORKDIR/model-72b-awq-i29568-4layers"
# Both servers: compile caches shared between the launches of one machine (the vllm phase compiles,
# the app phase loads), and vLLM's PyTorch sampler instead of FlashInfer's, whose kernels are
# compiled on first use (minutes, per fresh machine) and are not what is compared here (greedy).
common=(--tp "$TP" --allreduce-fusion "$FUSION" --compile-cache shared --ready-timeout 480
        --server-env VLLM_USE_FLASHINFER_SAMPLER=0)
case "$phase" in
  check)
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
    nvidia-smi topo -m || true
    env | grep -E '^(NCCL_NVLS_ENABLE|TORCH_SYMM_MEM_DISABLE_MULTICAST|NVSHMEM_DISABLE_NVLS)=' || true
    ls -la /tmp/stage 2>/dev/null || true ;;
  build)
    bash bench/gpu_setup.sh
    bash bench/gpu_bench.sh build
    PYTHONPATH="/tmp/site:$repo" python3 -m bench.serve_bench.make_checkpoint --shape 72b-awq --layers 4 \
      --intermediate 29568 --init tile --out "$unpadded" | tail -c 400
    PYTHONPATH="/tmp/site:$repo" python3 -m serve_app.awq check "$unpadded" --tp "$TP" || true ;;
  vllm|app)
    bash bench/gpu_bench.sh "$phase" "${common[@]}" "$@" ;;
  fail)
    bash bench/gpu_bench.sh fail --model "$unpadded" --tag "awq-unpadded-tp$TP" "${common[@]}" "$@" || true ;;
  report)
    bash bench/gpu_bench.sh report "$@" ;;
  *) echo "unknown phase $phase" >&2; exit 2 ;;
esac
