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
flight, 0.95-1.09 GB/s (mean 1.02): about 7% of the fast path's throughput.
NOTE: groups are 16 MiB, not 4: this VM's disk reads 0.98 GB/s in 4 MiB O_DIRECT reads with 4 or
12 threads, 1.62 in 8 MiB and 1.86 in 32 MiB (a /tmp script over a store's segment files), and
`raylsm bench tier --clients 4` (three paired runs, 2026-12-02) gave tier_fast 1.03-1.23 GB/s
(0.55-0.66 of the disk ceiling) with 16 MiB groups copied by the pool threads, against 0.72-0.98
(0.40-0.61) with 4 MiB groups copied by the caller; one client 0.89-0.97 against 0.55-0.84.

Called by TierClient from SGLang's prefetch and prefetch-I/O threads; thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
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


class _CallerBuffers:
    """The caller's page parts for one `read_into`, and the gate that keeps pool threads out of
    them once the call has returned: a thread copies only between `enter` and `leave`, and
    `close` (the call returning) waits for copies in progress (memory copies of one group,
    milliseconds; never I/O) and turns every later `enter` away."""

    def __init__(self, parts_of: dict[int, tuple[memoryview, ...]]) -> None:
        self.parts_of = parts_of
        self._open = True
        self._copying = 0
        self._done = threading.Condition()

    def enter(self) -> bool:
        with self._done:
            if not self._open:
                return False
            self._copying += 1
            return True

    def leave(self) -> None:
        with self._done:
            self._copying -= 1
            if not self._copying:
                self._done.notify_all()

    def close(self) -> None:
        with self._done:
            self._open = False
            self._done.wait_for(lambda: not self._copying)


class BoundedLocalReader:
    """Verified same-node reads into the caller's page parts, bounded by a deadline.

    Each group of pages (up to `staging_bytes`) is read O_DIRECT into a staging buffer and verified
    there by a pool thread, which then copies the verified pages into the caller's parts itself if
    the call is still waiting for them (`_CallerBuffers`).
    NOTE: the copies ran on the calling thread before; timers on a 4-process cold read of
    1.6 GB (/tmp script, no Ray) found the calling thread copying for 1.07 s of a 1.65 s span while
    the three pool threads waited on it; a copy into a large pool runs at 2.2 GB/s on one thread and
    3.9 GB/s on two here (numpy releases the GIL), so the copies belong beside the reads.
    """

    def __init__(self, reader: LocalSegmentReader, health: ShardHealth, staging_bytes: int = 16 << 20,
                 threads: int = 3, spare_buffers: int = 3) -> None:
        self._reader = reader
        self._health = health
        self._staging_bytes = staging_bytes
        self._spare_buffers = spare_buffers
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="raylsm-local-read")
        self._spares: list[np.ndarray] = []
        self._lock = threading.Lock()

    def read_into(self, shard: str, segments_dir: str, pointers: Sequence[fmt.Pointer | None],
                  page_parts: Sequence[Any], deadline: float) -> tuple[ReadOutcome, bool]:
        """Fill page_parts[i] from pointers[i] (None = absent) by `deadline` (time.monotonic()).
        Returns (outcome, timed_out); `outcome.results[i]` is True per verified page copied in
        time, `failed_slots` are pages whose bytes failed their checksum or read. Once it returns,
        nothing writes into `page_parts` (a read still running lands in its staging buffer only)."""
        outcome = ReadOutcome(results=[False] * len(pointers))
        wanted = []
        parts_of: dict[int, tuple[memoryview, ...]] = {}  # the caller's buffers, checked once
        for slot, pointer in enumerate(pointers):
            parts = writable_parts(page_parts[slot], pointer.length) if pointer is not None else None
            if parts is not None:
                wanted.append((slot, pointer))
                parts_of[slot] = parts
        wanted.sort(key=lambda item: (item[1].segment_id, item[1].offset))
        caller = _CallerBuffers(parts_of)
        running = deque((group, self._pool.submit(self._read_group, segments_dir, group, caller))
                        for group in self._groups(wanted))
        timed_out = False
        try:
            while running:
                group, future = running[0]
                try:
                    group_outcome, copied = future.result(timeout=max(0.0, deadline - time.monotonic()))
                except FutureTimeout:
                    timed_out = True
                    return outcome, True
                running.popleft()
                self._merge(outcome, group, group_outcome, copied)
            return outcome, False
        finally:
            # On every way out (done, past the deadline, a group that raised): from here on no pool
            # thread writes into the caller's parts; groups not started never start.
            caller.close()
            for _, left in running:
                if not left.cancel() and timed_out:  # still reading: its bytes land in staging only
                    self._health.local_read_abandoned(shard)
                    left.add_done_callback(lambda _: self._health.local_read_finished(shard))

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

    def _read_group(self, segments_dir: str, group: list, caller: _CallerBuffers) -> tuple[ReadOutcome, bool]:
        """Runs on a pool thread: read and verify one group into a staging buffer, then copy its
        verified pages into the caller's parts unless the call has returned. Returns the group's
        outcome and whether its pages were copied."""
        sizes = [fmt.align_up(pointer.length) for _, pointer in group]
        staging = self._take(sum(sizes))
        try:
            views, offset = [], 0
            for (_, pointer), size in zip(group, sizes):
                views.append(staging[offset:offset + pointer.length])
                offset += size
            group_outcome = self._reader.read_into(segments_dir, [pointer for _, pointer in group], views)
            if not caller.enter():
                return group_outcome, False
            try:
                for index, ((slot, _), hit) in enumerate(zip(group, group_outcome.results)):
                    if hit:
                        source, at = views[index], 0
                        for part in caller.parts_of[slot]:
                            np.copyto(np.frombuffer(part, dtype=np.uint8), source[at:at + part.nbytes])
                            at += part.nbytes
            finally:
                caller.leave()
            return group_outcome, True
        finally:
            self._release(staging)

    @staticmethod
    def _merge(outcome: ReadOutcome, group: list, group_outcome: ReadOutcome, copied: bool) -> None:
        """Merge one group's outcome, its pages copied into the caller's parts, into the call's."""
        if not copied:
            return
        for (slot, _), hit in zip(group, group_outcome.results):
            if hit:
                outcome.results[slot] = True
        outcome.hit_bytes += group_outcome.hit_bytes
        outcome.stale += group_outcome.stale
        outcome.corrupt += group_outcome.corrupt
        outcome.io_errors += group_outcome.io_errors
        outcome.failed_slots.extend(group[index][0] for index in group_outcome.failed_slots)
        for segment_id, offsets in group_outcome.hit_offsets.items():
            outcome.hit_offsets.setdefault(segment_id, []).extend(offsets)

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
