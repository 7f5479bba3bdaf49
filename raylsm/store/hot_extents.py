"""Which extents many chains diverge inside, and take a large share of a shard's new pages: a
bounded, sampled count of distinct pages per extent over a shard's recent puts.

Owned here: `HotExtents`. A regular extent holds at most `extent_pages` pages of any one chain (one
page per depth); one that holds many more distinct pages has several chains diverging inside it (a
hot shared prefix that ends mid-extent), and all of them are written to this shard. The controller
asks every shard for these (`ShardActor.hot_extents`) and splits them (raylsm.router.page_anchors,
docs/placement.md). Called by the shard actor after each put; not thread-safe (the actor holds a
lock around it). Imports no Ray.

Distinct pages, not puts: a small cache evicts and re-stores one chain's pages many times (a first
version counted puts and split 248 extents of the agentic workload at 8 shards, nearly all single
chains stored again). Pages are told apart by an 8-byte fingerprint of the page hash; namespaces
share fingerprints, so TP ranks' copies count once.

A share of the shard's distinct pages, not of its puts: an extent is reported only if its distinct
pages are at least `min_share` of the shard's own distinct pages in the same window. NOTE: measured
on the generator's workloads at 8 shards, capacity 0.05 (first-seen distinct pages over the whole
run): the agentic workload's hot extents hold 1,845 to 19,148 pages against 12,483 per shard (15%
to 150%); the conversation trace's largest shared extent 666 against 42,010 (1.6%). Splitting the
conversation trace's 21 extents above 256 pages lowered the sharded LRU model from 0.832 to 0.814 of
one shard (mean of 5 rings), splitting the agentic workload's 7 raised it from 0.572 to 0.760: a
split spreads the chains that share the extent over more shards, which pays only where one extent
is a real share of a shard. Shares of puts (re-stores counted) did not separate the two: they depend
on how often the cache re-stores, and the conversation trace at 0.10 split 14 extents that way.
Only whole windows are judged (the previous one, or the current once half full): early in a window
a burst of one extent is a large share of the little seen so far.

Sampling (as SHARDS samples reuse distances: Waldspurger et al., FAST 2015): an extent keeps the
fingerprints with `fp mod extent_sample == 0` (1 in 8), up to `limit` (512, so counts up to about
4,096 distinct pages); the shard's distinct pages are counted from 1 in 64 fingerprints, up to
`4 x limit` kept. Estimates are the kept counts times the rate (a count of 256 is ±18% at 1 sigma).

Cost: two windows (the current and the previous, so an extent is forgotten one to two windows after
it cools) of at most `capacity` extents (256) with at most `limit` fingerprints each, plus the
shard's sample: at most about 2 x (256 x 512 + 2,048) fingerprints, a few MiB in the worst case, and
one modulo and one dict lookup per stored page. When the table is full a new extent replaces the
one with the fewest pages (Space-Saving's rule, Metwally et al., ICDT 2005), so an extent that is
really hot is not crowded out by many cold ones.
"""

from __future__ import annotations

from typing import Iterable

from raylsm.store import page_key

_PAGE_HASH_AT = page_key.EXTENT_PREFIX_BYTES + 4
_EXTENT_AT = 1 + page_key.NAMESPACE_ID_BYTES


class _Window:
    __slots__ = ("extents", "shard", "stored")

    def __init__(self) -> None:
        self.extents: dict[bytes, set[int]] = {}  # extent id -> sampled fingerprints
        self.shard: set[int] = set()  # sampled fingerprints of every page the shard stored
        self.stored = 0  # pages stored (puts, re-stores included)


class HotExtents:
    def __init__(self, capacity: int = 256, window_pages: int = 1 << 14, limit: int = 512,
                 extent_sample: int = 8, shard_sample: int = 64) -> None:
        if min(capacity, window_pages, limit, extent_sample, shard_sample) < 1:
            raise ValueError("capacity, window_pages, limit and the sample rates must be >= 1")
        self._capacity = capacity
        self._window_pages = window_pages
        self._limit = limit
        self._extent_sample = extent_sample
        self._shard_sample = shard_sample
        self._current = _Window()
        self._previous: _Window | None = None

    def add(self, keys: Iterable[bytes]) -> None:
        """Count pages just stored (encoded page keys); malformed keys are skipped."""
        window = self._current
        for key in keys:
            if not page_key.is_page_key(key):
                continue
            fingerprint = int.from_bytes(key[_PAGE_HASH_AT:_PAGE_HASH_AT + 8], "little")
            if fingerprint % self._shard_sample == 0 and len(window.shard) < 4 * self._limit:
                window.shard.add(fingerprint)
            extent = key[_EXTENT_AT:page_key.EXTENT_PREFIX_BYTES]
            extents = window.extents
            pages = extents.get(extent)
            if pages is None:
                if len(extents) >= self._capacity:
                    del extents[min(extents, key=lambda other: len(extents[other]))]
                pages = extents[extent] = set()
            if fingerprint % self._extent_sample == 0 and len(pages) < self._limit:
                pages.add(fingerprint)
            window.stored += 1
            if window.stored >= self._window_pages:
                self._previous, self._current = window, _Window()
                window = self._current

    def distinct_pages(self, extent: bytes) -> int:
        """Estimated distinct pages under `extent` in the current or the previous window."""
        windows = [self._current] + ([self._previous] if self._previous else [])
        return max(len(window.extents.get(extent, ())) for window in windows) * self._extent_sample

    def hot(self, threshold_pages: int, min_share: float = 0.0) -> list[bytes]:
        """Extent ids (16 B) with more than `threshold_pages` distinct pages, and at least
        `min_share` of the shard's distinct pages, in the previous window or in the current one
        once half full; most pages first."""
        found: dict[bytes, int] = {}
        windows = [window for window in (self._previous, self._current)
                   if window is not None and (window is self._previous or window.stored >= self._window_pages // 2)]
        for window in windows:
            shard_pages = len(window.shard) * self._shard_sample
            floor = max(threshold_pages + 1, min_share * shard_pages)
            for extent, pages in window.extents.items():
                estimate = len(pages) * self._extent_sample
                if estimate >= floor:
                    found[extent] = max(found.get(extent, 0), estimate)
        return [extent for extent, _ in sorted(found.items(), key=lambda item: (-item[1], item[0]))]
