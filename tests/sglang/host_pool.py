"""Stand-ins for SGLang's host KV pools (`MHATokenToKVPoolHost`, `MLATokenToKVPoolHost`).

This is a stand-in, not SGLang's class: on this CPU-only install (sglang 0.5.23 with --no-deps)
`sglang.srt.mem_cache.pool_host.mha` / `.mla` cannot be imported, because their import chain needs
`transformers` (via sglang.srt.configs) and CUDA-side packages. The storage path touches only a few
members of a host pool, and those are reproduced here from sglang 0.5.23
(`sglang/srt/mem_cache/pool_host/mha.py` and `mla.py`) with the same shapes and arithmetic:

- `kv_buffer`: MHA `page_first` (2, size, layer_num, head_num, head_dim) or `layer_first`
  (2, layer_num, size, head_num, head_dim); MLA `page_first` (size, layer_num, 1, kv_cache_dim) or
  `layer_first` (layer_num, size, 1, kv_cache_dim).
  `k_buffer` / `v_buffer` are the two MHA halves, as in SGLang.
- `page_size`, `layout`, `dtype`, `size`, `page_num`, `layer_num`, `head_num`, `head_dim`,
  `v_head_dim`, `get_size_per_token()`, `get_ksize_per_token()`.
- `get_page_buffer_meta(indices)`: the zero-copy pointers and sizes, copied line for line from
  `MHATokenToKVPoolHost.get_page_buffer_meta` (page_first and layer_first) and the page_first /
  layer_first branch of `MLATokenToKVPoolHost.get_page_buffer_meta` (dcp_size 1).
- `get_data_page`, `get_dummy_flat_data_page`, `set_from_flat_data_page`: SGLang's generic
  (non-zero-copy) path, copied from the same classes.

Memory is plain (not pinned) CPU memory; SGLang pins it on GPU hosts, which changes no address math.
"""

from __future__ import annotations

import torch


