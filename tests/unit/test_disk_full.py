"""Disk full (ENOSPC) mid-batch: the pages that did not make it are False, nothing points at partial
bytes, the store stays usable once space returns. Injected failures run everywhere; a real
size-limited tmpfs runs where mounting is permitted (root)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import numpy as np
import pytest

from raylsm.store import ShardStore
from raylsm.store import format as fmt
from raylsm.store import segment as segment_module
from raylsm.store import write_path as write_path_module

KiB = 1 << 10
MiB = 1 << 20
PAGE = 64 * KiB


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _pages(kit, tag, n, size=PAGE):
    return [kit.key((tag, i)) for i in range(n)], [kit.value((tag, i), size) for i in range(n)]


def _assert_absent(store, keys):
    assert store.locate_batch(keys)[2] == [None] * len(keys)
    assert store.get_batch(keys) == [None] * len(keys)


def test_no_room_for_a_new_segment_fails_the_rest_of_the_batch(store_factory, kit, monkeypatch):
    """With preallocated segments a full disk shows when a segment is created (without, it shows in
    the write: the two tests below and test_real_full_disk)."""
    store = store_factory(preallocate_segments=True)
    keys, values = _pages(kit, "a", 20)  # 15 fit in segment 0; the rest need segment 1
    monkeypatch.setattr(segment_module.os, "posix_fallocate", _enospc)
    assert store.put_batch(keys[:1], values[:1]) == [False]  # not even the first segment can be made
    assert store.put_batch(keys, values) == [False] * 20
    assert kit.segment_files(store.root) == {}
    monkeypatch.undo()
    assert store.put_batch(keys[:10], values[:10]) == [True] * 10  # space is back
    monkeypatch.setattr(segment_module.os, "posix_fallocate", _enospc)
    results = store.put_batch(keys, values)
    assert results == [True] * 15 + [False] * 5
    assert kit.counters(store)["puts_failed"] == 20 + 1 + 5
    _assert_absent(store, keys[15:])
    assert kit.read_all(store, keys[:15]) == [v.tobytes() for v in values[:15]]
    assert sorted(kit.segment_files(store.root)) == [0]  # the failed create left no file behind
    monkeypatch.undo()
    assert store.put_batch(keys, values) == [True] * 20
    assert kit.read_all(store, keys) == [v.tobytes() for v in values]
    store.close()
    store = store_factory(preallocate_segments=True)
    assert kit.read_all(store, keys) == [v.tobytes() for v in values]


def test_enospc_in_the_middle_of_a_record_write(store_factory, kit, monkeypatch):
    """The first call writes part of the record, the next fails: nothing may point at those bytes."""
    store = store_factory()
    keys, values = _pages(kit, "b", 6)
    assert store.put_batch(keys[:2], values[:2]) == [True, True]
    real = os.pwritev
    calls = []

    def half_then_full(fd, buffers, offset):
        calls.append(offset)
        if len(calls) == 1:
            first = memoryview(buffers[0])
            return real(fd, [first[: max(1, first.nbytes // 2)]], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segment_module.os, "pwritev", half_then_full)
    assert store.put_batch(keys[2:], values[2:]) == [False] * 4
    monkeypatch.undo()
    assert kit.counters(store)["puts_failed"] == 4
    _assert_absent(store, keys[2:])
    assert kit.read_all(store, keys[:2]) == [v.tobytes() for v in values[:2]]
    # Usable again: the next record goes where the failed one started.
    assert store.put_batch(keys[4:], values[4:]) == [True, True]
    assert kit.read_all(store, keys) == [v.tobytes() for v in values[:2]] + [None, None] + \
        [v.tobytes() for v in values[4:]]
    store.close()
    store = store_factory()
    assert kit.read_all(store, keys) == [v.tobytes() for v in values[:2]] + [None, None] + \
        [v.tobytes() for v in values[4:]]


def test_enospc_in_a_later_record_keeps_the_earlier_records_of_the_batch(store_factory, kit, monkeypatch):
    store = store_factory()
    keys, values = _pages(kit, "c", 20)
    real = os.pwritev
    calls = []

    def fail_second(fd, buffers, offset):
        calls.append(offset)
        if len(calls) > 1:  # a record is one write: its header and its values
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, buffers, offset)

    monkeypatch.setattr(segment_module.os, "pwritev", fail_second)
    results = store.put_batch(keys, values)  # record 1 fills segment 0, record 2 goes to segment 1
    monkeypatch.undo()
    assert results == [True] * 15 + [False] * 5
    _assert_absent(store, keys[15:])
    assert kit.read_all(store, keys[:15]) == [v.tobytes() for v in values[:15]]
    assert store.put_batch(keys, values) == [True] * 20
    assert kit.read_all(store, keys) == [v.tobytes() for v in values]


# ---- a real full file system ------------------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    """<tmp>/store/segments is a 4 MiB tmpfs (the index stays on the normal disk)."""
    root = tmp_path / "store"
    mount_point = root / fmt.SEGMENTS_DIR
    mount_point.mkdir(parents=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield root
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


@pytest.mark.parametrize("preallocate", [True, False])
def test_real_full_disk(small_tmpfs, kit, preallocate):
    root = small_tmpfs
    ballast = root / fmt.SEGMENTS_DIR / "ballast"
    ballast.write_bytes(b"\xff" * (3 * MiB // 2))  # leaves room for about 2.5 segments
    store = ShardStore.open(str(root), kit.config(capacity_bytes=64 * MiB, preallocate_segments=preallocate))
    try:
        stored_keys, stored_values = [], []
        failed_keys = []
        for n in range(60):
            keys, values = _pages(kit, ("full", n), 4)
            results = store.put_batch(keys, values)
            assert results == sorted(results, reverse=True), "only a tail of the batch may fail"
            stored_keys += [k for k, ok in zip(keys, results) if ok]
            stored_values += [v for v, ok in zip(values, results) if ok]
            failed_keys += [k for k, ok in zip(keys, results) if not ok]
            if failed_keys:
                break
        assert failed_keys, "the 4 MiB file system never filled"
        assert kit.counters(store)["puts_failed"] == len(failed_keys)
        _assert_absent(store, failed_keys)
        assert kit.read_all(store, stored_keys) == [v.tobytes() for v in stored_values]
        # Still full: still False, and nothing half-written becomes visible.
        keys, values = _pages(kit, "still-full", 16)
        results = store.put_batch(keys, values)
        _assert_absent(store, [k for k, ok in zip(keys, results) if not ok])
        # Space returns.
        ballast.unlink()
        keys, values = _pages(kit, "after", 8)
        assert store.put_batch(keys, values) == [True] * 8
        assert store.put_batch(failed_keys, [kit.value(("retry", i), PAGE) for i in range(len(failed_keys))]) \
            == [True] * len(failed_keys)
        assert kit.read_all(store, keys) == [v.tobytes() for v in values]
        assert kit.read_all(store, stored_keys) == [v.tobytes() for v in stored_values]
        store.close()
        store = ShardStore.open(str(root), kit.config(capacity_bytes=64 * MiB, preallocate_segments=preallocate))
        assert kit.read_all(store, keys) == [v.tobytes() for v in values]
        assert kit.read_all(store, stored_keys) == [v.tobytes() for v in stored_values]
        assert all(v is not None for v in store.get_batch(failed_keys))
    finally:
        store.close()


def test_enospc_while_re_appending_kept_pages_evicts_them_and_the_put_goes_on(store_factory, kit, monkeypatch):
    store = store_factory(capacity_bytes=2 * MiB)
    kept_keys, kept_values = _pages(kit, "read", 15)  # fills segment 0
    assert store.put_batch(kept_keys, kept_values) == [True] * 15
    assert all(value is not None for value in store.get_batch(kept_keys))  # all earn reinsertion
    real_evict, real_pwritev = write_path_module.evict_oldest, os.pwritev
    armed = []

    def evict_oldest(store_, budget):
        kept = real_evict(store_, budget)
        if kept:
            armed.append(True)  # the next write is the roll's re-append of what eviction kept
        return kept

    def pwritev(fd, buffers, offset):
        if armed:
            armed.clear()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwritev(fd, buffers, offset)

    monkeypatch.setattr(write_path_module, "evict_oldest", evict_oldest)
    monkeypatch.setattr(segment_module.os, "pwritev", pwritev)
    evicted_before = kit.counters(store)["evicted_pages"]
    i = 0
    while 0 in kit.segment_files(store.root):  # until segment 0 is evicted
        keys, values = _pages(kit, ("filler", i), 1)
        assert store.put_batch(keys, values) == [True], "the put that rolled must not fail"
        i += 1
    monkeypatch.undo()
    counters = kit.counters(store)
    assert counters["reinserted_pages"] == 0 and counters["evicted_pages"] - evicted_before == 15
    _assert_absent(store, kept_keys)
    keys, values = _pages(kit, "after", 3)
    assert store.put_batch(keys, values) == [True] * 3
    assert kit.read_all(store, keys) == [value.tobytes() for value in values]
