"""The top-level raylsm configuration: one frozen dataclass per component, nested in TierConfig.

Owned here: the tier's knobs outside one store (shard placement, client routing and timeouts, the
controller loop) and the parsing of an untyped dict (SGLang's extra config, a CLI file) into them,
done once at the edge. Immutable, so thread-safe. Store knobs live in raylsm.store.config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from raylsm.errors import ConfigError
from raylsm.store.config import StoreConfig

RAY_NAMESPACE = "raylsm"
CONTROLLER_NAME = "raylsm-controller"


# Ray's system config `max_direct_call_object_size`, read from a process's environment as Ray starts
# in it (ShardConfig.inline_reply_bytes, ClientConfig.inline_call_bytes).
INLINE_ENV = "RAY_max_direct_call_object_size"


@dataclass(frozen=True)
class ShardConfig:
    # Node-local directory that holds the shard directories of a node (one per SSD shard). The
    # embedded default keeps it under the working directory; on a cluster, point it at the SSD.
    data_dir: str = "./.raylsm/data"
    # Custom Ray resource a node offers to host a shard (`ray start --resources='{"raylsm_shard": 1}'`).
    resource_name: str = "raylsm_shard"
    # Ray node label naming the node's shard disk (`ray start --labels='{"raylsm-disk": "nvme0-host17"}'`).
    # A shard on a labelled node is named after its disk, so a node that restarts (and gets a new
    # Ray node id) finds its shard's directory, data and ring place again. Without the label a shard
    # is named after its Ray node id: a restarted node starts an empty shard, and the old directory
    # stays on the disk until removed by hand.
    disk_label: str = "raylsm-disk"
    # The shards of one disk (same data_dir and disk identity: a node offering raylsm_shard > 1) pool
    # their store capacities into one budget and evict in one order, oldest segment of any of them
    # first (raylsm/store/budget_pool.py). Off: each shard evicts within its own capacity.
    # NOTE: `raylsm bench trace`, 8 shards vs 1 at the same total capacity (docs/placement.md).
    pool_disk_budget: bool = True
    # Threads of the threaded shard actor: reads (preadv, multi-get) release the GIL and overlap.
    max_concurrency: int = 8
    # How long a restarted shard retries opening its directory while the old process holds the lock.
    open_retry_s: float = 60.0
    # Pages stored per window of the hot-extent sketch (raylsm/store/hot_extents.py): an extent is
    # judged on the last whole window, or on the current one once half full.
    hot_extent_window_pages: int = 1 << 14
    # Replies of the shard actor up to this many bytes travel inline in Ray's gRPC reply, not through
    # the object stores (Ray's `max_direct_call_object_size`, set in the actor's runtime environment
    # as RAY_max_direct_call_object_size); 0 keeps Ray's default (100 KiB). For clients on other
    # nodes (replicas and shards in separate pods); pair it with the clients' inline_call_bytes.
    # NOTE: measured (docs/fleet.md): `raylsm bench fleet --quick`, 4 nodes, 48 KiB pages, with 16 MiB
    # on both sides: get p50 27-29 vs 38 ms, get p99 73-100 vs 139 ms, put p99 150-177 vs 241 ms.
    # Within one node with the fast path off it halves the object path (`raylsm bench tier`: 0.386 vs
    # 0.709 GB/s: plasma there is shared memory), hence not the default.
    inline_reply_bytes: int = 0
    # Seconds between exports of the store's statistics to the actor's Ray metrics, from a thread of
    # its own (a scrape reads them every 10-15 s). Data calls only time themselves.
    # NOTE: before, every data call exported on its way out, and the statistics take the store's
    # write lock: py-spy on a shard, full packaged trace, 76 of the put path's ~560 samples waited
    # there (behind the reclaimer's commits) before the reply went out.
    metrics_period_s: float = 1.0
    # Eviction forwarding (raylsm/actors/forwarding.py, docs/placement.md): a shard evicting a
    # segment younger than (1 - forward_slack) x the age of the oldest segment on another disk (or
    # with another disk that has room) sends its pages there and keeps a pointer per page, at most
    # forward_pointers (about 100 B of memory each). Shards of one disk budget pool never forward to
    # each other: they already evict in one order.
    # NOTE: off by default: it lost hits where it was measured. `raylsm bench trace --partitioned`,
    # agentic workload, capacity 0.05, 8 shards (2026-12-02, one run each): 0.1026 without it,
    # 0.0872 with it (0.0622 with the first policy, which cascaded); docs/placement.md.
    forward_evictions: bool = False
    forward_slack: float = 0.25
    forward_pointers: int = 1 << 18
    store: StoreConfig = field(default_factory=StoreConfig)

    def validate(self) -> "ShardConfig":
        _require(self, "max_concurrency", 1 <= self.max_concurrency <= 256, "in [1, 256]")
        _require(self, "open_retry_s", 0 <= self.open_retry_s <= 3600, "in [0, 3600]")
        _require(self, "hot_extent_window_pages", 1 <= self.hot_extent_window_pages <= 1 << 30, "in [1, 2**30]")
        _require(self, "inline_reply_bytes", 0 <= self.inline_reply_bytes <= 1 << 29, "in [0, 2**29]")
        _require(self, "metrics_period_s", 0.01 <= self.metrics_period_s <= 3600, "in [0.01, 3600]")
        _require(self, "forward_slack", 0.0 <= self.forward_slack < 1.0, "in [0, 1)")
        _require(self, "forward_pointers", 1 <= self.forward_pointers <= 1 << 30, "in [1, 2**30]")
        _require(self, "resource_name", bool(self.resource_name), "non-empty")
        _require(self, "disk_label", bool(self.disk_label), "non-empty")
        self.store.validate()
        return self


@dataclass(frozen=True)
class ClientConfig:
    # Pages per extent: consecutive pages of one chain that share a shard and an index prefix.
    # NOTE: measured by raylsm.bench.balance on the conversation trace, 8 shards, 64-token pages:
    # 128-page extents after an 8-page head give stored max/mean 1.06 and 2.5 shards per request
    # (plain 8-page extents: 1.10 and 5.9; plain 128-page extents: 3.87 and 1.8).
    extent_pages: int = 128
    # The first pages of every chain (the shared system prompt, where every prompt's chain starts)
    # form their own extents of `shallow_extent_pages`, so no long extent is anchored on a page that
    # every prompt shares. 0 turns the split off. Defaults assume 64-token pages (a 512-token head).
    shallow_depth_pages: int = 8
    shallow_extent_pages: int = 8
    # Pages per sub-extent of a regular extent the controller split (a hot shared prefix that many
    # chains continue inside one extent; docs/placement.md). Capped at extent_pages.
    split_extent_pages: int = 16
    # Virtual nodes per shard on the consistent-hash ring.
    virtual_nodes: int = 128
    # A shard call that takes longer is a miss (a put: not stored) and marks the shard stalled.
    # Derived from SGLang's prefetch budget (0.5.23: prefetch_timeout_base 1.0 s + 0.25 s per 1,024
    # tokens, set in the same extra config): a prefetch makes at least two calls one after the other
    # (batch_exists, then batch_get_v1), and both must fit in the smallest budget, 1.0 s; a call
    # allowed to outlive it blocks SGLang's prefetch thread after SGLang gave up. Raise it with
    # prefetch_timeout_base, at most half of it (for pages of many MiB, whose 128-page batches take
    # longer to move). Puts have their own deadline (put_timeout_s, below).
    call_timeout_s: float = 0.5
    # A get may take one more second per GB it moves, on top of call_timeout_s: SGLang's budget
    # grows with the tokens too (0.25 s per 1,024), and a 128-page batch of 8 MiB pages is 1 GiB.
    get_seconds_per_gb: float = 1.0
    # Puts run on SGLang's backup thread, which has no deadline of its own: a put may take this
    # long (a 128-page batch of 8 MiB pages at ~1.5 GB/s takes 0.7 s) before it fails, and what it
    # stored after that is undone when it lands.
    put_timeout_s: float = 5.0
    # How often the client asks the controller for a newer ring version.
    ring_refresh_s: float = 2.0
    # For this long after the ring changed, a page a read misses is also looked for on the shard
    # that owned it in the previous ring, if that shard still serves or is leaving after a scale-in
    # (docs/elastic.md, "Hand-off reads"): pages written during a hand-over, or a shard's pages no
    # hand-over moved, are hits until they are written again. One more call per shard involved, only
    # for misses of moved keys. 0: off.
    handoff_s: float = 60.0
    # Read bytes of shards on this node straight from their segment files (no object store).
    same_node_fast_path: bool = True
    # On the fast path, `exists` also fetches the pointers of the pages it finds and keeps them this
    # long for the get that follows (HiCache probes a prefix, then reads it), so that get makes no
    # call to the shard. A pointer outliving its page is safe: segments are never rewritten, so it
    # reads the page's old verified bytes, or misses once the file is gone. 0 turns this off.
    # NOTE: `raylsm bench trace --quick` get p50/p99 before this: 13.4/26.9 ms (locate call + read).
    located_pointer_ttl_s: float = 2.0
    located_pointer_entries: int = 1 << 16
    # Fast-path reads bypass the kernel page cache (O_DIRECT), as the shards' own reads do by
    # default: the host pool above is the cache. Match the shards' `direct_io`.
    local_read_direct_io: bool = True
    # A get from a shard on another node is cut into calls of at most this many bytes, issued at
    # once: the shard reads one while Ray copies another into the object store, and the client
    # copies each into the host pool as it arrives.
    # NOTE: `raylsm bench tier`, 128 x 256 KiB pages per batch, one shard: one 32 MiB call reached
    # 54% of the store's direct throughput; 8 MiB calls 64-68% (Ray's object store also creates 32 MiB
    # objects slower than 8 MiB ones: 18 vs 4 x 3.5 ms per round trip).
    object_chunk_bytes: int = 8 << 20
    # Call arguments (a put's pages) up to this many bytes travel inline in Ray's gRPC request, not
    # through the object stores: RAY_max_direct_call_object_size, set before this client starts Ray
    # in its process (not when the process had started Ray already, nor over a value set by the
    # user); 0 keeps Ray's default. The shards' counterpart is ShardConfig.inline_reply_bytes.
    inline_call_bytes: int = 0

    def validate(self) -> "ClientConfig":
        _require(self, "extent_pages", 1 <= self.extent_pages <= 1 << 20, "in [1, 2**20]")
        _require(self, "shallow_depth_pages", 0 <= self.shallow_depth_pages <= 1 << 20, "in [0, 2**20]")
        _require(self, "shallow_extent_pages",
                 self.shallow_extent_pages >= 1 and self.shallow_depth_pages % self.shallow_extent_pages == 0,
                 ">= 1 and a divisor of shallow_depth_pages")
        _require(self, "split_extent_pages", 1 <= self.split_extent_pages <= 1 << 20, "in [1, 2**20]")
        _require(self, "virtual_nodes", 1 <= self.virtual_nodes <= 4096, "in [1, 4096]")
        _require(self, "call_timeout_s", 0.01 <= self.call_timeout_s <= 600, "in [0.01, 600]")
        _require(self, "get_seconds_per_gb", 0 <= self.get_seconds_per_gb <= 600, "in [0, 600]")
        _require(self, "put_timeout_s", 0.01 <= self.put_timeout_s <= 600, "in [0.01, 600]")
        _require(self, "ring_refresh_s", 0.1 <= self.ring_refresh_s <= 3600, "in [0.1, 3600]")
        _require(self, "handoff_s", 0.0 <= self.handoff_s <= 86400, "in [0, 86400]")
        _require(self, "located_pointer_ttl_s", 0 <= self.located_pointer_ttl_s <= 60, "in [0, 60]")
        _require(self, "located_pointer_entries", 1 <= self.located_pointer_entries <= 1 << 24, "in [1, 2**24]")
        _require(self, "object_chunk_bytes", 1 << 16 <= self.object_chunk_bytes <= 1 << 34, "in [64 KiB, 16 GiB]")
        _require(self, "inline_call_bytes", 0 <= self.inline_call_bytes <= 1 << 29, "in [0, 2**29]")
        return self


@dataclass(frozen=True)
class ControllerConfig:
    reconcile_period_s: float = 2.0
    # A shard that does not answer a health ping within this is reported unhealthy.
    ping_timeout_s: float = 5.0
    # Hot-extent splitting (docs/placement.md): an extent that received more than this many distinct
    # pages in a shard's recent window is split (0: twice the client's extent_pages, i.e. at least
    # three chains diverged inside it; at most 4,095, what a shard's sampled count reaches). A split is published
    # with the ring and kept until no shard has reported the extent hot for split_ttl_s; at most
    # max_split_extents are kept (oldest go). split_extents False turns splitting off.
    split_extents: bool = True
    split_threshold_pages: int = 0
    # ...and that holds at least this share of the distinct pages its shard stored in the window (a
    # smaller extent does not unbalance its shard; splitting it only spreads its chains). NOTE: the
    # agentic workload's hot extents hold 15% or more of their shard's pages, the conversation
    # trace's largest shared extent 1.6% (raylsm/store/hot_extents.py).
    split_min_share: float = 1 / 16
    split_ttl_s: float = 3600.0
    max_split_extents: int = 4096
    # Store tuning (raylsm.controller.tuning, docs/controller.md): every tuning_period_s the
    # controller reads each serving shard's miniature simulations and moves it to the candidate
    # configuration (raylsm.store.mini_sims.CANDIDATES) they say hits most, with the hysteresis
    # below. Off: every shard keeps its configured admission and reinsertion. A shard configured with
    # none of the candidates is not tuned.
    # NOTE: off by default until it pays: `raylsm bench adaptive` (conversation sample 1/8, 4
    # partitioned shards, one run) gave the controller 0.074 L3 hit overall against 0.081 for the
    # static default; in the quick run it never switched and the two differed by run-to-run noise.
    tuning: bool = False
    tuning_period_s: float = 5.0
    tuning_decay: float = 0.5
    tuning_min_references: int = 256
    tuning_margin_abs: float = 0.005
    tuning_margin_rel: float = 0.03
    tuning_confirm_windows: int = 2
    # Elasticity (raylsm.controller.scaling, docs/elastic.md). `raylsm scale --shards N` sets the
    # tier's target shard count; with autoscale, every autoscale_period_s the controller moves it by
    # one, within [min_shards, max_shards] (0: no ceiling), when the shards' miss-ratio curves over
    # the window since the last round predict that one more shard raises the tier's hit ratio by more
    # than scale_out_gain (or the disks pass disk_busy_fraction of disk_bytes_per_s per shard; 0:
    # not a trigger), or that one fewer loses less than scale_in_loss (0: never); only on windows
    # wholly under one ring; not before
    # scale_min_references were counted, nor within scale_cooldown_s of the last event. The target
    # goes to Ray's autoscaler as that many `raylsm_shard` bundles (request_resources).
    autoscale: bool = False
    min_shards: int = 1
    max_shards: int = 0
    autoscale_period_s: float = 60.0
    scale_out_gain: float = 0.02
    scale_in_loss: float = 0.002
    scale_min_references: int = 10_000
    scale_cooldown_s: float = 300.0
    disk_bytes_per_s: float = 0.0
    disk_busy_fraction: float = 0.8
    # Scale-in hands the leaving shard's newest (N-1)/N live bytes to their new owners before it
    # leaves the ring (raylsm.actors.drain), within drain_timeout_s; drain False drops its pages. The
    # shard's actor stops drain_grace_s after it left the ring (0: twice the client's ring_refresh_s
    # plus its call_timeout_s, so no client still routes to it, plus 10 s in which clients read
    # there what they miss: ClientConfig.handoff_s).
    drain: bool = True
    drain_timeout_s: float = 600.0
    # The rate each shard reads and sends at in a hand-over (a drain, or its share of a warm join),
    # so that it does not starve the reads it serves meanwhile; 0: no cap. NOTE: at 256 MB/s a
    # drain of 1.2 TB takes 80 min (raise drain_timeout_s with it); a warm join's receiver takes
    # the members' sum.
    handover_bytes_per_s: float = 256e6
    # A shard that joins a ring holding pages (scale-out, a node back) first receives from every
    # member the pages the ring with it routes to it, then joins (docs/elastic.md, "warm join").
    warm_join: bool = True
    drain_grace_s: float = 0.0

    def validate(self) -> "ControllerConfig":
        _require(self, "reconcile_period_s", 0.05 <= self.reconcile_period_s <= 3600, "in [0.05, 3600]")
        _require(self, "ping_timeout_s", 0.05 <= self.ping_timeout_s <= 600, "in [0.05, 600]")
        _require(self, "split_threshold_pages", 0 <= self.split_threshold_pages <= 4095, "in [0, 4095]")
        _require(self, "split_min_share", 0.0 <= self.split_min_share <= 1.0, "in [0, 1]")
        _require(self, "split_ttl_s", 0 < self.split_ttl_s <= 30 * 86400, "in (0, 30 days]")
        _require(self, "max_split_extents", 0 <= self.max_split_extents <= 1 << 20, "in [0, 2**20]")
        _require(self, "tuning_period_s", 0.05 <= self.tuning_period_s <= 86400, "in [0.05, 86400]")
        _require(self, "tuning_decay", 0.0 <= self.tuning_decay < 1.0, "in [0, 1)")
        _require(self, "tuning_min_references", 1 <= self.tuning_min_references <= 1 << 30, "in [1, 2**30]")
        _require(self, "tuning_margin_abs", 0.0 <= self.tuning_margin_abs <= 1.0, "in [0, 1]")
        _require(self, "tuning_margin_rel", 0.0 <= self.tuning_margin_rel <= 10.0, "in [0, 10]")
        _require(self, "tuning_confirm_windows", 1 <= self.tuning_confirm_windows <= 1000, "in [1, 1000]")
        _require(self, "min_shards", 1 <= self.min_shards <= 100_000, "in [1, 100000]")
        _require(self, "max_shards", self.max_shards == 0 or self.min_shards <= self.max_shards <= 100_000,
                 "0 (no ceiling) or in [min_shards, 100000]")
        _require(self, "autoscale_period_s", 0.05 <= self.autoscale_period_s <= 86400, "in [0.05, 86400]")
        _require(self, "scale_out_gain", 0.0 <= self.scale_out_gain <= 1.0, "in [0, 1]")
        _require(self, "scale_in_loss", 0.0 <= self.scale_in_loss <= 1.0, "in [0, 1]")
        _require(self, "scale_min_references", 0 <= self.scale_min_references <= 1 << 40, "in [0, 2**40]")
        _require(self, "scale_cooldown_s", 0.0 <= self.scale_cooldown_s <= 7 * 86400, "in [0, 7 days]")
        _require(self, "disk_bytes_per_s", 0.0 <= self.disk_bytes_per_s <= 1e12, "in [0, 1e12]")
        _require(self, "disk_busy_fraction", 0.0 < self.disk_busy_fraction <= 1.0, "in (0, 1]")
        _require(self, "drain_timeout_s", 0.1 <= self.drain_timeout_s <= 86400, "in [0.1, 86400]")
        _require(self, "handover_bytes_per_s", 0.0 <= self.handover_bytes_per_s <= 1e12, "in [0, 1e12]")
        _require(self, "drain_grace_s", 0.0 <= self.drain_grace_s <= 3600, "in [0, 3600]")
        return self


@dataclass(frozen=True)
class TierConfig:
    # Ray address to join ("auto", "ray://...", or None to start/attach a local instance).
    ray_address: str | None = None
    ray_namespace: str = RAY_NAMESPACE
    shard: ShardConfig = field(default_factory=ShardConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)

    def validate(self) -> "TierConfig":
        self.shard.validate()
        self.client.validate()
        self.controller.validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "config") -> "TierConfig":
        """Build a validated config from nested dicts; ConfigError names any unknown or bad key."""
        return _build(cls, raw, where).validate()


def _build(kind: type, raw: Mapping[str, Any], where: str):
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    values = {}
    for name, value in raw.items():
        if name not in fields:
            raise ConfigError(f"unknown key {where}.{name}; known keys: {sorted(fields)}")
        default = getattr(kind(), name)
        if dataclasses.is_dataclass(default):
            values[name] = _build(type(default), value, f"{where}.{name}")
            continue
        values[name] = _coerce(value, default, f"{where}.{name}")
    return kind(**values)


def _coerce(value: Any, default: Any, where: str) -> Any:
    if default is None or value is None:
        return value
    expected = type(default)
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, expected):
        return value
    raise ConfigError(f"{where} must be {expected.__name__}, got {value!r}")


def _require(config: object, name: str, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{type(config).__name__}.{name} = {getattr(config, name)!r} is out of range: must be {allowed}")
