"""Configuration of one shard store: a frozen dataclass whose fields say how a change applies.

Owned here: every knob of the storage engine, its default, unit, allowed range and trade-off.
Called by the shard store (at open and by `apply_tuning`), and later by the actor and controller
layers that nest it in the top-level config. Immutable, so thread-safe.

Each field's metadata has `applies`: "live" (the next call sees it), "next_segment" (the next
segment that is created), or "reopen" (only when the store is opened again).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from raylsm.errors import ConfigError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

LIVE, NEXT_SEGMENT, REOPEN = "live", "next_segment", "reopen"
# The smallest segment: small stores (benchmarks, tests) still get many segments, so FIFO eviction
# stays fine-grained. NOTE: `raylsm bench trace`, agentic workload, capacity 0.05, 8 shards pooling one
# disk (30 MB each): with a 1 MiB minimum the pool's FIFO was coarse (0.947 of one shard); with
# 468 KiB segments (capacity / 64) 0.966.
MIN_SEGMENT_BYTES = 256 * KiB
DURABILITY_MODES = ("process", "machine")


def _knob(default: Any, applies: str, doc: str):
    return field(default=default, metadata={"applies": applies, "doc": doc})


@dataclass(frozen=True)
class StoreConfig:
    # Disk budget of the segment files. Eviction frees whole oldest segments before a new one would
    # exceed it; disk use never exceeds it plus one segment. Must hold at least 2 segments.
    capacity_bytes: int = _knob(64 * GiB, LIVE, "bytes kept on disk: segment files and the RocksDB index")
    # Size of one segment file. Larger: fewer files, coarser eviction. Smaller: finer FIFO, more files.
    segment_bytes: int = _knob(256 * MiB, NEXT_SEGMENT, "bytes per segment file")
    # Reserve each new segment's blocks up front (posix_fallocate): a full disk is then found when a
    # segment is created rather than halfway through a write (either way the put fails cleanly: the
    # write path gives the space back and the pages are not stored; tests/unit/test_disk_full.py).
    # NOTE: off by default. O_DIRECT writes into fallocated (unwritten) extents must convert them in
    # the journal, and on this VM's ext4 (mounted `discard`) some of those writes stalled behind a
    # journal commit: the longest of 256 8 MiB writes of a /tmp script took 883, 83 and 791 ms in
    # three passes (44, 40 and 38 ms writing extending files). A ShardStore's 64 KiB put (/tmp script,
    # 40,000 pages, 3 paired runs): 0.47-0.50 GB/s preallocated, 0.73-0.93 without (time to os.sync
    # included), longest put 19-836 ms against 34-41 ms. `raylsm bench trace --sample-conversations
    # 0.25 --capacity-fraction 0.1`, 1 shard: put p50 / p99 15.66 / 141.15 ms preallocated,
    # 17.21 / 105.97 and 16.66 / 111.88 without (hit ratio 0.209, 0.203, 0.209); `raylsm bench
    # store`: 64 KiB put 0.89x of the disk ceiling without (0.68x with, earlier the same day).
    preallocate_segments: bool = _knob(False, NEXT_SEGMENT, "fallocate segments when created")
    # Bypass the kernel page cache (O_DIRECT where buffers are aligned, else read + FADV_DONTNEED).
    # The host-memory tier above is the cache; a second copy in the page cache only evicts it.
    direct_io: bool = _knob(True, LIVE, "O_DIRECT reads and writes where buffers allow")
    # "process": a put that returned True survives kill -9 of this process (bytes written, pointer
    # in the RocksDB WAL, neither fsynced). "machine": also survives power loss (fdatasync of the
    # segment, then a synced WAL write) at the cost of one fsync per batch.
    durability: str = _knob("process", LIVE, "'process' or 'machine'")
    # Which pages a put stores: "admit_all", or "second_touch" (store a page the second time it is
    # offered within the ghost window: drops one-hit wonders, costs one recompute per kept page).
    admission_policy: str = _knob("admit_all", LIVE, "admission policy name")
    admission_ghost_entries: int = _knob(1 << 20, LIVE, "keys remembered by second_touch")
    # Which pages of an evicted segment are re-appended: "read_since_written", "prefix_aware" (also
    # a prefix that newer pages of its extent need), or "none" (plain FIFO).
    # NOTE: `raylsm bench trace --quick` L3 hit ratio: read_since_written 0.171, prefix_aware 0.155
    # (it spends the budget on prefixes of one-off chains), LRU model 0.220.
    reinsertion_policy: str = _knob("read_since_written", LIVE, "reinsertion policy name")
    # At most this fraction of a segment is re-appended per roll (spike cap). Write amplification is
    # bounded anyway: a page is re-appended only after a read since its last write, so re-appended
    # bytes never exceed bytes read. 1.0 makes eviction a CLOCK over segments (a read page is never
    # dropped before its second chance).
    # NOTE: simulated on `raylsm bench trace --quick`'s L3 stream, 16 segments a shard, 1 shard:
    # 0.25 -> 0.200, 0.5 -> 0.213, 1.0 -> 0.227 (LRU 0.220); 4 shards: 0.174, 0.165, 0.189.
    # Measured (`raylsm bench trace --quick`, 1 shard, 1.0): 0.234, HiCacheFile 0.211.
    reinsertion_budget_fraction: float = _knob(1.0, LIVE, "fraction of a segment re-appended per roll")
    # Reads a page banks for later evictions (a k-bit CLOCK over segments): a page evicted with n
    # reads since its last write is re-appended with min(n, credits) - 1 of them, so a page read
    # often outlives several turns without a new read. 1: one second chance per read (plain CLOCK).
    # NOTE: the segment-clock model (1 shard, segments of capacity / 256, one free segment), L3 hit
    # vs the LRU model, credits 1 -> 2: agentic 0.05 1.050 -> 1.089, 0.10 0.993 -> 1.005; packaged
    # trace (--sample-conversations 0.25) 0.05 1.030 -> 1.041, 0.10 1.000 -> 0.997; multi-turn 0.05
    # 0.995 -> 1.003, 0.10 0.997 -> 0.995. 3 changes none of these by more than 0.01.
    reinsertion_read_credits: int = _knob(2, LIVE, "reads a page banks for later evictions")
    # Free segments on a background thread (evicting the oldest, re-appending what earned it) so
    # that a put only writes into free space. Off: a put that rolls a segment evicts inline.
    background_reclaim: bool = _knob(True, REOPEN, "evict on a background thread")
    # A put that needs a new segment while the reclaimer has not made room waits this long for it
    # (the write lock is released meanwhile) before it drops the oldest segment whole.
    roll_wait_s: float = _knob(1.0, LIVE, "seconds a roll waits for the reclaimer")
    # Neighbouring reads closer than this are merged into one preadv (the gap is read and dropped).
    merge_gap_bytes: int = _knob(64 * KiB, LIVE, "largest gap a merged read skips")
    # Keep an in-memory set of 64-bit digests of the live page keys (about 9 bytes of RAM per page):
    # probes and put's duplicate check never touch RocksDB. Off: they use multi-get / seek-and-scan.
    resident_index: bool = _knob(True, REOPEN, "in-memory digest set of live keys")
    # RocksDB block cache for index and filter blocks of the pointer index.
    # Fraction of pages whose references the workload statistics track (raylsm/store/
    # workload_stats.py: the miss-ratio curve, ghost hits, hits by depth and age); 0 turns them off.
    workload_sample_rate: float = _knob(1 / 64, REOPEN, "fraction of pages the workload statistics track")
    block_cache_bytes: int = _knob(64 * MiB, REOPEN, "RocksDB block cache bytes")
    # RocksDB memtable size (pointers are 25 bytes; 64 MiB holds ~1M pointers).
    write_buffer_bytes: int = _knob(64 * MiB, LIVE, "RocksDB write_buffer_size")

    def index_write_buffer_bytes(self) -> int:
        """The memtable size the index runs with: write_buffer_bytes, but at most 1/64 of the
        capacity (at least 1 MiB). With one column family RocksDB keeps the WAL until the memtable
        flushes, so the WAL is about this big, and it counts against capacity_bytes.
        NOTE: `raylsm bench trace --quick` (393 MB capacity, 1 shard): a 64 MiB memtable let the WAL
        take ~5% of the budget (L3 hit 0.202); capped at capacity/64 (6 MB), 0.234 again."""
        return max(1 * MiB, min(self.write_buffer_bytes, self.capacity_bytes // 256))

    def validate(self) -> "StoreConfig":
        """Return self, or raise ConfigError naming the first field out of range."""
        _require(self, "segment_bytes", MIN_SEGMENT_BYTES <= self.segment_bytes <= 16 * GiB and self.segment_bytes % 4096 == 0,
                 "a multiple of 4096 in [256 KiB, 16 GiB]")
        _require(self, "capacity_bytes", self.capacity_bytes >= 2 * self.segment_bytes,
                 f">= 2 * segment_bytes ({2 * self.segment_bytes})")
        _require(self, "durability", self.durability in DURABILITY_MODES, f"one of {DURABILITY_MODES}")
        from raylsm.store.admission import ADMISSION_POLICIES
        from raylsm.store.reinsertion import REINSERTION_POLICIES
        _require(self, "admission_policy", self.admission_policy in ADMISSION_POLICIES,
                 f"one of {sorted(ADMISSION_POLICIES)}")
        _require(self, "admission_ghost_entries", 1 <= self.admission_ghost_entries <= 1 << 26, "in [1, 2**26]")
        _require(self, "reinsertion_policy", self.reinsertion_policy in REINSERTION_POLICIES,
                 f"one of {sorted(REINSERTION_POLICIES)}")
        _require(self, "reinsertion_budget_fraction", 0.0 <= self.reinsertion_budget_fraction <= 1.0, "in [0, 1]")
        _require(self, "workload_sample_rate", isinstance(self.workload_sample_rate, (int, float))
                 and 0 <= self.workload_sample_rate <= 1, "in [0, 1]")
        _require(self, "reinsertion_read_credits", isinstance(self.reinsertion_read_credits, int)
                 and 1 <= self.reinsertion_read_credits <= 255, "an int in [1, 255]")
        _require(self, "roll_wait_s", 0.0 <= self.roll_wait_s <= 60.0, "in [0, 60]")
        _require(self, "merge_gap_bytes", 0 <= self.merge_gap_bytes <= 16 * MiB, "in [0, 16 MiB]")
        _require(self, "block_cache_bytes", 1 * MiB <= self.block_cache_bytes <= 64 * GiB, "in [1 MiB, 64 GiB]")
        _require(self, "write_buffer_bytes", 1 * MiB <= self.write_buffer_bytes <= 4 * GiB, "in [1 MiB, 4 GiB]")
        return self

    def with_changes(self, changes: Mapping[str, Any], allow_reopen_fields: bool = False) -> "StoreConfig":
        """A validated copy with `changes` applied; ConfigError for an unknown field, a wrong type,
        or (unless allowed) a field that applies only on reopen."""
        known = {f.name: f for f in dataclasses.fields(self)}
        for name, value in changes.items():
            if name not in known:
                raise ConfigError(f"unknown store config field {name!r}; known: {sorted(known)}")
            expected = type(getattr(self, name))
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                if not (expected is float and isinstance(value, int) and not isinstance(value, bool)):
                    raise ConfigError(f"store config field {name!r} must be {expected.__name__}, got {value!r}")
            if not allow_reopen_fields and applies(name) == REOPEN:
                raise ConfigError(f"store config field {name!r} applies only on reopen")
        return dataclasses.replace(self, **changes).validate()


def applies(field_name: str) -> str:
    """How a change of `field_name` takes effect: "live", "next_segment" or "reopen"."""
    for f in dataclasses.fields(StoreConfig):
        if f.name == field_name:
            return f.metadata["applies"]
    raise ConfigError(f"unknown store config field {field_name!r}")


def _require(config: StoreConfig, name: str, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"store config field {name!r} = {getattr(config, name)!r} is out of range: must be {allowed}")
