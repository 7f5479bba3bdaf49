"""A minimal SGLang host KV pool (MHA, `page_first` layout) for the trace replay.

Owned here: one torch tensor `kv_buffer` of shape (2, size, layer_num, head_num, head_dim) (K and
V, token slots, layers, heads, head dim), and the part of SGLang's `MHATokenToKVPoolHost` interface
that the L3 backends use: `page_size`, `layout`, `dtype`, `size`, `get_size_per_token()`,
`get_page_buffer_meta(indices)` (the zero-copy v1 path of RayLSMStorage) and `get_data_page` /
`get_dummy_flat_data_page` / `set_from_flat_data_page` (the generic path SGLang uses for HiCacheFile).
Each method mirrors the `page_first` branch of `sglang/srt/mem_cache/pool_host/mha.py` (0.5.23):
a page's bytes are its K part then its V part, each `layer_num * page_size * head_num * head_dim *
itemsize` contiguous bytes, so both backends store and return the same bytes for a page.

Why not SGLang's class: on this CPU-only install `sglang.srt.mem_cache.pool_host.mha` cannot be
imported (it pulls transformers and torchvision). The buffer is 4096-byte aligned, as SGLang's
pinned host memory is, so O_DIRECT reads can land in it.

Also owned here: `PagePattern`, the page payloads of the replay (derived from the page key, so a page
read back can be checked byte for byte), written into and checked in the pool's page slots.

Called by the replay core (`raylsm.bench.replay`, `raylsm.bench.trace_replay`, `raylsm.bench.fleet`). Not
thread-safe (a replay drives it from one thread).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from raylsm.store.io_buffers import aligned_empty

PAGE_FIRST = "page_first"
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class MiniHostKVPool:
    """Host KV pool with SGLang's `page_first` MHA layout; `size` token slots (a multiple of page_size)."""

    layout = PAGE_FIRST
    device = "cpu"
    pin_memory = False

    def __init__(self, size: int, page_size: int, layer_num: int, head_num: int, head_dim: int,
                 dtype: torch.dtype = torch.bfloat16) -> None:
        if page_size < 1 or size < page_size or size % page_size:
            raise ValueError(f"size ({size}) must be a positive multiple of page_size ({page_size})")
        if min(layer_num, head_num, head_dim) < 1:
            raise ValueError("layer_num, head_num and head_dim must be >= 1")
        self.size = size
        self.page_size = page_size
        self.layer_num = layer_num
        self.head_num = head_num
        self.head_dim = head_dim
        self.dtype = dtype
        itemsize = torch.empty((), dtype=dtype).element_size()
        total = 2 * size * layer_num * head_num * head_dim * itemsize
        raw = aligned_empty(total)
        raw[:] = 0
        self._raw = raw  # owns the memory the tensor views
        self.kv_buffer = torch.from_numpy(raw).view(dtype).view(2, size, layer_num, head_num, head_dim)
        self.part_bytes = layer_num * page_size * head_num * head_dim * itemsize  # K (or V) of one page
        # (2, page slots, part bytes): K and V part of every page slot, as raw bytes.
        self.page_parts = raw.reshape(2, size // page_size, self.part_bytes)

    @property
    def page_bytes(self) -> int:
        return 2 * self.part_bytes

    @property
    def page_slots(self) -> int:
        return self.size // self.page_size

    # ---- SGLang's host-pool interface (page_first branch) ------------------------------------------

    def get_size_per_token(self) -> int:
        return self.head_dim * self.head_num * self.layer_num * self.dtype.itemsize * 2

    def get_ksize_per_token(self) -> int:
        return self.get_size_per_token() // 2

    def get_page_buffer_meta(self, indices) -> tuple[list[int], list[int]]:
        """(pointers, sizes): K then V of every page of `indices` (token slots, page-aligned)."""
        assert len(indices) % self.page_size == 0
        itemsize = self.dtype.itemsize
        base = self.kv_buffer.data_ptr()
        indices = indices.tolist()
        v_offset = self.layer_num * self.size * self.head_num * self.head_dim * itemsize
        pointers: list[int] = []
        for index in range(0, len(indices), self.page_size):
            k_pointer = base + indices[index] * self.layer_num * self.head_num * self.head_dim * itemsize
            pointers.append(k_pointer)
            pointers.append(k_pointer + v_offset)
        return pointers, [self.part_bytes] * len(pointers)

    def get_data_page(self, index: int, flat: bool = True) -> torch.Tensor:
        page = self.kv_buffer[:, index: index + self.page_size, :, :, :]
        return page.flatten() if flat else page

    def get_dummy_flat_data_page(self) -> torch.Tensor:
        return torch.zeros((2, self.layer_num, self.page_size, self.head_num, self.head_dim),
                           dtype=self.dtype).flatten()

    def set_from_flat_data_page(self, index: int, data_page: torch.Tensor) -> None:
        self.kv_buffer[:, index: index + self.page_size, :, :, :] = data_page.reshape(
            2, self.page_size, self.layer_num, self.head_num, self.head_dim)

    # ---- replay helpers ---------------------------------------------------------------------------

    def host_indices(self, page_slots: Sequence[int]) -> torch.Tensor:
        """SGLang's host_indices (int64 token slots, page_size per page) for the given page slots."""
        slots = torch.as_tensor(np.asarray(page_slots, dtype=np.int64))
        return (slots[:, None] * self.page_size + torch.arange(self.page_size)).reshape(-1)


class PagePattern:
    """The payload of every replayed page, derived from its 32-byte key.

    As uint64 words, page = key_word XOR (i * golden ratio constant) for word i: the first 8 bytes
    are the key's first 8 bytes, every word depends on the key, and a batch of pages is two numpy
    operations to write or check.
    """

    def __init__(self, page_bytes: int) -> None:
        if page_bytes % 8:
            raise ValueError(f"page_bytes must be a multiple of 8, got {page_bytes}")
        self.page_bytes = page_bytes
        self._base = np.arange(page_bytes // 8, dtype=np.uint64) * _GOLDEN

    @staticmethod
    def key_words(keys: Sequence[bytes]) -> np.ndarray:
        return np.frombuffer(b"".join(key[:8] for key in keys), dtype="<u8")

    def pages(self, keys: Sequence[bytes]) -> np.ndarray:
        """(len(keys), page_bytes) uint8: the payload of each key."""
        words = self._base[None, :] ^ self.key_words(keys)[:, None]
        return words.view(np.uint8)

    def fill(self, pool: MiniHostKVPool, page_slots: Sequence[int], keys: Sequence[bytes]) -> None:
        """Write each key's payload into its page slot of the pool (K part, then V part)."""
        pages = self.pages(keys)
        half = pool.part_bytes
        slots = np.asarray(page_slots, dtype=np.int64)
        pool.page_parts[0, slots] = pages[:, :half]
        pool.page_parts[1, slots] = pages[:, half:]

    def poison(self, pool: MiniHostKVPool, page_slots: Sequence[int]) -> None:
        """Overwrite page slots with a value no payload has there, before a read lands in them."""
        pool.page_parts[:, np.asarray(page_slots, dtype=np.int64)] = 0xA5

    def wrong_pages(self, pool: MiniHostKVPool, page_slots: Sequence[int], keys: Sequence[bytes]) -> int:
        """How many of the slots do not hold their key's payload."""
        if not len(keys):
            return 0
        pages = self.pages(keys)
        half = pool.part_bytes
        slots = np.asarray(page_slots, dtype=np.int64)
        good = np.all(pool.page_parts[0, slots] == pages[:, :half], axis=1)
        good &= np.all(pool.page_parts[1, slots] == pages[:, half:], axis=1)
        return int(len(keys) - np.count_nonzero(good))
