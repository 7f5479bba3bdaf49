"""Eviction forwarding: a shard that evicts pages younger than another shard's oldest sends them
there instead of dropping them, and keeps a pointer, so that shards on separate disks evict as one
cache (docs/placement.md, "Eviction forwarding").

The mechanism is N-chance forwarding from cooperative caching (Dahlin, Wang, Anderson and Patterson,
"Cooperative Caching: Using Remote Client Memory to Improve File System Performance", OSDI 1994),
with the eviction age of each shard's disk as the measure of what it can afford to keep:
- *Frontiers.* Each shard reports the seal time of the oldest segment of its disk budget (its own,
  or its budget pool's), and whether that budget is full, in `frontier()`. The controller relays
  every shard's report to every shard each reconcile round (`exchange_frontiers`): one small call
  per shard per round, one round stale.
- *Target.* The shard of another disk with free room, else the one whose oldest segment is oldest.
  A segment being evicted is forwarded there if its age is below (1 - slack) x the target's oldest
  age (a page still young for the tier), or always if the target has free room. The slack prices
  it: modelled on the bench workloads, slack 0.25 keeps 0.94-0.99 of one cache's hit ratio for
  0.17-0.47 pages forwarded per page reference (docs/placement.md).
- *Sending.* The reclaimer hands over the verified pages the eviction dropped (`forward`); a thread
  sends them to the target as a hand-over put (no admission there; the target's own eviction makes
  room) and records a pointer per stored page. Bounded: a send queue of `QUEUE_SEGMENTS` segments
  (more are dropped, as without forwarding) and `max_pointers` pointers (oldest out).
- *Reading.* A probe that asks for it continues its leading run through forwarded pages and says
  where each is (`probe_through`); the client reads them there (raylsm.client_forwarding). A stale
  pointer costs one miss on that shard, never wrong bytes (its store verifies its own checksums).
  A forwarded page is never forwarded again (one chance: its target remembers the keys it
  received, as many as it keeps pointers), so pages cannot bounce between shards.

Pointers live in memory (lost on restart: a miss). Called by ShardServer (probe, exchange, stats)
and its store's reclaimer (`wants`, `forward`); thread-safe (one lock).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import zlib
from collections import OrderedDict
from typing import Any, Callable, Mapping, Sequence

logger = logging.getLogger(__name__)

QUEUE_SEGMENTS = 4  # evicted segments waiting to be sent; more are dropped
SEND_TIMEOUT_S = 10.0


class Forwarding:
    def __init__(self, shard_name: str, disk: str, handle_of: Callable[[str], Any], slack: float,
                 max_pointers: int, frontier_of: Callable[[], dict]) -> None:
        """`disk`: the identity of this shard's disk budget (shards of one budget pool share it and
        never forward to each other). `handle_of(shard)`: its actor handle. `frontier_of()`:
        {"oldest_sealed_at": wall-clock seal time of the budget's oldest segment or None,
        "full": whether the budget is evicting}. `max_pointers` bounds the pointers and, as many
        again, the keys received from other shards."""
        self._name = shard_name
        self._disk = disk
        self._handle_of = handle_of
        self._slack = slack
        self._max_pointers = max_pointers
        self._frontier_of = frontier_of
        self._lock = threading.Lock()
        self._target: tuple[str, float | None] | None = None  # (shard, its oldest seal time; None: room)
        self._pointers: OrderedDict[bytes, str] = OrderedDict()  # forwarded key -> shard holding it
        self._received: OrderedDict[bytes, None] = OrderedDict()  # keys other shards forwarded here
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SEGMENTS)
        self._stats = {"forwarded_pages": 0, "forwarded_bytes": 0, "forward_dropped_pages": 0,
                       "forward_failed_pages": 0, "forwarded_reads": 0, "forwarded_segments": 0,
                       "received_pages": 0, "forward_second_chances_skipped": 0}
        self._thread = threading.Thread(target=self._send_loop, name="raylsm-forward", daemon=True)
        self._thread.start()

    # ---- frontiers ----------------------------------------------------------------------------

    def frontier(self) -> dict:
        """This shard's report for the controller: its disk and that disk's frontier."""
        return {"disk": self._disk, **self._frontier_of()}

    def update(self, frontiers: Mapping[str, Any]) -> None:
        """Choose the target from every shard's last report ({shard: frontier()}); None if no
        shard of another disk reported."""
        room, oldest = [], []
        for shard, report in frontiers.items():
            if shard == self._name or not isinstance(report, dict) or report.get("disk") == self._disk:
                continue
            if not report.get("full"):
                room.append(shard)
            elif report.get("oldest_sealed_at") is not None:
                oldest.append((float(report["oldest_sealed_at"]), shard))
        with self._lock:
            if room:  # spread the senders over the shards with room (a stable choice per sender)
                self._target = (sorted(room)[zlib.crc32(self._name.encode()) % len(room)], None)
            elif oldest:
                sealed_at, shard = min(oldest)
                self._target = (shard, sealed_at)
            else:
                self._target = None

    def target(self) -> str | None:
        with self._lock:
            return self._target[0] if self._target else None

    # ---- the reclaimer's side (raylsm.store.segment_reclaimer.EvictionForwarder) -------------------

    def wants(self, sealed_at: float) -> bool:
        with self._lock:
            target = self._target
        if target is None:
            return False
        if target[1] is None:
            return True
        now = time.time()
        return now - sealed_at < (1.0 - self._slack) * (now - target[1])

    def forward(self, pages: list) -> None:
        if self._received:
            with self._lock:
                fresh = [page for page in pages if page.key not in self._received]
                self._stats["forward_second_chances_skipped"] += len(pages) - len(fresh)
            pages = fresh
            if not pages:
                return
        try:
            self._queue.put_nowait(pages)
        except queue.Full:
            self._count(forward_dropped_pages=len(pages))

    def _send_loop(self) -> None:
        from raylsm.store.outcomes import PutOutcome

        accepted = (PutOutcome.STORED, PutOutcome.PRESENT)
        while True:
            pages = self._queue.get()
            if pages is None:
                return
            target = self.target()
            if target is None:
                self._count(forward_dropped_pages=len(pages))
                continue
            try:
                import ray

                keys = [page.key for page in pages]
                ref = self._handle_of(target).accept_forwarded.remote(keys, [page.value for page in pages],
                                                                      time.time() + SEND_TIMEOUT_S)
                outcomes = ray.get(ref, timeout=SEND_TIMEOUT_S)
            except Exception as error:  # noqa: BLE001 (a failed send drops the pages, as eviction would)
                logger.info("shard %s: forwarding %d pages to %s failed: %r", self._name, len(pages), target, error)
                self._count(forward_failed_pages=len(pages))
                continue
            stored = [key for key, outcome in zip(keys, outcomes) if outcome in accepted]
            with self._lock:
                pointers = self._pointers
                for key in stored:
                    pointers[key] = target
                    pointers.move_to_end(key)
                while len(pointers) > self._max_pointers:
                    pointers.popitem(last=False)
            self._count(forwarded_pages=len(stored), forwarded_segments=1,
                        forwarded_bytes=sum(page.value.nbytes for page, outcome in zip(pages, outcomes)
                                            if outcome in accepted),
                        forward_failed_pages=len(pages) - len(stored))

    def received(self, keys: Sequence[bytes]) -> None:
        """Pages another shard forwarded here (and this shard stored): never forwarded again."""
        with self._lock:
            received = self._received
            for key in keys:
                received[key] = None
                received.move_to_end(key)
            while len(received) > self._max_pointers:
                received.popitem(last=False)
        self._count(received_pages=len(keys))

    # ---- reads --------------------------------------------------------------------------------

    def probe_through(self, keys: Sequence[bytes], probe: Callable[[Sequence[bytes]], list], first: list
                      ) -> tuple[list, dict[int, str]]:
        """The leading run of `keys` held here or forwarded: `first` is this store's leading run
        of `keys` (a list, one item per key) and `probe(keys)` gives it for others; forwarded keys
        add None items. Returns (items, {index: shard holding the forwarded key})."""
        items = list(first)
        where: dict[int, str] = {}
        if len(items) == len(keys) or not self._pointers:
            return items, where
        with self._lock:
            pointers = dict((key, self._pointers.get(key)) for key in keys[len(items):])
        while len(items) < len(keys):
            shard = pointers.get(keys[len(items)])
            if shard is None:
                break
            while len(items) < len(keys) and pointers.get(keys[len(items)]) is not None:
                where[len(items)] = pointers[keys[len(items)]]
                items.append(None)
            if len(items) < len(keys):
                items.extend(probe(keys[len(items):]))
        if where:
            self._count(forwarded_reads=len(where))
        return items, where

    # ---- the rest -----------------------------------------------------------------------------

    def stats(self) -> dict:
        with self._lock:
            stats = dict(self._stats)
            stats["forward_pointers"] = len(self._pointers)
            stats["forward_target"] = self._target[0] if self._target else None
        return stats

    def close(self) -> None:
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self._stats[name] += delta
