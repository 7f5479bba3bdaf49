"""ShardHealth: which shards a tier client skips for now because they stopped answering in time.

A shard whose disk hangs keeps its actor threads busy: every call to it would wait the full
`call_timeout_s`, one batch after another, on SGLang's single prefetch thread. After one call to a
shard times out (or a same-node read of its files does), the client marks it stalled and fails calls
to it at once (its pages are misses, its puts fail) until a background health check sees it answer
again with no data call stuck for longer than the timeout. Batches that do not touch it are
unaffected. (A circuit breaker whose half-open probe runs off the data path.)

Called by TierClient: `is_stalled` on every call, `mark` on a timeout, `check` from the client's
background thread. Thread-safe (one lock).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping


class ShardHealth:
    def __init__(self) -> None:
        self._stalled: dict[str, float] = {}  # shard -> when it was marked (monotonic)
        self._local_reads_in_flight: dict[str, int] = {}  # abandoned same-node reads still running
        self._lock = threading.Lock()

    def is_stalled(self, shard: str) -> bool:
        return shard in self._stalled

    def stalled(self) -> list[str]:
        with self._lock:
            return list(self._stalled)

    def mark(self, shard: str) -> None:
        with self._lock:
            self._stalled.setdefault(shard, time.monotonic())

    def local_read_abandoned(self, shard: str) -> None:
        """A same-node read of this shard's files passed its deadline and still runs."""
        with self._lock:
            self._local_reads_in_flight[shard] = self._local_reads_in_flight.get(shard, 0) + 1
            self._stalled.setdefault(shard, time.monotonic())

    def local_read_finished(self, shard: str) -> None:
        with self._lock:
            left = self._local_reads_in_flight.get(shard, 0) - 1
            if left > 0:
                self._local_reads_in_flight[shard] = left
            else:
                self._local_reads_in_flight.pop(shard, None)

    def forget(self, shards: set[str]) -> None:
        """Drop shards that left the ring."""
        with self._lock:
            for shard in list(self._stalled):
                if shard not in shards:
                    del self._stalled[shard]

    def check(self, ask: Callable[[Mapping[str, Any]], Mapping[str, Any]], stall_limit_s: float) -> list[str]:
        """Ask every stalled shard for its health (`ask({shard: None})` returns the shard's `health()`
        answer, or an exception, per shard) and clear those that answered with no data call running
        longer than `stall_limit_s` and no abandoned same-node read. Returns the shards cleared."""
        stalled = self.stalled()
        if not stalled:
            return []
        answers = ask({shard: None for shard in stalled})
        cleared = []
        with self._lock:
            for shard in stalled:
                answer = answers.get(shard)
                if (isinstance(answer, dict) and answer.get("stalled_s", float("inf")) < stall_limit_s
                        and not self._local_reads_in_flight.get(shard)):
                    self._stalled.pop(shard, None)
                    cleared.append(shard)
        return cleared
