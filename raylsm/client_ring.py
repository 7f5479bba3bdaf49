"""The ring view of TierClient: which shard owns each page, kept current from the controller.

Owned here: `RingView`, a mixin of TierClient (its state is the client's: see client.py) with the
ring refresh and its background loops, the split extents and namespace generations the controller
publishes, actor handles, routing a batch to shard groups (`_route`), and the fallbacks a read tries
when the ring moved (unsplit keys; the previous ring for `handoff_s`). Called through TierClient
only; thread-safe as TierClient is.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Sequence

import ray

from raylsm import namespaces
from raylsm.router import HashRing, page_anchors, routing_key
from raylsm.store import page_key

logger = logging.getLogger(__name__)

# How often the fast path's reads are reported to their shards when no probe carried them.
# NOTE: `raylsm bench trace`, agentic workload, 8 shards, capacity 0.05: flushed with the ring
# refresh (2 s) a shard that no request probed heard of reads late, after the read page's segment was
# evicted: 27.8k pages re-appended against 47.8k in a direct replay of the same stream into the stores.
READ_REPORT_S = 0.1


class _Routed:
    """A batch after routing: store keys in batch order (None where SGLang's key was malformed),
    the slots of each shard, the first malformed slot (len(keys) if none), and the id the batch was
    routed by when it is not the keys' namespace id (None otherwise; a shard keeps it for drains)."""

    __slots__ = ("keys", "groups", "first_bad", "routing_id")

    def __init__(self, keys: list[bytes | None], groups: dict[str, list[int]], first_bad: int,
                 routing_id: bytes | None = None):
        self.keys = keys
        self.groups = groups
        self.first_bad = first_bad
        self.routing_id = routing_id


class RingView:
    """Mixin of TierClient: the ring and routing (see the module docstring)."""

    # ---- ring ---------------------------------------------------------------------------------

    @property
    def ring_version(self) -> int:
        return self._ring_info["version"]

    def refresh_ring(self) -> bool:
        """Fetch the controller's ring (and namespace generations); True if the ring changed.
        Failures keep the current ring."""
        try:
            info = ray.get(self._controller.ring.remote(self._splits_version),
                           timeout=self._config.client.call_timeout_s)
        except (ray.exceptions.RayError, TimeoutError) as error:
            logger.warning("raylsm: ring refresh failed (%s); keeping version %s", error, self.ring_version)
            return False
        self._adopt_generations(info.get("generations", {}))
        self._adopt_splits(info.get("splits"))
        self._leaving = frozenset(info.get("leaving") or ())
        if info["version"] == self._ring_info["version"] and info["shards"] == self._ring_info["shards"]:
            return False  # (a restarted controller may reuse a version number: compare members too)
        previous = self._ring_info["shards"]
        if set(info["shards"]) != set(previous) and previous:
            self._previous_ring = self._ring
            self._previous_until = time.monotonic() + self._config.client.handoff_s
        self._ring = HashRing(sorted(info["shards"]), self._config.client.virtual_nodes, max(info["version"], 0))
        self._ring_info = info
        with self._handles_lock:  # a shard that moved to another node is a new actor: resolve it again
            self._handles = {name: handle for name, handle in self._handles.items()
                             if info["shards"].get(name) == previous.get(name)}
        self._health.forget(set(info["shards"]))
        logger.info("raylsm: ring version %d with %d shards", info["version"], len(info["shards"]))
        return True

    def _adopt_splits(self, splits: dict | None) -> None:
        """Take the controller's split extents (sent only when their version is not ours)."""
        if not splits or splits.get("version", -1) == self._splits_version:
            return
        self._split_extents = frozenset(bytes(extent) for extent in splits.get("extents", ()))
        self._splits_version = splits["version"]
        logger.info("raylsm: %d split extents (version %d)", len(self._split_extents), self._splits_version)

    @property
    def split_extents(self) -> frozenset[bytes]:
        return self._split_extents

    def _adopt_generations(self, generations: dict[str, int]) -> None:
        merged = dict(self._generations)
        for base, generation in generations.items():
            merged[base] = max(merged.get(base, 0), int(generation))
        if merged != self._generations:
            self._current_ids = namespaces.current_ids({"generations": merged})
            self._generations = merged

    def _report_loop(self) -> None:
        """Flush the fast path's read reports every READ_REPORT_S (non-blocking calls, one per shard
        with pending reads): a read earns its page a second chance only if it arrives before the
        page's segment is evicted, and a shard that no probe reaches would hear of it late."""
        while not self._closed.wait(READ_REPORT_S):
            try:
                if self._unreported_reads:
                    self.report_reads()
            except Exception:  # noqa: BLE001 (the thread must outlive any one failure)
                logger.exception("raylsm: read report failed")

    def _background_loop(self) -> None:
        while not self._closed.wait(self._config.client.ring_refresh_s):
            for step in (self.refresh_ring, self._settle_puts):
                try:
                    step()
                except Exception:  # the thread must outlive any one failure, or the ring goes stale
                    logger.exception("raylsm: background step %s failed", step.__name__)

    def _handle(self, shard: str) -> Any:
        with self._handles_lock:
            handle = self._handles.get(shard)
        if handle is None:
            handle = ray.get_actor(shard, namespace=self._namespace)
            with self._handles_lock:
                self._handles[shard] = handle
        return handle

    def route_namespace_as(self, namespace_id: bytes, routing_id: bytes) -> None:
        """Route the pages of `namespace_id` by `routing_id` (8 bytes) instead of by themselves.
        The adapter routes every rank's namespace by the rank-free cache identity, so that the TP,
        PP and CP ranks' copies of a page land on one shard and share its fate (SGLang takes the
        minimum prefix hit over ranks); index keys keep the rank's own namespace."""
        if len(routing_id) != page_key.NAMESPACE_ID_BYTES:
            raise ValueError(f"routing id must be {page_key.NAMESPACE_ID_BYTES} bytes, got {len(routing_id)}")
        self._routing_ids[namespace_id] = routing_id

    def _route(self, namespace_id: bytes, page_hashes: Sequence[bytes],
               prefix_hashes: Sequence[bytes] | None, split_extents: frozenset[bytes] | None = None,
               count_bad: bool = True, ring: HashRing | None = None) -> _Routed:
        """Keys and shard groups of a batch. A malformed page hash fails only its own page (and,
        under prefix semantics, the pages behind it): it is left out of every group. Pages are
        routed by the namespace's routing id (route_namespace_as) and keyed by the id of its current
        generation (raylsm.namespaces): a clear changes keys, not placement."""
        routing_id = self._routing_ids.get(namespace_id, namespace_id)
        namespace_id = self._current_ids.get(namespace_id, namespace_id)
        ring = ring or self._ring
        keys: list[bytes | None] = []
        groups: dict[str, list[int]] = {}
        shard_of_anchor: dict[bytes, str] = {}
        first_bad = len(page_hashes)
        try:
            anchors = page_anchors(page_hashes, prefix_hashes, self._extents,
                                   self._split_extents if split_extents is None else split_extents)
        except (ValueError, IndexError, TypeError):
            anchors = [(0, page) for page in page_hashes]  # a malformed prefix: no locality, still correct
        for slot, (page, (depth, anchor)) in enumerate(zip(page_hashes, anchors)):
            try:
                keys.append(page_key.encode(namespace_id, anchor, depth, page))
            except (ValueError, TypeError):
                keys.append(None)
                first_bad = min(first_bad, slot)
                continue
            shard = shard_of_anchor.get(anchor)
            if shard is None:
                shard = shard_of_anchor[anchor] = ring.shard_for(routing_key(routing_id, anchor))
            groups.setdefault(shard, []).append(slot)
        if first_bad < len(page_hashes) and count_bad:
            self._count(bad_keys=sum(key is None for key in keys))
        return _Routed(keys, groups, first_bad, None if routing_id == namespace_id else routing_id)

    def _unsplit_fallback(self, namespace_id: bytes, page_hashes: Sequence[bytes],
                          prefix_hashes: Sequence[bytes] | None, routed: _Routed,
                          slots: Sequence[int]) -> _Routed | None:
        """Where `slots` of a batch were before their extents were split: the routing without the
        split set, its groups cut to those slots whose key it changes (None if none). A split
        re-keys the pages already stored under the old anchor; reads look there for what they miss
        (one more call per shard involved, and only for misses), so a split costs no hits."""
        if not self._split_extents or not slots:
            return None
        old = self._route(namespace_id, page_hashes, prefix_hashes, frozenset(), count_bad=False)  # counted once
        moved = {slot for slot in slots if old.keys[slot] is not None and old.keys[slot] != routed.keys[slot]}
        if not moved:
            return None
        groups = {}
        for shard, group in old.groups.items():
            kept = [slot for slot in group if slot in moved]
            if kept:
                groups[shard] = kept
        return _Routed(old.keys, groups, old.first_bad)

    def _handoff_fallback(self, namespace_id: bytes, page_hashes: Sequence[bytes],
                          prefix_hashes: Sequence[bytes] | None, routed: _Routed,
                          slots: Sequence[int]) -> _Routed | None:
        """Where `slots` of a batch were in the previous ring, within handoff_s of the change: the
        routing by that ring, its groups cut to the slots whose shard it changes and whose shard
        still serves (in the ring, or leaving). None if there are none. A scale event moves a fifth
        of the keys; the hand-over moves their pages, and what it missed (pages written meanwhile)
        is read where it was, so the move costs no hits while the old shard is up."""
        previous = self._previous_ring
        if previous is None or not slots or time.monotonic() > self._previous_until:
            return None
        old = self._route(namespace_id, page_hashes, prefix_hashes, count_bad=False, ring=previous)
        current = {slot: shard for shard, group in routed.groups.items() for slot in group}
        wanted = set(slots)
        serving = set(self._ring_info["shards"]) | self._leaving
        groups = {}
        for shard, group in old.groups.items():
            if shard not in serving:
                continue
            kept = [slot for slot in group if slot in wanted and current.get(slot) != shard]
            if kept:
                groups[shard] = kept
        return _Routed(routed.keys, groups, routed.first_bad) if groups else None

    def _fallbacks(self, op: str) -> list[tuple[Callable[..., _Routed | None], str]]:
        """Where else a read looks for the pages it missed, in order, with the counter of each look:
        for `exists`, first on the shards their owners forwarded them to; then under their extents'
        unsplit keys, then on the previous ring's shards (each None when it does not apply)."""
        fallbacks = [(self._unsplit_fallback, "exists_unsplit_probes" if op == "exists" else "get_unsplit_reads"),
                     (self._handoff_fallback, "exists_handoff_probes" if op == "exists" else "get_handoff_reads")]
        if op == "exists":  # (a get reads forwarded pages where they are from the start: get_into)
            fallbacks.insert(0, (self._forwarded_fallback, "exists_forwarded_probes"))
        return fallbacks

    def _forwarded_fallback(self, namespace_id: bytes, page_hashes: Sequence[bytes],
                            prefix_hashes: Sequence[bytes] | None, routed: _Routed,
                            slots: Sequence[int]) -> _Routed | None:
        """Where shards said they forwarded pages of `slots` (raylsm.client_forwarding)."""
        return self._forward_hints.fallback(routed, slots)
