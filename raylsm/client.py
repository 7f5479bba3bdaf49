"""TierClient: the raylsm client inside every SGLang process (and the benchmarks).

Owned here: turning a batch of page hashes into store keys and shard groups (one ring lookup per
extent), one call per shard issued in parallel, merging results back in batch order, the same-node
fast path, ring refresh, and mapping every failure to a miss. Owns no data.

Called by the SGLang adapter from HiCache's prefetch, prefetch-IO and backup threads at once:
thread-safe (the ring is swapped atomically; handles and the local reader have their own locks).

Outcomes: `exists` returns a prefix count, `get_into` and `put` a bool per page. A dead, restarting
or slow shard (bounded by `call_timeout_s`) makes its pages misses (or failed puts) and is counted by
cause; no exception escapes a data-path method.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import ray

from raylsm.actors.metrics import ClientMetrics
from raylsm.config import TierConfig
from raylsm.controller.controller_actor import get_controller
from raylsm.router import EmptyRingError, ExtentConfig, HashRing, page_anchors, routing_key
from raylsm.store import format as fmt
from raylsm.store import page_key
from raylsm.store.io_buffers import page_views, parts_nbytes
from raylsm.store.local_reader import LocalSegmentReader

logger = logging.getLogger(__name__)

class _Chunk(NamedTuple):
    """The key of one of several object-path get calls to one shard: its slots start at `start`."""

    shard: str
    start: int


def _shard_of(call_key: "str | _Chunk") -> str:
    return call_key.shard if isinstance(call_key, _Chunk) else call_key


class _Routed:
    """A batch after routing: store keys in batch order and the slots of each shard."""

    __slots__ = ("keys", "groups")

    def __init__(self, keys: list[bytes], groups: dict[str, list[int]]):
        self.keys = keys
        self.groups = groups


class _LocatedPointers:
    """Pointers that `exists` got from same-node shards, kept briefly for the get that follows.

    Keyed by store key; each entry remembers the shard, its segments directory and low watermark,
    and when it expires. Bounded (oldest out first). Thread-safe.
    """

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._entries: OrderedDict[bytes, tuple[float, str, str, int, fmt.Pointer]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._ttl_s > 0

    def add(self, shard: str, keys: Sequence[bytes], segments_dir: str, low_watermark: int,
            pointers: Sequence[fmt.Pointer]) -> None:
        expires = time.monotonic() + self._ttl_s
        entries = self._entries
        with self._lock:
            for key, pointer in zip(keys, pointers):
                entries[key] = (expires, shard, segments_dir, low_watermark, pointer)
                entries.move_to_end(key)
            while len(entries) > self._max_entries:
                entries.popitem(last=False)

    def take(self, shard: str, keys: Sequence[bytes]) -> tuple[str, int, list[fmt.Pointer]] | None:
        """(segments dir, low watermark, pointers) if every key has a fresh entry of `shard`; the
        entries are removed. None (nothing removed) otherwise."""
        now = time.monotonic()
        with self._lock:
            found = [self._entries.get(key) for key in keys]
            if any(entry is None or entry[0] < now or entry[1] != shard for entry in found):
                return None
            for key in keys:
                self._entries.pop(key, None)
        return found[0][2], max(entry[3] for entry in found), [entry[4] for entry in found]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class TierClient:
    def __init__(self, config: TierConfig | None = None, controller: Any = None):
        self._config = (config or TierConfig()).validate()
        client = self._config.client
        self._extents = ExtentConfig(client.extent_pages, client.shallow_depth_pages, client.shallow_extent_pages)
        if not ray.is_initialized():
            ray.init(address=self._config.ray_address or "auto", namespace=self._config.ray_namespace,
                     log_to_driver=False)
        self._namespace = self._config.ray_namespace
        self._controller = controller or get_controller(self._namespace)
        self._node_id = ray.get_runtime_context().get_node_id()
        self._ring = HashRing((), client.virtual_nodes, 0)
        self._ring_info: dict = {"version": -1, "shards": {}}
        self._handles: dict[str, Any] = {}
        self._handles_lock = threading.Lock()
        self._local_reader = LocalSegmentReader(direct_io=client.local_read_direct_io)
        self._located = _LocatedPointers(client.located_pointer_entries, client.located_pointer_ttl_s)
        # Reads done from exists()' pointers, per shard, not yet reported: they ride on the next
        # probe_located call to that shard, or go in the ring refresh loop's flush.
        self._unreported_reads: dict[str, dict[int, list[int]]] = {}  # shard -> segment -> offsets
        self._unreported_lock = threading.Lock()
        self._counters: Counter[str] = Counter()
        self._counters_lock = threading.Lock()
        self._metrics = ClientMetrics()
        self._closed = threading.Event()
        self.refresh_ring()
        self._refresher = threading.Thread(target=self._refresh_loop, name="raylsm-ring-refresh", daemon=True)
        self._refresher.start()

    # ---- ring ---------------------------------------------------------------------------------

    @property
    def ring_version(self) -> int:
        return self._ring_info["version"]

    def refresh_ring(self) -> bool:
        """Fetch the controller's ring; True if it changed. Failures keep the current ring."""
        try:
            info = ray.get(self._controller.ring.remote(), timeout=self._config.client.call_timeout_s)
        except (ray.exceptions.RayError, TimeoutError) as error:
            logger.warning("raylsm: ring refresh failed (%s); keeping version %s", error, self.ring_version)
            return False
        if info["version"] == self._ring_info["version"] and info["shards"] == self._ring_info["shards"]:
            return False  # (a restarted controller may reuse a version number: compare members too)
        previous = self._ring_info["shards"]
        self._ring = HashRing(sorted(info["shards"]), self._config.client.virtual_nodes, max(info["version"], 0))
        self._ring_info = info
        with self._handles_lock:  # a shard that moved to another node is a new actor: resolve it again
            self._handles = {name: handle for name, handle in self._handles.items()
                             if info["shards"].get(name) == previous.get(name)}
        logger.info("raylsm: ring version %d with %d shards", info["version"], len(info["shards"]))
        return True

    def _refresh_loop(self) -> None:
        while not self._closed.wait(self._config.client.ring_refresh_s):
            try:
                self.report_reads()
                self.refresh_ring()
            except Exception:  # the thread must outlive any one failure, or the ring goes stale
                logger.exception("raylsm: ring refresh failed")

    def _handle(self, shard: str) -> Any:
        with self._handles_lock:
            handle = self._handles.get(shard)
        if handle is None:
            handle = ray.get_actor(shard, namespace=self._namespace)
            with self._handles_lock:
                self._handles[shard] = handle
        return handle

    def _route(self, namespace_id: bytes, page_hashes: Sequence[bytes],
               prefix_hashes: Sequence[bytes] | None) -> _Routed:
        ring = self._ring
        keys: list[bytes] = []
        groups: dict[str, list[int]] = {}
        shard_of_anchor: dict[bytes, str] = {}
        for slot, (page, (depth, anchor)) in enumerate(
                zip(page_hashes, page_anchors(page_hashes, prefix_hashes, self._extents))):
            keys.append(page_key.encode(namespace_id, anchor, depth, page))
            shard = shard_of_anchor.get(anchor)
            if shard is None:
                shard = shard_of_anchor[anchor] = ring.shard_for(routing_key(namespace_id, anchor))
            groups.setdefault(shard, []).append(slot)
        return _Routed(keys, groups)

    # ---- data path ----------------------------------------------------------------------------

    def exists(self, namespace_id: bytes, page_hashes: Sequence[bytes],
               prefix_hashes: Sequence[bytes] | None = None) -> int:
        """How many leading pages of the batch the tier holds (0 on any failure)."""
        if not page_hashes:
            return 0
        try:
            routed = self._route(namespace_id, page_hashes, prefix_hashes)
            present = [False] * len(page_hashes)
            local = self._split_local(routed.groups)[0] if self._located.enabled else {}
            calls = {shard: (("probe_located", ([routed.keys[s] for s in slots], self._take_unreported(shard)))
                             if shard in local else ("probe", ([routed.keys[s] for s in slots],)))
                     for shard, slots in routed.groups.items()}
            for shard, value in self._fan_out(calls).items():
                if shard in local and isinstance(value, tuple):
                    segments_dir, low_watermark, pointers = value
                    keys = [routed.keys[s] for s in routed.groups[shard][:len(pointers)]]
                    self._located.add(shard, keys, segments_dir, low_watermark, pointers)
                    value = len(pointers)
                if isinstance(value, int):
                    for slot in routed.groups[shard][:value]:
                        present[slot] = True
            count = present.index(False) if False in present else len(present)
            self._count(exists_calls=1, exists_pages=len(page_hashes), exists_hits=count)
            return count
        except EmptyRingError:
            self._count(miss_no_shards=len(page_hashes))
            return 0
        except Exception:  # never into SGLang's threads
            logger.exception("raylsm: exists failed")
            self._count(miss_error=len(page_hashes))
            return 0

    def get_into(self, namespace_id: bytes, page_hashes: Sequence[bytes], prefix_hashes: Sequence[bytes] | None,
                 out_buffers: Sequence[Any]) -> list[bool]:
        """Fill out_buffers[i] (a buffer, or a list of buffers for the page's parts) with page i;
        True per verified hit. Same-node shards are read from their segment files directly."""
        results = [False] * len(page_hashes)
        if not page_hashes:
            return results
        try:
            routed = self._route(namespace_id, page_hashes, prefix_hashes)
            local, remote = self._split_local(routed.groups)
            page_parts = [page_views(buffer) for buffer in out_buffers]  # once per page, shared below
            page_bytes = [parts_nbytes(parts) for parts in page_parts]
            calls: dict[str | _Chunk, tuple[str, tuple]] = {}
            chunks = {}  # remote shards' slots, in calls of at most object_chunk_bytes each
            for shard, slots in remote.items():
                for start, chunk in _chunked(slots, page_bytes, self._config.client.object_chunk_bytes):
                    chunks[_Chunk(shard, start)] = chunk
                    calls[_Chunk(shard, start)] = ("get_batch", ([routed.keys[s] for s in chunk],
                                                                 [page_bytes[s] for s in chunk]))
            located = {}
            for shard, slots in local.items():
                keys = [routed.keys[s] for s in slots]
                located[shard] = self._located.take(shard, keys) if self._located.enabled else None
                if located[shard] is None:
                    calls[shard] = ("locate_batch", (keys,))

            def scatter(call_key: str | _Chunk, value: Any) -> None:
                """Copy a remote chunk's pages out of the object store as soon as it arrives."""
                if isinstance(call_key, _Chunk) and not isinstance(value, BaseException):
                    hits, data = value
                    slots = chunks[call_key]
                    _scatter(data, hits, [page_parts[s] for s in slots])
                    for slot, hit in zip(slots, hits):
                        results[slot] = bool(hit)

            pending = self._submit(calls)
            for shard, value in located.items():  # read what exists() located while the calls run
                if value is not None:
                    self._read_local(shard, value, routed.groups[shard], page_parts, results, note_reads=True)
            for call_key, value in self._collect(pending, on_result=scatter).items():
                if call_key in local and not isinstance(value, BaseException) and value is not None:
                    self._read_local(call_key, value, routed.groups[call_key], page_parts, results, note_reads=False)
            hits = sum(results)
            self._count(get_calls=1, get_pages=len(results), get_hits=hits)
            return results
        except EmptyRingError:
            self._count(miss_no_shards=len(page_hashes))
            return results
        except Exception:
            logger.exception("raylsm: get failed")
            self._count(miss_error=len(page_hashes))
            return [False] * len(page_hashes)

    def _read_local(self, shard: str, located: tuple[str, int, list], slots: Sequence[int],
                    page_parts: Sequence[Any], results: list[bool], note_reads: bool) -> None:
        """Read a same-node shard's pages from its segment files into the slots' buffers. With
        `note_reads` (the pointers came from exists, so the shard has not counted these reads),
        remember what was read for the shard: those reads earn reinsertion there, reported with
        the next probe to it (a Ray call per get cost ~20% of the get's time)."""
        segments_dir, low_watermark, pointers = located
        self._local_reader.forget_below(segments_dir, low_watermark)
        outcome = self._local_reader.read_into(segments_dir, pointers, [page_parts[s] for s in slots])
        for slot, hit in zip(slots, outcome.results):
            results[slot] = bool(hit)
        self._count(local_read_pages=len(slots), local_miss_corrupt=outcome.corrupt,
                    local_miss_io=outcome.io_errors, local_miss_stale=outcome.stale,
                    local_reads_without_call=len(slots) if note_reads else 0)
        if note_reads and outcome.hit_offsets:
            with self._unreported_lock:
                unreported = self._unreported_reads.setdefault(shard, {})
                for segment_id, offsets in outcome.hit_offsets.items():
                    unreported.setdefault(segment_id, []).extend(offsets)

    def _take_unreported(self, shard: str) -> dict[int, list[int]]:
        with self._unreported_lock:
            return self._unreported_reads.pop(shard, {})

    def report_reads(self, wait: bool = False) -> None:
        """Send every shard the reads not yet reported; with `wait`, until they arrived (at most
        call_timeout_s). A shard that is gone loses them: its read counts no longer matter."""
        with self._unreported_lock:
            pending, self._unreported_reads = self._unreported_reads, {}
        calls = {shard: ("note_reads", (offsets,)) for shard, offsets in pending.items()}
        if wait:
            self._fan_out(calls)
        else:
            self._submit(calls)

    def put(self, namespace_id: bytes, page_hashes: Sequence[bytes], prefix_hashes: Sequence[bytes] | None,
            values: Sequence[Any]) -> list[bool]:
        """Store pages (each a buffer or a list of part buffers); True per page stored or present."""
        results = [False] * len(page_hashes)
        if not page_hashes:
            return results
        try:
            routed = self._route(namespace_id, page_hashes, prefix_hashes)
            calls = {shard: ("put_batch", ([routed.keys[s] for s in slots], [_as_arrays(values[s]) for s in slots]))
                     for shard, slots in routed.groups.items()}
            for shard, value in self._fan_out(calls).items():
                if isinstance(value, list):
                    for slot, ok in zip(routed.groups[shard], value):
                        results[slot] = bool(ok)
            self._count(put_calls=1, put_pages=len(results), put_stored=sum(results))
            return results
        except EmptyRingError:
            self._count(put_failed_no_shards=len(page_hashes))
            return results
        except Exception:
            logger.exception("raylsm: put failed")
            self._count(put_failed_error=len(page_hashes))
            return [False] * len(page_hashes)

    def clear_namespace(self, namespace_id: bytes) -> int:
        """Delete one namespace's pages on every shard of the ring; returns pages deleted."""
        self._located.clear()
        calls = {shard: ("delete_namespace", (namespace_id,)) for shard in self._ring.shards}
        return sum(value for value in self._fan_out(calls).values() if isinstance(value, int))

    # ---- plumbing -----------------------------------------------------------------------------

    def _split_local(self, groups: dict[str, list[int]]) -> tuple[dict, dict]:
        if not self._config.client.same_node_fast_path:
            return {}, groups
        shards = self._ring_info["shards"]
        local = {s: slots for s, slots in groups.items() if shards.get(s, {}).get("node_id") == self._node_id}
        remote = {s: slots for s, slots in groups.items() if s not in local}
        return local, remote

    def _fan_out(self, calls: dict[str, tuple[str, tuple]]) -> dict[str, Any]:
        """Call method(*args) on every shard at once; wait at most call_timeout_s in total. The value
        per shard, or an exception (RayError; ValueError for a shard whose actor is gone;
        TimeoutError for one that did not answer). One failing shard never fails the others."""
        return self._collect(self._submit(calls))

    def _submit(self, calls: dict[Any, tuple[str, tuple]]) -> tuple[dict, dict[Any, Any]]:
        """Issue the calls of `_fan_out` without waiting: (refs by call key, failures so far). A call
        key is a shard name, or a `_Chunk` for one of several calls to a shard."""
        refs = {}
        results: dict[Any, Any] = {}
        for call_key, (method, args) in calls.items():
            pages = len(args[0]) if args and isinstance(args[0], list) else 0
            try:
                refs[getattr(self._handle(_shard_of(call_key)), method).remote(*args)] = (call_key, method, pages)
            except Exception as error:  # e.g. the actor handle is gone
                results[call_key] = error
                self._count_failure(_shard_of(call_key), method, pages, error)
        return refs, results

    def _collect(self, submitted: tuple[dict, dict[Any, Any]],
                 on_result: Callable[[Any, Any], None] | None = None) -> dict[Any, Any]:
        """Wait for submitted calls (call_timeout_s in total); the value or exception per call key.
        `on_result(call_key, value)` runs for each answer as it arrives (before the others)."""
        refs, results = submitted
        deadline = time.monotonic() + self._config.client.call_timeout_s
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1 if on_result else len(pending),
                                      timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            for ref in ready:
                call_key, method, pages = refs[ref]
                try:
                    results[call_key] = ray.get(ref)
                except Exception as error:
                    results[call_key] = error
                    self._count_failure(_shard_of(call_key), method, pages, error)
                if on_result is not None:
                    on_result(call_key, results[call_key])
        for ref in pending:
            call_key, method, pages = refs[ref]
            shard = _shard_of(call_key)
            results[call_key] = TimeoutError(f"shard {shard} did not answer in time")
            self._count(timeouts=1)
            self._metrics.failed(shard, method, "timeout", pages)
            ray.cancel(ref)
        return results

    def _count_failure(self, shard: str, method: str, pages: int, error: BaseException) -> None:
        if isinstance(error, (ray.exceptions.RayActorError, ValueError)):
            self._count(shard_down=1)
            self._metrics.failed(shard, method, "shard_down", pages)
            if isinstance(error, ray.exceptions.ActorDiedError):
                # Dead for good: the controller starts a new actor under the same name; look it up
                # again on the next call instead of calling the dead one forever.
                with self._handles_lock:
                    self._handles.pop(shard, None)
        else:
            self._count(call_errors=1)
            self._metrics.failed(shard, method, "error", pages)
        logger.debug("raylsm: shard %s call failed: %r", shard, error)

    def _count(self, **deltas: int) -> None:
        with self._counters_lock:
            self._counters.update(deltas)

    def stats(self) -> dict:
        with self._counters_lock:
            counters = dict(self._counters)
        return {"ring_version": self.ring_version, "shards": len(self._ring_info["shards"]), "counters": counters}

    def close(self) -> None:
        self._closed.set()
        self.report_reads()
        self._local_reader.close()


