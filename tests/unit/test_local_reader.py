"""LocalSegmentReader: a same-node reader that takes pointers from ShardStore.locate_batch and reads
segment bytes itself. Hits are checksum-verified; absent, freed, corrupt or badly-sized reads are
misses; files of freed segments are closed by forget_below; the open-file cache is bounded."""

from __future__ import annotations

import os

import numpy as np
import pytest

from raylsm.store import format as fmt
from raylsm.store.local_reader import LocalSegmentReader

KiB = 1 << 10
MiB = 1 << 20


@pytest.fixture
def reader():
    reader = LocalSegmentReader(max_open_segments=2)
    yield reader
    reader.close()


def _put(store, kit, tag, n, size=64 * KiB):
    keys = [kit.key((tag, i)) for i in range(n)]
    values = [kit.value((tag, i), size) for i in range(n)]
    assert store.put_batch(keys, values) == [True] * n
    return keys, values


def _read(reader, store, keys, sizes):
    segments_dir, low_watermark, pointers = store.locate_batch(keys)
    outs = [np.full(size, 0xEE, np.uint8) for size in sizes]
    return reader.read_into(segments_dir, pointers, outs).results, outs, pointers


@pytest.mark.parametrize("direct_io", [True, False])
def test_reads_verified_bytes_across_segments(store, kit, direct_io):
    reader = LocalSegmentReader(max_open_segments=2, direct_io=direct_io)
    keys, values = _put(store, kit, "a", 60, size=50 * KiB)  # spans four segments
    store.put_batch([kit.key("active")], [b"in the active segment"])
    assert len({p.segment_id for p in store.locate_batch(keys)[2]}) >= 3  # more than the open-file bound
    try:
        results, outs, _ = _read(reader, store, keys + [kit.key("absent")], [50 * KiB] * 60 + [7])
        assert results == [True] * 60 + [False]
        assert [o.tobytes() for o in outs[:60]] == [v.tobytes() for v in values]
        assert (outs[60] == 0xEE).all()
        results, outs, _ = _read(reader, store, [kit.key("active")], [21])
        assert results == [True] and outs[0].tobytes() == b"in the active segment"
    finally:
        reader.close()


def test_bad_buffers_and_corrupt_pages_are_misses(store, kit, reader):
    keys, values = _put(store, kit, "b", 3, size=10000)
    pointer = store.locate_batch(keys[1:2])[2][0]
    path = kit.segment_path(store.root, pointer.segment_id)
    with open(path, "r+b") as f:
        f.seek(pointer.offset + 1234)
        f.write(b"\x00" if values[1][1234] else b"\x01")
    backing = np.full(10000 + 200, 0xA5, np.uint8)
    wrong_size = backing[100:100 + 9999]
    segments_dir, _, pointers = store.locate_batch(keys)
    good = np.zeros(10000, np.uint8)
    corrupt = np.full(10000, 0xEE, np.uint8)
    assert reader.read_into(segments_dir, pointers, [wrong_size, corrupt, good]).results == [False, False, True]
    assert (backing == 0xA5).all()
    assert (corrupt == 0).all()
    assert good.tobytes() == values[2].tobytes()


def test_freed_segments_are_misses_once_forgotten(store_factory, kit, reader):
    store = store_factory(capacity_bytes=2 * MiB, reinsertion_policy="none")
    keys, values = _put(store, kit, "old", 15)  # fills segment 0
    segments_dir, low_watermark, old_pointers = store.locate_batch(keys)
    assert low_watermark == 0
    cold = [np.zeros(64 * KiB, np.uint8) for _ in keys]
    assert reader.read_into(segments_dir, old_pointers[:1], cold[:1]).results == [True]  # opens segment 0
    i = 0
    while kit.counters(store)["evicted_segments"] == 0:
        store.put_batch([kit.key(("fill", i))], [kit.value(("fill", i), 64 * KiB)])
        i += 1
    assert not os.path.exists(kit.segment_path(store.root, 0))
    _, low_watermark, pointers = store.locate_batch(keys)
    assert low_watermark == 1 and pointers == [None] * 15
    # Still open in the reader: the old, verified bytes (never wrong ones).
    outs = [np.zeros(64 * KiB, np.uint8) for _ in keys]
    for ok, out, value in zip(reader.read_into(segments_dir, old_pointers, outs).results, outs, values):
        assert not ok or out.tobytes() == value.tobytes()
    reader.forget_below(segments_dir, low_watermark)
    assert reader.read_into(segments_dir, old_pointers, outs).results == [False] * 15


