"""Property test: random puts, gets, probes, deletes, reopens and (with a small budget) evictions
against a plain dict model.

Without eviction the model is exact: every put key is a hit with the bytes first stored, probe counts
are exact. With eviction the store may have lost any page, so the invariant is: a hit returns exactly
bytes that were put for that key and not deleted since; a key never put, or deleted and not put
again, is a miss; disk use stays within the budget plus one segment."""

from __future__ import annotations

import dataclasses
import gc
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from raylsm.store import ShardStore, StoreConfig
from raylsm.store import page_key

KiB = 1 << 10
MiB = 1 << 20
NAMESPACE = page_key.namespace_id("model")


def _chain(name: str, length: int, extent_pages: int, parent: list[bytes] | None = None, shared: int = 0):
    import hashlib
    keys, hashes = [], []
    for depth in range(length):
        if depth < shared:
            keys.append(parent[depth])
            hashes.append(page_key.decode(parent[depth]).page_hash)
            continue
        h = hashlib.sha256(f"{name}/{depth}/{hashes[-1].hex() if hashes else ''}".encode()).digest()
        hashes.append(h)
        keys.append(page_key.encode(NAMESPACE, hashes[extent_pages * (depth // extent_pages)], depth, h))
    return keys


CHAIN_A = _chain("a", 8, 4)
CHAIN_B = _chain("b", 8, 4, parent=CHAIN_A, shared=2)  # branches inside the first extent
CHAIN_C = _chain("c", 6, 1)  # no locality: one page per extent
CHAINS = [CHAIN_A, CHAIN_B, CHAIN_C]
POOL = sorted({k for chain in CHAINS for k in chain})
NEVER_PUT = [page_key.encode(NAMESPACE, bytes([i]) * 32, 0, bytes([i]) * 32) for i in range(3)]


@pytest.fixture(autouse=True, scope="module")
def cheap_full_collections():
    """ShardStore.close runs gc.collect (to release RocksDB iterators); freezing the objects that
    exist before the machines run keeps each of those collections from walking the whole session."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


class StoreModel(RuleBasedStateMachine):
    EVICTING = False
    CONFIG = StoreConfig(segment_bytes=1 * MiB, capacity_bytes=64 * MiB, block_cache_bytes=1 * MiB,
                         write_buffer_bytes=1 * MiB, background_reclaim=False)
    MAX_PAGE = 24 * KiB

    def __init__(self):
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="raylsm-model-")
        self.store = None
        self.model: dict[bytes, set[bytes]] = {}  # key -> bytes it may hold (exactly one without eviction)
        self.seed = 0
        self.fillers = 0
        self.reopens = 0

    @initialize()
    def open_store(self):
        self.store = ShardStore.open(self.root, self.CONFIG)

    def teardown(self):
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def _value(self, size: int) -> np.ndarray:
        self.seed += 1
        return np.random.default_rng(self.seed).integers(0, 256, size, dtype=np.uint8)

    # ---- rules ----------------------------------------------------------------------------------

    @rule(keys=st.lists(st.sampled_from(POOL), min_size=1, max_size=8),
          sizes=st.lists(st.integers(1, MAX_PAGE), min_size=8, max_size=8))
    def put(self, keys, sizes):
        values = [self._value(size) for size in sizes[: len(keys)]]
        assert self.store.put_batch(keys, values) == [True] * len(keys)
        first = {}
        for key, value in zip(keys, values):
            first.setdefault(key, value.tobytes())
        for key, value in first.items():
            if key not in self.model:
                self.model[key] = {value}
            elif self.EVICTING:
                self.model[key] = self.model[key] | {value}  # present (kept) or evicted (rewritten)

    @rule(keys=st.lists(st.sampled_from(POOL + NEVER_PUT), min_size=1, max_size=12))
    def get(self, keys):
        for key, got in zip(keys, self.store.get_batch(keys)):
            self._check(key, None if got is None else got.tobytes())

    @rule(keys=st.lists(st.sampled_from(POOL), min_size=1, max_size=6, unique=True))
    def get_into(self, keys):
        raws = self.store.locate_batch(keys)[2]
        outs = [np.full(p.length if p else 1, 0xEE, np.uint8) for p in raws]
        results = self.store.get_batch_into(keys, outs)
        for key, ok, out, pointer in zip(keys, results, outs, raws):
            self._check(key, out.tobytes() if ok else None)
            if not ok and pointer is not None:
                assert (out == 0xEE).all() or (out == 0).all()

    def _check(self, key: bytes, got: bytes | None):
        if key not in self.model:
            assert got is None, "a key never put (or deleted) was a hit"
        elif got is None:
            assert self.EVICTING, "a stored key was a miss without eviction"
        else:
            assert got in self.model[key], "a hit returned bytes never put for this key"
            self.model[key] = {got}

    @rule(chain=st.sampled_from(CHAINS), start=st.integers(0, 3))
    def probe(self, chain, start):
        keys = chain[start:]
        count = self.store.probe(keys)
        expected = 0
        while expected < len(keys) and keys[expected] in self.model:
            expected += 1
        if self.EVICTING:
            assert count <= expected
        else:
            assert count == expected

    @rule(keys=st.lists(st.sampled_from(POOL + NEVER_PUT), min_size=1, max_size=6, unique=True))
    def delete(self, keys):
        deleted = self.store.delete_batch(keys)
        present = sum(1 for key in keys if key in self.model)
        if self.EVICTING:
            assert deleted <= present
        else:
            assert deleted == present
        for key in keys:
            self.model.pop(key, None)

    @precondition(lambda self: self.reopens < 1)  # each RocksDB open+close costs ~40 ms
    @rule()
    def reopen(self):
        self.reopens += 1
        self.store.close()
        self.store = ShardStore.open(self.root, self.CONFIG)
        assert self.store.recovery.clean_shutdown and self.store.recovery.dropped_pointers == 0

    # ---- invariants -----------------------------------------------------------------------------

    @invariant()
    def disk_within_budget(self):
        if self.store is None:
            return
        space = self.store.stats()["space"]
        assert space["disk_bytes"] <= self.CONFIG.capacity_bytes + self.CONFIG.segment_bytes
        if not self.EVICTING:
            assert self.store.stats()["counters"]["evicted_segments"] == 0


class EvictingStoreModel(StoreModel):
    EVICTING = True
    CONFIG = StoreConfig(segment_bytes=1 * MiB, capacity_bytes=4 * MiB, block_cache_bytes=1 * MiB,
                         write_buffer_bytes=1 * MiB, background_reclaim=False)
    MAX_PAGE = 64 * KiB

    @rule(keys=st.lists(st.sampled_from(POOL), min_size=1, max_size=8),
          sizes=st.lists(st.integers(4 * KiB, 64 * KiB), min_size=8, max_size=8))
    def put(self, keys, sizes):
        super().put(keys, sizes)

    @rule(n=st.integers(1, 24))
    def flood(self, n):
        """Fresh pages nobody reads: they push the pool's pages toward eviction."""
        keys = []
        for _ in range(n):
            self.fillers += 1
            h = self.fillers.to_bytes(32, "big")
            keys.append(page_key.encode(NAMESPACE, h, 0, h))
        assert self.store.put_batch(keys, [self._value(64 * KiB) for _ in keys]) == [True] * n

    @precondition(lambda self: self.store is not None)
    @invariant()
    def disk_files_within_budget(self):
        import os
        directory = os.path.join(self.root, "segments")
        total = sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory))
        assert total <= self.CONFIG.capacity_bytes + self.CONFIG.segment_bytes


_HAS_RESIDENT_INDEX = "resident_index" in {f.name for f in dataclasses.fields(StoreConfig)}


class IndexOnlyStoreModel(StoreModel):
    """The same model with probes and put's presence check answered by RocksDB, not a resident set."""
    CONFIG = (dataclasses.replace(StoreModel.CONFIG, resident_index=False) if _HAS_RESIDENT_INDEX
              else StoreModel.CONFIG)


_SETTINGS = settings(max_examples=30, stateful_step_count=30, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = _SETTINGS
TestEvictingStoreModel = EvictingStoreModel.TestCase
TestEvictingStoreModel.settings = _SETTINGS
if _HAS_RESIDENT_INDEX:
    TestIndexOnlyStoreModel = IndexOnlyStoreModel.TestCase
    TestIndexOnlyStoreModel.settings = _SETTINGS
