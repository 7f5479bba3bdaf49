"""Which extents receive the most distinct pages: a bounded heavy-hitter sketch over a shard's puts.

Owned here: `HotExtents`, a Misra-Gries summary (Misra and Gries, "Finding repeated elements",
Science of Computer Programming 2(2), 1982) of the pages a shard newly stored, by extent id, halved
every `window_pages` pages so that it follows the workload. A regular extent holds at most
`extent_pages` pages of any one chain; one that received many more has many chains diverging inside
it (a hot shared prefix that ends mid-extent), all written to this shard. The controller asks every
shard for these (`ShardActor.hot_extents`) and splits them (raylsm.router.page_anchors,
docs/placement.md). Called by the shard actor after each put; not thread-safe (the actor holds a
lock around it). Imports no Ray.

Cost: at most `capacity` counters (extent id, 16 B, and an int), one dict update per stored page.
Guarantee (Misra-Gries): an extent's count undercounts its pages in the window by at most
window_pages / capacity, so an extent over the threshold by more than that is always reported.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from raylsm.store import page_key


class HotExtents:
    def __init__(self, capacity: int = 256, window_pages: int = 1 << 16) -> None:
        if capacity < 1 or window_pages < 1:
            raise ValueError(f"capacity and window_pages must be >= 1, got {capacity} and {window_pages}")
        self._capacity = capacity
        self._window_pages = window_pages
        self._counts: Counter[bytes] = Counter()
        self._since_decay = 0

    def add(self, keys: Iterable[bytes]) -> None:
        """Count pages just stored (encoded page keys); malformed keys are skipped."""
        for key in keys:
            if not page_key.is_page_key(key):
                continue
            extent = page_key.extent_prefix(key)[1 + page_key.NAMESPACE_ID_BYTES:]
            counts = self._counts
            if extent in counts or len(counts) < self._capacity:
                counts[extent] += 1
            else:  # Misra-Gries: one decrement for every tracked extent, dropping those at zero
                for other in list(counts):
                    counts[other] -= 1
                    if counts[other] <= 0:
                        del counts[other]
            self._since_decay += 1
            if self._since_decay >= self._window_pages:
                self._decay()

    def _decay(self) -> None:
        self._since_decay = 0
        for extent in list(self._counts):
            self._counts[extent] //= 2
            if self._counts[extent] <= 0:
                del self._counts[extent]

    def hot(self, threshold_pages: int) -> list[bytes]:
        """Extent ids (16 B) counted above `threshold_pages`, hottest first."""
        return [extent for extent, count in self._counts.most_common() if count > threshold_pages]

    def counts(self) -> dict[bytes, int]:
        return dict(self._counts)
