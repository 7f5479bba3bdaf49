"""`raylsm bench trace`: replay a Mooncake-format trace through SGLang's L3 backends as HiCache drives them.

Owned here: the replay engine and its report. Per request, in trace order:

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
`python -m raylsm.bench.trace_replay`, and by tests (the pure parts: `HostCacheSim`, `ttft_ms`,
`percentile`, `summarize`, `build_report`, `format_report`). Single-threaded. Ray, SGLang, torch and
numpy are imported only when a replay runs, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import struct
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

from raylsm.bench import cache_models, disk_budget, interrupts, shard_models
from raylsm.bench.trace import (MODEL_PROFILES, TRACE_BLOCK_TOKENS, PageKeyCache, load_trace,
                                page_bytes as profile_page_bytes)
from raylsm.cli import (SHARDS, CommandParser, CommaList, NumberRange, directory_path, existing_file,
                        output_file, run_command)
from raylsm.errors import ConfigError
from raylsm.store.page_key import namespace_id

STORAGE_BATCH_SIZE = 128  # SGLang's pages per backend call (hicache_storage.STORAGE_BATCH_SIZE)
MiB = 1 << 20
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
    # One shard per node-local disk, as deployed: this machine has one. More shards on one disk split
    # its capacity into fixed partitions by extent. NOTE: on the --quick sample (capacity of ~16
    # extents a shard at 4 shards) that cost 0.18-0.20 L3 hit ratio depending on the ring (shard
    # names hold random node ids), against 0.234 with one shard; at full-trace scale the partition
    # effect is small (simulated LRU: 0.2204 with 1 shard, 0.2165 with 4).
    shards: int = 1
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
        for flag, value, allowed in (
                ("--capacity-fraction", self.capacity_fraction, CAPACITY_FRACTION),
                ("--host-cache-fraction", self.host_cache_fraction, HOST_CACHE_FRACTION),
                ("--payload-scale", self.payload_scale, PAYLOAD_SCALE),
                ("--sample-conversations", self.sample_rate, SAMPLE_RATE),
                ("--limit", self.limit, REQUEST_LIMIT),
                ("--time-window", self.time_window_s, TIME_WINDOW_S),
                ("--shards", self.shards, SHARDS),
                ("--prefill-tokens-per-s", self.prefill_tokens_per_s, PREFILL_TOKENS_PER_S),
                ("--seed", self.seed, SEED)):
            if value is not None and not allowed.contains(value):
                raise ConfigError(f"{flag} must be {allowed.describe()}, got {value!r}")
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


@dataclass(frozen=True)
class PoolShape:
    """Host-pool dimensions of the modelled model, head_dim (or the whole token) scaled to fit the disk."""

    layer_num: int
    head_num: int
    head_dim: int
    dtype_name: str  # "bfloat16" or "uint8"
    page_bytes: int
    note: str


def pool_shape(profile_name: str, page_tokens: int, scale: float) -> PoolShape:
    """The model's own layers and KV heads with head_dim x scale if that is a whole number (bf16);
    otherwise one layer of one head of uint8 holding the scaled bytes of a token (8-byte multiple)."""
    profile = MODEL_PROFILES[profile_name]
    target = profile_page_bytes(profile, page_tokens, scale)
    head_dim = profile.head_dim * scale
    if abs(head_dim - round(head_dim)) < 1e-9 and round(head_dim) >= 1 and profile.dtype_bytes == 2:
        shape = PoolShape(profile.layers, profile.kv_heads, int(round(head_dim)), "bfloat16",
                          2 * profile.layers * profile.kv_heads * int(round(head_dim)) * 2 * page_tokens,
                          f"{profile.name}: {profile.layers} layers x {profile.kv_heads} KV heads x head_dim "
                          f"{profile.head_dim} x {scale:g} = {int(round(head_dim))}, bf16")
    else:
        part_per_token = max(8, int(target / 2 / page_tokens) // 8 * 8)
        shape = PoolShape(1, 1, part_per_token, "uint8", 2 * part_per_token * page_tokens,
                          f"{profile.name} x {scale:g}: {part_per_token} bytes per token per K/V part, uint8")
    return shape


# NOTE: the store's budget counts its RocksDB index too, so a shard of exactly 16 segments holds
# only 15 (`raylsm bench trace --quick`: L3 hit 0.202); with 64 segments the index costs a fraction
# of one (0.234, the same as 16 segments before the index was counted).
SEGMENTS_PER_SHARD = 64


def segment_bytes_for(per_shard_capacity: int, page_bytes: int) -> int:
    """Segment size of a shard: capacity / SEGMENTS_PER_SHARD rounded down to 4 KiB, at least 1 MiB
    and one page (plus headers); ConfigError if the shard cannot hold two segments (the store's minimum)."""
    segment = max(MiB, per_shard_capacity // SEGMENTS_PER_SHARD // 4096 * 4096)
    segment = max(segment, (page_bytes + 2 * 8192 + 4095) // 4096 * 4096)
    if per_shard_capacity < 2 * segment:
        raise ConfigError(
            f"per-shard capacity {per_shard_capacity} B is below two segments of {segment} B: raise "
            f"--capacity-fraction or --payload-scale, replay more requests, or use fewer --shards")
    return segment


def conversation_of(request: Any) -> int:
    """The block that tells a request's conversation: its second block (the first one, 0 in the
    conversation trace, is a system prompt every request shares); its only block if it has one."""
    return request.hash_ids[1] if len(request.hash_ids) > 1 else (request.hash_ids[0] if request.hash_ids else -1)


def sample_conversations(trace: Sequence[Any], rate: float, salt: int = 0) -> list[Any]:
    """Keep the requests whose conversation hashes below `rate` (spatial sampling, as SHARDS samples
    keys): a kept conversation keeps all its turns, so the reuse that L3 can serve is kept, and the
    window's distinct pages (hence the capacity) shrink with the rate. NOTE: on the conversation trace
    at 10% capacity, 1/16 of conversations gives LRU 0.22 and Belady 0.32 (salts 0 and 1: 0.216-0.220,
    0.306-0.324), as the whole trace does (0.220, 0.320), with 1/16 of its page references."""
    if rate >= 1:
        return list(trace)
    limit = int(rate * 2**64)
    kept = []
    for request in trace:
        digest = hashlib.blake2b(_SAMPLE_KEY.pack(conversation_of(request) & (2**64 - 1), salt), digest_size=8).digest()
        if int.from_bytes(digest, "little") < limit:
            kept.append(request)
    return kept


_SAMPLE_KEY = struct.Struct("<QQ")


# ---- the simulated L1/L2 ------------------------------------------------------------------------


class HostCacheSim:
    """L1/L2 (GPU and host memory) in front of L3: an LRU over pages with prefix semantics.

    `access(chain)` returns how many leading pages of the chain are held, then inserts or refreshes
    every page of the chain deepest first, so a chain's shallow pages are the most recent and the
    least recent pages are the deep ends of old chains: the order in which a radix tree evicts
    leaves first. Capacity 0 holds nothing.
    """

    def __init__(self, capacity_pages: int) -> None:
        if capacity_pages < 0:
            raise ConfigError(f"capacity_pages must be >= 0, got {capacity_pages}")
        self.capacity_pages = capacity_pages
        self._pages: OrderedDict[Hashable, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pages)

    def __contains__(self, page: Hashable) -> bool:
        return page in self._pages

    def access(self, chain: Sequence[Hashable]) -> int:
        pages = self._pages
        hits = 0
        for page in chain:
            if page not in pages:
                break
            hits += 1
        if not self.capacity_pages:
            return hits
        for page in reversed(chain):
            if page in pages:
                pages.move_to_end(page)
            else:
                pages[page] = None
        while len(pages) > self.capacity_pages:
            pages.popitem(last=False)
        return hits


@dataclass
class ReplayPlan:
    """The request stream every system sees: chains of 32-byte page hashes and the L1/L2 hits."""

    arrival_s: list[float]
    prompt_tokens: list[int]
    chains: list[list[bytes]]
    host_hit_pages: list[int]
    page_tokens: int
    distinct_pages: int
    host_capacity_pages: int

    def __len__(self) -> int:
        return len(self.chains)

    def l3_streams(self) -> list[list[bytes]]:
        """What each request asks L3 for: its chain after the L1/L2 prefix hit."""
        return [chain[hit:] for chain, hit in zip(self.chains, self.host_hit_pages)]

    def asked_pages(self) -> list[int]:
        return [len(chain) - hit for chain, hit in zip(self.chains, self.host_hit_pages)]


def make_plan(trace: Sequence[Any], page_tokens: int, host_cache_fraction: float) -> ReplayPlan:
    keys = PageKeyCache(page_tokens)
    chains = [keys.pages(request) for request in trace]
    distinct = cache_models.distinct_pages(chains)
    host = HostCacheSim(int(round(host_cache_fraction * distinct)))
    first_ms = trace[0].timestamp_ms if trace else 0
    return ReplayPlan(
        arrival_s=[(request.timestamp_ms - first_ms) / 1000 for request in trace],
        prompt_tokens=[request.input_length for request in trace],
        chains=chains,
        host_hit_pages=[host.access(chain) for chain in chains],
        page_tokens=page_tokens,
        distinct_pages=distinct,
        host_capacity_pages=host.capacity_pages,
    )


# ---- per-system results and the TTFT model ------------------------------------------------------


def ttft_ms(prompt_tokens: int, cached_tokens: int, load_ms: float, prefill_tokens_per_s: float) -> float:
    """Modelled time to first token: prefill of the tokens not cached at prefill_tokens_per_s, plus
    the measured L3 load time (exists + get wall time) of the request."""
    missed = max(prompt_tokens - cached_tokens, 0)
    return missed / prefill_tokens_per_s * 1e3 + load_ms


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100, linear interpolation); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class SystemRun:
    """What one system did over the replay; per-request lists are in trace order."""

    name: str
    measured: bool
    l3_hit_pages: list[int] = field(default_factory=list)
    load_ms: list[float] = field(default_factory=list)  # exists + get wall time per request
    exists_ms: list[float] = field(default_factory=list)  # per call
    get_ms: list[float] = field(default_factory=list)
    put_ms: list[float] = field(default_factory=list)
    get_bytes: int = 0
    put_bytes: int = 0
    wrong_pages: int = 0  # pages read back with bytes other than written: must be 0
    failed_put_chunks: int = 0
    shards_per_call: list[int] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def summarize(run: SystemRun, plan: ReplayPlan, prefill_tokens_per_s: float) -> dict:
    """One row of the report: hit ratios, call latencies, read bandwidth and modelled TTFT."""
    page_tokens = plan.page_tokens
    asked = sum(plan.asked_pages())
    hits = sum(run.l3_hit_pages)
    host_hits = sum(plan.host_hit_pages)
    prompt = sum(plan.prompt_tokens)
    loads = run.load_ms if run.measured else [0.0] * len(plan)
    ttfts = [ttft_ms(tokens, (host + l3) * page_tokens, load, prefill_tokens_per_s)
             for tokens, host, l3, load in zip(plan.prompt_tokens, plan.host_hit_pages, run.l3_hit_pages, loads)]
    get_s = sum(run.get_ms) / 1e3

    def ms(values: Sequence[float], q: float) -> float | None:
        value = percentile(values, q) if run.measured else None
        return None if value is None else round(value, 3)

    row = {
        "system": run.name,
        "hit_token_ratio": round(hits / asked, 6) if asked else 0.0,
        "get_p50_ms": ms(run.get_ms, 50),
        "get_p99_ms": ms(run.get_ms, 99),
        "put_p50_ms": ms(run.put_ms, 50),
        "put_p99_ms": ms(run.put_ms, 99),
        "ttft_model_ms_mean": round(sum(ttfts) / len(ttfts), 3) if ttfts else None,
        "ttft_model_ms_p99": round(percentile(ttfts, 99), 3) if ttfts else None,
        "exists_p50_ms": ms(run.exists_ms, 50),
        "exists_p99_ms": ms(run.exists_ms, 99),
        "read_gb_per_s": round(run.get_bytes / get_s / 1e9, 3) if run.measured and get_s > 0 else None,
        "call_s_total": ({"exists": round(sum(run.exists_ms) / 1e3, 2), "get": round(get_s, 2),
                          "put": round(sum(run.put_ms) / 1e3, 2)} if run.measured else None),
        "load_ms_mean": round(sum(loads) / len(loads), 3) if run.measured and loads else None,
        "prompt_hit_token_ratio": round((hits + host_hits) * page_tokens / prompt, 6) if prompt else 0.0,
        "l3_hit_tokens": hits * page_tokens,
        "l3_asked_tokens": asked * page_tokens,
        "measured": run.measured,
    }
    if run.measured:
        row.update(get_calls=len(run.get_ms), put_calls=len(run.put_ms), exists_calls=len(run.exists_ms),
                   get_bytes=run.get_bytes, put_bytes=run.put_bytes, wrong_pages=run.wrong_pages,
                   failed_put_chunks=run.failed_put_chunks)
    row.update(run.extra)
    return row


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, 3)


def build_report(rows: Sequence[dict], *, requests: int, capacity_bytes: int, shards: int,
                 balance_max_over_mean: float | None, shards_per_batch_mean: float | None,
                 details: dict | None = None) -> dict:
    """The JSON document of a run (the keys of the issue, then ratios and details)."""
    by_name = {row["system"]: row for row in rows}
    report: dict[str, Any] = {
        "systems": list(rows),
        "balance_max_over_mean": balance_max_over_mean,
        "shards_per_batch_mean": shards_per_batch_mean,
        "requests": requests,
        "capacity_bytes": capacity_bytes,
        "shards": shards,
    }
    ours, file_row = by_name.get("raylsm"), by_name.get("hicache_file")
    ratios: dict[str, Any] = {}
    if ours and file_row:
        ratios["raylsm_over_hicache_file_hit_token_ratio"] = _ratio(ours["hit_token_ratio"], file_row["hit_token_ratio"])
        ratios["hicache_file_over_raylsm_get_p99"] = _ratio(file_row["get_p99_ms"], ours["get_p99_ms"])
        ratios["hicache_file_over_raylsm_get_p50"] = _ratio(file_row["get_p50_ms"], ours["get_p50_ms"])
        ratios["hicache_file_over_raylsm_put_p99"] = _ratio(file_row["put_p99_ms"], ours["put_p99_ms"])
        ratios["hicache_file_over_raylsm_ttft_mean"] = _ratio(file_row["ttft_model_ms_mean"], ours["ttft_model_ms_mean"])
        ratios["goal_hit_ratio_met"] = ours["hit_token_ratio"] >= file_row["hit_token_ratio"]
        ratios["goal_get_p99_met"] = (ours["get_p99_ms"] is not None and file_row["get_p99_ms"] is not None
                                      and ours["get_p99_ms"] < file_row["get_p99_ms"])
    lru, belady = by_name.get("lru_model"), by_name.get("belady_optimal")
    if lru and belady:
        gap = belady["hit_token_ratio"] - lru["hit_token_ratio"]
        for row in (ours, file_row):
            if row:
                ratios[f"{row['system']}_lru_to_belady"] = (
                    round((row["hit_token_ratio"] - lru["hit_token_ratio"]) / gap, 3) if gap > 0 else None)
    report["ratios"] = ratios
    report.update(details or {})
    return report


def format_report(report: dict) -> str:
    """The human-readable table (one row per system), the ratios and the stated models."""
    columns = [("system", "system", "{}"), ("hit_token_ratio", "L3 hit", "{:.3f}"),
               ("prompt_hit_token_ratio", "prompt hit", "{:.3f}"),
               ("exists_p99_ms", "exists p99", "{:.2f}"),
               ("get_p50_ms", "get p50", "{:.2f}"), ("get_p99_ms", "get p99", "{:.2f}"),
               ("put_p50_ms", "put p50", "{:.2f}"), ("put_p99_ms", "put p99", "{:.2f}"),
               ("read_gb_per_s", "read GB/s", "{:.2f}"),
               ("ttft_model_ms_mean", "TTFT mean", "{:.0f}"), ("ttft_model_ms_p99", "TTFT p99", "{:.0f}")]
    table = [[title for _, title, _ in columns]]
    for row in report["systems"]:
        table.append([("-" if row.get(key) is None else fmt.format(row[key])) for key, _, fmt in columns])
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in
                       enumerate(zip(line, widths))) for line in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append("(latencies in ms per call of <= 128 pages, TTFT in ms; '-' = not measured: models have no I/O)")
    ratios = report.get("ratios", {})
    if "raylsm_over_hicache_file_hit_token_ratio" in ratios:
        lines.append(
            f"raylsm vs hicache_file: L3 hit ratio x{_show(ratios['raylsm_over_hicache_file_hit_token_ratio'])}, "
            f"get p99 {_show(ratios['hicache_file_over_raylsm_get_p99'])}x lower, "
            f"get p50 {_show(ratios['hicache_file_over_raylsm_get_p50'])}x lower, "
            f"TTFT mean {_show(ratios['hicache_file_over_raylsm_ttft_mean'])}x lower; goal (hit >=, get p99 <): "
            f"{'met' if ratios['goal_hit_ratio_met'] and ratios['goal_get_p99_met'] else 'NOT met'}")
    for name in MEASURED:
        key = f"{name}_lru_to_belady"
        if key in ratios:
            lines.append(f"{name}: {_show(ratios[key])} of the way from LRU to Belady ((system - lru) / (belady - lru))")
    if report.get("balance_max_over_mean") is not None:
        lines.append(f"raylsm balance: stored bytes max/mean over {report['shards']} shards "
                     f"{report['balance_max_over_mean']:.2f}; shards per 128-page call "
                     f"{_show(report.get('shards_per_batch_mean'))}")
    for key in ("hit_ratio_definition", "ttft_model", "page_cache_note", "capacity_note", "payload_note", "window_note", "notes"):
        value = report.get(key)
        if isinstance(value, list):
            lines.extend(f"note: {item}" for item in value)
        elif value:
            lines.append(f"{key.replace('_', ' ')}: {value}")
    return "\n".join(lines)


