"""Counters and latency histograms of one shard store.

Owned here: what is counted and how a snapshot looks. Called by the shard store once per operation
(never once per page inside a hot loop); `snapshot()` is called by `ShardStore.stats()` and, later,
by the shard actor's metrics exporter. Thread-safe: every update takes one short lock.
"""

from __future__ import annotations

import threading
from collections import Counter

# Upper bounds (ms) of the latency buckets; the last bucket is open-ended.
LATENCY_BOUNDS_MS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

COUNTERS = (
    "puts_pages",           # pages written by put_batch
    "puts_bytes",
    "puts_existing",        # pages already present: skipped, reported True
    "puts_rejected",        # refused by the admission policy
    "puts_failed",          # not stored for an I/O error (ENOSPC, EIO)
    "puts_too_large",       # larger than a segment can hold: that page only is refused
    "puts_bad_value",       # not a contiguous buffer: that page only is refused
    "puts_expired",         # the caller's deadline passed before the write: not written
    "gets_hit",
    "gets_hit_bytes",
    "gets_located",         # pages a same-node reader reads itself from pointers (and verifies)
    "gets_miss_absent",     # no pointer
    "gets_miss_stale",      # pointer to a freed segment
    "gets_miss_corrupt",    # checksum mismatch: a miss, never wrong bytes
    "gets_miss_bad_buffer", # output buffer of the wrong size, read-only or not contiguous
    "gets_miss_io",         # read error
    "healed_pages",         # pointers dropped after a failed read (corrupt or unreadable bytes), here or
                            # reported by a same-node reader: the page is absent and a re-put stores it
    "probe_calls",
    "probe_keys",
    "probe_hits",
    "deleted_pages",
    "evicted_segments",
    "evicted_segments_inline",  # dropped whole by a put that found no room (the reclaimer lagged)
    "rolls_waited",         # rolls that waited for the reclaimer's room (a put's tail latency)
    "roll_wait_ms",         # milliseconds those rolls waited, in total
    "evicted_pages",
    "evicted_bytes",
    "reinserted_pages",
    "reinserted_bytes",
    "recovery_dropped_pointers",
)


class LatencyHistogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        self.total_ms = 0.0

    def observe(self, ms: float) -> None:
        for index, bound in enumerate(LATENCY_BOUNDS_MS):
            if ms <= bound:
                self.counts[index] += 1
                break
        else:
            self.counts[-1] += 1
        self.total_ms += ms

    def quantile_ms(self, q: float) -> float:
        """The upper bound of the bucket holding quantile q (an over-estimate by design)."""
        total = sum(self.counts)
        if not total:
            return 0.0
        rank = q * total
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank and count:
                return LATENCY_BOUNDS_MS[index] if index < len(LATENCY_BOUNDS_MS) else float("inf")
        return float("inf")

    def snapshot(self) -> dict:
        return {"bounds_ms": list(LATENCY_BOUNDS_MS), "counts": list(self.counts), "sum_ms": self.total_ms,
                "p50_ms": self.quantile_ms(0.5), "p99_ms": self.quantile_ms(0.99)}


class StoreStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: Counter[str] = Counter({name: 0 for name in COUNTERS})
        self._latency = {op: LatencyHistogram() for op in ("put", "get", "probe")}
        self._seq = 0

    def add(self, **deltas: int) -> None:
        with self._lock:
            self._counters.update(deltas)

    def observe(self, op: str, ms: float, **deltas: int) -> None:
        with self._lock:
            self._latency[op].observe(ms)
            if deltas:
                self._counters.update(deltas)

    def snapshot(self) -> dict:
        """Counters and histograms; `seq` grows with every snapshot, so a reader that gets snapshots
        out of order (several threads) can tell which is newer."""
        with self._lock:
            self._seq += 1
            return {"seq": self._seq, "counters": dict(self._counters),
                    "latency": {op: hist.snapshot() for op, hist in self._latency.items()}}
