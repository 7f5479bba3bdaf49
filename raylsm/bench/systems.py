"""The L3 systems a bench drives, behind one small interface, and the raylsm tier they run on.

Every system has `name`, `pool` (the host KV pool it reads into and writes from), `clear()`,
`exists(keys, prefix) -> leading pages present`, `get(keys, prefix, slots) -> leading pages loaded
into the pool's page slots`, `set(keys, prefix, slots) -> bool`, `stats() -> dict` and `close()`;
keys are SGLang's hex page hashes and `prefix` the hashes before them (prefix keys). Owned here:

- `RaylsmSystem`: RayLSMStorage built by SGLang's StorageBackendFactory as a `dynamic` backend (v1
  zero-copy path);
- `HiCacheFileSystem`: SGLang's HiCacheFile with its LRU evictor capped at the capacity (generic path);
- `MooncakeSystem` lives in `raylsm.bench.mooncake` (it needs its own master process);
- `TierSession`: the raylsm tier of a run (joins a running one, or starts controller and shards);
- `ShardCounter`: the shards a raylsm call touches (the balance figures);
- `segment_bytes_for`: the segment size the benches give a shard of a capacity.

Called by `raylsm.bench.trace_replay`, `raylsm.bench.fleet` and `raylsm.bench.tier_bench`. Ray, SGLang
and torch are imported when a system is built, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence

from raylsm.bench import interrupts
from raylsm.errors import ConfigError
from raylsm.store.config import MIN_SEGMENT_BYTES

MiB = 1 << 20

logger = logging.getLogger(__name__)


# NOTE: the store's budget counts its RocksDB index too, so a shard of exactly 16 segments holds
# only 15 (`raylsm bench trace --quick`: L3 hit 0.202); with 64 segments the index costs a fraction
# of one (0.234, the same as 16 segments before the index was counted).
SEGMENTS_PER_SHARD = 256


def segment_bytes_for(per_shard_capacity: int, page_bytes: int) -> int:
    """Segment size of a shard: capacity / SEGMENTS_PER_SHARD rounded down to 4 KiB, at least the
    store's minimum (256 KiB) and one page (plus headers); ConfigError if the shard cannot hold two
    segments (the store's minimum)."""
    segment = max(MIN_SEGMENT_BYTES, per_shard_capacity // SEGMENTS_PER_SHARD // 4096 * 4096)
    segment = max(segment, (page_bytes + 2 * 8192 + 4095) // 4096 * 4096)
    if per_shard_capacity < 2 * segment:
        raise ConfigError(
            f"per-shard capacity {per_shard_capacity} B is below two segments of {segment} B: raise "
            f"--capacity-fraction or --payload-scale, replay more requests, or use fewer --shards")
    return segment


def storage_config(model_name: str, extra_config: dict):
    """HiCacheStorageConfig of one TP-1 MHA rank with the page_first layout: what every bench system is built with."""
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig

    return HiCacheStorageConfig(
        tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1, is_mla_model=False,
        enable_storage_metrics=False, is_page_first_layout=True, model_name=model_name,
        extra_config=dict(extra_config))


def leading_hits(results: Sequence[Any]) -> int:
    """How many leading entries of a v1 result list are true (SGLang uses the leading run of hits)."""
    for count, value in enumerate(results):
        if not value:
            return count
    return len(results)


class V1Calls:
    """The bench interface's exists/get/set over an SGLang backend on the zero-copy v1 path, as
    HiCacheController drives it: `batch_exists` with prefix keys, `batch_get_v1` and `batch_set_v1`
    with the host pool's token indices. A subclass sets `storage`, `pool` and `_extra_info`
    (SGLang's `HiCacheStorageExtraInfo`)."""

    storage: Any
    pool: Any
    _extra_info: Any

    def exists(self, keys: list[str], prefix: list[str]) -> int:
        return self.storage.batch_exists(keys, extra_info=self._extra_info(prefix_keys=prefix))

    def get(self, keys: list[str], prefix: list[str], slots: Sequence[int]) -> int:
        indices = self.pool.host_indices(slots)
        return leading_hits(self.storage.batch_get_v1(keys, indices, self._extra_info(prefix_keys=prefix)))

    def set(self, keys: list[str], prefix: list[str], slots: Sequence[int]) -> bool:
        indices = self.pool.host_indices(slots)
        return all(self.storage.batch_set_v1(keys, indices, self._extra_info(prefix_keys=prefix)))


class RaylsmSystem(V1Calls):
    """RayLSMStorage as SGLang loads it (`--hicache-storage-backend dynamic`), on the v1 path."""

    name = "raylsm"
    EXTRA_CONFIG = {"backend_name": "raylsm", "module_path": "raylsm.sglang.backend",
                    "class_name": "RayLSMStorage", "interface_v1": 1, "hicache_storage_pass_prefix_keys": True}

    def __init__(self, pool: Any, model_name: str, extra_config: dict | None = None) -> None:
        from sglang.srt.mem_cache.hicache_storage import HiCacheStorageExtraInfo
        from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory

        self._extra_info = HiCacheStorageExtraInfo
        self.pool = pool
        self.extra_config = dict(extra_config or self.EXTRA_CONFIG)
        # The factory calls cls(storage_config, kwargs) and does not pass the pool: SGLang registers
        # it right after, then calls on_host_pools_registered.
        self.storage = StorageBackendFactory.create_backend("dynamic", storage_config(model_name, self.extra_config), pool)
        self.storage.register_mem_pool_host(pool)
        self.storage.on_host_pools_registered()

    def clear(self) -> None:
        self.storage.clear()

    def namespace_id(self) -> bytes:
        """The index namespace id of this replay's pages (rank included)."""
        from raylsm.store.page_key import namespace_id

        return namespace_id(self.storage.raylsm_stats()["namespace"])

    def routing_id(self) -> bytes:
        """The namespace id the adapter routes this replay's pages by (its rank-free identity)."""
        from raylsm.store.page_key import namespace_id

        return namespace_id(self.storage.raylsm_stats()["routing_namespace"])

    def split_extents(self) -> frozenset:
        """The extents the tier split (hot shared prefixes), as this replay's client routes them."""
        return self.storage._client.split_extents

    def stats(self) -> dict:
        return self.storage.raylsm_stats()

    def close(self) -> None:
        self.storage.close()


class HiCacheFileSystem:
    """SGLang's HiCacheFile (built by the factory as `file`) with its LRU evictor capped at the same
    capacity; no v1, so the generic path: flat staging pages in, one copy into the host pool each way."""

    name = "hicache_file"

    def __init__(self, pool: Any, model_name: str, directory: str, capacity_bytes: int,
                 cold_page_cache: bool = False) -> None:
        from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory

        self.cold_page_cache = cold_page_cache
        os.environ.pop("SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR", None)  # would override the directory
        self.pool = pool
        self.directory = directory
        # eviction_ratio stays SGLang's default (0.9): a full cache evicts down to 90% of max_size.
        extra = {"file_storage_path": directory, "max_size": str(capacity_bytes)}
        self.storage = StorageBackendFactory.create_backend("file", storage_config(model_name, extra), pool)
        if not self.storage._evictor.enabled:  # noqa: SLF001 (a check that the cap took effect)
            raise RuntimeError("HiCacheFile's LRU evictor did not enable with max_size")

    def clear(self) -> None:
        self.storage.clear()

    def exists(self, keys: list[str], prefix: list[str]) -> int:
        return self.storage.batch_exists(keys)  # the base class loops exists(): one stat per key

    def before_get(self, keys: list[str]) -> None:
        """With cold_page_cache, drop the kernel's cached pages of the files about to be read (not
        timed), so the read goes to the disk as it would when host memory is taken by the L2 pool.
        Pages still dirty (written within the kernel's writeback delay) stay cached."""
        if not self.cold_page_cache:
            return
        for key in keys:
            path = os.path.join(self.directory, f"{self.storage._get_suffixed_key(key)}.bin")  # noqa: SLF001
            try:
                descriptor = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)

    def get(self, keys: list[str], prefix: list[str], slots: Sequence[int]) -> int:
        # cache_controller._generic_page_get: flat staging pages, then set_from_flat_data_page.
        pool = self.pool
        staging = [pool.get_dummy_flat_data_page() for _ in keys]
        pages = self.storage.batch_get(keys, staging)
        if pages is None:
            return 0
        count = 0
        for slot, page in zip(slots, pages):
            if page is None:
                break
            pool.set_from_flat_data_page(slot * pool.page_size, page)
            count += 1
        return count

    def set(self, keys: list[str], prefix: list[str], slots: Sequence[int]) -> bool:
        # cache_controller._generic_page_set: a flat copy of every page, then batch_set.
        pool = self.pool
        return bool(self.storage.batch_set(keys, [pool.get_data_page(slot * pool.page_size) for slot in slots]))

    def stats(self) -> dict:
        evictor = self.storage._evictor  # noqa: SLF001
        return {"files": len(evictor._lru), "bytes": evictor._total_bytes, "max_size": evictor.max_size_bytes}

    def close(self) -> None:
        pass  # HiCacheFile has no close()


class TierSession:
    """The raylsm tier of one replay.

    Which Ray: `ray_address` if given; else the Ray head that `raylsm up` started from this directory
    (its marker file exists); else a private local Ray instance owned by this process (`ray.init(
    address="local")`), never some other Ray instance that happens to run on the machine (a test
    session's, say). A tier already running on the joined Ray is used as it is: its shards are resized
    to the replay's capacity for the run and restored afterwards. Otherwise the controller and shards
    are started here (fresh data directory) and shut down at the end, and a private Ray goes with them.
    """

    def __init__(self, shards: int, capacity_bytes: int, page_bytes: int, data_dir: str,
                 ray_address: str | None = None, direct_io: bool = True, inline_reply_bytes: int = 0,
                 pool_disk_budget: bool = True, private: bool = False, store_changes: dict | None = None,
                 controller: dict | None = None, ring_seed: int = 0, forward_evictions: bool = False) -> None:
        """`private`: always a private Ray and tier (never a `raylsm up` head's); `store_changes`:
        StoreConfig fields of the shards started here; `controller`: ControllerConfig fields;
        `ring_seed`: a private Ray's node gets the disk label `bench-<ring_seed>`, so its shards are
        `shard-bench-<ring_seed>-<i>` and the ring (hence every page's shard) is the same in every run
        with that seed (named after the Ray node id, it was a new ring in every run);
        `forward_evictions`: ShardConfig.forward_evictions of the shards started here."""
        self.private = private
        self.store_changes = dict(store_changes or {})
        self.controller = dict(controller or {})
        self.inline_reply_bytes = inline_reply_bytes
        self.pool_disk_budget = pool_disk_budget
        self.forward_evictions = forward_evictions
        self.ring_seed = ring_seed
        self.requested_shards = shards
        self.direct_io = direct_io
        self.capacity_bytes = capacity_bytes
        self.page_bytes = page_bytes
        self.data_dir = data_dir
        self.ray_address = ray_address
        self.owns_ray = False
        self.owns_controller = False
        self.shard_names: list[str] = []
        self.segment_bytes = 0
        self.per_shard_capacity = 0
        self.notes: list[str] = []
        self._restore: dict[str, dict] = {}

    @property
    def started(self) -> bool:
        return self.owns_controller

    def start(self) -> None:
        import ray

        from raylsm import lifecycle
        from raylsm.config import RAY_NAMESPACE, ControllerConfig, ShardConfig, TierConfig
        from raylsm.controller.controller_actor import get_controller
        from raylsm.store.config import StoreConfig

        address = self.ray_address
        if address is None and not self.private:
            address = _embedded_ray_address()
            if address:
                _token_auth_as_for_auto()  # what ray.init(address="auto") does for a local cluster
        if address:
            ray.init(address=address, namespace=RAY_NAMESPACE, log_to_driver=False)
            interrupts.restore_handlers()  # SIGTERM must reach the replay's cleanup, not Ray's abort
            try:
                controller = get_controller(RAY_NAMESPACE)
            except ValueError:
                controller = None
            if controller is not None:
                self.shard_names = sorted(ray.get(controller.ring.remote())["shards"])
                if not self.shard_names:
                    raise ConfigError(f"the raylsm tier on Ray {address} has no serving shards")
                self._resize_running_tier(address)
                return
        else:
            # NOTE: the ring decides a run's hit ratio at bench scale. `bench adaptive --quick`, 4
            # partitioned shards of ~1,040 pages (8 extents): its first 80 requests hit 0.030, 0.057,
            # 0.099 and 0.128 on four rings, the segment-clock model on the same rings 0.039, 0.068,
            # 0.152 and 0.129 (`/tmp` script); configurations compared on different rings measured the
            # ring. A fixed disk label gives every run of a seed one ring.
            ray.init(address="local", namespace=RAY_NAMESPACE, include_dashboard=False, log_to_driver=False,
                     resources={ShardConfig().resource_name: self.requested_shards},
                     labels={ShardConfig().disk_label: f"bench-{self.ring_seed}"})
            interrupts.restore_handlers()
            self.owns_ray = True
        self.per_shard_capacity = self.capacity_bytes // self.requested_shards
        self.segment_bytes = segment_bytes_for(self.per_shard_capacity, self.page_bytes)
        store = StoreConfig(capacity_bytes=self.per_shard_capacity, segment_bytes=self.segment_bytes,
                            direct_io=self.direct_io, **self.store_changes).validate()
        config = TierConfig(shard=ShardConfig(data_dir=os.path.join(self.data_dir, "shards"), store=store,
                                              inline_reply_bytes=self.inline_reply_bytes,
                                              pool_disk_budget=self.pool_disk_budget,
                                              forward_evictions=self.forward_evictions),
                            controller=ControllerConfig(**self.controller).validate())
        self.owns_controller = True
        lifecycle.up(config, shards=self.requested_shards)  # Ray is initialized: controller + shards only
        self.shard_names = sorted(ray.get(get_controller(RAY_NAMESPACE).ring.remote())["shards"])
        if len(self.shard_names) != self.requested_shards:
            self.per_shard_capacity = self.capacity_bytes // len(self.shard_names)
            self.notes.append(f"Ray at {address} offers {len(self.shard_names)} shard units; --shards "
                              f"{self.requested_shards} applies only to a private Ray; per-shard capacity is "
                              f"the configured {self.capacity_bytes // self.requested_shards} B")

    def _resize_running_tier(self, address: str) -> None:
        import ray

        self.per_shard_capacity = self.capacity_bytes // len(self.shard_names)
        self.segment_bytes = segment_bytes_for(self.per_shard_capacity, self.page_bytes)
        for name in self.shard_names:
            handle = ray.get_actor(name, namespace="raylsm")
            current = ray.get(handle.apply_tuning.remote({}))["config"]
            self._restore[name] = {"capacity_bytes": current["capacity_bytes"],
                                   "segment_bytes": current["segment_bytes"], "direct_io": current["direct_io"]}
            ray.get(handle.apply_tuning.remote({"capacity_bytes": self.per_shard_capacity,
                                                "segment_bytes": self.segment_bytes, "direct_io": self.direct_io}))
        self.notes.append(
            f"used the running tier on Ray {address} ({len(self.shard_names)} shards): capacity "
            f"{self.per_shard_capacity} B, segments of {self.segment_bytes} B and direct_io {self.direct_io} per "
            f"shard for the run, restored "
            f"afterwards; data already on the shards counts against the capacity until eviction frees it, and "
            f"a segment open before the run keeps its old size")

    def shard_stats(self) -> list[dict]:
        from raylsm import lifecycle

        return [shard.get("stats") or {} for shard in lifecycle.status()["shards"]
                if shard["shard"] in self.shard_names]

    def stop(self) -> None:
        """Shut down what start() started (not `lifecycle.down`: its `ray stop --force` would stop every
        Ray instance on the machine when a `raylsm up` marker exists); restore a joined tier's tuning."""
        import ray

        from raylsm.controller.controller_actor import get_controller

        if not ray.is_initialized():
            return
        try:
            if self.owns_controller:
                try:  # an interrupted start() may not have made it, and a Ctrl-C may have hit its actors
                    controller = get_controller("raylsm")
                    ray.get(controller.shutdown.remote(), timeout=120)
                    ray.kill(controller, no_restart=True)
                except Exception as error:  # noqa: BLE001 (a private Ray still goes down below)
                    logger.warning("could not shut the raylsm controller down: %r", error)
            for name, values in self._restore.items():
                try:
                    ray.get(ray.get_actor(name, namespace="raylsm").apply_tuning.remote(values))
                except Exception as error:  # noqa: BLE001 (report, keep restoring the others)
                    logger.warning("could not restore %s on %s: %r", values, name, error)
        finally:
            ray.shutdown()  # a private Ray instance ends with it; a joined one is only disconnected


def _token_auth_as_for_auto() -> None:
    from raylsm import lifecycle

    lifecycle.enable_local_token_auth()


def _embedded_ray_address() -> str | None:
    """The GCS address of the Ray head `raylsm up` started from this directory, or None if it did not
    (or it is gone): recorded in its marker file by raylsm.lifecycle."""
    from raylsm import lifecycle

    return lifecycle.embedded_address()


class ShardCounter:
    """Shards a raylsm call touches, by the router with the client's extent config, ring and split
    extents (`split_extents()`: the client's current set, which the controller changes during a run)."""

    def __init__(self, shard_names: Sequence[str], namespace_id: bytes,
                 split_extents: Callable[[], frozenset] = frozenset) -> None:
        from raylsm.config import ClientConfig
        from raylsm.router import ExtentConfig, ExtentRouter, HashRing

        client = ClientConfig()
        self._ring = HashRing(sorted(shard_names), client.virtual_nodes)
        self._extents = ExtentConfig(client.extent_pages, client.shallow_depth_pages, client.shallow_extent_pages,
                                     client.split_extent_pages)
        self._router = ExtentRouter(self._ring, self._extents)
        self._split_extents = split_extents
        self._namespace_id = namespace_id

    def route(self, chain: Sequence[bytes], start: int, end: int) -> list[str]:
        """The shard of each page of chain[start:end], as the client routes it now."""
        from raylsm.router import ExtentRouter

        splits = self._split_extents()
        if splits != self._router.split_extents:
            self._router = ExtentRouter(self._ring, self._extents, splits)
        return self._router.route_pages(self._namespace_id, chain[start:end], chain[:start])

    def shards(self, chain: Sequence[bytes], start: int, end: int) -> int:
        return len(set(self.route(chain, start, end)))


def shard_summary(stats: dict) -> dict:
    space = stats.get("space") or {}
    counters = stats.get("counters") or {}
    return {"shard": stats.get("shard"), "live_bytes": space.get("live_bytes"), "disk_bytes": space.get("disk_bytes"),
            "capacity_bytes": space.get("capacity_bytes"), "live_pages": space.get("live_pages"),
            "evicted_pages": counters.get("evicted_pages"), "reinserted_pages": counters.get("reinserted_pages"),
            # the shard's own estimate (raylsm/store/workload_stats.py) of what LRU would miss of its page references
            "lru_miss_ratio_estimate": (stats.get("workload") or {}).get("miss_ratio_by_capacity_multiple"),
            "hit_ratio": (stats.get("workload") or {}).get("hit_ratio"),
            "ghost_hits_estimate": (stats.get("workload") or {}).get("ghost_hits_est")}


def sum_counters(stats: Sequence[dict]) -> dict:
    total: dict[str, int] = {}
    for shard in stats:
        for key, value in (shard.get("counters") or {}).items():
            total[key] = total.get(key, 0) + int(value)
    return total


def store_latency(stats: Sequence[dict]) -> dict:
    """{op: {"calls", "p50_ms", "p99_ms"}} of the shards' stores, their histograms summed: the time
    a call spends inside the store, apart from Ray and the client (bucket upper bounds, so an
    over-estimate; raylsm.store.stats)."""
    from raylsm.store.stats import LatencyHistogram

    merged: dict[str, LatencyHistogram] = {}
    for shard in stats:
        for op, snapshot in (shard.get("latency") or {}).items():
            histogram = merged.setdefault(op, LatencyHistogram())
            histogram.counts = [a + int(b) for a, b in zip(histogram.counts, snapshot["counts"])]
    return {op: {"calls": sum(h.counts), "p50_ms": h.quantile_ms(0.5), "p99_ms": h.quantile_ms(0.99)}
            for op, h in merged.items()}