def _show(value: Any) -> str:
    return "-" if value is None else f"{value}"


# ---- the measured systems -----------------------------------------------------------------------


def _storage_config(model_name: str, extra_config: dict):
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig

    return HiCacheStorageConfig(
        tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1, is_mla_model=False,
        enable_storage_metrics=False, is_page_first_layout=True, model_name=model_name,
        extra_config=dict(extra_config))


def _leading(results: Sequence[Any]) -> int:
    for count, value in enumerate(results):
        if not value:
            return count
    return len(results)


class RaylsmSystem:
    """RayLSMStorage as SGLang loads it (`--hicache-storage-backend dynamic`), on the v1 path."""

    name = "raylsm"
    EXTRA_CONFIG = {"backend_name": "raylsm", "module_path": "raylsm.sglang.backend",
                    "class_name": "RayLSMStorage", "interface_v1": 1, "hicache_storage_pass_prefix_keys": True}

    def __init__(self, pool: Any, model_name: str, extra_config: dict | None = None) -> None:
        from sglang.srt.mem_cache.hicache_storage import HiCacheStorageExtraInfo
        from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory

        self._extra_info = HiCacheStorageExtraInfo
        self.pool = pool
        self.extra_config = dict(extra_config or self.EXTRA_CONFIG)
        # The factory calls cls(storage_config, kwargs) and does not pass the pool: SGLang registers
        # it right after, then calls on_host_pools_registered.
        self.storage = StorageBackendFactory.create_backend("dynamic", _storage_config(model_name, self.extra_config), pool)
        self.storage.register_mem_pool_host(pool)
        self.storage.on_host_pools_registered()

    def clear(self) -> None:
        self.storage.clear()

    def exists(self, keys: list[str], prefix: list[str]) -> int:
        return self.storage.batch_exists(keys, extra_info=self._extra_info(prefix_keys=prefix))

    def get(self, keys: list[str], prefix: list[str], slots: Sequence[int]) -> int:
        indices = self.pool.host_indices(slots)
        return _leading(self.storage.batch_get_v1(keys, indices, self._extra_info(prefix_keys=prefix)))

    def set(self, keys: list[str], prefix: list[str], slots: Sequence[int]) -> bool:
        indices = self.pool.host_indices(slots)
        return all(self.storage.batch_set_v1(keys, indices, self._extra_info(prefix_keys=prefix)))

    def namespace_id(self) -> bytes:
        """The index namespace id of this replay's pages (rank included)."""
        from raylsm.store.page_key import namespace_id

        return namespace_id(self.storage.raylsm_stats()["namespace"])

    def routing_id(self) -> bytes:
        """The namespace id the adapter routes this replay's pages by (its rank-free identity)."""
        from raylsm.store.page_key import namespace_id

        return namespace_id(self.storage.raylsm_stats()["routing_namespace"])

    def split_extents(self) -> frozenset:
        """The extents the tier split (hot shared prefixes), as this replay's client routes them."""
        return self.storage._client.split_extents

    def stats(self) -> dict:
        return self.storage.raylsm_stats()

    def close(self) -> None:
        self.storage.close()


