"""TierClient: the raylsm client inside every SGLang process (and the benchmarks).

Owned here: the data path (exists, get_into, put, clear_namespace): one call per shard issued in
parallel, results merged back in batch order, the same-node fast path, and every failure mapped to a
miss. The ring and routing are in client_ring.py, the shard calls in client_calls.py (mixins over
this class's state). Owns no data.

Called by the SGLang adapter from HiCache's prefetch, prefetch-IO and backup threads at once:
thread-safe (the ring is swapped atomically; handles and the local reader have their own locks).

Outcomes: `exists` returns a prefix count, `get_into` and `put` a bool per page. A dead, restarting
or slow shard (bounded by `call_timeout_s`) makes its pages misses (or failed puts) and is counted by
cause; no exception escapes a data-path method.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from typing import Any, Sequence

import numpy as np
import ray

from raylsm.actors.metrics import ClientMetrics
from raylsm.client_forwarding import ForwardHints
from raylsm.client_calls import ShardCalls, _Chunk, _retryable, _Unsettled
from raylsm.client_ring import RingView, _Routed
from raylsm.config import INLINE_ENV, TierConfig
from raylsm.controller.controller_actor import get_controller
from raylsm.local_reads import BoundedLocalReader, LocatedPointers
from raylsm.router import EmptyRingError, ExtentConfig, HashRing
from raylsm.shard_health import ShardHealth
from raylsm.store.io_buffers import page_views, parts_nbytes
from raylsm.store.local_reader import LocalSegmentReader
from raylsm.store.outcomes import ACCEPTED, PutOutcome

logger = logging.getLogger(__name__)

CLOSE_JOIN_S = 10.0  # how long close() waits for each background thread's call in flight


class TierClient(RingView, ShardCalls):
    def __init__(self, config: TierConfig | None = None, controller: Any = None):
        self._config = (config or TierConfig()).validate()
        client = self._config.client
        self._extents = ExtentConfig(client.extent_pages, client.shallow_depth_pages, client.shallow_extent_pages,
                                     client.split_extent_pages)
        # Extent ids of the regular extents the controller split (hot shared prefixes; router.page_anchors).
        self._split_extents: frozenset[bytes] = frozenset()
        self._splits_version = -1
        if not ray.is_initialized():
            if client.inline_call_bytes:  # read by Ray's core worker as it starts; a user's own value wins
                os.environ.setdefault(INLINE_ENV, str(client.inline_call_bytes))
            ray.init(address=self._config.ray_address or "auto", namespace=self._config.ray_namespace,
                     log_to_driver=False)
        self._namespace = self._config.ray_namespace
        self._controller = controller or get_controller(self._namespace)
        self._node_id = ray.get_runtime_context().get_node_id()
        self._ring = HashRing((), client.virtual_nodes, 0)
        self._ring_info: dict = {"version": -1, "shards": {}}
        # The ring before the last change, until when reads fall back to it (`_handoff_fallback`),
        # and the shards that left the ring but still serve (a scale-in's grace).
        self._previous_ring: HashRing | None = None
        self._previous_until = 0.0
        self._leaving: frozenset[str] = frozenset()
        # Namespace generations (raylsm.namespaces): base id -> id of its current generation, for
        # the namespaces that were ever cleared. Only ever moves forward.
        self._generations: dict[str, int] = {}
        self._current_ids: dict[bytes, bytes] = {}
        # Index namespace id -> the id its pages are routed by (route_namespace_as).
        self._routing_ids: dict[bytes, bytes] = {}
        self._handles: dict[str, Any] = {}
        self._handles_lock = threading.Lock()
        self._health = ShardHealth(max_check_delay_s=client.ring_refresh_s)
        self._local_reader = LocalSegmentReader(direct_io=client.local_read_direct_io)
        self._bounded_reader = BoundedLocalReader(self._local_reader, self._health)
        self._located = LocatedPointers(client.located_pointer_entries, client.located_pointer_ttl_s)
        # Where shards said they forwarded pages (raylsm.client_forwarding), for the reads that follow;
        # kept at least 2 s even with the fast path's pointers off (ttl 0): exists needs them too.
        self._forward_hints = ForwardHints(client.located_pointer_entries, max(client.located_pointer_ttl_s, 2.0))
        # Reads done on the fast path, per shard, not yet reported: they ride on the next
        # probe_located, locate_batch or put call to that shard, or go in the reporter's flush every
        # READ_REPORT_S.
        self._unreported_reads: dict[str, dict[int, list[int]]] = {}  # shard -> segment -> offsets
        self._unreported_lock = threading.Lock()
        self._unsettled: list[_Unsettled] = []
        self._unsettled_lock = threading.Lock()
        self._counters: Counter[str] = Counter()
        self._counters_lock = threading.Lock()
        self._metrics = ClientMetrics()
        self._closed = threading.Event()
        self.refresh_ring()
        self._refresher = threading.Thread(target=self._background_loop, name="raylsm-ring-refresh", daemon=True)
        self._refresher.start()
        self._reporter = threading.Thread(target=self._report_loop, name="raylsm-read-report", daemon=True)
        self._reporter.start()
        self._health_checker = threading.Thread(target=self._health_loop, name="raylsm-health", daemon=True)
        self._health_checker.start()

    @property
    def metrics(self) -> ClientMetrics:
        """This process's client-side metrics (the SGLang adapter times its calls with them)."""
        return self._metrics

    # ---- data path ----------------------------------------------------------------------------

    def _probe_into(self, routed: _Routed, present: list[bool]) -> None:
        """Probe every shard group of `routed` at once; mark the slots each shard holds (its group's
        leading run) in `present`. Same-node shards answer with pointers, kept for the get. Pages
        of the run a shard forwarded elsewhere (raylsm.actors.forwarding) are not marked: where
        they are goes into the forward hints, for the `exists_forwarded_probes` fallback."""
        local = self._split_local(routed.groups)[0] if self._located.enabled else {}
        calls = {shard: (("probe_located", ([routed.keys[s] for s in slots], self._take_unreported(shard), True))
                         if shard in local else ("probe", ([routed.keys[s] for s in slots], True)))
                 for shard, slots in routed.groups.items()}
        for shard, value in self._fan_out(calls).items():
            if not isinstance(value, tuple):
                continue
            slots = routed.groups[shard]
            if shard in local:
                segments_dir, low_watermark, pointers, where = value
                count = len(pointers)
            else:
                count, where = value
            held = slots[:count]
            if where:  # (only where a shard forwarded pages: the run less those)
                self._forward_hints.add([routed.keys[slot] for slot in slots], where)
                held = [slot for index, slot in enumerate(held) if index not in where]
                if shard in local:
                    pointers = [pointer for index, pointer in enumerate(pointers) if index not in where]
            if shard in local:
                self._located.add(shard, [routed.keys[slot] for slot in held], segments_dir, low_watermark, pointers)
            for slot in held:
                present[slot] = True

    def exists(self, namespace_id: bytes, page_hashes: Sequence[bytes],
               prefix_hashes: Sequence[bytes] | None = None) -> int:
        """How many leading pages of the batch the tier holds (0 on any failure)."""
        if not page_hashes:
            return 0
        try:
            routed = self._route(namespace_id, page_hashes, prefix_hashes)
            present = [False] * len(page_hashes)
            self._probe_into(routed, present)
            for where_else, counter in self._fallbacks("exists"):
                first_miss = present.index(False) if False in present else len(present)
                if first_miss >= routed.first_bad:
                    break
                fallback = where_else(namespace_id, page_hashes, prefix_hashes, routed,
                                      [slot for slot in range(first_miss, len(present)) if not present[slot]])
                if fallback is not None:
                    self._probe_into(fallback, present)
                    self._count(**{counter: 1})
            count = min(present.index(False) if False in present else len(present), routed.first_bad)
            self._count(exists_calls=1, exists_pages=len(page_hashes), exists_hits=count)
            return count
        except EmptyRingError:
            self._count(miss_no_shards=len(page_hashes))
            return 0
        except Exception:  # never into SGLang's threads
            logger.exception("raylsm: exists failed")
            self._count(miss_error=len(page_hashes))
            return 0

    def _get_pass(self, routed: _Routed, page_parts: Sequence[Any], page_bytes: Sequence[int], results: list[bool],
                  deadline: float) -> None:
        """Read every shard group of `routed` into its pages' parts, by `deadline`; set results[slot]
        for each verified hit. Remote shards answer through the object store in chunks; same-node
        shards are read from their segment files (pointers kept from exists(), or located now)."""
        local, remote = self._split_local(routed.groups)
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
                calls[shard] = ("locate_batch", (keys, self._take_unreported(shard) or None))

        def on_answer(call_key: str | _Chunk, value: Any) -> None:
            """As each answer arrives: copy a remote chunk's pages out of the object store, or
            read the pages a same-node shard located (a stalled shard delays no other)."""
            if isinstance(value, BaseException) or value is None:
                return
            if isinstance(call_key, _Chunk):
                hits, data = value
                slots = chunks[call_key]
                _scatter(data, hits, [page_parts[s] for s in slots])
                for slot, hit in zip(slots, hits):
                    results[slot] = bool(hit)
            else:
                self._read_local(call_key, value, routed, page_parts, results, deadline)

        pending = self._submit(calls)
        for shard, value in located.items():  # read what exists() located while the calls run
            if value is not None:
                self._read_local(shard, value, routed, page_parts, results, deadline)
                self._count(local_reads_without_call=len(routed.groups[shard]))
        self._collect(pending, on_result=on_answer, deadline=deadline)

    def get_into(self, namespace_id: bytes, page_hashes: Sequence[bytes], prefix_hashes: Sequence[bytes] | None,
                 out_buffers: Sequence[Any]) -> list[bool]:
        """Fill out_buffers[i] (a buffer, or a list of buffers for the page's parts) with page i;
        True per verified hit. Same-node shards are read from their segment files directly, within
        the same deadline as the calls (call_timeout_s, plus get_seconds_per_gb per GB moved)."""
        results = [False] * len(page_hashes)
        if not page_hashes:
            return results
        started = time.monotonic()
        try:
            routed = self._forward_hints.reroute(self._route(namespace_id, page_hashes, prefix_hashes))
            page_parts = [page_views(buffer) for buffer in out_buffers]  # once per page, shared below
            page_bytes = [parts_nbytes(parts) for parts in page_parts]
            client = self._config.client
            deadline = started + client.call_timeout_s + sum(page_bytes) / 1e9 * client.get_seconds_per_gb
            self._get_pass(routed, page_parts, page_bytes, results, deadline)
            for where_else, counter in self._fallbacks("get"):
                missed = [slot for slot, hit in enumerate(results) if not hit]
                if not missed or time.monotonic() >= deadline:
                    break
                fallback = where_else(namespace_id, page_hashes, prefix_hashes, routed, missed)
                if fallback is not None:
                    self._get_pass(fallback, page_parts, page_bytes, results, deadline)
                    self._count(**{counter: 1})
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

    def _read_local(self, shard: str, located: tuple[str, int, list], routed: _Routed, page_parts: Sequence[Any],
                    results: list[bool], deadline: float) -> None:
        """Read a same-node shard's pages from its segment files into the slots' buffers, by the
        deadline. Verified reads are remembered for the shard (they earn reinsertion there and count
        as hits), reported with the next probe to it (a Ray call per get cost ~20% of the get's
        time). Pages that failed their checksum or read are reported at once: the shard re-reads
        them and drops the ones that fail again, so that no client sees them as present."""
        slots = routed.groups[shard]
        segments_dir, low_watermark, pointers = located
        if self._health.is_stalled(shard):
            self._count(local_skipped_stalled=len(slots))
            return
        self._local_reader.forget_below(segments_dir, low_watermark)
        outcome, timed_out = self._bounded_reader.read_into(shard, segments_dir, pointers,
                                                            [page_parts[s] for s in slots], deadline)
        for slot, hit in zip(slots, outcome.results):
            results[slot] = bool(hit)
        self._count(local_read_pages=len(slots), local_miss_corrupt=outcome.corrupt,
                    local_miss_io=outcome.io_errors, local_miss_stale=outcome.stale,
                    local_read_timeouts=int(timed_out))
        if timed_out:
            self._metrics.failed(shard, "local_read", "timeout", len(slots) - sum(outcome.results))
        if outcome.hit_offsets:
            with self._unreported_lock:
                unreported = self._unreported_reads.setdefault(shard, {})
                for segment_id, offsets in outcome.hit_offsets.items():
                    unreported.setdefault(segment_id, []).extend(offsets)
        if outcome.failed_slots:
            keys = [routed.keys[slots[index]] for index in outcome.failed_slots]
            bad = [tuple(pointers[index]) for index in outcome.failed_slots]
            self._collect(self._submit({shard: ("report_failed_reads", (keys, bad))}),
                          deadline=max(deadline, time.monotonic() + self._config.client.call_timeout_s))

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
        """Store pages (each a buffer or a list of part buffers); True per page stored, present, or
        declined by the admission policy (a refusal must not stop SGLang's backup of the sequence).

        The batch is one chain: a page is worth nothing once a page before it is missing. So when
        a page fails (its shard's call failed, after one retry if the failure was quick, or the
        shard refused it: too large, bad value, I/O error), the pages of the batch behind it that
        this call stored are deleted again and reported False; the pages before it stand. A
        call that passes the deadline is never written after it (the shard checks the deadline),
        and if it was being written then, what it stored is deleted once it lands."""
        results = [False] * len(page_hashes)
        if not page_hashes:
            return results
        timeout_s = self._config.client.put_timeout_s
        deadline = time.monotonic() + timeout_s
        wall_deadline = time.time() + timeout_s
        try:
            routed = self._route(namespace_id, page_hashes, prefix_hashes)
            outcomes: dict[int, int] = {}
            failed_slots: list[int] = list(range(routed.first_bad, len(page_hashes)))

            def calls_for(shards):
                # Unreported fast-path reads ride on the put (counted before it can evict their pages).
                return {shard: ("put_batch", ([routed.keys[s] for s in routed.groups[shard]],
                                              [_as_arrays(values[s]) for s in routed.groups[shard]], wall_deadline,
                                              self._take_unreported(shard) or None, routed.routing_id))
                        for shard in shards}

            answers = self._collect(self._submit(calls_for(routed.groups)), deadline=deadline, settle_late=True)
            retry = [shard for shard, value in answers.items() if _retryable(value)]
            if retry and deadline - time.monotonic() > 0.5 * timeout_s:
                with self._handles_lock:  # the actor may have been replaced: look it up again
                    for shard in retry:
                        self._handles.pop(shard, None)
                answers.update(self._collect(self._submit(calls_for(retry)), deadline=deadline, settle_late=True))
                self._count(put_retries=len(retry))
            shard_of_slot = {}
            for shard, value in answers.items():
                slots = routed.groups[shard]
                shard_of_slot.update(dict.fromkeys(slots, shard))
                if isinstance(value, list):
                    outcomes.update(zip(slots, value))
                    failed_slots.extend(slot for slot, outcome in zip(slots, value) if outcome not in ACCEPTED)
                else:
                    failed_slots.extend(slots)
            first_failed = min(failed_slots, default=len(page_hashes))
            orphans: dict[str, list[bytes]] = {}
            for slot, outcome in outcomes.items():
                if slot > first_failed and outcome == PutOutcome.STORED:
                    orphans.setdefault(shard_of_slot[slot], []).append(routed.keys[slot])
                else:
                    results[slot] = outcome in ACCEPTED and slot < first_failed
            if orphans:  # unreachable behind the failed prefix: gone before the False is answered
                self._collect(self._submit({shard: ("delete_batch", (keys,)) for shard, keys in orphans.items()}),
                              deadline=max(deadline, time.monotonic() + 0.25 * timeout_s))
                self._count(put_orphans_deleted=sum(len(keys) for keys in orphans.values()))
            declined = Counter(PutOutcome(outcome).name.lower() for outcome in outcomes.values()
                               if outcome not in (PutOutcome.STORED, PutOutcome.PRESENT))
            self._count(put_calls=1, put_pages=len(results), put_stored=sum(results),
                        **{f"put_{cause}": count for cause, count in declined.items()})
            return results
        except EmptyRingError:
            self._count(put_failed_no_shards=len(page_hashes))
            return results
        except Exception:
            logger.exception("raylsm: put failed")
            self._count(put_failed_error=len(page_hashes))
            return [False] * len(page_hashes)

    def _settle_puts(self) -> None:
        """Delete what timed-out put calls stored when they landed after the client answered False."""
        with self._unsettled_lock:
            unsettled, self._unsettled = self._unsettled, []
        if not unsettled:
            return
        done, _ = ray.wait([entry.ref for entry in unsettled], num_returns=len(unsettled), timeout=0)
        done = set(done)
        still = []
        for entry in unsettled:
            if entry.ref not in done:
                still.append(entry)
                continue
            try:
                codes = ray.get(entry.ref)
            except Exception:  # it failed: it stored nothing
                continue
            stored = [key for key, code in zip(entry.keys, codes) if code == PutOutcome.STORED]
            if stored:
                self._submit({entry.shard: ("delete_batch", (stored,))})
                self._count(put_late_deleted=len(stored))
        with self._unsettled_lock:
            self._unsettled.extend(still)

    def clear_namespace(self, namespace_id: bytes) -> bool:
        """Clear one namespace on every shard (raylsm.namespaces): True once no process can get a
        hit on a page of it written before this call; False if that cannot be vouched for (the
        controller did not answer, or a shard it knows did not confirm). Either way this client
        uses the namespace's new generation from now on. Waits out the same-node pointer cache of
        every process (located_pointer_ttl_s + call_timeout_s) before answering True."""
        self._located.clear()
        client = self._config.client
        timeout_s = max(10.0, 3 * client.call_timeout_s)
        try:
            answer = ray.get(self._controller.clear_namespace.remote(namespace_id, timeout_s), timeout=timeout_s + 5)
        except Exception as error:
            logger.error("raylsm: clear of namespace %s failed: %r", namespace_id.hex(), error)
            return False
        self._adopt_generations({namespace_id.hex(): answer["generation"]})
        self._located.clear()
        if not answer["ok"]:
            logger.error("raylsm: clear of namespace %s not confirmed by shards %s", namespace_id.hex(),
                         answer["unconfirmed"])
            return False
        if client.same_node_fast_path and self._located.enabled:
            time.sleep(self._located.ttl_s + client.call_timeout_s)
        return True

    def close(self) -> None:
        """Stop the background threads (waiting up to `CLOSE_JOIN_S` for a call they have in flight:
        a thread still inside a Ray call when the process shuts Ray down can crash the process),
        report pending reads and close the local readers. Idempotent."""
        self._closed.set()
        self._health.wake.set()
        for thread in (self._refresher, self._reporter, self._health_checker):
            if thread is not threading.current_thread():
                thread.join(CLOSE_JOIN_S)
        self.report_reads()
        self._bounded_reader.close()
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
