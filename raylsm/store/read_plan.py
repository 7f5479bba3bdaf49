"""Read planning: turn a batch's pointers into few large vectored reads.

Pure function, called by the shard store's read path. Pointers are sorted by (segment, offset) and
neighbours closer than `merge_gap_bytes` are merged into one run; the bytes between them (record
headers, value padding) go into scratch parts that the reader drops.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

from raylsm.store.format import Pointer

MAX_PARTS_PER_RUN = 1000  # below IOV_MAX (1024)


class ReadRun(NamedTuple):
    segment_id: int
    offset: int
    # (slot, nbytes): slot >= 0 is the position of a wanted page in the caller's batch; -1 is a gap.
    parts: list[tuple[int, int]]


def plan_reads(wanted: Sequence[tuple[int, Pointer]], merge_gap_bytes: int,
               buffers_per_slot: Mapping[int, int] | None = None) -> list[ReadRun]:
    """Runs covering every wanted (slot, pointer); each run reads contiguous bytes of one segment.
    `buffers_per_slot` gives how many iovecs a slot's page takes (default 1), to stay below IOV_MAX."""
    runs: list[ReadRun] = []
    current: ReadRun | None = None
    end = 0
    iovecs = 0
    for slot, pointer in sorted(wanted, key=lambda item: (item[1].segment_id, item[1].offset)):
        gap = pointer.offset - end
        needed = (buffers_per_slot or {}).get(slot, 1)
        if (current is not None and current.segment_id == pointer.segment_id and 0 <= gap <= merge_gap_bytes
                and iovecs + needed + 1 <= MAX_PARTS_PER_RUN):
            if gap:
                current.parts.append((-1, gap))
                iovecs += 1
            current.parts.append((slot, pointer.length))
            iovecs += needed
        else:
            current = ReadRun(pointer.segment_id, pointer.offset, [(slot, pointer.length)])
            runs.append(current)
            iovecs = needed
        end = pointer.offset + pointer.length
    return runs
