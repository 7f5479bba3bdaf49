"""Workload statistics a shard keeps for the controller (issue 10, section 1): a miss-ratio curve
from sampled reuse distances, ghost hits, and hits by prefix depth and by age since write.

Owned here: `WorkloadStats`. ShardStore calls `asked` from its probes (SGLang's batch_exists: the
keys it asks, in chain order, and how many lead present; with the digests the probe computed),
`written` from its puts (by the digests the put computed) and `evicted`
from its evictions, and `snapshot` from `stats()`. Thread-safe: one short lock per call. Imports no
Ray, SGLang or torch.

Reuse distances (Mattson et al. 1970's LRU stack distance: the distinct pages referenced between two
references to one page) are sampled spatially as SHARDS does (Waldspurger et al., "Efficient MRC
Construction with SHARDS", FAST 2015): a page is tracked iff its key digest mod 2**24 is below
rate x 2**24, so every reference to a tracked page is seen, and a distance between tracked pages
divided by the rate estimates the distance over all pages. Distances are counted in a Fenwick tree
over reference times, and converted to bytes with the mean size of the pages put. The curve counts
a request's page references as SGLang makes them: asks (the probed pages up to and including the
first absent one: SGLang loads a prefix and stops at its first miss) and writes of absent pages
(the pages it missed, written back; the first miss once). A write of a present page only refreshes
it. `mrc` is the miss ratio of those references under LRU with write-all admission at each cache
size: what `raylsm.bench.cache_models.simulate_lru` traces, page by page (a shard sees only its part
of a chain, so a page past a miss in a larger cache counts as a hit here: the curve is optimistic).

Ghost hits: asks that missed a tracked page this store evicted (scaled by 1/rate): what more
capacity or a better eviction order would have served. Hits by depth (pages, in powers of two) and
by age since the page's last write (seconds) are counted over tracked pages too.

Cost: a modulus per asked or written page (the store hashes each key once per call, for its
resident set and for these); per tracked reference a dict lookup
and two Fenwick updates (O(log n) Python steps). At the default rate of 1/64 a shard tracks about
64 thousand pages per 4 million it references, in a few MB.
NOTE: `asked` for a probe of 128 present pages (one of them tracked) took 17.5 us with a numpy
search per distance, 14.3 us with bisect; computing the 128 digests costs 10 us, now shared with the
resident set (they were computed twice). A whole probe of 128 present pages (test store, 2 cores,
noisy): 40-47 us without the statistics, 62-77 us at 1/64.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import OrderedDict
from typing import Sequence

import numpy as np

from raylsm.store import page_key
from raylsm.store.mini_sims import MODULUS, MiniSims
from raylsm.store.page_key import key_digests

# Reuse-distance histogram edges, in pages (scaled): 2**(k/2), 1 page to 2**40 pages.
DISTANCE_EDGES = np.array([2.0 ** (k / 2) for k in range(81)])
_EDGES = DISTANCE_EDGES.tolist()  # (bisect on a list: np.searchsorted costs microseconds per scalar)
DEPTH_EDGES = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # pages; the last bucket is open
AGE_EDGES_S = (0, 1, 10, 60, 600, 3600, 86400)  # seconds; the last bucket is open
RECENT_MISSES = 4096  # probes' first misses remembered until their write (all pages, not only tracked)
MODELS_ASKED = 1 << 16  # the models' sampled asks past a probe's first miss, remembered until their write
_ABSENT = object()
CAPACITY_MULTIPLES = (0.25, 0.5, 1, 2, 4)  # where the curve is read for metrics and `raylsm status`


class _Fenwick:
    """Counts by position with prefix sums, O(log n) each (a binary indexed tree)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._tree = [0] * (size + 1)

    def add(self, position: int, delta: int) -> None:
        index = position + 1
        tree = self._tree
        while index <= self.size:
            tree[index] += delta
            index += index & -index

    def prefix(self, position: int) -> int:
        """Sum over positions 0..position."""
        index = position + 1
        tree = self._tree
        total = 0
        while index > 0:
            total += tree[index]
            index -= index & -index
        return total


