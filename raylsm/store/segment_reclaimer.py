"""Freeing disk: evicting whole segments (re-appending the pages that earned it) and the background
reclaimer that keeps a segment of free space ahead of the writer.

Owned here: `evict_oldest` (one segment out: plan and read without the write lock, then one short
locked commit), `reappend` (kept pages back in, in small locked records), and `SegmentReclaimer`,
the thread that runs them whenever the store holds less than one free segment (in a disk budget
pool, whenever the pool is short of room and this store holds its oldest segment). Called by
ShardStore only: a put that rolls a segment either finds room (the reclaimer made it) or, if the
reclaimer lags, drops the oldest segment whole, without reading or re-appending anything.
NOTE: before, a roll evicted and re-appended up to a whole segment of kept pages under the write
lock on SGLang's backup thread: full-trace replay put p99 200 ms against HiCacheFile's 69 ms.

Crash safety is the store's: pointers are committed only after their bytes are written; the low
watermark moves past a segment in the same WriteBatch that deletes its pointers, then its file is
unlinked. The reclaimer re-appends a segment's kept pages before that commit (their new pointers
replace the old, so they are never absent; a crash in between leaves both copies' bytes and the
newer pointer). A roll evicting inline re-appends after it (absent meanwhile: a miss, never wrong
bytes).
Thread-safety: each function takes the store's write lock for its commits (an RLock: callers that
hold it may call them). Imports no Ray, SGLang or torch.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

from raylsm.store import format as fmt
from raylsm.store import page_key
from raylsm.store.disk_room import sealed_segment_ids
from raylsm.store.io_buffers import aligned_empty
from raylsm.store.page_reader import read_verified

if TYPE_CHECKING:
    from raylsm.store.shard_store import ShardStore

logger = logging.getLogger(__name__)

REAPPEND_RECORD_BYTES = 4 << 20  # a re-append holds the write lock for one record of at most this


class KeptPage(NamedTuple):
    key: bytes
    value: np.ndarray  # its verified bytes
    checksum: int
    origin: tuple[int, int]  # (segment id, value offset) it is evicted from
    credit: int = 0  # reads it keeps for its next eviction (StoreConfig.reinsertion_read_credits)


class EvictionForwarder(Protocol):
    """What the reclaimer hands evicted pages to (`ShardStore.forwarder`): the shard actor's
    forwarding to a shard that evicts older pages (raylsm.actors.forwarding)."""

    def wants(self, sealed_at: float) -> bool:
        """Whether the pages of a segment sealed at `sealed_at` (wall clock) should be forwarded
        rather than dropped: read them only if so."""

    def forward(self, pages: list[KeptPage], sealed_at: float) -> None:
        """Take the verified pages this eviction dropped (their index entries are gone) from a
        segment sealed at `sealed_at`; must not block (a queue and a thread of its own)."""


def evict_oldest(store: "ShardStore", budget: list[int], reappend_first: bool = False) -> list[KeptPage]:
    """Free the oldest sealed segment. Pages that earned it (by the reinsertion policy, within the
    remaining byte budget `budget[0]`, which this spends) are read into memory; the rest lose their
    pointers. Planning and reading run without the write lock (the segment is pinned); the commit
    takes it: pointers still into the segment are deleted and the low watermark moves past it in
    one WriteBatch, then the file is unlinked.

    `reappend_first` (the reclaimer): the kept pages are re-appended before the commit, so a kept
    page is never absent (disk use passes the budget by at most the kept bytes, one segment, until
    the commit); returns []. Otherwise (a roll evicting inline, under the write lock) the kept pages
    lose their pointers too and are returned for the caller's `reappend`. Returns [] if there is no
    sealed segment or another eviction freed this one meanwhile.
    NOTE: before, kept pages were absent between the commit and their re-append (a probe then missed
    them, and the request wrote them again). On a direct replay of the packaged trace (0.25 of its
    conversations, capacity 0.10, 1 store) re-appending first moved the hit ratio only from 0.2024 to
    0.2027: a single replay thread rarely probes inside that window; a fleet's many clients do."""
    with store._write_lock:
        sealed = sealed_segment_ids(store)
        if not sealed:
            return []
        segment_id = sealed[0]
        segment = store._segments[segment_id]
        if not segment.pin():
            return []
    forwarder = store.forwarder
    forwarded: list[KeptPage] = []
    try:
        try:
            plan = _plan(store, segment, segment_id, budget)
            if reappend_first:
                # From here the eviction will free its segment less what it re-appends: a roll
                # may count that room now instead of waiting for the commit (disk use stays within
                # the budget plus this one segment until then, as for the re-append itself).
                # NOTE: packaged trace, 0.25 of its conversations, capacity 0.10, 1 shard: 74 rolls
                # waited 2,142 ms in all for the commit; put p50 / p99 21.67 / 62.94 ms.
                with store._write_lock:
                    store._freeing_bytes = max(0, segment.file_bytes - plan.charged)
                    store._room.notify_all()
                if plan.kept:
                    drop_kept(store, reappend(store, [page for page, _ in plan.kept], into_room=True, at_origin=True))
                    plan = plan._replace(kept=[])  # re-appended pages point elsewhere now; the rest are evicted
                if forwarder is not None and forwarder.wants(segment.sealed_at):
                    forwarded = _read_live(store, segment, segment_id, plan.entries)
        finally:
            segment.unpin()
        if not forwarded:
            return _commit(store, segment, segment_id, plan)
        evicted: set[bytes] = set()
        kept = _commit(store, segment, segment_id, plan, evicted)
        # Only what this commit evicted: a page deleted or stored again meanwhile is not forwarded
        # (a delete must never be undone elsewhere).
        forwarded = [page for page in forwarded if page.key in evicted]
        if forwarded:
            forwarder.forward(forwarded, segment.sealed_at)
        return kept
    finally:
        if reappend_first:
            with store._write_lock:
                store._freeing_bytes = 0


