"""RayLSMStorage as SGLang loads and drives it: made by SGLang's StorageBackendFactory (`dynamic`),
registered with a host pool (stand-in, see host_pool.py), then called through the v1 zero-copy
interface, the generic interface, and SGLang's failure injector, against a real tier on one Ray node.
The last tests take the tier away."""

from __future__ import annotations

import threading
import time

import pytest
import ray
import torch
from sglang.srt.mem_cache.hicache_storage import (HiCacheStorage, HiCacheStorageExtraInfo,
                                                  HiCacheStorageFailureInjector)
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory

from host_pool import MHAHostPoolStandIn, MLAHostPoolStandIn
from raylsm.config import CONTROLLER_NAME, RAY_NAMESPACE
from raylsm.errors import ConfigError
from raylsm.sglang.backend import RayLSMStorage

PAGE = 16
# The user's extra config (as in conftest.BASE_EXTRA; repeated so this module imports no conftest).
BASE_EXTRA = {
    "backend_name": "raylsm", "module_path": "raylsm.sglang.backend", "class_name": "RayLSMStorage",
    "interface_v1": 1, "hicache_storage_pass_prefix_keys": True, "call_timeout_s": 10.0, "ring_refresh_s": 0.5,
    "extent_pages": 4,
}


def info(prefix):
    return HiCacheStorageExtraInfo(prefix_keys=list(prefix))


def _pages_equal(reader_pool, reader_first_page, writer_pool, writer_first_page, count):
    return all(reader_pool.page_bytes(reader_first_page + i) == writer_pool.page_bytes(writer_first_page + i)
               for i in range(count))


# ---- loading ---------------------------------------------------------------------------------------


def test_the_factory_loads_the_adapter_and_leaves_pool_registration_to_the_caller(tier, sglang_env):
    pool = MHAHostPoolStandIn()
    config = sglang_env.storage_config(model_name="tests/factory")
    backend = StorageBackendFactory.create_backend("dynamic", config, pool)
    try:
        assert isinstance(backend, RayLSMStorage) and isinstance(backend, HiCacheStorage)
        assert backend.mem_pool_host is None  # SGLang passes the pool later, not to the constructor
        backend.register_mem_pool_host(pool)
        assert backend.mem_pool_host is pool
        assert "page_first" in backend.raylsm_stats()["namespace"]
    finally:
        backend.close()


@pytest.mark.parametrize("extra, named", [
    ({**BASE_EXTRA, "no_such_knob": 1}, "no_such_knob"),
    ({**BASE_EXTRA, "call_timeout_s": "fast"}, "call_timeout_s"),
    ({**BASE_EXTRA, "raylsm": {"client": {"extent_pagez": 8}}}, "extent_pagez"),
])
def test_a_bad_extra_config_key_fails_the_attach_with_a_config_error_naming_it(tier, sglang_env, extra, named):
    config = sglang_env.storage_config(model_name="tests/bad", extra=extra)
    with pytest.raises(ConfigError, match=named):
        StorageBackendFactory.create_backend("dynamic", config, MHAHostPoolStandIn())


# ---- v1 zero-copy ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, layout", [("mha", "page_first"), ("mha", "layer_first"),
                                          ("mla", "page_first"), ("mla", "layer_first")])
