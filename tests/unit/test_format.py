"""The on-disk format and the segment file: pointer and record encodings, byte flips in every header
field, torn and truncated records, vectored I/O with short reads and writes."""

from __future__ import annotations

import errno
import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raylsm.errors import CorruptionError
from raylsm.store import format as fmt
from raylsm.store import segment as segment_module
from raylsm.store.segment import Segment

MiB = 1 << 20


def _key(i: int) -> bytes:
    return b"\x01" + i.to_bytes(60, "big")


def _record(values: list[bytes], first_key: int = 0):
    """(header array, iovecs, batch_bytes, entries) of one record holding `values`."""
    layout = fmt.plan_batch([len(v) for v in values])
    entries = [fmt.BatchEntry(_key(first_key + i), len(v), offset)
               for i, (v, offset) in enumerate(zip(values, layout.value_offsets))]
    header = fmt.encode_batch_header(layout, [e.key for e in entries], [e.length for e in entries])
    iovecs = [memoryview(header)]
    for v in values:
        iovecs.append(memoryview(v))
        pad = fmt.align_up(len(v)) - len(v)
        if pad:
            iovecs.append(memoryview(bytes(pad)))
    return header, iovecs, layout.batch_bytes, entries


# ---- pointers ---------------------------------------------------------------------------------

@given(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))
def test_pointer_roundtrip(segment_id, offset, length, value_checksum):
    pointer = fmt.Pointer(segment_id, offset, length, value_checksum)
    raw = fmt.encode_pointer(pointer)
    assert len(raw) == fmt.POINTER_BYTES == 25
    assert fmt.decode_pointer(raw) == pointer


@pytest.mark.parametrize("raw", [b"", b"garbage", b"\x01" * 24, b"\x01" * 26, b"\x02" + b"\0" * 24, b"\0" * 25])
def test_decode_pointer_rejects_garbage(raw):
    assert fmt.decode_pointer(raw) is None


# ---- records ----------------------------------------------------------------------------------

@given(st.lists(st.integers(0, 20000), min_size=1, max_size=60))
def test_plan_batch_aligns_every_value(lengths):
    layout = fmt.plan_batch(lengths)
    assert layout.header_bytes % fmt.BLOCK_BYTES == 0
    assert layout.header_bytes >= fmt.PREFIX_BYTES + len(lengths) * fmt.ENTRY_BYTES
    assert layout.batch_bytes % fmt.BLOCK_BYTES == 0
    cursor = layout.header_bytes
    for length, offset in zip(lengths, layout.value_offsets):
        assert offset % fmt.BLOCK_BYTES == 0 and offset >= cursor
        cursor = offset + length
    assert cursor <= layout.batch_bytes


def test_record_header_roundtrip():
    values = [b"a" * 10, b"b" * 4096, b"", b"c" * 5000]
    header, _, batch_bytes, entries = _record(values)
    prefix = fmt.decode_batch_prefix(header)
    assert prefix == fmt.BatchPrefix(4, fmt.header_bytes_for(4), batch_bytes)
    assert fmt.decode_batch_entries(header) == entries
    assert fmt.decode_batch_entries(bytes(header)[: fmt.BLOCK_BYTES - 1]) is None  # incomplete header


def test_a_zeroed_block_is_not_a_record():
    assert fmt.decode_batch_prefix(bytes(fmt.BLOCK_BYTES)) is None
    assert fmt.decode_batch_entries(bytes(fmt.BLOCK_BYTES)) is None
    assert fmt.decode_batch_prefix(b"RLSB") is None  # shorter than a prefix


@settings(max_examples=300)
@given(st.integers(0, fmt.BLOCK_BYTES - 1), st.integers(1, 255))
def test_a_flipped_header_byte_never_decodes_to_other_entries(position, mask):
    values = [b"x" * 100, b"y" * 9000, b"z" * 4096]
    header, _, _, entries = _record(values)
    damaged = bytearray(header)
    damaged[position] ^= mask
    try:
        decoded = fmt.decode_batch_entries(bytes(damaged))
    except CorruptionError:
        return  # acceptable at the decoder: the caller must treat it as the end of the segment
    assert decoded is None


def test_encode_refuses_too_many_entries():
    count = fmt.MAX_ENTRIES_PER_BATCH + 1
    layout = fmt.plan_batch([0] * count)
    with pytest.raises(ValueError):
        fmt.encode_batch_header(layout, [_key(0)] * count, [0] * count)


