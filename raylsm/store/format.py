"""The on-disk format of a shard: segment files, batch records, pointers, meta keys, file names.

This module and docs/format.md are the only places the format is defined. Called by the segment
file, the pointer index, recovery and the shard store. Pure functions, thread-safe.

Directory of one shard:
    <root>/index/                  RocksDB (rocksdict, raw mode): page key -> pointer, plus meta keys
    <root>/segments/<id>.seg       append-only segment files, id = 10 decimal digits, increasing

Segment file: a sequence of batch records, each starting at a BLOCK_BYTES-aligned offset; a
preallocated, never-written tail is zeros. One record per append (one put_batch chunk), written
with its values in one vectored write:

    header (header_bytes, a multiple of BLOCK_BYTES)
        prefix, 32 bytes, little-endian:
            magic b"RLSB" | u16 format version | u16 entry count | u32 header_bytes | u32 reserved 0
            | u64 batch_bytes (header + values, a multiple of BLOCK_BYTES) | u64 header checksum
        entry_count x entry, ENTRY_BYTES each:
            page key (61) | u32 value length | u32 value offset within the record
        zero padding
    values, each at a BLOCK_BYTES-aligned offset within the record, zero-padded to BLOCK_BYTES

The header checksum is xxh3_64 over the whole header with the checksum field zeroed. A reader that
meets a block without the magic, a bad header checksum or a record running past the file end has
found the end of the segment (a torn or never-written tail). A value's checksum (xxh3_64 of its
bytes) lives only in its pointer and is verified on every read: the header is built before the
checksums, so that the header and the values go out in one write while the checksums are computed.
A record whose header survived a crash but whose values were torn is harmless: its pointers were
never committed (they are committed only after the write returned), so nothing reads it.

Pointer (the RocksDB value of a page key), 25 bytes little-endian:
    u8 pointer version | u32 segment id | u64 value offset in the segment | u32 length | u64 checksum
"""

from __future__ import annotations

import re
import struct
from typing import NamedTuple, Sequence

import numpy as np
import xxhash

from raylsm.store.page_key import KEY_BYTES
from raylsm.store.io_buffers import aligned_zeros

FORMAT_VERSION = 2  # 2: value checksums only in pointers, not in record headers
BLOCK_BYTES = 4096

# ---- checksums --------------------------------------------------------------------------------


def checksum(buffer: object) -> int:
    """xxh3_64 of a buffer's bytes (any buffer-protocol object)."""
    return xxhash.xxh3_64_intdigest(buffer)


def checksum_parts(parts: Sequence[object]) -> int:
    """xxh3_64 of the concatenation of `parts`, without concatenating them."""
    if len(parts) == 1:
        return xxhash.xxh3_64_intdigest(parts[0])
    hasher = xxhash.xxh3_64()
    for part in parts:
        hasher.update(part)
    return hasher.intdigest()


# ---- batch records ----------------------------------------------------------------------------

BATCH_MAGIC = b"RLSB"
_PREFIX = struct.Struct("<4sHHIIQQ")
PREFIX_BYTES = _PREFIX.size  # 32
_ENTRY_TAIL = struct.Struct("<II")
ENTRY_BYTES = KEY_BYTES + _ENTRY_TAIL.size  # 69
MAX_ENTRIES_PER_BATCH = 0xFFFF
_CHECKSUM_FIELD = slice(PREFIX_BYTES - 8, PREFIX_BYTES)


