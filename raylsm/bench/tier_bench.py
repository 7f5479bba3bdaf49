"""`raylsm bench tier`: what Ray costs on the read path, on one node.

Owned here: one workload (chains of 128-page batches of 256 KiB pages, SGLang's page_first layout)
read cold, in the same run, three ways into the same host KV pool:
  store_direct   ShardStore.get_batch_into straight into the pool's page parts (no Ray at all);
  tier_object    RayLSMStorage.batch_get_v1 through a shard actor and the object store;
  tier_fast      RayLSMStorage.batch_get_v1 with the same-node fast path (pointers from the actor,
                 bytes read by the client from the segment files).
Only the get calls are timed; every page read is checked against the bytes written (untimed,
between calls). With `--clients C` (> 1), also C client processes at once on both tier paths
(`raylsm.bench.tier_clients`: aggregate put and cold get GB/s, per-call p50/p99), and always the
same disk's cold read ceiling with C readers (`disk_ceiling_gb_per_s`). Called by `raylsm.cli`; not
imported by the layers above.

Disk and cleanup: before it creates anything, `run` checks the bytes it will hold at once (the
store pass's data, removed before the tier pass, then the tier's two namespaces) against the free
space under `data_dir` and refuses (ConfigError, naming the --batches that fit) if they do not fit.
Its temporary directory and the private Ray instance with its shard are removed in finally blocks,
on success, error, Ctrl-C or (through raylsm.cli) SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import ray

from raylsm.bench import disk_budget, interrupts, tier_clients
from raylsm.bench.host_pool import MiniHostKVPool, PagePattern
from raylsm.bench.store_report import BATCH_PAGES
from raylsm.bench.systems import RaylsmSystem
from raylsm.config import TierConfig
from raylsm.router import ExtentConfig, page_keys
from raylsm.store import ShardStore, StoreConfig
from raylsm.store.page_key import namespace_id
from raylsm.sglang.host_pages import page_parts

# 2 (K, V) x 8 layers x 64 tokens x 2 heads x 64 dims x 2 bytes = 256 KiB per page.
POOL_SHAPE = {"page_size": 64, "layer_num": 8, "head_num": 2, "head_dim": 64}
PAGE_BYTES = 2 * POOL_SHAPE["layer_num"] * POOL_SHAPE["page_size"] * POOL_SHAPE["head_num"] * POOL_SHAPE["head_dim"] * 2
SEGMENT_BYTES = 256 << 20


@dataclass(frozen=True)
class TierBenchConfig:
    batches: int = 24
    data_dir: str = "./.raylsm/bench"
    json_path: str | None = None
    clients: int = 1  # > 1: also C client processes at once (raylsm.bench.tier_clients)


def _drop_caches() -> str:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3")
        return "page cache dropped"
    except OSError:
        return "page cache not dropped (not permitted): O_DIRECT reads only"


def chains_of(batches: int, first: int = 0) -> list[list[bytes]]:
    """`batches` chains of BATCH_PAGES chained page hashes, numbered from `first` (distinct numbers,
    distinct pages)."""
    import hashlib

    chains = []
    for chain in range(first, first + batches):
        previous, hashes = b"", []
        for depth in range(BATCH_PAGES):
            previous = hashlib.sha256(previous + chain.to_bytes(4, "little") + depth.to_bytes(4, "little")).digest()
            hashes.append(previous)
        chains.append(hashes)
    return chains


def _timed_reads(pool: MiniHostKVPool, pattern: PagePattern, read_slots: list[int], batches: list[tuple],
                 read: Callable[[list[bytes], Any], int]) -> dict:
    """Read every (store keys, request) batch into `read_slots` with `read(keys, request)` (which
    returns its hits), timing only that call; the slots are poisoned before and checked after."""
    seconds, wrong = 0.0, 0
    for keys, request in batches:
        pattern.poison(pool, read_slots)
        started = time.perf_counter()
        hits = read(keys, request)
        seconds += time.perf_counter() - started
        wrong += BATCH_PAGES - hits + pattern.wrong_pages(pool, read_slots, keys)
    return {"seconds": seconds, "wrong_pages": wrong}


def store_capacity_bytes(batches: int, clients: int = 1) -> int:
    """The capacity of the benchmark's stores (the store pass's and the tier's one shard): the tier's
    namespaces of every page (two; four with --clients > 1: the concurrent phase writes its own
    pages on both paths; the store pass holds one) and 4 segments of headroom (the open segment is
    preallocated whole; the pointer index counts too), so nothing is evicted."""
    namespaces = 2 if clients == 1 else 4
    return namespaces * batches * BATCH_PAGES * PAGE_BYTES + 4 * SEGMENT_BYTES


def disk_need_bytes(batches: int, clients: int = 1) -> int:
    """Most bytes a run holds under its data directory at once: one store's capacity (the store pass's
    data is removed before the tier pass), which a store also demands of the free space when it opens,
    and the disk ceiling's file of the same bytes as one namespace."""
    return store_capacity_bytes(batches, clients) + batches * BATCH_PAGES * PAGE_BYTES


