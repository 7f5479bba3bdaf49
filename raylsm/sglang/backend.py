"""RayLSMStorage: SGLang's HiCache L3 storage backend on top of the raylsm tier.

Owned here: the HiCacheStorage interface (v1 zero-copy, the generic get/set path, exists), the
namespace of this rank's pages (built at registration from the CacheIdentity of identity.py), and the
rule that nothing raises into SGLang's threads. Storage logic lives in the tier client and the shards.
Loaded by SGLang's StorageBackendFactory as a `dynamic` backend: `cls(storage_config, kwargs)`, then
`register_mem_pool_host(pool)`.

Thread-safety: SGLang calls batch_exists (prefetch thread), batch_get_v1 (prefetch I/O thread) and
batch_set_v1 (backup thread) concurrently; the adapter holds no mutable state besides counters under
a lock and its namespace (rebuilt under a lock when SGLang's weight version moves), and TierClient is
thread-safe.

Outcomes: a miss, a dead shard, a timeout, a bad buffer or any error is a False / 0 / None for SGLang
plus a counter in `raylsm_stats()`; constructor errors (a bad extra config, no reachable tier) raise,
which makes SGLang roll the attach back. Each batch call that reaches the tier is timed once, as
SGLang's thread sees it (`ray_raylsm_client_call_duration_seconds{op}`, raylsm.actors.metrics).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any, List, Optional

import torch
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig, HiCacheStorageExtraInfo

from raylsm.client import TierClient
from raylsm.errors import ShardUnavailableError
from raylsm.sglang.extra_config import model_fingerprint_from_extra, tier_config_from_extra
from raylsm.sglang.host_pages import HostPageViews
from raylsm.sglang.identity import (CacheIdentity, build_cache_identity, current_server_args, live_weight_version,
                                    log_cache_identity)
from raylsm.store.page_key import namespace_id

logger = logging.getLogger(__name__)


def namespace_name(storage_config: HiCacheStorageConfig, layout: str, dtype: str, page_tokens: int) -> str:
    """The namespace name of one rank's pages for a pool described only by layout, dtype and page size
    (kept for callers without a pool; the adapter builds its CacheIdentity from the pool itself).
    The rule is raylsm/sglang/identity.py's: weights, KV format, parallel layout, then the rank."""
    pool = SimpleNamespace(layout=layout, dtype=dtype, page_size=page_tokens)
    extra = getattr(storage_config, "extra_config", None)
    return build_cache_identity(storage_config, pool, extra, current_server_args()).namespace_name