def test_meta_and_file_name_helpers():
    assert fmt.decode_u32(fmt.encode_u32(123456)) == 123456
    assert fmt.segment_file_name(42) == "0000000042.seg"
    assert fmt.parse_segment_file_name("0000000042.seg") == 42
    for name in ("42.seg", "0000000042.seg.tmp", "x000000042.seg", "0000000042.sst"):
        assert fmt.parse_segment_file_name(name) is None


# ---- segment files ----------------------------------------------------------------------------

@pytest.fixture
def segment_dir(tmp_path):
    return str(tmp_path)


def _write_records(segment: Segment, records: list[list[bytes]], use_direct_io: bool = True) -> list[int]:
    offsets = []
    first_key = 0
    for values in records:
        _, iovecs, batch_bytes, _ = _record(values, first_key)
        offsets.append(_append(segment, iovecs, batch_bytes, use_direct_io))
        first_key += len(values)
    return offsets


def _append(segment, iovecs, nbytes, use_direct_io):
    """Reserve and write one record (header and values in one write), as the shard store does."""
    offset = segment.reserve(nbytes)
    segment.write_at(iovecs, offset, use_direct_io)
    return offset


@pytest.mark.parametrize("use_direct_io", [True, False])
def test_segment_append_read_walk_seal(segment_dir, use_direct_io):
    segment = Segment.create(segment_dir, 3, MiB, preallocate=True)
    assert os.path.getsize(segment.path) == MiB and segment.file_bytes == MiB
    records = [[b"a" * 100, b"b" * 8192], [b"c" * 4096], [bytes(range(256)) * 20]]
    offsets = _write_records(segment, records, use_direct_io)
    assert offsets[0] == 0 and all(o % fmt.BLOCK_BYTES == 0 for o in offsets)
    walked = list(segment.walk())  # the preallocated zero tail ends the walk
    assert [offset for offset, _ in walked] == offsets
    assert [[e.length for e in entries] for _, entries in walked] == [[len(v) for v in r] for r in records]
    for (offset, entries), values in zip(walked, records):
        for entry, value in zip(entries, values):
            out = bytearray(len(value))
            segment.read_into(offset + entry.offset_in_batch, [memoryview(out)], use_direct_io)
            assert bytes(out) == value
    end = segment.written_end()
    assert end == segment.write_offset
    segment.seal()
    assert os.path.getsize(segment.path) == end == segment.file_bytes and segment.remaining_bytes() == 0
    with pytest.raises(ValueError):
        _write_records(segment, [[b"late"]])
    segment.close()
    reopened = Segment.open_sealed(segment_dir, 3)
    assert [offset for offset, _ in reopened.walk()] == offsets
    reopened.close()


def test_segment_append_refuses_a_record_that_does_not_fit(segment_dir):
    segment = Segment.create(segment_dir, 0, MiB, preallocate=False)
    _, iovecs, batch_bytes, _ = _record([bytes(MiB - fmt.BLOCK_BYTES)])
    assert batch_bytes == MiB
    _append(segment, iovecs, batch_bytes, True)
    _, iovecs, batch_bytes, _ = _record([b"x"])
    with pytest.raises(ValueError):
        _append(segment, iovecs, batch_bytes, True)
    assert segment.write_offset == MiB
    segment.close()


# Fields of the 32-byte record prefix: magic, version, count, header_bytes, reserved, batch_bytes, checksum;
# then an entry's key, length and offset.
HEADER_POSITIONS = {"magic": 0, "format_version": 4, "entry_count": 6, "header_bytes": 8, "reserved": 12,
                    "batch_bytes": 16, "header_checksum": 24, "entry_key": 40, "entry_length": 32 + 61,
                    "entry_offset": 32 + 65, "padding": 3000}


@pytest.mark.parametrize("field", list(HEADER_POSITIONS))
def test_walk_stops_at_a_flipped_header_byte(segment_dir, field):
    segment = Segment.create(segment_dir, 0, MiB, preallocate=True)
    offsets = _write_records(segment, [[b"a" * 5000], [b"b" * 5000, b"c" * 10], [b"d" * 5000]])
    with open(segment.path, "r+b") as f:
        position = offsets[1] + HEADER_POSITIONS[field]
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ 0x5A]))
    assert [offset for offset, _ in segment.walk()] == offsets[:1]
    assert segment.written_end() == offsets[1]
    segment.close()