class _Plan(NamedTuple):
    entries: list[tuple[int, bytes, int]]  # (value offset, key, length) of every walked page
    walked_to: int  # offset past the last intact record
    kept: list[tuple[KeptPage, int]]  # (kept page, its value offset)
    charged: int  # budget spent on the kept pages (their aligned bytes and one record header)


def _plan(store: "ShardStore", segment, segment_id: int, budget: list[int]) -> _Plan:
    """Walk the segment, pick the pages to keep and read them (verified). No lock held."""
    reads = store._reads_since_written.pop(segment_id, {})
    records = list(segment.walk())
    entries = [(record_offset + entry.offset_in_batch, entry.key, entry.length)
               for record_offset, record_entries in records for entry in record_entries]
    walked_to = (records[-1][0] + fmt.plan_batch([e.length for e in records[-1][1]]).batch_bytes) if records else 0
    current = store._index.get_many([key for _, key, _ in entries]) if entries else []
    candidates: list[tuple[bytes, fmt.Pointer, int]] = []  # (key, pointer, credit)
    credits = store._config.reinsertion_read_credits
    spent = 0  # aligned value bytes of the candidates
    deepest: dict[bytes, int] = {}  # extent prefix -> depth of its deepest page in a newer segment
    for (offset, key, length), raw in zip(entries, current):
        pointer = fmt.decode_pointer(raw) if raw is not None else None
        if pointer is None or pointer.segment_id != segment_id or pointer.offset != offset:
            continue  # deleted, or already moved elsewhere
        charge = fmt.align_up(length)
        read = reads.get(offset, 0)
        # Kept pages must fit one record of a fresh segment: their aligned bytes and its header.
        if spent + charge + fmt.header_bytes_for(len(candidates) + 1) <= budget[0] and \
                store._reinsertion.should_reinsert(key, read,
                                                   lambda key=key: _prefix_of_live(store, key, segment_id, deepest)):
            spent += charge
            candidates.append((key, pointer, max(0, min(read, credits) - 1)))
    # A page that fails its checksum or its read is evicted instead.
    kept = [(page, page.origin[1]) for page in _read_pages(store, segment, segment_id, candidates)]
    charged = spent + fmt.header_bytes_for(len(candidates)) if candidates else 0
    budget[0] -= charged
    return _Plan(entries, walked_to, kept, charged)