def test_batch_set_v1_then_batch_get_v1_into_other_host_slots_gives_the_same_page_bytes(make_backend, page_keys,
                                                                                      kind, layout):
    pool_class = MHAHostPoolStandIn if kind == "mha" else MLAHostPoolStandIn
    rank = {"is_mla_model": kind == "mla", "model_name": f"tests/v1-{kind}-{layout}"}
    writer_pool = pool_class(layout=layout, seed=1)
    writer = make_backend(writer_pool, **rank)
    keys = page_keys(("v1", kind, layout), 24)
    # The backup thread writes a chain in chunks, the prefix growing as it goes.
    for start in (0, 12):
        done = writer.batch_set_v1(keys[start:start + 12], writer_pool.host_indices(start, 12), info(keys[:start]))
        assert done == [True] * 12, writer.raylsm_stats()

    # The same rank reads it back into other host slots in one chunk...
    assert writer.batch_get_v1(keys, writer_pool.host_indices(32, 24), info([])) == [True] * 24
    assert _pages_equal(writer_pool, 32, writer_pool, 0, 24)
    # ...and so does another instance of the same rank (another replica), in its own pool.
    reader_pool = pool_class(layout=layout, seed=2)
    reader = make_backend(reader_pool, **rank)
    assert reader.batch_get_v1(keys[8:], reader_pool.host_indices(40, 16), info(keys[:8])) == [True] * 16
    assert _pages_equal(reader_pool, 40, writer_pool, 8, 16)


def test_batch_exists_counts_leading_present_pages_with_and_without_prefix_keys(make_backend, page_keys):
    pool = MHAHostPoolStandIn()
    keys = page_keys("exists", 10)
    with_prefix = make_backend(pool, model_name="tests/exists-with-prefix")
    assert with_prefix.batch_set_v1(keys[:6], pool.host_indices(0, 6), info([])) == [True] * 6
    assert with_prefix.batch_exists(keys, info([])) == 6
    assert with_prefix.batch_exists(keys[3:], info(keys[:3])) == 3
    assert with_prefix.batch_exists(keys[6:], info(keys[:6])) == 0

    no_prefix = make_backend(pool, model_name="tests/exists-without-prefix",
                             extra={**BASE_EXTRA, "hicache_storage_pass_prefix_keys": False})
    assert no_prefix.batch_set_v1(keys[:6], pool.host_indices(0, 6)) == [True] * 6
    assert no_prefix.batch_exists(keys) == 6
    # SGLang strips the flag before the backend sees it, so whether a call carries prefix keys is
    # the only signal: pages stored without them are keyed by their own hash, not their depth.
    assert no_prefix.batch_exists(keys, info([])) < 6
    assert no_prefix.batch_exists(keys[6:]) == 0
    assert no_prefix.exists(keys[0]) and not no_prefix.exists(keys[7])


def test_mla_non_writer_rank_skips_writes_and_reads_the_writer_rank_pages(make_backend, page_keys, sglang_env):
    ranks = [dict(model_name="tests/mla", is_mla_model=True, tp_rank=rank, tp_size=2) for rank in (0, 1)]
    assert [sglang_env.storage_config(**rank).is_storage_writer for rank in ranks] == [True, False]
    writer_pool, reader_pool = MLAHostPoolStandIn(seed=1), MLAHostPoolStandIn(seed=2)
    writer = make_backend(writer_pool, **ranks[0])
    reader = make_backend(reader_pool, **ranks[1])

    skipped = page_keys("mla skipped", 4)
    assert reader.batch_set_v1(skipped, reader_pool.host_indices(0, 4), info([])) == [True] * 4
    assert writer.batch_exists(skipped, info([])) == 0, "a non-writer rank must not write"

    keys = page_keys("mla written", 8)
    assert writer.batch_set_v1(keys, writer_pool.host_indices(0, 8), info([])) == [True] * 8
    assert reader.batch_exists(keys, info([])) == 8
    assert reader.batch_get_v1(keys, reader_pool.host_indices(20, 8), info([])) == [True] * 8
    assert _pages_equal(reader_pool, 20, writer_pool, 0, 8)


def test_mha_ranks_do_not_see_each_other_pages(make_backend, page_keys):
    pool0, pool1 = MHAHostPoolStandIn(seed=1), MHAHostPoolStandIn(seed=2)
    rank0 = make_backend(pool0, model_name="tests/mha-tp2", tp_rank=0, tp_size=2)
    rank1 = make_backend(pool1, model_name="tests/mha-tp2", tp_rank=1, tp_size=2)
    keys = page_keys("mha rank 0", 8)
    assert rank0.batch_set_v1(keys, pool0.host_indices(0, 8), info([])) == [True] * 8
    assert rank0.batch_exists(keys, info([])) == 8
    assert rank1.batch_exists(keys, info([])) == 0
    before = pool1.page_bytes(10)
    assert rank1.batch_get_v1(keys, pool1.host_indices(10, 8), info([])) == [False] * 8
    assert pool1.page_bytes(10) == before


