"""The read path of ShardStore: gets, probes, and pointers for same-node readers.

Owned here: `ReadPath`, a mixin of ShardStore (its state is the store's: see shard_store.py), with
get_batch_into (merged, verified reads into the caller's buffers; a failed page loses its pointer),
probe (SGLang's batch_exists), locate_batch / probe_located / note_reads / report_failed_reads for
readers on the shard's node (raylsm.store.local_reader), the read counts that earn reinsertion, and
newest_pages for a draining shard. Called through ShardStore only. Imports no Ray, SGLang or torch.
Thread-safety: reads take no lock (positional reads, the GIL released) and pin what they read.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping, Sequence

import numpy as np

from raylsm.store import format as fmt
from raylsm.store.io_buffers import aligned_empty
from raylsm.store.page_key import key_digests, validate_keys
from raylsm.store.page_reader import read_verified, writable_parts
from raylsm.store.prefix_probe import count_present_prefix
from raylsm.store.segment import Segment

logger = logging.getLogger(__name__)


class ReadPath:
    """Mixin of ShardStore: the read path (see the module docstring)."""

    def _pinned_segment(self, segment_id: int) -> Segment | None:
        segment = self._segments.get(segment_id)
        return segment if segment is not None and segment.pin() else None

    def get_batch_into(self, keys: Sequence[bytes], out_buffers: Sequence[Any]) -> list[bool]:
        """Read pages straight into the caller's writable buffers; True per verified hit.

        Each buffer (or, per page, a list of buffers taking its parts in order) must be writable,
        C-contiguous and exactly the page's size in total, else that page is a miss (counted as
        bad_buffer) and its buffer is not touched. Reads are sorted by location
        and neighbours are merged into one vectored read. A checksum mismatch is a miss (counted as
        corrupt) and its buffer is zeroed: never wrong bytes.
        """
        started = time.perf_counter()
        validate_keys(keys)
        if len(out_buffers) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(out_buffers)} output buffers")
        self._check_open()
        raws = self._index.get_many(keys)
        wanted, views = [], {}
        absent = bad_buffer = 0
        for slot, raw in enumerate(raws):
            pointer = fmt.decode_pointer(raw) if raw is not None else None
            if pointer is None:
                absent += 1
                continue
            parts = writable_parts(out_buffers[slot], pointer.length)
            if parts is None:
                bad_buffer += 1
                continue
            wanted.append((slot, pointer))
            views[slot] = parts
        outcome = read_verified(wanted, views, len(keys), self._config.merge_gap_bytes, self._config.direct_io,
                                self._pinned_segment)
        self._count_reads(outcome.hit_offsets)
        if outcome.failed_slots:
            pointer_of = dict(wanted)
            self._drop_failed([(keys[slot], pointer_of[slot]) for slot in outcome.failed_slots])
        results = outcome.results
        hits = sum(results)
        self._stats.observe("get", (time.perf_counter() - started) * 1e3, gets_hit=hits,
                            gets_hit_bytes=outcome.hit_bytes, gets_miss_absent=absent, gets_miss_stale=outcome.stale,
                            gets_miss_corrupt=outcome.corrupt, gets_miss_bad_buffer=bad_buffer,
                            gets_miss_io=outcome.io_errors)
        return results

    def report_failed_reads(self, keys: Sequence[bytes], pointers: Sequence[fmt.Pointer]) -> int:
        """A same-node reader read these pages from these pointers and they failed (checksum or I/O).
        Each page is read again here; one that fails again loses its pointer (it is absent for every
        client, and a re-put stores it again). Returns how many were dropped. A pointer that no longer
        is the key's current one is ignored (the page was re-put or evicted meanwhile)."""
        validate_keys(keys)
        if len(pointers) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(pointers)} pointers")
        self._check_open()
        wanted = [(slot, fmt.Pointer(*pointer)) for slot, pointer in enumerate(pointers)]
        buffers = [aligned_empty(pointer.length) for _, pointer in wanted]
        outcome = read_verified(wanted, {slot: (memoryview(buffer),) for slot, buffer in enumerate(buffers)},
                                len(keys), self._config.merge_gap_bytes, self._config.direct_io,
                                self._pinned_segment)
        self._stats.add(gets_miss_corrupt=outcome.corrupt, gets_miss_io=outcome.io_errors)
        return self._drop_failed([(keys[slot], wanted[slot][1]) for slot in outcome.failed_slots])

    def _drop_failed(self, failed: Sequence[tuple[bytes, fmt.Pointer]]) -> int:
        """Drop the pointers of pages whose bytes failed a read, if they still are the current ones:
        a page that can never be read must not answer probes or block its own re-put."""
        with self._write_lock:
            if self._closed:
                return 0
            batch = self._index.new_batch()
            forgotten = []
            for (key, pointer), raw in zip(failed, self._index.get_many([key for key, _ in failed])):
                if raw is None or fmt.decode_pointer(raw) != pointer:
                    continue
                batch.delete(key)
                forgotten.append(key)
                self._live.remove(pointer.segment_id, pointer.length)
            self._forget_many(forgotten)
            self._index.commit(batch)
        dropped = len(forgotten)
        if dropped:
            logger.warning("store %s: %d page(s) failed their read and were dropped", self.root, dropped)
            self._stats.add(healed_pages=dropped)
        return dropped

    def get_batch(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        """Convenience read that allocates: an aligned uint8 array per hit, None per miss."""
        validate_keys(keys)
        self._check_open()
        raws = self._index.get_many(keys) if keys else []
        buffers = []
        for raw in raws:
            pointer = fmt.decode_pointer(raw) if raw is not None else None
            buffers.append(aligned_empty(pointer.length) if pointer else np.empty(0, np.uint8))
        hits = self.get_batch_into(keys, buffers)
        return [buffer if hit else None for buffer, hit in zip(buffers, hits)]

    def probe(self, keys: Sequence[bytes]) -> int:
        """The number of leading keys that are present (SGLang's batch_exists).

        Keys that share an extent with their successor are answered by one seek and a forward scan;
        others by one batched multi-get. Present means a pointer into a live segment; the bytes are
        not read (a later corrupt read is a miss then).
        """
        started = time.perf_counter()
        validate_keys(keys)
        self._check_open()
        digests = self._digests(keys)
        count = count_present_prefix(self._index, keys, self._resident, self._segments, digests)
        if self._workload is not None:
            self._workload.asked(keys, count, digests)
        self._stats.observe("probe", (time.perf_counter() - started) * 1e3,
                            probe_calls=1, probe_keys=len(keys), probe_hits=count)
        return count

    def _digests(self, keys: Sequence[bytes]) -> list[int] | None:
        """The keys' key_digests, computed once per call for whoever needs them (the resident set,
        the workload statistics), or None if neither is kept."""
        if self._resident is None and self._workload is None:
            return None
        return key_digests(keys)

    # ---- pointers for same-node readers --------------------------------------------------------

    def locate_batch(self, keys: Sequence[bytes]) -> tuple[str, int, list[fmt.Pointer | None]]:
        """Pointers for a reader on this node that reads segment bytes itself (LocalSegmentReader):
        (segments directory, low watermark, a pointer or None per key). Segments below the low
        watermark are freed; the reader closes its files of them. Keys without a pointer count as
        absent misses; the pages the reader then verifies it reports with `note_reads` (hits, and
        reads that earn reinsertion) or `report_failed_reads`, so each page counts once."""
        validate_keys(keys)
        self._check_open()
        pointers = self._live_pointers(keys)
        self._stats.add(gets_miss_absent=sum(pointer is None for pointer in pointers))
        return self._segments_dir, self._low_watermark(), pointers

    def probe_located(self, keys: Sequence[bytes]) -> tuple[str, int, list[fmt.Pointer]]:
        """`probe` for a reader on this node: (segments directory, low watermark, the pointers of the
        leading present keys). len(pointers) is the probe's answer. Nothing counts as read: the
        reader reports what it read with `note_reads`, so a prefetch that stops after its probe
        earns no reinsertion."""
        started = time.perf_counter()
        validate_keys(keys)
        self._check_open()
        digests = self._digests(keys)
        count = count_present_prefix(self._index, keys, self._resident, self._segments, digests)
        pointers = self._live_pointers(keys[:count]) if count else []
        for found, pointer in enumerate(pointers):
            if pointer is None:  # evicted between the two lookups
                pointers = pointers[:found]
                break
        if self._workload is not None:
            self._workload.asked(keys, len(pointers), digests)
        self._stats.observe("probe", (time.perf_counter() - started) * 1e3,
                            probe_calls=1, probe_keys=len(keys), probe_hits=len(pointers))
        return self._segments_dir, self._low_watermark(), pointers

    def note_reads(self, offsets_by_segment: Mapping[int, Sequence[int]]) -> None:
        """Count reads that a same-node reader did itself from `probe_located` pointers (value
        offsets by segment id, as `ReadOutcome.hit_offsets` holds them): they earn reinsertion like
        reads served here. Offsets in freed segments are ignored."""
        self._stats.add(gets_located=self._count_reads(offsets_by_segment))

    def _count_reads(self, offsets_by_segment: Mapping[int, Sequence[int]]) -> int:
        """Add one read per (segment, offset) of live segments; returns how many were counted.
        No lock: a count racing its segment's eviction is lost, harmlessly."""
        counted = 0
        for segment_id, offsets in offsets_by_segment.items():
            if segment_id not in self._segments:
                continue
            reads = self._reads_since_written.setdefault(segment_id, {})
            for offset in offsets:
                reads[offset] = reads.get(offset, 0) + 1
            counted += len(offsets)
        return counted

    def _live_pointers(self, keys: Sequence[bytes]) -> list[fmt.Pointer | None]:
        pointers: list[fmt.Pointer | None] = []
        for raw in self._index.get_many(keys):
            pointer = fmt.decode_pointer(raw) if raw is not None else None
            pointers.append(pointer if pointer is not None and pointer.segment_id in self._segments else None)
        return pointers

    def newest_pages(self, max_bytes: int, after: tuple[int, int] | None = None
                     ) -> tuple[list[tuple[bytes, int]], tuple[int, int]]:
        """([(key, page bytes)] of the most recently written live pages, newest first, at most
        `max_bytes` in all; the write position (segment id, offset) of the newest live page): what a
        draining shard hands over (raylsm.actors.drain). With `after` (a position this returned
        before), only pages written since. Write order is (segment id, offset); a page's read
        credits are not considered. One scan of the index that does not fill its block cache.
        NOTE: the scan holds every live page's key (61 B) and pointer in Python objects: about 200 B
        per page, 1.2 GB for 6 million pages (1.5 TB of 256 KiB pages); a drain runs once per
        scale-in."""
        self._check_open()
        found: list[tuple[int, int, bytes, int]] = []
        segments = self._segments
        for key, raw in self._index.scan_pages():
            pointer = fmt.decode_pointer(raw)
            if pointer is not None and pointer.segment_id in segments and (
                    after is None or (pointer.segment_id, pointer.offset) > tuple(after)):
                found.append((pointer.segment_id, pointer.offset, key, pointer.length))
        found.sort(reverse=True)
        newest = (found[0][0], found[0][1]) if found else (tuple(after) if after else (-1, -1))
        chosen, total = [], 0
        for _segment, _offset, key, length in found:
            if total + length > max_bytes:
                break
            chosen.append((key, length))
            total += length
        return chosen, newest
