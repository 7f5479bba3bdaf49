"""A benchmark's private tier runs on one ring per seed: its shards are named after a fixed disk label,
not after the Ray node id, so every configuration and every run of a seed routes each page to the
same shard (`raylsm.bench.systems.TierSession`; the ring decided the quick adaptive bench's hit
ratio more than the configuration did).
"""

from __future__ import annotations

import ray

from raylsm.bench.systems import TierSession
from raylsm.config import RAY_NAMESPACE
from raylsm.controller.controller_actor import get_controller

MiB = 1 << 20


def test_a_private_bench_tier_names_its_shards_after_the_seed_not_the_node(tmp_path):
    tier = TierSession(2, 64 * MiB, 64 * 1024, str(tmp_path), private=True, ring_seed=7)
    try:
        tier.start()
        ring = ray.get(get_controller(RAY_NAMESPACE).ring.remote())
        node_ids = {node["NodeID"][:12] for node in ray.nodes()}
    finally:
        tier.stop()
    assert tier.shard_names == ["shard-bench-7-0", "shard-bench-7-1"]
    assert sorted(ring["shards"]) == tier.shard_names
    assert not any(node_id in name for name in tier.shard_names for node_id in node_ids)