class HiCacheFileSystem:
    """SGLang's HiCacheFile (built by the factory as `file`) with its LRU evictor capped at the same
    capacity; no v1, so the generic path: flat staging pages in, one copy into the host pool each way."""

    name = "hicache_file"

    def __init__(self, pool: Any, model_name: str, directory: str, capacity_bytes: int,
                 cold_page_cache: bool = False) -> None:
        from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory

        self.cold_page_cache = cold_page_cache
        os.environ.pop("SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR", None)  # would override the directory
        self.pool = pool
        self.directory = directory
        # eviction_ratio stays SGLang's default (0.9): a full cache evicts down to 90% of max_size.
        extra = {"file_storage_path": directory, "max_size": str(capacity_bytes)}
        self.storage = StorageBackendFactory.create_backend("file", _storage_config(model_name, extra), pool)
        if not self.storage._evictor.enabled:  # noqa: SLF001 (a check that the cap took effect)
            raise RuntimeError("HiCacheFile's LRU evictor did not enable with max_size")

    def clear(self) -> None:
        self.storage.clear()

    def exists(self, keys: list[str], prefix: list[str]) -> int:
        return self.storage.batch_exists(keys)  # the base class loops exists(): one stat per key

    def before_get(self, keys: list[str]) -> None:
        """With cold_page_cache, drop the kernel's cached pages of the files about to be read (not
        timed), so the read goes to the disk as it would when host memory is taken by the L2 pool.
        Pages still dirty (written within the kernel's writeback delay) stay cached."""
        if not self.cold_page_cache:
            return
        for key in keys:
            path = os.path.join(self.directory, f"{self.storage._get_suffixed_key(key)}.bin")  # noqa: SLF001
            try:
                descriptor = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)

    def get(self, keys: list[str], prefix: list[str], slots: Sequence[int]) -> int:
        # cache_controller._generic_page_get: flat staging pages, then set_from_flat_data_page.
        pool = self.pool
        staging = [pool.get_dummy_flat_data_page() for _ in keys]
        pages = self.storage.batch_get(keys, staging)
        if pages is None:
            return 0
        count = 0
        for slot, page in zip(slots, pages):
            if page is None:
                break
            pool.set_from_flat_data_page(slot * pool.page_size, page)
            count += 1
        return count

    def set(self, keys: list[str], prefix: list[str], slots: Sequence[int]) -> bool:
        # cache_controller._generic_page_set: a flat copy of every page, then batch_set.
        pool = self.pool
        return bool(self.storage.batch_set(keys, [pool.get_data_page(slot * pool.page_size) for slot in slots]))

    def stats(self) -> dict:
        evictor = self.storage._evictor  # noqa: SLF001
        return {"files": len(evictor._lru), "bytes": evictor._total_bytes, "max_size": evictor.max_size_bytes}

    def close(self) -> None:
        pass  # HiCacheFile has no close()


