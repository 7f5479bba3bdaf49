"""Pages whose memory O_DIRECT cannot take (Ray hands a shard a put's pages 2,112 bytes past a 4 KiB
boundary) are copied through the store's aligned staging buffer and written with O_DIRECT, a
buffer at a time, not through the page cache (raylsm.store.segment.Segment.write_at)."""

from __future__ import annotations

import numpy as np
import pytest

from raylsm.store import segment as segment_module
from raylsm.store.io_buffers import address_of, aligned_empty

KiB = 1024


def _unaligned_pages(kit, count: int, size: int) -> tuple[list[bytes], list[memoryview]]:
    """Pages at 2,112 bytes past a 4 KiB boundary, as Ray's object store hands them over."""
    keys = [kit.key(("unaligned", i)) for i in range(count)]
    backing = np.empty(count * size + 8192, dtype=np.uint8)
    start = (-address_of(memoryview(backing))) % 4096 + 2112
    pages = []
    for i in range(count):
        page = backing[start + i * size:start + (i + 1) * size]
        page[:] = kit.value(("unaligned", i), size)
        pages.append(memoryview(page))
    return keys, pages


@pytest.mark.parametrize("staging_bytes", [None, 64 * KiB])  # the store's own; one smaller than a record
def test_unaligned_pages_are_written_with_o_direct_and_read_back(store_factory, kit, monkeypatch, staging_bytes):
    store = store_factory(capacity_bytes=8 * 1024 * KiB)
    if staging_bytes is not None:
        store._staging = store._staging[:staging_bytes]
    writes = []
    real = segment_module.full_pwritev

    def full_pwritev(fd, views, offset):
        writes.append((fd, sum(view.nbytes for view in views)))
        return real(fd, views, offset)

    monkeypatch.setattr(segment_module, "full_pwritev", full_pwritev)
    keys, pages = _unaligned_pages(kit, 6, 48 * KiB + 512)  # a length that needs padding too
    assert store.put_batch(keys, pages) == [True] * 6
    segment = store._active
    if segment._direct_fd < 0:
        pytest.skip("this file system refuses O_DIRECT")
    assert writes and {fd for fd, _ in writes} == {segment._direct_fd}
    if staging_bytes is not None:
        assert len(writes) > 1 and max(n for _, n in writes) <= staging_bytes
    assert kit.read_all(store, keys) == [bytes(page) for page in pages]
    store.close()
    reopened = store_factory()
    assert kit.read_all(reopened, keys) == [bytes(page) for page in pages]


def test_aligned_pages_are_written_from_the_callers_memory(store_factory, kit, monkeypatch):
    store = store_factory()
    copies = []
    monkeypatch.setattr(segment_module.Segment, "_write_staged", lambda *args: copies.append(args))
    keys = [kit.key(("aligned", i)) for i in range(4)]
    pages = []
    for i in range(4):
        page = aligned_empty(64 * KiB)
        page[:] = kit.value(("aligned", i), 64 * KiB)
        pages.append(page)
    assert store.put_batch(keys, pages) == [True] * 4
    if store._active._direct_fd < 0:
        pytest.skip("this file system refuses O_DIRECT")
    assert copies == []
