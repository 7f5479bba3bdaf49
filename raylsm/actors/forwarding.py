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
- *Targets.* A segment being evicted may go to any shard of another disk that has free room, or
  whose oldest segment is older than the evicted one by more than the slack: its age is below
  (1 - slack) x theirs (a page still young for the tier). Each send picks one of them at random,
  so that many senders do not all flood the single oldest shard between two rounds. The slack
  prices it: modelled on the bench workloads, slack 0.25 keeps 0.94-0.99 of one cache's hit ratio
  for 0.17-0.47 pages forwarded per page reference (docs/placement.md).
- *No cascade.* A shard that received forwarded pages within the last two rounds forwards nothing:
  the pages it evicts then are the tier's oldest, and forwarding them on would only push the
  receiver's own pages out in turn (as the model does: the receiver drops its oldest).
- *Sending.* The reclaimer hands over the verified pages the eviction dropped (`forward`); a thread
  sends them as a hand-over put (`accept_forwarded`: no admission there; the receiver's own
  eviction makes room), several segments per call to one shard (`SEND_BYTES`), and records a
  pointer per stored page. Bounded: `QUEUE_BYTES` of pages waiting (more are dropped, as without
  forwarding) and `max_pointers` pointers (oldest out).
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
import random
import threading
import time
import zlib
from collections import OrderedDict
from typing import Any, Callable, Mapping, Sequence

logger = logging.getLogger(__name__)