def check_disk_space(config: TierBenchConfig, free: int | None = None) -> int:
    """Refuse (ConfigError naming the --batches that fit) a run that would not fit in the free space
    under `config.data_dir`; writes nothing. Returns the bytes needed."""
    need = disk_need_bytes(config.batches, config.clients)
    if free is None:
        free = disk_budget.free_bytes(config.data_dir)
    fitting = config.batches
    while fitting > 0 and disk_budget.with_spare(disk_need_bytes(fitting, config.clients)) > free:
        fitting //= 2
    hint = (f"lower --batches (each holds {2 * BATCH_PAGES * PAGE_BYTES / disk_budget.GB:.3f} GB in the tier)"
            + (f", e.g. to {fitting}" if fitting else "") + ", or run from a disk with more room")
    disk_budget.require_free_space(config.data_dir, need, f"raylsm bench tier --batches {config.batches}",
                                   hint=hint, free=free)
    return need


def run(config: TierBenchConfig) -> dict:
    check_disk_space(config)  # before anything is created, or Ray imported
    from raylsm import lifecycle

    os.makedirs(config.data_dir, exist_ok=True)
    root = tempfile.mkdtemp(prefix="tier-", dir=config.data_dir)
    results: dict[str, dict] = {}
    concurrent: list[dict] = []
    ceiling: dict = {}
    cache_note = ""
    try:
        pool = MiniHostKVPool(size=2 * BATCH_PAGES * POOL_SHAPE["page_size"], **POOL_SHAPE)
        assert pool.page_bytes == PAGE_BYTES, (pool.page_bytes, PAGE_BYTES)
        pattern = PagePattern(pool.page_bytes)
        chains = chains_of(config.batches)
        hex_chains = [[page.hex() for page in chain] for chain in chains]  # SGLang's keys, made untimed
        write_slots, read_slots = list(range(BATCH_PAGES)), list(range(BATCH_PAGES, 2 * BATCH_PAGES))
        total_bytes = config.batches * BATCH_PAGES * pool.page_bytes
        # 1. The store alone, reading into the same host-pool pages.
        store_config = StoreConfig(capacity_bytes=store_capacity_bytes(config.batches, config.clients),
                                   segment_bytes=SEGMENT_BYTES)
        namespace = namespace_id("tier-bench")
        with ShardStore.open(os.path.join(root, "store"), store_config) as store:
            for hashes in chains:
                keys = page_keys(namespace, hashes, [], ExtentConfig())
                pattern.fill(pool, write_slots, keys)
                assert all(store.put_batch(keys, page_parts(pool, pool.host_indices(write_slots), BATCH_PAGES)))
            cache_note = _drop_caches()
            results["store_direct"] = _timed_reads(pool, pattern, read_slots, [
                (page_keys(namespace, hashes, [], ExtentConfig()), hashes) for hashes in chains],
                lambda keys, _: sum(store.get_batch_into(
                    keys, page_parts(pool, pool.host_indices(read_slots), BATCH_PAGES))))
        shutil.rmtree(os.path.join(root, "store"), ignore_errors=True)  # the tier pass needs the room

        # 2./3. Through Ray: one shard on this node, the adapter as SGLang loads it.
        tier_config = TierConfig.from_dict({"shard": {"data_dir": os.path.join(root, "tier"), "store": {
            "capacity_bytes": store_config.capacity_bytes, "segment_bytes": store_config.segment_bytes}}})
        # A private local Ray instance with one shard on this node (never another session's cluster).
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, resources={"raylsm_shard": 1},
                     namespace=tier_config.ray_namespace, log_to_driver=False)
            interrupts.restore_handlers()  # SIGTERM must reach the finally blocks, not Ray's abort
            lifecycle.up(tier_config, shards=1)
            for system, fast in (("tier_object", False), ("tier_fast", True)):
                extra = {**RaylsmSystem.EXTRA_CONFIG, "same_node_fast_path": fast}
                adapter = RaylsmSystem(pool, f"tier-bench-{system}", extra)
                for hashes, hexes in zip(chains, hex_chains):
                    keys = page_keys(adapter.namespace_id(), hashes, [], ExtentConfig())
                    pattern.fill(pool, write_slots, keys)
                    assert adapter.set(hexes, [], write_slots)
                _drop_caches()
                results[system] = _timed_reads(pool, pattern, read_slots, [
                    (page_keys(adapter.namespace_id(), hashes, [], ExtentConfig()), hexes)
                    for hashes, hexes in zip(chains, hex_chains)],
                    lambda _, hexes: adapter.get(hexes, [], read_slots))
                adapter.close()
            if config.clients > 1:
                address = ray.get_runtime_context().gcs_address
                for system, fast in (("tier_object", False), ("tier_fast", True)):
                    concurrent.append(tier_clients.run_clients(address, config.clients, config.batches, fast,
                                                               POOL_SHAPE, _drop_caches, system))
        finally:
            try:
                if ray.is_initialized():
                    lifecycle.down(state_dir=root)  # closes the stores; the marker-less Ray is ours to stop
            except Exception as error:  # noqa: BLE001 (an interrupted run may have no controller to ask)
                print(f"raylsm bench tier: stopping the tier failed: {error!r}", file=sys.stderr)
            finally:
                ray.shutdown()
        shutil.rmtree(os.path.join(root, "tier"), ignore_errors=True)
        # The same disk's cold read ceiling, with as many readers as clients (reads of one page and of
        # one 128-page batch; the best pass counts).
        ceiling = tier_clients.disk_ceiling(root, total_bytes, PAGE_BYTES, config.clients, _drop_caches)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    base = total_bytes / results["store_direct"]["seconds"] / 1e9
    rows = []
    for system, measured in results.items():
        gb_per_s = total_bytes / measured["seconds"] / 1e9
        rows.append({"system": system, "clients": 1, "gb_per_s": gb_per_s, "ratio_to_store": gb_per_s / base,
                     "wrong_pages": measured["wrong_pages"], "batch_ms": measured["seconds"] * 1e3 / config.batches})
    disk = ceiling.get("disk_ceiling_gb_per_s")
    for row in concurrent:
        row["ratio_to_store"] = row["gb_per_s"] / base if row["gb_per_s"] else None
        row["ratio_to_disk_ceiling"] = round(row["gb_per_s"] / disk, 3) if row["gb_per_s"] and disk else None
        rows.append(row)
    report = {"page_bytes": pool.page_bytes, "batch_pages": BATCH_PAGES, "batches": config.batches,
              "cache": cache_note, "results": rows, "clients": config.clients, **ceiling}
    print(format_report(report))
    if config.json_path:
        os.makedirs(os.path.dirname(os.path.abspath(config.json_path)), exist_ok=True)
        with open(config.json_path, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


def format_report(report: dict) -> str:
    lines = [f"cold batch_get_v1 of {report['batch_pages']} pages x {report['page_bytes'] // 1024} KiB, "
             f"{report['batches']} batches, one shard on this node ({report['cache']})",
             f"{'system':<14}{'clients':>8}{'GB/s':>8}{'ms/batch':>10}{'vs store':>10}{'wrong':>7}"]
    for row in report["results"]:
        if row["clients"] != 1:
            continue
        lines.append(f"{row['system']:<14}{1:>8}{row['gb_per_s']:>8.3f}{row['batch_ms']:>10.1f}"
                     f"{row['ratio_to_store']:>9.0%}{row['wrong_pages']:>7}")
    lines.append("goal: through Ray >= 70% of the store's direct throughput")
    many = [row for row in report["results"] if row["clients"] != 1]
    if many:
        lines.append(f"{'system':<14}{'clients':>8}{'get GB/s':>10}{'get p50':>9}{'get p99':>9}{'put GB/s':>10}"
                     f"{'put p99':>9}{'vs disk':>9}{'missed':>8}{'wrong':>7}")
        for row in many:
            lines.append(f"{row['system']:<14}{row['clients']:>8}{_num(row['gb_per_s'], 3):>10}"
                         f"{_num(row['get_p50_ms'], 1):>9}{_num(row['get_p99_ms'], 1):>9}"
                         f"{_num(row['put_gb_per_s'], 3):>10}{_num(row['put_p99_ms'], 1):>9}"
                         f"{_num(row['ratio_to_disk_ceiling'], 2):>9}{row['missing_pages']:>8}{row['wrong_pages']:>7}")
        lines.append(f"goal: {report['clients']} clients' aggregate cold get >= 80% of the disk ceiling")
    if report.get("disk_ceiling_gb_per_s") is not None:
        lines.append(f"disk ceiling (cold O_DIRECT reads, {report['ceiling_threads']} threads, best pass): "
                     f"{report['disk_ceiling_gb_per_s']:.3f} GB/s (random page reads "
                     f"{report['random_gb_per_s']}, 128-page chunks {report['sequential_gb_per_s']})")
    return "\n".join(lines)


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"