def test_bad_host_indices_are_misses_not_exceptions(make_backend, page_keys):
    pool = MHAHostPoolStandIn()
    backend = make_backend(pool)
    keys = page_keys("bad indices", 4)
    assert backend.batch_set_v1(keys, pool.host_indices(0, 4), info([])) == [True] * 4
    not_page_aligned = pool.host_indices(8, 4)[:-3]
    too_few = pool.host_indices(8, 3)
    for indices in (not_page_aligned, too_few):
        assert backend.batch_get_v1(keys, indices, info([])) == [False] * 4
        assert backend.batch_set_v1(page_keys("bad indices, set", 4), indices, info([])) == [False] * 4
    assert backend.raylsm_stats()["adapter_errors"]


def test_concurrent_backup_prefetch_and_io_threads(make_backend, page_keys):
    """SGLang calls batch_set_v1 (backup), batch_exists (prefetch) and batch_get_v1 (prefetch I/O) on
    one backend from three threads at once."""
    pool = MHAHostPoolStandIn(pages=96)
    backend = make_backend(pool)
    chains = [page_keys(("threads", n), 8) for n in range(4)]
    errors: list[BaseException] = []
    stored = threading.Event()

    def backup():
        try:
            for n, keys in enumerate(chains):
                assert backend.batch_set_v1(keys, pool.host_indices(8 * n, 8), info([])) == [True] * 8
        except BaseException as error:  # noqa: BLE001
            errors.append(error)
        finally:
            stored.set()

    def prefetch():
        try:
            while not stored.is_set():
                for keys in chains:
                    assert 0 <= backend.batch_exists(keys, info([])) <= 8
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    def prefetch_io():
        try:
            stored.wait(120)
            for n, keys in enumerate(chains):
                assert backend.batch_get_v1(keys, pool.host_indices(48 + 8 * (n % 2), 8), info([])) == [True] * 8
                assert _pages_equal(pool, 48 + 8 * (n % 2), pool, 8 * n, 8)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=target) for target in (backup, prefetch, prefetch_io)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not errors, errors


# ---- generic path ----------------------------------------------------------------------------------


def test_generic_path_with_flat_pages_as_sglang_stages_them(make_backend, page_keys):
    pool = MHAHostPoolStandIn(seed=3)
    backend = make_backend(pool, extra={k: v for k, v in BASE_EXTRA.items() if k != "interface_v1"})
    keys = page_keys("generic", 4)
    # SGLang's _generic_page_set: get_data_page (flat) per page, then batch_set.
    data = [pool.get_data_page(i * PAGE) for i in range(4)]
    assert backend.batch_set(keys[:3], data[:3]) is True
    assert backend.set(keys[3], data[3]) is True
    assert backend.exists(keys[0]) and backend.exists(keys[3])
    missing = page_keys("generic, never stored", 1)[0]
    assert not backend.exists(missing)
    assert backend.batch_exists(keys) == 4

    # SGLang's _generic_page_get: dummy flat pages, batch_get, then set_from_flat_data_page.
    targets = [pool.get_dummy_flat_data_page() for _ in range(5)]
    got = backend.batch_get(keys[:2] + [missing] + keys[2:], targets)
    assert [tensor is target for tensor, target in zip(got, targets)] == [True, True, False, True, True]
    assert got[2] is None
    for slot, page in ((0, 0), (1, 1), (3, 2), (4, 3)):
        pool.set_from_flat_data_page((40 + page) * PAGE, got[slot])
    assert _pages_equal(pool, 40, pool, 0, 4)

    single = pool.get_dummy_flat_data_page()
    assert backend.get(keys[1], single) is single
    assert torch.equal(single.view(torch.int16), data[1].view(torch.int16))
    assert backend.get(missing, pool.get_dummy_flat_data_page()) is None
    assert backend.batch_get(keys, None) == [None] * 4  # raylsm reads only into the caller's memory


