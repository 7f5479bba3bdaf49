"""ShardHealth: which shards a tier client skips for now because they stopped answering in time.

A shard whose disk hangs keeps its actor threads busy: every call to it would wait the full
`call_timeout_s`, one batch after another, on SGLang's single prefetch thread. After one call to a
shard times out (or a same-node read of its files does), the client marks it stalled and fails calls
to it at once (its pages are misses, its puts fail) until a background health check sees it answer
again with no data call stuck for longer than the timeout. Batches that do not touch it are
unaffected. (A circuit breaker whose half-open probe runs off the data path.)

The first health check of a stalled shard is due FIRST_CHECK_S after it was marked, each later one
twice as long after the previous (at most `max_backoff_s`): a disk that hiccups for a few hundred
milliseconds costs that shard's calls about as long, a hung one costs one small call per backoff.
NOTE: the check used to run only every ring refresh (2 s). `raylsm bench trace` on the full packaged
trace, 1 shard, capacity 0.1, with preallocated segments (whose writes stalled up to ~0.9 s on this
VM's disk): 4 same-node reads passed their deadline, each tripped the breaker, and 4,621 calls
failed at once while it was open (182k pages not stored, L3 hit ratio 0.170 against 0.214 in a run
without the stalls); see docs/faults.md for the run with this schedule.

Called by TierClient: `is_stalled` on every call, `mark` on a timeout, `due` and `check` from the
client's read-report thread (every 0.1 s). Thread-safe (one lock).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping


FIRST_CHECK_S = 0.1  # the first health check of a stalled shard, after it was marked


class ShardHealth:
    def __init__(self, max_backoff_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._stalled: dict[str, float] = {}  # shard -> when it was marked
        self._next_check: dict[str, tuple[float, float]] = {}  # shard -> (when due, backoff used)
        self._local_reads_in_flight: dict[str, int] = {}  # abandoned same-node reads still running
        self._max_backoff_s = max(FIRST_CHECK_S, max_backoff_s)
        self._clock = clock
        self._lock = threading.Lock()

    def is_stalled(self, shard: str) -> bool:
        return shard in self._stalled

    def stalled(self) -> list[str]:
        with self._lock:
            return list(self._stalled)

    def _mark_locked(self, shard: str) -> None:
        if shard not in self._stalled:
            now = self._clock()
            self._stalled[shard] = now
            self._next_check[shard] = (now + FIRST_CHECK_S, FIRST_CHECK_S)

    def mark(self, shard: str) -> None:
        with self._lock:
            self._mark_locked(shard)

    def local_read_abandoned(self, shard: str) -> None:
        """A same-node read of this shard's files passed its deadline and still runs."""
        with self._lock:
            self._local_reads_in_flight[shard] = self._local_reads_in_flight.get(shard, 0) + 1
            self._mark_locked(shard)

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
                    self._next_check.pop(shard, None)

    def due(self) -> bool:
        """Whether a stalled shard's next health check is due (cheap: for a loop's every tick)."""
        if not self._stalled:
            return False
        now = self._clock()
        with self._lock:
            return any(when <= now for when, _ in self._next_check.values())

    def check(self, ask: Callable[[Mapping[str, Any]], Mapping[str, Any]], stall_limit_s: float) -> list[str]:
        """Ask every stalled shard whose check is due for its health (`ask({shard: None})` returns
        the shard's `health()` answer, or an exception, per shard) and clear those that answered with
        no data call running longer than `stall_limit_s` and no abandoned same-node read; the others'
        next check is due after twice the backoff (at most max_backoff_s). Returns the shards cleared."""
        now = self._clock()
        with self._lock:
            due = [shard for shard, (when, _) in self._next_check.items() if when <= now]
        if not due:
            return []
        answers = ask({shard: None for shard in due})
        cleared = []
        with self._lock:
            later = self._clock()
            for shard in due:
                if shard not in self._stalled:
                    continue
                answer = answers.get(shard)
                if (isinstance(answer, dict) and answer.get("stalled_s", float("inf")) < stall_limit_s
                        and not self._local_reads_in_flight.get(shard)):
                    self._stalled.pop(shard, None)
                    self._next_check.pop(shard, None)
                    cleared.append(shard)
                else:
                    backoff = min(self._max_backoff_s, 2 * self._next_check[shard][1])
                    self._next_check[shard] = (later + backoff, backoff)
        return cleared
