"""Eviction forwarding end to end on one Ray node with two shards that keep fixed shares, as shards
on separate nodes do (no disk budget pool): one shard fills and evicts while the other has room,
so it forwards what it evicts there (the controller relays their frontiers); the client still finds
and reads those pages through the first shard's pointers, byte for byte, and a shard never forwards
a page it was forwarded (raylsm.actors.forwarding, docs/placement.md)."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from conftest import PAGE_BYTES, wait_until

KiB, MiB = 1024, 1024 * 1024
CAPACITY = 4 * MiB
CHAIN = 16


@pytest.fixture(scope="module")
def tier(local_ray, tier_factory):
    tier = tier_factory(shard={"pool_disk_budget": False, "forward_evictions": True,
                               "store": {"capacity_bytes": CAPACITY, "segment_bytes": 256 * KiB}},
                        controller={"reconcile_period_s": 0.25})
    tier.wait_for_shards(2)
    return tier


def _forwarding(tier, shard):
    return ray.get(tier.shard(shard).stats.remote(), timeout=30)["forwarding"]


def test_a_full_shard_forwards_what_it_evicts_to_one_with_room_and_reads_find_it(tier, pages):
    client = tier.client(same_node_fast_path=True)
    shards = sorted(tier.ring()["shards"])
    full, roomy = shards
    wait_until(lambda: _forwarding(tier, full)["forward_target"] == roomy, 30, "the controller to relay frontiers")
    chains = [tier.chain_where(pages, ("fills one shard", i), CHAIN, lambda routed: set(routed) == {full})
              for i in range(24)]  # 24 x 16 x 16 KiB = 6 MiB: 1.5 times the shard's capacity, 0.75 the tier's
    for chain in chains:
        assert all(client.put(pages.namespace, chain, [], pages.values(chain)))
    def settled():
        sent, received = _forwarding(tier, full), _forwarding(tier, roomy)
        return sent["forwarded_pages"] >= 4 * CHAIN and sent["forwarded_pages"] == received["received_pages"]

    wait_until(settled, 30, "the evicted pages to be forwarded and acknowledged")

    first = chains[0]  # evicted from its own shard long ago
    assert ray.get(tier.shard(full).probe.remote([client._route(pages.namespace, first, []).keys[0]])) == 0
    for fast_path in (True, False):
        reader = client if fast_path else tier.client(same_node_fast_path=False)
        found = [reader.exists(pages.namespace, chain, []) for chain in chains[:4]]
        assert found == [CHAIN] * 4, found
        for chain in chains[:4]:
            out = pages.buffers(CHAIN)
            assert reader.get_into(pages.namespace, chain, [], out) == [True] * CHAIN
            assert all(np.array_equal(got, want) for got, want in zip(out, pages.values(chain)))
        assert reader.stats()["counters"]["exists_forwarded_probes"] >= 4


def test_a_shard_receiving_forwarded_pages_drops_what_it_evicts(tier, pages):
    """The shard with room fills with forwarded pages and then evicts: those evictions are the
    tier's oldest pages, dropped, not sent back (no cascade, no bouncing)."""
    client = tier.client()
    full, roomy = sorted(tier.ring()["shards"])
    for i in range(48):
        chain = tier.chain_where(pages, ("more", i), CHAIN, lambda routed: set(routed) == {full})
        assert all(client.put(pages.namespace, chain, [], pages.values(chain)))
    wait_until(lambda: tier.shard_counters(roomy)["evicted_pages"] > 0, 30, "the receiving shard to evict")
    assert _forwarding(tier, roomy)["forwarded_pages"] == 0
    assert _forwarding(tier, full)["received_pages"] == 0