def _as_arrays(value: Any) -> Any:
    """A page's bytes as numpy views (no copy), so Ray ships them out of band, not pickled."""
    if isinstance(value, (list, tuple)):
        return [np.frombuffer(part, dtype=np.uint8) for part in page_views(value)]
    return np.frombuffer(page_views(value)[0], dtype=np.uint8)


def _scatter(data: np.ndarray, hits: Sequence[bool], page_parts: Sequence[Sequence[memoryview]]) -> None:
    """Copy each hit page from the shard's returned array into the caller's page parts."""
    offset = 0
    for hit, parts in zip(hits, page_parts):
        for part in parts:
            if hit:
                part[:] = data[offset: offset + part.nbytes]
            offset += part.nbytes


def _chunked(slots: Sequence[int], page_bytes: Sequence[int], chunk_bytes: int) -> list[tuple[int, list[int]]]:
    """`slots` cut into runs of at most `chunk_bytes` (at least one page each): (start, run) pairs."""
    chunks: list[tuple[int, list[int]]] = []
    start, nbytes = 0, 0
    for index, slot in enumerate(slots):
        if index > start and nbytes + page_bytes[slot] > chunk_bytes:
            chunks.append((start, list(slots[start:index])))
            start, nbytes = index, 0
        nbytes += page_bytes[slot]
    if len(slots) > start:
        chunks.append((start, list(slots[start:])))
    return chunks
