"""Per-shard Prometheus metrics, exported through `ray.util.metrics`.

Owned here: metric names, tags and how a store's stats snapshot becomes counter increments. Called
by the shard actor after each data call. Ray adds its own labels (including WorkerId, which changes
when an actor restarts); aggregate by the `shard` tag. Names get Ray's `ray_` prefix, e.g.
`ray_raylsm_gets_total{shard=...,outcome=...}`. Thread-safe (one lock around the delta bookkeeping).
"""

from __future__ import annotations

import threading

from ray.util.metrics import Counter, Gauge, Histogram

LATENCY_BOUNDARIES_MS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500]

# store counter -> (metric, outcome tag)
_OUTCOMES = {
    "gets_hit": ("gets", "hit"),
    "gets_miss_absent": ("gets", "absent"),
    "gets_miss_stale": ("gets", "absent"),
    "gets_miss_corrupt": ("gets", "corrupt"),
    "gets_miss_bad_buffer": ("gets", "bad_buffer"),
    "gets_miss_io": ("gets", "io_error"),
    "puts_pages": ("puts", "stored"),
    "puts_existing": ("puts", "existing"),
    "puts_rejected": ("puts", "rejected"),
    "puts_failed": ("puts", "failed"),
    "puts_too_large": ("puts", "too_large"),
    "puts_bad_value": ("puts", "bad_value"),
    "puts_expired": ("puts", "expired"),
}
_BYTES = {"gets_hit_bytes": "read", "puts_bytes": "written"}


