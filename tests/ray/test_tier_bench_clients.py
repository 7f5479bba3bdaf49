"""`raylsm bench tier --clients`: client processes driving one shard on this node at once, on the
object path and the same-node fast path. Asserts what the figures rest on: every page the clients
wrote concurrently reads back right, and the row carries both phases."""

from __future__ import annotations

import ray

from raylsm.bench import tier_clients
from raylsm.bench.tier_bench import POOL_SHAPE

SHARD_UNITS = 1


def test_concurrent_clients_write_and_read_back_every_page(local_ray, tier_factory):
    tier = tier_factory(shard={"store": {"capacity_bytes": 1 << 30, "segment_bytes": 64 << 20}})
    tier.wait_for_shards(1)
    address = ray.get_runtime_context().gcs_address
    dropped = []
    for label, fast in (("tier_object", False), ("tier_fast", True)):
        # A generous deadline: on a loaded 2-core machine a 32 MiB get can outlive SGLang's 0.53 s, and
        # is then (rightly) a miss; this test is about what comes back, not how fast.
        row = tier_clients.run_clients(address, clients=2, batches=4, fast=fast, pool_shape=POOL_SHAPE,
                                       drop_caches=lambda: dropped.append(label), label=label,
                                       extra_config={"call_timeout_s": 20.0, "put_timeout_s": 60.0})
        assert row["clients"] == 2 and row["batches"] == 4
        assert row["wrong_pages"] == 0 and row["missing_pages"] == 0 and row["put_failures"] == 0
        assert row["gb_per_s"] > 0 and row["put_gb_per_s"] > 0
        assert row["get_p50_ms"] <= row["get_p99_ms"]
    assert dropped == ["tier_object", "tier_fast"]  # between each phase's puts and gets
