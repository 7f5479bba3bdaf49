"""The resident set: 64-bit digests of every live page key, in about 9 bytes of RAM per page.

Owned here: `DigestSet`, what ShardStore keeps so that probes and a put's duplicate check never
touch RocksDB. A Python set of ints costs about 70 bytes per page (a 36-byte int object and a hash
slot); a shard of 100 million pages would need 7 GB for it. This one is laid out as a small LSM of
its own: a sorted numpy uint64 array (the base, 8 bytes per digest) plus two small Python sets of
recent changes (`added`, `removed`), merged into a new base when they pass 1/16 of it (and at least
65,536), so the deltas cost under 5 bytes per page amortised and a merge is O(n) numpy work every
n/16 changes. Membership: the delta sets first, then one vectorised binary search per batch
(`contains_many`). Snapshots (`sorted_array`) let a clean reopen load the set instead of rebuilding
it from the index (raylsm.store.recovery).

NOTE: measured with 500,000 512-byte pages (a scale script, before `raylsm bench memory` existed):
with the Python set a reopened store held 87 bytes of RSS per page (RocksDB's fixed buffers
included); with this set `raylsm bench memory` (2 million pages) measures 12-13 (docs/memory.md).

Not thread-safe: ShardStore calls it under its write lock, or reads it from probe threads where a
stale answer is harmless (a miss, or a duplicate put the store skips).
"""

from __future__ import annotations

import operator
from typing import Iterable, Sequence

import numpy as np

_MIN_MERGE = 1 << 16


class DigestSet:
    def __init__(self, base: np.ndarray | None = None, min_merge: int = _MIN_MERGE) -> None:
        """`base`: sorted, unique uint64 digests (e.g. a snapshot); empty if None. Pending changes
        are merged when they pass max(`min_merge`, 1/16 of the base)."""
        self._min_merge = min_merge
        self._base = np.zeros(0, dtype=np.uint64) if base is None else np.ascontiguousarray(base, dtype=np.uint64)
        self._added: set[int] = set()
        self._removed: set[int] = set()

    @classmethod
    def from_digests(cls, digests: np.ndarray) -> "DigestSet":
        """A set holding `digests` (uint64, any order, duplicates allowed).
        NOTE: np.unique took 0.97 s for a million uint64 with numpy 2.4 on this 2-core VM (half of a
        scanning open); np.sort and a neighbour compare take 0.018 s."""
        ordered = np.sort(np.asarray(digests, dtype=np.uint64))
        if len(ordered) > 1:
            ordered = ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]
        return cls(ordered)

    def __len__(self) -> int:
        """Digests held (exact after `merge`; may count a re-added base digest twice before)."""
        return len(self._base) - len(self._removed) + len(self._added)

    def _in_base(self, digest: int) -> bool:
        base = self._base
        at = int(np.searchsorted(base, np.uint64(digest)))
        return at < len(base) and int(base[at]) == digest

    def __contains__(self, digest: int) -> bool:
        if digest in self._added:
            return True
        if digest in self._removed:
            return False
        return self._in_base(digest)

    def contains_many(self, digests: Sequence[int]) -> list[bool]:
        """Membership of each digest, with one binary search over the base for the whole batch."""
        if not digests:
            return []
        found = self._base_hits(digests) if len(self._base) else [False] * len(digests)
        added, removed = self._added, self._removed
        # (C-level maps: a Python step per digest cost a quarter of a 128-key probe)
        if removed:
            found = list(map(operator.and_, found, map(operator.not_, map(removed.__contains__, digests))))
        if added:
            found = list(map(operator.or_, found, map(added.__contains__, digests)))
        return found

    def add(self, digest: int) -> None:
        self.update((digest,))

    def update(self, digests: Iterable[int]) -> None:
        """Add digests of newly stored keys. One already in the base (only possible if it was never
        removed) is kept in `added` too until the next merge; membership stays exact."""
        removed, added = self._removed, self._added
        for digest in digests:
            if digest in removed:
                removed.discard(digest)  # back into the base it never left
            else:
                added.add(digest)
        self._maybe_merge()

    def discard(self, digest: int) -> None:
        self.discard_many((digest,))

    def discard_many(self, digests: Sequence[int]) -> None:
        """Remove digests (absent ones are ignored), with one binary search over the base for the
        whole batch (an eviction forgets a segment's pages at once)."""
        # A digest can be in `added` and the base at once (a live page written again: a reinsertion
        # re-appends it); it must leave both.
        # NOTE: before, one found in `added` left only `added`: every reinserted page evicted later
        # stayed resident (probes answered it present, gets missed, its re-put was skipped as
        # present) until an open rebuilt the set from the index.
        added = self._added
        for digest in digests:
            added.discard(digest)
        if digests and len(self._base):
            self._removed.update(digest for digest, hit in zip(digests, self._base_hits(digests)) if hit)
            self._maybe_merge()

    def _base_hits(self, digests: Sequence[int]) -> list[bool]:
        base = self._base
        wanted = np.fromiter(digests, dtype=np.uint64, count=len(digests))
        at = np.searchsorted(base, wanted)
        return (base[np.minimum(at, len(base) - 1)] == wanted).tolist()

    def clear(self) -> None:
        self._base = np.zeros(0, dtype=np.uint64)
        self._added.clear()
        self._removed.clear()

    def _maybe_merge(self) -> None:
        if len(self._added) + len(self._removed) > max(self._min_merge, len(self._base) >> 4):
            self.merge()

    def merge(self) -> None:
        """Fold the recent changes into a new sorted base."""
        # NOTE: O(n) in the base plus a sort of the (n/16) changes: positions by binary search, then
        # one np.delete and one np.insert pass. np.isin and np.union1d sort the whole base again
        # (O(n log n)) and this runs under the store's write lock: 20 million digests with 1.25
        # million changes merged in 1.2 s against 32 s (a one-off script; docs/memory.md).
        base = self._base
        if self._removed:
            removed = np.sort(np.fromiter(self._removed, dtype=np.uint64, count=len(self._removed)))
            at = np.searchsorted(base, removed)
            inside = at < len(base)
            at = at[inside]
            base = np.delete(base, at[base[at] == removed[inside]])
        if self._added:
            added = np.sort(np.fromiter(self._added, dtype=np.uint64, count=len(self._added)))
            at = np.searchsorted(base, added)
            fresh = (at >= len(base)) | (base[np.minimum(at, len(base) - 1)] != added) if len(base) else \
                np.ones(len(added), dtype=bool)
            base = np.insert(base, at[fresh], added[fresh])
        self._base = np.ascontiguousarray(base, dtype=np.uint64)
        self._added.clear()
        self._removed.clear()

    def sorted_array(self) -> np.ndarray:
        """Every digest, sorted and unique (merges first)."""
        self.merge()
        return self._base

    def nbytes(self) -> int:
        """Approximate RAM held: the base, and about 70 bytes per pending change."""
        return int(self._base.nbytes) + 70 * (len(self._added) + len(self._removed))
