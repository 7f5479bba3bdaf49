"""Verified page reads: plan merged runs, read each run with one vectored read straight into the
caller's buffers, and check every page's checksum.
NOTE: reading a batch's runs in parallel (4 pool threads) measured no gain on `raylsm bench trace
--quick` (get p50/p99 9.8/19.4 ms serial, 10.1/20.7 ms parallel: its batches are few large runs),
so runs are read one after another.

Shared by `ShardStore.get_batch_into` (the segments a store owns) and `LocalSegmentReader` (a client
on the shard's node reading sealed bytes itself). The caller supplies `open_segment(segment_id)`,
which returns a pinned segment (or None if it is gone) and is unpinned here. Thread-safe as long as
`open_segment` is; scratch memory for skipped gaps is per thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from raylsm.errors import CorruptionError
from raylsm.store import format as fmt
from raylsm.store.io_buffers import aligned_empty, page_views, parts_nbytes
from raylsm.store.read_plan import plan_reads


@dataclass
class ReadOutcome:
    """What happened to the wanted pages; `results[slot]` is True per verified hit."""

    results: list[bool]
    hit_bytes: int = 0
    stale: int = 0       # the segment is gone (freed by eviction)
    corrupt: int = 0     # checksum mismatch; the buffer was zeroed
    io_errors: int = 0   # the read failed or came up short
    hit_offsets: dict[int, list[int]] = field(default_factory=dict)  # segment id -> value offsets hit
    failed_slots: list[int] = field(default_factory=list)  # corrupt or unreadable: their pointers must go


def writable_parts(buffer: Any, nbytes: int) -> tuple[memoryview, ...] | None:
    """The caller's output buffer as writable parts totalling `nbytes`, or None if it cannot be."""
    try:
        parts = page_views(buffer)
    except (TypeError, ValueError):
        return None
    if any(part.readonly for part in parts) or parts_nbytes(parts) != nbytes:
        return None
    return parts


def read_verified(wanted: Sequence[tuple[int, fmt.Pointer]], parts_by_slot: dict[int, tuple[memoryview, ...]],
                  slots: int, merge_gap_bytes: int, direct_io: bool,
                  open_segment: Callable[[int], Any]) -> ReadOutcome:
    outcome = ReadOutcome(results=[False] * slots)
    pointers = dict(wanted)
    buffers_per_slot = {slot: len(parts) for slot, parts in parts_by_slot.items()}
    for run in plan_reads(wanted, merge_gap_bytes, buffers_per_slot):
        run_slots = [slot for slot, _ in run.parts if slot >= 0]
        segment = open_segment(run.segment_id)
        if segment is None:
            outcome.stale += len(run_slots)
            continue
        try:
            if not _read_run(segment, run, parts_by_slot, direct_io):
                # One bad spot must not fail the run's other pages: read each on its own.
                readable = []
                for slot in run_slots:
                    if _read_page(segment, pointers[slot], parts_by_slot[slot], direct_io):
                        readable.append(slot)
                    else:
                        outcome.io_errors += 1
                        outcome.failed_slots.append(slot)
                        _zero(parts_by_slot[slot])  # a short read may have filled part of it
                run_slots = readable
        finally:
            segment.unpin()
        hit_offsets = outcome.hit_offsets.setdefault(run.segment_id, [])
        for slot in run_slots:
            pointer = pointers[slot]
            if fmt.checksum_parts(parts_by_slot[slot]) == pointer.checksum:
                outcome.results[slot] = True
                outcome.hit_bytes += pointer.length
                hit_offsets.append(pointer.offset)
            else:
                outcome.corrupt += 1
                outcome.failed_slots.append(slot)
                _zero(parts_by_slot[slot])  # never leave wrong bytes behind
    return outcome


def _read_run(segment: Any, run: Any, parts_by_slot: dict[int, tuple[memoryview, ...]],
              direct_io: bool) -> bool:
    """One vectored read of a merged run; False if it failed."""
    iovecs: list[memoryview] = []
    for slot, nbytes in run.parts:
        if slot >= 0:
            iovecs.extend(parts_by_slot[slot])
        else:
            iovecs.append(_gap_view(nbytes))
    try:
        segment.read_into(run.offset, iovecs, direct_io)
    except (OSError, ValueError, CorruptionError):
        return False
    return True


def _read_page(segment: Any, pointer: fmt.Pointer, parts: tuple[memoryview, ...], direct_io: bool) -> bool:
    try:
        segment.read_into(pointer.offset, list(parts), direct_io)
    except (OSError, ValueError, CorruptionError):
        return False
    return True


def _zero(parts: tuple[memoryview, ...]) -> None:
    for part in parts:
        np.frombuffer(part, dtype=np.uint8)[:] = 0


_gap_buffers = threading.local()


def _gap_view(nbytes: int) -> memoryview:
    """A per-thread aligned scratch buffer for bytes a merged read skips (headers, padding)."""
    scratch = getattr(_gap_buffers, "buffer", None)
    if scratch is None or scratch.nbytes < nbytes:
        scratch = aligned_empty(fmt.align_up(max(nbytes, 64 * 1024)))
        _gap_buffers.buffer = scratch
    return memoryview(scratch)[:nbytes]