class TierSession:
    """The raylsm tier of one replay.

    Which Ray: `ray_address` if given; else the Ray head that `raylsm up` started from this directory
    (its marker file exists); else a private local Ray instance owned by this process (`ray.init(
    address="local")`), never some other Ray instance that happens to run on the machine (a test
    session's, say). A tier already running on the joined Ray is used as it is: its shards are resized
    to the replay's capacity for the run and restored afterwards. Otherwise the controller and shards
    are started here (fresh data directory) and shut down at the end, and a private Ray goes with them.
    """

    def __init__(self, shards: int, capacity_bytes: int, page_bytes: int, data_dir: str,
                 ray_address: str | None = None, direct_io: bool = True) -> None:
        self.requested_shards = shards
        self.direct_io = direct_io
        self.capacity_bytes = capacity_bytes
        self.page_bytes = page_bytes
        self.data_dir = data_dir
        self.ray_address = ray_address
        self.owns_ray = False
        self.owns_controller = False
        self.shard_names: list[str] = []
        self.segment_bytes = 0
        self.per_shard_capacity = 0
        self.notes: list[str] = []
        self._restore: dict[str, dict] = {}

    @property
    def started(self) -> bool:
        return self.owns_controller

    def start(self) -> None:
        import ray

        from raylsm import lifecycle
        from raylsm.config import RAY_NAMESPACE, ShardConfig, TierConfig
        from raylsm.controller.controller_actor import get_controller
        from raylsm.store.config import StoreConfig

        address = self.ray_address
        if address is None:
            address = _embedded_ray_address()
            if address:
                _token_auth_as_for_auto()  # what ray.init(address="auto") does for a local cluster
        if address:
            ray.init(address=address, namespace=RAY_NAMESPACE, log_to_driver=False)
            interrupts.restore_handlers()  # SIGTERM must reach the replay's cleanup, not Ray's abort
            try:
                controller = get_controller(RAY_NAMESPACE)
            except ValueError:
                controller = None
            if controller is not None:
                self.shard_names = sorted(ray.get(controller.ring.remote())["shards"])
                if not self.shard_names:
                    raise ConfigError(f"the raylsm tier on Ray {address} has no serving shards")
                self._resize_running_tier(address)
                return
        else:
            ray.init(address="local", namespace=RAY_NAMESPACE, include_dashboard=False, log_to_driver=False,
                     resources={ShardConfig().resource_name: self.requested_shards})
            interrupts.restore_handlers()
            self.owns_ray = True
        self.per_shard_capacity = self.capacity_bytes // self.requested_shards
        self.segment_bytes = segment_bytes_for(self.per_shard_capacity, self.page_bytes)
        store = StoreConfig(capacity_bytes=self.per_shard_capacity, segment_bytes=self.segment_bytes,
                            direct_io=self.direct_io)
        config = TierConfig(shard=ShardConfig(data_dir=os.path.join(self.data_dir, "shards"), store=store))
        self.owns_controller = True
        lifecycle.up(config, shards=self.requested_shards)  # Ray is initialized: controller + shards only
        self.shard_names = sorted(ray.get(get_controller(RAY_NAMESPACE).ring.remote())["shards"])
        if len(self.shard_names) != self.requested_shards:
            self.per_shard_capacity = self.capacity_bytes // len(self.shard_names)
            self.notes.append(f"Ray at {address} offers {len(self.shard_names)} shard units; --shards "
                              f"{self.requested_shards} applies only to a private Ray; per-shard capacity is "
                              f"the configured {self.capacity_bytes // self.requested_shards} B")

    def _resize_running_tier(self, address: str) -> None:
        import ray

        self.per_shard_capacity = self.capacity_bytes // len(self.shard_names)
        self.segment_bytes = segment_bytes_for(self.per_shard_capacity, self.page_bytes)
        for name in self.shard_names:
            handle = ray.get_actor(name, namespace="raylsm")
            current = ray.get(handle.apply_tuning.remote({}))
            self._restore[name] = {"capacity_bytes": current["capacity_bytes"],
                                   "segment_bytes": current["segment_bytes"], "direct_io": current["direct_io"]}
            ray.get(handle.apply_tuning.remote({"capacity_bytes": self.per_shard_capacity,
                                                "segment_bytes": self.segment_bytes, "direct_io": self.direct_io}))
        self.notes.append(
            f"used the running tier on Ray {address} ({len(self.shard_names)} shards): capacity "
            f"{self.per_shard_capacity} B, segments of {self.segment_bytes} B and direct_io {self.direct_io} per "
            f"shard for the run, restored "
            f"afterwards; data already on the shards counts against the capacity until eviction frees it, and "
            f"a segment open before the run keeps its old size")

    def shard_stats(self) -> list[dict]:
        from raylsm import lifecycle

        return [shard.get("stats") or {} for shard in lifecycle.status()["shards"]
                if shard["shard"] in self.shard_names]

    def stop(self) -> None:
        """Shut down what start() started (not `lifecycle.down`: its `ray stop --force` would stop every
        Ray instance on the machine when a `raylsm up` marker exists); restore a joined tier's tuning."""
        import ray

        from raylsm.controller.controller_actor import get_controller

        if not ray.is_initialized():
            return
        try:
            if self.owns_controller:
                try:  # an interrupted start() may not have made it, and a Ctrl-C may have hit its actors
                    controller = get_controller("raylsm")
                    ray.get(controller.shutdown.remote(), timeout=120)
                    ray.kill(controller, no_restart=True)
                except Exception as error:  # noqa: BLE001 (a private Ray still goes down below)
                    logger.warning("could not shut the raylsm controller down: %r", error)
            for name, values in self._restore.items():
                try:
                    ray.get(ray.get_actor(name, namespace="raylsm").apply_tuning.remote(values))
                except Exception as error:  # noqa: BLE001 (report, keep restoring the others)
                    logger.warning("could not restore %s on %s: %r", values, name, error)
        finally:
            ray.shutdown()  # a private Ray instance ends with it; a joined one is only disconnected


