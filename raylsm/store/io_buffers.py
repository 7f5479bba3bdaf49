"""Buffers for the data path: aligned allocation and zero-copy byte views of caller buffers.

Owns the rules for when a buffer may go to an O_DIRECT file descriptor. Called by the segment file
and the shard store; pure helpers, thread-safe.
"""

from __future__ import annotations

import ctypes

import numpy as np

# O_DIRECT needs the memory address and each length aligned to the device's logical block size
# (512 bytes on the disks seen here); file offsets are aligned to BLOCK_BYTES by the segment format.
DIRECT_IO_ALIGNMENT = 512


def aligned_empty(nbytes: int, alignment: int = 4096) -> np.ndarray:
    """A new uint8 array of `nbytes` whose first byte is `alignment`-aligned (for O_DIRECT)."""
    raw = np.empty(nbytes + alignment, dtype=np.uint8)
    start = (-raw.ctypes.data) % alignment
    return raw[start : start + nbytes]


def aligned_zeros(nbytes: int, alignment: int = 4096) -> np.ndarray:
    buffer = aligned_empty(nbytes, alignment)
    buffer[:] = 0
    return buffer


def byte_view(buffer: object) -> memoryview:
    """A flat, unsigned-byte memoryview of any C-contiguous buffer-protocol object, without copying.

    Raises TypeError if `buffer` does not support the buffer protocol and ValueError if it is not
    C-contiguous.
    """
    view = memoryview(buffer)
    if not view.c_contiguous:
        raise ValueError("buffer is not C-contiguous")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def page_views(page: object) -> tuple[memoryview, ...]:
    """A page as byte views: one buffer, or a list/tuple of buffers holding its parts in order
    (e.g. the K and V halves of an SGLang page_first page). Raises TypeError or ValueError."""
    if isinstance(page, (list, tuple)):
        if not page:
            raise ValueError("a page given as parts needs at least one part")
        return tuple(byte_view(part) for part in page)
    return (byte_view(page),)


def parts_nbytes(parts: tuple[memoryview, ...]) -> int:
    return sum(part.nbytes for part in parts)


def address_of(view: memoryview) -> int:
    """The address of a view's first byte (0 for an empty view)."""
    if not view.nbytes:
        return 0
    if not view.readonly:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))  # a fifth of numpy's cost
    return np.frombuffer(view, dtype=np.uint8).ctypes.data


def direct_io_capable(views: list[memoryview]) -> bool:
    """True if every view's address and length suit O_DIRECT."""
    for view in views:
        if view.nbytes % DIRECT_IO_ALIGNMENT or address_of(view) % DIRECT_IO_ALIGNMENT:
            return False
    return True
