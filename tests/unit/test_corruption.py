"""Byte flips and truncation of every on-disk structure: a value, a record header (in an older and in
the newest segment), a pointer in RocksDB, a truncated or deleted segment file. The outcome is always
a miss (never wrong bytes, never an exception), counted, and everything intact is still served."""

from __future__ import annotations

import os

import numpy as np
import pytest
from rocksdict import Options, Rdict

from raylsm.store import format as fmt

KiB = 1 << 10
MiB = 1 << 20
PAGE = 64 * KiB
RECORD = fmt.BLOCK_BYTES + 3 * PAGE  # a batch of three 64 KiB pages


def _flip(path: str, offset: int, mask: int = 0x5A) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ mask]))


def _pointers(store, keys):
    return store.locate_batch(keys)[2]


def _write_records(store, kit, records: int, tag="r"):
    """`records` batches of three 64 KiB pages; five records fill a 1 MiB segment."""
    keys, values = [], []
    for r in range(records):
        batch = [kit.key((tag, r, i)) for i in range(3)]
        batch_values = [kit.value((tag, r, i), PAGE) for i in range(3)]
        assert store.put_batch(batch, batch_values) == [True] * 3
        keys.append(batch)
        values.append(batch_values)
    return keys, values


def _check(store, kit, keys, values, expect_hit, miss_buffer_untouched_or_zeroed=True):
    """Every page where expect_hit(i) is True is a hit with its exact bytes; where False, a miss with
    a zeroed or untouched buffer (unless a failed read may have partly filled it); where None, either."""
    flat_keys = [k for batch in keys for k in batch]
    flat_values = [v for batch in values for v in batch]
    outs = [np.full(PAGE, 0xEE, np.uint8) for _ in flat_keys]
    results = store.get_batch_into(flat_keys, outs)
    for i, (ok, out, value) in enumerate(zip(results, outs, flat_values)):
        expected = expect_hit(i)
        if expected is None:  # either outcome, but a hit has the exact bytes
            assert not ok or out.tobytes() == value.tobytes(), f"page {i}"
        elif expected:
            assert ok and out.tobytes() == value.tobytes(), f"page {i}"
        else:
            assert not ok, f"page {i}"
            assert not miss_buffer_untouched_or_zeroed or (out == 0).all() or (out == 0xEE).all(), f"page {i}: buffer holds bytes after a miss"
    return results


