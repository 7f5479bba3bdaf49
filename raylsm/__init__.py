"""raylsm: a distributed KV-cache storage tier for LLM inference.

Layers, in the order data flows (see docs/architecture.md):
  raylsm.store   one shard's engine: RocksDB pointer index + append-only segment files
  (later) raylsm.router / raylsm.client / raylsm.actors / raylsm.controller / raylsm.sglang

The storage core (`raylsm.store`) imports no Ray, SGLang or torch.
"""

__version__ = "0.1.0"
