"""The write path of ShardStore: puts, records, segment rolls and the room they need.

Owned here: `WritePath`, a mixin of ShardStore (its state is the store's: see shard_store.py), with
put_batch / put_batch_outcomes (admission, duplicate checks, one vectored write per record, pointers
committed after their bytes), the roll that seals the active segment and starts the next (waiting
for the background reclaimer's room, raylsm.store.segment_reclaimer), and the room accounting
(raylsm.store.disk_room). Called through ShardStore only. Imports no Ray, SGLang or torch.
Thread-safety: every write runs under the store's write lock.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, Sequence

import numpy as np

from raylsm.store import format as fmt
from raylsm.store import page_key
from raylsm.store.disk_room import RoomState, enforce_capacity, room_state, sealed_segment_ids
from raylsm.store.io_buffers import page_views, parts_nbytes
from raylsm.store.outcomes import ACCEPTED, IN_STORE, PutOutcome
from raylsm.store.page_key import key_digests, validate_keys
from raylsm.store.pointer_index import PointerIndex
from raylsm.store.segment import Segment
from raylsm.store.segment_reclaimer import drop_kept, evict_oldest, reappend

logger = logging.getLogger(__name__)


class WritePath:
    """Mixin of ShardStore: the write path (see the module docstring)."""

    def put_batch(self, keys: Sequence[bytes], values: Sequence[Any]) -> list[bool]:
        """Store pages; True per page that is in the store afterwards (written now or already).

        `values` are buffer-protocol objects (bytes, numpy arrays, memoryviews), or per page a
        list of such buffers holding the page's parts in order; written straight from the caller's
        memory. A page already present is skipped and reported True. Every other page is False:
        declined by admission, too large for a segment, not a buffer, or kept off the disk by an
        I/O error (e.g. ENOSPC); each is counted by cause, and one bad page never fails the others.
        Raises ValueError naming the index of a bad key, or for mismatched lengths (nothing written).
        """
        return [outcome in IN_STORE for outcome in self.put_batch_outcomes(keys, values)]

    def put_batch_outcomes(self, keys: Sequence[bytes], values: Sequence[Any],
                           deadline_s: float | None = None, handover: bool = False) -> list[PutOutcome]:
        """`put_batch` with a PutOutcome per page. With `deadline_s` (a `time.time()` instant), pages
        not yet written when the write lock is taken after the deadline are EXPIRED, not written: a
        caller that gave up waiting does not find them stored later. `handover`: pages another shard
        hands over when it drains (raylsm.actors.drain): admitted without the admission policy (they
        earned their place there) and left out of the workload statistics (no client asked)."""
        started = time.perf_counter()
        validate_keys(keys)
        if len(values) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(values)} values")
        digests = self._digests(keys)
        outcomes = [PutOutcome.FAILED] * len(keys)
        pages, sizes = [], []
        limit = self._config.segment_bytes - fmt.header_bytes_for(1)
        for slot, value in enumerate(values):
            try:
                parts = page_views(value)
            except (TypeError, ValueError):
                parts = None
                outcomes[slot] = PutOutcome.BAD_VALUE
            size = parts_nbytes(parts) if parts is not None else 0
            if size > limit:
                outcomes[slot] = PutOutcome.TOO_LARGE
            pages.append(parts)
            sizes.append(size)
        valid = [outcomes[slot] == PutOutcome.FAILED for slot in range(len(keys))]

        todo_sizes: list[int] = []
        written: list[bool] = []
        with self._write_lock:
            self._check_open()
            expired = deadline_s is not None and time.time() > deadline_s
            present = self._present_flags(keys, digests)
            todo_keys, todo_pages, todo_slots = [], [], []
            first_slot: dict[bytes, int] = {}
            retired = self._retired
            for slot, key in enumerate(keys):
                if not valid[slot]:
                    continue
                if retired and key[1:1 + page_key.NAMESPACE_ID_BYTES] in retired:
                    outcomes[slot] = PutOutcome.RETIRED
                elif present[slot]:
                    outcomes[slot] = PutOutcome.PRESENT
                elif key in first_slot:
                    continue  # a repeat inside this batch: resolved from the first occurrence below
                elif expired:
                    outcomes[slot] = PutOutcome.EXPIRED
                elif handover or self._admission.admit(key, sizes[slot]):
                    first_slot[key] = slot
                    todo_keys.append(key)
                    todo_pages.append(pages[slot])
                    todo_sizes.append(sizes[slot])
                    todo_slots.append(slot)
                else:
                    outcomes[slot] = PutOutcome.DECLINED
            written = self._append_pages(todo_keys, todo_pages, todo_sizes, digests=None if digests is None
                                         else [digests[slot] for slot in todo_slots])
            for slot, ok in zip(todo_slots, written):
                outcomes[slot] = PutOutcome.STORED if ok else PutOutcome.FAILED
            for slot, key in enumerate(keys):
                if valid[slot] and key in first_slot and slot != first_slot[key]:
                    first = outcomes[first_slot[key]]
                    outcomes[slot] = PutOutcome.PRESENT if first == PutOutcome.STORED else first
        stored = sum(written)
        count = Counter(outcomes)
        if self._workload is not None and not handover:
            # Offered pages: held (stored now, or present) or declined by admission (absent, like
            # a stored one: the curve and the models assume their own admission).
            offered = [slot for slot, outcome in enumerate(outcomes) if outcome in ACCEPTED]
            self._workload.written([digests[slot] for slot in offered], [sizes[slot] for slot in offered],
                                   [outcomes[slot] != PutOutcome.PRESENT for slot in offered],
                                   [keys[slot] for slot in offered])
        self._stats.observe("put", (time.perf_counter() - started) * 1e3,
                            puts_pages=stored, puts_bytes=sum(n for n, ok in zip(todo_sizes, written) if ok),
                            puts_existing=count[PutOutcome.PRESENT], puts_rejected=count[PutOutcome.DECLINED],
                            puts_failed=len(written) - stored, puts_too_large=count[PutOutcome.TOO_LARGE],
                            puts_bad_value=count[PutOutcome.BAD_VALUE], puts_expired=count[PutOutcome.EXPIRED])
        return outcomes

    def _forget_many(self, keys: Sequence[bytes]) -> None:
        """Take keys out of the resident set (their pointers are being deleted). Caller holds the
        write lock."""
        if self._resident is not None and keys:
            self._resident.discard_many(key_digests(keys))

    def _present_flags(self, keys: Sequence[bytes], digests: Sequence[int] | None = None) -> list[bool]:
        """Whether each key has a pointer into a live segment: from the resident set if kept (by
        `digests`, the keys' key_digests, if the caller has them), else one multi-get."""
        if self._resident is not None:
            return self._resident.contains_many(digests if digests is not None else key_digests(keys))
        return [raw is not None and self._points_to_live_segment(raw) for raw in self._index.get_many(keys)]

    def _points_to_live_segment(self, raw: bytes) -> bool:
        pointer = fmt.decode_pointer(raw)
        return pointer is not None and pointer.segment_id in self._segments

    def _append_pages(self, keys: Sequence[bytes], pages: Sequence[tuple[memoryview, ...]], sizes: Sequence[int],
                      checksums: Sequence[int] | None = None, roll: bool = True,
                      wait_for_room: bool = True, digests: Sequence[int] | None = None) -> list[bool]:
        """Append pages as records into the active segment, rolling segments as needed (unless
        `roll` is False: then only what fits the active segment), and commit their pointers. Caller
        holds the write lock. An I/O error fails the pages not yet committed. `digests`: the keys'
        key_digests, if the caller has them (else they are computed for the resident set)."""
        results = [False] * len(keys)
        start = 0
        while start < len(keys):
            if self._active is None and not roll:
                return results
            try:
                segment = self._active if self._active is not None else self._roll(wait_for_room)
            except OSError:
                return results  # no room for a new segment (ENOSPC): these pages are not stored
            end = _fit(sizes, start, segment.remaining_bytes())
            if end == start:
                if segment.write_offset == 0 or not roll:
                    return results  # (a validated size always fits an empty segment)
                self._seal_active()
                continue
            try:
                self._write_record(segment, keys[start:end], pages[start:end], sizes[start:end],
                                   checksums[start:end] if checksums is not None else None,
                                   digests[start:end] if digests is not None else None)
            except OSError:
                if not roll:
                    logger.warning("store %s: re-appending %d kept pages failed; evicted", self.root, end - start)
                return results
            results[start:end] = [True] * (end - start)
            start = end
        return results

    def _write_record(self, segment: Segment, keys: Sequence[bytes], pages: Sequence[tuple[memoryview, ...]],
                      lengths: Sequence[int], checksums: Sequence[int] | None = None,
                      digests: Sequence[int] | None = None) -> None:
        """Write one record and commit its pointers; raises OSError (the space is given back).

        The header needs no checksums, so the header and the values go out in one vectored write
        from this thread (pwritev releases the GIL) while the checksum thread hashes the values
        (xxhash releases the GIL too) and builds the WriteBatch of pointers. The batch is committed
        only after the write returned.
        NOTE: `raylsm bench store`, 64 KiB pages, paired runs on one disk: with the header written
        after the values (it held the checksums) and the write issued from a second thread, a put
        reached 0.61x of the disk ceiling; the writer thread could not start its pwritev until the
        checksum loop let go of the GIL, and the header cost a second I/O per record.
        """
        layout = fmt.plan_batch(lengths)
        header = fmt.encode_batch_header(layout, keys, lengths)
        iovecs: list[memoryview] = [memoryview(header)]
        zero_pad = memoryview(self._zero_pad)
        for parts, length in zip(pages, lengths):
            iovecs.extend(parts)
            pad = fmt.align_up(length) - length
            if pad:
                iovecs.append(zero_pad[:pad])
        offset = segment.reserve(layout.batch_bytes)
        value_offsets = [offset + value_offset for value_offset in layout.value_offsets]
        pointers = self._checksum_pool.submit(_pointer_batch, self._index, segment.segment_id, keys, pages, lengths,
                                              value_offsets, checksums)
        try:
            segment.write_at(iovecs, offset, self._config.direct_io, self._staging)
            if self._config.durability == "machine":
                segment.sync()
        except OSError:
            segment.rewind(offset)
            raise
        finally:
            batch = pointers.result()  # the caller's buffers are not read after this returns
        self._index.commit(batch)
        self._live.add(segment.segment_id, len(keys), sum(lengths))
        if self._resident is not None:
            self._resident.update(digests if digests is not None else key_digests(keys))

    def _seal_active(self) -> None:
        if self._active is not None:
            self._active.seal()
            self._active = None

    def _roll(self, wait_for_room: bool = True) -> Segment:
        """Seal the active segment and start the next one. Raises OSError if it cannot be created.

        With background reclaim (the default) the reclaimer keeps a segment of room ahead (in a budget
        pool, the member holding the oldest segment does), so a put only writes into free space; if
        it lags, this store's oldest segments are dropped whole here (counted as
        evicted_segments_inline; nothing read or re-appended). The reclaimer's own re-append of kept
        pages (`wait_for_room` False) rolls without waiting: it fills the room its eviction made.
        Without background reclaim, the roll evicts with reinsertion itself and re-appends what was
        kept into the new segment."""
        self._seal_active()
        config = self._config
        kept: list = []
        if config.background_reclaim and not wait_for_room:
            pass  # the reclaimer re-appending kept pages into the room it freed
        elif config.background_reclaim:
            # Room is the reclaimer's job: wait for it (the write lock is released meanwhile) up to
            # roll_wait_s; only a writer that outruns it for that long drops the oldest whole.
            # NOTE: `raylsm bench trace --quick` (back-to-back puts, 6 MB segments) with no wait:
            # 82 of 800 segments dropped by puts, reinserted pages 12.6k (23.4k inline), L3 hit 0.184.
            # In a budget pool the room may come from another member's reclaimer (it polls).
            waited_from = time.monotonic()
            deadline = waited_from + config.roll_wait_s
            waited = False
            while True:
                room = self.room_state()
                if not room.full or not (self._has_sealed_segment() or room.others_sealed):
                    break
                remaining = deadline - time.monotonic()
                if self._reclaimer is not None and remaining > 0:
                    waited = True
                    self._reclaimer.wake()
                    # (another member's eviction does not notify this condition: look again soon)
                    self._room.wait(min(remaining, 0.05 if self._pool is None else 0.005))
                    continue
                if not self._has_sealed_segment():
                    break  # the pool's other members lag: roll past the budget by this segment
                evict_oldest(self, [0])
                self._stats.add(evicted_segments_inline=1)
            if waited:
                self._stats.add(rolls_waited=1, roll_wait_ms=int((time.monotonic() - waited_from) * 1e3))
            if self._active is not None:  # another writer rolled while this one waited
                return self._active
        else:
            # One budget for the whole roll, however many segments it frees, so what is kept always
            # fits the new segment as one record: each segment's kept pages are charged their
            # aligned bytes and their record header (segment_reclaimer._plan).
            budget = [int(config.segment_bytes * config.reinsertion_budget_fraction)]
            while self._needs_room() and self._has_sealed_segment():
                kept.extend(evict_oldest(self, budget))
        segment = Segment.create(self._segments_dir, self._next_segment_id, config.segment_bytes,
                                 config.preallocate_segments)
        self._next_segment_id += 1
        self._segments[segment.segment_id] = segment
        self._active = segment
        if kept:
            drop_kept(self, reappend(self, kept, into_room=False, record_bytes=config.segment_bytes))
        if self._reclaimer is not None:
            self._reclaimer.wake()
        return segment

    def _fits_active(self, sizes: Sequence[int]) -> bool:
        return _fit(sizes, 0, self._active.remaining_bytes()) == len(sizes)

    def _needs_room(self) -> bool:
        """Whether one more segment would take the store (or its budget pool) past its budget."""
        return room_state(self).full

    def room_state(self) -> RoomState:
        """raylsm.store.disk_room.room_state of this store."""
        return room_state(self)

    def _has_sealed_segment(self) -> bool:
        return bool(sealed_segment_ids(self))

    def _enforce_capacity(self) -> None:
        enforce_capacity(self)

    def wait_reclaimed(self, timeout_s: float = 30.0) -> bool:
        """Wait until the background reclaimer has made room (tests and benchmarks); True at once
        without one."""
        reclaimer = self._reclaimer
        return reclaimer.wait_idle(timeout_s) if reclaimer is not None else True

    def _disk_bytes(self) -> int:
        """What the store holds on disk: segment files (the active one at its preallocated size) and
        the RocksDB index directory. This is what capacity_bytes bounds."""
        return sum(segment.file_bytes for segment in list(self._segments.values())) + self._index.disk_bytes()


def _pointer_batch(index: PointerIndex, segment_id: int, keys: Sequence[bytes], pages: Sequence[tuple[memoryview, ...]],
                   lengths: Sequence[int], value_offsets: Sequence[int], checksums: Sequence[int] | None):
    """The WriteBatch of one record's pointers, checksumming the values unless `checksums` are given
    (runs on the checksum thread while the record is written)."""
    if checksums is None:
        checksums = [fmt.checksum_parts(parts) for parts in pages]
    batch = index.new_batch()
    for key, value_offset, length, value_checksum in zip(keys, value_offsets, lengths, checksums):
        batch.put(key, fmt.encode_pointer(fmt.Pointer(segment_id, value_offset, length, value_checksum)))
    return batch


def _fit(sizes: Sequence[int], start: int, room: int) -> int:
    """One past the last page (from `start`) that fits with its record header into `room` bytes.
    One numpy pass (a Python step per page showed 0.3 ms of a 128-page put under cProfile; the
    measured gain is smaller: see format.encode_batch_header)."""
    count = min(len(sizes), start + fmt.MAX_ENTRIES_PER_BATCH) - start
    if count <= 0:
        return start
    used = np.cumsum(fmt.aligned_sizes(sizes[start:start + count]))
    entries = np.arange(1, count + 1, dtype=np.int64)
    headers = fmt.aligned_sizes(fmt.PREFIX_BYTES + entries * fmt.ENTRY_BYTES)  # header_bytes_for(1..count)
    over = np.flatnonzero(headers + used > room)  # (both grow with each page: the first over ends it)
    return start + (int(over[0]) if len(over) else count)
