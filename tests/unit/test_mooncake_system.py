"""Mooncake Store as a bench system: a real `mooncake_master` on localhost and SGLang's own
`MooncakeStore` over a `MiniHostKVPool` (raylsm.bench.mooncake). No mocks, no Ray.

Skipped, with the reason `mooncake_unavailable()` gives, where Mooncake cannot run (install it with
`make bench-deps`). One master serves the whole module (~1 s to start); SGLang's import is ~10 s.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time

import pytest

from raylsm.bench import mooncake, mooncake_master
from raylsm.bench.host_pool import MiniHostKVPool, PagePattern

PAGE_TOKENS = 16
LAYERS, HEADS, HEAD_DIM = 4, 4, 64  # bf16: 64 KiB pages, two 32 KiB objects each
BATCH = 128  # SGLang's pages per backend call
POOL_PAGES = 2 * BATCH  # one batch to write from, one to read into
SEGMENT_BYTES = mooncake.MIN_SEGMENT_BYTES  # 16 MiB: 256 pages


@pytest.fixture(scope="module")
def runnable():
    reason = mooncake.mooncake_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def master(runnable, tmp_path_factory):
    with mooncake.MooncakeMaster(tmp_path_factory.mktemp("mooncake")) as running:
        yield running


@pytest.fixture(scope="module")
def pool():
    import torch

    return MiniHostKVPool(POOL_PAGES * PAGE_TOKENS, PAGE_TOKENS, LAYERS, HEADS, HEAD_DIM, torch.bfloat16)


@pytest.fixture(scope="module")
def shared_system(master, pool):
    # One client for the module: closing one takes ~2 s (it unmounts its segment from the master).
    built = mooncake.MooncakeSystem(pool, "test-mooncake-system", master, capacity_bytes=SEGMENT_BYTES)
    yield built
    built.close()


@pytest.fixture
def system(shared_system):
    shared_system.clear()
    return shared_system


def page_keys(start: int, count: int, salt: str = "") -> list[bytes]:
    return [hashlib.sha256(f"{salt}{index}".encode()).digest() for index in range(start, start + count)]


def write(system, pattern: PagePattern, keys: list[bytes], prefix: list[str]) -> bool:
    """One backup call: the pages' payloads into slots 0.., then set()."""
    slots = list(range(len(keys)))
    pattern.fill(system.pool, slots, keys)
    return system.set([key.hex() for key in keys], prefix, slots)


def read(system, pattern: PagePattern, keys: list[bytes]) -> tuple[int, int]:
    """One prefetch call into poisoned slots BATCH..: (pages loaded, wrong pages among them)."""
    slots = list(range(BATCH, BATCH + len(keys)))
    pattern.poison(system.pool, slots)
    loaded = system.get([key.hex() for key in keys], [], slots)
    return loaded, pattern.wrong_pages(system.pool, slots[:loaded], keys[:loaded])


def test_unavailable_is_none_here(runnable):
    assert mooncake.mooncake_unavailable() is None


def test_round_trip_counts_leading_pages_and_returns_the_same_bytes(system, pool):
    pattern = PagePattern(pool.page_bytes)
    keys = page_keys(0, BATCH)
    hexes = [key.hex() for key in keys]
    assert system.exists(hexes, []) == 0
    assert write(system, pattern, keys, [])
    assert system.exists(hexes, []) == BATCH
    assert read(system, pattern, keys) == (BATCH, 0)

    # A miss ends the count: 10 present pages, an absent one, then present ones again.
    absent = page_keys(0, 1, salt="absent")
    mixed = keys[:10] + absent + keys[10:20]
    assert system.exists([key.hex() for key in mixed], []) == 10
    assert read(system, pattern, mixed) == (10, 0)

    # Writing a page again is a success (SGLang skips pages already stored), and leaves it intact.
    assert write(system, pattern, keys[:5], [])
    assert read(system, pattern, keys[:5]) == (5, 0)

    stats = system.stats()
    assert stats["segment_bytes"] == SEGMENT_BYTES
    assert stats["objects"] >= 2 * BATCH  # K and V of every page


def test_more_data_than_capacity_evicts_and_never_returns_wrong_bytes(system, pool):
    pattern = PagePattern(pool.page_bytes)
    written = 4 * SEGMENT_BYTES // pool.page_bytes  # 1,024 pages into a pool of 256
    keys = page_keys(0, written, salt="overflow")
    outcomes = [write(system, pattern, keys[start:start + BATCH], [key.hex() for key in keys[:start]])
                for start in range(0, written, BATCH)]
    assert outcomes[0]  # the first batch fits
    time.sleep(0.1)  # let the master's eviction thread (10 ms period) settle

    present = [system.exists([key.hex()], []) for key in keys]
    assert 0 < sum(present) < written
    stats = system.stats()
    assert stats["evicted_objects"] > 0 or stats["put_alloc_failures"] > 0
    assert stats["allocated_bytes"] <= SEGMENT_BYTES

    survivors = [key for key, hit in zip(keys, present) if hit]
    loaded = wrong = 0
    for start in range(0, len(survivors), BATCH):
        got, bad = read(system, pattern, survivors[start:start + BATCH])
        loaded += got
        wrong += bad
    assert wrong == 0
    assert loaded == len(survivors)  # each was present a moment ago and leased by that exists()


def test_master_and_its_process_group_are_gone_after_the_block_even_when_it_raises(runnable, tmp_path):
    with pytest.raises(KeyError):
        with mooncake.MooncakeMaster(tmp_path) as running:
            process = running.process
            assert running.running and mooncake_master._accepts(running.rpc_port)
            assert running.metrics().get("master_key_count") == 0
            # What a replica process gets: plain, picklable addresses of this master.
            kwargs = pickle.loads(pickle.dumps(running.client_kwargs(SEGMENT_BYTES)))
            assert kwargs == {"master": running.endpoints(), "capacity_bytes": SEGMENT_BYTES,
                              "segment_bytes": SEGMENT_BYTES}
            assert kwargs["master"].metrics().get("master_key_count") == 0
            assert "eviction high watermark 0.95" in running.describe()
            raise KeyError("boom")
    assert process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)
    assert not running.running
    assert (tmp_path / mooncake.MooncakeMaster.LOG_NAME).stat().st_size > 0


def test_segment_below_mooncakes_minimum_is_refused(master, pool):
    with pytest.raises(ValueError, match="at least"):
        mooncake.MooncakeSystem(pool, "test-small", master, capacity_bytes=SEGMENT_BYTES - 1)
