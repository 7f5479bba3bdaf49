"""`raylsm bench tier --clients C`: C client processes on one node driving one shard at once.

Owned here: the concurrent phase of the tier benchmark and the disk ceiling it is judged against.

- `run_clients`: C separate processes (multiprocessing, spawn), each its own host KV pool and its own
  `RayLSMStorage` (as SGLang loads it) on the node of the one shard, on the object path or the
  same-node fast path, with a pool region per batch. Together, behind barriers: every client writes
  its share of the batches back to back (`batch_set_v1`, 128 pages a call), the page cache is
  dropped, every client reads its share back cold (`batch_get_v1`). Per call: wall time; per phase:
  aggregate GB/s (bytes / the phase's wall span, first call start to last call end). Pages are
  filled before and every page read is checked after the timed phases.
- `disk_ceiling`: the cold read ceiling of the same disk in the same run, with C threads: one file
  of the same bytes written O_DIRECT, read back O_DIRECT as random page-sized reads and as 128-page
  sequential chunks (each pass twice, the best pass is the ceiling, so that a ratio to it is not
  flattered).

Called by `raylsm.bench.tier_bench`. The client processes are Ray drivers on the benchmark's private
Ray instance (its GCS address is passed to them).
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

import numpy as np

from raylsm.bench.store_report import BATCH_PAGES


def client_main(spec: dict, barrier: Any, results: Any) -> None:
    """One client process: build, then (behind `barrier`) put its batches, wait while the caches are
    dropped, get them back; `results.put((client, dict))`."""
    client = spec["client"]
    try:
        result = _client(spec, barrier)
    except BaseException as error:  # noqa: BLE001 (reported by the parent; a broken barrier frees the others)
        barrier.abort()
        result = {"failure": repr(error)}
    results.put((client, result))


def _client(spec: dict, barrier: Any) -> dict:
    from raylsm.bench.cpu_torchvision import forget_inherited_torchvision

    forget_inherited_torchvision()  # before torch and SGLang are imported
    from raylsm.bench.host_pool import MiniHostKVPool, PagePattern
    from raylsm.bench.systems import RaylsmSystem
    from raylsm.bench.tier_bench import chains_of
    from raylsm.router import ExtentConfig, page_keys

    # One 128-page region of the pool per batch: pages are filled before the timed puts and checked
    # after the timed gets, so that no client's fill or check (CPU) runs beside another's timed calls.
    # NOTE: with the check between calls (the single-client pass's way), 4 clients on 2 cores measured
    # 0.80 GB/s on the fast path: the checks of three clients ran during the fourth one's reads.
    batches = spec["batches"]
    pool = MiniHostKVPool(size=batches * BATCH_PAGES * spec["pool_shape"]["page_size"], **spec["pool_shape"])
    pattern = PagePattern(pool.page_bytes)
    regions = [list(range(index * BATCH_PAGES, (index + 1) * BATCH_PAGES)) for index in range(batches)]
    extra = {**RaylsmSystem.EXTRA_CONFIG, "same_node_fast_path": spec["fast"], "ray_address": spec["ray_address"],
             **spec["extra_config"]}
    system = RaylsmSystem(pool, spec["model_name"], extra)
    try:
        chains = chains_of(batches, spec["first_chain"])
        hexes = [[page.hex() for page in chain] for chain in chains]
        keys = [page_keys(system.namespace_id(), chain, [], ExtentConfig()) for chain in chains]
        for chain_keys, slots in zip(keys, regions):
            pattern.fill(pool, slots, chain_keys)
        barrier.wait()  # every client built and filled
        puts, put_failures = [], 0
        for chain_hexes, slots in zip(hexes, regions):
            started = time.time()
            ok = system.set(chain_hexes, [], slots)
            puts.append((started, time.time()))
            put_failures += not ok
        for slots in regions:
            pattern.poison(pool, slots)
        barrier.wait()  # all written: the parent drops the page cache
        barrier.wait()  # dropped
        gets, hits = [], []
        for chain_hexes, slots in zip(hexes, regions):
            started = time.time()
            hits.append(system.get(chain_hexes, [], slots))
            gets.append((started, time.time()))
        wrong = sum(pattern.wrong_pages(pool, slots[:hit], chain_keys[:hit])
                    for hit, slots, chain_keys in zip(hits, regions, keys))
        return {"puts": puts, "gets": gets, "wrong_pages": wrong, "missing_pages": BATCH_PAGES * batches - sum(hits),
                "put_failures": put_failures, "page_bytes": pool.page_bytes}
    finally:
        system.close()


def _phase(calls: list[tuple[float, float]], bytes_per_call: int) -> dict:
    from raylsm.bench.report import percentile

    if not calls:
        return {"gb_per_s": None, "p50_ms": None, "p99_ms": None}
    span = max(end for _, end in calls) - min(start for start, _ in calls)
    latencies = [(end - start) * 1e3 for start, end in calls]
    return {"gb_per_s": round(len(calls) * bytes_per_call / span / 1e9, 3) if span > 0 else None,
            "p50_ms": round(percentile(latencies, 50), 2), "p99_ms": round(percentile(latencies, 99), 2)}


def run_clients(ray_address: str, clients: int, batches: int, fast: bool, pool_shape: dict,
                drop_caches: Any, label: str, extra_config: dict | None = None) -> dict:
    """One concurrent phase: `clients` processes, `batches` 128-page batches split among them (at
    least one each), `extra_config` merged into each client's RayLSMStorage extra config. Returns the
    row: aggregate put and get GB/s and per-call p50/p99, `wrong_pages` (loaded with bytes other than
    written: must be 0) and `missing_pages` (not loaded: a call past its deadline is a miss)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(clients + 1), context.Queue()
    share = max(1, batches // clients)
    specs = [{"client": index, "fast": fast, "ray_address": ray_address, "pool_shape": pool_shape,
              "model_name": f"tier-bench-{label}", "first_chain": 10_000 * (index + 1) + (5_000 if fast else 0),
              "batches": share, "extra_config": dict(extra_config or {})} for index in range(clients)]
    processes = [context.Process(target=client_main, args=(spec, barrier, results), daemon=True) for spec in specs]
    for process in processes:
        process.start()
    try:
        barrier.wait(timeout=300)  # built (imports of torch, SGLang and Ray: tens of seconds)
        barrier.wait(timeout=600)  # written
        drop_caches()
        barrier.wait(timeout=60)
        collected = dict(results.get(timeout=600) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    failures = [result["failure"] for result in collected.values() if "failure" in result]
    if failures:
        raise RuntimeError(f"bench tier --clients {clients} ({label}): a client failed: {failures[0]}")
    page_bytes = next(iter(collected.values()))["page_bytes"]
    batch_bytes = BATCH_PAGES * page_bytes
    puts = [call for result in collected.values() for call in result["puts"]]
    gets = [call for result in collected.values() for call in result["gets"]]
    put, get = _phase(puts, batch_bytes), _phase(gets, batch_bytes)
    return {"system": label, "clients": clients, "batches": share * clients,
            "gb_per_s": get["gb_per_s"], "get_p50_ms": get["p50_ms"], "get_p99_ms": get["p99_ms"],
            "put_gb_per_s": put["gb_per_s"], "put_p50_ms": put["p50_ms"], "put_p99_ms": put["p99_ms"],
            "wrong_pages": sum(result["wrong_pages"] for result in collected.values()),
            "missing_pages": sum(result["missing_pages"] for result in collected.values()),
            "put_failures": sum(result["put_failures"] for result in collected.values())}


# ---- the disk ceiling -------------------------------------------------------------------------------


def disk_ceiling(directory: str, total_bytes: int, page_bytes: int, threads: int, drop_caches: Any,
                 repeats: int = 2) -> dict:
    """Cold O_DIRECT reads of one file of `total_bytes` (page-aligned) with `threads` threads: random
    page-sized reads and 128-page sequential chunks, each pass `repeats` times; the best pass is the
    ceiling. Returns {"disk_ceiling_gb_per_s", "random_gb_per_s": [...], "sequential_gb_per_s": [...]}.
    The file is removed afterwards."""
    from raylsm.store.io_buffers import aligned_empty
    from raylsm.store.segment import full_pwritev

    pages = total_bytes // page_bytes
    path = os.path.join(directory, "ceiling.dat")
    chunk = BATCH_PAGES * page_bytes
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    try:
        source = aligned_empty(chunk)
        source[:] = np.frombuffer(np.random.default_rng(0).bytes(chunk), dtype=np.uint8)
        for start in range(0, pages, BATCH_PAGES):
            count = min(BATCH_PAGES, pages - start)
            full_pwritev(descriptor, [memoryview(source[:count * page_bytes])], start * page_bytes)
        os.fdatasync(descriptor)
        out: dict[str, list[float]] = {"random_gb_per_s": [], "sequential_gb_per_s": []}
        for _ in range(repeats):
            for order in ("random", "sequential"):
                if order == "random":
                    units = [(page * page_bytes, page_bytes) for page in range(pages)]
                else:
                    units = [(start * page_bytes, min(BATCH_PAGES, pages - start) * page_bytes)
                             for start in range(0, pages, BATCH_PAGES)]
                random.Random(len(out[f"{order}_gb_per_s"])).shuffle(units)
                drop_caches()
                out[f"{order}_gb_per_s"].append(round(_read_all(descriptor, units, threads, chunk) / 1e9, 3))
        best = max(out["random_gb_per_s"] + out["sequential_gb_per_s"])
        return {"disk_ceiling_gb_per_s": best, **out, "ceiling_threads": threads}
    finally:
        os.close(descriptor)
        os.remove(path)


def _read_all(descriptor: int, units: list[tuple[int, int]], threads: int, buffer_bytes: int) -> float:
    """Bytes per second of reading every (offset, length) unit, split round robin over `threads`."""
    from raylsm.store.io_buffers import aligned_empty
    from raylsm.store.segment import full_preadv

    def reader(mine: list[tuple[int, int]]) -> None:
        buffer = aligned_empty(buffer_bytes)
        for offset, length in mine:
            full_preadv(descriptor, [memoryview(buffer[:length])], offset)

    workers = [threading.Thread(target=reader, args=(units[index::threads],)) for index in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(length for _, length in units) / (time.perf_counter() - started)
