"""`raylsm bench store`: one shard store against SGLang's file backend, plain BlobDB and the disk.

Owns the store benchmark: the workload (SGLang-like chains of pages), the runner that times put,
probe, cold get and warm get on every system in one process and one run on the same disk, and the
JSON report (the printed tables, ratios and goals: raylsm.bench.store_report). Called by `raylsm.cli` (`raylsm bench store`, also
`make demo` / `make bench`). A command, not a test: it asserts nothing about timings.

Workload. Chains of `chain_pages` pages (default 64), page hashes SHA-256-chained as SGLang's are;
with extents of E pages the extent id is the hash of the page at depth E * floor(d / E). Pages are
numbered in chain order; a batch is 128 consecutive pages (SGLang's 128-page storage calls). Values
come from a pool of 256 aligned pages of random bytes generated once; before a page is put, its id
and a run nonce are stamped into its first 16 and last 8 bytes, so every stored page is distinct and
a read of the wrong page is caught.

Method, the same for every system:
- put: one writer thread, batches in chain order; the time is the sum of the put calls plus the
  system's final flush and an `os.sync()` (a store that leaves dirty pages in the page cache is
  charged for writing them).
- probe: every stored page, batches of 128 in shuffled batch order, `--threads` threads;
  pages_per_s is keys per second.
- get_cold: `os.sync()` and drop_caches first (when permitted, else only O_DIRECT systems are cold);
  every stored page, batches of 128 consecutive pages in shuffled batch order, `--threads` threads,
  into aligned output buffers. get_warm: the same pass again at once.
- Every get batch is checked: all pages must be hits and their stamps right; every 16th batch is
  compared byte for byte against the source.
- p50/p99 are per batch call (ms per 128 pages); throughput is bytes / wall time of the pass.
- The disk ceiling reads two ways (sequential 128-page chunks, random page-sized reads), each
  twice, and keeps the best as its get figure (so raylsm's ratio to it is not flattered).

Disk and cleanup: before it creates anything, `run` scales each page count down to what one system's
data of that size (the largest it holds at once) fits in the free space under the data directory, and
says so; if not even one batch fits it refuses (ConfigError). Each system's directory is removed after
it ran, and the run's temporary root at the end, in finally blocks: on success, error, Ctrl-C or
(through raylsm.cli) SIGTERM; an interrupted read pass stops its threads before the store is closed.

Not thread-safe as a whole; it runs the systems one after another and owns the threads it starts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import struct
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from raylsm.bench import disk_budget
from raylsm.bench.baselines import (BASELINES, BenchSystem, PageBatch, SystemPlan, SystemUnavailable)
from raylsm.bench.store_report import (BATCH_PAGES, GB, Measurement, format_goals, format_tables, rate_text,
                                      size_name)
from raylsm.errors import ConfigError
from raylsm.store.io_buffers import aligned_empty
from raylsm.store.page_key import encode, namespace_id

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

POOL_PAGES = 2 * BATCH_PAGES
FULL_CHECK_EVERY = 16
POISON = np.uint64(2**64 - 1)  # no page id: a buffer a read left untouched fails the stamp check
PAGE_SIZES = (64 * KiB, 1 * MiB)
FULL_PAGES = {64 * KiB: 100_000, 1 * MiB: 8_000}
QUICK_PAGES = {64 * KiB: 16_000, 1 * MiB: 1_500}
SYSTEMS = ("disk_ceiling", "raylsm", "raylsm_buffered", "rocksdb_blobdb", "hicache_file")
# Footprint on disk of one system while it runs, per stored byte (RocksDB: blob files plus the WAL
# of the unflushed memtables); disk_budget adds its spare room on top.
DISK_FACTOR = 1.3
DROP_CACHES = "/proc/sys/vm/drop_caches"


@dataclass(frozen=True)
class BenchConfig:
    pages_by_size: dict[int, int]  # page bytes -> stored pages (0 skips that size)
    chain_pages: int = 64
    extent_pages: int = 16
    threads: int = 2
    systems: tuple[str, ...] = SYSTEMS
    data_dir: str | None = None
    json_path: str | None = None
    quick: bool = False
    progress: bool = True
    seed: int = 20251116


# ---- the raylsm systems -------------------------------------------------------------------------


class RayLSMSystem:
    """raylsm's ShardStore on one directory, capacity large enough never to evict in the bench."""

    ops = ("put", "probe", "get")
    read_orders = None

    def __init__(self, name: str, direct_io: bool):
        self.name = name
        self._direct_io = direct_io
        self.note = ("ShardStore, O_DIRECT segments" if direct_io else
                     "ShardStore, buffered segment I/O (direct_io=False)")
        self._store = None
        self.last_stats: dict | None = None

    def open(self, directory: str, plan: SystemPlan) -> None:
        from raylsm.store.config import StoreConfig
        from raylsm.store.shard_store import ShardStore

        segment_bytes = StoreConfig().segment_bytes
        capacity = int(plan.total_bytes * 1.25) + 4 * segment_bytes
        self._store = ShardStore.open(directory, StoreConfig(capacity_bytes=capacity, direct_io=self._direct_io))

    def adapt_buffer(self, buffer: np.ndarray) -> Any:
        return buffer

    def put_batch(self, batch: PageBatch, values: Sequence[Any]) -> int:
        return sum(self._store.put_batch(batch.keys, values))

    def finish_puts(self) -> None:
        pass

    def probe_batch(self, batch: PageBatch) -> int:
        return self._store.probe(batch.keys)

    def get_batch_into(self, batch: PageBatch, out_buffers: Sequence[Any]) -> int:
        return sum(self._store.get_batch_into(batch.keys, out_buffers))

    def close(self) -> None:
        if self._store is not None:
            self.last_stats = self._store.stats()
            self._store.close()
            self._store = None


