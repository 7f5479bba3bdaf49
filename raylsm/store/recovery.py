"""Recovery: bring a shard directory to a consistent state when it is opened.

Called once by `ShardStore.open`, before any read or write; single-threaded. After a clean close or
a kill -9 at any moment it leaves:
  - no segment file below the low watermark (freed segments whose unlink did not happen);
  - the newest segment cut just past its last intact record (a torn or preallocated tail removed);
  - no pointer to a missing segment or past a segment's end (such pointers are deleted);
  - per-segment live byte counts for the store's accounting.
Pointers to bytes that were written but later damaged are caught by the value checksum on read.

A clean close leaves a snapshot (`write_open_snapshot`: live counts per segment, and the resident
digests in a file); the next open loads it instead of scanning every pointer, and deletes its meta
key first, so an open after a crash always scans. NOTE: `raylsm bench memory` (2 million pages, this
2-core VM): 0.02-0.03 s per million pages from the snapshot (one read of 16 MB), 1.32 s per million
for the scan (3.4-3.7 with one Python step per pointer, 2.37 with np.unique and an iterator's three
calls per pointer; docs/memory.md).
"""

from __future__ import annotations

import logging
import os
from array import array
from dataclasses import dataclass, field

import msgpack
import numpy as np
import xxhash

from raylsm.store import format as fmt
from raylsm.store.digest_set import DigestSet
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
    digests: DigestSet | None = None  # 64-bit digests of every live page key, if asked for
    from_snapshot: bool = False  # loaded from a clean close's snapshot, no pointer scanned


logger = logging.getLogger(__name__)


def recover(segments_dir: str, index: PointerIndex, with_digests: bool = False) -> RecoveredState:
    clean_shutdown = index.get_meta(fmt.META_CLEAN_SHUTDOWN) is not None
    raw_snapshot = index.get_meta(fmt.META_OPEN_SNAPSHOT)
    sequence = index.sequence_number()
    index.delete_meta(fmt.META_OPEN_SNAPSHOT)  # first: a crash after this open must scan
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

    next_id = max(segment_ids[-1] + 1 if segment_ids else 0, low_watermark)
    if clean_shutdown and raw_snapshot is not None and not truncated:
        loaded = _load_snapshot(segments_dir, raw_snapshot, segments, with_digests, sequence)
        if loaded is not None:
            live_bytes, live_pages, digests = loaded
            return RecoveredState(segments, next_id, live_bytes, live_pages, 0, 0, True, digests, from_snapshot=True)

    live_bytes, live_pages, dropped, digests = _scan_pointers(index, segments, with_digests)
    return RecoveredState(segments, next_id, live_bytes, live_pages, dropped, truncated, clean_shutdown, digests)


# The pointer layout of raylsm.store.format ("<BIQIQ", 25 bytes, unpadded), for decoding in bulk.
_POINTER_DTYPE = np.dtype({"names": ["version", "segment_id", "offset", "length", "checksum"],
                           "formats": ["u1", "<u4", "<u8", "<u4", "<u8"], "offsets": [0, 1, 5, 13, 17],
                           "itemsize": fmt.POINTER_BYTES})


_SCAN_CHUNK = 1 << 18  # pointers decoded at once: bounds the scan's transient memory (6.5 MB)


def _scan_pointers(index: PointerIndex, segments: dict[int, Segment], with_digests: bool):
    """Live bytes and pages per segment, the pointers dropped (to a missing segment or past a
    segment's end) and the resident digests, from one pass over the index.
    NOTE: one Python step per pointer cost 3.4 s per million pages (2 million 512-byte pages on this
    2-core VM); the loop now only gathers the raw pointers and key digests, and decodes and checks
    them with numpy, a chunk at a time (gathering every raw pointer first left 63 B of RSS per page
    after the open); a pointer that fails the check is rare (a crash's torn tail) and handled in a
    second pass over the index."""
    segment_ids = np.array(sorted(segments), dtype=np.int64)
    file_bytes = np.array([segments[segment_id].file_bytes for segment_id in sorted(segments)], dtype=np.int64)
    pages_of = np.zeros(len(segment_ids), dtype=np.int64)
    bytes_of = np.zeros(len(segment_ids), dtype=np.int64)
    digest_list = array("Q")
    chunk = bytearray()
    bad = False

    def decode(raw_chunk: bytearray) -> bool:
        """Add one chunk of raw pointers to the counts; False if one of them is not valid."""
        pointers = np.frombuffer(raw_chunk, dtype=_POINTER_DTYPE)
        ids = pointers["segment_id"].astype(np.int64)
        at = np.minimum(np.searchsorted(segment_ids, ids), max(len(segment_ids) - 1, 0))
        if not len(segment_ids):
            return not len(pointers)
        ends = pointers["offset"].astype(np.int64) + pointers["length"].astype(np.int64)
        if not (np.all(segment_ids[at] == ids) and np.all(pointers["version"] == fmt.POINTER_VERSION)
                and np.all(ends <= file_bytes[at])):
            return False
        np.add.at(pages_of, at, 1)
        np.add.at(bytes_of, at, pointers["length"].astype(np.int64))
        return True

    for key, raw in index.scan_pages():
        if len(raw) != fmt.POINTER_BYTES:
            bad = True
            break
        chunk += raw
        if with_digests:
            digest_list.append(key_digest(key))
        if len(chunk) >= _SCAN_CHUNK * fmt.POINTER_BYTES:
            if not decode(chunk):
                bad = True
                break
            chunk = bytearray()
    if not bad and chunk and not decode(chunk):
        bad = True
    if bad:
        dropped = _drop_bad_pointers(index, segments)
        live_bytes, live_pages, _, digests = _scan_pointers(index, segments, with_digests)  # all valid now
        return live_bytes, live_pages, dropped, digests
    live_bytes = {int(segment_id): int(nbytes) for segment_id, nbytes in zip(segment_ids, bytes_of)}
    live_pages = {int(segment_id): int(pages) for segment_id, pages in zip(segment_ids, pages_of)}
    digests = None
    if with_digests:
        digests = DigestSet.from_digests(np.frombuffer(digest_list, dtype=np.uint64))
        del digest_list
    _return_freed_memory()
    return live_bytes, live_pages, 0, digests


