"""RayLSMStorage driven through SGLang's own host pools and cache controller, on CPU.

SGLang's real classes, built the way its assembler builds them (hybrid_pool_assembler.build_kv_host_pool),
from real device pools (`MHATokenToKVPool`, `MLATokenToKVPool` on device "cpu"):
- `MHATokenToKVPoolHost` in every layout with a zero-copy page map (layer_first, page_first,
  page_first_direct, page_head) and `MLATokenToKVPoolHost` in its three (layer_first, page_first,
  page_first_direct): pages written with batch_set_v1 from random KV come back byte-equal, per page,
  into other slots, and nothing outside those slots is touched;
- `HybridCacheController` (what a 0.5.23 server builds, over a `HostPoolGroup`) and the base
  `HiCacheController`: their backup thread writes pages, their prefetch threads query and read them
  back into host slots the controller allocates;
- a contract test holding the stand-ins of host_pool.py to the real classes on everything the adapter
  and the controller's storage paths use.

Departures from a GPU server, all outside the storage path (docs/install.md says why):
`pin_memory=False` (pinning is cudaHostRegister), page keys computed with a hashlib port of SGLang's
page hash (its native one is compiled on first use and needs OpenSSL headers), the parallel context
set for TP 1 (a scheduler publishes it), and the scheduler's part of a prefetch played by the test.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
import threading
import warnings
from types import SimpleNamespace
from typing import Any

import pytest

from raylsm.bench.cpu_torchvision import import_torchvision
import torch

from host_pool import MHAHostPoolStandIn, MLAHostPoolStandIn, fill_random
from raylsm.sglang.host_pages import HostPageViews

PAGE = 16
LAYERS = 4
HEADS, HEAD_DIM = 2, 64
KV_LORA_RANK, ROPE_DIM = 96, 32  # MLA row: 128 values
DEVICE_TOKENS = 128  # the device pool; the host pool is 2x that plus SGLang's padding page
PAGES = 6

MHA_LAYOUTS = ["layer_first", "page_first", "page_first_direct", "page_head"]
MLA_LAYOUTS = ["layer_first", "page_first", "page_first_direct"]
ROUND_TRIPS = [("mha", layout) for layout in MHA_LAYOUTS] + [("mla", layout) for layout in MLA_LAYOUTS]

# The user's extra config (as in conftest.BASE_EXTRA), before SGLang strips its own keys from it.
USER_EXTRA = {
    "backend_name": "raylsm", "module_path": "raylsm.sglang.backend", "class_name": "RayLSMStorage",
    "interface_v1": 1, "hicache_storage_pass_prefix_keys": True, "call_timeout_s": 10.0, "ring_refresh_s": 0.5,
    "extent_pages": 4,
}

@pytest.fixture(scope="module")
def sglang():
    """SGLang's pool, allocator and controller modules, imported as on a server (transformers,
    torchvision and the rest installed by `make venv`)."""
    try:
        import_torchvision()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Only CUDA ... support AWQ/GGUF" from sglang.srt.layers
            from sglang.srt.managers import cache_controller
            from sglang.srt.mem_cache import memory_pool
            from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
            from sglang.srt.mem_cache.base_prefix_cache import CacheRequestHandle
            from sglang.srt.mem_cache.hicache_storage import PoolName
            from sglang.srt.mem_cache.hybrid_cache import hybrid_cache_controller
            from sglang.srt.mem_cache.hybrid_cache.hybrid_pool_assembler import build_pool_entry
            from sglang.srt.mem_cache.pool_host import HostPoolGroup
            from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost, get_mha_host_pool_cls
            from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost
            from sglang.srt.runtime_context import get_parallel
    except ImportError as error:
        pytest.fail(f"SGLang's host pools do not import ({error!r}): rebuild .venv with `make venv` "
                    "(docs/install.md, \"SGLang's storage classes on CPU\")")
    return SimpleNamespace(
        cache_controller=cache_controller, memory_pool=memory_pool, hybrid_cache_controller=hybrid_cache_controller,
        PagedTokenToKVPoolAllocator=PagedTokenToKVPoolAllocator, CacheRequestHandle=CacheRequestHandle,
        PoolName=PoolName, build_pool_entry=build_pool_entry, HostPoolGroup=HostPoolGroup,
        MHATokenToKVPoolHost=MHATokenToKVPoolHost, get_mha_host_pool_cls=get_mha_host_pool_cls,
        MLATokenToKVPoolHost=MLATokenToKVPoolHost, get_parallel=get_parallel)


# ---- SGLang's pools, built as its assembler builds them --------------------------------------------


def mha_device_pool(sglang):
    return sglang.memory_pool.MHATokenToKVPool(
        size=DEVICE_TOKENS, page_size=PAGE, dtype=torch.bfloat16, head_num=HEADS, head_dim=HEAD_DIM,
        layer_num=LAYERS, device="cpu", enable_memory_saver=False, enable_alt_stream=False)


def mla_device_pool(sglang):
    return sglang.memory_pool.MLATokenToKVPool(
        size=DEVICE_TOKENS, page_size=PAGE, dtype=torch.bfloat16, kv_lora_rank=KV_LORA_RANK,
        qk_rope_head_dim=ROPE_DIM, layer_num=LAYERS, device="cpu", enable_memory_saver=False)


def host_pool_for(sglang, device_pool, layout: str, **sizing):
    """SGLang's host pool for `device_pool`, with the arguments build_kv_host_pool passes (ratio 2.0,
    no fixed size), except pin_memory=False. `sizing` may fix host_token_capacity."""
    info = device_pool.get_device_pool_infos()[0].buffer_info
    common = dict(device_capacity_tokens=device_pool.size, start_layer=device_pool.start_layer,
                  end_layer=device_pool.end_layer, draft_buffer_infos=(), pin_memory=False, device="cpu",
                  **sizing)
    if isinstance(device_pool, sglang.memory_pool.MLATokenToKVPool):
        return sglang.MLATokenToKVPoolHost(info, 2.0, 0, PAGE, layout, override_kv_cache_dim=device_pool.kv_cache_dim,
                                           layer_shard_enabled=device_pool.layer_shard_enabled,
                                           target_layer_num=device_pool.layer_num, **common)
    cls = sglang.get_mha_host_pool_cls(info)
    assert cls is sglang.MHATokenToKVPoolHost
    return cls(info, 2.0, 0, PAGE, layout, write_back_staging=device_pool.hicache_write_back_staging, **common)


def real_pool(sglang, kind: str, layout: str, **sizing):
    device = mha_device_pool(sglang) if kind == "mha" else mla_device_pool(sglang)
    return device, host_pool_for(sglang, device, layout, **sizing)


def page_bytes(pool, slot: int) -> bytes:
    """One page's bytes in SGLang's own page view (`get_data_page`, the generic path's unit)."""
    return pool.get_data_page(slot, flat=True).contiguous().view(torch.uint8).numpy().tobytes()


def page_slots(indices: torch.Tensor) -> list[int]:
    return indices[::PAGE].tolist()


def shuffled_pages(indices: torch.Tensor, seed: int) -> torch.Tensor:
    """The same token slots with their pages in another order (the allocator's free list is not sorted)."""
    pages = list(indices.split(PAGE))
    random.Random(seed).shuffle(pages)
    return torch.cat(pages)


def extra_info(prefix):
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageExtraInfo
    return HiCacheStorageExtraInfo(prefix_keys=list(prefix))


# ---- the layouts SGLang's classes support on CPU ------------------------------------------------------


def test_sglang_zero_copy_page_maps_exist_for_exactly_the_tested_layouts(sglang):
    """Guards the parametrization: a layout SGLang adds a zero-copy page map for must be tested here."""
    mapped = {}
    for kind, candidates in (("mha", MHA_LAYOUTS + ["page_unified", "page_first_kv_split"]),
                             ("mla", MLA_LAYOUTS + ["page_head", "page_unified"])):
        for layout in candidates:
            try:
                _, pool = real_pool(sglang, kind, layout)
                pool.get_page_buffer_meta(torch.arange(PAGE, dtype=torch.int64))
            except Exception:  # SGLang refuses the layout for this pool, or has no page map for it
                continue
            mapped.setdefault(kind, []).append(layout)
    assert mapped == {"mha": MHA_LAYOUTS, "mla": MLA_LAYOUTS}


# ---- v1 zero-copy through the real pools ----------------------------------------------------------


@pytest.mark.parametrize("kind, layout", ROUND_TRIPS)
def test_pages_round_trip_byte_equal_through_sglang_host_pools(sglang, make_backend, page_keys, kind, layout):
    _, pool = real_pool(sglang, kind, layout)
    fill_random(pool.kv_buffer, seed=7)
    backend = make_backend(pool, is_mla_model=kind == "mla")  # SGLang's factory, then register_mem_pool_host
    assert layout in backend.raylsm_stats()["namespace"]

    source = shuffled_pages(pool.alloc(PAGES * PAGE), seed=1)  # SGLang's own slot allocator
    target = shuffled_pages(pool.alloc(PAGES * PAGE), seed=2)
    expected = [page_bytes(pool, slot) for slot in page_slots(source)]
    assert len(set(expected)) == PAGES and all(len(page) == pool.get_size_per_token() * PAGE for page in expected)
    keys = page_keys(("real pool", kind, layout), PAGES)

    # The backup thread writes a chain in chunks, its prefix growing.
    assert backend.batch_set_v1(keys[:4], source[:4 * PAGE], extra_info([])) == [True] * 4, backend.raylsm_stats()
    assert backend.batch_set_v1(keys[4:], source[4 * PAGE:], extra_info(keys[:4])) == [True] * 2
    pool.kv_buffer.zero_()  # the host copy is gone: what comes back comes from the tier
    assert backend.batch_exists(keys, extra_info([])) == PAGES
    assert backend.batch_get_v1(keys, target, extra_info([])) == [True] * PAGES, backend.raylsm_stats()

    for index, slot in enumerate(page_slots(target)):
        assert page_bytes(pool, slot) == expected[index], f"page {index} ({layout})"
        pool.set_from_flat_data_page(slot, pool.get_dummy_flat_data_page())
    assert not pool.kv_buffer.view(torch.uint8).any(), "bytes landed outside the target pages"
    assert backend.raylsm_stats()["adapter_errors"] == {}


# ---- SGLang's cache controller: backup and prefetch threads ---------------------------------------


def sglang_page_hashes(tokens, prior_hash=None, page_size=PAGE):
    """A hashlib port of SGLang's get_storage_hash_str for token ids < 2**32 and no namespace seed:
    d_i = SHA256(d_{i-1} raw (none for the first page) || the page's token ids as uint32 LE)."""
    tokens = list(getattr(tokens, "token_ids", tokens))
    previous = bytes.fromhex(prior_hash) if prior_hash else b""
    hashes = []
    for start in range(0, len(tokens), page_size):
        page = tokens[start:start + page_size]
        previous = hashlib.sha256(previous + struct.pack(f"<{len(page)}I", *page)).digest()
        hashes.append(previous.hex())
    return hashes


class ControllerUnderTest:
    """One SGLang cache controller attached to RayLSMStorage through the `dynamic` backend, as the
    scheduler attaches it: the extra config parsed by SGLang, storage threads running."""

    def __init__(self, sglang, kind: str, layout: str, controller: str, model_name: str):
        self.device_pool, self.host_pool = real_pool(sglang, kind, layout)
        allocator = sglang.PagedTokenToKVPoolAllocator(DEVICE_TOKENS, PAGE, torch.bfloat16, "cpu",
                                                        self.device_pool, need_sort=False)
        extra, threshold, _, _, self.pass_prefix_keys = \
            sglang.hybrid_cache_controller.HybridCacheController.parse_storage_backend_extra_config(
                json.dumps(USER_EXTRA))
        if controller == "hybrid":
            host = sglang.HostPoolGroup([sglang.build_pool_entry(
                name=sglang.PoolName.KV, host_pool=self.host_pool, device_pool=self.device_pool,
                layer_mapping={layer: layer for layer in range(LAYERS)}, transfer_layer_id_max=LAYERS,
                is_anchor=True)])
            cls = sglang.hybrid_cache_controller.HybridCacheController
        else:
            host, cls = self.host_pool, sglang.cache_controller.HiCacheController
        self.handle_class = sglang.CacheRequestHandle if controller == "hybrid" else None
        self.controller = cls(allocator, host, PAGE, None, threading.Event(), write_policy="write_through",
                              io_backend="kernel", storage_backend="dynamic", prefetch_threshold=threshold,
                              model_name=model_name, storage_backend_extra_config=extra)

    def backup(self, slots: torch.Tensor, tokens: list[int], keys: list[str], prefix: list[str]) -> int:
        """write_storage, then the backup thread's ack: the tokens it stored."""
        operation_id = self.controller.write_storage(slots, tokens, hash_value=keys, prefix_keys=prefix)
        operation = self.controller.ack_backup_queue.get(timeout=60)
        assert operation.id == operation_id
        return operation.completed_tokens

    def prefetch(self, tokens: list[int], last_hash: str | None, prefix: list[str]) -> tuple[int, Any, int]:
        """prefetch of the tokens after a host-matched prefix (its keys, the last one `last_hash`), then
        what the scheduler does with the hit: (tokens hit, host slots read into, tokens read)."""
        request = self.handle_class("rid", 0) if self.handle_class else "rid"
        self.controller.prefetch(request, tokens, last_hash, prefix if self.pass_prefix_keys else None)
        operation = self.controller.prefetch_hit_queue.get(timeout=60)
        hit = operation.storage_hit_count
        if hit == 0:
            return 0, None, 0
        slots = self.controller.alloc_prefetch_host_buffers(operation, hit)
        operation.host_indices = slots
        self.controller.prefetch_buffer.put(operation)
        completed = 0
        while True:
            ack = self.controller.ack_prefetch_queue.get(timeout=60)
            if ack.completed_tokens is not None:
                completed = ack.completed_tokens
            if ack.completed_req:
                return hit, slots, completed

    def close(self) -> None:
        self.controller.detach_storage_backend()


@pytest.fixture
def controllers(sglang, monkeypatch):
    """make(kind, layout, controller) -> ControllerUnderTest; detached at teardown. The parallel
    context a scheduler publishes is set for TP 1 (attach and the storage config read it)."""
    monkeypatch.setattr(sglang.hybrid_cache_controller, "get_storage_hash_str", sglang_page_hashes)
    monkeypatch.setattr(sglang.cache_controller, "get_storage_hash_str", sglang_page_hashes)
    made: list[ControllerUnderTest] = []
    with sglang.get_parallel().override(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_dcp_rank=0,
                                        attn_dcp_size=1):
        def make(*args: Any, **kwargs: Any) -> ControllerUnderTest:
            made.append(ControllerUnderTest(sglang, *args, **kwargs))
            return made[-1]
        yield make
        for controller in made:
            controller.close()


CONTROLLED = [("mha", "page_first", "hybrid"), ("mha", "layer_first", "hybrid"), ("mha", "page_head", "hybrid"),
              ("mla", "page_first", "hybrid"), ("mha", "page_first", "base")]

# NOTE: SGLang 0.5.23's HybridCacheController._storage_hit_query sends `prefix_keys=None` to
# batch_exists when the request's prefix is empty (`operation.prefix_keys.copy() if
# operation.prefix_keys else None`), while its backup and read paths send `[]`. RayLSMStorage takes
# None as [] once prefix keys are on (found by these tests: before, only a sequence's first page hit).


def backed_up_sequence(under_test: ControllerUnderTest) -> tuple[list[int], list[str], list[bytes]]:
    """Random KV in the host pool, backed up by the controller's backup thread as two radix nodes of
    one sequence (the second with the first's keys as prefix), then dropped from the host pool.
    Returns the tokens, their page keys and each page's bytes."""
    pool = under_test.host_pool
    fill_random(pool.kv_buffer, seed=11)
    tokens = list(range(5000, 5000 + PAGES * PAGE))
    keys = sglang_page_hashes(tokens)
    source = shuffled_pages(pool.alloc(PAGES * PAGE), seed=3)
    expected = [page_bytes(pool, slot) for slot in page_slots(source)]
    assert under_test.backup(source[:4 * PAGE], tokens[:4 * PAGE], keys[:4], []) == 4 * PAGE
    assert under_test.backup(source[4 * PAGE:], tokens[4 * PAGE:], keys[4:], keys[:4]) == 2 * PAGE
    pool.kv_buffer.zero_()
    return tokens, keys, expected


@pytest.mark.parametrize("kind, layout, controller", CONTROLLED)
def test_sglang_controller_backs_up_pages_and_prefetches_the_continuation_of_a_host_prefix(
        tier, controllers, request, kind, layout, controller):
    under_test = controllers(kind, layout, controller, model_name=f"tests/{request.node.name}")
    backend = under_test.controller.storage_backend
    assert type(backend).__name__ == "RayLSMStorage"
    assert under_test.controller.page_set_func == under_test.controller._page_set_zero_copy  # interface_v1
    tokens, keys, expected = backed_up_sequence(under_test)

    # Pages 0-1 matched in the host pool; the rest of the prompt (and two pages never stored) from L3.
    unstored = list(range(9000, 9000 + 2 * PAGE))
    hit, slots, completed = under_test.prefetch(tokens[2 * PAGE:] + unstored, keys[1], keys[:2])
    assert hit == completed == 4 * PAGE, backend.raylsm_stats()
    for index, slot in enumerate(page_slots(slots)):
        assert page_bytes(under_test.host_pool, slot) == expected[2 + index], f"page {2 + index}"
    assert under_test.prefetch(unstored, keys[-1], keys)[0] == 0  # never stored: a miss
    assert backend.raylsm_stats()["adapter_errors"] == {}


@pytest.mark.parametrize("kind, layout, controller", CONTROLLED)
def test_sglang_controller_prefetches_a_sequence_from_its_start(tier, controllers, request, kind, layout,
                                                                controller):
    under_test = controllers(kind, layout, controller, model_name=f"tests/{request.node.name}")
    backend = under_test.controller.storage_backend
    tokens, keys, expected = backed_up_sequence(under_test)

    hit, slots, completed = under_test.prefetch(tokens + list(range(9000, 9000 + 2 * PAGE)), None, [])
    assert hit == completed == PAGES * PAGE, backend.raylsm_stats()
    for index, slot in enumerate(page_slots(slots)):
        assert page_bytes(under_test.host_pool, slot) == expected[index], f"page {index}"
    assert backend.raylsm_stats()["adapter_errors"] == {}


# ---- the stand-ins against SGLang's classes ------------------------------------------------------------


def _same_bytes(first: torch.Tensor, second: torch.Tensor) -> bool:
    return torch.equal(first.contiguous().view(torch.uint8), second.contiguous().view(torch.uint8))


@pytest.mark.parametrize("kind, layout", [("mha", "page_first"), ("mha", "layer_first"),
                                          ("mla", "page_first"), ("mla", "layer_first")])
def test_the_stand_in_host_pools_match_sglang_on_what_the_storage_path_uses(sglang, kind, layout):
    """Every member of a host pool that RayLSMStorage (host_pages.py, identity.py, get_stats) or the
    controller's storage paths (_page_*_zero_copy, _generic_page_*) read, compared on one geometry."""
    pages = 8
    _, real = real_pool(sglang, kind, layout, host_token_capacity=pages * PAGE)
    if kind == "mha":
        stand_in = MHAHostPoolStandIn(layout=layout, page_size=PAGE, pages=pages, layer_num=LAYERS, head_num=HEADS,
                                      head_dim=HEAD_DIM, dtype=torch.bfloat16)
        geometry = ("head_num", "head_dim", "v_head_dim")
    else:
        stand_in = MLAHostPoolStandIn(layout=layout, page_size=PAGE, pages=pages, layer_num=LAYERS,
                                      kv_cache_dim=KV_LORA_RANK + ROPE_DIM, dtype=torch.bfloat16)
        geometry = ("kv_cache_dim", "logical_page_size", "dcp_size")
    for name in ("layout", "page_size", "dtype", "size", "page_num", "layer_num") + geometry:
        assert getattr(stand_in, name) == getattr(real, name), name
    assert stand_in.get_size_per_token() == real.get_size_per_token()
    assert stand_in.get_ksize_per_token() == real.get_ksize_per_token()
    assert (stand_in.kv_buffer.shape, stand_in.kv_buffer.dtype, stand_in.kv_buffer.stride()) == \
        (real.kv_buffer.shape, real.kv_buffer.dtype, real.kv_buffer.stride())
    assert real.kv_buffer.is_contiguous() and stand_in.kv_buffer.is_contiguous()
    if kind == "mha":
        assert stand_in.k_buffer.shape == real.k_buffer.shape and stand_in.v_buffer.shape == real.v_buffer.shape

    # The zero-copy page map, as offsets into kv_buffer, for pages out of order.
    indices = torch.cat([torch.arange(page * PAGE, (page + 1) * PAGE) for page in (5, 0, 3)])
    (real_pointers, real_sizes), (stand_in_pointers, stand_in_sizes) = (
        real.get_page_buffer_meta(indices), stand_in.get_page_buffer_meta(indices))
    assert [p - real.kv_buffer.data_ptr() for p in real_pointers] == \
        [p - stand_in.kv_buffer.data_ptr() for p in stand_in_pointers]
    assert list(real_sizes) == list(stand_in_sizes)

    # Same bytes in, same pages out: the adapter's views and SGLang's generic page API.
    fill_random(real.kv_buffer, seed=3)
    stand_in.kv_buffer.copy_(real.kv_buffer)
    real_views = HostPageViews(real, kind == "mla").pages(indices, 3)
    stand_in_views = HostPageViews(stand_in, kind == "mla").pages(indices, 3)
    assert [[bytes(part) for part in page] for page in real_views] == \
        [[bytes(part) for part in page] for page in stand_in_views]
    for page in (5, 0, 3):
        slot = page * PAGE
        assert b"".join(bytes(part) for part in real_views[(5, 0, 3).index(page)]) == page_bytes(real, slot)
        assert _same_bytes(stand_in.get_data_page(slot, flat=True), real.get_data_page(slot, flat=True))
        assert stand_in.get_data_page(slot, flat=False).shape == real.get_data_page(slot, flat=False).shape
    dummy = real.get_dummy_flat_data_page()
    assert stand_in.get_dummy_flat_data_page().shape == dummy.shape and dummy.dtype == real.dtype
    flat = torch.empty_like(dummy)
    fill_random(flat, seed=4)
    real.set_from_flat_data_page(2 * PAGE, flat)
    stand_in.set_from_flat_data_page(2 * PAGE, flat)
    assert _same_bytes(stand_in.kv_buffer, real.kv_buffer)