def _token_auth_as_for_auto() -> None:
    from raylsm import lifecycle

    lifecycle.enable_local_token_auth()


def _embedded_ray_address() -> str | None:
    """The GCS address of the Ray head `raylsm up` started from this directory, or None if it did not
    (or it is gone): recorded in its marker file by raylsm.lifecycle."""
    from raylsm import lifecycle

    return lifecycle.embedded_address()


class ShardCounter:
    """Shards a raylsm call touches, by the router with the client's extent config, ring and split
    extents (`split_extents()`: the client's current set, which the controller changes during a run)."""

    def __init__(self, shard_names: Sequence[str], namespace_id: bytes,
                 split_extents: Callable[[], frozenset] = frozenset) -> None:
        from raylsm.config import ClientConfig
        from raylsm.router import ExtentConfig, ExtentRouter, HashRing

        client = ClientConfig()
        self._ring = HashRing(sorted(shard_names), client.virtual_nodes)
        self._extents = ExtentConfig(client.extent_pages, client.shallow_depth_pages, client.shallow_extent_pages,
                                     client.split_extent_pages)
        self._router = ExtentRouter(self._ring, self._extents)
        self._split_extents = split_extents
        self._namespace_id = namespace_id

    def shards(self, chain: Sequence[bytes], start: int, end: int) -> int:
        from raylsm.router import ExtentRouter

        splits = self._split_extents()
        if splits != self._router.split_extents:
            self._router = ExtentRouter(self._ring, self._extents, splits)
        return len(set(self._router.route_pages(self._namespace_id, chain[start:end], chain[:start])))