def make_system(name: str) -> BenchSystem:
    """A fresh system by name; SystemUnavailable if it cannot run here."""
    if name == "raylsm":
        return RayLSMSystem("raylsm", direct_io=True)
    if name == "raylsm_buffered":
        return RayLSMSystem("raylsm_buffered", direct_io=False)
    if name in BASELINES:
        return BASELINES[name]()
    raise ValueError(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}")


# ---- workload -----------------------------------------------------------------------------------


class Workload:
    """The pages of one page size: keys, batches, the value pool, stamping and verification."""

    def __init__(self, page_bytes: int, pages: int, chain_pages: int, extent_pages: int, seed: int):
        self.page_bytes = page_bytes
        self.pages = pages
        self.chain_pages = chain_pages
        self.extent_pages = extent_pages
        self.keys, self.hex_keys = _chain_keys(pages, chain_pages, extent_pages, seed)
        rng = np.random.default_rng(seed ^ page_bytes)
        self.nonce = np.uint64(rng.integers(1, 2**63))
        self.pool = aligned_empty(POOL_PAGES * page_bytes).reshape(POOL_PAGES, page_bytes)
        for row in self.pool:
            row[:] = np.frombuffer(rng.bytes(page_bytes), dtype=np.uint8)
        self._pool_words = self.pool.view(np.uint64)
        self.batches = [self._batch(index, range(start, min(start + BATCH_PAGES, pages)))
                        for index, start in enumerate(range(0, pages, BATCH_PAGES))]
        order = rng.permutation(len(self.batches))
        self.shuffled_batches = [self.batches[i] for i in order]
        permutation = rng.permutation(pages)
        self.random_batches = [PageBatch(index, permutation[start:start + BATCH_PAGES].tolist(), (), ())
                               for index, start in enumerate(range(0, pages, BATCH_PAGES))]

    def _batch(self, index: int, page_ids: range) -> PageBatch:
        return PageBatch(index, page_ids, self.keys[page_ids.start:page_ids.stop],
                         self.hex_keys[page_ids.start:page_ids.stop])

    @property
    def total_bytes(self) -> int:
        return self.pages * self.page_bytes

    def stamp(self, batch: PageBatch) -> np.ndarray:
        """Stamp the batch's pages into their pool rows; returns the pool row of each page."""
        ids = np.asarray(batch.page_ids, dtype=np.uint64)
        rows = (ids % POOL_PAGES).astype(np.intp)  # distinct: put batches are <= 128 consecutive pages
        self._pool_words[rows, 0] = ids
        self._pool_words[rows, 1] = self.nonce
        self._pool_words[rows, -1] = ids ^ self.nonce
        return rows

    def verify(self, batch: PageBatch, out: np.ndarray) -> int:
        """Wrong pages among `out` (one row per page of the batch); poisons the stamps afterwards
        so a later read that leaves a buffer untouched cannot pass."""
        ids = np.asarray(batch.page_ids, dtype=np.uint64)
        words = out.view(np.uint64)
        bad = (words[:, 0] != ids) | (words[:, 1] != self.nonce) | (words[:, -1] != (ids ^ self.nonce))
        if batch.index % FULL_CHECK_EVERY == 0:
            for row, page_id in enumerate(ids):
                if not np.array_equal(out[row, 16:-8], self.pool[int(page_id) % POOL_PAGES, 16:-8]):
                    bad[row] = True
        words[:, 0] = POISON
        return int(bad.sum())


