"""ShardStore: one shard's KV-page store over one directory.

Owns the pointer index (RocksDB) and the segment files of one directory: opening and recovery,
closing, deletes and namespaces, tuning and statistics here; the write path in write_path.py and the
read path in read_path.py (mixins over this class's state); eviction and reinsertion in
segment_reclaimer.py. Called by the shard actor, the benchmarks and tests. Imports no Ray, SGLang or
torch.

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
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Sequence

import msgpack

from raylsm import namespaces
from raylsm.errors import CapacityError, ConfigError, FormatVersionError, StoreClosedError
from raylsm.store import format as fmt
from raylsm.store.admission import make_admission_policy
from raylsm.store.budget_pool import POLL_S, BudgetPool, PoolFullError
from raylsm.store.live_space import LiveSpace
from raylsm.store.config import StoreConfig
from raylsm.store.io_buffers import aligned_empty
from raylsm.store import page_key
from raylsm.store.page_key import validate_keys
from raylsm.store.pointer_index import IndexOptions, PointerIndex, read_format_version
from raylsm.store.digest_set import DigestSet
from raylsm.store.disk_room import sealed_segment_ids
from raylsm.store.recovery import recover, write_open_snapshot
from raylsm.store.reinsertion import make_reinsertion_policy
from raylsm.store.segment import Segment
from raylsm.store.read_path import ReadPath
from raylsm.store.segment_reclaimer import SegmentReclaimer
from raylsm.store.write_path import WritePath
from raylsm.store.mini_sims import MiniSims, candidate_of
from raylsm.store.workload_stats import WorkloadStats
from raylsm.store.stats import StoreStats

logger = logging.getLogger(__name__)

STAGING_BYTES = 8 << 20  # a multiple of fmt.BLOCK_BYTES


class ShardStore(WritePath, ReadPath):
    """Use `ShardStore.open(path, config)`; see the module docstring for the contract."""

    def __init__(self, root: str, config: StoreConfig, index: PointerIndex):
        self.root = root
        self._config = config
        self._index = index
        self._segments_dir = os.path.join(root, fmt.SEGMENTS_DIR)
        self._write_lock = threading.RLock()
        self._room = threading.Condition(self._write_lock)  # notified when the reclaimer freed a segment
        # Bytes the reclaimer's eviction in progress will free: its segment less the kept pages it
        # re-appends (raylsm.store.segment_reclaimer.evict_oldest); counted as free room.
        self._freeing_bytes = 0
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
        # Takes the pages the reclaimer evicts when it wants them (raylsm.store.segment_reclaimer
        # .EvictionForwarder; the shard actor's forwarding to another shard): None, none forwarded.
        self.forwarder = None
        # Reads served per page since it was written, by segment then value offset (for reinsertion).
        self._reads_since_written: dict[int, dict[int, int]] = {}
        # Unaligned pages are copied through this on their way to O_DIRECT (Segment.write_at); used
        # under the write lock only.
        self._staging = aligned_empty(STAGING_BYTES)
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

    def frontier(self) -> dict:
        """What eviction forwarding compares (raylsm.actors.forwarding): the seal time (wall clock)
        of the oldest sealed segment of this store's budget, the store's own or in a pool its
        oldest member's (None if none), and whether that budget is evicting (`full`)."""
        room = self.room_state()
        sealed = sealed_segment_ids(self)
        oldest = self._segments.get(sealed[0]) if sealed else None
        return {"oldest_sealed_at": oldest.sealed_at if oldest is not None else None,
                "full": bool(room.needs_room or room.full)}

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
