"""`raylsm bench trace`: replay a Mooncake-format trace through SGLang's L3 backends as HiCache drives them.

Owned here: the command's configuration (`ReplayConfig`), the run (the models, then the measured
systems side by side on one request stream), its disk check and its cleanup. It composes the bench
core: the workload (`raylsm.bench.trace`: trace loading, sampling, page keys), the replay loop
(`raylsm.bench.replay`), the systems (`raylsm.bench.systems`) and the report (`raylsm.bench.report`).
Per request, in trace order:

1. L1/L2: a simulated host-memory cache of pages (`HostCacheSim`: LRU with radix-tree eviction
   order, the same for every system) holds a leading run of the prompt's pages; those are not asked
   from L3, as HiCache matches its radix tree before it prefetches.
2. Prefetch: `batch_exists` in chunks of 128 pages (STORAGE_BATCH_SIZE) from the first page L1/L2
   lacks, with `prefix_keys` = the chain before the chunk, stopping at the first short chunk; then
   the get of the hit pages in 128-page chunks, stopping at the first short chunk. Every page read
   is checked byte for byte in the host pool (`wrong_pages`, must be 0).
3. Backup (write-through): the pages after the loaded prefix were computed; they are written in
   128-page chunks, stopping at the first failed chunk, as HiCache's backup thread does.

Systems: `raylsm` (RayLSMStorage built by SGLang's StorageBackendFactory as a `dynamic` backend, v1
zero-copy path, over a Ray tier of `--shards` shard actors), `hicache_file` (SGLang's HiCacheFile
with its LRU evictor at the same capacity, on the generic path SGLang uses for it), and the models
`lru_model` and `belady_optimal` (raylsm.bench.cache_models) on the same post-L1/L2 request stream
at the same capacity in pages, and `lru_sharded_model` (raylsm.bench.shard_models): LRU cut into the
replay's shards by raylsm's own ring and extents, which separates what partitioning costs any cache
from what raylsm's placement and eviction cost. The measured systems are driven in turn for every request, so
background load on the machine hits both alike.

Disk and cleanup: once the window is known (before the models run or anything is written),
`check_disk_space` refuses a replay whose systems would not fit side by side in the free space under
its data directory, naming the --capacity-fraction that would. Whatever the replay starts (its data
directories, the tier's controller and shards, a private Ray) is undone in finally blocks, on success,
error, Ctrl-C or (through raylsm.cli) SIGTERM, even when stopping the tier fails.

Called by the `raylsm bench trace` command (`add_trace_arguments`, `run_trace_command`), by
`python -m raylsm.bench.trace_replay`, and by tests. Single-threaded. Ray, SGLang, torch and
numpy are imported only when a replay runs, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

from raylsm.bench import disk_budget, shard_models
from raylsm.bench.replay import (STORAGE_BATCH_SIZE, HostCacheSim, PoolShape, ReplayPlan, SlotPicker, SystemRun,
                                 make_plan, pool_shape, replay_request, run_models, ttft_ms)
from raylsm.bench.report import (build_report, format_report, jsonable, percentile, progress_bar, rolling, run_series,
                                 summarize, write_json, write_plot)
from raylsm.bench.systems import (SEGMENTS_PER_SHARD, HiCacheFileSystem, RaylsmSystem, ShardCounter, TierSession,
                                  segment_bytes_for, shard_summary, store_latency, sum_counters)
from raylsm.bench.trace import (MODEL_PROFILES, TRACE_BLOCK_TOKENS, conversation_of, load_sampled,
                                sample_conversations)
from raylsm.cli import run_command
from raylsm.cli_args import (SHARDS, CommandParser, CommaList, NumberRange, directory_path, existing_file,
                             output_file, require_ranges)
from raylsm.errors import ConfigError
from raylsm.store.page_key import namespace_id

# Re-exported for the tests and callers that know them from here (the replay core moved out).
__all__ = ["HostCacheSim", "ReplayConfig", "ReplayPlan", "SystemRun", "TierSession", "conversation_of",
           "make_plan", "percentile", "pool_shape", "replay_request", "rolling", "run", "sample_conversations",
           "segment_bytes_for", "summarize", "ttft_ms"]

SYSTEMS = ("raylsm", "hicache_file", "lru_model", "lru_sharded_model", "belady_optimal")
MEASURED = ("raylsm", "hicache_file")
PAGE_CACHE_MODES = ("cold", "warm")
QUICK_SAMPLE_RATE = 1 / 16  # --quick: one conversation in 16 over the whole trace
DEFAULT_PAYLOAD_SCALE = 1 / 16
# The ranges of the flags, checked by argparse and again by ReplayConfig.validate. A capacity above
# the window's distinct page bytes (fraction 1) holds every page: larger ones measure nothing new
# and only fill the disk.
CAPACITY_FRACTION = NumberRange(float, 0, 1, low_open=True, fractions=True)
HOST_CACHE_FRACTION = NumberRange(float, 0, 1, fractions=True)
PAYLOAD_SCALE = NumberRange(float, 0, 1, low_open=True, fractions=True)
SAMPLE_RATE = NumberRange(float, 0, 1, low_open=True, fractions=True)
REQUEST_LIMIT = NumberRange(int, 1, 10**9)
TIME_WINDOW_S = NumberRange(float, 0, 10**9, low_open=True)
PREFILL_TOKENS_PER_S = NumberRange(float, 0, 10**9, low_open=True)
SEED = NumberRange(int, 0, 2**63 - 1)  # packed as an unsigned 64-bit salt by sample_conversations
# Pointer-index bytes per stored page in the disk estimate (a 61-byte key, a 25-byte pointer, RocksDB overhead).
INDEX_BYTES_PER_PAGE = 256
HIT_RATIO_DEFINITION = ("hit_token_ratio = tokens loaded from L3 / tokens asked from L3 (full pages after "
                        "the simulated L1/L2 prefix hit); prompt_hit_token_ratio adds the L1/L2 hits and "
                        "divides by all prompt tokens")

logger = logging.getLogger(__name__)


# ---- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayConfig:
    trace_path: str | None = None  # None: the packaged conversation trace
    limit: int | None = None  # first N requests
    time_window_s: float | None = None  # requests within this many seconds of the first
    sample_rate: float | None = None  # keep this fraction of conversations (None: all; --quick: 1/16)
    page_tokens: int = 64
    profile: str = "qwen2.5-0.5b"
    payload_scale: float = DEFAULT_PAYLOAD_SCALE  # page bytes = page_tokens x KV bytes/token x scale
    capacity_fraction: float = 0.1  # L3 capacity: fraction of the window's distinct page bytes
    host_cache_fraction: float = 0.02  # simulated L1/L2: fraction of the window's distinct pages
    # Shards started here all sit on this machine's one disk: by default they pool its budget and
    # evict as one cache (ShardConfig.pool_disk_budget, docs/placement.md). With `partitioned`, each
    # keeps a fixed share, as shards on separate nodes do. NOTE: partitioned, on the --quick sample
    # (capacity of ~16 extents a shard at 4 shards) that cost 0.18-0.20 L3 hit ratio depending on the
    # ring, against 0.234 with one shard.
    shards: int = 1
    partitioned: bool = False
    # Eviction forwarding between shards of separate disk budgets (ShardConfig.forward_evictions,
    # off by default; only partitioned shards have separate budgets here): on, to measure it.
    forwarding: bool = False
    prefill_tokens_per_s: float = 10_000.0  # modelled GPU prefill rate (8B model, one GPU)
    systems: tuple[str, ...] = SYSTEMS
    data_dir: str | None = None  # default ./.raylsm/bench/trace-<pid>
    ray_address: str | None = None  # join this Ray (and its tier, if up); see TierSession
    raylsm_extra_config: tuple[tuple[str, Any], ...] = ()  # merged into RayLSMStorage's extra config
    json_path: str | None = None
    plot_path: str | None = None
    progress: bool = True
    quick: bool = False
    seed: int = 0
    # "cold": both systems read the disk (raylsm O_DIRECT; hicache_file's cached file pages dropped
    # before each get, untimed). "warm": both read through the kernel page cache (raylsm's shards and
    # fast path with direct_io off).
    page_cache: str = "cold"

    def validate(self) -> "ReplayConfig":
        """Return self, or raise ConfigError naming the flag of the first value out of its range."""
        if self.profile not in MODEL_PROFILES:
            raise ConfigError(f"--profile must be one of {sorted(MODEL_PROFILES)}, got {self.profile!r}")
        require_ranges((
            ("--capacity-fraction", self.capacity_fraction, CAPACITY_FRACTION),
            ("--host-cache-fraction", self.host_cache_fraction, HOST_CACHE_FRACTION),
            ("--payload-scale", self.payload_scale, PAYLOAD_SCALE),
            ("--sample-conversations", self.sample_rate, SAMPLE_RATE),
            ("--limit", self.limit, REQUEST_LIMIT),
            ("--time-window", self.time_window_s, TIME_WINDOW_S),
            ("--shards", self.shards, SHARDS),
            ("--prefill-tokens-per-s", self.prefill_tokens_per_s, PREFILL_TOKENS_PER_S),
            ("--seed", self.seed, SEED)))
        if self.page_tokens not in PAGE_TOKEN_CHOICES:
            raise ConfigError(f"--page-tokens must be {PAGE_TOKENS_ALLOWED}, got {self.page_tokens!r}")
        if self.page_cache not in PAGE_CACHE_MODES:
            raise ConfigError(f"--page-cache must be one of {', '.join(PAGE_CACHE_MODES)}, got {self.page_cache!r}")
        unknown = [name for name in self.systems if name not in SYSTEMS]
        if unknown or not self.systems:
            raise ConfigError(f"--systems must be a non-empty subset of {', '.join(SYSTEMS)}; got {unknown}")
        if "raylsm" in self.systems:
            from raylsm.sglang.extra_config import tier_config_from_extra  # no sglang import: a dict parser

            try:
                tier_config_from_extra({**RaylsmSystem.EXTRA_CONFIG, **dict(self.raylsm_extra_config)})
            except ConfigError as error:
                raise ConfigError(f"--raylsm-extra-config: {error}") from error
        return self


PAGE_TOKEN_CHOICES = tuple(tokens for tokens in range(1, TRACE_BLOCK_TOKENS + 1) if TRACE_BLOCK_TOKENS % tokens == 0)
PAGE_TOKENS_ALLOWED = (f"a divisor of the trace's {TRACE_BLOCK_TOKENS}-token blocks "
                       f"({', '.join(map(str, PAGE_TOKEN_CHOICES))})")


# The shards' forwarding counters summed in the report (raylsm.actors.forwarding).
FORWARDING_TOTALS = ("forwarded_pages", "forwarded_bytes", "received_pages", "forward_dropped_pages",
                     "forward_failed_pages", "forward_second_chances_skipped", "forwarded_reads")


def run(config: ReplayConfig) -> dict:
    """Replay the trace through every selected system; print the table; return the report."""
    config = config.validate()
    started = time.perf_counter()
    sample_rate = config.sample_rate
    if sample_rate is None:
        sample_rate = QUICK_SAMPLE_RATE if config.quick else 1.0
    trace, offered = load_sampled(config.trace_path, limit=config.limit, time_window_s=config.time_window_s,
                                  sample_rate=sample_rate, seed=config.seed)
    plan = make_plan(trace, config.page_tokens, config.host_cache_fraction)
    shape = pool_shape(config.profile, config.page_tokens, config.payload_scale)
    page_bytes = shape.page_bytes
    capacity_bytes = int(config.capacity_fraction * plan.distinct_pages * page_bytes)
    capacity_pages = capacity_bytes // page_bytes
    measured = [name for name in MEASURED if name in config.systems]
    if measured:  # before the models run and before anything is written
        check_disk_space(config, plan.distinct_pages, page_bytes, capacity_bytes)
    sampled = (f" (conversation sample {sample_rate:g} of {offered} requests: whole conversations kept)"
               if sample_rate < 1 else "")
    window = (f"{len(plan)} requests{sampled}, {plan.arrival_s[-1]:.0f} s of trace from "
              f"{config.trace_path or 'the packaged trace'}; "
              f"{sum(len(c) for c in plan.chains)} page references, {plan.distinct_pages} distinct pages of "
              f"{config.page_tokens} tokens; L1/L2 holds {plan.host_capacity_pages} pages "
              f"({config.host_cache_fraction:g} of distinct) and served {sum(plan.host_hit_pages)} page hits")
    print(f"raylsm bench trace: {window}", file=sys.stderr)

    runs: list[SystemRun] = run_models(plan, capacity_pages, config.systems)
    details: dict[str, Any] = {
        "hit_ratio_definition": HIT_RATIO_DEFINITION,
        "page_cache_note": ("cold (--page-cache): both read the disk, raylsm with O_DIRECT, hicache_file after its "
                            "files' cached pages are dropped before each get (untimed)"
                            if config.page_cache == "cold" else
                            "warm (--page-cache): both read through the kernel page cache, which holds the whole "
                            "working set on this machine (raylsm's shards and fast path with direct_io off)"),
        "ttft_model": (f"TTFT = (prompt tokens - L1/L2 hit tokens - L3 hit tokens) / {config.prefill_tokens_per_s:g} "
                       f"tokens/s (modelled prefill, one GPU, 8B-class) + measured L3 load time of the request "
                       f"(exists + get wall time); models have no load time (a lower bound)"),
        "payload_note": f"{page_bytes} B per page ({shape.note}); page bytes = page_tokens x KV bytes per token x "
                        f"--payload-scale; every page read back is checked byte for byte in the host pool",
        "window_note": window,
        "capacity_pages": capacity_pages,
        "page_bytes": page_bytes,
        "page_tokens": config.page_tokens,
        "profile": config.profile,
        "payload_scale": config.payload_scale,
        "sample_rate": sample_rate,
        "capacity_fraction": config.capacity_fraction,
        "host_cache_pages": plan.host_capacity_pages,
        "prefill_tokens_per_s": config.prefill_tokens_per_s,
        "trace": config.trace_path or "packaged",
        "arrival_s": plan.arrival_s,
        "notes": [],
    }
    balance = shards_per_batch = None
    shard_count = config.shards
    shard_names = [f"shard-model-{index}" for index in range(config.shards)]
    routing_id = namespace_id(f"trace-replay-{config.profile}")
    split_extents: frozenset = frozenset()
    if measured:
        measured_runs, tier_details = _run_measured(config, plan, shape, capacity_bytes, measured)
        runs.extend(measured_runs)
        shard_names = tier_details.pop("shard_names", shard_names)  # the tier's own ring, when it ran
        routing_id = tier_details.pop("routing_id", routing_id)
        split_extents = frozenset(tier_details.pop("split_extent_ids", ()))
        balance = tier_details.pop("balance_max_over_mean", None)
        shards_per_batch = tier_details.pop("shards_per_batch_mean", None)
        shard_count = tier_details.pop("shards", shard_count)
        details["notes"].extend(tier_details.pop("notes", []))
        details.update(tier_details)
    details["capacity_note"] = (
        f"{capacity_bytes} B = {config.capacity_fraction:g} x {plan.distinct_pages} distinct pages x {page_bytes} B "
        f"({capacity_pages} pages) for every system" + (
            f"; raylsm: {details.get('per_shard_capacity_bytes')} B per shard ({details.get('disk_budget')}) in segments of "
            f"{details.get('segment_bytes')} B (capacity / shards / {SEGMENTS_PER_SHARD}, >= 256 KiB; the store needs 2 segments)"
            if "segment_bytes" in details else "") + (
            "; hicache_file: LRUFileEvictor max_size, eviction_ratio 0.9" if "hicache_file" in measured else ""))
    if "lru_sharded_model" in config.systems:
        # Split extents as the tier's client had them at the end of the run (from the start: the
        # model pays no transition; docs/placement.md).
        owners = shard_models.shard_assignment(plan.chains, plan.host_hit_pages, shard_names, routing_id,
                                               split_extents=split_extents)
        result = shard_models.simulate_lru_sharded(plan.l3_streams(), owners, capacity_pages, len(shard_names))
        runs.append(SystemRun("lru_sharded_model", measured=False, l3_hit_pages=list(result.per_request_hits),
                              extra={"capacity_pages": capacity_pages, "shards": len(shard_names)}))
    order = {name: index for index, name in enumerate(SYSTEMS)}
    runs.sort(key=lambda item: order[item.name])
    rows = [summarize(item, plan, config.prefill_tokens_per_s) for item in runs]
    details["elapsed_s"] = round(time.perf_counter() - started, 1)
    report = build_report(rows, requests=len(plan), capacity_bytes=capacity_bytes, shards=shard_count,
                          balance_max_over_mean=balance, shards_per_batch_mean=shards_per_batch, details=details)
    series = {item.name: run_series(item, plan, config.prefill_tokens_per_s) for item in runs}
    arrival = report.pop("arrival_s")
    print(format_report(report))
    if config.json_path:
        write_json(config.json_path, report)
        print(f"wrote {config.json_path}", file=sys.stderr)
    if config.plot_path:
        write_plot(config.plot_path, arrival, series, report)
        print(f"wrote {config.plot_path}", file=sys.stderr)
    return report


def data_root(config: ReplayConfig) -> str:
    """The directory a replay writes under: --dir, else ./.raylsm/bench/trace-<pid> (removed afterwards)."""
    return os.path.abspath(config.data_dir or os.path.join(".raylsm", "bench", f"trace-{os.getpid()}"))


def disk_need_bytes(config: ReplayConfig, distinct_pages: int, page_bytes: int, capacity_bytes: int) -> dict[str, int]:
    """Most bytes each measured system can hold under `data_root` at once (they are replayed side by
    side, so they add up): hicache_file evicts its files down to the capacity; raylsm's shards (when
    this machine runs them: no --ray-address) keep segment files within it, and their pointer index.
    Neither holds more than the window's distinct pages. ConfigError if a shard's capacity cannot hold
    its two segments."""
    distinct_bytes = distinct_pages * page_bytes
    need: dict[str, int] = {}
    if "raylsm" in config.systems and config.ray_address is None:
        segment = segment_bytes_for(capacity_bytes // config.shards, page_bytes)
        need["raylsm"] = (min(capacity_bytes, distinct_bytes + config.shards * segment)
                          + distinct_pages * INDEX_BYTES_PER_PAGE)
    if "hicache_file" in config.systems:
        need["hicache_file"] = min(capacity_bytes, distinct_bytes)
    return need


def check_disk_space(config: ReplayConfig, distinct_pages: int, page_bytes: int, capacity_bytes: int,
                     free: int | None = None) -> int:
    """Refuse (ConfigError) a replay whose systems would not fit in the free space under its data
    directory, naming the --capacity-fraction that would; writes nothing. Returns the bytes needed."""
    need = disk_need_bytes(config, distinct_pages, page_bytes, capacity_bytes)
    total = sum(need.values())
    if not total:
        return 0
    root = data_root(config)
    if free is None:
        free = disk_budget.free_bytes(root)
    distinct_bytes = distinct_pages * page_bytes
    fixed = total - len(need) * min(capacity_bytes, distinct_bytes)  # segments and index: not capacity-bound
    largest = (disk_budget.usable_bytes(free) - fixed) / (len(need) * distinct_bytes)  # fraction that fits
    parts = " + ".join(f"{name} {bytes_ / disk_budget.GB:.2f} GB" for name, bytes_ in need.items())
    hint = (f"({parts}, capacity {config.capacity_fraction:g} x {distinct_pages} distinct pages x {page_bytes} B); "
            + (f"lower --capacity-fraction to {math.floor(largest * 1000) / 1000:g} or less, "
               if largest >= 0.001 else "")
            + "lower --payload-scale, replay fewer requests (--limit, --sample-conversations, --quick), "
              "or point --dir at a disk with more room")
    disk_budget.require_free_space(root, total, "raylsm bench trace", hint=hint, free=free)
    return total


def _run_measured(config: ReplayConfig, plan: ReplayPlan, shape: PoolShape, capacity_bytes: int,
                  measured: Sequence[str]) -> tuple[list[SystemRun], dict]:
    import torch

    from raylsm.bench.host_pool import MiniHostKVPool, PagePattern

    for name in ("sglang", "raylsm.sglang", "raylsm.client"):
        logging.getLogger(name).setLevel(logging.ERROR)  # per-page warnings (e.g. HiCacheFile refusals)
    root = data_root(config)
    made_root = not os.path.exists(root)
    details: dict[str, Any] = {"notes": []}
    systems: list[Any] = []
    tier = None
    counter = None
    # Everything from here on is undone by the finally below, on success, error, Ctrl-C or (through
    # raylsm.cli's handler) SIGTERM: systems closed, the tier this run started stopped, data removed.
    try:
        os.makedirs(root, exist_ok=True)
        pool_pages = 2 * STORAGE_BATCH_SIZE
        pool = MiniHostKVPool(pool_pages * config.page_tokens, config.page_tokens, shape.layer_num, shape.head_num,
                              shape.head_dim, getattr(torch, shape.dtype_name))
        assert pool.page_bytes == shape.page_bytes, (pool.page_bytes, shape.page_bytes)
        pattern = PagePattern(pool.page_bytes)
        picker = SlotPicker(pool.page_slots, config.seed)
        model_name = f"trace-replay-{config.profile}"
        if "raylsm" in measured:
            direct_io = config.page_cache == "cold"
            tier = TierSession(config.shards, capacity_bytes, shape.page_bytes, root, config.ray_address, direct_io,
                               pool_disk_budget=not config.partitioned, ring_seed=config.seed,
                               forward_evictions=config.forwarding)
            print("raylsm bench trace: joining or starting the raylsm tier", file=sys.stderr)
            phase = time.perf_counter()
            tier.start()
            print(f"raylsm bench trace: tier ready in {time.perf_counter() - phase:.1f} s "
                  f"({len(tier.shard_names)} shards)", file=sys.stderr)
            extra = {**RaylsmSystem.EXTRA_CONFIG, "local_read_direct_io": direct_io, **dict(config.raylsm_extra_config)}
            details["raylsm_extra_config"] = extra
            raylsm_system = RaylsmSystem(pool, model_name, extra)
            raylsm_system.clear()  # this namespace's pages from an earlier run
            systems.append(raylsm_system)
            counter = ShardCounter(tier.shard_names, raylsm_system.routing_id(), raylsm_system.split_extents)
            details.update(shard_names=list(tier.shard_names), routing_id=raylsm_system.routing_id())
            details.update(shards=len(tier.shard_names), segment_bytes=tier.segment_bytes,
                           per_shard_capacity_bytes=tier.per_shard_capacity,
                           disk_budget=("as the running tier is configured" if not tier.started
                                        else "partitioned" if config.partitioned else "pooled"))
            details["notes"].extend(tier.notes)
        if "hicache_file" in measured:
            directory = os.path.join(root, "hicache_file")
            shutil.rmtree(directory, ignore_errors=True)
            systems.append(HiCacheFileSystem(pool, model_name, directory, capacity_bytes, config.page_cache == "cold"))
        runs = {system.name: SystemRun(system.name, measured=True) for system in systems}
        progress = progress_bar(len(plan), config.progress)
        phase = time.perf_counter()
        for index, chain in enumerate(plan.chains):
            chain_hex = [page.hex() for page in chain]
            start = plan.host_hit_pages[index]
            for system in systems:
                replay_request(system, runs[system.name], chain, chain_hex, start, pattern, picker,
                               counter if system.name == "raylsm" else None)
            progress.update(1)
        progress.close()
        details["replay_s"] = round(time.perf_counter() - phase, 1)
        if counter is not None:
            details["split_extent_ids"] = sorted(raylsm_system.split_extents())
            details["split_extents"] = len(details["split_extent_ids"])
        for system in systems:
            runs[system.name].extra["backend_stats"] = jsonable(system.stats())
        if tier is not None:
            stats = tier.shard_stats()
            live = [(s.get("space") or {}).get("live_bytes", 0) for s in stats]
            mean = sum(live) / len(live) if live else 0
            details["balance_max_over_mean"] = round(max(live) / mean, 3) if mean else None
            calls = runs["raylsm"].shards_per_call
            details["shards_per_batch_mean"] = round(sum(calls) / len(calls), 3) if calls else None
            details["shard_stats"] = [shard_summary(s) for s in stats]
            forwarding = [s["forwarding"] for s in stats if isinstance(s.get("forwarding"), dict)]
            if forwarding and config.partitioned:
                details["forwarding"] = {key: sum(f.get(key, 0) for f in forwarding) for key in FORWARDING_TOTALS}
            runs["raylsm"].extra["store_counters"] = sum_counters(stats)
            runs["raylsm"].extra["store_latency_ms"] = store_latency(stats)
        wrong = sum(item.wrong_pages for item in runs.values())
        if wrong:
            details["notes"].append(f"VERIFICATION FAILED: {wrong} pages read back with wrong bytes")
        return list(runs.values()), details
    finally:
        try:
            for system in systems:
                try:
                    if system.name == "raylsm" and tier is not None and not tier.owns_controller:
                        system.clear()  # leave a joined tier without this run's pages
                    system.close()
                except Exception:  # noqa: BLE001 (close the others, stop the tier, remove the data)
                    logger.exception("closing %s failed", system.name)
            if tier is not None:
                phase = time.perf_counter()
                try:
                    tier.stop()
                    print(f"raylsm bench trace: tier stopped in {time.perf_counter() - phase:.1f} s", file=sys.stderr)
                except Exception as error:  # noqa: BLE001 (an interrupted run's Ray may be half gone: remove the data)
                    print(f"raylsm bench trace: stopping the tier failed: {error!r}", file=sys.stderr)
        finally:
            remove_run_data(root, made_root=made_root or config.data_dir is None,
                            tier_started=tier is not None and tier.started)


def remove_run_data(root: str, made_root: bool, tier_started: bool) -> None:
    """Remove what a replay wrote under `root`: all of it if the run made `root` (or it is the default
    ./.raylsm/bench/trace-<pid>), else its hicache_file directory and, if it started the tier, the
    shards' directory (an existing --dir may hold other things)."""
    if made_root:
        shutil.rmtree(root, ignore_errors=True)
        return
    shutil.rmtree(os.path.join(root, "hicache_file"), ignore_errors=True)
    if tier_started:
        shutil.rmtree(os.path.join(root, "shards"), ignore_errors=True)


