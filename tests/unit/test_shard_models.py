"""The sharded reference models: one shard is the plain LRU; pages are placed as the tier's router
places them; a shard evicts only its own pages; the segment-CLOCK model keeps what was read."""

from __future__ import annotations

import hashlib
import random

from raylsm.bench import cache_models, shard_models
from raylsm.router import ExtentConfig, ExtentRouter, HashRing
from raylsm.store.page_key import namespace_id


def _chains(count: int, length: int, seed: int = 0) -> list[list[bytes]]:
    rng = random.Random(seed)
    chains = []
    for index in range(count):
        shared = rng.randrange(3)  # a few shared heads, then private pages
        chain = [hashlib.sha256(repr(("head", shared, d)).encode()).digest() for d in range(4)]
        chain += [hashlib.sha256(repr(("tail", index, d)).encode()).digest() for d in range(length - 4)]
        chains.append(chain)
    return chains


def test_one_shard_is_the_plain_lru():
    streams = _chains(60, 20) * 3
    owners = [[0] * len(stream) for stream in streams]
    for capacity in (10, 100, 400):
        assert (shard_models.simulate_lru_sharded(streams, owners, capacity, 1).per_request_hits
                == cache_models.simulate_lru(streams, capacity).per_request_hits)


def test_pages_are_placed_as_the_tier_routes_them():
    chains = _chains(30, 40)
    starts = [3] * len(chains)
    names = [f"shard-n{i}-0" for i in range(4)]
    ns = namespace_id("tests/shard-models")
    extents = ExtentConfig(8, 4, 4)
    owners = shard_models.shard_assignment(chains, starts, names, ns, extents=extents)
    router = ExtentRouter(HashRing(sorted(names), 128), extents)
    for chain, start, placed in zip(chains, starts, owners):
        assert [sorted(names)[i] for i in placed] == router.route_pages(ns, chain[start:], chain[:start])
    assert len({shard for placed in owners for shard in placed}) == 4


def test_split_extents_are_placed_as_the_tier_routes_them():
    chains = _chains(30, 40)
    starts = [3] * len(chains)
    names = [f"shard-n{i}-0" for i in range(4)]
    ns = namespace_id("tests/shard-models")
    extents = ExtentConfig(16, 4, 4, 4)
    splits = frozenset(chain[4][:16] for chain in chains[:10])  # the first regular extent of ten chains
    owners = shard_models.shard_assignment(chains, starts, names, ns, extents=extents, split_extents=splits)
    router = ExtentRouter(HashRing(sorted(names), 128), extents, splits)
    plain = ExtentRouter(HashRing(sorted(names), 128), extents)
    moved = 0
    for chain, start, placed in zip(chains, starts, owners):
        routed = router.route_pages(ns, chain[start:], chain[:start])
        assert [sorted(names)[i] for i in placed] == routed
        moved += routed != plain.route_pages(ns, chain[start:], chain[:start])
    assert moved > 0  # the splits did change some placements


def test_a_shard_evicts_only_its_own_pages():
    # Shard 1 holds one page asked for every other request; shard 0 is flooded with one-off pages.
    hot = b"hot"
    streams = [[hot]] + [request for i in range(200)
                         for request in ([hot], [f"cold{i}-{j}".encode() for j in range(4)])]
    owners = [[1] if stream == [hot] else [0] * 4 for stream in streams]
    assert sum(shard_models.simulate_lru_sharded(streams, owners, 8, 2).per_request_hits) == 200
    assert sum(cache_models.simulate_lru(streams, 4).per_request_hits) <= 1  # one LRU: each flood evicts it


def test_segment_clock_keeps_pages_read_since_written():
    reread = [f"r{i}".encode() for i in range(8)]
    streams = [reread]
    for round_ in range(30):
        streams.append(reread)
        streams.append([f"f{round_}-{i}".encode() for i in range(8)])
    owners = [[0] * len(stream) for stream in streams]
    clock = shard_models.simulate_segment_clock(streams, owners, 32, 1, segments_per_shard=4)
    fifo = shard_models.simulate_lru_sharded(streams, owners, 32, 1)  # LRU also keeps them: a sanity bound
    assert sum(clock.per_request_hits) >= 8 * 29
    assert sum(fifo.per_request_hits) >= 8 * 29
