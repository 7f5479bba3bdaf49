"""The replay core every trace-driven bench composes: the request stream and one request through one L3 system.

Owned here: the page payload shape of a replay (`pool_shape`), the simulated L1/L2 in front of L3
(`HostCacheSim`), the request stream every system sees (`ReplayPlan`, `make_plan`), the modelled TTFT
(`ttft_ms`), what one system did (`SystemRun`), the host slots of a call (`SlotPicker`), the request
as HiCache drives an L3 backend (`replay_request`: exists, get, verify, back up, in 128-page calls) and
the reference models run on the same stream (`run_models`).

The systems themselves (raylsm, HiCacheFile, Mooncake Store) are in `raylsm.bench.systems`; the
report and plots in `raylsm.bench.report`; the workload (trace loading, sampling, page keys) in
`raylsm.bench.trace` and `raylsm.bench.workload`. Called by `raylsm.bench.trace_replay` (one process,
every system in turn) and `raylsm.bench.fleet` (one replica process per system instance).
Not thread-safe: one replay loop per object.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

from raylsm.bench import cache_models
from raylsm.bench.trace import MODEL_PROFILES, PageKeyCache, page_bytes as profile_page_bytes
from raylsm.errors import ConfigError

STORAGE_BATCH_SIZE = 128  # SGLang's pages per backend call (hicache_storage.STORAGE_BATCH_SIZE)


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


def ttft_ms(prompt_tokens: int, cached_tokens: int, load_ms: float, prefill_tokens_per_s: float) -> float:
    """Modelled time to first token: prefill of the tokens not cached at prefill_tokens_per_s, plus
    the measured L3 load time (exists + get wall time) of the request."""
    missed = max(prompt_tokens - cached_tokens, 0)
    return missed / prefill_tokens_per_s * 1e3 + load_ms


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
                   pattern: Any, slots: SlotPicker, shard_counter: Any = None) -> None:
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