class WorkloadStats:
    def __init__(self, sample_rate: float = 1 / 64, max_tracked: int = 1 << 16,
                 sims: MiniSims | None = None) -> None:
        """`sample_rate`: the fraction of pages tracked, in (0, 1]; `max_tracked`: tracked pages kept
        (the least recently referenced beyond it are forgotten: a later reference counts as cold);
        `sims`: miniature simulations, fed every key a probe asks and every put page no probe just
        asked (raylsm.store.mini_sims), of their own, larger sample."""
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        if max_tracked < 1:
            raise ValueError(f"max_tracked must be >= 1, got {max_tracked!r}")
        self.sample_rate = sample_rate
        self._threshold = max(1, round(sample_rate * MODULUS))
        self._max_tracked = max_tracked
        self._lock = threading.Lock()
        self._time: dict[int, int] = {}  # tracked digest -> its last reference's slot in the tree
        self._written_at: dict[int, float] = {}  # tracked digest -> wall time of its last write
        self._ghost: OrderedDict[int, None] = OrderedDict()  # tracked digests evicted, oldest first
        self._tree = _Fenwick(2 * max_tracked)
        self._clock = 0
        # references by scaled distance: [0] below the first edge, [k + 1] from edge k to edge k + 1
        self._distances = np.zeros(len(DISTANCE_EDGES) + 1, dtype=np.int64)
        self._cold = 0  # references of tracked pages never referenced before (or forgotten)
        self._refs = 0  # references of tracked pages the curve counts (asks, and writes of absent pages)
        self._refs_all = 0  # the same of any page
        self._hits = 0  # of them present
        self._recent_misses: OrderedDict[int, None] = OrderedDict()  # digests of probes' first misses
        self._models_asked: OrderedDict[int, None] = OrderedDict()  # models' sampled asks awaiting their write
        self._ghost_hits = 0
        self._by_depth = [0] * len(DEPTH_EDGES)
        self._by_age = [0] * len(AGE_EDGES_S)
        self._written_pages = 0
        self._written_bytes = 0
        self._cached: tuple[float, int | None, dict] | None = None  # (monotonic time, capacity, snapshot)
        self.sims = sims

    # ---- what the store reports ---------------------------------------------------------------

    def asked(self, keys: Sequence[bytes], present: int, digests: Sequence[int] | None = None) -> None:
        """A probe of `keys` (chain order) whose first `present` were present: the curve's asks are
        those and the first absent one. The models see every key, not only those up to this store's
        first miss: a model holding pages this store lacks then sees the chain as SGLang would have
        asked it under that model's policy (each model stops at its own first miss). `digests`: the
        keys' key_digests, if the caller has them."""
        if digests is None:
            digests = key_digests(keys)
        asked = keys[:present + 1]
        missed = digests[present] if present < len(keys) else None
        sims = self.sims
        sim_threshold = sims.threshold if sims is not None else 0
        # One vectorised modulus for the batch (a Python step per key was a fifth of a 128-key probe).
        residues = np.fromiter(digests, dtype=np.uint64, count=len(digests)) % np.uint64(MODULUS)
        modelled = np.flatnonzero(residues < sim_threshold).tolist() if sim_threshold else []
        with self._lock:
            self._refs_all += len(asked)
            if missed is not None:  # its write follows (SGLang writes what it missed): one reference
                _remember(self._recent_misses, (missed,), RECENT_MISSES)
            # The models' asks from the first miss on: their write follows, no second reference.
            _remember(self._models_asked, [digests[index] for index in modelled if index >= present], MODELS_ASKED)
        if modelled:
            sims.record(sims.sample([keys[index] for index in modelled], [digests[index] for index in modelled]))
        chosen = np.flatnonzero(residues[:len(asked)] < self._threshold).tolist()
        tracked = [(index, digests[index]) for index in chosen]
        if not tracked:
            return
        now = time.time()
        with self._lock:
            for index, digest in tracked:
                self._count(self._reference(digest))
                if index < present:
                    self._hits += 1
                    depth = page_key.decode(asked[index]).depth
                    self._by_depth[_bucket(DEPTH_EDGES, depth)] += 1
                    written = self._written_at.get(digest)
                    if written is not None:
                        self._by_age[_bucket(AGE_EDGES_S, now - written)] += 1
                elif digest in self._ghost:
                    self._ghost_hits += 1
                    del self._ghost[digest]

    def written(self, digests: Sequence[int], sizes: Sequence[int], stored: Sequence[bool],
                keys: Sequence[bytes] | None = None) -> None:
        """Pages a put was offered, by key_digest, with their sizes in bytes; `stored`: absent before,
        written now or declined by admission (a miss of the curve unless it was the probe's first
        miss, counted there), or already present (a refresh, not counted by the curve). `keys`: the
        pages' keys, in chain order (the miniature simulations sample by extent; without them they
        see no writes). The models count every page no probe just asked, present here or not (a
        page this store holds past its first miss is one a model may lack)."""
        now = time.time()
        sims = self.sims
        modelled = []
        with self._lock:
            self._written_pages += len(sizes)
            self._written_bytes += int(sum(sizes))
            if sims is not None and not sims.threshold and sizes:
                sims.start(int(sizes[0]))
            sim_threshold = sims.threshold if sims is not None and keys is not None else 0
            models_asked = self._models_asked
            for slot, (digest, new) in enumerate(zip(digests, stored)):
                residue = digest % MODULUS
                if residue < sim_threshold and models_asked.pop(digest, _ABSENT) is _ABSENT:
                    modelled.append(slot)
                just_asked = self._recent_misses.pop(digest, _ABSENT) is not _ABSENT
                counted = bool(new) and not just_asked
                self._refs_all += counted
                if residue >= self._threshold:
                    continue
                distance = self._reference(digest)
                if counted:
                    self._count(distance)
                self._written_at[digest] = now
                self._ghost.pop(digest, None)
        if modelled:
            sims.record(sims.sample([keys[slot] for slot in modelled], [digests[slot] for slot in modelled]))

    def evicted(self, keys: Sequence[bytes]) -> None:
        """Pages an eviction dropped (not those it re-appended)."""
        tracked = [digest for digest in key_digests(keys) if digest % MODULUS < self._threshold]
        if not tracked:
            return
        with self._lock:
            for digest in tracked:
                self._ghost[digest] = None
            while len(self._ghost) > self._max_tracked:
                self._ghost.popitem(last=False)

    # ---- what the controller reads ------------------------------------------------------------

    def snapshot(self, capacity_bytes: int | None = None, max_age_s: float = 0.0) -> dict:
        """Scaled figures since the store opened. `mrc`: [cache_bytes, miss_ratio] at each distance
        edge (pages times the mean page size), from 1 page up to 64x `capacity_bytes` when given;
        `miss_ratio_at_capacity` interpolates the curve there, `miss_ratio_by_capacity_multiple` at
        CAPACITY_MULTIPLES of it. Counts of tracked references are scaled
        by 1/rate ("_est" fields). Empty curve before the first ask. `max_age_s`: a snapshot of the
        same capacity taken at most this long ago is returned again (it costs ~150 us)."""
        cached = self._cached
        if cached is not None and cached[1] == capacity_bytes and time.monotonic() - cached[0] <= max_age_s:
            return cached[2]
        snapshot = self._snapshot(capacity_bytes)
        self._cached = (time.monotonic(), capacity_bytes, snapshot)
        return snapshot

    def _snapshot(self, capacity_bytes: int | None) -> dict:
        with self._lock:
            distances = self._distances.copy()
            refs, cold, hits, refs_all = self._refs, self._cold, self._hits, self._refs_all
            ghost_hits, by_depth, by_age = self._ghost_hits, list(self._by_depth), list(self._by_age)
            page_bytes = self._written_bytes / self._written_pages if self._written_pages else 0.0
            tracked = len(self._time)
        scale = 1 / self.sample_rate
        curve: list[list[float]] = []
        at_capacity = None
        by_multiple: dict[str, float] = {}
        if refs:
            # SHARDS_adj (the paper, section 4.2): a hot page in or out of the sample moves the tracked
            # references far from rate x all references; the difference is credited to the shortest
            # distances.
            expected = max(refs_all * self.sample_rate, 1e-9)
            misses_from = cold + np.cumsum(distances[::-1])[::-1][1:]  # references at distance >= edge k
            misses_from = np.minimum(misses_from, expected) / expected
            limit_pages = math.inf
            if capacity_bytes and page_bytes:
                limit_pages = 64 * capacity_bytes / page_bytes
                at_capacity = _interpolate(DISTANCE_EDGES, misses_from, capacity_bytes / page_bytes)
                by_multiple = {str(multiple): round(_interpolate(DISTANCE_EDGES, misses_from,
                                                                 multiple * capacity_bytes / page_bytes), 4)
                               for multiple in CAPACITY_MULTIPLES}
            for edge, misses in zip(DISTANCE_EDGES, misses_from):
                if edge > limit_pages:
                    break
                curve.append([round(edge * page_bytes), round(float(misses), 4)])
        return {
            "sample_rate": self.sample_rate,
            "tracked_pages": tracked,
            "references_sampled": refs,
            "references": refs_all,
            "hit_ratio": round(hits / refs, 4) if refs else None,
            "ghost_hits_est": round(ghost_hits * scale),
            "mean_page_bytes": round(page_bytes),
            "mrc": curve,
            "miss_ratio_at_capacity": None if at_capacity is None else round(at_capacity, 4),
            "miss_ratio_by_capacity_multiple": by_multiple,
            "hits_by_depth_pages": {_label(DEPTH_EDGES, i): round(n * scale) for i, n in enumerate(by_depth)},
            "hits_by_age_s": {_label(AGE_EDGES_S, i): round(n * scale) for i, n in enumerate(by_age)},
        }

    # ---- the stack ----------------------------------------------------------------------------

    def _count(self, distance: int | None) -> None:
        """A reference the curve counts, at its stack distance (None: cold). Caller holds the lock."""
        self._refs += 1
        if distance is None:
            self._cold += 1
        else:
            self._distances[bisect.bisect_right(_EDGES, distance / self.sample_rate)] += 1

    def _reference(self, digest: int) -> int | None:
        """Record a reference to a tracked page now; its stack distance in tracked pages (distinct
        tracked pages referenced since its last reference), or None if never seen. Caller holds the
        lock."""
        previous = self._time.get(digest)
        distance = None
        if previous is not None:
            distance = len(self._time) - self._tree.prefix(previous)
            self._tree.add(previous, -1)
            del self._time[digest]
        if self._clock == self._tree.size:
            self._compact()
        self._time[digest] = self._clock
        self._tree.add(self._clock, 1)
        self._clock += 1
        return distance

    def _compact(self) -> None:
        """Renumber the tracked pages' reference times 0..n-1, keeping the `max_tracked` most recent
        (the rest are forgotten), and rebuild the tree."""
        recent = sorted(self._time.items(), key=lambda item: item[1])[-self._max_tracked:]
        forgotten = len(self._time) - len(recent)
        if forgotten:
            keep = {digest for digest, _ in recent}
            self._written_at = {digest: at for digest, at in self._written_at.items() if digest in keep}
        self._time = {digest: slot for slot, (digest, _) in enumerate(recent)}
        self._tree = _Fenwick(self._tree.size)
        for slot in range(len(recent)):
            self._tree.add(slot, 1)
        self._clock = len(recent)


def _bucket(edges: Sequence[float], value: float) -> int:
    for index in range(len(edges) - 1, -1, -1):
        if value >= edges[index]:
            return index
    return 0


def _label(edges: Sequence[float], index: int) -> str:
    return f"{edges[index]}+" if index == len(edges) - 1 else f"{edges[index]}-{edges[index + 1]}"


def _interpolate(edges: np.ndarray, values: np.ndarray, x: float) -> float:
    """values at x, linear in log(edge) between edges (clamped at the ends)."""
    if x <= edges[0]:
        return float(values[0])
    if x >= edges[-1]:
        return float(values[-1])
    return float(np.interp(math.log(x), np.log(edges), values))


def _remember(entries: OrderedDict, digests: Sequence[int], limit: int) -> None:
    """Add `digests` to a bounded set (an OrderedDict of None), dropping the oldest beyond `limit`."""
    for digest in digests:
        entries[digest] = None
    while len(entries) > limit:
        entries.popitem(last=False)