def test_walk_stops_at_a_record_running_past_the_file_end(segment_dir):
    segment = Segment.create(segment_dir, 0, MiB, preallocate=False)
    offsets = _write_records(segment, [[b"a" * 5000], [b"b" * 50000]])
    os.truncate(segment.path, offsets[1] + fmt.BLOCK_BYTES + 10)  # header intact, values torn
    assert [offset for offset, _ in segment.walk()] == offsets[:1]
    os.truncate(segment.path, offsets[1] + 100)  # header torn
    assert [offset for offset, _ in segment.walk()] == offsets[:1]
    segment.close()


def test_full_pwritev_finishes_after_short_writes(segment_dir, monkeypatch):
    real = os.pwritev

    def short_pwritev(fd, buffers, offset):
        # Write at most 1000 bytes of the first buffer per call.
        first = memoryview(buffers[0])[:1000]
        return real(fd, [first], offset)

    monkeypatch.setattr(segment_module.os, "pwritev", short_pwritev)
    path = os.path.join(segment_dir, "f")
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        parts = [memoryview(b"a" * 2500), memoryview(b""), memoryview(b"b" * 10), memoryview(b"c" * 3000)]
        segment_module.full_pwritev(fd, parts, 7)
        monkeypatch.undo()
        assert os.pread(fd, 6000, 0) == b"\0" * 7 + b"a" * 2500 + b"b" * 10 + b"c" * 3000
    finally:
        os.close(fd)


def test_full_pwritev_reports_a_write_of_nothing(segment_dir, monkeypatch):
    monkeypatch.setattr(segment_module.os, "pwritev", lambda fd, buffers, offset: 0)
    with pytest.raises(OSError) as raised:
        segment_module.full_pwritev(0, [memoryview(b"x")], 0)
    assert raised.value.errno == errno.EIO


def test_full_preadv_fills_across_short_reads_and_detects_the_file_end(segment_dir, monkeypatch):
    path = os.path.join(segment_dir, "f")
    data = np.random.default_rng(1).integers(0, 256, 9000, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(data)
    real = os.preadv
    monkeypatch.setattr(segment_module.os, "preadv",
                        lambda fd, buffers, offset: real(fd, [memoryview(buffers[0])[:777]], offset))
    fd = os.open(path, os.O_RDONLY)
    try:
        a, b = bytearray(3000), bytearray(5000)
        segment_module.full_preadv(fd, [memoryview(a), memoryview(b)], 1000)
        assert bytes(a) + bytes(b) == data[1000:9000]
        with pytest.raises(CorruptionError):
            segment_module.full_preadv(fd, [memoryview(bytearray(100))], 8950)
    finally:
        os.close(fd)


def test_a_retired_segment_stays_readable_while_pinned(segment_dir):
    segment = Segment.create(segment_dir, 0, MiB, preallocate=True)
    offsets = _write_records(segment, [[b"p" * 4096]])
    assert segment.pin()
    segment.retire()
    assert not os.path.exists(segment.path)
    assert not segment.pin()  # no new readers after retirement
    out = bytearray(4096)
    segment.read_into(offsets[0] + fmt.BLOCK_BYTES, [memoryview(out)], True)
    assert bytes(out) == b"p" * 4096
    segment.unpin()
    with pytest.raises(OSError):  # descriptors closed once the last pin dropped
        segment.read_into(0, [memoryview(out)], False)


def test_create_refuses_an_existing_file_and_leaves_nothing_on_failure(segment_dir, monkeypatch):
    Segment.create(segment_dir, 5, MiB, preallocate=False).close()
    with pytest.raises(FileExistsError):
        Segment.create(segment_dir, 5, MiB, preallocate=False)

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segment_module.os, "posix_fallocate", no_space)
    with pytest.raises(OSError) as raised:
        Segment.create(segment_dir, 6, MiB, preallocate=True)
    assert raised.value.errno == errno.ENOSPC
    assert sorted(os.listdir(segment_dir)) == [fmt.segment_file_name(5)]


def test_record_prefix_layout_matches_the_documented_format():
    header, _, batch_bytes, _ = _record([b"v" * 10])
    magic, version, count, header_bytes, reserved, batch, _ = struct.unpack_from("<4sHHIIQQ", header, 0)
    assert (magic, version, count, header_bytes, reserved, batch) == (
        b"RLSB", fmt.FORMAT_VERSION, 1, fmt.BLOCK_BYTES, 0, batch_bytes)