# ---- values ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("reopen", [False, True])
@pytest.mark.parametrize("where", ["first_byte", "middle", "last_byte"])
def test_flipped_value_byte_is_a_counted_miss_with_a_zeroed_buffer(store_factory, kit, reopen, where):
    store = store_factory()
    keys, values = _write_records(store, kit, 2)
    victim = _pointers(store, [keys[0][1]])[0]
    at = {"first_byte": 0, "middle": PAGE // 2, "last_byte": PAGE - 1}[where]
    if reopen:
        store.close()
    _flip(kit.segment_path(store.root, victim.segment_id), victim.offset + at)
    if reopen:
        store = store_factory()
    _check(store, kit, keys, values, expect_hit=lambda i: i != 1)
    c = kit.counters(store)
    assert c["gets_miss_corrupt"] == 1 and c["gets_hit"] == 5
    # The failed read dropped its pointer: absent now (a re-put stores it again, tests/unit/test_heal.py).
    assert store.get_batch([keys[0][1]]) == [None]
    assert kit.counters(store)["gets_miss_corrupt"] == 1 and kit.counters(store)["healed_pages"] == 1
    assert store.probe([keys[0][1]]) == 0


def test_flipped_padding_byte_does_not_matter(store_factory, kit):
    store = store_factory()
    keys = kit.keys(2)
    values = [kit.value(i, 5000) for i in range(2)]
    store.put_batch(keys, values)
    pointer = _pointers(store, keys[:1])[0]
    _flip(kit.segment_path(store.root, pointer.segment_id), pointer.offset + 5000 + 10)  # in the padding
    assert kit.read_all(store, keys) == [v.tobytes() for v in values]


# ---- record headers -----------------------------------------------------------------------------

HEADER_FIELDS = {"magic": 1, "format_version": 4, "entry_count": 6, "batch_bytes": 17, "header_checksum": 25,
                 "entry_key": 40, "entry_value_checksum": 32 + 69, "padding": 3000}
def _header_params(where: str):
    return list(HEADER_FIELDS)


@pytest.mark.parametrize("field", _header_params("put_batch raises from the eviction walk"))
def test_flipped_header_in_an_older_segment_stops_the_eviction_walk_there(store_factory, kit, field):
    store = store_factory(capacity_bytes=2 * MiB, reinsertion_budget_fraction=0.5)
    keys, values = _write_records(store, kit, 5)  # fills segment 0
    assert {p.segment_id for p in _pointers(store, [k for b in keys for k in b])} == {0}
    store.get_batch([k for b in keys for k in b])  # every page earned reinsertion
    record2 = _pointers(store, keys[2][:1])[0].offset - fmt.BLOCK_BYTES
    _flip(kit.segment_path(store.root, 0), record2 + HEADER_FIELDS[field])
    # Pointers are intact: reads still verify by checksum and serve the bytes.
    _check(store, kit, keys, values, expect_hit=lambda i: True)
    i = 0
    while kit.counters(store)["evicted_segments"] == 0:  # evict segment 0
        store.put_batch([kit.key(("fill", i))], [kit.value(("fill", i), PAGE)])
        i += 1
    c = kit.counters(store)
    # The walk saw only records 0 and 1: their six pages fit the 512 KiB budget and were reinserted.
    assert c["reinserted_pages"] == 6 and c["evicted_pages"] == 0
    _check(store, kit, keys, values, expect_hit=lambda i: i < 6)
    # Records 2-4 were hidden from the walk, but eviction found their pointers in the index and
    # dropped them with the segment: their pages are plain misses, not pointers into freed bytes.
    assert kit.counters(store)["gets_miss_stale"] == 0
    assert store.probe([k for b in keys[2:] for k in b]) == 0
    # Nothing dangles after a reopen either; the pages can be stored again.
    store.close()
    store = store_factory()
    assert store.recovery.dropped_pointers == 0
    assert store.put_batch(keys[3], values[3]) == [True] * 3
    _check(store, kit, keys, values, expect_hit=lambda i: i < 6 or 9 <= i < 12)


@pytest.mark.parametrize("field", _header_params("the store cannot be opened"))
def test_flipped_header_in_the_newest_segment_truncates_it_there_on_open(store_factory, kit, field):
    store = store_factory()
    keys, values = _write_records(store, kit, 4)
    store.close()
    path = kit.segment_path(store.root, 0)
    size = os.path.getsize(path)
    assert size == 4 * RECORD  # sealed on close
    _flip(path, 2 * RECORD + HEADER_FIELDS[field])
    store = store_factory()
    assert store.recovery.truncated_bytes == size - 2 * RECORD
    assert store.recovery.dropped_pointers == 6
    assert os.path.getsize(path) == 2 * RECORD
    _check(store, kit, keys, values, expect_hit=lambda i: i < 6)
    assert kit.counters(store)["gets_miss_absent"] == 6
    # The store takes new writes (into a new segment) and serves them.
    assert store.put_batch(keys[2], values[2]) == [True] * 3
    _check(store, kit, keys, values, expect_hit=lambda i: i < 9)


# ---- pointers in RocksDB ------------------------------------------------------------------------

def test_garbage_pointers_are_misses_not_exceptions(store_factory, kit):
    store = store_factory()
    keys, values = _write_records(store, kit, 3)
    flat = [k for b in keys for k in b]
    good = _pointers(store, flat)
    store.close()
    p = good
    garbage = {
        0: b"garbage",                                                                  # wrong length
        1: b"\x09" + fmt.encode_pointer(p[1])[1:],                                      # unknown version
        2: fmt.encode_pointer(fmt.Pointer(77, p[2].offset, p[2].length, p[2].checksum)),  # no such segment
        3: fmt.encode_pointer(fmt.Pointer(0, 8 * MiB, PAGE, p[3].checksum)),            # past the end
        4: fmt.encode_pointer(fmt.Pointer(0, p[4].offset, PAGE, p[4].checksum ^ 1)),    # wrong checksum
        5: fmt.encode_pointer(fmt.Pointer(0, p[5].offset + 100, PAGE, p[5].checksum)),  # unaligned offset
        6: fmt.encode_pointer(fmt.Pointer(0, p[6].offset, PAGE - 1, p[6].checksum)),    # shorter length
        7: b"",                                                                         # empty
    }
    db = Rdict(os.path.join(store.root, fmt.INDEX_DIR), Options(raw_mode=True))
    for i, raw in garbage.items():
        db[flat[i]] = raw
    db.close()
    store = store_factory()
    assert store.recovery.dropped_pointers == 5  # undecodable, missing segment, past the end
    results = _check(store, kit, keys, values, expect_hit=lambda i: i not in garbage)
    assert results[8] is True
    c = kit.counters(store)
    assert c["gets_miss_absent"] == 5
    assert c["gets_miss_corrupt"] + c["gets_miss_io"] + c["gets_miss_bad_buffer"] == 3
    assert store.get_batch(flat[:8]) == [None] * 8
    # The damaged pages can be put again.
    assert store.put_batch(flat[:3], [v for v in values[0]]) == [True] * 3
    _check(store, kit, keys, values, expect_hit=lambda i: i < 3 or i not in garbage)


# ---- truncated and deleted segment files -------------------------------------------------------

def _two_full_segments(store, kit):
    keys, values = _write_records(store, kit, 10)
    segments = [p.segment_id for p in _pointers(store, [b[0] for b in keys])]
    assert segments == [0] * 5 + [1] * 5
    return keys, values


@pytest.mark.parametrize("cut", [3 * RECORD + 10, 3 * RECORD + fmt.BLOCK_BYTES + PAGE // 2, 3 * RECORD])
def test_truncated_older_segment_drops_pointers_past_the_end(store_factory, kit, cut):
    store = store_factory()
    keys, values = _two_full_segments(store, kit)
    store.close()
    os.truncate(kit.segment_path(store.root, 0), cut)
    store = store_factory()
    # Records 0-2 are whole; a page of record 3 survives only if its bytes are all before the cut.
    whole = [i for i in range(15) if _end_of_page(i) <= cut]
    assert store.recovery.dropped_pointers == 15 - len(whole)
    _check(store, kit, keys, values, expect_hit=lambda i: i in whole or i >= 15)


def _end_of_page(i: int) -> int:
    record, index = divmod(i, 3)
    return record * RECORD + fmt.BLOCK_BYTES + (index + 1) * PAGE


def test_truncated_newest_segment_is_cut_to_its_last_whole_record(store_factory, kit):
    store = store_factory()
    keys, values = _two_full_segments(store, kit)
    store.close()
    path = kit.segment_path(store.root, 1)
    os.truncate(path, 2 * RECORD + fmt.BLOCK_BYTES + 100)  # record 2 of segment 1 torn
    store = store_factory()
    assert os.path.getsize(path) == 2 * RECORD
    assert store.recovery.truncated_bytes == fmt.BLOCK_BYTES + 100
    _check(store, kit, keys, values, expect_hit=lambda i: i < 15 + 6)
    assert store.put_batch([kit.key("new")], [b"new"]) == [True]
    assert kit.read_all(store, [kit.key("new")]) == [b"new"]


def test_segment_truncated_while_open_is_a_miss_not_an_exception(store_factory, kit):
    store = store_factory()
    keys, values = _two_full_segments(store, kit)
    os.truncate(kit.segment_path(store.root, 0), 2 * RECORD)
    # Pages past the cut miss; a merged read that runs into the cut may fail its other pages too.
    results = _check(store, kit, keys, values, expect_hit=lambda i: True if i >= 15 else (None if i < 6 else False),
                     miss_buffer_untouched_or_zeroed=False)
    assert sum(results[6:15]) == 0
    c = kit.counters(store)
    assert c["gets_miss_io"] + c["gets_miss_corrupt"] >= 9
    # Pages before the cut, read on their own, are served.
    _check(store, kit, keys[:2], values[:2], expect_hit=lambda i: True)


def test_deleted_segment_file_loses_only_its_pages(store_factory, kit):
    store = store_factory()
    keys, values = _two_full_segments(store, kit)
    store.put_batch([kit.key("tail")], [b"tail"])
    store.close()
    os.unlink(kit.segment_path(store.root, 0))
    store = store_factory()
    assert store.recovery.dropped_pointers == 15
    _check(store, kit, keys, values, expect_hit=lambda i: i >= 15)
    assert kit.read_all(store, [kit.key("tail")]) == [b"tail"]
    assert store.probe([b[0] for b in keys]) == 0
    assert store.probe([b[0] for b in keys[5:]]) == 5
    assert store.put_batch(keys[0], values[0]) == [True] * 3
    _check(store, kit, keys, values, expect_hit=lambda i: i < 3 or i >= 15)


def test_segment_files_below_the_low_watermark_are_removed_on_open(store_factory, kit):
    store = store_factory(capacity_bytes=2 * MiB, reinsertion_policy="none")
    keys, values = _write_records(store, kit, 5)
    i = 0
    while kit.counters(store)["evicted_segments"] == 0:
        store.put_batch([kit.key(("fill", i))], [kit.value(("fill", i), PAGE)])
        i += 1
    store.close()
    # A crash between the watermark commit and the unlink leaves the freed file behind.
    with open(kit.segment_path(store.root, 0), "wb") as f:
        f.write(b"\0" * 8192)
    with open(os.path.join(store.root, fmt.SEGMENTS_DIR, "notes.txt"), "w") as f:
        f.write("not a segment")
    store = store_factory()
    assert 0 not in kit.segment_files(store.root)
    assert os.path.exists(os.path.join(store.root, fmt.SEGMENTS_DIR, "notes.txt"))
    _check(store, kit, keys, values, expect_hit=lambda i: False)
    assert store.put_batch([kit.key("x")], [b"x"]) == [True]
    assert 0 not in {p.segment_id for p in _pointers(store, [kit.key("x")])}