def _return_freed_memory() -> None:
    """Hand the heap the scan freed back to the OS (glibc keeps it in its arenas otherwise: the
    scan's block reads and buffers left about 36 B per page of RSS behind). No-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _drop_bad_pointers(index: PointerIndex, segments: dict[int, Segment]) -> int:
    """Delete every pointer that is malformed, into a missing segment or past a segment's end."""
    batch = index.new_batch()
    dropped = 0
    for key, raw in index.scan_pages():
        pointer = fmt.decode_pointer(raw)
        segment = segments.get(pointer.segment_id) if pointer else None
        if segment is None or pointer.offset + pointer.length > segment.file_bytes:
            batch.delete(key)
            dropped += 1
    index.commit(batch)
    return dropped


# Bumped when a resident set written by an older version cannot be trusted: 2 since DigestSet kept
# reinserted pages resident after their eviction (those snapshots hold such pages: scan instead).
DIGESTS_VERSION = 2


def _snapshot_path(segments_dir: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(segments_dir)), fmt.RESIDENT_SNAPSHOT_FILE)


def write_open_snapshot(segments_dir: str, index: PointerIndex, live_bytes: dict[int, int],
                        live_pages: dict[int, int], digests: DigestSet | None, file_bytes: dict[int, int]) -> None:
    """At a clean close, the last write: what the next open needs instead of a pointer scan, and the
    clean-shutdown mark, in one batch. The digest file is written and fsynced before the meta key
    that vouches for it; the meta records the index's sequence number after this batch, so a write
    to the index after the close (by anything) voids the snapshot, and so does a segment file whose
    size changed (`file_bytes`: each segment's size at the close)."""
    meta = {"live_bytes": live_bytes, "live_pages": live_pages, "file_bytes": file_bytes,
            "sequence": index.sequence_number() + 2}
    if digests is not None:
        array = digests.sorted_array()
        path = _snapshot_path(segments_dir)
        with open(path + ".tmp", "wb") as out:
            out.write(array.tobytes())
            out.flush()
            os.fsync(out.fileno())
        os.replace(path + ".tmp", path)
        meta.update(count=int(len(array)), checksum=xxhash.xxh64_intdigest(array.tobytes()),
                    digests_version=DIGESTS_VERSION)
    batch = index.new_batch()
    batch.put(fmt.META_OPEN_SNAPSHOT, msgpack.packb(meta, use_bin_type=True))
    batch.put(fmt.META_CLEAN_SHUTDOWN, b"1")
    index.commit(batch)


def _load_snapshot(segments_dir: str, raw: bytes, segments: dict[int, Segment], with_digests: bool, sequence: int):
    """(live bytes, live pages, digests) from a clean close's snapshot, or None if it does not
    match this directory or the index was written since (then the caller scans)."""
    try:
        meta = msgpack.unpackb(raw, strict_map_key=False)
        if meta.get("sequence") != sequence:
            logger.warning("the index of %s was written after its clean close: scanning it", segments_dir)
            return None
        live_bytes = {int(k): int(v) for k, v in meta["live_bytes"].items()}
        live_pages = {int(k): int(v) for k, v in meta["live_pages"].items()}
        sizes = {int(k): int(v) for k, v in meta["file_bytes"].items()}
        if sizes != {segment_id: segment.file_bytes for segment_id, segment in segments.items()} \
                or set(live_bytes) != set(segments) or set(live_pages) != set(segments):
            logger.warning("the segments of %s changed after its clean close: scanning the index", segments_dir)
            return None
        digests = None
        if with_digests:
            if "count" not in meta or meta.get("digests_version") != DIGESTS_VERSION:
                return None  # (none, or written by a version whose resident set kept evicted pages)
            with open(_snapshot_path(segments_dir), "rb") as source:
                data = source.read()
            if len(data) != 8 * meta["count"] or xxhash.xxh64_intdigest(data) != meta["checksum"]:
                return None
            digests = DigestSet(np.frombuffer(data, dtype=np.uint64).copy())
        return live_bytes, live_pages, digests
    except (OSError, ValueError, KeyError, TypeError, msgpack.exceptions.ExtraData) as error:
        logger.warning("open snapshot of %s unusable (%r): scanning the index", segments_dir, error)
        return None