@pytest.mark.parametrize("kind, layout", [
    ("mha", "page_first"), ("mha", "layer_first"), ("mla", "page_first"), ("mla", "layer_first"),
])
def test_pages_written_by_v1_and_read_by_the_generic_path_are_the_same_bytes(make_backend, page_keys, kind,
                                                                              layout):
    """Two replicas of one model, one with interface_v1 and one without, share a namespace: a page one
    writes must be, byte for byte, the page the other reads (or a miss), whatever the layout."""
    pool_class = MHAHostPoolStandIn if kind == "mha" else MLAHostPoolStandIn
    v1_pool, generic_pool = pool_class(layout=layout, seed=4), pool_class(layout=layout, seed=5)
    rank = {"is_mla_model": kind == "mla"}
    model = f"tests/mixed-{kind}-{layout}"
    v1 = make_backend(v1_pool, model_name=model, **rank)
    generic = make_backend(generic_pool, model_name=model, **rank,
                           extra={k: v for k, v in BASE_EXTRA.items() if k != "interface_v1"})
    keys = page_keys(("mixed", kind, layout), 4)

    # v1 writes, the generic path reads (SGLang's _generic_page_get staging).
    assert v1.batch_set_v1(keys, v1_pool.host_indices(0, 4)) == [True] * 4
    got = generic.batch_get(keys, [generic_pool.get_dummy_flat_data_page() for _ in keys])
    for page, tensor in enumerate(got):
        if tensor is not None:
            generic_pool.set_from_flat_data_page((20 + page) * PAGE, tensor)
            assert generic_pool.page_bytes(20 + page) == v1_pool.page_bytes(page), f"page {page}"

    # The generic path writes (SGLang's _generic_page_set), v1 reads.
    other = page_keys(("mixed, other way", kind, layout), 4)
    assert generic.batch_set(other, [generic_pool.get_data_page(page * PAGE) for page in range(4)]) is True
    hits = v1.batch_get_v1(other, v1_pool.host_indices(40, 4))
    for page, hit in enumerate(hits):
        if hit:
            assert v1_pool.page_bytes(40 + page) == generic_pool.page_bytes(page), f"page {page}"
    # On the layouts where both paths agree, these are hits, not just "not wrong".
    assert all(tensor is not None for tensor in got) and all(hits)


# ---- namespaces, stats, lifecycle ------------------------------------------------------------------


def test_clear_removes_only_this_namespace(make_backend, page_keys):
    pool0, pool1 = MHAHostPoolStandIn(seed=1), MHAHostPoolStandIn(seed=2)
    rank0 = make_backend(pool0, model_name="tests/clear", tp_rank=0, tp_size=2)
    rank1 = make_backend(pool1, model_name="tests/clear", tp_rank=1, tp_size=2)
    other_model = make_backend(pool0, model_name="tests/clear-other-model")
    keys = page_keys("clear", 8)
    for backend, pool in ((rank0, pool0), (rank1, pool1), (other_model, pool0)):
        assert backend.batch_set_v1(keys, pool.host_indices(0, 8), info([])) == [True] * 8
    rank0.clear()
    assert rank0.batch_exists(keys, info([])) == 0
    assert rank0.batch_get_v1(keys, pool0.host_indices(16, 8), info([])) == [False] * 8
    assert rank1.batch_exists(keys, info([])) == 8
    assert other_model.batch_exists(keys, info([])) == 8
    # Cleared pages can be written again.
    assert rank0.batch_set_v1(keys, pool0.host_indices(0, 8), info([])) == [True] * 8
    assert rank0.batch_exists(keys, info([])) == 8


