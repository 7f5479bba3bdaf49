"""ShardServer: the body of one shard actor, wrapping one ShardStore on one node-local directory.

Owned here: opening the store when Ray (re)starts the actor, the call surface the tier client uses,
and turning store stats into metrics. Holds no policy: tuning arrives from the controller.
Called by TierClient (data path) and the controller (health, stats, tuning) through Ray; a plain
class, made an actor by `raylsm.actors.placement`. Thread-safety: runs as a threaded actor
(`max_concurrency` threads); ShardStore is thread-safe and its reads release the GIL.

Payloads: values arrive as numpy arrays (out of band, zero-copy views of the object store) and the
bytes of a get leave as one numpy array, which the caller maps zero-copy from the object store.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
import warnings
from typing import Any, Mapping, Sequence

import msgpack
import numpy as np
import ray

from raylsm.actors.drain import drain_pages
from raylsm.actors.forwarding import Forwarding
from raylsm.actors.metrics import ShardMetrics
from raylsm.actors.store_tuning import StoreTuning
from raylsm.config import ShardConfig
from raylsm.errors import StoreLockedError
from raylsm.store import ShardStore
from raylsm.store.budget_pool import pool_path
from raylsm.store.hot_extents import HotExtents
from raylsm.store.outcomes import PutOutcome
from raylsm.store.io_buffers import aligned_empty

logger = logging.getLogger(__name__)


class ShardServer:
    def __init__(self, shard_name: str, config: ShardConfig):
        self._name = shard_name
        self._path = os.path.join(os.path.abspath(config.data_dir), shard_name)
        self._store = open_with_retry(self._path, config, shard_name)
        context = ray.get_runtime_context()
        self._node_id = context.get_node_id()
        with warnings.catch_warnings():  # Ray warns about an internal call of its own here
            warnings.simplefilter("ignore")
            self._restarted = context.was_current_actor_reconstructed
        self._metrics = ShardMetrics(shard_name)
        self._metrics.opened(self._path, self._store.recovery)
        # Extents that receive the most distinct pages (a hot shared prefix; docs/placement.md).
        self._hot_extents = HotExtents(window_pages=config.hot_extent_window_pages)
        self._hot_lock = threading.Lock()
        self._thread_buffers = threading.local()
        self._in_flight: dict[int, float] = {}  # data call id -> start (monotonic)
        self._in_flight_lock = threading.Lock()
        self._call_ids = itertools.count()
        self._tuning = StoreTuning(self._store, shard_name)
        self._handles: dict[str, Any] = {}
        self._forwarding: Forwarding | None = None
        if config.forward_evictions:
            disk = f"{self._node_id}:{disk_pool_path(config, shard_name) or self._path}"
            self._forwarding = Forwarding(shard_name, disk, self._handle_of, config.forward_slack,
                                          config.forward_pointers, self._store.frontier)
            self._store.forwarder = self._forwarding
        # The ring this shard last heard from the controller (a restarted controller adopts the
        # newest any shard holds) and the routing ids of its namespaces (a drain routes by them);
        # both kept on disk with the store.
        raw = self._store.tier_meta("ring")
        self._ring_record: dict = msgpack.unpackb(raw) if raw else {}
        raw = self._store.tier_meta("routes")
        self._routes: dict[bytes, bytes] = msgpack.unpackb(raw) if raw else {}
        self._meta_lock = threading.Lock()
        # Reads are fenced until this incarnation has the tier's namespace table: a shard that was
        # down while a namespace was cleared must not serve that namespace's old pages.
        self._synced = threading.Event()
        self._ray_namespace = context.namespace
        threading.Thread(target=self._sync_from_controller, name="raylsm-namespace-sync", daemon=True).start()
        self._stop_metrics = threading.Event()
        threading.Thread(target=self._export_metrics, args=(config.metrics_period_s,), name="raylsm-metrics",
                         daemon=True).start()
        recovery = self._store.recovery
        logger.info("shard %s opened %s (restarted=%s, clean=%s, dropped pointers=%d, truncated bytes=%d)",
                    shard_name, self._path, self._restarted, recovery.clean_shutdown,
                    recovery.dropped_pointers, recovery.truncated_bytes)

    # ---- control ------------------------------------------------------------------------------

    def info(self) -> dict:
        return {"shard": self._name, "node_id": self._node_id, "path": self._path, "pid": os.getpid(),
                "restarted": self._restarted}

    def ping(self) -> bool:
        return True

    def health(self) -> dict:
        """How stalled the shard is: the age in seconds of its oldest data call still running
        (0.0 when none). A client that saw a call time out skips this shard until this is small."""
        now = time.monotonic()
        with self._in_flight_lock:
            oldest = min(self._in_flight.values(), default=now)
        return {"stalled_s": now - oldest}

    def hot_extents(self, threshold_pages: int, min_share: float = 0.0, limit: int = 64) -> list[bytes]:
        """Extent ids (16 B) that received more than `threshold_pages` distinct pages, and at least
        `min_share` of the pages this shard stored, in its recent window; hottest first, at most
        `limit` (raylsm.store.hot_extents)."""
        with self._hot_lock:
            return self._hot_extents.hot(threshold_pages, min_share)[:limit]

    def stats(self) -> dict:
        stats = self._store.stats()
        self._metrics.sync(stats)
        forwarding = {"forwarding": self._forwarding.stats()} if self._forwarding is not None else {}
        return {**stats, **self.info(), **forwarding}

    def exchange_frontiers(self, frontiers: Mapping[str, Any]) -> dict | None:
        """Eviction forwarding (raylsm.actors.forwarding): take every shard's last frontier report
        ({shard: report}) from the controller and answer this shard's (None: forwarding is off)."""
        if self._forwarding is None:
            return None
        self._forwarding.update(frontiers)
        return self._forwarding.frontier()

    def _handle_of(self, name: str) -> Any:
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = ray.get_actor(name, namespace=self._ray_namespace)
        return handle

    def apply_tuning(self, changes: dict, version: int | None = None) -> dict:
        """Apply a tuning (raylsm.actors.store_tuning.StoreTuning.apply)."""
        return self._tuning.apply(changes, version)

    def tuning_window(self) -> dict:
        """What the controller's tuning policy reads (StoreTuning.window)."""
        return self._tuning.window()

    # ---- namespace table (raylsm.namespaces) -------------------------------------------------------

    def namespace_status(self) -> dict:
        return {"version": self._store.namespace_table()["version"], "synced": self._synced.is_set()}

    def namespace_table(self) -> dict:
        return self._store.namespace_table()

    def sync_namespaces(self, table: dict) -> int:
        """Apply the controller's namespace table (deleting retired namespaces' pages) and open reads.
        Returns the table version now applied."""
        self._store.apply_namespace_table(table)
        self._synced.set()
        return self._store.namespace_table()["version"]

    def _sync_from_controller(self, retry_s: float = 1.0) -> None:
        """Fetch the table from the controller at start (it also pushes it on its next reconcile)."""
        from raylsm.controller.controller_actor import get_controller

        while not self._synced.is_set():
            try:
                table = ray.get(get_controller(self._ray_namespace).namespace_table.remote(), timeout=10)
                self.sync_namespaces(table)
            except Exception as error:  # no controller yet, or it is restarting: it will push
                logger.info("shard %s: namespace table not fetched yet (%r)", self._name, error)
                self._synced.wait(retry_s)

    # ---- the ring and scale-in (docs/elastic.md) -------------------------------------------------

    def remember_ring(self, record: dict) -> int:
        """Keep the controller's ring record ({"version", "members", "standby", "target", ...}) if it
        is newer than the one held; returns the version held."""
        with self._meta_lock:
            if int(record.get("version", 0)) > int(self._ring_record.get("version", 0)):
                self._store.set_tier_meta("ring", msgpack.packb(record))
                self._ring_record = dict(record)
            return int(self._ring_record.get("version", 0))

    def ring_record(self) -> dict:
        with self._meta_lock:
            return dict(self._ring_record)

    def _learn_route(self, keys: Sequence[bytes], routing_id: bytes) -> None:
        namespace = keys[0][1:1 + len(routing_id)]
        if self._routes.get(namespace) == routing_id:
            return
        with self._meta_lock:
            routes = {**self._routes, namespace: routing_id}
            self._store.set_tier_meta("routes", msgpack.packb(routes))
            self._routes = routes

    def drain(self, members: Sequence[str], virtual_nodes: int, fraction: float, timeout_s: float,
              only: str | None = None, bytes_per_s: float = 0.0) -> dict:
        """Hand the newest `fraction` of this shard's live bytes to their owners in the ring of
        `members`, within `timeout_s` (raylsm.actors.drain.drain_pages: its report). A scale-in
        drains the leaving shard to a ring without it; a warm join calls every member with the ring
        with the joining shard and `only` that shard (the pages it will own, which stay here too).
        `bytes_per_s`: the rate cap of the hand-over (0: none)."""
        live = self._store.stats()["space"]["live_bytes"]
        namespace = self._ray_namespace
        handles: dict[str, Any] = {}

        def handle_of(name: str) -> Any:
            if name not in handles:
                handles[name] = ray.get_actor(name, namespace=namespace)
            return handles[name]

        report = drain_pages(self._store, members, virtual_nodes, dict(self._routes), int(fraction * live),
                             handle_of, time.monotonic() + timeout_s, only=only, bytes_per_s=bytes_per_s)
        logger.info("shard %s drained: %s", self._name, {k: v for k, v in report.items() if k != "by_owner"})
        return report

    def shutdown(self) -> None:
        """Close the store cleanly before the actor is killed (`raylsm down`)."""
        self._stop_metrics.set()
        if self._forwarding is not None:
            self._forwarding.close()
        self._store.close()

    def _export_metrics(self, period_s: float) -> None:
        """Export the store's statistics every `period_s` until shutdown (the workload curve is
        recomputed at most once a second: 148 us a snapshot at 1/64 of 200,000 pages tracked)."""
        while not self._stop_metrics.wait(period_s):
            try:
                self._metrics.sync(self._store.stats(workload_max_age_s=1.0))
                if self._forwarding is not None:
                    self._metrics.sync_forwarding(self._forwarding.stats())
            except Exception:  # noqa: BLE001 (metrics must never stop the shard)
                logger.exception("shard %s: exporting metrics failed", self._name)

    # ---- data path ----------------------------------------------------------------------------

    def put_batch(self, keys: Sequence[bytes], values: Sequence[Any], deadline_s: float | None = None,
                  reads: Mapping[int, Sequence[int]] | None = None, routing_id: bytes | None = None,
                  handover: bool = False) -> list[int]:
        """Store pages; a PutOutcome code per page (raylsm.store.outcomes). Pages not written by
        `deadline_s` (wall clock of the caller, who gives up then) are EXPIRED, not written. `reads`:
        a same-node reader's unreported reads (as `note_reads`), counted first: the put may roll a
        segment, and the reclaimer then frees the oldest, often the one those reads were from.
        `routing_id`: the id the caller routes this batch's namespace by, when not its own (one
        namespace per call; remembered for a drain). `handover`: pages a draining shard hands over
        (ShardStore.put_batch_outcomes)."""
        if routing_id is not None and keys:
            self._learn_route(keys, bytes(routing_id))
        with self._data_call("put"):
            if reads:
                self._store.note_reads(reads)
            outcomes = [int(outcome) for outcome in
                        self._store.put_batch_outcomes(keys, values, deadline_s, handover=handover)]
        stored = [key for key, outcome in zip(keys, outcomes) if outcome == PutOutcome.STORED]
        if stored and not handover:  # (moved pages are not a client's writes: no split from them)
            with self._hot_lock:
                self._hot_extents.add(stored)
        return outcomes

    def accept_forwarded(self, keys: Sequence[bytes], values: Sequence[Any], deadline_s: float) -> list[int]:
        """Pages another shard evicted and forwarded here (raylsm.actors.forwarding): stored as a
        hand-over (no admission), never forwarded again; a PutOutcome code per page."""
        with self._data_call("put"):
            outcomes = [int(outcome) for outcome in
                        self._store.put_batch_outcomes(keys, values, deadline_s, handover=True)]
        if self._forwarding is not None:
            self._forwarding.received([key for key, outcome in zip(keys, outcomes) if outcome == PutOutcome.STORED])
        return outcomes

    def get_batch(self, keys: Sequence[bytes], page_bytes: Sequence[int]) -> tuple[list[bool], np.ndarray]:
        """Read pages into one new array (page i at sum(page_bytes[:i])); hits per page."""
        with self._data_call("get"):
            buffer = self._read_buffer(int(sum(page_bytes)))
            if not self._synced.is_set():
                return [False] * len(keys), buffer
            views, offset = [], 0
            for nbytes in page_bytes:
                views.append(buffer[offset : offset + nbytes])
                offset += nbytes
            hits = self._store.get_batch_into(keys, views)
            return hits, buffer

    def probe(self, keys: Sequence[bytes], forwarded: bool = False) -> int | tuple[int, dict[int, str]]:
        """The number of leading keys held. With `forwarded`: (that number counting the keys this
        shard forwarded elsewhere, {index: shard holding it} for those)."""
        with self._data_call("probe"):
            count = self._store.probe(keys) if self._synced.is_set() else 0
            if not forwarded:
                return count
            if self._forwarding is None or not self._synced.is_set():
                return count, {}
            items, where = self._forwarding.probe_through(
                keys, lambda rest: [True] * self._store.probe(rest), [True] * count)
            return len(items), where

    def locate_batch(self, keys: Sequence[bytes], reads: Mapping[int, Sequence[int]] | None = None
                     ) -> tuple[str, int, list]:
        """Pointers for a same-node reader: (segments dir, low watermark, pointer or None per key).
        `reads`: its unreported reads, counted as `note_reads` does."""
        with self._data_call("locate"):
            if reads:
                self._store.note_reads(reads)
            segments_dir, low_watermark, pointers = self._store.locate_batch(keys)
            return segments_dir, low_watermark, pointers if self._synced.is_set() else [None] * len(keys)

    def probe_located(self, keys: Sequence[bytes], reads: Mapping[int, Sequence[int]] | None = None,
                      forwarded: bool = False) -> tuple:
        """`probe` for a same-node reader: (segments dir, low watermark, pointers of the leading
        present keys); the reader skips the locate call of its get. `reads`: value offsets by
        segment of pages the reader read from earlier pointers, counted as `note_reads` does.
        With `forwarded`, the run continues through keys forwarded elsewhere (None pointers) and
        a fourth item gives {index: shard holding it} for those."""
        with self._data_call("probe"):
            if reads:
                self._store.note_reads(reads)
            segments_dir, low_watermark, pointers = self._store.probe_located(keys)
            if not self._synced.is_set():
                pointers = []
            where: dict[int, str] = {}
            if forwarded and self._forwarding is not None and self._synced.is_set():
                pointers, where = self._forwarding.probe_through(
                    keys, lambda rest: self._store.probe_located(rest)[2], pointers)
            return (segments_dir, low_watermark, pointers, where) if forwarded else \
                (segments_dir, low_watermark, pointers)

    def report_failed_reads(self, keys: Sequence[bytes], pointers: Sequence[Sequence[int]]) -> int:
        """Pages a same-node reader failed to read (checksum or I/O) from these pointers: re-read
        here, and dropped if they fail again, so that no client sees them as present."""
        with self._data_call("verify"):
            return self._store.report_failed_reads(keys, pointers)

    def note_reads(self, offsets_by_segment: Mapping[int, Sequence[int]]) -> None:
        """Reads a same-node reader did from probe_located pointers, sent without waiting when no
        probe_located call carried them."""
        self._store.note_reads(offsets_by_segment)

    def delete_batch(self, keys: Sequence[bytes]) -> int:
        return self._store.delete_batch(keys)

    def clear(self) -> None:
        self._store.clear()

    def delete_namespace(self, namespace: bytes) -> int:
        return self._store.delete_namespace(namespace)

    def _read_buffer(self, nbytes: int) -> np.ndarray:
        """A per-thread aligned buffer for get_batch's reply. Reusing it is safe: Ray copies a
        returned array into the object store on this thread before the thread runs another call.
        NOTE: a fresh 32 MiB array per call paid its page faults on every read."""
        buffer = getattr(self._thread_buffers, "buffer", None)
        if buffer is None or buffer.nbytes < nbytes:
            buffer = aligned_empty(max(nbytes, 1 << 20))
            self._thread_buffers.buffer = buffer
        return buffer[:nbytes]

    @contextlib.contextmanager
    def _data_call(self, op: str):
        """Time a data call and count it as in flight (for `health`); the store's statistics are
        exported by `_export_metrics`."""
        call_id = next(self._call_ids)
        started = time.perf_counter()
        with self._in_flight_lock:
            self._in_flight[call_id] = time.monotonic()
        try:
            yield
        finally:
            with self._in_flight_lock:
                del self._in_flight[call_id]
            self._metrics.observe_call(op, (time.perf_counter() - started) * 1e3)


def disk_pool_path(config: ShardConfig, shard_name: str) -> str | None:
    """The budget pool file of this shard's disk: shared by the shards named after one disk identity
    (`shard-<disk>-<index>`) under one data_dir; None when pooling is off."""
    if not (config.pool_disk_budget and config.store.background_reclaim):
        return None
    return pool_path(os.path.abspath(config.data_dir), shard_name.rsplit("-", 1)[0])


def open_with_retry(path: str, config: ShardConfig, shard_name: str) -> ShardStore:
    """Open the shard's store, retrying while a previous incarnation still holds the lock."""
    deadline = time.monotonic() + config.open_retry_s
    delay = 0.1
    while True:
        try:
            return ShardStore.open(path, config.store, budget_pool=disk_pool_path(config, shard_name))
        except StoreLockedError:
            if time.monotonic() >= deadline:
                raise
            logger.warning("shard %s: %s is still locked; retrying in %.1fs", shard_name, path, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