def align_up(nbytes: int) -> int:
    return -(-nbytes // BLOCK_BYTES) * BLOCK_BYTES


class BatchEntry(NamedTuple):
    key: bytes
    length: int
    offset_in_batch: int


class BatchLayout(NamedTuple):
    header_bytes: int
    value_offsets: list[int]  # within the record
    batch_bytes: int


def header_bytes_for(entry_count: int) -> int:
    return align_up(PREFIX_BYTES + entry_count * ENTRY_BYTES)


def aligned_sizes(value_lengths: Sequence[int]) -> np.ndarray:
    """Each length rounded up to whole blocks, as int64 (one numpy pass)."""
    lengths = np.asarray(value_lengths, dtype=np.int64)
    return -(-lengths // BLOCK_BYTES) * BLOCK_BYTES


def plan_batch(value_lengths: Sequence[int]) -> BatchLayout:
    """Where each value goes inside one record, and the record's total size."""
    header_bytes = header_bytes_for(len(value_lengths))
    ends = np.cumsum(aligned_sizes(value_lengths)) + header_bytes
    offsets = [header_bytes, *ends[:-1].tolist()] if len(value_lengths) else []
    return BatchLayout(header_bytes, offsets, int(ends[-1]) if len(value_lengths) else header_bytes)


# A record header's entries as numpy lays them out (the key, then "<II": length, value offset).
_ENTRY_DTYPE = np.dtype({"names": ["key", "length", "value_offset"], "formats": [f"S{KEY_BYTES}", "<u4", "<u4"],
                         "offsets": [0, KEY_BYTES, KEY_BYTES + 4], "itemsize": ENTRY_BYTES})


def encode_batch_header(layout: BatchLayout, keys: Sequence[bytes], lengths: Sequence[int]) -> np.ndarray:
    """The header block(s) of one record of `keys` with values of `lengths`, placed by `layout`,
    as an aligned buffer ready for O_DIRECT.
    NOTE: the entries are filled by numpy field assignment, not a struct.pack_into per entry (with
    `plan_batch` and the write path's `_fit` in numpy too, a 128-page put of 64 KiB pages took
    3.03-3.13 ms of CPU against 3.05-3.28 before, two paired runs of a /tmp script: small beside the
    write itself)."""
    if len(keys) > MAX_ENTRIES_PER_BATCH:
        raise ValueError(f"at most {MAX_ENTRIES_PER_BATCH} entries per batch record")
    header = aligned_zeros(layout.header_bytes)
    raw = memoryview(header)
    _PREFIX.pack_into(raw, 0, BATCH_MAGIC, FORMAT_VERSION, len(keys), layout.header_bytes, 0,
                      layout.batch_bytes, 0)
    if keys:
        entries = np.frombuffer(raw, dtype=_ENTRY_DTYPE, count=len(keys), offset=PREFIX_BYTES)
        entries["key"] = keys
        entries["length"] = lengths
        entries["value_offset"] = layout.value_offsets
    struct.pack_into("<Q", raw, _CHECKSUM_FIELD.start, checksum(raw))
    return header


class BatchPrefix(NamedTuple):
    entry_count: int
    header_bytes: int
    batch_bytes: int


def decode_batch_prefix(block: bytes | memoryview) -> BatchPrefix | None:
    """The prefix of the record starting at `block`, or None if no record starts there."""
    if len(block) < PREFIX_BYTES:
        return None
    magic, version, count, header_bytes, _reserved, batch_bytes, _sum = _PREFIX.unpack_from(block, 0)
    if magic != BATCH_MAGIC:
        return None
    if version != FORMAT_VERSION:
        return None  # a damaged header (the store's format version is checked once, at open)
    if header_bytes != header_bytes_for(count) or batch_bytes < header_bytes or batch_bytes % BLOCK_BYTES:
        return None
    return BatchPrefix(count, header_bytes, batch_bytes)


def decode_batch_entries(header: bytes | memoryview) -> list[BatchEntry] | None:
    """The entries of a complete header, or None if its checksum or framing is wrong."""
    prefix = decode_batch_prefix(header)
    if prefix is None or len(header) < prefix.header_bytes:
        return None
    image = bytearray(header[: prefix.header_bytes])
    stored = struct.unpack_from("<Q", image, _CHECKSUM_FIELD.start)[0]
    image[_CHECKSUM_FIELD] = b"\0" * 8
    if checksum(image) != stored:
        return None
    entries = []
    cursor = PREFIX_BYTES
    for _ in range(prefix.entry_count):
        key = bytes(image[cursor : cursor + KEY_BYTES])
        length, offset = _ENTRY_TAIL.unpack_from(image, cursor + KEY_BYTES)
        if offset % BLOCK_BYTES or offset < prefix.header_bytes or offset + length > prefix.batch_bytes:
            return None
        entries.append(BatchEntry(key, length, offset))
        cursor += ENTRY_BYTES
    return entries


# ---- pointers ---------------------------------------------------------------------------------

POINTER_VERSION = 1
_POINTER = struct.Struct("<BIQIQ")
POINTER_BYTES = _POINTER.size  # 25


class Pointer(NamedTuple):
    segment_id: int
    offset: int
    length: int
    checksum: int


def encode_pointer(pointer: Pointer) -> bytes:
    return _POINTER.pack(POINTER_VERSION, *pointer)


def decode_pointer(raw: bytes) -> Pointer | None:
    """The pointer stored in `raw`, or None if it is not a valid pointer (treated as a miss)."""
    if len(raw) != POINTER_BYTES or raw[0] != POINTER_VERSION:
        return None
    _version, segment_id, offset, length, value_checksum = _POINTER.unpack(raw)
    return Pointer(segment_id, offset, length, value_checksum)


# ---- meta keys (tag 0x00, below every page key) ----------------------------------------------

META_FORMAT_VERSION = b"\x00format_version"
META_LOW_WATERMARK = b"\x00low_watermark"  # segments with a smaller id have been freed
META_CLEAN_SHUTDOWN = b"\x00clean_shutdown"
# The tier's namespace table as this shard last applied it (msgpack; raylsm.namespaces): which
# namespace ids were cleared (retired), so a restarted controller can rebuild it from the shards.
META_NAMESPACE_TABLE = b"\x00namespace_table"
# Written by a clean close, deleted by the next open (msgpack: the live bytes and pages per segment,
# and the count and xxh64 of RESIDENT_SNAPSHOT_FILE, the sorted resident digests as raw uint64):
# a clean reopen loads these instead of scanning every pointer (raylsm.store.recovery).
META_OPEN_SNAPSHOT = b"\x00open_snapshot"
# Blobs of the tier above the store (ShardStore.tier_meta): b"\x00tier:" + name.
META_TIER_PREFIX = b"\x00tier:"
RESIDENT_SNAPSHOT_FILE = "resident.u64"
_U32 = struct.Struct("<I")


def encode_u32(value: int) -> bytes:
    return _U32.pack(value)


def decode_u32(raw: bytes) -> int:
    return _U32.unpack(raw)[0]


# ---- file names -------------------------------------------------------------------------------

INDEX_DIR = "index"
SEGMENTS_DIR = "segments"
_SEGMENT_NAME = re.compile(r"^(\d{10})\.seg$")


def segment_file_name(segment_id: int) -> str:
    return f"{segment_id:010d}.seg"


def parse_segment_file_name(name: str) -> int | None:
    match = _SEGMENT_NAME.match(name)
    return int(match.group(1)) if match else None
