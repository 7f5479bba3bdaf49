"""The baselines of `raylsm bench store`: SGLang's HiCacheFile, plain RocksDB BlobDB, the raw disk.

Owns one small adapter class per baseline, all with the interface the store benchmark's runner
drives (`BenchSystem`), plus the batch and plan types they receive. Called only by
`raylsm.bench.store_bench` (the raylsm adapters live there, next to the runner). Each adapter
does what a backend built on that system would have to do on SGLang's data path, no more:

- `HiCacheFileSystem`: the real `sglang...hicache_storage.HiCacheFile`, default settings (no
  metadata cache, no eviction), driven through the generic path SGLang uses for it
  (`batch_set` / `batch_exists` / `batch_get` with torch tensors over our numpy buffers).
- `RocksDBBlobSystem`: rocksdict in raw mode with BlobDB value separation, WAL on, as LIBS.md A.1
  advises for MiB values. Puts convert each page to `bytes` (raw mode accepts nothing else) and
  write one WriteBatch per call; gets multi-get and copy into the caller's buffer.
- `DiskCeilingSystem`: O_DIRECT positional I/O on one file in the same directory: the most the
  disk gives for the same bytes.

Thread-safety: `put_batch` is called from one thread; `probe_batch` and `get_batch_into` from
several reader threads at once, so they keep no per-call state on the object.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Protocol, Sequence

import numpy as np

from raylsm.store.segment import full_preadv, full_pwritev

MiB = 1 << 20
_O_DIRECT = getattr(os, "O_DIRECT", 0)


class PageBatch(NamedTuple):
    """One call's worth of pages (at most 128). `page_ids` index the workload's pages."""

    index: int
    page_ids: Sequence[int]  # a range for consecutive pages, else a list
    keys: Sequence[bytes]  # raylsm page keys (also the RocksDB keys)
    hex_keys: Sequence[str]  # SGLang's 64-hex page hashes (HiCacheFile keys)


class SystemPlan(NamedTuple):
    page_bytes: int
    pages: int

    @property
    def total_bytes(self) -> int:
        return self.page_bytes * self.pages


class BenchSystem(Protocol):
    """What the runner needs from a system under test.

    `ops` lists the operations it supports (a subset of put, probe, get). `read_orders` names the
    read patterns the runner should time for get (None: the workload's shuffled chain batches).
    Counts returned are pages stored / present / read: anything short of the batch is reported.
    """

    name: str
    ops: tuple[str, ...]
    note: str

    def open(self, directory: str, plan: SystemPlan) -> None: ...
    def adapt_buffer(self, buffer: np.ndarray) -> Any: ...
    def put_batch(self, batch: PageBatch, values: Sequence[Any]) -> int: ...
    def finish_puts(self) -> None: ...
    def probe_batch(self, batch: PageBatch) -> int: ...
    def get_batch_into(self, batch: PageBatch, out_buffers: Sequence[Any]) -> int: ...
    def close(self) -> None: ...


class SystemUnavailable(RuntimeError):
    """The system cannot run here (e.g. sglang or torch is not installed); it is skipped."""


# ---- SGLang HiCacheFile ---------------------------------------------------------------------------


class HiCacheFileSystem:
    name = "hicache_file"
    ops = ("put", "probe", "get")
    note = "sglang HiCacheFile, defaults (one file per page, no metadata cache); generic batch_* path"
    read_orders = None

    def __init__(self) -> None:
        try:
            import torch  # noqa: F401  (sglang's storage classes need it)
            from sglang.srt.mem_cache.hicache_storage import HiCacheFile, HiCacheStorageConfig
        except Exception as error:  # ImportError, or sglang failing half-way through its imports
            raise SystemUnavailable(f"sglang HiCacheFile unavailable ({type(error).__name__}: {error})") from error
        self._torch = torch
        self._file_class = HiCacheFile
        self._config_class = HiCacheStorageConfig
        self._storage = None

    def open(self, directory: str, plan: SystemPlan) -> None:
        # The environment variable would override file_path and send pages elsewhere.
        os.environ.pop("SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR", None)
        config = self._config_class(
            tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1, is_mla_model=False,
            enable_storage_metrics=False, is_page_first_layout=True, model_name="bench", extra_config=None)
        self._storage = self._file_class(config, file_path=directory)

    def adapt_buffer(self, buffer: np.ndarray) -> Any:
        return self._torch.from_numpy(buffer)  # a view, no copy

    def put_batch(self, batch: PageBatch, values: Sequence[Any]) -> int:
        return len(values) if self._storage.batch_set(list(batch.hex_keys), values=list(values)) else 0

    def finish_puts(self) -> None:
        pass

    def probe_batch(self, batch: PageBatch) -> int:
        return self._storage.batch_exists(list(batch.hex_keys))

    def get_batch_into(self, batch: PageBatch, out_buffers: Sequence[Any]) -> int:
        got = self._storage.batch_get(list(batch.hex_keys), target_locations=list(out_buffers))
        return sum(1 for tensor in got if tensor is not None)

    def close(self) -> None:
        self._storage = None  # HiCacheFile has no close()


# ---- plain RocksDB with BlobDB --------------------------------------------------------------------


class RocksDBBlobSystem:
    name = "rocksdb_blobdb"
    ops = ("put", "probe", "get")
    note = ("rocksdict raw mode, BlobDB (min_blob_size 4 KiB, 256 MiB blob files and memtables), WAL on; "
            "put copies each page to bytes; probe = multi-get (BlobDB has no existence check that skips "
            "the blob read); get = multi-get + copy into the caller's buffer")
    read_orders = None

    def __init__(self) -> None:
        self._db = None

    def open(self, directory: str, plan: SystemPlan) -> None:
        from rocksdict import DBCompressionType, Options, Rdict, WriteOptions

        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_enable_blob_files(True)
        options.set_min_blob_size(4096)
        options.set_blob_file_size(256 * MiB)
        options.set_blob_compression_type(DBCompressionType.none())
        # LIBS.md A.1: values pass through WAL and memtable, so size memtables for MiB values;
        # blob_file_size ~ write_buffer_size, small SST targets, level base ~ 8-10x the target.
        options.set_write_buffer_size(256 * MiB)
        options.set_max_write_buffer_number(3)
        options.set_target_file_size_base(16 * MiB)
        options.set_max_bytes_for_level_base(128 * MiB)
        options.set_max_background_jobs(2)
        self._db = Rdict(directory, options)
        self._write_options = WriteOptions()  # WAL on, not synced: the same promise as raylsm's "process"

    def adapt_buffer(self, buffer: np.ndarray) -> Any:
        return buffer

    def put_batch(self, batch: PageBatch, values: Sequence[np.ndarray]) -> int:
        from rocksdict import WriteBatch

        write_batch = WriteBatch(raw_mode=True)
        for key, value in zip(batch.keys, values):
            # NOTE: raw mode accepts only `bytes` (memoryview and bytearray raise), so one copy per
            # page is unavoidable; ndarray.tobytes() is a single memcpy into a new bytes object.
            write_batch.put(key, value.tobytes())
        self._db.write(write_batch, self._write_options)
        return len(values)

    def finish_puts(self) -> None:
        # The memtables still hold the last values; flushing them to blob files is put work a
        # store must do, and without it a "cold" get would be served from the memtable.
        self._db.flush()

    def probe_batch(self, batch: PageBatch) -> int:
        for present, value in enumerate(self._db.get(list(batch.keys))):
            if value is None:
                return present
        return len(batch.keys)

    def get_batch_into(self, batch: PageBatch, out_buffers: Sequence[np.ndarray]) -> int:
        hits = 0
        for value, out in zip(self._db.get(list(batch.keys)), out_buffers):
            if value is not None and len(value) == out.nbytes:
                out[:] = np.frombuffer(value, dtype=np.uint8)
                hits += 1
        return hits

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
            import gc

            gc.collect()


# ---- the raw disk ---------------------------------------------------------------------------------


class DiskCeilingSystem:
    """O_DIRECT on one file: page p lives at offset p * page_bytes.

    put: one pwritev per batch of consecutive pages (8 MiB at 64 KiB pages, 128 MiB at 1 MiB), in
    file order, then fdatasync (timed). get: a batch of consecutive pages is one preadv (sequential
    read); any other batch is one pread per page (random page-sized reads). The runner times both
    read orders, each twice, and keeps the best as the ceiling.
    """

    name = "disk_ceiling"
    ops = ("put", "get")
    note = "O_DIRECT, aligned buffers, one file; put = sequential pwritev + fdatasync"
    read_orders = ("sequential", "random")
    read_repeats = 2  # the disk is noisy (virtual disks especially): the best of two is the ceiling

    def __init__(self) -> None:
        self._fd = -1
        self._page_bytes = 0

    def open(self, directory: str, plan: SystemPlan) -> None:
        if not _O_DIRECT:
            raise SystemUnavailable("O_DIRECT is not available on this platform")
        path = os.path.join(directory, "ceiling.dat")
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | _O_DIRECT, 0o644)
        except OSError as error:
            raise SystemUnavailable(f"cannot open {path} with O_DIRECT: {error}") from error
        self._page_bytes = plan.page_bytes

    def adapt_buffer(self, buffer: np.ndarray) -> Any:
        return buffer

    def put_batch(self, batch: PageBatch, values: Sequence[np.ndarray]) -> int:
        full_pwritev(self._fd, _views(values), batch.page_ids[0] * self._page_bytes)
        return len(values)

    def finish_puts(self) -> None:
        os.fdatasync(self._fd)

    def probe_batch(self, batch: PageBatch) -> int:
        raise NotImplementedError("the disk has no keys")

    def get_batch_into(self, batch: PageBatch, out_buffers: Sequence[np.ndarray]) -> int:
        ids = batch.page_ids
        if isinstance(ids, range) and ids.step == 1:
            full_preadv(self._fd, _views(out_buffers), ids.start * self._page_bytes)
        else:
            for page_id, out in zip(ids, out_buffers):
                full_preadv(self._fd, _views([out]), page_id * self._page_bytes)
        return len(out_buffers)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _views(buffers: Sequence[Any]) -> list[memoryview]:
    return [memoryview(buffer).cast("B") for buffer in buffers]


BASELINES = {
    HiCacheFileSystem.name: HiCacheFileSystem,
    RocksDBBlobSystem.name: RocksDBBlobSystem,
    DiskCeilingSystem.name: DiskCeilingSystem,
}