def test_a_segment_never_opened_and_since_freed_is_a_miss(store_factory, kit, reader):
    store = store_factory(capacity_bytes=2 * MiB, reinsertion_policy="none")
    keys, _ = _put(store, kit, "old", 15)
    segments_dir, _, old_pointers = store.locate_batch(keys)
    i = 0
    while kit.counters(store)["evicted_segments"] == 0:
        store.put_batch([kit.key(("fill", i))], [kit.value(("fill", i), 64 * KiB)])
        i += 1
    outs = [np.full(64 * KiB, 0xEE, np.uint8) for _ in keys]
    assert reader.read_into(segments_dir, old_pointers, outs).results == [False] * 15
    assert all((o == 0xEE).all() for o in outs)


def test_a_pointer_past_the_file_end_is_a_miss_not_an_exception(store, kit, reader):
    keys, _ = _put(store, kit, "c", 2)
    store.close()  # seal: the file ends after the last record
    segments_dir = os.path.join(store.root, fmt.SEGMENTS_DIR)
    size = os.path.getsize(kit.segment_path(store.root, 0))
    pointers = [fmt.Pointer(0, size - 4096, 64 * KiB, 0), fmt.Pointer(0, size + 4096, 4096, 0),
                fmt.Pointer(99, 0, 4096, 0)]
    outs = [np.zeros(p.length, np.uint8) for p in pointers]
    assert reader.read_into(segments_dir, pointers, outs).results == [False, False, False]


@pytest.mark.parametrize("fault", ["deadline", "error"])
def test_a_bounded_read_never_writes_into_the_callers_buffers_after_it_returned(store, kit, fault):
    """BoundedLocalReader reads groups of pages on its pool threads and copies them into the caller's
    buffers there. Once read_into has returned (past its deadline, or because one group failed), a
    group still being read must not copy into those buffers when it finishes."""
    import threading
    import time

    from raylsm.local_reads import BoundedLocalReader
    from raylsm.shard_health import ShardHealth

    keys, values = _put(store, kit, "g", 8)
    segments_dir, _, pointers = store.locate_batch(keys)
    real = LocalSegmentReader()
    release, second_started = threading.Event(), threading.Event()
    finished = []

    class SlowSecondGroup:  # the first group fails or is slow; the second finishes after the return
        def read_into(self, directory, group_pointers, views):
            if group_pointers[0] == pointers[0]:
                second_started.wait(10)  # (both groups are on a pool thread before either ends)
                if fault == "error":
                    raise RuntimeError("a reader bug")
                release.wait(10)
            else:
                second_started.set()
                release.wait(10)
            outcome = real.read_into(directory, group_pointers, views)
            finished.append(True)
            return outcome

    bounded = BoundedLocalReader(SlowSecondGroup(), ShardHealth(), staging_bytes=4 * 64 * KiB, threads=2)
    outs = [np.full(64 * KiB, 0xEE, np.uint8) for _ in keys]
    try:
        if fault == "error":
            with pytest.raises(RuntimeError):
                bounded.read_into("shard", segments_dir, pointers, outs, time.monotonic() + 10)
        else:
            outcome, timed_out = bounded.read_into("shard", segments_dir, pointers, outs, time.monotonic() + 0.2)
            assert timed_out and outcome.results == [False] * 8
        release.set()
        deadline = time.monotonic() + 10
        while not finished and time.monotonic() < deadline:
            time.sleep(0.01)
        assert finished, "the second group's read never finished"
        time.sleep(0.1)
        assert all((out == 0xEE).all() for out in outs), "a group copied into the caller's buffers after the return"
    finally:
        release.set()
        bounded.close()
        real.close()
