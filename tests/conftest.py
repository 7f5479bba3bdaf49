"""Fixtures shared by every test tier: small store configs, stores on temporary directories that
are closed at teardown, page keys and deterministic page values (the `kit` fixture)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from raylsm.store import ShardStore, StoreConfig
from raylsm.store import format as fmt
from raylsm.store import page_key

KiB = 1024
MiB = 1024 * KiB

# Small segments keep every test fast; RocksDB buffers at their minimum keep opens cheap.
# Eviction runs inline (at the put that rolls a segment) so that tests see it at a known step;
# tests/unit/test_background_reclaim.py covers the default, a background reclaimer.
SMALL_CONFIG = dict(segment_bytes=1 * MiB, capacity_bytes=8 * MiB, block_cache_bytes=1 * MiB,
                    write_buffer_bytes=1 * MiB, background_reclaim=False)


class Kit:
    """Stateless helpers: configs, page keys, page values, on-disk inspection."""

    KiB = KiB
    MiB = MiB
    namespace = page_key.namespace_id("tests|page_first|bf16|tp0of1")

    # capacity_bytes bounds segments and the RocksDB index together; a test's capacity is given in
    # segment bytes, and this much is added for the index of a small test store (its WAL, options,
    # manifest and info log stay well under it).
    INDEX_ALLOWANCE = 256 * KiB

    @classmethod
    def config(cls, **overrides) -> StoreConfig:
        values = {**SMALL_CONFIG, **overrides}
        values["capacity_bytes"] += cls.INDEX_ALLOWANCE
        return StoreConfig(**values)

    @staticmethod
    def page_hash(*parts: object) -> bytes:
        return hashlib.sha256(repr(parts).encode()).digest()

    def key(self, i: object, namespace: bytes | None = None) -> bytes:
        """A key without locality: extent id = page hash, depth 0."""
        h = self.page_hash("page", i)
        return page_key.encode(namespace or self.namespace, h, 0, h)

    def keys(self, n: int, start: int = 0) -> list[bytes]:
        return [self.key(i) for i in range(start, start + n)]

    def chain(self, name: object, length: int, extent_pages: int = 4, shared_with: list[bytes] | None = None,
              shared_pages: int = 0) -> list[bytes]:
        """Keys of one prompt's chain of `length` pages with extents of `extent_pages` pages. The first
        `shared_pages` keys are those of `shared_with` (another chain): the two chains branch there."""
        hashes: list[bytes] = []
        keys: list[bytes] = []
        for depth in range(length):
            if depth < shared_pages:
                keys.append(shared_with[depth])
                hashes.append(page_key.decode(shared_with[depth]).page_hash)
                continue
            h = self.page_hash("chain", name, depth, hashes[-1] if hashes else b"")
            hashes.append(h)
            anchor = hashes[extent_pages * (depth // extent_pages)]
            keys.append(page_key.encode(self.namespace, anchor, depth, h))
        return keys

    @staticmethod
    def value(seed: object, nbytes: int) -> np.ndarray:
        """Deterministic random bytes (the same in every process)."""
        digest = hashlib.sha256(repr(("value", seed)).encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        return rng.integers(0, 256, size=nbytes, dtype=np.uint8)

    @staticmethod
    def segment_files(root) -> dict[int, int]:
        """{segment id: file size} of the segment files on disk."""
        directory = os.path.join(str(root), fmt.SEGMENTS_DIR)
        found = {}
        for name in os.listdir(directory):
            segment_id = fmt.parse_segment_file_name(name)
            if segment_id is not None:
                try:
                    found[segment_id] = os.path.getsize(os.path.join(directory, name))
                except FileNotFoundError:  # freed meanwhile (a background reclaimer)
                    continue
        return found

    @staticmethod
    def segment_path(root, segment_id: int) -> str:
        return os.path.join(str(root), fmt.SEGMENTS_DIR, fmt.segment_file_name(segment_id))

    @staticmethod
    def counters(store: ShardStore) -> dict[str, int]:
        return store.stats()["counters"]

    @staticmethod
    def read_all(store: ShardStore, keys) -> list[bytes | None]:
        return [None if value is None else bytes(value) for value in store.get_batch(list(keys))]


@pytest.fixture(scope="session")
def kit() -> Kit:
    return Kit()


@pytest.fixture
def store_factory(tmp_path):
    """open_store(path=None, config=None, **config_overrides) -> an open ShardStore on a temporary
    directory (default tmp_path/"store"); every store it opened is closed at teardown."""
    opened: list[ShardStore] = []

    def open_store(path=None, config: StoreConfig | None = None, **overrides) -> ShardStore:
        store = ShardStore.open(str(path or tmp_path / "store"), config or Kit.config(**overrides))
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory):
    """An open store with 1 MiB segments and an 8 MiB budget at tmp_path/"store"."""
    return store_factory()