class MHAHostPoolStandIn:
    """The storage-facing surface of SGLang's MHATokenToKVPoolHost (page_first or layer_first)."""

    def __init__(self, *, layout: str = "page_first", page_size: int = 16, pages: int = 64, layer_num: int = 4,
                 head_num: int = 2, head_dim: int = 64, dtype: torch.dtype = torch.bfloat16, seed: int = 0):
        if layout not in ("page_first", "layer_first"):
            raise ValueError(f"the stand-in models page_first and layer_first, not {layout}")
        self.layout = layout
        self.page_size = page_size
        self.page_num = pages
        self.size = pages * page_size
        self.layer_num = layer_num
        self.head_num = head_num
        self.head_dim = head_dim
        self.v_head_dim = head_dim
        self.dtype = dtype
        self.device = "cpu"
        self.pin_memory = False
        self.kv_buffer = self.init_kv_buffer()
        self.k_buffer = self.kv_buffer[0]
        self.v_buffer = self.kv_buffer[1]
        fill_random(self.kv_buffer, seed)

    def init_kv_buffer(self) -> torch.Tensor:
        if self.layout == "layer_first":
            dims = (2, self.layer_num, self.size, self.head_num, self.head_dim)
        else:
            dims = (2, self.size, self.layer_num, self.head_num, self.head_dim)
        return torch.empty(dims, dtype=self.dtype, device=self.device)

    def get_size_per_token(self):
        return (self.head_dim + self.v_head_dim) * self.head_num * self.layer_num * self.dtype.itemsize

    def get_ksize_per_token(self):
        return self.get_size_per_token() // 2

    def get_page_buffer_meta(self, indices):
        """
        meta data for zero copy
        """
        assert len(indices) % self.page_size == 0
        ptr_list = []
        kv_buffer_data_ptr = self.kv_buffer.data_ptr()
        indices = indices.tolist()
        v_offset = (
            self.layer_num
            * self.size
            * self.head_num
            * self.head_dim
            * self.dtype.itemsize
        )
        if self.layout == "layer_first":
            for index in range(0, len(indices), self.page_size):
                for layer_id in range(self.layer_num):
                    k_ptr = (
                        kv_buffer_data_ptr
                        + indices[index]
                        * self.head_num
                        * self.head_dim
                        * self.dtype.itemsize
                        + layer_id
                        * self.size
                        * self.head_num
                        * self.head_dim
                        * self.dtype.itemsize
                    )
                    v_ptr = k_ptr + v_offset
                    ptr_list.append(k_ptr)
                    ptr_list.append(v_ptr)
            element_size = (
                self.dtype.itemsize * self.page_size * self.head_num * self.head_dim
            )
            element_size_list = [element_size] * len(ptr_list)
        elif self.layout in ["page_first", "page_first_direct", "page_head"]:
            for index in range(0, len(indices), self.page_size):
                k_ptr = (
                    kv_buffer_data_ptr
                    + indices[index]
                    * self.layer_num
                    * self.head_num
                    * self.head_dim
                    * self.dtype.itemsize
                )
                v_ptr = k_ptr + v_offset
                ptr_list.append(k_ptr)
                ptr_list.append(v_ptr)
            element_size = (
                self.layer_num
                * self.dtype.itemsize
                * self.page_size
                * self.head_num
                * self.head_dim
            )
            element_size_list = [element_size] * len(ptr_list)
        else:
            raise ValueError(f"Unsupported layout: {self.layout}")
        return ptr_list, element_size_list

    def get_data_page(self, index, flat: bool = True) -> torch.Tensor:
        if self.layout == "layer_first":
            data_page = self.kv_buffer[:, :, index : index + self.page_size, :, :]
        elif self.layout == "page_first":
            data_page = self.kv_buffer[:, index : index + self.page_size, :, :, :]
        else:
            raise ValueError(f"Unsupported layout: {self.layout}")
        if flat:
            data_page = data_page.flatten()
        return data_page

    def get_dummy_flat_data_page(self) -> torch.Tensor:
        return torch.zeros(
            (2, self.layer_num, self.page_size, self.head_num, self.head_dim),
            dtype=self.dtype,
            device=self.device,
            pin_memory=self.pin_memory,
        ).flatten()

    def set_from_flat_data_page(self, index: int, data_page: torch.Tensor) -> None:
        if self.layout == "layer_first":
            self.kv_buffer[:, :, index : index + self.page_size, :, :] = (
                data_page.reshape(
                    2,
                    self.layer_num,
                    self.page_size,
                    self.head_num,
                    self.head_dim,
                )
            )
        elif self.layout == "page_first":
            self.kv_buffer[:, index : index + self.page_size, :, :, :] = (
                data_page.reshape(
                    2, self.page_size, self.layer_num, self.head_num, self.head_dim
                )
            )
        else:
            raise ValueError(f"Unsupported layout: {self.layout}")

    # ---- test helpers (not part of SGLang's surface) ----------------------------------------------

    def host_indices(self, first_page: int, pages: int) -> torch.Tensor:
        """Token slots of `pages` consecutive pages from page `first_page`, as SGLang passes them."""
        start = first_page * self.page_size
        return torch.arange(start, start + pages * self.page_size, dtype=torch.int64)

    def page_bytes(self, page: int) -> bytes:
        """The bytes of one page in this layout (K and V of every layer), for comparisons."""
        return self.get_data_page(page * self.page_size, flat=True).contiguous().view(torch.uint8).numpy().tobytes()


