"""Bad input: keys of the wrong type or length and mismatched lengths (ValueError before anything is
written); values that are not buffers or too large (that page only is refused, counted by cause); output buffers of the wrong size, read-only or
non-contiguous (that page is a counted miss and nothing is written outside the buffer)."""

from __future__ import annotations

import numpy as np
import pytest

from raylsm.store import format as fmt
from raylsm.store.outcomes import PutOutcome

BAD_KEYS = {
    "str": "\x01" * 61,
    "bytearray": bytearray(b"\x01" * 61),
    "memoryview": memoryview(b"\x01" * 61),
    "short": b"\x01" * 60,
    "long": b"\x01" * 62,
    "meta_tag": b"\x00" * 61,
    "none": None,
    "int": 12345,
}


@pytest.mark.parametrize("bad", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_bad_key_names_its_index_and_nothing_is_written(store, kit, bad):
    good = kit.keys(3)
    with pytest.raises(ValueError, match=r"\bkey 2\b"):
        store.put_batch([good[0], good[1], bad], [b"a", b"b", b"c"])
    assert store.probe(good) == 0 and store.stats()["space"]["segments"] == 0
    assert kit.counters(store)["puts_pages"] == 0
    for call in (lambda keys: store.get_batch_into(keys, [bytearray(1)] * len(keys)),
                 store.probe, store.delete_batch, store.locate_batch, store.probe_located):
        with pytest.raises(ValueError, match=r"\bkey 2\b"):
            call([good[0], good[1], bad])


@pytest.mark.parametrize("bad", [BAD_KEYS["str"], BAD_KEYS["none"]], ids=["str", "none"])
def test_get_batch_bad_key_names_its_index(store, kit, bad):
    with pytest.raises(ValueError, match=r"\bkey 1\b"):
        store.get_batch([kit.key(0), bad])


def test_get_batch_bad_bytes_key_names_its_index(store, kit):
    with pytest.raises(ValueError, match=r"\bkey 1\b"):
        store.get_batch([kit.key(0), b"\x01" * 60])


BAD_VALUES = {
    "int": 5,
    "str": "text",
    "none": None,
    "non_contiguous": np.arange(100, dtype=np.uint8)[::2],
    "part_not_a_buffer": [b"ok", 3],
}


@pytest.mark.parametrize("bad", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_a_bad_value_fails_only_its_own_page(store, kit, bad):
    keys = kit.keys(3)
    assert store.put_batch(keys, [b"a", bad, b"c"]) == [True, False, True]
    assert store.put_batch_outcomes(keys[1:2], [bad]) == [PutOutcome.BAD_VALUE]
    assert kit.read_all(store, keys) == [b"a", None, b"c"]
    assert kit.counters(store)["puts_pages"] == 2 and kit.counters(store)["puts_bad_value"] == 2


@pytest.mark.parametrize("where", [0, 2, 3])
def test_a_value_larger_than_a_segment_fails_only_its_own_page(store_factory, kit, where):
    """Issue 8 section 3: three 4 KiB pages and one 4 MiB page with 4 MiB segments store the three."""
    store = store_factory(segment_bytes=4 * kit.MiB, capacity_bytes=16 * kit.MiB)
    limit = store.config.segment_bytes - fmt.header_bytes_for(1)
    keys = kit.keys(4)
    values = [kit.value(i, 4 * kit.KiB) for i in range(3)]
    values.insert(where, np.zeros(4 * kit.MiB, np.uint8))
    expected = [slot != where for slot in range(4)]
    assert store.put_batch(keys, values) == expected
    assert store.put_batch_outcomes(keys[where:where + 1], [[np.zeros(limit, np.uint8), b"x"]]) == [
        PutOutcome.TOO_LARGE]  # parts that add up past the limit
    assert [v is not None for v in kit.read_all(store, keys)] == expected
    assert kit.counters(store)["puts_too_large"] == 2 and kit.counters(store)["puts_pages"] == 3


def test_mismatched_lengths(store, kit):
    keys = kit.keys(2)
    with pytest.raises(ValueError, match="2 keys but 1 values"):
        store.put_batch(keys, [b"a"])
    with pytest.raises(ValueError, match="output buffers"):
        store.get_batch_into(keys, [bytearray(1)] * 3)
    assert store.probe(keys) == 0


def _sentinel_slice(nbytes: int, margin: int = 4096):
    """A writable slice of nbytes in the middle of a bigger array filled with a sentinel."""
    backing = np.full(nbytes + 2 * margin, 0xA5, np.uint8)
    return backing, backing[margin:margin + nbytes]


@pytest.mark.parametrize("direct_io", [True, False])
@pytest.mark.parametrize("size_error", [-1, +1, -4096, +4096])
def test_wrong_size_output_buffer_is_a_counted_miss_and_nothing_outside_is_written(store_factory, kit, direct_io,
                                                                                 size_error):
    store = store_factory(direct_io=direct_io)
    keys = kit.keys(3)
    values = [kit.value(i, 8192) for i in range(3)]
    store.put_batch(keys, values)
    backing, bad = _sentinel_slice(8192 + size_error)
    good_before, good_after = np.zeros(8192, np.uint8), np.zeros(8192, np.uint8)
    assert store.get_batch_into(keys, [good_before, bad, good_after]) == [True, False, True]
    assert (backing == 0xA5).all()  # the bad slice and everything around it untouched
    assert good_before.tobytes() == values[0].tobytes() and good_after.tobytes() == values[2].tobytes()
    assert kit.counters(store)["gets_miss_bad_buffer"] == 1


def test_read_only_and_non_contiguous_output_buffers_are_counted_misses(store, kit):
    keys = kit.keys(4)
    store.put_batch(keys, [kit.value(i, 4096) for i in range(4)])
    read_only = np.full(4096, 0x11, np.uint8)
    read_only.flags.writeable = False
    strided_backing = np.full(8192, 0x22, np.uint8)
    strided = strided_backing[::2]
    as_bytes = b"\x33" * 4096
    results = store.get_batch_into(keys, [read_only, strided, as_bytes, "not a buffer"])
    assert results == [False] * 4
    assert (read_only == 0x11).all() and (strided_backing == 0x22).all() and as_bytes == b"\x33" * 4096
    assert kit.counters(store)["gets_miss_bad_buffer"] == 4
    assert kit.counters(store)["gets_hit"] == 0


def test_output_buffer_for_an_absent_page_is_untouched(store, kit):
    backing, out = _sentinel_slice(4096)
    assert store.get_batch_into([kit.key(1)], [out]) == [False]
    assert (backing == 0xA5).all()
    assert kit.counters(store)["gets_miss_absent"] == 1
