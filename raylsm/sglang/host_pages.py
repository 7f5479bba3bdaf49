"""Zero-copy views of SGLang host-pool pages.

Owned here: turning `mem_pool_host.get_page_buffer_meta(host_indices)` (raw pointers and sizes) into
writable memoryviews, grouped per page in SGLang's flat page order: K then V for page_first layouts;
for layer_first, whose pointers come as K0, V0, K1, V1, ..., reordered to K0..K(L-1), V0..V(L-1),
the order of `get_data_page(flat=True)`, so pages written on the zero-copy path and on the generic
path are the same bytes. raylsm stores a page as the concatenation of its parts and reads it back
into the same parts, so no temporary page tensor is ever built.
Called by RayLSMStorage on SGLang's I/O threads; pure, thread-safe.
"""

from __future__ import annotations

import ctypes
from typing import Any, Sequence


class HostPageViews:
    """Page views of one host pool. A memoryview of the pool's whole `kv_buffer` is made once, and
    each part is a slice of it; parts outside that buffer (pools with other buffers) fall back to a
    view made from the raw pointer.
    NOTE: one ctypes array per part cost ~1 ms per 128-page call (2 parts per page, page_first)."""

    def __init__(self, mem_pool_host: Any, is_mla: bool = False):
        self._pool = mem_pool_host
        self._reorder = not is_mla and getattr(mem_pool_host, "layout", None) == "layer_first"
        self._base, self._whole = 0, None
        buffer = getattr(mem_pool_host, "kv_buffer", None)
        if hasattr(buffer, "data_ptr") and hasattr(buffer, "is_contiguous") and buffer.is_contiguous():
            nbytes = buffer.numel() * buffer.element_size()
            self._base = buffer.data_ptr()
            self._whole = _view_at(self._base, nbytes)

    def pages(self, host_indices: Any, page_count: int) -> list[list[memoryview]]:
        """Per page, the writable memoryviews of its parts in SGLang's flat page order (no copy)."""
        pointers, sizes = self._pool.get_page_buffer_meta(host_indices)
        per_page = _parts_per_page(pointers, sizes, page_count)
        whole, base = self._whole, self._base
        end = base + (whole.nbytes if whole is not None else 0)
        views = [whole[pointer - base:pointer - base + size] if base <= pointer and pointer + size <= end
                 else _view_at(pointer, size) for pointer, size in zip(pointers, sizes)]
        pages = [views[index * per_page:(index + 1) * per_page] for index in range(page_count)]
        if self._reorder:
            pages = [parts[0::2] + parts[1::2] for parts in pages]
        return pages


def page_parts(mem_pool_host: Any, host_indices: Any, page_count: int,
               is_mla: bool = False) -> list[list[memoryview]]:
    """One-off form of HostPageViews(mem_pool_host, is_mla).pages(host_indices, page_count)."""
    return HostPageViews(mem_pool_host, is_mla).pages(host_indices, page_count)


def _parts_per_page(pointers: Sequence[int], sizes: Sequence[int], page_count: int) -> int:
    if page_count == 0:
        return 0
    if len(pointers) % page_count or len(sizes) != len(pointers):
        raise ValueError(f"{len(pointers)} buffer pointers cannot be split evenly into {page_count} pages")
    return len(pointers) // page_count


def _view_at(pointer: int, size: int) -> memoryview:
    return memoryview((ctypes.c_ubyte * size).from_address(pointer)).cast("B")
