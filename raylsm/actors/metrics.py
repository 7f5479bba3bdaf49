"""Prometheus metrics of the shards and of the clients, exported through `ray.util.metrics`.

Owned here: metric names, labels and how a store's stats snapshot becomes counter increments.
`ShardMetrics` is called by the shard actor after each data call; `ClientMetrics` by the TierClient
and the SGLang adapter in the client's process. Ray adds its own labels (including WorkerId, which
changes when an actor restarts); aggregate by the `shard` label. Names get Ray's `ray_` prefix, e.g.
`ray_raylsm_get_pages_total{shard=...,outcome=...}`. docs/deploy.md lists every metric with its
labels and label values (tests/unit/test_cluster_files.py checks the list against these classes).

Naming (Prometheus conventions): base units (`_seconds`, `_bytes`), counters end in `_total` and say
what they count (`_pages_total`: one per page; calls are counted by the histograms' `_count`).
Thread-safe (one lock around the delta bookkeeping).
"""

from __future__ import annotations

import os
import threading
import time

from ray.util.metrics import Counter, Gauge, Histogram

# Call durations, 100 us (a probe of a few pages) to 10 s (past put_timeout_s, 5 s by default).
DURATION_BOUNDARIES_S = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                         1.0, 2.5, 5.0, 10.0]
# How often a shard reads its file system's free space (one statvfs) for the disk headroom gauge.
FILESYSTEM_PERIOD_S = 10.0

# store counter -> (metric, outcome label)
_OUTCOMES = {
    "gets_hit": ("get", "hit"),
    "gets_located": ("get", "local_hit"),  # read by a same-node client, verified and reported
    "gets_miss_absent": ("get", "absent"),
    "gets_miss_stale": ("get", "absent"),
    "gets_miss_corrupt": ("get", "corrupt"),
    "gets_miss_bad_buffer": ("get", "bad_buffer"),
    "gets_miss_io": ("get", "io_error"),
    "puts_pages": ("put", "stored"),
    "puts_existing": ("put", "existing"),
    "puts_rejected": ("put", "rejected"),
    "puts_failed": ("put", "failed"),
    "puts_too_large": ("put", "too_large"),
    "puts_bad_value": ("put", "bad_value"),
    "puts_expired": ("put", "expired"),
    "probe_hits": ("probe", "hit"),
    "probe_misses": ("probe", "miss"),  # probe_keys - probe_hits (sync adds it)
}
_BYTES = {"gets_hit_bytes": "read", "puts_bytes": "written"}
# eviction forwarding's counter (raylsm.actors.forwarding) -> outcome label
_FORWARDING = {"forwarded_pages": "forwarded", "received_pages": "received",
               "forward_dropped_pages": "dropped_queue_full", "forward_failed_pages": "send_failed",
               "forward_second_chances_skipped": "not_forwarded_again", "forwarded_reads": "found_by_probe"}