# ---- the replay loop ----------------------------------------------------------------------------


class SlotPicker:
    """Host-pool page slots for one call, drawn at random like a host allocator's free list."""

    def __init__(self, page_slots: int, seed: int) -> None:
        import numpy as np

        self._rng = np.random.default_rng(seed)
        self._slots = page_slots

    def pick(self, count: int) -> list[int]:
        return self._rng.choice(self._slots, size=count, replace=False).tolist()


def replay_request(system: Any, run: SystemRun, chain: Sequence[bytes], chain_hex: Sequence[str], start: int,
                   pattern: Any, slots: SlotPicker, shard_counter: ShardCounter | None = None) -> None:
    """One request through one system: exists and get from `start` (after the L1/L2 hit), verify,
    then back up the computed pages. Appends to `run`."""
    pool = system.pool
    page_bytes = pool.page_bytes
    perf = time.perf_counter
    load_started = perf()
    present = 0
    total = len(chain)
    for begin in range(start, total, STORAGE_BATCH_SIZE):
        end = min(begin + STORAGE_BATCH_SIZE, total)
        called = perf()
        found = system.exists(list(chain_hex[begin:end]), list(chain_hex[:begin]))
        run.exists_ms.append((perf() - called) * 1e3)
        present += found
        if found < end - begin:
            break
    loaded = 0
    for begin in range(start, start + present, STORAGE_BATCH_SIZE):
        end = min(begin + STORAGE_BATCH_SIZE, start + present)
        picked = slots.pick(end - begin)
        pattern.poison(pool, picked)
        before_get = getattr(system, "before_get", None)
        if before_get is not None:
            untimed = perf()
            before_get(list(chain_hex[begin:end]))
            load_started += perf() - untimed  # not part of the request's load time either
        called = perf()
        got = system.get(list(chain_hex[begin:end]), list(chain_hex[:begin]), picked)
        run.get_ms.append((perf() - called) * 1e3)
        run.get_bytes += got * page_bytes
        run.wrong_pages += pattern.wrong_pages(pool, picked[:got], chain[begin:begin + got])
        if shard_counter is not None:
            run.shards_per_call.append(shard_counter.shards(chain, begin, end))
        loaded += got
        if got < end - begin:
            break
    run.load_ms.append((perf() - load_started) * 1e3)
    run.l3_hit_pages.append(loaded)
    for begin in range(start + loaded, total, STORAGE_BATCH_SIZE):
        end = min(begin + STORAGE_BATCH_SIZE, total)
        picked = slots.pick(end - begin)
        pattern.fill(pool, picked, chain[begin:end])
        called = perf()
        ok = system.set(list(chain_hex[begin:end]), list(chain_hex[:begin]), picked)
        run.put_ms.append((perf() - called) * 1e3)
        if shard_counter is not None:
            run.shards_per_call.append(shard_counter.shards(chain, begin, end))
        if not ok:
            run.failed_put_chunks += 1
            break
        run.put_bytes += (end - begin) * page_bytes


