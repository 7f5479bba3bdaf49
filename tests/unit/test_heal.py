"""A page whose bytes fail their checksum or their read heals: after the failed read it is absent
(probe answers 0, for every reader) and a re-put of the correct bytes stores them again (issue 8,
section 2). The same when a same-node reader found the failure and reported it."""

from __future__ import annotations

import os

import numpy as np
import pytest

from raylsm.store.local_reader import LocalSegmentReader

PAGE = 64 * 1024


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


def _stored(store, kit, n=3, tag="heal"):
    keys = [kit.key((tag, i)) for i in range(n)]
    values = [kit.value((tag, i), PAGE) for i in range(n)]
    assert store.put_batch(keys, values) == [True] * n
    return keys, values


def _damage(store, kit, key, how):
    pointer = store.locate_batch([key])[2][0]
    path = kit.segment_path(store.root, pointer.segment_id)
    if how == "flip":
        _flip(path, pointer.offset + PAGE // 2)
    else:  # the segment file is cut short inside the page: the read comes up short (an I/O error)
        os.truncate(path, pointer.offset + PAGE // 2)
    return pointer


@pytest.mark.parametrize("direct_io", [True, False])
@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_page_that_fails_its_read_is_absent_and_a_re_put_heals_it(store_factory, kit, how, direct_io):
    store = store_factory(direct_io=direct_io)
    keys, values = _stored(store, kit)
    _damage(store, kit, keys[1], how)
    assert store.probe(keys) == 3  # nothing has read it yet
    out = store.get_batch(keys)
    assert out[0] is not None and out[1] is None
    assert store.probe(keys) == 1 and store.probe(keys[1:2]) == 0
    assert store.put_batch(keys[1:2], values[1:2]) == [True]
    assert kit.counters(store)["puts_pages"] == 4  # written again, not skipped as present
    assert bytes(store.get_batch(keys[1:2])[0]) == values[1].tobytes()
    assert store.probe(keys) == (3 if how == "flip" else 2)  # a cut file also failed the page behind it
    assert kit.counters(store)["healed_pages"] >= 1


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_failure_a_same_node_reader_reports_heals_the_page_for_everyone(store_factory, kit, how):
    store = store_factory()
    keys, values = _stored(store, kit)
    store.close()  # seal the segment: same-node readers read sealed files
    store = store_factory()
    segments_dir, _, pointers = store.locate_batch(keys)
    _damage(store, kit, keys[0], how)
    reader = LocalSegmentReader()
    outs = [np.zeros(PAGE, np.uint8) for _ in keys]
    outcome = reader.read_into(segments_dir, pointers, outs)
    reader.close()
    assert outcome.results[0] is False and 0 in outcome.failed_slots
    bad = [keys[slot] for slot in outcome.failed_slots]
    assert store.report_failed_reads(bad, [pointers[slot] for slot in outcome.failed_slots]) == len(bad)
    assert store.probe(keys[:1]) == 0
    assert store.put_batch(keys[:1], values[:1]) == [True]
    assert bytes(store.get_batch(keys[:1])[0]) == values[0].tobytes()


def test_a_reported_failure_that_reads_fine_here_keeps_the_page(store, kit):
    keys, values = _stored(store, kit)
    pointers = store.locate_batch(keys)[2]
    assert store.report_failed_reads(keys[:1], pointers[:1]) == 0
    assert store.probe(keys) == 3 and bytes(store.get_batch(keys[:1])[0]) == values[0].tobytes()


def test_a_report_about_an_old_pointer_leaves_the_current_page_alone(store, kit):
    keys, values = _stored(store, kit)
    old = store.locate_batch(keys[:1])[2][0]
    _damage(store, kit, keys[0], "flip")
    assert store.get_batch(keys[:1]) == [None]  # dropped by the store's own read
    assert store.put_batch(keys[:1], values[:1]) == [True]  # re-put: a new pointer
    assert store.report_failed_reads(keys[:1], [old]) == 0
    assert bytes(store.get_batch(keys[:1])[0]) == values[0].tobytes()