def _chain_keys(pages: int, chain_pages: int, extent_pages: int, seed: int) -> tuple[list[bytes], list[str]]:
    """SGLang-like chained page hashes, encoded as raylsm page keys and as 64-hex strings."""
    namespace = namespace_id("bench")
    keys, hex_keys = [], []
    for chain in range(-(-pages // chain_pages)):
        previous = b""
        chain_hashes: list[bytes] = []
        for depth in range(min(chain_pages, pages - chain * chain_pages)):
            tokens = struct.pack("<QQQ", seed, chain, depth) * 8  # stands for a page's token ids
            page_hash = hashlib.sha256(previous + tokens).digest()
            chain_hashes.append(page_hash)
            previous = page_hash
            extent_hash = chain_hashes[extent_pages * (depth // extent_pages)]
            keys.append(encode(namespace, extent_hash, depth, page_hash))
            hex_keys.append(page_hash.hex())
    return keys, hex_keys


# ---- measurements -------------------------------------------------------------------------------


class _Progress:
    """A tqdm bar on stderr, or nothing (no tqdm installed, or --no-progress)."""

    def __init__(self, enabled: bool, total: int, desc: str):
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr,
                             mininterval=0.5, dynamic_ncols=True)

    def update(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def drop_page_cache() -> bool:
    """`os.sync()`, then drop the kernel's page, dentry and inode caches; False if not permitted."""
    os.sync()
    try:
        with open(DROP_CACHES, "w") as control:
            control.write("3\n")
        return True
    except OSError:
        return False


def _put_pass(system: BenchSystem, workload: Workload, pool: list, progress: bool, label: str) -> Measurement:
    latencies, ok, busy = [], 0, 0.0
    bar = _Progress(progress, len(workload.batches), f"{label} put")
    try:
        for batch in workload.batches:
            values = [pool[row] for row in workload.stamp(batch)]
            started = time.perf_counter()
            ok += system.put_batch(batch, values)
            elapsed = time.perf_counter() - started
            latencies.append(elapsed * 1e3)
            busy += elapsed
            bar.update()
    finally:
        bar.close()
    started = time.perf_counter()
    system.finish_puts()
    os.sync()
    flush_s = time.perf_counter() - started
    return Measurement(system.name, "put", workload.page_bytes, workload.pages, workload.pages, busy + flush_s,
                       np.asarray(latencies), ok, detail={"final_flush_and_sync_s": round(flush_s, 3)})


def _read_pass(system: BenchSystem, workload: Workload, op: str, batches: Sequence[PageBatch], threads: int,
               outputs: list[tuple[np.ndarray, list]], progress: bool, label: str) -> Measurement:
    """Run `op` ("probe" or a get) over `batches` with `threads` threads pulling the next batch."""
    cursor = itertools.count()  # next() on a count is atomic under the GIL
    latencies: list[list[float]] = [[] for _ in range(threads)]
    ok = [0] * threads
    wrong = [0] * threads
    errors: list[BaseException] = []
    bar = _Progress(progress, len(batches), f"{label} {op}")
    # Set by each worker as it ends; waited on instead of Thread.join, which CPython 3.11 leaves broken
    # when a signal interrupts it (threading._wait_for_tstate_lock then releases the live thread's lock
    # and marks it stopped, so a second join returns at once).
    ended = [threading.Event() for _ in range(threads)]

    def work(thread: int) -> None:
        out, adapted = outputs[thread]
        out.view(np.uint64)[:, 0] = POISON
        try:
            while not errors:
                index = next(cursor)
                if index >= len(batches):
                    return
                batch = batches[index]
                count = len(batch.page_ids)
                started = time.perf_counter()
                if op == "probe":
                    found = system.probe_batch(batch)
                else:
                    found = system.get_batch_into(batch, adapted[:count])
                latencies[thread].append((time.perf_counter() - started) * 1e3)
                ok[thread] += found
                if op != "probe":
                    wrong[thread] += workload.verify(batch, out[:count])
                bar.update()
        except BaseException as error:  # surfaced once every worker ended
            errors.append(error)
        finally:
            ended[thread].set()

    workers = [threading.Thread(target=work, args=(t,), name=f"bench-{op}-{t}") for t in range(threads)]
    started = time.perf_counter()
    try:
        for worker in workers:
            worker.start()
        for event in ended:
            event.wait()
    except BaseException as interrupt:  # Ctrl-C or SIGTERM in this (main) thread, maybe amid the starts
        errors.append(interrupt)  # workers stop after their batch: none reads a store being closed
        for worker, event in zip(workers, ended):
            if worker.ident is not None:  # it runs (a worker not yet running sees `errors` and does nothing)
                event.wait()
        raise
    seconds = time.perf_counter() - started
    bar.close()
    if errors:
        raise errors[0]
    pages = sum(len(batch.page_ids) for batch in batches)
    return Measurement(system.name, op, workload.page_bytes, workload.pages, pages, seconds,
                       np.asarray(list(itertools.chain.from_iterable(latencies))), sum(ok), sum(wrong), threads)


def run_system(system: BenchSystem, workload: Workload, config: BenchConfig, root: str,
               log: Callable[[str], None]) -> list[Measurement]:
    """put, probe, cold get and warm get of one system on a fresh directory, removed afterwards."""
    label = f"{system.name} {size_name(workload.page_bytes)}"
    directory = os.path.join(root, f"{system.name}-{size_name(workload.page_bytes)}")
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    drop_page_cache()  # every system starts from the same clean page cache
    results: list[Measurement] = []
    started = time.perf_counter()
    try:
        system.open(directory, SystemPlan(workload.page_bytes, workload.pages))
        pool = [system.adapt_buffer(row) for row in workload.pool]
        results.append(_put_pass(system, workload, pool, config.progress, label))
        if "probe" in system.ops:
            results.append(_read_pass(system, workload, "probe", workload.shuffled_batches, config.threads,
                                      [(np.empty((0, 8), np.uint8), [])] * config.threads, config.progress, label))
        outputs = []
        for _ in range(config.threads):
            out = aligned_empty(BATCH_PAGES * workload.page_bytes).reshape(BATCH_PAGES, workload.page_bytes)
            outputs.append((out, [system.adapt_buffer(row) for row in out]))
        orders = system.read_orders or ("chain",)
        repeats = getattr(system, "read_repeats", 1)
        cold_by_order: dict[str, Measurement] = {}
        figures: dict[str, list[float]] = {}
        for order in orders:
            for _ in range(repeats):
                dropped = drop_page_cache()
                measured = _read_pass(system, workload, "get_cold", _batches_for(workload, order), config.threads,
                                      outputs, config.progress, f"{label} {order}")
                measured.detail["page_cache_dropped"] = dropped
                figures.setdefault(order, []).append(round(measured.gb_per_s, 4))
                if order not in cold_by_order or measured.pages_per_s > cold_by_order[order].pages_per_s:
                    cold_by_order[order] = measured
        best = max(orders, key=lambda order: cold_by_order[order].pages_per_s)
        cold = cold_by_order[best]
        if len(orders) > 1 or repeats > 1:
            cold.method = f"{best} (best of {repeats} x {', '.join(orders)})"
            cold.detail.update({f"{order}_gb_per_s": values for order, values in figures.items()})
        results.append(cold)
        warm = _read_pass(system, workload, "get_warm", _batches_for(workload, best), config.threads, outputs,
                          config.progress, f"{label} {best}")
        warm.method = best if len(orders) > 1 else ""
        results.append(warm)
    finally:
        system.close()
        shutil.rmtree(directory, ignore_errors=True)
    # (Not on the way out of an error or Ctrl-C: a global sync waits for every dirty page of the
    # machine, which on a busy one can outlast the patience of whoever pressed Ctrl-C.)
    os.sync()
    log(f"  {system.name:<16} {size_name(workload.page_bytes):>6}: " + ", ".join(
        f"{m.op} {rate_text(m)}" for m in results) + f"  [{time.perf_counter() - started:.1f} s]")
    for measurement in results:
        if not measurement.valid:
            log(f"  !! {system.name} {measurement.op}: {measurement.ok_pages}/{measurement.pages} pages ok, "
                f"{measurement.wrong_pages} wrong")
    stats = getattr(system, "last_stats", None)
    if stats:
        counters = stats["counters"]
        trouble = {name: value for name, value in counters.items() if value and (
            name.startswith("gets_miss") or name.startswith("evicted") or name in ("puts_rejected", "puts_failed"))}
        if trouble:
            log(f"  !! {system.name} store counters: {trouble}")
    return results


def _batches_for(workload: Workload, order: str) -> list[PageBatch]:
    return {"chain": workload.shuffled_batches, "sequential": workload.batches,
            "random": workload.random_batches}[order]


# ---- the whole run ------------------------------------------------------------------------------


def run(config: BenchConfig, out=sys.stdout, log: Callable[[str], None] | None = None) -> dict:
    """Run every configured system and page size; print the tables; write JSON if asked.
    Returns the JSON document."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    run_started = time.perf_counter()
    notes: list[str] = []
    pages_by_size = fit_to_disk(config.pages_by_size, _data_parent(config.data_dir), log, notes)  # creates nothing
    root, made_root = _data_root(config.data_dir)
    try:
        can_drop = drop_page_cache()
        if not can_drop:
            notes.append("page cache could not be dropped (not root?): cold gets are cold only for O_DIRECT "
                         "systems (raylsm, disk_ceiling)")
            log("note: " + notes[-1])
        systems_skipped: dict[str, str] = {}
        measurements: list[Measurement] = []
        workloads: dict[int, Workload] = {}
        for page_bytes in PAGE_SIZES:
            pages = pages_by_size.get(page_bytes, 0)
            if pages <= 0:
                continue
            built = time.perf_counter()
            workload = Workload(page_bytes, pages, config.chain_pages, config.extent_pages, config.seed)
            workloads[page_bytes] = workload
            log(f"{size_name(page_bytes)} pages: {pages:,} stored ({workload.total_bytes / GB:.2f} GB), "
                f"workload built in {time.perf_counter() - built:.1f} s")
            for name in config.systems:
                if name in systems_skipped:
                    continue
                try:
                    system = make_system(name)
                    measurements.extend(run_system(system, workload, config, root, log))
                except SystemUnavailable as error:
                    systems_skipped[name] = str(error)
                    log(f"note: skipping {name}: {error}")
                except Exception as error:  # one broken system must not hide the others' figures
                    notes.append(f"{name} {size_name(page_bytes)} failed: {type(error).__name__}: {error}")
                    log("!! " + notes[-1] + "\n" + traceback.format_exc())
            for line in format_tables(measurements, workload, config, can_drop):
                print(line, file=out)
            out.flush()
        for name, reason in systems_skipped.items():
            notes.append(f"{name} skipped: {reason}")
        goal_lines = format_goals(measurements)
        for line in goal_lines:
            print(line, file=out)
        elapsed = time.perf_counter() - run_started
        print(f"\ntotal time {elapsed:.0f} s", file=out)
        document = {
            "results": [m.to_json() for m in measurements],
            "config": {"quick": config.quick, "pages_by_page_bytes": {str(k): v for k, v in pages_by_size.items()},
                       "chain_pages": config.chain_pages, "extent_pages": config.extent_pages,
                       "batch_pages": BATCH_PAGES, "reader_threads": config.threads, "writer_threads": 1,
                       "page_cache_dropped": can_drop, "systems": list(config.systems),
                       "elapsed_s": round(elapsed, 1)},
            "systems": {name: _system_note(name) for name in config.systems if name not in systems_skipped},
            "notes": notes,
        }
        if config.json_path:
            os.makedirs(os.path.dirname(os.path.abspath(config.json_path)), exist_ok=True)
            with open(config.json_path, "w") as handle:
                json.dump(document, handle, indent=1)
                handle.write("\n")
            log(f"wrote {config.json_path}")
        return document
    finally:
        if made_root:
            shutil.rmtree(root, ignore_errors=True)


def _system_note(name: str) -> str:
    try:
        return make_system(name).note
    except SystemUnavailable as error:
        return str(error)


def _data_parent(data_dir: str | None) -> str:
    """--dir, else ./.raylsm/bench, where the run's temporary root is made."""
    return os.path.abspath(data_dir) if data_dir else os.path.join(os.getcwd(), ".raylsm", "bench")


def _data_root(data_dir: str | None) -> tuple[str, bool]:
    """The directory the systems' data dirs go under; True if it is ours to remove at the end."""
    if data_dir:
        os.makedirs(data_dir, exist_ok=True)
        return os.path.abspath(data_dir), False
    base = _data_parent(None)
    os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix="store-", dir=base), True


def footprint_bytes(page_bytes: int, pages: int) -> int:
    """Most bytes one system holds on the disk while it runs `pages` pages of `page_bytes`."""
    return int(pages * page_bytes * DISK_FACTOR)


def fit_to_disk(pages_by_size: dict[int, int], path: str, log: Callable[[str], None], notes: list[str],
                free: int | None = None) -> dict[int, int]:
    """The page counts scaled down (with a warning in `notes` and `log`) so that one system's data of
    each size fits in the free space at `path` (the systems run one at a time, each removed after);
    ConfigError if not even one batch of a size fits. Creates nothing. `free` overrides the measure."""
    if free is None:
        free = disk_budget.free_bytes(path)
    fitted = dict(pages_by_size)
    for page_bytes, pages in pages_by_size.items():
        need = footprint_bytes(page_bytes, pages)
        if pages <= 0 or disk_budget.with_spare(need) <= free:
            continue
        fitting = int(disk_budget.usable_bytes(free) / DISK_FACTOR / page_bytes)
        if fitting < BATCH_PAGES:
            smallest = disk_budget.with_spare(footprint_bytes(page_bytes, BATCH_PAGES))
            raise ConfigError(
                f"raylsm bench store: not even one batch of {BATCH_PAGES} {size_name(page_bytes)} pages fits: it "
                f"needs {smallest / GB:.2f} GB with the spare room, and {free / GB:.2f} GB is free under {path}; "
                f"free some space, point --dir at another disk, or skip the size (--pages-64k 0 / --pages-1m 0)")
        fitted[page_bytes] = fitting
        notes.append(f"{size_name(page_bytes)}: {pages:,} pages need ~{need / GB:.1f} GB but {free / GB:.1f} GB is "
                     f"free at {path}; scaled down to {fitting:,} pages")
        log("WARNING: " + notes[-1])
    return fitted