class MLAHostPoolStandIn:
    """The storage-facing surface of SGLang's MLATokenToKVPoolHost (page_first or layer_first, no DCP)."""

    def __init__(self, *, layout: str = "page_first", page_size: int = 16, pages: int = 64, layer_num: int = 4,
                 kv_cache_dim: int = 256, dtype: torch.dtype = torch.bfloat16, seed: int = 0):
        if layout not in ("page_first", "layer_first"):
            raise ValueError(f"the stand-in models page_first and layer_first, not {layout}")
        self.layout = layout
        self.page_size = page_size
        self.logical_page_size = page_size
        self.dcp_size = 1
        self.page_num = pages
        self.size = pages * page_size
        self.layer_num = layer_num
        self.kv_cache_dim = kv_cache_dim
        self.dtype = dtype
        self.device = "cpu"
        self.pin_memory = False
        self.kv_buffer = self.init_kv_buffer()
        fill_random(self.kv_buffer, seed)

    def init_kv_buffer(self) -> torch.Tensor:
        if self.layout == "layer_first":
            dims = (self.layer_num, self.size, 1, self.kv_cache_dim)
        else:
            dims = (self.size, self.layer_num, 1, self.kv_cache_dim)
        return torch.empty(dims, dtype=self.dtype, device=self.device)

    def get_size_per_token(self):
        return self.kv_cache_dim * self.layer_num * self.dtype.itemsize

    def get_ksize_per_token(self):
        return self.get_size_per_token()

    def _storage_page_index(self, index):
        return index  # dcp_size == 1

    def get_page_buffer_meta(self, indices):
        """Return local buffer pointers and byte sizes for logical storage pages."""
        assert len(indices) % self.logical_page_size == 0
        ptr_list = []
        kv_buffer_data_ptr = self.kv_buffer.data_ptr()
        indices = indices.tolist()
        # Each logical page maps to one physical page in this rank's buffer.
        page_starts = [
            self._storage_page_index(index)
            for index in indices[:: self.logical_page_size]
        ]
        if self.layout == "layer_first":
            for index in page_starts:
                for layer_id in range(self.layer_num):
                    k_ptr = (
                        kv_buffer_data_ptr
                        + index * self.kv_cache_dim * self.dtype.itemsize
                        + layer_id * self.size * self.kv_cache_dim * self.dtype.itemsize
                    )
                    ptr_list.append(k_ptr)
            element_size = self.dtype.itemsize * self.page_size * self.kv_cache_dim
            element_size_list = [element_size] * len(ptr_list)
        elif self.layout in ["page_first", "page_first_direct"]:
            for index in page_starts:
                k_ptr = (
                    kv_buffer_data_ptr
                    + index * self.layer_num * self.kv_cache_dim * self.dtype.itemsize
                )
                ptr_list.append(k_ptr)
            element_size = (
                self.layer_num
                * self.dtype.itemsize
                * self.page_size
                * self.kv_cache_dim
            )
            element_size_list = [element_size] * len(ptr_list)
        else:
            raise ValueError(f"Unsupported layout: {self.layout}")
        return ptr_list, element_size_list

    def get_data_page(self, index, flat: bool = True) -> torch.Tensor:
        index = self._storage_page_index(index)
        if self.layout == "layer_first":
            data_page = self.kv_buffer[:, index : index + self.page_size, :, :]
        elif self.layout == "page_first":
            data_page = self.kv_buffer[index : index + self.page_size, :, :, :]
        else:
            raise ValueError(f"Unsupported layout: {self.layout}")
        if flat:
            data_page = data_page.flatten()
        return data_page

    def get_dummy_flat_data_page(self) -> torch.Tensor:
        return torch.zeros(
            (
                self.layer_num,
                self.page_size,
                1,
                self.kv_cache_dim,
            ),
            dtype=self.dtype,
            device=self.device,
            pin_memory=self.pin_memory,
        ).flatten()

    def set_from_flat_data_page(self, index: int, data_page: torch.Tensor) -> None:
        index = self._storage_page_index(index)
        if self.layout == "layer_first":
            self.kv_buffer[:, index : index + self.page_size, :, :] = data_page.reshape(
                self.layer_num,
                self.page_size,
                1,
                self.kv_cache_dim,
            )
        elif self.layout == "page_first":
            self.kv_buffer[index : index + self.page_size, :, :, :] = data_page.reshape(
                self.page_size,
                self.layer_num,
                1,
                self.kv_cache_dim,
            )
        else:
            raise ValueError(f"Unsupported layout: {self.layout}")

    host_indices = MHAHostPoolStandIn.host_indices
    page_bytes = MHAHostPoolStandIn.page_bytes


def fill_random(tensor: torch.Tensor, seed: int) -> None:
    """Fill with deterministic random bytes (any bit pattern, NaNs included: compare bytes, not floats)."""
    generator = torch.Generator().manual_seed(seed)
    raw = tensor.view(torch.uint8) if tensor.dtype.itemsize == 1 else tensor.view(torch.int16)
    raw.copy_(torch.randint(-2**15, 2**15, raw.shape, generator=generator, dtype=torch.int16)
              if raw.dtype == torch.int16 else torch.randint(0, 256, raw.shape, generator=generator, dtype=torch.uint8))
