"""LiveSpace: the pages and bytes the index references, per segment, of one ShardStore.

Owned here: the counts that `stats()` reports as live and that the open snapshot saves. Called by
ShardStore and its reclaimer under the store's write lock; not thread-safe by itself.
"""

from __future__ import annotations


class LiveSpace:
    """Pages and bytes referenced by the index, per segment (caller holds the write lock)."""

    def __init__(self, live_bytes: dict[int, int], live_pages: dict[int, int]):
        self._bytes = dict(live_bytes)
        self._pages = dict(live_pages)

    def add(self, segment_id: int, pages: int, nbytes: int) -> None:
        self._bytes[segment_id] = self._bytes.get(segment_id, 0) + nbytes
        self._pages[segment_id] = self._pages.get(segment_id, 0) + pages

    def remove(self, segment_id: int, nbytes: int) -> None:
        if segment_id in self._bytes:
            self._bytes[segment_id] -= nbytes
            self._pages[segment_id] -= 1

    def drop(self, segment_id: int) -> None:
        self._bytes.pop(segment_id, None)
        self._pages.pop(segment_id, None)

    def totals(self) -> tuple[int, int]:
        return sum(self._bytes.values()), sum(self._pages.values())

    def per_segment(self, segment_ids) -> tuple[dict[int, int], dict[int, int]]:
        """Live bytes and pages of each of `segment_ids` (0 for one without live pages)."""
        return ({segment_id: self._bytes.get(segment_id, 0) for segment_id in segment_ids},
                {segment_id: self._pages.get(segment_id, 0) for segment_id in segment_ids})