class RayLSMStorage(HiCacheStorage):
    def __init__(self, storage_config: HiCacheStorageConfig, kwargs: Optional[dict] = None, *args: Any, **kw: Any):
        extra = getattr(storage_config, "extra_config", None) or {}
        self._tier_config = tier_config_from_extra(extra)  # ConfigError naming a bad key: fails the attach
        self._extra_config = dict(extra)
        model_fingerprint_from_extra(extra)  # a malformed fingerprint fails the attach too
        self._storage_config = storage_config
        # NOTE: SGLang strips `hicache_storage_pass_prefix_keys` from the extra config before the
        # backend sees it: read it from the server's arguments where they are published, else learn
        # it from the first call that carries prefix keys.
        self._warned_no_prefix_keys = False
        self._prefix_keys_on = prefix_keys_configured(current_server_args())
        self._is_writer = bool(getattr(storage_config, "is_storage_writer", True))
        self._is_mla = bool(getattr(storage_config, "is_mla_model", False))
        self._client = TierClient(self._tier_config)
        self.mem_pool_host = None
        self._namespace: bytes | None = None
        self.cache_identity: CacheIdentity | None = None  # set at registration (docs/identity.md)
        self._weight_version: str | None = None  # SGLang's weight version the identity was built with
        self._identity_lock = threading.Lock()
        self._counters: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._transfer_log: dict[str, list[tuple[int, float]]] = {"get": [], "set": []}

    # ---- registration -------------------------------------------------------------------------

    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        super().register_mem_pool_host(mem_pool_host)
        self._page_views = HostPageViews(mem_pool_host, self._is_mla)
        self._set_identity(mem_pool_host)

    def _set_identity(self, host_pool: Any) -> None:
        """The namespace of this rank's pages: everything that changes a page's bytes (identity.py)."""
        with self._identity_lock:
            self._weight_version = live_weight_version()
            identity = build_cache_identity(self._storage_config, host_pool, self._extra_config,
                                            current_server_args())
            self.cache_identity = identity
            self._namespace_name = identity.namespace_name
            self._namespace = namespace_id(identity.namespace_name)
            # Ranks share a fate: every TP/PP/CP rank's copy of a page is routed by the rank-free
            # identity, so they live on one shard; the rank stays in the index key.
            self._client.route_namespace_as(self._namespace, namespace_id(identity.identity_name))
        log_cache_identity(identity)

    def _ns(self) -> bytes:
        """This rank's namespace id; rebuilt when SGLang's weight version moved (new weights, new
        namespace) and, on the generic path, built on first use if no pool was registered."""
        if self._namespace is None or live_weight_version() != self._weight_version:
            self._set_identity(self.mem_pool_host)
        return self._namespace

    # ---- v1 zero-copy interface ----------------------------------------------------------------

    def batch_exists(self, keys: List[str], extra_info: Optional[HiCacheStorageExtraInfo] = None) -> int:
        started = time.perf_counter()
        try:
            hashes, prefix = self._hashes(keys, extra_info)
            return self._client.exists(self._ns(), hashes, prefix)
        except Exception:
            self._count_error("exists")
            return 0
        finally:
            self._observe("batch_exists", started)

    def batch_get_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        return self._transfer_v1("get", "batch_get_v1", self._client.get_into, keys, host_indices, extra_info)

    def batch_set_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        if not self._is_writer:
            return [True] * len(keys)  # MLA: one writer rank stores what every rank reads
        return self._transfer_v1("set", "batch_set_v1", self._client.put, keys, host_indices, extra_info)

    def _transfer_v1(self, op: str, call: str, transfer: Any, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo]) -> List[bool]:
        """Move pages between the host pool's page parts and the tier; False per page on any error."""
        started = time.perf_counter()
        try:
            hashes, prefix = self._hashes(keys, extra_info)
            results = transfer(self._ns(), hashes, prefix, self._page_views.pages(host_indices, len(keys)))
        except Exception:
            self._count_error(op)
            self._observe(call, started)
            return [False] * len(keys)
        self._log_transfer(op, sum(results), started)
        self._observe(call, started)
        return results

    # ---- generic interface (one flat tensor per page) ---------------------------------------------

    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    def get(self, key: str, target_location: Optional[Any] = None, target_sizes: Optional[Any] = None):
        results = self.batch_get([key], [target_location] if target_location is not None else None)
        return results[0] if results else None

    def batch_get(self, keys: List[str], target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> List[Optional[torch.Tensor]]:
        if target_locations is None:
            return [None] * len(keys)  # raylsm reads into the caller's memory only
        started = time.perf_counter()
        try:
            hashes = [bytes.fromhex(key) for key in keys]
            buffers = [_tensor_bytes(tensor) for tensor in target_locations]
            hits = self._client.get_into(self._ns(), hashes, None, buffers)
        except Exception:
            self._count_error("get")
            return [None] * len(keys)
        finally:
            self._observe("batch_get", started)
        return [tensor if hit else None for tensor, hit in zip(target_locations, hits)]

    def set(self, key: str, value: Optional[Any] = None, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None) -> bool:
        return self.batch_set([key], [value] if value is not None else None)

    def batch_set(self, keys: List[str], values: Optional[Any] = None, target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> bool:
        if values is None or not self._is_writer:
            return values is not None
        started = time.perf_counter()
        try:
            hashes = [bytes.fromhex(key) for key in keys]
            return all(self._client.put(self._ns(), hashes, None, [_tensor_bytes(v) for v in values]))
        except Exception:
            self._count_error("set")
            return False
        finally:
            self._observe("batch_set", started)

    # ---- lifecycle and stats ------------------------------------------------------------------

    def clear(self) -> None:
        """Forget this rank's pages (its namespace only: the tier is shared by the whole fleet).

        Returns once no process anywhere can get a hit on a page of this namespace written before
        the call (raylsm.namespaces). Raises ShardUnavailableError when that cannot be vouched for
        (the controller or a shard did not confirm): SGLang calls this from its scheduler, never
        from a data-path thread, and reports a raised clear as failed."""
        try:
            cleared = self._client.clear_namespace(self._ns())
        except Exception as error:
            self._count_error("clear")
            raise ShardUnavailableError(f"raylsm: clear of {self._namespace_name} failed: {error!r}") from error
        if not cleared:
            with self._lock:
                self._counters["clear_errors"] += 1
            raise ShardUnavailableError(f"raylsm: clear of {self._namespace_name} was not confirmed by every "
                                        "shard; pages written before it may still be served (see the log)")

    def get_stats(self):
        """SGLang's StorageMetrics for the transfers since the last call (pages and bandwidth)."""
        try:
            from sglang.srt.observability.metrics_collector import StorageMetrics
        except ImportError:
            return None
        with self._lock:
            log, self._transfer_log = self._transfer_log, {"get": [], "set": []}
        page_bytes = self._page_bytes()
        return StorageMetrics(
            prefetch_pgs=[pages for pages, _ in log["get"]],
            backup_pgs=[pages for pages, _ in log["set"]],
            prefetch_bandwidth=[pages * page_bytes / 1e9 / max(s, 1e-9) for pages, s in log["get"]],
            backup_bandwidth=[pages * page_bytes / 1e9 / max(s, 1e-9) for pages, s in log["set"]],
        )

    def raylsm_stats(self) -> dict:
        with self._lock:
            errors = dict(self._counters)
        identity = self.cache_identity
        return {"namespace": getattr(self, "_namespace_name", None),
                "routing_namespace": identity.identity_name if identity is not None else None,
                "adapter_errors": errors,
                "client": self._client.stats()}

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:
            logger.exception("raylsm: close failed")

    # ---- helpers ------------------------------------------------------------------------------

    def _hashes(self, keys: List[str], extra_info: Optional[HiCacheStorageExtraInfo]):
        """Page hashes and the chain before them. SGLang 0.5.23's HybridCacheController passes
        prefix_keys=None for a prefetch from the sequence start (and [] for a backup from it): once
        prefix keys are on (the server's extra config says so, or any call carried a list), None
        means "no page before these", or a prompt's first pages would be looked up by the wrong key."""
        hashes = [bytes.fromhex(key) for key in keys]
        prefix = extra_info.prefix_keys if extra_info is not None else None
        if prefix is not None:
            self._prefix_keys_on = True
            return hashes, [bytes.fromhex(key) for key in prefix]
        if self._prefix_keys_on:
            return hashes, []
        if not self._warned_no_prefix_keys:
            self._warned_no_prefix_keys = True
            logger.warning("raylsm: SGLang passes no prefix keys; pages are routed one by one (correct, but "
                           "without locality). Set \"hicache_storage_pass_prefix_keys\": true in the extra config.")
        return hashes, None

    def _page_bytes(self) -> int:
        pool = self.mem_pool_host
        if pool is None:
            return 0
        try:
            return int(pool.get_size_per_token()) * int(pool.page_size)
        except Exception:
            return 0

    def _log_transfer(self, op: str, pages: int, started: float) -> None:
        with self._lock:
            self._transfer_log[op].append((pages, time.perf_counter() - started))
            del self._transfer_log[op][:-1024]

    def _observe(self, call: str, started: float) -> None:
        """One observation per SGLang call that reached the tier (never raises)."""
        self._client.metrics.observe_call(call, time.perf_counter() - started)

    def _count_error(self, op: str) -> None:
        logger.exception("raylsm: %s failed; reported as a miss", op)
        with self._lock:
            self._counters[f"{op}_errors"] += 1


def prefix_keys_configured(server_args: Any) -> bool:
    """Whether the server's --hicache-storage-backend-extra-config turns prefix keys on (JSON or
    @file.json; False when unknown)."""
    raw = getattr(server_args, "hicache_storage_backend_extra_config", None) if server_args is not None else None
    if not raw:
        return False
    try:
        if raw.startswith("@"):
            with open(raw[1:]) as handle:
                config = json.load(handle) if raw.endswith(".json") else {}
        else:
            config = json.loads(raw)
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(config, dict) and config.get("hicache_storage_pass_prefix_keys") is True


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A flat byte view of a contiguous CPU tensor, without copying (bf16 included); ValueError if
    the tensor is not contiguous (a copy would silently drop what is read into it)."""
    if not tensor.is_contiguous():
        raise ValueError("raylsm reads and writes contiguous tensors only")
    return memoryview(tensor.view(torch.uint8).reshape(-1).numpy())
