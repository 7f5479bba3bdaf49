"""One segment file: append batch records, read values into caller buffers, seal, walk.

Owns the file descriptors of one segment and the vectored I/O on them. Called by the shard store
(appends under its write lock; reads from any thread) and by recovery. Reads never take a lock:
`preadv` is positional and releases the GIL. A segment retired by eviction stays readable by the
readers that pinned it (the file is unlinked, the descriptors close when the last pin drops).

Two descriptors per file: a buffered one, and an O_DIRECT one used when every buffer of an I/O is
aligned (see io_buffers.direct_io_capable). Linux keeps the two coherent for the same file.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from typing import Iterator

import numpy as np

from raylsm.errors import CorruptionError
from raylsm.store import format as fmt
from raylsm.store.io_buffers import direct_io_capable

_O_DIRECT = getattr(os, "O_DIRECT", 0)
# pwritev/preadv take at most this many buffers (EINVAL beyond): a 128-page record of K/V parts is
# ~260, but a record of pages kept at eviction can hold thousands.
# NOTE: before this cap, a full-trace replay (433 MB segments) failed every roll whose kept pages
# passed 1024 buffers: 7,990 put pages failed and the kept pages were lost (L3 hit 0.190 vs 0.212).
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") and "SC_IOV_MAX" in os.sysconf_names else 1024


def _advance(views: list[memoryview], done: int) -> list[memoryview]:
    """Drop the first `done` bytes of a list of views (after a short vectored I/O)."""
    rest = []
    for view in views:
        if done >= view.nbytes:
            done -= view.nbytes
            continue
        rest.append(view[done:] if done else view)
        done = 0
    return rest


def full_pwritev(fd: int, views: list[memoryview], offset: int) -> None:
    """Write every view from `offset` on, in as many pwritev calls as short writes and IOV_MAX need."""
    total = sum(view.nbytes for view in views)
    written = 0
    while written < total:
        n = os.pwritev(fd, views[:IOV_MAX], offset + written)
        if n <= 0:
            raise OSError(errno.EIO, "pwritev wrote nothing")
        written += n
        if written < total:
            views = _advance(views, n)


def full_preadv(fd: int, views: list[memoryview], offset: int) -> None:
    """Fill every view from `offset` on; CorruptionError if the file ends first."""
    total = sum(view.nbytes for view in views)
    done = 0
    while done < total:
        n = os.preadv(fd, views[:IOV_MAX], offset + done)
        if n == 0:
            raise CorruptionError(f"short read at offset {offset + done}: file ends")
        done += n
        if done < total:
            views = _advance(views, n)


class Segment:
    """An append-only segment file. Not thread-safe for appends; reads are."""

    def __init__(self, path: str, segment_id: int, fd: int, direct_fd: int, write_offset: int,
                 capacity_bytes: int, sealed: bool):
        self.path = path
        self.segment_id = segment_id
        self._fd = fd
        self._direct_fd = direct_fd  # -1 when O_DIRECT is unavailable
        self.write_offset = write_offset
        self.capacity_bytes = capacity_bytes
        self.sealed = sealed
        # Wall-clock time of its last append (the seal, or the file's mtime when opened sealed): the
        # age that orders eviction across the stores of one budget pool.
        self.sealed_at = os.fstat(fd).st_mtime if sealed else 0.0
        self._pins = 0
        self._retired = False
        self._lock = threading.Lock()

    # ---- lifecycle ----------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: str, segment_id: int, capacity_bytes: int, preallocate: bool) -> "Segment":
        """Create a new segment file. Raises OSError (ENOSPC when preallocation finds no room)."""
        path = os.path.join(directory, fmt.segment_file_name(segment_id))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            if preallocate:
                os.posix_fallocate(fd, 0, capacity_bytes)
            direct_fd = _open_direct(path)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        return cls(path, segment_id, fd, direct_fd, 0, capacity_bytes, sealed=False)

    @classmethod
    def open_sealed(cls, directory: str, segment_id: int) -> "Segment":
        """Open an existing segment read-only for serving; its size is its file size."""
        path = os.path.join(directory, fmt.segment_file_name(segment_id))
        fd = os.open(path, os.O_RDWR)
        size = os.fstat(fd).st_size
        return cls(path, segment_id, fd, _open_direct(path), size, size, sealed=True)

    @classmethod
    def open_reader(cls, directory: str, segment_id: int) -> "Segment":
        """Open a segment of another process's store read-only (same-node readers). Raises
        FileNotFoundError if it was freed."""
        path = os.path.join(directory, fmt.segment_file_name(segment_id))
        fd = os.open(path, os.O_RDONLY)
        try:
            direct_fd = os.open(path, os.O_RDONLY | _O_DIRECT) if _O_DIRECT else -1
        except OSError:
            direct_fd = -1
        size = os.fstat(fd).st_size
        return cls(path, segment_id, fd, direct_fd, size, size, sealed=True)

    def seal(self) -> None:
        """No more appends: cut the preallocated tail so the file holds only written records."""
        if not self.sealed:
            os.ftruncate(self._fd, self.write_offset)
            self.capacity_bytes = self.write_offset
            self.sealed = True
            self.sealed_at = time.time()

    def truncate(self, size: int) -> None:
        """Cut a torn or unwritten tail (recovery)."""
        os.ftruncate(self._fd, size)
        self.write_offset = self.capacity_bytes = size

    def sync(self) -> None:
        os.fdatasync(self._fd)

    @property
    def file_bytes(self) -> int:
        """Bytes this segment holds on disk (its preallocation while it is active)."""
        return self.capacity_bytes

    def pin(self) -> bool:
        """Keep the descriptors open for a read; False if the segment was already retired."""
        with self._lock:
            if self._retired:
                return False
            self._pins += 1
            return True

    def unpin(self) -> None:
        with self._lock:
            self._pins -= 1
            close_now = self._retired and self._pins == 0
        if close_now:
            self._close_fds()

    def unlink(self) -> None:
        """Remove the file's name (cheap: its blocks are freed when the last descriptor closes)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def retire(self, unlink: bool = True) -> None:
        """Remove the file; descriptors close once no reader pins them."""
        if unlink:
            self.unlink()
        with self._lock:
            self._retired = True
            close_now = self._pins == 0
        if close_now:
            self._close_fds()

    def close(self) -> None:
        self.retire(unlink=False)

    def _close_fds(self) -> None:
        for fd in (self._fd, self._direct_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = self._direct_fd = -1

    # ---- I/O ----------------------------------------------------------------------------------

    def remaining_bytes(self) -> int:
        return self.capacity_bytes - self.write_offset

    def reserve(self, nbytes: int) -> int:
        """Claim the next `nbytes` of the segment for one record; returns its offset. The caller
        writes them with `write_at` and, if that fails, gives them back with `rewind`."""
        if nbytes > self.remaining_bytes():
            raise ValueError("record does not fit in the segment")
        offset = self.write_offset
        self.write_offset = offset + nbytes
        return offset

    def rewind(self, offset: int) -> None:
        """Forget every reservation from `offset` on (their bytes were not committed)."""
        self.write_offset = min(self.write_offset, offset)

    def write_at(self, views: list[memoryview], offset: int, use_direct_io: bool,
                 staging: np.ndarray | None = None) -> None:
        """Write a reserved record (positional, releases the GIL); raises OSError (ENOSPC, EIO).
        Views that O_DIRECT cannot take (e.g. pages Ray deserialized from its object store) go
        through `staging`, an aligned buffer of whole blocks, if given; else through the page cache."""
        if use_direct_io and self._direct_fd >= 0:
            if direct_io_capable(views):
                full_pwritev(self._direct_fd, views, offset)
                return
            if staging is not None:
                self._write_staged(views, offset, staging)
                return
        full_pwritev(self._fd, views, offset)

    def _write_staged(self, views: list[memoryview], offset: int, staging: np.ndarray) -> None:
        """O_DIRECT write of `views` (whole blocks in all) copied through `staging` a buffer at a time.
        NOTE: Ray hands a shard the pages of a put at 2,112 bytes past a 4 KiB boundary (Ray 2.60),
        so every put through Ray went to the page cache (the kernel copied them there anyway, and
        wrote them back later, beside the O_DIRECT reads). Now the put waits for the disk: with the
        other changes of docs/data-path.md, full packaged trace, 1 shard, one run each: put p50
        18.8 -> 23.5 ms, put p99 91.6 -> 91.9, get p99 92.2 -> 55.7, exists p99 26.3 -> 13.0."""
        capacity = len(staging)
        filled = 0
        for view in views:
            source = np.frombuffer(view, dtype=np.uint8)
            taken = 0
            while taken < len(source):
                n = min(len(source) - taken, capacity - filled)
                staging[filled:filled + n] = source[taken:taken + n]
                filled += n
                taken += n
                if filled == capacity:
                    full_pwritev(self._direct_fd, [memoryview(staging)], offset)
                    offset += filled
                    filled = 0
        if filled:
            full_pwritev(self._direct_fd, [memoryview(staging[:filled])], offset)

    def read_into(self, offset: int, views: list[memoryview], use_direct_io: bool) -> None:
        """Fill `views` with the bytes starting at `offset` (one vectored read)."""
        if use_direct_io and self._direct_fd >= 0 and direct_io_capable(views):
            full_preadv(self._direct_fd, views, offset)
            return
        full_preadv(self._fd, views, offset)
        if use_direct_io:
            # Buffers that O_DIRECT cannot take still must not pile up in the page cache.
            os.posix_fadvise(self._fd, offset, sum(v.nbytes for v in views), os.POSIX_FADV_DONTNEED)

    def walk(self) -> Iterator[tuple[int, list[fmt.BatchEntry]]]:
        """Yield (record offset, entries) for each intact record from the start; stop at the first
        block that is not an intact record (the end of the written part)."""
        offset = 0
        size = os.fstat(self._fd).st_size
        while offset + fmt.BLOCK_BYTES <= size:
            block = os.pread(self._fd, fmt.BLOCK_BYTES, offset)
            prefix = fmt.decode_batch_prefix(block)
            if prefix is None or offset + prefix.batch_bytes > size:
                return
            header = block if prefix.header_bytes <= len(block) else os.pread(self._fd, prefix.header_bytes, offset)
            entries = fmt.decode_batch_entries(header)
            if entries is None:
                return
            yield offset, entries
            offset += prefix.batch_bytes

    def written_end(self) -> int:
        """Offset just past the last intact record."""
        end = 0
        for offset, entries in self.walk():
            end = offset + fmt.plan_batch([e.length for e in entries]).batch_bytes
        return end


def _open_direct(path: str) -> int:
    if not _O_DIRECT:
        return -1
    try:
        return os.open(path, os.O_RDWR | _O_DIRECT)
    except OSError:  # e.g. tmpfs refuses O_DIRECT
        return -1