class ShardMetrics:
    def __init__(self, shard_name: str):
        self._tags = {"shard": shard_name}
        self._lock = threading.Lock()
        self._last: dict[object, int] = {}  # counter name (or workload key) -> last total exported
        self._last_seq = 0
        self._path: str | None = None  # the store's directory, once opened() was called
        self._filesystem_free: int | None = None
        self._filesystem_read_at = -FILESYSTEM_PERIOD_S
        self._pages = {
            "get": Counter("raylsm_get_pages_total", description="pages asked for by gets, by outcome",
                           tag_keys=("shard", "outcome")),
            "put": Counter("raylsm_put_pages_total", description="pages offered by puts, by what the shard did",
                           tag_keys=("shard", "outcome")),
            "probe": Counter("raylsm_probe_pages_total",
                             description="pages asked for by probes (SGLang's batch_exists): hit if in the leading "
                                         "run the shard holds, else miss", tag_keys=("shard", "outcome")),
        }
        self._bytes = Counter("raylsm_page_bytes_total",
                              description="page bytes read (object-store gets) and written (puts)",
                              tag_keys=("shard", "direction"))
        self._evicted = Counter("raylsm_evicted_pages_total", description="pages freed by eviction",
                                tag_keys=("shard",))
        self._reinserted = Counter("raylsm_reinserted_pages_total", description="pages re-appended at eviction",
                                   tag_keys=("shard",))
        self._forwarded = Counter("raylsm_forwarded_pages_total",
                                  description="pages handled by eviction forwarding between shards, by outcome",
                                  tag_keys=("shard", "outcome"))
        self._capacity = Gauge("raylsm_capacity_bytes", description="disk budget", tag_keys=("shard",))
        self._disk = Gauge("raylsm_disk_bytes", description="bytes on the shard disk: segment files and the RocksDB index (what capacity bounds)", tag_keys=("shard",))
        self._live = Gauge("raylsm_live_bytes", description="bytes referenced by the index", tag_keys=("shard",))
        self._headroom = Gauge("raylsm_disk_headroom_bytes",
                               description="free bytes the shard's file system keeps once the budget (the shard's, "
                                           "or its pool's) is full; below 0 the disk fills before the budget does",
                               tag_keys=("shard",))
        self._miss_ratio = Gauge("raylsm_estimated_miss_ratio",
                                 description="estimated LRU miss ratio of the page references at a multiple of the disk "
                                             "budget (miss-ratio curve from sampled reuse distances, SHARDS)",
                                 tag_keys=("shard", "capacity_multiple"))
        self._ghost_hits = Counter("raylsm_ghost_hit_pages_total",
                                   description="pages asked for that this shard had evicted (estimated)",
                                   tag_keys=("shard",))
        self._hits_by_depth = Counter("raylsm_hit_pages_by_depth_total",
                                      description="probe hits by prefix depth in pages (estimated)",
                                      tag_keys=("shard", "depth_pages"))
        self._hits_by_age = Counter("raylsm_hit_pages_by_age_total",
                                    description="probe hits by seconds since the page was written (estimated)",
                                    tag_keys=("shard", "age_seconds"))
        self._duration = Histogram("raylsm_shard_call_duration_seconds",
                                   description="time inside the shard actor per data call",
                                   boundaries=DURATION_BOUNDARIES_S, tag_keys=("shard", "op"))
        self._recovery = {
            "dropped_pointers": Gauge("raylsm_recovery_dropped_pointers",
                                      description="pointers the last open dropped (into a missing segment or past "
                                                  "a segment's written end)", tag_keys=("shard",)),
            "truncated_bytes": Gauge("raylsm_recovery_truncated_bytes",
                                     description="bytes of torn tail the last open cut from the newest segment",
                                     tag_keys=("shard",)),
            "clean_shutdown": Gauge("raylsm_recovery_clean_shutdown",
                                    description="1 if the last open found a clean close, 0 after a crash",
                                    tag_keys=("shard",)),
        }
        self._started = Gauge("raylsm_shard_start_time_seconds",
                              description="when the shard's store last opened (Unix time)", tag_keys=("shard",))

    def opened(self, path: str, recovery) -> None:
        """The store at `path` opened: export what its recovery found (a RecoveredState: clean
        shutdown, dropped pointers, truncated bytes) and the time, and remember the path for the
        file system's free space."""
        self._path = path
        self._recovery["dropped_pointers"].set(recovery.dropped_pointers, tags=self._tags)
        self._recovery["truncated_bytes"].set(recovery.truncated_bytes, tags=self._tags)
        self._recovery["clean_shutdown"].set(int(bool(recovery.clean_shutdown)), tags=self._tags)
        self._started.set(time.time(), tags=self._tags)

    def observe_call(self, op: str, ms: float) -> None:
        """One data call of the shard actor took `ms` milliseconds (exported in seconds)."""
        self._duration.observe(ms / 1e3, tags={**self._tags, "op": op})

    def sync(self, stats: dict) -> None:
        """Turn the store's cumulative counters into metric increments since the last sync.

        Snapshots are taken on several actor threads and may arrive out of order (20, 10, 30): each
        counter only ever moves up to the highest value seen, so the exported total is the store's
        counter (30), whatever the interleaving."""
        counters = stats["counters"]
        if "probe_keys" in counters:
            counters = {**counters, "probe_misses": counters["probe_keys"] - counters.get("probe_hits", 0)}
        deltas = self._deltas(counters)
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
        free = self._filesystem_free_bytes()
        if free is not None:
            budget = stats.get("pool") or space  # a pool's members evict as one: its budget is theirs
            self._headroom.set(free - max(budget["capacity_bytes"] - budget["disk_bytes"], 0), tags=self._tags)

    def sync_forwarding(self, stats: dict) -> None:
        """Turn eviction forwarding's cumulative counters (Forwarding.stats()) into increments."""
        deltas = self._deltas({("forwarding", name): stats.get(name, 0) for name in _FORWARDING})
        for (_, name), delta in deltas.items():
            self._forwarded.inc(delta, tags={**self._tags, "outcome": _FORWARDING[name]})

    def _filesystem_free_bytes(self) -> int | None:
        """Free bytes of the store's file system, read at most every FILESYSTEM_PERIOD_S (None before
        opened() or when it cannot be read)."""
        now = time.monotonic()
        with self._lock:
            if self._path is None or now - self._filesystem_read_at < FILESYSTEM_PERIOD_S:
                return self._filesystem_free
            self._filesystem_read_at = now
        try:
            found = os.statvfs(self._path)
            free = found.f_bavail * found.f_frsize
        except OSError:
            free = None
        with self._lock:
            self._filesystem_free = free
        return free

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
    """What the client's process (the SGLang scheduler, or a benchmark) sees of the tier; the shards
    cannot count these themselves. Metrics that cannot be created (Ray not initialized) are skipped,
    and recording one never raises into the caller.

    - `ray_raylsm_client_failed_pages_total{shard, op, cause}`: pages the TierClient could not serve
      from a shard (or store on it) because the call failed. op: the shard method called, or
      "local_read" for a same-node read past its deadline. cause: "shard_down" (actor dead or
      restarting), "timeout" (no answer within call_timeout_s), "stalled" (skipped without a call:
      the shard timed out recently and has not recovered), "bad_input" (the shard refused the input)
      or "error".
    - `ray_raylsm_client_call_duration_seconds{op}`: each SGLang call to the adapter, as SGLang's
      thread sees it (one observation per call; op: SGLANG_CALLS). Not by shard: one call fans out
      to several shards at once."""

    CAUSES = ("shard_down", "timeout", "stalled", "bad_input", "error")
    SGLANG_CALLS = ("batch_exists", "batch_get_v1", "batch_set_v1", "batch_get", "batch_set")

    def __init__(self) -> None:
        try:
            self._failed = Counter("raylsm_client_failed_pages_total",
                                   description="pages missed or not stored because the shard call failed",
                                   tag_keys=("shard", "op", "cause"))
            self._duration = Histogram("raylsm_client_call_duration_seconds",
                                       description="SGLang's calls to the raylsm adapter, as its threads see them",
                                       boundaries=DURATION_BOUNDARIES_S, tag_keys=("op",))
        except Exception:  # noqa: BLE001 (metrics are best effort)
            self._failed = self._duration = None

    def failed(self, shard: str, op: str, cause: str, pages: int) -> None:
        if self._failed is not None and pages > 0:
            self._failed.inc(pages, tags={"shard": shard, "op": op, "cause": cause})

    def observe_call(self, op: str, seconds: float) -> None:
        """One SGLang call (op: one of SGLANG_CALLS) took `seconds`."""
        if self._duration is None:
            return
        try:
            self._duration.observe(seconds, tags={"op": op})
        except Exception:  # noqa: BLE001 (never into SGLang's threads)
            pass
