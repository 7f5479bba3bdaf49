"""Cache identity through the real adapter and a real one-node tier: a page is served only to a server
that computes the same bytes (docs/identity.md). Every backend here has the same served model name
("m"), as SGLang's `HiCacheStorageConfig.model_name` would carry it; what differs is what the
weights are (SGLang's server arguments, or the extra config's `model_fingerprint`) or the FP8 KV
format, which the host pool alone cannot show (both are stored as uint8). Each test checks both
ways: a different identity misses, the same identity hits and reads the writer's bytes."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from sglang.srt import runtime_context
from sglang.srt.mem_cache.hicache_storage import HiCacheStorageExtraInfo
from sglang.srt.server_args import ServerArgs

from host_pool import MHAHostPoolStandIn, MLAHostPoolStandIn
from raylsm.sglang import identity as identity_module

SERVED_NAME = "m"
PAGES = 8
COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


def info(prefix):
    return HiCacheStorageExtraInfo(prefix_keys=list(prefix))


@pytest.fixture
def publish(monkeypatch):
    """publish(server_args or None): what SGLang's scheduler process has published when the backend
    attaches (`sglang.srt.runtime_context.publish(server_args, role="scheduler")`; its config bags
    need transformers, so the test installs the ServerArgs the accessor returns)."""
    context = runtime_context.get_context()

    def install(args):
        monkeypatch.setattr(context, "_server_args", args)

    return install


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(identity_module, "_warned", set())


def args(**fields):
    return ServerArgs(**{"model_path": "org/model", "revision": COMMIT_A, "served_model_name": SERVED_NAME,
                         **fields})


def write_pages(backend, pool, keys):
    assert backend.batch_set_v1(keys, pool.host_indices(0, len(keys)), info([])) == [True] * len(keys)


def assert_reads_the_writers_bytes(backend, pool, writer_pool, keys):
    assert backend.batch_exists(keys, info([])) == len(keys)
    assert backend.batch_get_v1(keys, pool.host_indices(20, len(keys)), info([])) == [True] * len(keys)
    assert all(pool.page_bytes(20 + i) == writer_pool.page_bytes(i) for i in range(len(keys)))


def assert_misses(backend, pool, keys):
    before = [pool.page_bytes(20 + i) for i in range(len(keys))]
    assert backend.batch_exists(keys, info([])) == 0
    assert backend.batch_get_v1(keys, pool.host_indices(20, len(keys)), info([])) == [False] * len(keys)
    assert [pool.page_bytes(20 + i) for i in range(len(keys))] == before


@pytest.mark.parametrize("writer_args, reader_args", [
    (dict(model_path="org/model-a"), dict(model_path="org/model-b")),
    (dict(revision=COMMIT_A), dict(revision=COMMIT_B)),
    (dict(quantization=None), dict(quantization="fp8")),
    (dict(load_format="auto"), dict(load_format="dummy")),
], ids=["model_path", "revision", "quantization", "dummy_weights"])
def test_same_served_name_different_weights_never_share_pages(make_backend, page_keys, publish,
                                                             writer_args, reader_args):
    keys = page_keys(("weights", tuple(writer_args.items()), tuple(reader_args.items())), PAGES)
    writer_pool = MHAHostPoolStandIn(seed=1)
    publish(args(**writer_args))
    writer = make_backend(writer_pool, model_name=SERVED_NAME)
    write_pages(writer, writer_pool, keys)

    publish(args(**reader_args))
    other_pool = MHAHostPoolStandIn(seed=2)  # its own, correct KV for the same tokens
    other = make_backend(other_pool, model_name=SERVED_NAME)
    assert_misses(other, other_pool, keys)
    write_pages(other, other_pool, keys)  # its pages land in its own namespace...

    publish(args(**writer_args))
    same_pool = MHAHostPoolStandIn(seed=3)
    same = make_backend(same_pool, model_name=SERVED_NAME)
    assert_reads_the_writers_bytes(same, same_pool, writer_pool, keys)  # ...and did not replace the writer's

    publish(args(**reader_args))
    other_again = make_backend(MHAHostPoolStandIn(seed=4), model_name=SERVED_NAME)
    assert_reads_the_writers_bytes(other_again, other_again.mem_pool_host, other_pool, keys)


def test_model_fingerprint_separates_weights_sglang_cannot_tell_apart(make_backend, page_keys, sglang_env, publish):
    publish(None)  # no server arguments reachable: the fingerprint is what the operator tells
    keys = page_keys("fingerprint", PAGES)
    extra = lambda fingerprint: {**sglang_env.base_extra, "model_fingerprint": fingerprint}  # noqa: E731
    writer_pool = MHAHostPoolStandIn(seed=1)
    writer = make_backend(writer_pool, extra=extra("ckpt-2024-01"), model_name=SERVED_NAME)
    write_pages(writer, writer_pool, keys)

    other_pool = MHAHostPoolStandIn(seed=2)
    assert_misses(make_backend(other_pool, extra=extra("ckpt-2024-02"), model_name=SERVED_NAME), other_pool, keys)
    same_pool = MHAHostPoolStandIn(seed=3)
    same = make_backend(same_pool, extra=extra("ckpt-2024-01"), model_name=SERVED_NAME)
    assert_reads_the_writers_bytes(same, same_pool, writer_pool, keys)


def test_fp8_e4m3_and_fp8_e5m2_pages_are_not_shared_though_both_are_uint8(make_backend, page_keys, publish):
    keys = page_keys("fp8", PAGES)
    e4m3_pool = MHAHostPoolStandIn(dtype=torch.uint8, seed=1)
    publish(args(kv_cache_dtype="fp8_e4m3"))
    e4m3 = make_backend(e4m3_pool, model_name=SERVED_NAME)
    write_pages(e4m3, e4m3_pool, keys)

    publish(args(kv_cache_dtype="fp8_e5m2"))
    e5m2_pool = MHAHostPoolStandIn(dtype=torch.uint8, seed=2)
    e5m2 = make_backend(e5m2_pool, model_name=SERVED_NAME)
    assert e5m2_pool.dtype == e4m3_pool.dtype == torch.uint8
    assert_misses(e5m2, e5m2_pool, keys)

    publish(args(kv_cache_dtype="fp8_e4m3"))
    same_pool = MHAHostPoolStandIn(dtype=torch.uint8, seed=3)
    assert_reads_the_writers_bytes(make_backend(same_pool, model_name=SERVED_NAME), same_pool, e4m3_pool, keys)


def test_mla_ranks_of_one_server_share_the_writers_pages(make_backend, page_keys, publish):
    publish(args())
    keys = page_keys("mla ranks", PAGES)
    writer_pool = MLAHostPoolStandIn(seed=1)
    writer = make_backend(writer_pool, model_name=SERVED_NAME, is_mla_model=True, tp_size=2, tp_rank=0)
    write_pages(writer, writer_pool, keys)
    reader_pool = MLAHostPoolStandIn(seed=2)
    reader = make_backend(reader_pool, model_name=SERVED_NAME, is_mla_model=True, tp_size=2, tp_rank=1)
    assert reader.cache_identity.namespace_name == writer.cache_identity.namespace_name
    assert_reads_the_writers_bytes(reader, reader_pool, writer_pool, keys)


def test_mha_tp_ranks_share_the_identity_not_the_pages(make_backend, page_keys, publish):
    publish(args())
    keys = page_keys("mha ranks", PAGES)
    rank0_pool = MHAHostPoolStandIn(seed=1)
    rank0 = make_backend(rank0_pool, model_name=SERVED_NAME, tp_size=2, tp_rank=0)
    write_pages(rank0, rank0_pool, keys)
    rank1_pool = MHAHostPoolStandIn(seed=2)
    rank1 = make_backend(rank1_pool, model_name=SERVED_NAME, tp_size=2, tp_rank=1)
    assert rank1.cache_identity.identity_name == rank0.cache_identity.identity_name
    assert_misses(rank1, rank1_pool, keys)  # rank 1 holds other heads


def test_a_new_weight_version_moves_the_backend_to_a_new_namespace(make_backend, page_keys, publish, monkeypatch):
    publish(args())
    version = {"now": "step-1"}
    # SGLang's weight-update calls move the published weight version (Scheduler.record_weight_version_change).
    monkeypatch.setattr(runtime_context, "get_serving", lambda: SimpleNamespace(weight_version=version["now"]))
    keys = page_keys("weight version", PAGES)
    pool = MHAHostPoolStandIn(seed=1)
    backend = make_backend(pool, model_name=SERVED_NAME)
    write_pages(backend, pool, keys)
    assert backend.batch_exists(keys, info([])) == PAGES
    before = backend.cache_identity.namespace_name

    version["now"] = "step-2"
    assert backend.batch_exists(keys, info([])) == 0  # pages of the old weights are not served
    assert backend.cache_identity.namespace_name != before
    version["now"] = "step-1"
    assert backend.batch_exists(keys, info([])) == PAGES


def test_an_unknown_identity_is_logged_once_and_still_works(make_backend, page_keys, publish, caplog):
    publish(None)
    caplog.set_level(logging.INFO, logger="raylsm.sglang.identity")
    keys = page_keys("unknown", PAGES)
    writer_pool = MHAHostPoolStandIn(seed=1)
    writer = make_backend(writer_pool, model_name=SERVED_NAME)
    reader_pool = MHAHostPoolStandIn(seed=2)
    reader = make_backend(reader_pool, model_name=SERVED_NAME)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                and r.name == "raylsm.sglang.identity"]
    assert len(warnings) == 1 and "CACHE IDENTITY UNKNOWN" in warnings[0] and "model_fingerprint" in warnings[0]
    assert not writer.cache_identity.weights_known
    write_pages(writer, writer_pool, keys)  # served-name namespacing, as before: correct for one model per name
    assert_reads_the_writers_bytes(reader, reader_pool, writer_pool, keys)


def test_a_malformed_model_fingerprint_fails_the_attach(tier, sglang_env):
    from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory

    from raylsm.errors import ConfigError

    config = sglang_env.storage_config(model_name=SERVED_NAME,
                                       extra={**sglang_env.base_extra, "model_fingerprint": 42})
    with pytest.raises(ConfigError, match="model_fingerprint"):
        StorageBackendFactory.create_backend("dynamic", config, MHAHostPoolStandIn())


# ---- ranks share a fate (issue 9) ---------------------------------------------------------------------


def test_every_tp_ranks_copy_of_a_page_is_routed_to_one_shard(make_backend, page_keys):
    """Eight MHA TP ranks: eight index namespaces (their heads differ) but one routing namespace, so
    on an 8-shard ring every page's eight copies are on one shard; each rank still reads its own bytes."""
    from raylsm.router import HashRing

    pools = [MHAHostPoolStandIn(seed=10 + rank) for rank in range(8)]
    backends = [make_backend(pool, model_name="tests/rank-fate", tp_rank=rank, tp_size=8)
                for rank, pool in enumerate(pools)]
    assert len({backend.raylsm_stats()["namespace"] for backend in backends}) == 8
    assert len({backend.raylsm_stats()["routing_namespace"] for backend in backends}) == 1
    eight_shards = HashRing([f"shard-disk{i}-0" for i in range(8)], 128, 1)
    spread = 0
    for chain_index in range(40):
        chain = [bytes.fromhex(key) for key in page_keys(("rank fate", chain_index), 24)]
        placements = []
        for backend in backends:
            client = backend._client
            real_ring, client._ring = client._ring, eight_shards
            try:
                routed = client._route(backend._ns(), chain, [])
            finally:
                client._ring = real_ring
            placements.append({shard: tuple(slots) for shard, slots in routed.groups.items()})
        assert all(placement == placements[0] for placement in placements), f"chain {chain_index}"
        spread += len(placements[0])
    assert spread > 40  # the chains do spread over the shards: the check above is not trivial
    # Each rank stores and reads its own heads under its own key.
    keys = page_keys("rank fate, bytes", 4)
    for backend, pool in zip(backends[:2], pools[:2]):
        write_pages(backend, pool, keys)
    for backend, pool in zip(backends[:2], pools[:2]):
        assert_reads_the_writers_bytes(backend, pool, pool, keys)
    assert pools[0].page_bytes(0) != pools[1].page_bytes(0)