def _storage_metrics_class():
    try:
        from sglang.srt.observability.metrics_collector import StorageMetrics
    except ImportError:  # on this CPU-only install its import chain needs transformers
        return None
    return StorageMetrics


@pytest.mark.skipif(_storage_metrics_class() is None,
                    reason="sglang.srt.observability.metrics_collector does not import without transformers")
def test_get_stats_returns_sglang_storage_metrics(make_backend, page_keys):
    pool = MHAHostPoolStandIn()
    backend = make_backend(pool)
    keys = page_keys("stats", 4)
    assert backend.batch_set_v1(keys, pool.host_indices(0, 4), info([])) == [True] * 4
    assert backend.batch_get_v1(keys, pool.host_indices(8, 4), info([])) == [True] * 4
    metrics = backend.get_stats()
    assert isinstance(metrics, _storage_metrics_class())
    assert metrics.backup_pgs == [4] and metrics.prefetch_pgs == [4]
    assert len(metrics.prefetch_bandwidth) == 1 and metrics.prefetch_bandwidth[0] > 0
    assert backend.get_stats().backup_pgs == []  # per interval: the log restarts


def test_each_sglang_call_that_reaches_the_tier_is_timed_once(make_backend, page_keys, monkeypatch):
    """One client-side duration per call (ray_raylsm_client_call_duration_seconds{op}), labelled by
    SGLang's method; an MLA reader's set and a get without buffers do not reach the tier."""
    pool = MHAHostPoolStandIn()
    backend = make_backend(pool, model_name="tests/timed")
    timed = []
    monkeypatch.setattr(backend._client.metrics, "observe_call", lambda op, seconds: timed.append((op, seconds)))
    keys = page_keys("timed", 4)
    assert backend.batch_set_v1(keys, pool.host_indices(0, 4), info([])) == [True] * 4
    assert backend.batch_exists(keys, info([])) == 4
    assert backend.batch_get_v1(keys, pool.host_indices(8, 4), info([])) == [True] * 4
    flat = [pool.get_data_page(page * PAGE) for page in range(2)]
    assert backend.batch_set(page_keys("timed, generic", 2), flat) is True
    assert backend.batch_get(page_keys("timed, generic", 2), [pool.get_dummy_flat_data_page() for _ in flat])[0] \
        is not None
    assert backend.batch_get(keys, None) == [None] * 4
    assert [op for op, _ in timed] == ["batch_set_v1", "batch_exists", "batch_get_v1", "batch_set", "batch_get"]
    assert all(0 < seconds < 10 for _, seconds in timed)


def test_close_is_safe_twice(make_backend):
    backend = make_backend(MHAHostPoolStandIn())
    backend.close()
    backend.close()


def test_sglang_failure_injector_wrapping_the_adapter(make_backend, page_keys, monkeypatch):
    monkeypatch.setenv("SGLANG_TEST_HICACHE_BACKEND_RANDOM_FAILURE", "0.5")
    pool = MHAHostPoolStandIn(pages=80)
    backend = make_backend(pool)
    assert isinstance(backend, HiCacheStorageFailureInjector)
    stored = 0
    for round_number in range(16):
        keys = page_keys(("injector", round_number), 4)
        done = backend.batch_set_v1(keys, pool.host_indices(0, 4), info([]))
        assert done in ([True] * 4, [False] * 4)
        stored += all(done)
        present = backend.batch_exists(keys, info([]))
        assert present in (0, 4)  # 0 when the injector fails the call
        if not all(done):
            assert present == 0
        before = [pool.page_bytes(40 + i) for i in range(4)]
        hits = backend.batch_get_v1(keys, pool.host_indices(40, 4), info([]))
        for i, hit in enumerate(hits):
            expected = pool.page_bytes(i) if hit else before[i]
            assert pool.page_bytes(40 + i) == expected
    assert 0 < stored < 16  # failures were injected, and some calls went through


