"""RayLSMStorage: SGLang's HiCache L3 storage backend on top of the raylsm tier.

Owned here: the HiCacheStorage interface (v1 zero-copy, the generic get/set path, exists), the
namespace of this rank's pages, and the rule that nothing raises into SGLang's threads. Storage logic
lives in the tier client and the shards. Loaded by SGLang's StorageBackendFactory as a `dynamic`
backend: `cls(storage_config, kwargs)`, then `register_mem_pool_host(pool)`.

Thread-safety: SGLang calls batch_exists (prefetch thread), batch_get_v1 (prefetch I/O thread) and
batch_set_v1 (backup thread) concurrently; the adapter holds no mutable state besides counters under
a lock, and TierClient is thread-safe.

Outcomes: a miss, a dead shard, a timeout, a bad buffer or any error is a False / 0 / None for SGLang
plus a counter in `raylsm_stats()`; constructor errors (a bad extra config, no reachable tier) raise,
which makes SGLang roll the attach back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any, List, Optional

import torch
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig, HiCacheStorageExtraInfo

from raylsm.client import TierClient
from raylsm.sglang.extra_config import tier_config_from_extra
from raylsm.sglang.host_pages import HostPageViews
from raylsm.store.page_key import namespace_id

logger = logging.getLogger(__name__)


def namespace_name(storage_config: HiCacheStorageConfig, layout: str, dtype: str, page_tokens: int) -> str:
    """The namespace of this rank's pages. SGLang's keys encode neither dtype, layout nor page size
    (a TODO upstream), so they are part of the namespace. MHA ranks hold different heads: the TP rank
    is in the namespace. MLA ranks hold identical KV: it is not (one writer, every rank reads)."""
    get = lambda name, default: getattr(storage_config, name, default)  # noqa: E731 (older configs lack fields)
    model = "-".join((get("model_name", None) or "").split("/"))
    parts = [model, layout, dtype, f"page{page_tokens}"]
    if not get("is_mla_model", False):
        parts.append(f"tp{get('tp_rank', 0)}of{get('tp_size', 1)}")
    if get("pp_size", 1) > 1:
        parts.append(f"pp{get('pp_rank', 0)}of{get('pp_size', 1)}")
    if get("attn_cp_size", 1) > 1:
        parts.append(f"cp{get('attn_cp_rank', 0)}of{get('attn_cp_size', 1)}")
    if get("dcp_size", 1) > 1:
        parts.append(f"dcp{get('dcp_rank', 0)}of{get('dcp_size', 1)}page{get('logical_page_size', None)}")
    return "|".join(parts)


class RayLSMStorage(HiCacheStorage):
    def __init__(self, storage_config: HiCacheStorageConfig, kwargs: Optional[dict] = None, *args: Any, **kw: Any):
        extra = getattr(storage_config, "extra_config", None) or {}
        self._tier_config = tier_config_from_extra(extra)  # ConfigError naming a bad key: fails the attach
        self._storage_config = storage_config
        # NOTE: SGLang strips `hicache_storage_pass_prefix_keys` from the extra config before the
        # backend sees it; whether prefix keys come is only known from the calls themselves.
        self._warned_no_prefix_keys = False
        self._is_writer = bool(getattr(storage_config, "is_storage_writer", True))
        self._is_mla = bool(getattr(storage_config, "is_mla_model", False))
        self._client = TierClient(self._tier_config)
        self.mem_pool_host = None
        self._namespace: bytes | None = None
        self._counters: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._transfer_log: dict[str, list[tuple[int, float]]] = {"get": [], "set": []}

    # ---- registration -------------------------------------------------------------------------

    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        super().register_mem_pool_host(mem_pool_host)
        self._page_views = HostPageViews(mem_pool_host, self._is_mla)
        layout = str(getattr(mem_pool_host, "layout", "unknown"))
        dtype = str(getattr(mem_pool_host, "dtype", "unknown")).replace("torch.", "")
        page_tokens = int(getattr(mem_pool_host, "page_size", 0))
        self._namespace_name = namespace_name(self._storage_config, layout, dtype, page_tokens)
        self._namespace = namespace_id(self._namespace_name)
        logger.info("raylsm: attached with namespace %s", self._namespace_name)

    def _ns(self) -> bytes:
        if self._namespace is None:  # the generic path may be used before a pool is registered
            self._namespace_name = namespace_name(self._storage_config, "generic", "bytes", 0)
            self._namespace = namespace_id(self._namespace_name)
        return self._namespace

    # ---- v1 zero-copy interface ----------------------------------------------------------------

    def batch_exists(self, keys: List[str], extra_info: Optional[HiCacheStorageExtraInfo] = None) -> int:
        try:
            hashes, prefix = self._hashes(keys, extra_info)
            return self._client.exists(self._ns(), hashes, prefix)
        except Exception:
            self._count_error("exists")
            return 0

    def batch_get_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        return self._transfer_v1("get", self._client.get_into, keys, host_indices, extra_info)

    def batch_set_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        if not self._is_writer:
            return [True] * len(keys)  # MLA: one writer rank stores what every rank reads
        return self._transfer_v1("set", self._client.put, keys, host_indices, extra_info)

    def _transfer_v1(self, op: str, transfer: Any, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo]) -> List[bool]:
        """Move pages between the host pool's page parts and the tier; False per page on any error."""
        started = time.perf_counter()
        try:
            hashes, prefix = self._hashes(keys, extra_info)
            results = transfer(self._ns(), hashes, prefix, self._page_views.pages(host_indices, len(keys)))
        except Exception:
            self._count_error(op)
            return [False] * len(keys)
        self._log_transfer(op, sum(results), started)
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
        try:
            hashes = [bytes.fromhex(key) for key in keys]
            buffers = [_tensor_bytes(tensor) for tensor in target_locations]
            hits = self._client.get_into(self._ns(), hashes, None, buffers)
        except Exception:
            self._count_error("get")
            return [None] * len(keys)
        return [tensor if hit else None for tensor, hit in zip(target_locations, hits)]

    def set(self, key: str, value: Optional[Any] = None, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None) -> bool:
        return self.batch_set([key], [value] if value is not None else None)

    def batch_set(self, keys: List[str], values: Optional[Any] = None, target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> bool:
        if values is None or not self._is_writer:
            return values is not None
        try:
            hashes = [bytes.fromhex(key) for key in keys]
            return all(self._client.put(self._ns(), hashes, None, [_tensor_bytes(v) for v in values]))
        except Exception:
            self._count_error("set")
            return False

    # ---- lifecycle and stats ------------------------------------------------------------------

    def clear(self) -> None:
        """Forget this rank's pages (its namespace only: the tier is shared by the whole fleet)."""
        try:
            self._client.clear_namespace(self._ns())
        except Exception:
            self._count_error("clear")

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
        return {"namespace": getattr(self, "_namespace_name", None), "adapter_errors": errors,
                "client": self._client.stats()}

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:
            logger.exception("raylsm: close failed")

    # ---- helpers ------------------------------------------------------------------------------

    def _hashes(self, keys: List[str], extra_info: Optional[HiCacheStorageExtraInfo]):
        hashes = [bytes.fromhex(key) for key in keys]
        if extra_info is not None and extra_info.prefix_keys is not None:
            return hashes, [bytes.fromhex(key) for key in extra_info.prefix_keys]
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

    def _count_error(self, op: str) -> None:
        logger.exception("raylsm: %s failed; reported as a miss", op)
        with self._lock:
            self._counters[f"{op}_errors"] += 1


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A flat byte view of a contiguous CPU tensor, without copying (bf16 included); ValueError if
    the tensor is not contiguous (a copy would silently drop what is read into it)."""
    if not tensor.is_contiguous():
        raise ValueError("raylsm reads and writes contiguous tensors only")
    return memoryview(tensor.view(torch.uint8).reshape(-1).numpy())