def _read_pages(store: "ShardStore", segment, segment_id: int,
                wanted: list[tuple[bytes, fmt.Pointer, int]]) -> list[KeptPage]:
    """One merged, verified read (neighbours in one preadv) of the (key, pointer, credit) pages of
    the segment, into slices of one aligned buffer; pages that fail their checksum or read are left
    out. The caller holds the segment pinned."""
    if not wanted:
        return []
    ends = np.cumsum([fmt.align_up(pointer.length) for _, pointer, _ in wanted])
    buffer = aligned_empty(int(ends[-1]))
    values = [buffer[start:start + pointer.length] for start, (_, pointer, _) in zip([0, *ends[:-1].tolist()], wanted)]
    outcome = read_verified(list(enumerate(pointer for _, pointer, _ in wanted)),
                            {slot: (memoryview(value),) for slot, value in enumerate(values)}, len(wanted),
                            store._config.merge_gap_bytes, store._config.direct_io,
                            lambda _: segment if segment.pin() else None)
    return [KeptPage(key, value, pointer.checksum, (segment_id, pointer.offset), credit)
            for (key, pointer, credit), value, ok in zip(wanted, values, outcome.results) if ok]


def _read_live(store: "ShardStore", segment, segment_id: int,
               entries: list[tuple[int, bytes, int]]) -> list[KeptPage]:
    """Read (verified) every page of the segment that the index still points at: the pages its
    eviction will drop, for the forwarder (`_read_pages`)."""
    current = store._index.get_many([key for _, key, _ in entries]) if entries else []
    live = []
    for (offset, key, _), raw in zip(entries, current):
        pointer = fmt.decode_pointer(raw) if raw is not None else None
        if pointer is not None and pointer.segment_id == segment_id and pointer.offset == offset:
            live.append((key, pointer, 0))
    return _read_pages(store, segment, segment_id, live)


def _commit(store: "ShardStore", segment, segment_id: int, plan: _Plan,
            evicted_out: set[bytes] | None = None) -> list[KeptPage]:
    """Delete the pointers still into the segment, move the low watermark, unlink the file. The
    keys whose pointers it deleted go into `evicted_out` when given."""
    with store._write_lock:
        if store._segments.get(segment_id) is not segment:
            return []  # freed meanwhile (a put that found no room, or a lowered capacity)
        index = store._index
        batch = index.new_batch()
        current = index.get_many([key for _, key, _ in plan.entries]) if plan.entries else []
        still_here: set[int] = set()
        forgotten: list[bytes] = []
        evicted_pages = evicted_bytes = 0
        for (offset, key, length), raw in zip(plan.entries, current):
            pointer = fmt.decode_pointer(raw) if raw is not None else None
            if pointer is None or pointer.segment_id != segment_id or pointer.offset != offset:
                continue
            batch.delete(key)
            forgotten.append(key)
            still_here.add(offset)
            evicted_pages += 1
            evicted_bytes += length
        if plan.walked_to < segment.write_offset:
            # A damaged record header hid the rest of the segment from the walk: find the pointers
            # into it in the index (rare, and a full scan) so that none outlives its bytes.
            for key, raw in index.scan_pages():
                pointer = fmt.decode_pointer(raw)
                if pointer is not None and pointer.segment_id == segment_id and pointer.offset >= plan.walked_to:
                    batch.delete(key)
                    forgotten.append(key)
        store._forget_many(forgotten)
        if evicted_out is not None:
            evicted_out.update(forgotten)
        kept = [page for page, offset in plan.kept if offset in still_here]
        batch.put(fmt.META_LOW_WATERMARK, fmt.encode_u32(segment_id + 1))
        store._reads_since_written.pop(segment_id, None)  # (reads counted while it was re-appended)
        index.commit(batch)
        del store._segments[segment_id]
        store._freeing_bytes = 0  # (its room is in the disk bytes now)
        store._live.drop(segment_id)
        segment.unlink()
        store._room.notify_all()  # a put waiting for room in a roll
    # NOTE: closed after the write lock is let go: closing the last descriptor of an unlinked file
    # frees its blocks in the kernel, synchronously (5-11 ms for 26 MB here). py-spy on the shard
    # actor, full packaged trace, 1 shard, capacity 0.1 (26 MB segments): 135 of 6,000 samples in
    # that close, under the lock, while a put waited for the lock in 93 others.
    segment.retire(unlink=False)
    kept_bytes = sum(page.value.nbytes for page in kept)
    store._stats.add(evicted_segments=1, evicted_pages=evicted_pages - len(kept),
                     evicted_bytes=evicted_bytes - kept_bytes)
    if store._workload is not None:
        kept_keys = {page.key for page in kept}
        store._workload.evicted([key for offset, key, _ in plan.entries
                                 if offset in still_here and key not in kept_keys])
    return kept


