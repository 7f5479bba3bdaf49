"""Which extents many chains diverge inside: a bounded count of distinct pages per extent over a
shard's recent puts.

Owned here: `HotExtents`. A regular extent holds at most `extent_pages` pages of any one chain (one
page per depth); one that holds many more distinct pages has several chains diverging inside it (a
hot shared prefix that ends mid-extent), and all of them are written to this shard. The controller
asks every shard for these (`ShardActor.hot_extents`) and splits them (raylsm.router.page_anchors,
docs/placement.md). Called by the shard actor after each put; not thread-safe (the actor holds a
lock around it). Imports no Ray.

Counting distinct pages, not puts: a small cache evicts and re-stores one chain's pages many times
(a first version counted puts and split 248 extents of the agentic workload at 8 shards, nearly all
single chains stored again). Each tracked extent keeps the fingerprints (8 bytes of the page hash) of
its pages, up to `limit` of them; namespaces share fingerprints, so TP ranks' copies count once.

Only extents that matter for balance are reported: besides the distinct-page threshold, an extent
must take at least `min_share` of a window's pages (the previous window: of the pages it held). NOTE: measured on the
generator's workloads at 8 shards, capacity 0.05 (first-seen distinct pages over the whole run): the
agentic workload's hot extents hold 1,845 to 19,148 pages against 12,483 per shard (15% to 150%);
the conversation trace's largest shared extent 666 against 42,010 (1.6%, and under 1% of the pages
stored, re-stores counted). Splitting the conversation trace's 21 extents above 256 pages lowered the
sharded LRU model from 0.832 to 0.814 of one shard (mean of 5 rings), splitting the agentic
workload's 7 raised it from 0.572 to 0.760: a split spreads the chains that share the extent over
more shards, which pays only where one extent is a real share of a shard.

Windows of 16,384 stored pages: 1/64 of one is 256 pages, twice a default extent, so the share and
the distinct-page threshold agree at the defaults.

Cost: at most `capacity` extents per window, two windows (the current and the previous, so an extent
is forgotten one to two windows after it cools), `limit` fingerprints each: with the defaults
(256 extents, limit 512) at most about 2 x 256 x 512 fingerprints, a few MiB in the worst case. When
the table is full a new extent replaces the one with the fewest pages (Space-Saving's rule, Metwally
et al., ICDT 2005), so an extent that is really hot is not crowded out by many cold ones.
"""

from __future__ import annotations

from typing import Iterable

from raylsm.store import page_key

_PAGE_HASH_AT = page_key.EXTENT_PREFIX_BYTES + 4
_EXTENT_AT = 1 + page_key.NAMESPACE_ID_BYTES


class HotExtents:
    def __init__(self, capacity: int = 256, window_pages: int = 1 << 14, limit: int = 512) -> None:
        if capacity < 1 or window_pages < 1 or limit < 1:
            raise ValueError(f"capacity, window_pages and limit must be >= 1, got {capacity}, {window_pages}, {limit}")
        self._capacity = capacity
        self._window_pages = window_pages
        self._limit = limit
        self._current: dict[bytes, set[bytes]] = {}
        self._previous: dict[bytes, set[bytes]] = {}
        self._in_window = 0  # pages stored in the current window
        self._previous_window = 0  # pages stored in the previous one

    def add(self, keys: Iterable[bytes]) -> None:
        """Count pages just stored (encoded page keys); malformed keys are skipped."""
        current = self._current
        for key in keys:
            if not page_key.is_page_key(key):
                continue
            extent = key[_EXTENT_AT:page_key.EXTENT_PREFIX_BYTES]
            pages = current.get(extent)
            if pages is None:
                if len(current) >= self._capacity:
                    coldest = min(current, key=lambda other: len(current[other]))
                    del current[coldest]
                pages = current[extent] = set()
            if len(pages) < self._limit:
                pages.add(key[_PAGE_HASH_AT:_PAGE_HASH_AT + 8])
            self._in_window += 1
            if self._in_window >= self._window_pages:
                self._previous, self._current = current, {}
                self._previous_window, self._in_window = self._in_window, 0
                current = self._current

    def distinct_pages(self, extent: bytes) -> int:
        """Distinct pages seen under `extent` in the current or the previous window (capped)."""
        return max(len(self._current.get(extent, ())), len(self._previous.get(extent, ())))

    def hot(self, threshold_pages: int, min_share: float = 0.0) -> list[bytes]:
        """Extent ids (16 B) with more than `threshold_pages` distinct pages, and at least
        `min_share` of all the pages this shard stored, in the current or the previous window;
        most pages first."""
        found: dict[bytes, int] = {}
        # The current window's share is taken of a whole window: early in a window a few hundred
        # pages of one extent are a large share of the little stored so far (the conversation
        # trace had 3 to 8 extents split that way at 4 and 8 shards).
        for table, stored in ((self._current, self._window_pages), (self._previous, self._previous_window)):
            # A set stops growing at `limit`: a full one meets any share (else a share above
            # limit / window could never be met; the agentic run at 4 shards split nothing so).
            floor = min(max(threshold_pages + 1, min_share * stored), self._limit)
            for extent, pages in table.items():
                if len(pages) >= floor:
                    found[extent] = max(found.get(extent, 0), len(pages))
        return [extent for extent, _ in sorted(found.items(), key=lambda item: (-item[1], item[0]))]