def run_models(plan: ReplayPlan, capacity_pages: int, systems: Sequence[str]) -> list[SystemRun]:
    streams = plan.l3_streams()
    runs = []
    for name, model in (("lru_model", cache_models.simulate_lru), ("belady_optimal", cache_models.simulate_belady)):
        if name in systems:
            result = model(streams, capacity_pages)
            runs.append(SystemRun(name, measured=False, l3_hit_pages=list(result.per_request_hits),
                                  extra={"capacity_pages": capacity_pages}))
    return runs


def run(config: ReplayConfig) -> dict:
    """Replay the trace through every selected system; print the table; return the report."""
    config = config.validate()
    started = time.perf_counter()
    sample_rate = config.sample_rate
    if sample_rate is None:
        sample_rate = QUICK_SAMPLE_RATE if config.quick else 1.0
    try:
        trace = load_trace(config.trace_path, limit=config.limit, time_window_s=config.time_window_s)
    except (OSError, ValueError) as error:  # a missing, unreadable or malformed file is bad input
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"--trace {config.trace_path or 'packaged trace'}: {error}") from error
    offered = len(trace)
    trace = sample_conversations(trace, sample_rate, config.seed)
    if not trace:
        raise ConfigError("the trace window (and sample) holds no requests")
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
            f"; raylsm: {details.get('per_shard_capacity_bytes')} B per shard in segments of "
            f"{details.get('segment_bytes')} B (capacity / shards / {SEGMENTS_PER_SHARD}, >= 1 MiB; the store needs 2 segments)"
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
    series = {item.name: _series(item, plan, config.prefill_tokens_per_s) for item in runs}
    arrival = report.pop("arrival_s")
    print(format_report(report))
    if config.json_path:
        _write_json(config.json_path, report)
        print(f"wrote {config.json_path}", file=sys.stderr)
    if config.plot_path:
        write_plot(config.plot_path, arrival, series, report)
        print(f"wrote {config.plot_path}", file=sys.stderr)
    return report


