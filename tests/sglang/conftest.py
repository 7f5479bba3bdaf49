"""Fixtures of the SGLang adapter tests: a real one-node Ray instance and a running tier per test
module, RayLSMStorage instances made by SGLang's own StorageBackendFactory (`dynamic` backend) and
registered with a host pool the way SGLang's attach does, and SGLang-style page keys.

The host pools are stand-ins (tests/sglang/host_pool.py explains why); everything else is real:
sglang's factory, config and extra-info classes, Ray, the shard actors and their RocksDB stores.
"""

from __future__ import annotations

import hashlib
import struct
import time
from typing import Any

import pytest
import ray

from raylsm.config import RAY_NAMESPACE, TierConfig

MiB = 1024 * 1024
SHARD_UNITS = 2

# The extra config a user passes with --hicache-storage-backend-extra-config.
BASE_EXTRA = {
    "backend_name": "raylsm",
    "module_path": "raylsm.sglang.backend",
    "class_name": "RayLSMStorage",
    "interface_v1": 1,
    "hicache_storage_pass_prefix_keys": True,
    "call_timeout_s": 10.0,
    "ring_refresh_s": 0.5,
    "extent_pages": 4,
}


def sglang_page_keys(name: object, pages: int, page_size: int = 16) -> list[str]:
    """64-hex page keys chained like SGLang's: d_i = SHA256(d_{i-1} raw || token ids as uint32 LE)."""
    digest = hashlib.sha256(repr(name).encode()).digest()
    base = int.from_bytes(digest[:4], "little") % 100_000
    keys: list[str] = []
    previous = b""
    for page in range(pages):
        tokens = range(base + page * page_size, base + (page + 1) * page_size)
        previous = hashlib.sha256(previous + struct.pack(f"<{page_size}I", *tokens)).digest()
        keys.append(previous.hex())
    return keys


class TierUnderTest:
    def __init__(self, data_dir: str):
        from raylsm.controller.controller_actor import start_controller

        self.config = TierConfig.from_dict({
            "shard": {"data_dir": data_dir, "store": {"capacity_bytes": 256 * MiB, "segment_bytes": 8 * MiB,
                                                     "block_cache_bytes": 1 * MiB, "write_buffer_bytes": 1 * MiB}},
            "controller": {"reconcile_period_s": 1.0},
        })
        self.controller = start_controller(self.config)
        deadline = time.monotonic() + 60
        while len(self.ring()["shards"]) < SHARD_UNITS:
            if time.monotonic() > deadline:
                pytest.fail(f"no ring of {SHARD_UNITS} shards after 60 s")
            time.sleep(0.25)

    def ring(self) -> dict:
        return ray.get(self.controller.ring.remote(), timeout=60)

    def shutdown(self) -> None:
        try:
            ray.get(self.controller.shutdown.remote(), timeout=60)
        except ray.exceptions.RayError:
            pass  # a test removed the controller


@pytest.fixture(scope="module")
def tier(tmp_path_factory):
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace=RAY_NAMESPACE,
             resources={"raylsm_shard": SHARD_UNITS}, object_store_memory=256 * MiB, log_to_driver=False)
    try:
        tier = TierUnderTest(str(tmp_path_factory.mktemp("raylsm-sglang-data")))
        yield tier
        tier.shutdown()
    finally:
        ray.shutdown()


def storage_config(*, model_name: str, extra: dict | None = None, layout: str = "page_first", **fields: Any):
    """A HiCacheStorageConfig as SGLang builds it for one rank (TP 1 unless told otherwise)."""
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig

    values = dict(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1, is_mla_model=False,
                  enable_storage_metrics=True, is_page_first_layout=layout == "page_first", model_name=model_name,
                  extra_config=dict(BASE_EXTRA if extra is None else extra))
    values.update(fields)
    return HiCacheStorageConfig(**values)


@pytest.fixture
def make_backend(tier, request):
    """make(pool, extra=None, model_name=None, register=True, **config_fields) -> a backend made by
    SGLang's StorageBackendFactory.create_backend("dynamic", ...) and registered with `pool`; closed at
    teardown. model_name defaults to one per test, so tests never see each other's pages."""
    from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory

    made = []

    def make(pool, extra: dict | None = None, model_name: str | None = None, register: bool = True, **fields):
        config = storage_config(model_name=model_name or f"tests/{request.node.name}", extra=extra,
                                layout=getattr(pool, "layout", "page_first"), **fields)
        backend = StorageBackendFactory.create_backend("dynamic", config, pool)
        made.append(backend)
        if register:  # SGLang's attach: create, then register the host pool
            backend.register_mem_pool_host(pool)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture(scope="session")
def page_keys():
    return sglang_page_keys


@pytest.fixture(scope="session")
def sglang_env():
    """The extra config a user passes and a maker of HiCacheStorageConfig, for tests that build
    backends themselves."""
    class _Env:
        base_extra = BASE_EXTRA
        storage_config = staticmethod(storage_config)
    return _Env()
