#!/usr/bin/env bash
# An SGLang replica with raylsm as its HiCache L3 storage, on a node of the Ray cluster (the
# sglang_gpu node type of cluster/ray-cluster.yaml, the sglang group of
# cluster/kuberay-raycluster.yaml). The replica joins the cluster as a Ray driver: "ray_address":
# "auto" finds this node's Ray, so this script first waits until `ray start` has recorded it.
# SGLang 0.5.23 is the tested version (docs/deploy.md); the driver runs the cluster's exact Ray and
# Python versions (the same image).
#
# The prefetch keys are SGLang's own (its defaults, spelled out): raylsm's call_timeout_s is derived
# from them and must stay at most half of prefetch_timeout_base. Override with SGLANG_MODEL,
# SGLANG_PORT, SGLANG_EXTRA_ARGS.
set -euo pipefail

record="${RAY_TMPDIR:-/tmp}/ray/ray_current_cluster"
for _ in $(seq 300); do
  [ -s "$record" ] && break
  sleep 1
done
[ -s "$record" ] || { echo "sglang-launch: no Ray node on this host after 300 s ($record)" >&2; exit 1; }

# shellcheck disable=SC2086  # SGLANG_EXTRA_ARGS is a list of flags
exec python -m sglang.launch_server \
  --model-path "${SGLANG_MODEL:-meta-llama/Llama-3.1-8B-Instruct}" \
  --host 0.0.0.0 --port "${SGLANG_PORT:-30000}" \
  --page-size 64 \
  --enable-hierarchical-cache \
  --hicache-ratio 2 \
  --hicache-mem-layout page_first \
  --hicache-storage-backend dynamic \
  --hicache-storage-backend-extra-config '{
      "backend_name": "raylsm",
      "module_path": "raylsm.sglang.backend",
      "class_name": "RayLSMStorage",
      "interface_v1": 1,
      "hicache_storage_pass_prefix_keys": true,
      "ray_address": "auto",
      "prefetch_timeout_base": 1.0,
      "prefetch_timeout_per_ki_token": 0.25,
      "call_timeout_s": 0.5
  }' \
  ${SGLANG_EXTRA_ARGS:-}
