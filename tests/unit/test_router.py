"""HashRing (remap property, determinism, publishing) and extent routing (grouping, keys, balance)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raylsm.errors import ConfigError, ShardUnavailableError
from raylsm.router import (
    EmptyRingError,
    ExtentConfig,
    ExtentRouter,
    HashRing,
    extent_of,
    page_keys,
    routing_key,
)
from raylsm.store import page_key

NAMESPACE = page_key.namespace_id("test-model|page_first|bf16|tp0of1")
KEYS = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(20_000)]


def shard_names(count: int) -> list[str]:
    return [f"shard-{index}" for index in range(count)]


def chain(length: int, seed: int = 0) -> list[bytes]:
    pages, previous = [], seed.to_bytes(8, "big")
    for _ in range(length):
        previous = hashlib.sha256(previous).digest()
        pages.append(previous)
    return pages


# --- ring --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shards", [4, 8, 16])
def test_adding_a_shard_moves_about_one_over_n_plus_one_all_to_the_new_shard(shards):
    ring = HashRing(shard_names(shards))
    grown = ring.with_shard_added("shard-new")
    assert grown.version == ring.version + 1
    moved = [key for key in KEYS if ring.shard_for(key) != grown.shard_for(key)]
    assert all(grown.shard_for(key) == "shard-new" for key in moved)
    expected = len(KEYS) / (shards + 1)
    assert 0.6 * expected <= len(moved) <= 1.4 * expected


@pytest.mark.parametrize("shards", [4, 8, 16])
def test_removing_a_shard_moves_only_its_keys(shards):
    ring = HashRing(shard_names(shards))
    removed = "shard-1"
    shrunk = ring.with_shard_removed(removed)
    owned = [key for key in KEYS if ring.shard_for(key) == removed]
    moved = [key for key in KEYS if ring.shard_for(key) != shrunk.shard_for(key)]
    assert moved == owned
    expected = len(KEYS) / shards
    assert 0.6 * expected <= len(owned) <= 1.4 * expected


def test_virtual_nodes_spread_keys_evenly():
    ring = HashRing(shard_names(8), virtual_nodes=128)
    counts: dict[str, int] = {}
    for key in KEYS:
        shard = ring.shard_for(key)
        counts[shard] = counts.get(shard, 0) + 1
    assert set(counts) == set(ring.shards)
    assert max(counts.values()) / (len(KEYS) / 8) < 1.25


def test_shard_order_does_not_matter():
    forward = HashRing(shard_names(8))
    backward = HashRing(list(reversed(shard_names(8))))
    assert forward == backward
    assert all(forward.shard_for(key) == backward.shard_for(key) for key in KEYS[:2000])


def test_routing_is_fixed_across_processes_and_hash_seeds():
    # Golden values: routing must never depend on Python's hash() or on the process.
    ring = HashRing(shard_names(4))
    expected = ["shard-2", "shard-0", "shard-0", "shard-2", "shard-0", "shard-2"]
    assert [ring.shard_for(bytes([i]) * 8) for i in range(6)] == expected
    script = (
        "from raylsm.router import HashRing\n"
        "r = HashRing([f'shard-{i}' for i in range(4)])\n"
        "print(','.join(r.shard_for(bytes([i]) * 8) for i in range(6)))\n"
    )
    for seed in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip().split(",") == expected


def test_to_dict_from_dict_roundtrip_through_msgpack():
    ring = HashRing(shard_names(5), virtual_nodes=64, version=7)
    packed = msgpack.packb(ring.to_dict())
    restored = HashRing.from_dict(msgpack.unpackb(packed))
    assert restored == ring
    assert restored.version == 7 and restored.virtual_nodes == 64 and restored.shards == ring.shards
    assert all(restored.shard_for(key) == ring.shard_for(key) for key in KEYS[:2000])


def test_from_dict_rejects_garbage():
    with pytest.raises(ConfigError):
        HashRing.from_dict({"shards": ["a"]})
    with pytest.raises(ConfigError):
        HashRing.from_dict({"format": 99, "shards": ["a"], "virtual_nodes": 1, "version": 0})


def test_empty_ring_raises_a_typed_error():
    ring = HashRing([])
    with pytest.raises(EmptyRingError):
        ring.shard_for(b"key")
    with pytest.raises(ShardUnavailableError):
        ExtentRouter(ring, 4).route_batch(NAMESPACE, chain(3), [])
    assert ExtentRouter(ring, 4).route_batch(NAMESPACE, [], []) == []
    assert HashRing(["a"]).with_shard_removed("a").version == 1


@pytest.mark.parametrize(
    "kwargs",
    [dict(shards=["a", "a"]), dict(shards=[""]), dict(shards=["a"], virtual_nodes=0), dict(shards=["a"], version=-1)],
)
def test_ring_config_errors(kwargs):
    with pytest.raises(ConfigError):
        HashRing(**kwargs)


# --- extents -----------------------------------------------------------------------------------


def test_extent_of():
    assert [extent_of(depth, 4) for depth in range(10)] == [0, 0, 0, 0, 4, 4, 4, 4, 8, 8]
    assert [extent_of(depth, 1) for depth in range(3)] == [0, 1, 2]
    with pytest.raises(ConfigError):
        extent_of(3, 0)


def test_anchor_depth_with_a_shallow_head():
    head = ExtentConfig(extent_pages=4, shallow_depth_pages=2, shallow_extent_pages=1)
    assert [head.anchor_depth(depth) for depth in range(12)] == [0, 1, 2, 2, 2, 2, 6, 6, 6, 6, 10, 10]
    plain = ExtentConfig.plain(4)
    assert [plain.anchor_depth(depth) for depth in range(9)] == [0, 0, 0, 0, 4, 4, 4, 4, 8]
    assert ExtentConfig.from_tokens(64) == ExtentConfig()
    assert ExtentConfig.from_tokens(512) == ExtentConfig(16, 1, 1, 2)
    assert ExtentConfig.from_dict(head.to_dict()) == head


@pytest.mark.parametrize(
    "kwargs",
    [dict(extent_pages=0), dict(shallow_depth_pages=-1), dict(shallow_depth_pages=6, shallow_extent_pages=4)],
)
def test_extent_config_errors(kwargs):
    with pytest.raises(ConfigError):
        ExtentConfig(**kwargs)


def test_route_batch_groups_in_order_and_covers_every_slot():
    router = ExtentRouter(HashRing(shard_names(8)), 2)
    pages = chain(40)
    groups = router.route_batch(NAMESPACE, pages, [])
    assert sorted(slot for _, slots in groups for slot in slots) == list(range(40))
    for _, slots in groups:
        assert slots == sorted(slots)
    first_slots = [slots[0] for _, slots in groups]
    assert first_slots == sorted(first_slots)  # shards in order of first appearance
    assert len({shard for shard, _ in groups}) == len(groups)
    shard_of_slot = {slot: shard for shard, slots in groups for slot in slots}
    for extent_start in range(0, 40, 2):  # an extent's pages are on one shard
        assert shard_of_slot[extent_start] == shard_of_slot[extent_start + 1]


def test_without_prefix_keys_each_page_anchors_itself():
    ring = HashRing(shard_names(8))
    router = ExtentRouter(ring, 16)
    pages = chain(20)
    shards = router.route_pages(NAMESPACE, pages, None)
    assert shards == [ring.shard_for(routing_key(NAMESPACE, page)) for page in pages]
    for key, page in zip(router.page_keys(NAMESPACE, pages, None), pages):
        decoded = page_key.decode(key)
        assert decoded.depth == 0 and decoded.extent_id == page[:16] and decoded.page_hash == page


def test_page_keys_encode_depth_and_anchor_and_agree_with_routing():
    extents = ExtentConfig(extent_pages=4, shallow_depth_pages=2, shallow_extent_pages=2)
    router = ExtentRouter(HashRing(shard_names(8)), extents)
    full = chain(15)
    prefix, batch = full[:5], full[5:]
    keys = page_keys(NAMESPACE, batch, prefix, extents)
    assert keys == router.page_keys(NAMESPACE, batch, prefix)
    for index, key in enumerate(keys):
        depth = 5 + index
        decoded = page_key.decode(key)
        assert decoded.namespace_id == NAMESPACE
        assert decoded.depth == depth
        assert decoded.extent_id == full[extents.anchor_depth(depth)][:16]
        assert decoded.page_hash == batch[index]
    assert [router.shard_of_key(key) for key in keys] == router.route_pages(NAMESPACE, batch, prefix)
    assert page_keys(NAMESPACE, full[:8], [], 4)[5] == page_key.encode(NAMESPACE, full[4], 5, full[5])


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(1, 60),
    split=st.integers(0, 60),
    extent_pages=st.integers(1, 9),
    shallow=st.sampled_from([(0, 1), (3, 1), (4, 2), (6, 6)]),
)
def test_keys_and_shards_do_not_depend_on_how_a_chain_is_batched(length, split, extent_pages, shallow):
    extents = ExtentConfig(extent_pages, *shallow)
    router = ExtentRouter(HashRing(shard_names(6), virtual_nodes=16), extents)
    full = chain(length, seed=length)
    split = min(split, length)
    whole_keys = router.page_keys(NAMESPACE, full, [])
    whole_shards = router.route_pages(NAMESPACE, full, [])
    head, tail = full[:split], full[split:]
    assert router.page_keys(NAMESPACE, head, []) + router.page_keys(NAMESPACE, tail, head) == whole_keys
    assert router.route_pages(NAMESPACE, head, []) + router.route_pages(NAMESPACE, tail, head) == whole_shards


def test_namespaces_route_independently():
    ring = HashRing(shard_names(8))
    other = page_key.namespace_id("other-model")
    router = ExtentRouter(ring, 1)
    pages = chain(400)
    differs = sum(a != b for a, b in zip(router.route_pages(NAMESPACE, pages, []), router.route_pages(other, pages, [])))
    assert differs > 400 * 0.6


# --- balance on the conversation trace ---------------------------------------------------------


@pytest.fixture(scope="module")
def trace():
    from raylsm.bench.trace import load_trace

    return load_trace()


def test_default_router_balances_the_conversation_trace(trace):
    from raylsm.bench.balance import simulate_balance

    # 512-token pages keep the test fast; the default token spans are the same at 64-token pages.
    extents = ExtentConfig.from_tokens(512)
    balance, fanout = simulate_balance(trace, shards=8, virtual_nodes=128, extent_pages=extents, page_tokens=512)
    assert balance <= 1.25
    assert fanout <= 3.0
    # Without the split the shared first block makes the first extent of every prompt hot.
    plain_balance, _ = simulate_balance(trace, 8, 128, ExtentConfig.plain(16), page_tokens=512)
    assert plain_balance > 3.0


def test_default_router_balances_at_64_token_pages(trace):
    from raylsm.bench.balance import simulate_balance

    balance, fanout = simulate_balance(trace[:3000], shards=8, extent_pages=None, page_tokens=64)
    assert balance <= 1.25
    assert fanout <= 3.0


@pytest.mark.parametrize("shards", [4, 8])
def test_the_moved_fraction_of_the_circle_is_what_a_ring_change_remaps(shards):
    ring = HashRing(shard_names(shards))
    grown = ring.with_shard_added("shard-new")
    measured = sum(ring.shard_for(key) != grown.shard_for(key) for key in KEYS) / len(KEYS)
    assert ring.moved_fraction(grown) == pytest.approx(measured, abs=0.02)
    assert grown.moved_fraction(ring) == ring.moved_fraction(grown)
    assert ring.moved_fraction(HashRing(shard_names(shards), version=9)) == 0.0
    assert ring.moved_fraction(HashRing([])) == 1.0 and HashRing([]).moved_fraction(HashRing([])) == 0.0
