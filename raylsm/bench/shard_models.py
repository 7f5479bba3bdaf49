"""Hit-ratio models of a sharded L3 page cache: the same capacity cut into N shards by raylsm's ring.

Owns the reference systems that separate what partitioning costs any cache from what raylsm's own
placement and eviction cost (issue 9):

- `lru_sharded_model`: LRU partitioned over the shards as raylsm routes pages (ring + extents); each
  shard an LRU of capacity / N pages; a request's hit is the prefix of its pages held by their shards.
- `segment_clock_model`: raylsm's store policy per shard (pages appended to segments; a full segment
  rolls; the oldest segments are freed, their pages read since written re-appended within one
  segment's budget: CLOCK over segments), to explore eviction designs fast and to check the store.

Pages are routed once per page from the full chain (its depth and extent anchor), so the models see
exactly the placement the tier uses. Called by `raylsm bench trace` and tests; pure functions.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Hashable, Sequence

from raylsm.bench.cache_models import ModelResult, RequestPages, _check_capacity

ShardOf = Sequence[Sequence[int]]  # per request, the shard index of each page of its stream


def shard_assignment(chains: Sequence[Sequence[bytes]], starts: Sequence[int], shard_names: Sequence[str],
                     namespace_id: bytes, extents=None, virtual_nodes: int | None = None,
                     split_extents: frozenset = frozenset()) -> list[list[int]]:
    """The shard (index into sorted `shard_names`) of every page of every request's L3 stream
    (`chain[start:]`), as a TierClient with `extents` and these split extents routes it."""
    from raylsm.config import ClientConfig
    from raylsm.router import ExtentConfig, ExtentRouter, HashRing

    client = ClientConfig()
    extents = extents or ExtentConfig(client.extent_pages, client.shallow_depth_pages, client.shallow_extent_pages,
                                      client.split_extent_pages)
    names = sorted(shard_names)
    router = ExtentRouter(HashRing(names, virtual_nodes or client.virtual_nodes), extents, split_extents)
    index = {name: i for i, name in enumerate(names)}
    return [[index[shard] for shard in router.route_pages(namespace_id, chain[start:], chain[:start])]
            for chain, start in zip(chains, starts)]


def _shard_capacities(capacity_pages: int, shards: int) -> list[int]:
    base, extra = divmod(capacity_pages, shards)
    return [base + (1 if i < extra else 0) for i in range(shards)]


def simulate_lru_sharded(requests_pages: Sequence[RequestPages], shard_of: ShardOf, capacity_pages: int,
                         shards: int) -> ModelResult:
    """LRU per shard (write-all admission, prefix semantics), capacity split evenly."""
    _check_capacity(capacity_pages)
    capacities = _shard_capacities(capacity_pages, shards)
    caches: list[OrderedDict[Hashable, None]] = [OrderedDict() for _ in range(shards)]
    per_request: list[int] = []
    hit_pages = total_pages = 0
    for pages, owners in zip(requests_pages, shard_of):
        hits = 0
        for page, shard in zip(pages, owners):
            cache = caches[shard]
            if page not in cache:
                break
            cache.move_to_end(page)
            hits += 1
        for page, shard in zip(pages[hits:], owners[hits:]):
            cache = caches[shard]
            if page in cache:
                cache.move_to_end(page)
            elif capacities[shard]:
                cache[page] = None
                if len(cache) > capacities[shard]:
                    cache.popitem(last=False)
        per_request.append(hits)
        hit_pages += hits
        total_pages += len(pages)
    return ModelResult("lru_sharded", capacity_pages, hit_pages, total_pages, tuple(per_request))


class _SegmentClockShard:
    """One shard of `simulate_segment_clock`: segments of `segment_pages` pages, at most
    `capacity_pages` pages held in segments (the active one counted full, as its file is)."""

    def __init__(self, capacity_pages: int, segment_pages: int) -> None:
        self.segment_pages = segment_pages
        self.max_segments = max(2, capacity_pages // segment_pages)
        self.sealed: deque[list[Hashable]] = deque()
        self.active: list[Hashable] = []
        self.where: dict[Hashable, int] = {}  # page -> id of the segment holding it
        self.read: set[Hashable] = set()
        self.next_id = 0
        self.first_id = 0  # id of sealed[0]

    def holds(self, page: Hashable) -> bool:
        return page in self.where

    def touch(self, page: Hashable) -> None:
        self.read.add(page)

    def put(self, page: Hashable) -> None:
        if page in self.where:
            return
        if len(self.active) >= self.segment_pages:
            self._roll()
        self.active.append(page)
        self.where[page] = self.next_id

    def _roll(self) -> None:
        self.sealed.append(self.active)
        self.next_id += 1
        self.active = []
        kept: list[Hashable] = []
        budget = self.segment_pages
        while len(self.sealed) + 1 > self.max_segments:
            segment = self.sealed.popleft()
            segment_id = self.first_id
            self.first_id += 1
            for page in segment:
                if self.where.get(page) != segment_id:
                    continue
                del self.where[page]
                if page in self.read and budget > 0:
                    self.read.discard(page)
                    kept.append(page)
                    budget -= 1
                else:
                    self.read.discard(page)
        for page in kept:
            self.active.append(page)
            self.where[page] = self.next_id


def simulate_segment_clock(requests_pages: Sequence[RequestPages], shard_of: ShardOf, capacity_pages: int,
                           shards: int, segments_per_shard: int = 64) -> ModelResult:
    """raylsm's store policy per shard (see the module docstring), capacity split evenly."""
    _check_capacity(capacity_pages)
    stores = [_SegmentClockShard(capacity, max(1, capacity // segments_per_shard))
              for capacity in _shard_capacities(capacity_pages, shards)]
    per_request: list[int] = []
    hit_pages = total_pages = 0
    for pages, owners in zip(requests_pages, shard_of):
        hits = 0
        for page, shard in zip(pages, owners):
            if not stores[shard].holds(page):
                break
            stores[shard].touch(page)
            hits += 1
        for page, shard in zip(pages[hits:], owners[hits:]):
            stores[shard].put(page)
        per_request.append(hits)
        hit_pages += hits
        total_pages += len(pages)
    return ModelResult("segment_clock", capacity_pages, hit_pages, total_pages, tuple(per_request))