def test_prefix_keys_are_used_with_the_extra_config_sglang_actually_passes(make_backend, page_keys, tier):
    from raylsm.client import TierClient
    from raylsm.sglang.extra_config import tier_config_from_extra
    from raylsm.store.page_key import namespace_id

    # What the backend receives: the user's extra config minus the keys SGLang strips.
    delivered = {k: v for k, v in BASE_EXTRA.items() if k != "hicache_storage_pass_prefix_keys"}
    pool = MHAHostPoolStandIn()
    backend = make_backend(pool, extra=delivered)
    keys = page_keys("prefix keys as delivered", 8)
    assert backend.batch_set_v1(keys[:4], pool.host_indices(0, 4), info([])) == [True] * 4
    assert backend.batch_set_v1(keys[4:], pool.host_indices(4, 4), info(keys[:4])) == [True] * 4

    client = TierClient(tier_config_from_extra(delivered))
    try:
        namespace = namespace_id(backend.raylsm_stats()["namespace"])
        client.route_namespace_as(namespace, namespace_id(backend.raylsm_stats()["routing_namespace"]))
        hashes = [bytes.fromhex(key) for key in keys]
        assert client.exists(namespace, hashes, []) == 8, "pages should be indexed by their chain position"
        # SGLang's controller probes a sequence start with prefix_keys=None: once prefix keys are
        # on, that is the same chain position, not a lookup by each page's own hash.
        assert backend.batch_exists(keys, HiCacheStorageExtraInfo(prefix_keys=None)) == 8
    finally:
        client.close()


# ---- the tier goes away (last: these tests shut it down) -------------------------------------------


def _assert_all_misses(backend, pool, keys):
    assert backend.batch_exists(keys, info([])) == 0
    assert backend.batch_get_v1(keys, pool.host_indices(16, len(keys)), info([])) == [False] * len(keys)
    assert backend.batch_set_v1(keys, pool.host_indices(0, len(keys)), info([])) == [False] * len(keys)
    assert backend.batch_get(keys, [pool.get_dummy_flat_data_page() for _ in keys]) == [None] * len(keys)
    assert backend.batch_set(keys, [pool.get_data_page(0) for _ in keys]) is False
    assert backend.exists(keys[0]) is False
    assert backend.get(keys[0], pool.get_dummy_flat_data_page()) is None


def test_no_exception_escapes_when_the_shards_are_gone(make_backend, page_keys, tier):
    pool = MHAHostPoolStandIn()
    backend = make_backend(pool)
    keys = page_keys("tier gone", 4)
    assert backend.batch_set_v1(keys, pool.host_indices(0, 4), info([])) == [True] * 4
    version = tier.ring()["version"]

    ray.get(tier.controller.shutdown.remote(), timeout=60)  # stores closed, shard actors killed
    empty = tier.ring()
    assert empty["shards"] == {} and empty["version"] > version
    _assert_all_misses(backend, pool, keys)  # the client may still hold the old ring: dead actors

    deadline = time.monotonic() + 30
    while backend.raylsm_stats()["client"]["ring_version"] < empty["version"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert backend.raylsm_stats()["client"]["ring_version"] == empty["version"]
    _assert_all_misses(backend, pool, keys)  # an empty ring
    _assert_all_misses(make_backend(pool), pool, keys)  # a backend attached to an empty tier
    backend.clear()
    backend.get_stats()


def test_attaching_without_a_running_tier_fails_the_attach(tier, sglang_env):
    ray.kill(tier.controller, no_restart=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get_actor(CONTROLLER_NAME, namespace=RAY_NAMESPACE)
        except ValueError:
            break
        time.sleep(0.1)
    with pytest.raises(Exception):
        StorageBackendFactory.create_backend("dynamic", sglang_env.storage_config(model_name="tests/no tier"),
                                             MHAHostPoolStandIn())