class ShardMetrics:
    def __init__(self, shard_name: str):
        self._tags = {"shard": shard_name}
        self._lock = threading.Lock()
        self._last: dict[object, int] = {}  # counter name (or workload key) -> last total exported
        self._last_seq = 0
        self._pages = {name: Counter(f"raylsm_{name}_total", description=f"pages by outcome ({name})",
                                     tag_keys=("shard", "outcome")) for name in ("gets", "puts")}
        self._bytes = Counter("raylsm_bytes_total", description="page bytes read and written",
                              tag_keys=("shard", "direction"))
        self._evicted = Counter("raylsm_evicted_pages_total", description="pages freed by eviction",
                                tag_keys=("shard",))
        self._reinserted = Counter("raylsm_reinserted_pages_total", description="pages re-appended at eviction",
                                   tag_keys=("shard",))
        self._capacity = Gauge("raylsm_capacity_bytes", description="disk budget", tag_keys=("shard",))
        self._disk = Gauge("raylsm_disk_bytes", description="bytes on the shard disk: segment files and the RocksDB index (what capacity bounds)", tag_keys=("shard",))
        self._live = Gauge("raylsm_live_bytes", description="bytes referenced by the index", tag_keys=("shard",))
        self._miss_ratio = Gauge("raylsm_mrc_miss_ratio",
                                 description="estimated LRU miss ratio of the page references at a multiple of the disk "
                                             "budget (sampled reuse distances, SHARDS)",
                                 tag_keys=("shard", "capacity_multiple"))
        self._ghost_hits = Counter("raylsm_ghost_hits_total",
                                   description="asks that missed a page this shard evicted (estimated)",
                                   tag_keys=("shard",))
        self._hits_by_depth = Counter("raylsm_hits_by_depth_total",
                                      description="probe hits by prefix depth in pages (estimated)",
                                      tag_keys=("shard", "depth_pages"))
        self._hits_by_age = Counter("raylsm_hits_by_age_total",
                                    description="probe hits by seconds since the page was written (estimated)",
                                    tag_keys=("shard", "age_seconds"))
        self._latency = Histogram("raylsm_call_latency_ms", description="shard call latency",
                                  boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("shard", "op"))

    def observe_call(self, op: str, ms: float) -> None:
        self._latency.observe(ms, tags={**self._tags, "op": op})

    def sync(self, stats: dict) -> None:
        """Turn the store's cumulative counters into metric increments since the last sync.

        Snapshots are taken on several actor threads and may arrive out of order (20, 10, 30): each
        counter only ever moves up to the highest value seen, so the exported total is the store's
        counter (30), whatever the interleaving."""
        deltas = self._deltas(stats["counters"])
        for name, (metric, outcome) in _OUTCOMES.items():
            if deltas.get(name, 0) > 0:
                self._pages[metric].inc(deltas[name], tags={**self._tags, "outcome": outcome})
        for name, direction in _BYTES.items():
            if deltas.get(name, 0) > 0:
                self._bytes.inc(deltas[name], tags={**self._tags, "direction": direction})
        if deltas.get("evicted_pages", 0) > 0:
            self._evicted.inc(deltas["evicted_pages"], tags=self._tags)
        if deltas.get("reinserted_pages", 0) > 0:
            self._reinserted.inc(deltas["reinserted_pages"], tags=self._tags)
        with self._lock:
            newest = stats.get("seq", 0) >= self._last_seq
            self._last_seq = max(self._last_seq, stats.get("seq", 0))
        if not newest:
            return  # an older snapshot than one already exported: its gauges are out of date
        workload = stats.get("workload")
        if workload:
            self._sync_workload(workload)
        space = stats["space"]
        self._capacity.set(space["capacity_bytes"], tags=self._tags)
        self._disk.set(space["disk_bytes"], tags=self._tags)
        self._live.set(space["live_bytes"], tags=self._tags)

    def _deltas(self, totals: dict) -> dict:
        """Increments since the last export of each cumulative total (a total only moves up)."""
        with self._lock:
            deltas = {}
            for name, value in totals.items():
                seen = self._last.get(name, 0)
                if value > seen:
                    deltas[name] = value - seen
                    self._last[name] = value
        return deltas

    def _sync_workload(self, workload: dict) -> None:
        """Estimated counts become increments like the store's counters (the newest snapshot only)."""
        totals = {("ghost", ""): workload["ghost_hits_est"]}
        totals.update({("depth", label): n for label, n in workload["hits_by_depth_pages"].items()})
        totals.update({("age", label): n for label, n in workload["hits_by_age_s"].items()})
        for (kind, label), delta in self._deltas(totals).items():
            if kind == "ghost":
                self._ghost_hits.inc(delta, tags=self._tags)
            elif kind == "depth":
                self._hits_by_depth.inc(delta, tags={**self._tags, "depth_pages": label})
            else:
                self._hits_by_age.inc(delta, tags={**self._tags, "age_seconds": label})
        for multiple, ratio in workload["miss_ratio_by_capacity_multiple"].items():
            self._miss_ratio.set(ratio, tags={**self._tags, "capacity_multiple": multiple})


class ClientMetrics:
    """Pages a TierClient could not serve from a shard because the call to it failed, exported from
    the client's process (the SGLang scheduler): `ray_raylsm_client_failed_pages_total{shard, op,
    cause}` with cause "shard_down" (actor dead or restarting), "timeout" (no answer within
    call_timeout_s; op "local_read" for a same-node read past its deadline), "stalled" (skipped
    without a call: the shard timed out recently and has not recovered), "bad_input" (the shard
    refused the input) or "error". The shard cannot count these itself. Metrics that cannot be
    created (Ray not initialized) are skipped, never raised."""

    CAUSES = ("shard_down", "timeout", "stalled", "bad_input", "error")

    def __init__(self) -> None:
        try:
            self._failed = Counter("raylsm_client_failed_pages_total",
                                   description="pages missed or not stored because the shard call failed",
                                   tag_keys=("shard", "op", "cause"))
        except Exception:  # noqa: BLE001 (metrics are best effort)
            self._failed = None

    def failed(self, shard: str, op: str, cause: str, pages: int) -> None:
        if self._failed is not None and pages > 0:
            self._failed.inc(pages, tags={"shard": shard, "op": op, "cause": cause})
