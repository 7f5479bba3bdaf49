"""LocalSegmentReader: a process on a shard's node reads that shard's segment bytes itself.

Called by the tier client's same-node fast path: the shard actor answers only with pointers
(`ShardStore.locate_batch`), and the bytes go from the SSD straight into the caller's buffers, never
through the object store. Correctness rests on the format: segments are append-only, never
rewritten, and segment ids are never reused, so a pointer plus its checksum identifies exactly one
set of bytes; a freed segment is a miss (file gone) or, if it was open, still its old verified bytes.

Open files are cached (bounded, least recently used first out), and files of freed segments are
closed when the shard reports its low watermark, so the reader never pins freed disk space for long.
Those closes run on a background thread: the last close of a freed file frees its blocks, which
took ~12% of a get's time when done on the reading thread (py-spy, `raylsm bench trace --quick`).
Thread-safe: one lock guards the file cache; reads run outside it.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from typing import Any, Sequence

from raylsm.store import format as fmt
from raylsm.store.page_reader import ReadOutcome, read_verified, writable_parts
from raylsm.store.segment import Segment


class LocalSegmentReader:
    def __init__(self, max_open_segments: int = 64, merge_gap_bytes: int = 64 * 1024, direct_io: bool = True):
        self._max_open = max_open_segments
        self._merge_gap_bytes = merge_gap_bytes
        self._direct_io = direct_io
        self._lock = threading.Lock()
        self._open: OrderedDict[tuple[str, int], Segment] = OrderedDict()
        self._to_close: queue.SimpleQueue[Segment | None] = queue.SimpleQueue()
        self._closer: threading.Thread | None = None

    def read_into(self, segments_dir: str, pointers: Sequence[fmt.Pointer | None],
                  out_buffers: Sequence[Any]) -> ReadOutcome:
        """Fill out_buffers[i] from pointers[i] (None = absent). `outcome.results[i]` is True per
        checksum-verified page; the outcome also counts corrupt, unreadable and freed pages."""
        wanted, parts_by_slot = [], {}
        for slot, pointer in enumerate(pointers):
            if pointer is None:
                continue
            parts = writable_parts(out_buffers[slot], pointer.length)
            if parts is not None:
                wanted.append((slot, pointer))
                parts_by_slot[slot] = parts
        return read_verified(wanted, parts_by_slot, len(pointers), self._merge_gap_bytes, self._direct_io,
                             lambda segment_id: self._pinned(segments_dir, segment_id))

    def forget_below(self, segments_dir: str, low_watermark: int) -> None:
        """Close files of this directory's segments with ids below `low_watermark` (freed)."""
        with self._lock:
            stale = [key for key in self._open if key[0] == segments_dir and key[1] < low_watermark]
            for key in stale:
                self._close_later(self._open.pop(key))

    def close(self) -> None:
        with self._lock:
            for segment in self._open.values():
                segment.close()
            self._open.clear()
            closer, self._closer = self._closer, None
        if closer is not None:
            self._to_close.put(None)
            closer.join()

    def _close_later(self, segment: Segment) -> None:
        """Hand a segment to the closer thread (caller holds the lock). A pinned segment closes when
        its last read unpins it, as ever."""
        if self._closer is None:
            self._closer = threading.Thread(target=self._close_loop, name="raylsm-segment-closer", daemon=True)
            self._closer.start()
        self._to_close.put(segment)

    def _close_loop(self) -> None:
        while (segment := self._to_close.get()) is not None:
            segment.close()

    def _pinned(self, segments_dir: str, segment_id: int) -> Segment | None:
        key = (segments_dir, segment_id)
        with self._lock:
            segment = self._open.get(key)
            if segment is None:
                try:
                    segment = Segment.open_reader(segments_dir, segment_id)
                except OSError:
                    return None
                self._open[key] = segment
                while len(self._open) > self._max_open:
                    self._close_later(self._open.popitem(last=False)[1])
            else:
                self._open.move_to_end(key)
            return segment if segment.pin() else None
