"""The tier client's side of eviction forwarding (raylsm.actors.forwarding): where a shard said it
forwarded pages, kept for the reads that follow.

Owned here: `ForwardHints`, a bounded map of store key -> the shard holding the page, filled from
the `where` part of a probe's answer, with a time to live: `exists` looks for the forwarded pages of
its leading run on those shards (a second call per shard holding some, only for requests that reach
forwarded pages), and the get that follows reads them there straight away (`reroute`). A hint that
has gone stale costs a miss there, never wrong bytes. Called by TierClient; thread-safe (one lock).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Mapping, Sequence

from raylsm.client_ring import _Routed


class ForwardHints:
    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._entries: OrderedDict[bytes, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, keys: Sequence[bytes], where: Mapping[int, str]) -> None:
        """A shard's probe of `keys` said key i is at shard where[i]."""
        if not where:
            return
        expires = time.monotonic() + self._ttl_s
        entries = self._entries
        with self._lock:
            for index, shard in where.items():
                key = keys[index]
                entries[key] = (expires, shard)
                entries.move_to_end(key)
            while len(entries) > self._max_entries:
                entries.popitem(last=False)

    def _where(self, keys: Sequence[bytes | None], slots: Sequence[int]) -> dict[int, str]:
        if not self._entries:
            return {}
        now = time.monotonic()
        found = {}
        with self._lock:
            for slot in slots:
                entry = self._entries.get(keys[slot]) if keys[slot] is not None else None
                if entry is not None and entry[0] >= now:
                    found[slot] = entry[1]
        return found

    def fallback(self, routed: _Routed, slots: Sequence[int]) -> _Routed | None:
        """The routing of those `slots` that have a hint, to the shards holding them (None if
        none has)."""
        found = self._where(routed.keys, slots)
        if not found:
            return None
        groups: dict[str, list[int]] = {}
        for slot in sorted(found):
            groups.setdefault(found[slot], []).append(slot)
        return _Routed(routed.keys, groups, routed.first_bad, routed.routing_id)

    def reroute(self, routed: _Routed) -> _Routed:
        """`routed` with every hinted slot moved to the shard holding its page."""
        found = self._where(routed.keys, range(len(routed.keys)))
        if not found:
            return routed
        groups: dict[str, list[int]] = {}
        for shard, slots in routed.groups.items():
            for slot in slots:
                groups.setdefault(found.get(slot, shard), []).append(slot)
        for slots in groups.values():
            slots.sort()
        return _Routed(routed.keys, groups, routed.first_bad, routed.routing_id)
