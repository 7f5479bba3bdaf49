"""Mooncake Store as a benchmarked L3 system: its master process, and SGLang's own backend over it.

Owned here:

- `mooncake_unavailable()`: why Mooncake cannot run on this machine (None when it can), with the
  install command, so a bench skips it with one clear line;
- `import_sglang_mooncake_store()`: SGLang's `MooncakeStore` class, imported with the CPU torchvision
  recipe (`raylsm.bench.cpu_torchvision`) (the module imports the host pools and the metrics collector, which
  import transformers and torchvision);
- `MooncakeMaster` and `MasterEndpoints` are re-exported from `raylsm.bench.mooncake_master` (the
  master process: ports, eviction flags, offload, its log, its stop);
- `MooncakeSystem`: the bench interface of `raylsm.bench.systems` (`name`, `pool`, `clear`, `exists`,
  `get`, `set`, `stats`, `close`) over SGLang's `MooncakeStore`, built by SGLang's
  `StorageBackendFactory` as the `mooncake` backend and driven on the zero-copy v1 path, as
  `HiCacheController` drives it (`batch_exists`, `batch_get_v1`, `batch_set_v1` with host indices).
  This process embeds the Mooncake client that contributes the DRAM segment (its whole capacity, or
  `segment_bytes` when several processes share one master).

Called by the fleet bench (`raylsm.bench.fleet`, whose replica processes,
`raylsm.bench.fleet_replica`, build the systems) and by tests/unit/test_mooncake_system.py. Mooncake,
SGLang and torch are imported when a system is built, so importing this module stays cheap.

Thread safety: `MooncakeSystem` calls go to the embedded Mooncake client, which is thread-safe, but the bench
interface is driven from one replay thread.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any

from raylsm.bench.cpu_torchvision import import_torchvision
from raylsm.bench.systems import V1Calls, storage_config
from raylsm.bench.mooncake_master import (INSTALL_HINT, LOCALHOST, MasterEndpoints, MooncakeMaster,  # noqa: F401
                                          _sglang_version, master_binary, read_metrics)

logger = logging.getLogger(__name__)

# The smallest DRAM segment a Mooncake client mounts (0.3.13: "Total size must be at least 16777216",
# client_buffer_allocation.cpp; setup then fails with -600).
MIN_SEGMENT_BYTES = 16 << 20

# ---- can it run here ------------------------------------------------------------------------------


def _import_mooncake_module() -> Any:
    """`mooncake.store`, the Python binding of the Mooncake client (store.so).

    NOTE: the embedded client logs with glog to this process's stderr, about 20 lines per client setup
    (among them a harmless HTTP 404 on the first metadata lookup, and teardown errors if the master
    went first). GLOG_minloglevel does not quiet it (it logs "before InitGoogleLogging"), and in the
    environment it would silence the master's log too, so it is left alone.
    """
    import mooncake.store

    return mooncake.store


@functools.lru_cache(maxsize=1)
def import_sglang_mooncake_store() -> type:
    """SGLang's `MooncakeStore` class. Its module imports `sglang.srt.mem_cache.pool_host` and
    `sglang.srt.observability.metrics_collector`, which need transformers and torchvision: on this CPU
    install the torchvision recipe is applied first (~10 s the first time, then cached).
    Raises ImportError (or the recipe's RuntimeError) when it cannot be imported."""
    import warnings

    _import_mooncake_module()
    import_torchvision()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Only CUDA ... support AWQ/GGUF" from sglang.srt.layers
        from sglang.srt.mem_cache.storage.mooncake_store.mooncake_store import MooncakeStore
    return MooncakeStore


def mooncake_unavailable() -> str | None:
    """None when Mooncake Store can run here through SGLang's backend class; otherwise a one-line reason
    that ends with how to install it. Checks, in order: `mooncake.store` imports (its native library
    needs libibverbs and librdmacm even over TCP), `mooncake_master` is on PATH or in the venv's bin,
    and SGLang's `MooncakeStore` imports (with the torchvision recipe). The first call may take ~10 s."""
    try:
        _import_mooncake_module()
    except ModuleNotFoundError as error:
        return f"Mooncake Store is not installed ({error}): {INSTALL_HINT}"
    except (ImportError, OSError) as error:  # dlopen: "libibverbs.so.1: cannot open shared object file"
        return (f"mooncake.store does not load ({str(error).splitlines()[0]}); its native client needs "
                f"libibverbs1, librdmacm1 and libnuma1 even over TCP: {INSTALL_HINT}")
    if master_binary() is None:
        return f"mooncake_master is not on PATH nor in {Path(sys.executable).parent}: {INSTALL_HINT}"
    try:
        import_sglang_mooncake_store()
    except Exception as error:  # noqa: BLE001 (any failure means: not runnable here, say why)
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        return (f"SGLang's MooncakeStore does not import ({type(error).__name__}: {first}): rebuild .venv "
                f"with `make venv` (sglang {_sglang_version()} and the CPU torchvision), then {INSTALL_HINT}")
    return None


class MooncakeSystem(V1Calls):
    """SGLang's `MooncakeStore` (the `mooncake` built-in backend) over a `MooncakeMaster`, on the zero-copy
    v1 path: `batch_exists`; `batch_get_v1` and `batch_set_v1` with the host pool's token indices, which
    Mooncake reads into and writes from directly (the pool's `kv_buffer` is registered with the client;
    each page is two objects, `{model}_{hash}_0_k` and `_v`, of `pool.part_bytes` each).

    `master` is a running `MooncakeMaster`, or its `MasterEndpoints` in another process (replica
    processes get `MooncakeSystem(pool, model_name, **master.client_kwargs(segment_bytes))`). This
    process embeds a Mooncake client that mounts a DRAM segment of `segment_bytes` (default
    `capacity_bytes`: one client holds the whole capacity; with N processes on one master, pass
    capacity_bytes // N; at least MIN_SEGMENT_BYTES, 16 MiB). `offload_dir` enables the client's
    local-disk offload (the master must have `offload=True`): `offload_bytes` caps the bytes on disk
    (bucket backend, LRU). `enable_group_semantics` passes SGLang's option of that name (K and V of a
    page share a Mooncake group id).

    Outcomes: `exists` and `get` count leading pages (a miss or a failed transfer ends the count);
    `set` is True only if every page is stored (pages already present count as stored, as SGLang skips
    them); a put that finds the pool full fails (False), and the master evicts for the next one.
    Construction raises RuntimeError when the client cannot set up against the master.
    """

    name = "mooncake_store"

    def __init__(self, pool: Any, model_name: str, master: MooncakeMaster | MasterEndpoints, capacity_bytes: int, *,
                 segment_bytes: int | None = None, offload_dir: str | os.PathLike | None = None,
                 offload_bytes: int | None = None, enable_group_semantics: bool = False) -> None:
        if capacity_bytes <= 0:
            raise ValueError(f"capacity_bytes must be > 0, got {capacity_bytes}")
        if isinstance(master, MooncakeMaster):
            master = master.endpoints()  # RuntimeError if it is not running
        segment_bytes = capacity_bytes if segment_bytes is None else segment_bytes
        if segment_bytes < max(MIN_SEGMENT_BYTES, pool.page_bytes):
            raise ValueError(f"segment_bytes ({segment_bytes}) must be at least {MIN_SEGMENT_BYTES} (Mooncake's "
                             f"smallest segment) and one page ({pool.page_bytes} B)")
        import_sglang_mooncake_store()  # the torchvision recipe, before the factory imports the module
        from sglang.srt.mem_cache.hicache_storage import HiCacheStorageExtraInfo
        from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory

        self._extra_info = HiCacheStorageExtraInfo
        self.pool = pool
        self.master = master
        self.capacity_bytes = capacity_bytes
        self.segment_bytes = segment_bytes
        self.offload_dir = None if offload_dir is None else str(offload_dir)
        self.extra_config = {
            "master_server_address": master.master_server_address,
            "metadata_server": master.metadata_server,
            "local_hostname": LOCALHOST,
            "protocol": "tcp",
            "device_name": "",
            "global_segment_size": segment_bytes,  # an int: bytes (a string must be "<n>gb" or bytes)
            "master_metrics_port": master.metrics_port,
            "check_server": False,  # the master answers already (MooncakeMaster waited for it)
            "enable_group_semantics": enable_group_semantics,
        }
        if self.offload_dir is not None:
            self._configure_offload(self.offload_dir, offload_bytes)
        # NOTE: the client's local buffer (staging for non-zero-copy puts and gets) is MooncakeStore's
        # hard-coded 16 MiB; the v1 path never uses it (only the 4 KiB warm-up put does).
        self.storage = StorageBackendFactory.create_backend("mooncake", storage_config(model_name, self.extra_config),
                                                            pool)
        try:
            # As HiCacheController.attach_storage_backend: the pool is registered after construction.
            self.storage.register_mem_pool_host(pool)
            self.storage.on_host_pools_registered()
        except BaseException:
            self._close_client()
            raise
        self._closed = False

    def _configure_offload(self, directory: str, offload_bytes: int | None) -> None:
        """The client's SSD offload: SGLang forwards `enable_ssd_offload` and `ssd_offload_path` (it adds a
        per-rank subdirectory); the rest is read by the Mooncake library from MOONCAKE_OFFLOAD_*
        variables when the client sets up, so they are set in this process's environment (and stay
        set for later clients of this process)."""
        os.makedirs(directory, exist_ok=True)
        self.extra_config.update(enable_ssd_offload=True, ssd_offload_path=os.path.abspath(directory))
        env = {
            "MOONCAKE_OFFLOAD_STORAGE_BACKEND_DESCRIPTOR": "bucket_storage_backend",
            "MOONCAKE_OFFLOAD_BUCKET_EVICTION_POLICY": "lru",
            # The staging arena defaults to 1.25 GB; the bench's pages are small.
            "MOONCAKE_OFFLOAD_LOCAL_BUFFER_SIZE_BYTES": str(256 << 20),
            # Offload work is handed to the client on its heartbeat (10 s by default).
            "MOONCAKE_OFFLOAD_HEARTBEAT_INTERVAL_SECONDS": "1",
            # NOTE: a bucket file is written only once it holds this many objects (default 500): with
            # 5,000, nothing reached the disk in 18 s of overflow; with 128, 640 objects did.
            "MOONCAKE_OFFLOAD_BUCKET_KEYS_LIMIT": "128",
        }
        if offload_bytes is not None:
            env["MOONCAKE_OFFLOAD_BUCKET_MAX_TOTAL_SIZE"] = str(int(offload_bytes))
            env["MOONCAKE_OFFLOAD_TOTAL_SIZE_LIMIT_BYTES"] = str(int(offload_bytes))
        os.environ.update(env)

    # ---- the bench interface

    def clear(self) -> None:
        """Remove every object in the store (every client's pages: the master is this bench's alone).

        Not SGLang's `MooncakeStore.clear()`: its `remove_all()` skips objects under a read lease, so
        pages checked or read in the last lease TTL (10 s) survive it (seen: 64 of 64 pages still
        present right after a clear). `remove_all(force=True)` skips the lease check."""
        self.storage.store.remove_all(True)

    def stats(self) -> dict:
        """The master's view of the pool: objects (two per page), bytes allocated and capacity, evicted
        objects, puts refused for want of room; plus the configured sizes. Counters are whole-master."""
        metrics = self.master.metrics()
        names = {
            "objects": "master_key_count",
            "allocated_bytes": "master_allocated_bytes",
            "dram_capacity_bytes": "master_total_capacity_bytes",
            "evicted_objects": "master_evicted_key_count",
            "put_alloc_failures": "master_put_start_alloc_failures_total",
            "disk_allocated_bytes": "master_allocated_file_size_bytes",
        }
        stats: dict[str, Any] = {key: int(metrics[name]) for key, name in names.items() if name in metrics}
        stats.update(capacity_bytes=self.capacity_bytes, segment_bytes=self.segment_bytes,
                     offload_dir=self.offload_dir)
        return stats

    def close(self) -> None:
        """Unmount this client's segment and stop the client (its pages leave the store); idempotent.
        SGLang's MooncakeStore.close() is a no-op (it relies on the destructor), so the client is
        closed here, before the master goes away."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self.storage.close()
        self._close_client()

    def _close_client(self) -> None:
        store = getattr(self.storage, "store", None) if hasattr(self, "storage") else None
        if store is not None:
            try:
                store.close()
            except Exception as error:  # noqa: BLE001 (closing is best effort; the master may be gone)
                logger.warning("closing the Mooncake client failed: %s", error)
