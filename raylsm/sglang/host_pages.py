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


def page_parts(mem_pool_host: Any, host_indices: Any, page_count: int,
               is_mla: bool = False) -> list[list[memoryview]]:
    """Per page, the memoryviews of its parts in the host pool (writable, no copy). MHA layer_first
    pairs (K_l, V_l) are reordered to K..., V...; MLA pages (one part per layer) are already flat."""
    pointers, sizes = mem_pool_host.get_page_buffer_meta(host_indices)
    pages = group_parts(pointers, sizes, page_count)
    if not is_mla and getattr(mem_pool_host, "layout", None) == "layer_first":
        pages = [parts[0::2] + parts[1::2] for parts in pages]
    return pages


def group_parts(pointers: Sequence[int], sizes: Sequence[int], page_count: int) -> list[list[memoryview]]:
    if page_count == 0:
        return []
    if len(pointers) % page_count or len(sizes) != len(pointers):
        raise ValueError(f"{len(pointers)} buffer pointers cannot be split evenly into {page_count} pages")
    per_page = len(pointers) // page_count
    views = [memoryview((ctypes.c_ubyte * size).from_address(pointer)).cast("B")
             for pointer, size in zip(pointers, sizes)]
    return [views[index * per_page:(index + 1) * per_page] for index in range(page_count)]
