"""Zero-copy views of SGLang host-pool pages.

Owned here: turning `mem_pool_host.get_page_buffer_meta(host_indices)` (raw pointers and sizes) into
writable memoryviews, grouped per page in the order the pool lists them (K then V for page_first
layouts; K and V per layer for layer_first). raylsm stores a page as the concatenation of its parts
and reads it back into the same parts, so no temporary page tensor is ever built.
Called by RayLSMStorage on SGLang's I/O threads; pure, thread-safe.
"""

from __future__ import annotations

import ctypes
from typing import Any, Sequence


def page_parts(mem_pool_host: Any, host_indices: Any, page_count: int) -> list[list[memoryview]]:
    """Per page, the memoryviews of its parts in the host pool (writable, no copy)."""
    pointers, sizes = mem_pool_host.get_page_buffer_meta(host_indices)
    return group_parts(pointers, sizes, page_count)


def group_parts(pointers: Sequence[int], sizes: Sequence[int], page_count: int) -> list[list[memoryview]]:
    if page_count == 0:
        return []
    if len(pointers) % page_count or len(sizes) != len(pointers):
        raise ValueError(f"{len(pointers)} buffer pointers cannot be split evenly into {page_count} pages")
    per_page = len(pointers) // page_count
    views = [memoryview((ctypes.c_ubyte * size).from_address(pointer)).cast("B")
             for pointer, size in zip(pointers, sizes)]
    return [views[index * per_page:(index + 1) * per_page] for index in range(page_count)]
