"""Recovery: bring a shard directory to a consistent state when it is opened.

Called once by `ShardStore.open`, before any read or write; single-threaded. After a clean close or
a kill -9 at any moment it leaves:
  - no segment file below the low watermark (freed segments whose unlink did not happen);
  - the newest segment cut just past its last intact record (a torn or preallocated tail removed);
  - no pointer to a missing segment or past a segment's end (such pointers are deleted);
  - per-segment live byte counts for the store's accounting.
Pointers to bytes that were written but later damaged are caught by the value checksum on read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from raylsm.store import format as fmt
from raylsm.store.page_key import key_digest
from raylsm.store.pointer_index import PointerIndex
from raylsm.store.segment import Segment


@dataclass
class RecoveredState:
    segments: dict[int, Segment]
    next_segment_id: int
    live_bytes: dict[int, int] = field(default_factory=dict)
    live_pages: dict[int, int] = field(default_factory=dict)
    dropped_pointers: int = 0
    truncated_bytes: int = 0
    clean_shutdown: bool = False
    digests: set[int] | None = None  # 64-bit digests of every live page key, if asked for


def recover(segments_dir: str, index: PointerIndex, with_digests: bool = False) -> RecoveredState:
    clean_shutdown = index.get_meta(fmt.META_CLEAN_SHUTDOWN) is not None
    index.delete_meta(fmt.META_CLEAN_SHUTDOWN)
    raw_watermark = index.get_meta(fmt.META_LOW_WATERMARK)
    low_watermark = fmt.decode_u32(raw_watermark) if raw_watermark else 0

    segment_ids = []
    for name in os.listdir(segments_dir):
        segment_id = fmt.parse_segment_file_name(name)
        if segment_id is None:
            continue
        if segment_id < low_watermark:
            os.unlink(os.path.join(segments_dir, name))
        else:
            segment_ids.append(segment_id)
    segment_ids.sort()

    segments = {segment_id: Segment.open_sealed(segments_dir, segment_id) for segment_id in segment_ids}
    truncated = 0
    if segment_ids:
        # Only the newest segment can have been active; older ones were sealed (truncated) on roll.
        newest = segments[segment_ids[-1]]
        end = newest.written_end()
        if end != newest.file_bytes:
            truncated = newest.file_bytes - end
            newest.truncate(end)

    live_bytes = {segment_id: 0 for segment_id in segment_ids}
    live_pages = dict(live_bytes)
    dropped = 0
    digests: set[int] | None = set() if with_digests else None
    batch = index.new_batch()
    for key, raw in index.scan_pages():
        pointer = fmt.decode_pointer(raw)
        segment = segments.get(pointer.segment_id) if pointer else None
        if segment is None or pointer.offset + pointer.length > segment.file_bytes:
            batch.delete(key)
            dropped += 1
            continue
        live_bytes[pointer.segment_id] += pointer.length
        live_pages[pointer.segment_id] += 1
        if digests is not None:
            digests.add(key_digest(key))
    index.commit(batch)

    next_id = max(segment_ids[-1] + 1 if segment_ids else 0, low_watermark)
    return RecoveredState(segments, next_id, live_bytes, live_pages, dropped, truncated, clean_shutdown, digests)
