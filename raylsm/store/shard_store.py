"""ShardStore: one shard's KV-page store over one directory.

Owns the pointer index (RocksDB) and the segment files of one directory, and the write, read,
probe, eviction and reinsertion paths over them. Called by the shard actor (later issues), the
benchmarks and tests. Imports no Ray, SGLang or torch.

Thread-safety: every public method may be called from any thread. Writes (put, delete, clear,
eviction, tuning) are serialized by one write lock; reads and probes take no lock (positional
vectored reads, GIL released) and pin the segments they read so eviction cannot close them midway.

Outcomes, per page: a hit is True (and the caller's buffer holds the verified bytes); a miss is
False, whatever its cause (absent, freed, corrupt, unreadable, bad output buffer), and is counted by
cause in `stats()`. Exceptions are for bad input (ValueError and subclasses, before anything is
written) and for a closed store (StoreClosedError).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Sequence

import msgpack
import numpy as np

from raylsm import namespaces
from raylsm.errors import CapacityError, ConfigError, FormatVersionError, StoreClosedError
from raylsm.store import format as fmt
from raylsm.store.admission import make_admission_policy
from raylsm.store.budget_pool import POLL_S, BudgetPool, PoolFullError
from raylsm.store.disk_room import RoomState, enforce_capacity, room_state, sealed_segment_ids
from raylsm.store.live_space import LiveSpace
from raylsm.store.config import StoreConfig
from raylsm.store.outcomes import ACCEPTED, IN_STORE, PutOutcome
from raylsm.store.io_buffers import aligned_empty, page_views, parts_nbytes
from raylsm.store import page_key
from raylsm.store.page_key import key_digest, validate_keys
from raylsm.store.pointer_index import IndexOptions, PointerIndex, read_format_version
from raylsm.store.page_reader import read_verified, writable_parts
from raylsm.store.digest_set import DigestSet
from raylsm.store.recovery import recover, write_open_snapshot
from raylsm.store.reinsertion import make_reinsertion_policy
from raylsm.store.prefix_probe import count_present_prefix
from raylsm.store.segment import Segment
from raylsm.store.segment_reclaimer import SegmentReclaimer, drop_kept, evict_oldest, reappend
from raylsm.store.mini_sims import MiniSims, candidate_of
from raylsm.store.workload_stats import WorkloadStats
from raylsm.store.stats import StoreStats

logger = logging.getLogger(__name__)


class ShardStore:
    """Use `ShardStore.open(path, config)`; see the module docstring for the contract."""

    def __init__(self, root: str, config: StoreConfig, index: PointerIndex):
        self.root = root
        self._config = config
        self._index = index
        self._segments_dir = os.path.join(root, fmt.SEGMENTS_DIR)
        self._write_lock = threading.RLock()
        self._room = threading.Condition(self._write_lock)  # notified when the reclaimer freed a segment
        self._closed = False
        self._stats = StoreStats()
        self._admission = make_admission_policy(config)
        self._reinsertion = make_reinsertion_policy(config)
        self._workload = WorkloadStats(config.workload_sample_rate, sims=MiniSims(
            config.capacity_bytes, config.workload_sample_rate, config.admission_ghost_entries)
        ) if config.workload_sample_rate else None
        state = recover(self._segments_dir, index, with_digests=config.resident_index)
        self._resident: DigestSet | None = state.digests
        self._checksum_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raylsm-checksum")
        self._segments: dict[int, Segment] = state.segments
        self._live = LiveSpace(state.live_bytes, state.live_pages)
        self._next_segment_id = state.next_segment_id
        self._active: Segment | None = None
        self._reclaimer: SegmentReclaimer | None = None  # started by open() when background_reclaim
        self._pool: BudgetPool | None = None  # joined by open() when given a pool path
        # Reads served per page since it was written, by segment then value offset (for reinsertion).
        self._reads_since_written: dict[int, dict[int, int]] = {}
        self._zero_pad = aligned_empty(fmt.BLOCK_BYTES)
        self._zero_pad[:] = 0
        self.recovery = state
        raw_table = index.get_meta(fmt.META_NAMESPACE_TABLE)
        self._namespace_table = msgpack.unpackb(raw_table) if raw_table else dict(namespaces.EMPTY_TABLE)
        self._retired = namespaces.retired_ids(self._namespace_table)
        self._stats.add(recovery_dropped_pointers=state.dropped_pointers)

    # ---- lifecycle ----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str, config: StoreConfig | None = None, budget_pool: str | None = None) -> "ShardStore":
        """Open (or create) the store in directory `path`.

        With `budget_pool` (a pool file path shared by the stores of one disk; raylsm.store.budget_pool)
        the store pools its capacity with theirs and evicts in one order with them: it may hold more
        than its own capacity_bytes while the pool holds less than the sum. A pool that cannot be
        joined is logged and the store runs alone.
        Raises ConfigError for an invalid config (or a pool without background_reclaim),
        StoreLockedError if the directory is open elsewhere, FormatVersionError if it was written
        by an incompatible format version.
        """
        config = (config or StoreConfig()).validate()
        if budget_pool and not config.background_reclaim:
            raise ConfigError("a budget pool needs background_reclaim (its members evict for each other)")
        os.makedirs(os.path.join(path, fmt.SEGMENTS_DIR), exist_ok=True)
        index = PointerIndex(os.path.join(path, fmt.INDEX_DIR), IndexOptions(
            block_cache_bytes=config.block_cache_bytes, write_buffer_bytes=config.index_write_buffer_bytes(),
            sync_writes=config.durability == "machine"))
        try:
            version = read_format_version(index)
            if version is None:
                index.put_meta(fmt.META_FORMAT_VERSION, fmt.encode_u32(fmt.FORMAT_VERSION))
            elif version != fmt.FORMAT_VERSION:
                raise FormatVersionError(
                    f"{path} holds format version {version}; this raylsm reads version {fmt.FORMAT_VERSION}")
            store = cls(path, config, index)
        except BaseException:
            index.close()
            raise
        try:
            store._check_disk_room()
            if budget_pool:
                store._join_pool(budget_pool)
            with store._write_lock:
                store._enforce_capacity()  # a budget lowered since the last open holds from the start
        except BaseException:
            store.close()
            raise
        if config.background_reclaim:
            store._reclaimer = SegmentReclaimer(store, period_s=POLL_S if store._pool is not None else 0.25)
        return store

    def _wake_reclaimer(self) -> None:
        reclaimer = self._reclaimer
        if reclaimer is not None:
            reclaimer.wake()

    def _join_pool(self, path: str) -> None:
        try:
            self._pool = BudgetPool.join(path, os.path.abspath(self.root), on_wake=self._wake_reclaimer)
        except (OSError, ValueError, PoolFullError) as error:
            logger.warning("store %s: runs without its disk's budget pool %s (%r)", self.root, path, error)
            return
        self.room_state()  # publish at once: the members count this store's capacity from now on

    def _check_disk_room(self) -> None:
        """CapacityError if the budget exceeds what this store holds plus the free space of its
        file system (it would fill the disk long before eviction started)."""
        free = shutil.disk_usage(self.root).free
        room = free + self._disk_bytes()
        if self._config.capacity_bytes > room:
            raise CapacityError(
                f"store {self.root}: capacity_bytes {self._config.capacity_bytes} ({self._config.capacity_bytes / 1e9:.1f} GB) "
                f"is more than its disk can hold: {room} bytes ({room / 1e9:.1f} GB: {free / 1e9:.1f} GB free plus "
                f"{(room - free) / 1e9:.1f} GB already used by the store); lower the capacity")

    def close(self) -> None:
        """Stop the reclaimer, seal the active segment, mark a clean shutdown, release the directory.
        Idempotent."""
        reclaimer, self._reclaimer = self._reclaimer, None
        if reclaimer is not None:
            reclaimer.stop()  # outside the write lock: the reclaimer takes it to commit
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            if self._pool is not None:
                self._pool.leave()
            if self._active is not None:
                self._active.seal()
                self._active = None
            try:  # with the clean-shutdown mark
                live_bytes, live_pages = self._live.per_segment(self._segments)
                write_open_snapshot(self._segments_dir, self._index, live_bytes, live_pages, self._resident,
                                    {segment_id: segment.file_bytes for segment_id, segment in self._segments.items()})
            except OSError as error:  # the next open scans the index instead
                logger.warning("raylsm: no open snapshot for %s (%r)", self.root, error)
                self._index.put_meta(fmt.META_CLEAN_SHUTDOWN, b"1")
            self._checksum_pool.shutdown(wait=True)
            self._index.close()
            for segment in self._segments.values():
                segment.close()
            self._segments = {}

    def __enter__(self) -> "ShardStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def config(self) -> StoreConfig:
        return self._config

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"store {self.root} is closed")

    # ---- write path ---------------------------------------------------------------------------

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
            written = self._append_pages(todo_keys, todo_pages, todo_sizes)
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

    def _pinned_segment(self, segment_id: int) -> Segment | None:
        segment = self._segments.get(segment_id)
        return segment if segment is not None and segment.pin() else None

    def _forget(self, key: bytes) -> None:
        self._forget_many((key,))

    def _forget_many(self, keys: Sequence[bytes]) -> None:
        """Take keys out of the resident set (their pointers are being deleted). Caller holds the
        write lock."""
        if self._resident is not None and keys:
            self._resident.discard_many([key_digest(key) for key in keys])

    def _present_flags(self, keys: Sequence[bytes], digests: Sequence[int] | None = None) -> list[bool]:
        """Whether each key has a pointer into a live segment: from the resident set if kept (by
        `digests`, the keys' key_digests, if the caller has them), else one multi-get."""
        if self._resident is not None:
            return self._resident.contains_many(digests if digests is not None else [key_digest(key) for key in keys])
        return [raw is not None and self._points_to_live_segment(raw) for raw in self._index.get_many(keys)]

    def _points_to_live_segment(self, raw: bytes) -> bool:
        pointer = fmt.decode_pointer(raw)
        return pointer is not None and pointer.segment_id in self._segments

    def _append_pages(self, keys: Sequence[bytes], pages: Sequence[tuple[memoryview, ...]], sizes: Sequence[int],
                      checksums: Sequence[int] | None = None, roll: bool = True,
                      wait_for_room: bool = True) -> list[bool]:
        """Append pages as records into the active segment, rolling segments as needed (unless
        `roll` is False: then only what fits the active segment), and commit their pointers. Caller
        holds the write lock. An I/O error fails the pages not yet committed."""
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
                                   checksums[start:end] if checksums is not None else None)
            except OSError:
                if not roll:
                    logger.warning("store %s: re-appending %d kept pages failed; evicted", self.root, end - start)
                return results
            results[start:end] = [True] * (end - start)
            start = end
        return results

    def _write_record(self, segment: Segment, keys: Sequence[bytes], pages: Sequence[tuple[memoryview, ...]],
                      lengths: Sequence[int], checksums: Sequence[int] | None = None) -> None:
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
            segment.write_at(iovecs, offset, self._config.direct_io)
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
            self._resident.update(key_digest(key) for key in keys)

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
            deadline = time.monotonic() + config.roll_wait_s
            while True:
                room = self.room_state()
                if not room.full or not (self._has_sealed_segment() or room.others_sealed):
                    break
                remaining = deadline - time.monotonic()
                if self._reclaimer is not None and remaining > 0:
                    self._reclaimer.wake()
                    # (another member's eviction does not notify this condition: look again soon)
                    self._room.wait(min(remaining, 0.05 if self._pool is None else 0.005))
                    continue
                if not self._has_sealed_segment():
                    break  # the pool's other members lag: roll past the budget by this segment
                evict_oldest(self, [0])
                self._stats.add(evicted_segments_inline=1)
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
        return room_state(self).needs_room

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

    def delete_batch(self, keys: Sequence[bytes]) -> int:
        """Remove pages; returns how many were present. Their bytes die with their segment."""
        validate_keys(keys)
        keys = list(dict.fromkeys(keys))  # a key repeated in the batch is one page
        with self._write_lock:
            self._check_open()
            batch = self._index.new_batch()
            forgotten = []
            for key, raw in zip(keys, self._index.get_many(keys)):
                pointer = fmt.decode_pointer(raw) if raw is not None else None
                if pointer is None:
                    continue
                batch.delete(key)
                forgotten.append(key)
                self._live.remove(pointer.segment_id, pointer.length)
            self._forget_many(forgotten)
            self._index.commit(batch)
            deleted = len(forgotten)
        self._stats.add(deleted_pages=deleted)
        return deleted

    def namespace_table(self) -> dict:
        """The namespace table this store last applied (raylsm.namespaces)."""
        return self._namespace_table

    def apply_namespace_table(self, table: Mapping[str, Any]) -> int:
        """Adopt a newer namespace table: every page of a namespace id it retires is deleted, and
        puts to those ids are refused from now on (RETIRED). The merged table is persisted, so a
        restarted controller can rebuild the tier's table from its shards. Returns pages deleted."""
        with self._write_lock:
            self._check_open()
            table = namespaces.merged(self._namespace_table, table)
            newly_retired = namespaces.retired_ids(table) - self._retired
            self._retired = self._retired | newly_retired  # refused from here on, before the delete
            deleted = sum(self._delete_namespace_locked(namespace) for namespace in sorted(newly_retired))
            self._index.put_meta(fmt.META_NAMESPACE_TABLE, msgpack.packb(table))
            self._namespace_table = table
        return deleted

    def delete_namespace(self, namespace: bytes) -> int:
        """Remove every page of one namespace (8-byte id); returns how many there were."""
        if len(namespace) != page_key.NAMESPACE_ID_BYTES:
            raise ValueError(f"namespace id must be {page_key.NAMESPACE_ID_BYTES} bytes, got {len(namespace)}")
        with self._write_lock:
            self._check_open()
            return self._delete_namespace_locked(namespace)

    def _delete_namespace_locked(self, namespace: bytes) -> int:
        prefix = bytes((page_key.PAGE_KEY_TAG,)) + namespace
        batch = self._index.new_batch()
        forgotten = []
        for key, raw in self._index.scan_from(prefix):
            if not key.startswith(prefix):
                break
            batch.delete(key)
            forgotten.append(key)
            pointer = fmt.decode_pointer(raw)
            if pointer is not None:
                self._live.remove(pointer.segment_id, pointer.length)
        self._forget_many(forgotten)
        self._index.commit(batch)
        deleted = len(forgotten)
        self._stats.add(deleted_pages=deleted)
        return deleted

    def clear(self) -> None:
        """Remove every page and every segment file."""
        with self._write_lock:
            self._check_open()
            self._active = None
            self._index.delete_all_pages()
            self._index.put_meta(fmt.META_LOW_WATERMARK, fmt.encode_u32(self._next_segment_id))
            for segment in self._segments.values():
                segment.retire()
            self._segments = {}
            self._live = LiveSpace({}, {})
            if self._resident is not None:
                self._resident.clear()
            self._reads_since_written = {}

    # ---- read path ----------------------------------------------------------------------------

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
        dropped = 0
        with self._write_lock:
            if self._closed:
                return 0
            batch = self._index.new_batch()
            for (key, pointer), raw in zip(failed, self._index.get_many([key for key, _ in failed])):
                if raw is None or fmt.decode_pointer(raw) != pointer:
                    continue
                batch.delete(key)
                self._forget(key)
                self._live.remove(pointer.segment_id, pointer.length)
                dropped += 1
            self._index.commit(batch)
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
        return [key_digest(key) for key in keys]

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

    def tier_meta(self, name: str) -> bytes | None:
        """A small blob the tier keeps on this shard's disk (the ring it last heard, the routing ids
        of its namespaces: raylsm.actors.shard_actor); None if never set."""
        return self._index.get_meta(fmt.META_TIER_PREFIX + name.encode("ascii"))

    def set_tier_meta(self, name: str, value: bytes) -> None:
        self._check_open()
        self._index.put_meta(fmt.META_TIER_PREFIX + name.encode("ascii"), value)

    def _low_watermark(self) -> int:
        return min(self._segments, default=self._next_segment_id)

    # ---- tuning and stats ---------------------------------------------------------------------

    def apply_tuning(self, changes: Mapping[str, Any]) -> StoreConfig:
        """Apply runtime-changeable config fields ("live" and "next_segment"); returns the new config.
        ConfigError (nothing changed) for unknown fields, bad values or reopen-only fields."""
        with self._write_lock:
            self._check_open()
            new = self._config.with_changes(changes)
            old = self._config
            self._config = new
            if new.admission_policy != old.admission_policy or new.admission_ghost_entries != old.admission_ghost_entries:
                self._admission = make_admission_policy(new)
            if new.reinsertion_policy != old.reinsertion_policy:
                self._reinsertion = make_reinsertion_policy(new)
            if new.durability != old.durability:
                self._index.set_sync_writes(new.durability == "machine")
            if new.capacity_bytes < old.capacity_bytes:
                self._enforce_capacity()
            if new.index_write_buffer_bytes() != old.index_write_buffer_bytes():
                self._index.set_rocksdb_options({"write_buffer_size": str(new.index_write_buffer_bytes())})
            return new

    def drain_sims(self) -> dict | None:
        """Run the miniature simulations over the references recorded since the last call
        (raylsm.store.mini_sims.MiniSims.drain, rebased on the model of the configuration this store
        runs); None when the workload statistics are off."""
        if self._workload is None or self._workload.sims is None:
            return None
        return self._workload.sims.drain(running=candidate_of(self._config))

    def stats(self, workload_max_age_s: float = 0.0) -> dict:
        """Counters, latency histograms and space: live bytes (referenced by pointers), dead bytes
        (written but no longer referenced), segment bytes (segment files, the active one at its
        preallocated size), index bytes (the RocksDB directory), disk bytes (the two together: what
        capacity_bytes bounds, to within one segment), capacity; the disk budget pool it belongs to;
        its workload statistics (raylsm.store.workload_stats; a curve computed at most
        `workload_max_age_s` ago may be returned again)."""
        with self._write_lock:
            segments = list(self._segments.values())
            live, pages = self._live.totals()
            written = sum(segment.write_offset for segment in segments)
            segment_bytes = sum(segment.file_bytes for segment in segments)
            index_bytes = self._index.disk_bytes() if not self._closed else 0
            view = self._pool.view() if self._pool is not None and not self._closed else None
        snapshot = self._stats.snapshot()
        snapshot["space"] = {"live_pages": pages, "live_bytes": live, "dead_bytes": max(written - live, 0),
                             "segment_bytes": segment_bytes, "index_bytes": index_bytes,
                             "disk_bytes": segment_bytes + index_bytes,
                             "capacity_bytes": self._config.capacity_bytes, "segments": len(segments)}
        if view is not None:
            snapshot["pool"] = {"path": self._pool.path, "members": view.members,
                                "capacity_bytes": view.capacity_bytes, "disk_bytes": view.disk_bytes}
        if self._workload is not None:
            snapshot["workload"] = self._workload.snapshot(view.capacity_bytes if view is not None
                                                           else self._config.capacity_bytes, workload_max_age_s)
        return snapshot


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
    """One past the last page (from `start`) that fits with its record header into `room` bytes."""
    end = start
    values = 0
    while end < len(sizes) and end - start < fmt.MAX_ENTRIES_PER_BATCH:
        grown = values + fmt.align_up(sizes[end])
        if fmt.header_bytes_for(end - start + 1) + grown > room:
            break
        values = grown
        end += 1
    return end