def _series(run: SystemRun, plan: ReplayPlan, rate: float) -> dict:
    loads = run.load_ms if run.measured else [0.0] * len(plan)
    return {
        "hit": run.l3_hit_pages,
        "asked": plan.asked_pages(),
        "ttft": [ttft_ms(tokens, (host + l3) * plan.page_tokens, load, rate)
                 for tokens, host, l3, load in zip(plan.prompt_tokens, plan.host_hit_pages, run.l3_hit_pages, loads)],
    }


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


def _write_json(path: str, report: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        json.dump(report, out, indent=2)
        out.write("\n")


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
            tier = TierSession(config.shards, capacity_bytes, shape.page_bytes, root, config.ray_address, direct_io)
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
                           per_shard_capacity_bytes=tier.per_shard_capacity)
            details["notes"].extend(tier.notes)
        if "hicache_file" in measured:
            directory = os.path.join(root, "hicache_file")
            shutil.rmtree(directory, ignore_errors=True)
            systems.append(HiCacheFileSystem(pool, model_name, directory, capacity_bytes, config.page_cache == "cold"))
        runs = {system.name: SystemRun(system.name, measured=True) for system in systems}
        progress = _progress(len(plan), config.progress)
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
            runs[system.name].extra["backend_stats"] = _jsonable(system.stats())
        if tier is not None:
            stats = tier.shard_stats()
            live = [(s.get("space") or {}).get("live_bytes", 0) for s in stats]
            mean = sum(live) / len(live) if live else 0
            details["balance_max_over_mean"] = round(max(live) / mean, 3) if mean else None
            calls = runs["raylsm"].shards_per_call
            details["shards_per_batch_mean"] = round(sum(calls) / len(calls), 3) if calls else None
            details["shard_stats"] = [_shard_summary(s) for s in stats]
            runs["raylsm"].extra["store_counters"] = _sum_counters(stats)
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


def _shard_summary(stats: dict) -> dict:
    space = stats.get("space") or {}
    counters = stats.get("counters") or {}
    return {"shard": stats.get("shard"), "live_bytes": space.get("live_bytes"), "disk_bytes": space.get("disk_bytes"),
            "capacity_bytes": space.get("capacity_bytes"), "live_pages": space.get("live_pages"),
            "evicted_pages": counters.get("evicted_pages"), "reinserted_pages": counters.get("reinserted_pages")}


def _sum_counters(stats: Sequence[dict]) -> dict:
    total: dict[str, int] = {}
    for shard in stats:
        for key, value in (shard.get("counters") or {}).items():
            total[key] = total.get(key, 0) + int(value)
    return total


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class _NoProgress:
    def update(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoProgress()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoProgress()
    return tqdm(total=total, unit="req", desc="replay", file=sys.stderr, mininterval=1.0)


# ---- the plot -----------------------------------------------------------------------------------


def rolling(numerators: Sequence[float], denominators: Sequence[float] | None, window: int) -> list[float]:
    """Trailing-window ratio sum(num) / sum(den) (or mean of num if den is None) at every index."""
    out: list[float] = []
    num_sum = den_sum = 0.0
    for index, value in enumerate(numerators):
        num_sum += value
        den_sum += 1 if denominators is None else denominators[index]
        if index >= window:
            num_sum -= numerators[index - window]
            den_sum -= 1 if denominators is None else denominators[index - window]
        out.append(num_sum / den_sum if den_sum else 0.0)
    return out


def write_plot(path: str, arrival_s: Sequence[float], series: dict[str, dict], report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = max(10, len(arrival_s) // 20)
    figure, (hit_axis, ttft_axis) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    styles = {"raylsm": "-", "hicache_file": "-", "lru_model": "--", "lru_sharded_model": "-.", "belady_optimal": ":"}
    for name, data in series.items():
        hit_axis.plot(arrival_s, rolling(data["hit"], data["asked"], window), styles.get(name, "-"), label=name)
        ttft_axis.plot(arrival_s, rolling(data["ttft"], None, window), styles.get(name, "-"), label=name)
    hit_axis.set_ylabel(f"L3 token hit ratio\n(last {window} requests)")
    ttft_axis.set_ylabel(f"modelled TTFT, ms\n(mean of last {window})")
    ttft_axis.set_xlabel("trace time, s")
    hit_axis.legend(loc="upper left", ncol=4, fontsize="small")
    hit_axis.grid(alpha=0.3)
    ttft_axis.grid(alpha=0.3)
    hit_axis.set_title(f"raylsm bench trace: {report['requests']} requests, capacity "
                       f"{report['capacity_bytes'] / 1e9:.2f} GB, {report['shards']} shards")
    figure.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


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
                             f"per disk, and this machine has one; N > 1 splits the capacity into N fixed partitions)")
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
                        help=f"seed of the host-pool slot choice and the conversation sample, {SEED.describe()}")
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
        shards=args.shards, prefill_tokens_per_s=args.prefill_tokens_per_s, systems=systems,
        data_dir=args.data_dir, ray_address=args.ray_address,
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