def _prefix_of_live(store: "ShardStore", key: bytes, segment_id: int, deepest: dict[bytes, int]) -> bool:
    """Whether a deeper page of this key's extent lives in a segment newer than `segment_id`
    (one index seek per extent, cached in `deepest` for the eviction at hand)."""
    prefix = page_key.extent_prefix(key)
    depth = deepest.get(prefix)
    if depth is None:
        depth = -1
        last = store._index.last_with_prefix(prefix)
        if last is not None:
            pointer = fmt.decode_pointer(last[1])
            if pointer is not None and pointer.segment_id > segment_id:
                depth = page_key.decode(last[0]).depth
        deepest[prefix] = depth
    return page_key.decode(key).depth < depth


def reappend(store: "ShardStore", kept: list[KeptPage], into_room: bool, at_origin: bool = False,
             record_bytes: int = REAPPEND_RECORD_BYTES) -> list[KeptPage]:
    """Write kept pages back, in records of at most `record_bytes`, each under the write lock (puts
    run in between). With `at_origin` only pages whose pointer is still the one evicted are
    written (the eviction has not committed yet); otherwise only absent ones (it has). A page stored
    again or deleted meanwhile is skipped, so a delete is never undone. What does not fit the active
    segment goes into a new one with `into_room`, whether or not the store has room (kept pages are
    at most one segment per eviction, so disk use stays within the budget plus one segment until the
    eviction commits); without it the pages left over are returned, uncounted. Counts
    the pages re-appended as reinserted; each keeps its banked reads (`KeptPage.credit`) at its new
    place, as reads since written.
    NOTE: re-appending only while the store (or its budget pool) had room dropped the kept pages
    whenever a waiting put took the freed segment first: a direct replay of the agentic workload
    into 2 pooled stores re-appended 20k pages (51k into one store) and hit 0.107 (one store 0.140)."""
    written = written_bytes = 0
    start = 0
    while start < len(kept):
        end, nbytes = start, 0
        while end < len(kept) and (end == start or nbytes + kept[end].value.nbytes <= record_bytes):
            nbytes += kept[end].value.nbytes
            end += 1
        with store._write_lock:
            if store._closed:
                break
            chunk = kept[start:end]
            if at_origin:
                chunk = [page for page, current in zip(chunk, store._index.get_many([page.key for page in chunk]))
                         if _where(current) == page.origin]
            else:
                chunk = [page for page, here in zip(chunk, store._present_flags([page.key for page in chunk]))
                         if not here]
            fits = store._active is not None and store._fits_active([page.value.nbytes for page in chunk])
            if chunk and not fits and not into_room:
                break
            ok = store._append_pages([page.key for page in chunk], [(memoryview(page.value),) for page in chunk],
                                     [page.value.nbytes for page in chunk], [page.checksum for page in chunk],
                                     roll=into_room, wait_for_room=False) if chunk else []
            stored = [page for page, done in zip(chunk, ok) if done]
            _bank_credits(store, [page for page in stored if page.credit])
        written += len(stored)
        written_bytes += sum(page.value.nbytes for page in stored)
        if len(stored) < len(chunk):
            break
        start = end
    store._stats.add(reinserted_pages=written, reinserted_bytes=written_bytes)
    return kept[start:] if start < len(kept) else []


