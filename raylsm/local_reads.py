"""The tier client's same-node fast path: pointers kept from `exists`, and reads of a shard's segment
files that never outlive their deadline.

`LocatedPointers` keeps the pointers that `exists` got from same-node shards for the get that HiCache
issues next (so that get makes no call to the shard). `BoundedLocalReader` reads those pages from
the SSD with a deadline: the reads run on a small pool and land in staging buffers, verified there,
and the caller copies the verified pages into its own buffers only if they arrived in time. A read
that passes the deadline is abandoned (its pages are misses; the shard is marked stalled): when the
disk finally answers, its bytes go into a staging buffer nobody reads, never into host-pool memory
that SGLang has meanwhile given to another page.
NOTE: staging costs one memcpy per page on the fast path (np.copyto); in place, an abandoned read
would write a stale page into a reused host slot whenever a hung disk recovered. Measured (/tmp
micro-benchmark: 24 cold batches of 128 x 256 KiB from one store, page cache dropped, four paired
runs): LocalSegmentReader in place 1.03-1.14 GB/s (mean 1.10), staged in 4 MiB groups, three in
flight, 0.95-1.09 GB/s (mean 1.02): about 7% of the fast path's throughput. `raylsm bench tier`:
tier_fast 68% and 70% of store_direct in two runs (75-85% before, in place; the same VM swings
10 points run to run).

Called by TierClient from SGLang's prefetch and prefetch-I/O threads; thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Sequence

import numpy as np

from raylsm.shard_health import ShardHealth
from raylsm.store import format as fmt
from raylsm.store.io_buffers import aligned_empty
from raylsm.store.local_reader import LocalSegmentReader
from raylsm.store.page_reader import ReadOutcome, writable_parts


class LocatedPointers:
    """Pointers that `exists` got from same-node shards, kept briefly for the get that follows.

    Keyed by store key; each entry remembers the shard, its segments directory and low watermark,
    and when it expires. Bounded (oldest out first). Thread-safe.
    """

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._entries: OrderedDict[bytes, tuple[float, str, str, int, fmt.Pointer]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._ttl_s > 0

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    def add(self, shard: str, keys: Sequence[bytes], segments_dir: str, low_watermark: int,
            pointers: Sequence[fmt.Pointer]) -> None:
        expires = time.monotonic() + self._ttl_s
        entries = self._entries
        with self._lock:
            for key, pointer in zip(keys, pointers):
                entries[key] = (expires, shard, segments_dir, low_watermark, pointer)
                entries.move_to_end(key)
            while len(entries) > self._max_entries:
                entries.popitem(last=False)

    def take(self, shard: str, keys: Sequence[bytes]) -> tuple[str, int, list[fmt.Pointer]] | None:
        """(segments dir, low watermark, pointers) if every key has a fresh entry of `shard`; the
        entries are removed. None (nothing removed) otherwise."""
        now = time.monotonic()
        with self._lock:
            found = [self._entries.get(key) for key in keys]
            if any(entry is None or entry[0] < now or entry[1] != shard for entry in found):
                return None
            for key in keys:
                self._entries.pop(key, None)
        return found[0][2], max(entry[3] for entry in found), [entry[4] for entry in found]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class BoundedLocalReader:
    """Verified same-node reads into the caller's page parts, bounded by a deadline."""

    def __init__(self, reader: LocalSegmentReader, health: ShardHealth, staging_bytes: int = 4 << 20,
                 threads: int = 3, spare_buffers: int = 6) -> None:
        self._reader = reader
        self._health = health
        self._staging_bytes = staging_bytes
        self._spare_buffers = spare_buffers
        self._depth = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="raylsm-local-read")
        self._spares: list[np.ndarray] = []
        self._lock = threading.Lock()

    def read_into(self, shard: str, segments_dir: str, pointers: Sequence[fmt.Pointer | None],
                  page_parts: Sequence[Any], deadline: float) -> tuple[ReadOutcome, bool]:
        """Fill page_parts[i] from pointers[i] (None = absent) by `deadline` (time.monotonic()).
        Returns (outcome, timed_out); `outcome.results[i]` is True per verified page copied in
        time, `failed_slots` are pages whose bytes failed their checksum or read."""
        outcome = ReadOutcome(results=[False] * len(pointers))
        wanted = []
        parts_of: dict[int, tuple[memoryview, ...]] = {}  # the caller's buffers, checked once
        for slot, pointer in enumerate(pointers):
            parts = writable_parts(page_parts[slot], pointer.length) if pointer is not None else None
            if parts is not None:
                wanted.append((slot, pointer))
                parts_of[slot] = parts
        wanted.sort(key=lambda item: (item[1].segment_id, item[1].offset))
        groups = deque(self._groups(wanted))
        running: deque[tuple[list, Future]] = deque()
        for _ in range(self._depth):  # groups in flight: some are read while another is copied
            self._submit_next(groups, running, segments_dir)
        while running:
            group, future = running.popleft()
            try:
                group_outcome, staging, views = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                for abandoned in [future, *(queued for _, queued in running)]:
                    if abandoned.cancel():
                        continue  # never started
                    self._health.local_read_abandoned(shard)
                    abandoned.add_done_callback(lambda done: self._abandoned_done(shard, done))
                return outcome, True
            self._submit_next(groups, running, segments_dir)
            self._merge(outcome, group, group_outcome, views, parts_of)
            self._release(staging)
        return outcome, False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _groups(self, wanted: list) -> list[list]:
        groups, current, nbytes = [], [], 0
        for slot, pointer in wanted:
            size = fmt.align_up(pointer.length)
            if current and nbytes + size > self._staging_bytes:
                groups.append(current)
                current, nbytes = [], 0
            current.append((slot, pointer))
            nbytes += size
        if current:
            groups.append(current)
        return groups

    def _submit_next(self, groups: deque, running: deque, segments_dir: str) -> None:
        if groups:
            group = groups.popleft()
            running.append((group, self._pool.submit(self._read_group, segments_dir, group)))

    def _read_group(self, segments_dir: str, group: list) -> tuple[ReadOutcome, np.ndarray, list[np.ndarray]]:
        """Runs on a pool thread: read and verify one group into a staging buffer."""
        sizes = [fmt.align_up(pointer.length) for _, pointer in group]
        staging = self._take(sum(sizes))
        views, offset = [], 0
        for (_, pointer), size in zip(group, sizes):
            views.append(staging[offset:offset + pointer.length])
            offset += size
        return self._reader.read_into(segments_dir, [pointer for _, pointer in group], views), staging, views

    def _merge(self, outcome: ReadOutcome, group: list, group_outcome: ReadOutcome, views: list,
               parts_of: dict[int, tuple[memoryview, ...]]) -> None:
        """Copy a group's verified pages from staging into the caller's parts; merge its counts."""
        for index, ((slot, _), hit) in enumerate(zip(group, group_outcome.results)):
            if not hit:
                continue
            source, offset = views[index], 0
            for part in parts_of[slot]:
                np.copyto(np.frombuffer(part, dtype=np.uint8), source[offset:offset + part.nbytes])
                offset += part.nbytes
            outcome.results[slot] = True
        outcome.hit_bytes += group_outcome.hit_bytes
        outcome.stale += group_outcome.stale
        outcome.corrupt += group_outcome.corrupt
        outcome.io_errors += group_outcome.io_errors
        outcome.failed_slots.extend(group[index][0] for index in group_outcome.failed_slots)
        for segment_id, offsets in group_outcome.hit_offsets.items():
            outcome.hit_offsets.setdefault(segment_id, []).extend(offsets)

    def _abandoned_done(self, shard: str, future: Future) -> None:
        self._health.local_read_finished(shard)
        if not future.cancelled() and future.exception() is None:
            self._release(future.result()[1])

    def _take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            for index, spare in enumerate(self._spares):
                if spare.nbytes >= nbytes:
                    return self._spares.pop(index)
        return aligned_empty(max(nbytes, self._staging_bytes))

    def _release(self, staging: np.ndarray) -> None:
        with self._lock:
            if len(self._spares) < self._spare_buffers:
                self._spares.append(staging)