QUEUE_BYTES = 64 << 20  # evicted page bytes waiting to be sent; more are dropped
SEND_BYTES = 16 << 20  # queued segments sent together to one shard, up to this many bytes per call
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
        # Shards of other disks and the seal time of their oldest segment (None: they have room).
        self._candidates: list[tuple[str, float | None]] = []
        self._updated_at: float | None = None  # last update() (monotonic)
        self._round_s = 2.0  # the interval between the last two update() calls
        self._received_at = -float("inf")  # when pages forwarded by another shard last arrived
        self._queued_bytes = 0
        self._random = random.Random(zlib.crc32(shard_name.encode()))
        self._pointers: OrderedDict[bytes, str] = OrderedDict()  # forwarded key -> shard holding it
        self._received: OrderedDict[bytes, None] = OrderedDict()  # keys other shards forwarded here
        self._queue: queue.Queue = queue.Queue()  # (pages, sealed_at, bytes); bounded by QUEUE_BYTES
        self._stats = {"forwarded_pages": 0, "forwarded_bytes": 0, "forward_dropped_pages": 0,
                       "forward_failed_pages": 0, "forwarded_reads": 0, "forward_calls": 0,
                       "received_pages": 0, "forward_second_chances_skipped": 0}
        self._thread = threading.Thread(target=self._send_loop, name="raylsm-forward", daemon=True)
        self._thread.start()

    # ---- frontiers ----------------------------------------------------------------------------

    def frontier(self) -> dict:
        """This shard's report for the controller: its disk and that disk's frontier."""
        return {"disk": self._disk, **self._frontier_of()}

    def update(self, frontiers: Mapping[str, Any]) -> None:
        """Take every shard's last report ({shard: frontier()}): the candidates are the shards of
        other disks, with their oldest seal time (None: they have room). Called once a reconcile
        round; the interval between calls sets how long a shard that received pages holds back."""
        candidates = []
        for shard, report in frontiers.items():
            if shard == self._name or not isinstance(report, dict) or report.get("disk") == self._disk:
                continue
            if not report.get("full"):
                candidates.append((shard, None))
            elif report.get("oldest_sealed_at") is not None:
                candidates.append((shard, float(report["oldest_sealed_at"])))
        now = time.monotonic()
        with self._lock:
            self._candidates = sorted(candidates)
            if self._updated_at is not None:
                self._round_s = now - self._updated_at
            self._updated_at = now

    def targets(self, sealed_at: float) -> list[str]:
        """The shards that would take the pages of a segment sealed at `sealed_at` (wall clock):
        those with room, and those whose oldest segment is older than (1 - slack) of its age. None
        while this shard received forwarded pages within the last two rounds: its evictions are
        the tier's oldest then, to be dropped (forwarding them on would cascade)."""
        now = time.time()
        with self._lock:
            if time.monotonic() - self._received_at < 2 * self._round_s:
                return []
            candidates = self._candidates
        age = now - sealed_at
        return [shard for shard, oldest in candidates if oldest is None or age < (1.0 - self._slack) * (now - oldest)]

    def target(self) -> str | None:
        """A shard that would take a segment sealed now (None: none would)."""
        found = self.targets(time.time())
        return found[0] if found else None

    # ---- the reclaimer's side (raylsm.store.segment_reclaimer.EvictionForwarder) -------------------

    def wants(self, sealed_at: float) -> bool:
        return bool(self.targets(sealed_at))

    def forward(self, pages: list, sealed_at: float) -> None:
        if self._received:
            with self._lock:
                fresh = [page for page in pages if page.key not in self._received]
                self._stats["forward_second_chances_skipped"] += len(pages) - len(fresh)
            pages = fresh
            if not pages:
                return
        nbytes = sum(page.value.nbytes for page in pages)
        with self._lock:
            if self._queued_bytes + nbytes > QUEUE_BYTES:
                self._stats["forward_dropped_pages"] += len(pages)
                return
            self._queued_bytes += nbytes
        self._queue.put((pages, sealed_at, nbytes))

    def _send_loop(self) -> None:
        """Send what the reclaimer queued: each segment's pages to a shard picked at random among
        those that would take them now (spreading the senders over the receivers), several segments
        per call to one shard (up to SEND_BYTES)."""
        while True:
            item = self._queue.get()
            if item is None:
                return
            items = [item]
            nbytes = item[2]
            while nbytes < SEND_BYTES:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                items.append(more)
                nbytes += more[2]
            with self._lock:
                self._queued_bytes -= nbytes
            by_target: dict[str, list] = {}
            for pages, sealed_at, _ in items:
                found = self.targets(sealed_at)
                if not found:
                    self._count(forward_dropped_pages=len(pages))
                    continue
                by_target.setdefault(self._random.choice(found), []).extend(pages)
            for target, pages in by_target.items():
                self._send(target, pages)

    def _send(self, target: str, pages: list) -> None:
        from raylsm.store.outcomes import PutOutcome

        accepted = (PutOutcome.STORED, PutOutcome.PRESENT)
        keys = [page.key for page in pages]
        try:
            import ray

            ref = self._handle_of(target).accept_forwarded.remote(keys, [page.value for page in pages],
                                                                  time.time() + SEND_TIMEOUT_S)
            outcomes = ray.get(ref, timeout=SEND_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 (a failed send drops the pages, as eviction would)
            logger.info("shard %s: forwarding %d pages to %s failed: %r", self._name, len(pages), target, error)
            self._count(forward_failed_pages=len(pages))
            return
        stored = [key for key, outcome in zip(keys, outcomes) if outcome in accepted]
        with self._lock:
            _remember(self._pointers, stored, target, self._max_pointers)
        self._count(forwarded_pages=len(stored), forward_calls=1,
                    forwarded_bytes=sum(page.value.nbytes for page, outcome in zip(pages, outcomes)
                                        if outcome in accepted),
                    forward_failed_pages=len(pages) - len(stored))

    def received(self, keys: Sequence[bytes]) -> None:
        """Pages another shard forwarded here (and this shard stored): never forwarded again, and
        for two rounds this shard forwards nothing (raylsm.actors.forwarding.Forwarding.targets)."""
        with self._lock:
            self._received_at = time.monotonic()
            _remember(self._received, keys, None, self._max_pointers)
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
        target = self.target()
        with self._lock:
            stats = dict(self._stats)
            stats["forward_pointers"] = len(self._pointers)
            stats["forward_target"] = target
        return stats

    def close(self) -> None:
        self._queue.put(None)

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self._stats[name] += delta


def _remember(entries: OrderedDict, keys: Sequence[bytes], value: Any, limit: int) -> None:
    """Set entries[key] = value for each key, newest last, then drop the oldest beyond `limit`."""
    for key in keys:
        entries[key] = value
        entries.move_to_end(key)
    while len(entries) > limit:
        entries.popitem(last=False)