# ---- command line -------------------------------------------------------------------------------


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _page_tokens(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value not in PAGE_TOKEN_CHOICES:
        raise argparse.ArgumentTypeError(f"must be {PAGE_TOKENS_ALLOWED}, got {text!r}")
    return value


def add_trace_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Declare the arguments of `raylsm bench trace` on `parser` (returns it). Every value is range-checked
    here (argparse refuses it in one line) and again by ReplayConfig.validate."""
    parser.add_argument("--trace", metavar="PATH", dest="trace_path", type=existing_file,
                        help="Mooncake-format trace (.jsonl or .jsonl.gz; default: the packaged conversation trace)")
    parser.add_argument("--quick", action="store_true",
                        help="replay one conversation in 16 over the whole trace (the same hit ratios as the "
                             "whole trace at 1/16 of the work; under 3 minutes on 2 cores)")
    parser.add_argument("--sample-conversations", type=SAMPLE_RATE, metavar="F", dest="sample_rate",
                        help=f"keep this fraction of the conversations, all their turns, {SAMPLE_RATE.describe()} "
                             f"(default 1; --quick 1/16)")
    parser.add_argument("--limit", type=REQUEST_LIMIT, metavar="N",
                        help=f"replay the first N requests, {REQUEST_LIMIT.describe()}")
    parser.add_argument("--time-window", type=TIME_WINDOW_S, metavar="S", dest="time_window_s",
                        help=f"replay the requests within S seconds of the first one, {TIME_WINDOW_S.describe()}")
    parser.add_argument("--shards", type=SHARDS, default=1, metavar="N",
                        help=f"shard actors when this command starts the tier, {SHARDS.describe()} (default 1: one "
                             f"per disk, and this machine has one; N > 1 shards on its one disk pool the capacity and "
                             f"evict as one cache, see --partitioned)")
    parser.add_argument("--partitioned", action="store_true",
                        help="give each shard started here a fixed share of the capacity (no disk budget pool), as "
                             "shards on separate nodes have: what partitioning costs")
    parser.add_argument("--forwarding", action="store_true",
                        help="with --partitioned: shards forward what they evict to a shard whose oldest pages are "
                             "older, instead of dropping it (ShardConfig.forward_evictions, off by default; "
                             "docs/placement.md)")
    parser.add_argument("--capacity-fraction", type=CAPACITY_FRACTION, default=0.1, metavar="F",
                        help=f"L3 capacity as a fraction of the replayed window's distinct page bytes, "
                             f"{CAPACITY_FRACTION.describe()} (default 0.1; 1 holds every page); every measured "
                             f"system gets this capacity on the disk of --dir, and a run that would not fit is refused")
    parser.add_argument("--host-cache-fraction", type=HOST_CACHE_FRACTION, default=0.02, metavar="F",
                        help=f"simulated L1/L2 capacity as a fraction of the window's distinct pages, "
                             f"{HOST_CACHE_FRACTION.describe()} (default 0.02)")
    parser.add_argument("--page-tokens", type=_page_tokens, default=64, metavar="T",
                        help=f"tokens per page, {PAGE_TOKENS_ALLOWED} (default 64)")
    parser.add_argument("--profile", default="qwen2.5-0.5b", choices=sorted(MODEL_PROFILES),
                        help="modelled model: KV bytes per token (default qwen2.5-0.5b, 12 KiB/token)")
    parser.add_argument("--payload-scale", type=PAYLOAD_SCALE, default=DEFAULT_PAYLOAD_SCALE, metavar="S",
                        help=f"scale page bytes down to fit the disk and the time, {PAYLOAD_SCALE.describe()} "
                             f"(default 1/16: 48 KiB pages)")
    parser.add_argument("--prefill-tokens-per-s", type=PREFILL_TOKENS_PER_S, default=10_000.0, metavar="R",
                        help=f"modelled prefill rate of the TTFT model, {PREFILL_TOKENS_PER_S.describe()} "
                             f"(default 10000 tokens/s)")
    parser.add_argument("--systems", metavar="LIST", type=CommaList(SYSTEMS),
                        help=f"comma-separated subset of {', '.join(SYSTEMS)} (default: all)")
    parser.add_argument("--json", metavar="PATH", dest="json_path", type=output_file, help="write the report as JSON")
    parser.add_argument("--plot", metavar="PATH", dest="plot_path", type=output_file,
                        help="write a PNG: hit ratio and modelled TTFT over trace time, per system")
    parser.add_argument("--dir", metavar="PATH", dest="data_dir", type=directory_path,
                        help="data directory (default ./.raylsm/bench/trace-<pid>, removed afterwards)")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="join this Ray cluster and the raylsm tier on it (default: the Ray head `raylsm up` "
                             "started from this directory, else a private local Ray with --shards shards); "
                             "with Ray's token authentication, set RAY_AUTH_MODE=token as for any explicit address")
    parser.add_argument("--raylsm-extra-config", metavar="JSON", type=_json_object, default={},
                        help='extra keys for RayLSMStorage\'s extra config, e.g. \'{"same_node_fast_path": false}\'')
    parser.add_argument("--seed", type=SEED, default=0,
                        help=f"seed of the host-pool slot choice, the conversation sample and a private tier's ring "
                             f"(shards shard-bench-<seed>-<i>), {SEED.describe()}")
    parser.add_argument("--page-cache", choices=PAGE_CACHE_MODES, default="cold",
                        help="cold (default): both systems read the disk, raylsm with O_DIRECT and hicache_file "
                             "after its files' cached pages are dropped (untimed), as when host memory holds the "
                             "L2 pool and the tier is larger than RAM; warm: both read through the kernel page "
                             "cache (raylsm with direct_io off)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def config_from_args(args: argparse.Namespace) -> ReplayConfig:
    systems = SYSTEMS
    if args.systems:
        systems = tuple(args.systems)
    return ReplayConfig(
        trace_path=args.trace_path, limit=args.limit, time_window_s=args.time_window_s, sample_rate=args.sample_rate,
        page_tokens=args.page_tokens, profile=args.profile, payload_scale=args.payload_scale,
        capacity_fraction=args.capacity_fraction, host_cache_fraction=args.host_cache_fraction,
        shards=args.shards, partitioned=args.partitioned, forwarding=args.forwarding,
        prefill_tokens_per_s=args.prefill_tokens_per_s,
        systems=systems, data_dir=args.data_dir, ray_address=args.ray_address,
        raylsm_extra_config=tuple(sorted(args.raylsm_extra_config.items())), json_path=args.json_path, plot_path=args.plot_path,
        progress=not args.no_progress, quick=args.quick, seed=args.seed, page_cache=args.page_cache)


def run_trace_command(args: argparse.Namespace) -> int:
    """Handler of `raylsm bench trace`: 0 on success, 1 if a page was read back wrong. Bad input (a
    value out of range, a trace file that is not one, a run the disk cannot hold) raises ConfigError
    before anything is written; `raylsm.cli.run_command` prints it as one line, exit status 2."""
    report = run(config_from_args(args).validate())
    wrong = sum(row.get("wrong_pages", 0) for row in report["systems"])
    return 1 if wrong else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = CommandParser(prog="python -m raylsm.bench.trace_replay", description=__doc__.splitlines()[0])
    add_trace_arguments(parser)
    return run_command(parser.prog, run_trace_command, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

