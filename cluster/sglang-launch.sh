#!/usr/bin/env bash
# Example: an SGLang replica on a node of the Ray cluster, with raylsm as its HiCache L3 storage.
# The replica joins the Ray cluster as a driver (ray_address "auto" finds the local Ray node).
exec python -m sglang.launch_server \
  --model-path meta-llama/Llama-3.1-8B-Instruct \
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
      "call_timeout_s": 1.0
  }'