def _where(raw: bytes | None) -> tuple[int, int] | None:
    pointer = fmt.decode_pointer(raw) if raw is not None else None
    return (pointer.segment_id, pointer.offset) if pointer is not None else None


def _bank_credits(store: "ShardStore", pages: list[KeptPage]) -> None:
    """Carry re-appended pages' banked reads to their new places (one index multi-get). Caller holds
    the write lock, so the pointers are the ones just written."""
    if not pages:
        return
    offsets: dict[int, dict[int, int]] = {}
    for page, raw in zip(pages, store._index.get_many([page.key for page in pages])):
        pointer = fmt.decode_pointer(raw) if raw is not None else None
        if pointer is not None:
            offsets.setdefault(pointer.segment_id, {})[pointer.offset] = page.credit
    for segment_id, credits in offsets.items():
        if segment_id in store._segments:
            reads = store._reads_since_written.setdefault(segment_id, {})
            for offset, credit in credits.items():
                reads[offset] = reads.get(offset, 0) + credit  # (a read may have come first)


def drop_kept(store: "ShardStore", kept: list[KeptPage]) -> None:
    """Count kept pages that could not be re-appended as evicted."""
    if kept:
        store._stats.add(evicted_pages=len(kept), evicted_bytes=sum(page.value.nbytes for page in kept))


class SegmentReclaimer:
    """A thread that frees the oldest segments, with reinsertion, while the store holds less than
    one segment of free space (so the next roll finds room). Woken by each roll; also checks every
    `period_s`. `stop()` joins it. Failures are logged and retried at the next wake-up."""

    def __init__(self, store: "ShardStore", period_s: float = 0.25) -> None:
        self._store = store
        self._period_s = period_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._loop, name="raylsm-reclaimer", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Wake the reclaimer and wait until it has nothing left to do (tests, benchmarks)."""
        self._idle.clear()
        self._wake.set()
        return self._idle.wait(timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._period_s)
            self._wake.clear()
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 (the thread must outlive any one failure)
                logger.exception("store %s: reclaim failed", self._store.root)
            if not self._wake.is_set():
                self._idle.set()

    def run_once(self) -> int:
        """Free segments until the store (or its budget pool) has its room again, or none is left
        to free; each segment's kept pages are re-appended before it is freed (never absent) and
        before the next is chosen. Returns segments freed.
        NOTE: one reinsertion budget per pass (kept pages of every segment the pass freed within one
        segment) dropped most kept pages when a pass freed several: a direct replay of the agentic
        workload into 8 pooled stores re-appended 25k pages and hit 0.111."""
        store = self._store
        config = store._config
        freed = 0
        store.room_state()  # (in a budget pool: this store's heartbeat, also while it has nothing to free)
        while store._has_sealed_segment() and not self._stop.is_set() and not store._closed:
            room = store.room_state()
            if not (room.needs_room and room.my_turn):
                break  # (in a budget pool, the member holding the oldest segment frees it)
            # NOTE: a budget of the segment less two blocks, each page charged a header entry on top,
            # kept 130 of a segment's 131 read pages (48 KiB pages, segments of exactly 131): the
            # dropped page cut its chain, and a direct replay of the packaged trace (0.25 of its
            # conversations, capacity 0.10, 1 store) hit 0.204 where the segment-clock model hit 0.209.
            budget = [int(config.segment_bytes * config.reinsertion_budget_fraction)]
            evict_oldest(store, budget, reappend_first=True)
            freed += 1
        return freed
