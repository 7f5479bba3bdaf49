"""ShardHealth: which shards a tier client skips for now because they stopped answering in time.

A shard whose disk hangs keeps its actor threads busy: every call to it would wait the full
deadline, one batch after another, on SGLang's single prefetch thread. After one call to a shard
passes its deadline (or a same-node read of its files does), the client marks the shard stalled and
fails calls to it at once until a health check sees it answer again with no data call stuck for
longer than the timeout and no abandoned same-node read still running. Batches that do not touch it
are unaffected. (A circuit breaker whose half-open probe runs off the data path.)

Two details keep a brief disk stall from costing more than the stall:
- A trip is as wide as the deadline that was missed. A late read (exists, get, a same-node read:
  `call_timeout_s`, 0.5 s) marks the shard's reads only; its puts, whose deadline is ten times
  longer (`put_timeout_s`) and which run on SGLang's backup thread, still go to it. A late put
  marks both: a shard that cannot store a batch in `put_timeout_s` cannot answer a read in time
  either. A hung shard therefore costs one read timeout and one put timeout, then fails fast.
- The first health check runs `FIRST_CHECK_S` after the trip, then with doubling delays up to the
  client's `ring_refresh_s`, and at once when an abandoned same-node read finishes.
  NOTE: measured (`raylsm bench trace --sample-conversations 0.25 --capacity-fraction 0.1`, one
  shard, the bench process's segment reads stalling 1 s at every 400th read, 2026-12-02): with
  puts failed on any trip and one check every `ring_refresh_s` (2 s), 3 late reads failed 2,323
  calls and 1,162 put chunks, L3 hit 0.107; as here, 6 late reads failed 98 calls and no put, hit
  0.197 (0.208 without stalls). docs/faults.md has the table.

Called by TierClient: `is_stalled` on every call, `mark` on a timeout, `check` from the client's
health thread, which sleeps until `due_in()` or until `wake` is set. Thread-safe (one lock).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping

FIRST_CHECK_S = 0.1  # the first health check after a trip; each failed one doubles the delay


class ShardHealth:
    def __init__(self, max_check_delay_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._stalled: dict[str, float] = {}  # shard -> when it was marked (monotonic)
        self._writes_stalled: set[str] = set()  # marked shards whose puts fail fast too
        self._due: dict[str, tuple[float, float]] = {}  # shard -> (next check, delay after it)
        self._local_reads_in_flight: dict[str, int] = {}  # abandoned same-node reads still running
        self._max_check_delay_s = max(FIRST_CHECK_S, max_check_delay_s)
        self._clock = clock  # seconds, monotonic (a test's fake clock)
        self._lock = threading.Lock()
        self.wake = threading.Event()  # set when a check may be due earlier than due_in() said
        # What the breaker did, for stats(): trips, seconds marked (trips closed so far), the
        # longest trip, checks made and why a check kept a shard marked.
        self._totals = {"trips": 0, "write_trips": 0, "stalled_s": 0.0, "longest_s": 0.0, "checks": 0,
                        "kept_no_answer": 0, "kept_busy": 0, "kept_local_reads": 0}

    def is_stalled(self, shard: str, writes: bool = False) -> bool:
        """Whether calls to `shard` fail fast: reads (exists, get, same-node reads) if the shard is
        marked at all, puts (`writes`) only if a put missed its deadline."""
        return shard in self._writes_stalled if writes else shard in self._stalled

    def stalled(self) -> list[str]:
        with self._lock:
            return list(self._stalled)

    def mark(self, shard: str, writes: bool = False) -> None:
        """A call to `shard` passed its deadline: a read's (`writes` False) or a put's (True)."""
        with self._lock:
            self._trip(shard)
            if writes and shard not in self._writes_stalled:
                self._writes_stalled.add(shard)
                self._totals["write_trips"] += 1

    def local_read_abandoned(self, shard: str) -> None:
        """A same-node read of this shard's files passed its deadline and still runs."""
        with self._lock:
            self._local_reads_in_flight[shard] = self._local_reads_in_flight.get(shard, 0) + 1
            self._trip(shard)

    def local_read_finished(self, shard: str) -> None:
        with self._lock:
            left = self._local_reads_in_flight.get(shard, 0) - 1
            if left > 0:
                self._local_reads_in_flight[shard] = left
                return
            self._local_reads_in_flight.pop(shard, None)
            if shard in self._stalled:  # the disk answered: check the shard now
                self._due[shard] = (self._clock(), self._due.get(shard, (0.0, FIRST_CHECK_S))[1])
                self.wake.set()

    def forget(self, shards: set[str]) -> None:
        """Drop shards that left the ring."""
        with self._lock:
            for shard in list(self._stalled):
                if shard not in shards:
                    self._close(shard)

    def due_in(self) -> float | None:
        """Seconds until the next health check is due (0.0 if one is), None if no shard is marked."""
        with self._lock:
            if not self._due:
                return None
            return max(0.0, min(due for due, _ in self._due.values()) - self._clock())

    def check(self, ask: Callable[[Mapping[str, Any]], Mapping[str, Any]], stall_limit_s: float) -> list[str]:
        """Ask every stalled shard whose check is due for its health (`ask({shard: None})` returns
        the shard's `health()` answer, or an exception, per shard) and clear those that answered
        with no data call running longer than `stall_limit_s` and no abandoned same-node read.
        Returns the shards cleared; the others are checked again after twice the last delay."""
        now = self._clock()
        with self._lock:
            due = [shard for shard, (at, _) in self._due.items() if at <= now]
        if not due:
            return []
        answers = ask({shard: None for shard in due})
        cleared = []
        with self._lock:
            for shard in due:
                if shard not in self._stalled:
                    continue
                answer = answers.get(shard)
                self._totals["checks"] += 1
                if not isinstance(answer, dict):
                    kept = "kept_no_answer"
                elif answer.get("stalled_s", float("inf")) >= stall_limit_s:
                    kept = "kept_busy"
                elif self._local_reads_in_flight.get(shard):
                    kept = "kept_local_reads"
                else:
                    self._close(shard)
                    cleared.append(shard)
                    continue
                self._totals[kept] += 1
                delay = self._due[shard][1]
                self._due[shard] = (self._clock() + delay, min(2 * delay, self._max_check_delay_s))
        return cleared

    def totals(self) -> dict:
        """Trips so far (`write_trips`: those that also failed puts), seconds shards spent marked
        (trips closed so far), the longest trip, health checks made, and how often a check kept a
        shard marked: no answer in time, a data call running too long on the shard, or an
        abandoned same-node read still running."""
        with self._lock:
            totals = dict(self._totals)
        totals["stalled_s"] = round(totals["stalled_s"], 3)
        totals["longest_s"] = round(totals["longest_s"], 3)
        return totals

    def _trip(self, shard: str) -> None:  # under the lock
        if shard not in self._stalled:
            now = self._clock()
            self._stalled[shard] = now
            self._due[shard] = (now + FIRST_CHECK_S, min(2 * FIRST_CHECK_S, self._max_check_delay_s))
            self._totals["trips"] += 1
            self.wake.set()

    def _close(self, shard: str) -> None:  # under the lock
        since = self._stalled.pop(shard, None)
        self._writes_stalled.discard(shard)
        self._due.pop(shard, None)
        if since is not None:
            lasted = self._clock() - since
            self._totals["stalled_s"] += lasted
            self._totals["longest_s"] = max(self._totals["longest_s"], lasted)
