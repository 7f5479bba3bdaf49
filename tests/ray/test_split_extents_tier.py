"""Hot-extent splitting end to end on one Ray node with four shards: sessions that continue one shared
prefix inside one extent all land on its shard; the shard reports the extent hot, the controller
splits it and publishes the split with the ring, the client routes later sessions' pages to their own
sub-extents (other shards), and every page reads back: those written after the split where they
now route, those written before where they were stored (docs/placement.md)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import PAGE_BYTES, wait_until
from raylsm.router import ExtentConfig, ExtentRouter, HashRing
from raylsm.store import page_key

SHARD_UNITS = 4
EXTENTS = {"extent_pages": 16, "shallow_depth_pages": 0, "shallow_extent_pages": 1, "split_extent_pages": 4}


@pytest.fixture(scope="module")
def tier(local_ray, tier_factory):
    # One node stands for four: its shards keep fixed shares (no disk budget pool), or the
    # controller would not split (a pool evicts as one cache).
    tier = tier_factory(shard={"hot_extent_window_pages": 64, "pool_disk_budget": False}, client=EXTENTS, controller={"split_extents": True, "split_threshold_pages": 32, "split_min_share": 0.0, "reconcile_period_s": 0.5})
    tier.wait_for_shards(SHARD_UNITS)
    return tier


def session(pages, shared, name, length=16):
    chain = list(shared)
    for depth in range(len(shared), length):
        chain.append(pages.chain((name, "turn", chain[-1]), 1)[0])
    return chain


def test_sessions_continuing_a_hot_shared_prefix_spread_once_its_extent_is_split(tier, pages):
    client = tier.client()
    shared = pages.chain("tools+system", 5)  # ends inside the extent [0, 16)
    hot_extent = shared[0][:page_key.EXTENT_ID_BYTES]
    ring = tier.ring()
    plain = ExtentRouter(HashRing(sorted(ring["shards"]), client._config.client.virtual_nodes),
                         ExtentConfig(**EXTENTS))
    before = [session(pages, shared, f"early-{i}") for i in range(8)]  # 8 x 11 pages of their own
    for chain in before:
        assert set(plain.route_pages(pages.namespace, chain, [])) == {plain.route_pages(pages.namespace, shared, [])[0]}
        assert all(client.put(pages.namespace, chain, [], pages.values(chain)))

    wait_until(lambda: hot_extent in client.split_extents, 30, "the controller to split the hot extent")
    split = ExtentRouter(plain.ring, plain.extents, client.split_extents)
    after = [session(pages, shared, f"late-{i}") for i in range(8)]
    own_shards = {shard for chain in after for shard in split.route_pages(pages.namespace, chain[8:], chain[:8])}
    assert len(own_shards) >= 2  # the sessions' own pages no longer all go to the prefix's shard
    for chain in after:
        assert all(client.put(pages.namespace, chain, [], pages.values(chain)))
    for chain in after + before:  # the early sessions' pages, stored before the split, too
        assert client.exists(pages.namespace, chain, []) == len(chain)
        out = pages.buffers(len(chain))
        assert all(client.get_into(pages.namespace, chain, [], out))
        assert all(np.array_equal(got, want) for got, want in zip(out, pages.values(chain)))
    counters = client.stats()["counters"]
    assert counters.get("exists_unsplit_probes", 0) >= len(before)  # found where they were stored
    assert counters.get("get_unsplit_reads", 0) >= len(before)

    # A miss inside a split extent, in a batch with a malformed page hash: the look under the old
    # anchor routes the batch again, and the malformed page is still counted once.
    fresh = session(pages, shared, "never-stored") + [b"not a page hash"]
    assert client.exists(pages.namespace, fresh, []) < len(fresh) - 1
    after_counters = client.stats()["counters"]
    assert after_counters["exists_unsplit_probes"] == counters["exists_unsplit_probes"] + 1
    assert after_counters["bad_keys"] == counters.get("bad_keys", 0) + 1
    assert len(out[0]) == PAGE_BYTES
