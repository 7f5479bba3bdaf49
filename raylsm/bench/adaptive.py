"""`raylsm bench adaptive`: the controller's store tuning against every static configuration it may
choose, on one workload whose phases want different ones (issue 10, section 3).

Owned here: the four-phase workload (`build_workload`), the configurations, and the runs (one fresh
private tier per configuration, the same request stream through the SGLang adapter as `raylsm bench
trace` drives it); the figures, goals, table and plot are raylsm.bench.adaptive_report's. Called by
the `raylsm bench adaptive` command and by tests. Single-threaded; Ray, SGLang and torch are imported
only when a run starts.

The workload, laid end to end (block ids of each source kept apart):
1. `chat`: the first third (by time) of the packaged conversation trace (sampled by conversation);
2. `scan`: its second third, with one-off long prompts (the generator's `scan` shape) interleaved at
   `scan_ratio` times the pages chat writes in it (its blocks not seen before): the burst that
   flushes a cache that admits everything;
3. `agents`: agentic sessions on a few long shared prefixes of Zipf popularity, one very hot (the
   generator's `agentic` shape), AGENT_PAGES_PER_CHAT_PAGE times a chat third's prompt pages;
4. `chat-again`: the trace's last third: the conversations go on.
Capacity is fixed for the run (`capacity_fraction` of the workload's distinct page bytes).

Configurations: `controller` (tuning on: raylsm.controller.tuning, every `tuning_period_s`),
`static_default` (tuning off, the store's defaults), and `static_<name>` for every other candidate
the controller may choose (raylsm.store.mini_sims.CANDIDATES; tuning off, that configuration from the
start). Per phase and overall: the L3 hit token ratio, the modelled TTFT (as `raylsm bench trace`:
prefill of the tokens L1/L2/L3 missed at `prefill_tokens_per_s`, plus the measured load time), the
get p99, and the load balance (the most pages asked of one shard over the mean, by the ring the
client routes with).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Sequence

from raylsm.bench.adaptive_report import DEFAULT_CONFIG, PHASES, ConfigRun, build_report, format_report, write_plot
from raylsm.bench.trace import TraceRequest
from raylsm.errors import ConfigError

SCAN_IDS = 1 << 40  # block ids of the generated scan prompts start here, the agents' at twice this
# The agents phase sends this many prompt pages per prompt page of a chat third: its sessions'
# working set must outgrow the simulated L1/L2 for L3 to see its reuse.
AGENT_PAGES_PER_CHAT_PAGE = 4
# NOTE: at 1/32 the seven --quick runs took 345 s on 2 cores; 1/40 keeps them within 5 minutes.
QUICK_SAMPLE_RATE = 1 / 40
FULL_SAMPLE_RATE = 1 / 8
# --quick also writes smaller pages: its seven runs must finish within 5 minutes on 2 cores.
QUICK_PAYLOAD_SCALE = 1 / 32

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaptiveConfig:
    quick: bool = False
    sample_rate: float | None = None  # conversations of the packaged trace kept (None: 1/4, --quick 1/16)
    capacity_fraction: float = 0.05
    scan_ratio: float = 3.0  # scan pages per page chat writes in the scan phase
    shards: int = 4
    # Each shard a fixed share of the capacity (no disk budget pool), as shards on separate nodes
    # have; the controller splits hot extents only then (a pool evicts as one cache).
    partitioned: bool = True
    page_tokens: int = 64
    profile: str = "qwen2.5-0.5b"
    payload_scale: float | None = None  # page bytes = page_tokens x KV bytes/token x this (None: 1/16, --quick 1/32)
    host_cache_fraction: float = 0.02
    prefill_tokens_per_s: float = 10_000.0
    tuning_period_s: float = 2.0  # the controller run's tuning period
    configs: tuple[str, ...] = ()  # () = all
    seed: int = 0
    data_dir: str | None = None
    json_path: str | None = None
    plot_path: str | None = None
    progress: bool = True

    def validate(self) -> "AdaptiveConfig":
        if not 0 < self.capacity_fraction <= 1:
            raise ConfigError(f"--capacity-fraction must be in (0, 1], got {self.capacity_fraction!r}")
        if self.sample_rate is not None and not 0 < self.sample_rate <= 1:
            raise ConfigError(f"--sample-conversations must be in (0, 1], got {self.sample_rate!r}")
        if not 0 <= self.scan_ratio <= 100:
            raise ConfigError(f"--scan-ratio must be in [0, 100], got {self.scan_ratio!r}")
        if not 1 <= self.shards <= 64:
            raise ConfigError(f"--shards must be in [1, 64], got {self.shards!r}")
        if not 0.05 <= self.tuning_period_s <= 600:
            raise ConfigError(f"--tuning-period must be in [0.05, 600], got {self.tuning_period_s!r}")
        unknown = [name for name in self.configs if name not in config_names()]
        if unknown:
            raise ConfigError(f"--configs: unknown {unknown}; known: {', '.join(config_names())}")
        return self


def config_names() -> list[str]:
    """`controller`, `static_default`, and `static_<candidate>` for each candidate the store's
    defaults are not."""
    from raylsm.store.config import StoreConfig
    from raylsm.store.mini_sims import CANDIDATES, candidate_of

    default = candidate_of(StoreConfig())
    return ["controller", DEFAULT_CONFIG] + [f"static_{name}" for name in CANDIDATES if name != default]


def tier_settings(name: str, tuning_period_s: float) -> tuple[dict, dict]:
    """(StoreConfig changes, ControllerConfig fields) of a configuration."""
    from raylsm.store.mini_sims import CANDIDATES

    if name == "controller":
        return {}, {"tuning": True, "tuning_period_s": tuning_period_s}
    if name == DEFAULT_CONFIG:
        return {}, {"tuning": False}
    return dict(CANDIDATES[name.removeprefix("static_")]), {"tuning": False}


# ---- the workload -------------------------------------------------------------------------------


def build_workload(config: AdaptiveConfig) -> tuple[list[TraceRequest], list[int]]:
    """The requests in order and the phase index of each."""
    from raylsm.bench.trace import TRACE_BLOCK_TOKENS, load_sampled, request_page_count
    from raylsm.bench.workload import WorkloadConfig, generate

    rate = config.sample_rate or (QUICK_SAMPLE_RATE if config.quick else FULL_SAMPLE_RATE)
    chat, _ = load_sampled(None, sample_rate=rate, seed=config.seed)
    start, end = chat[0].timestamp_ms, chat[-1].timestamp_ms
    third = (end - start) / 3
    parts = [[r for r in chat if start + i * third <= r.timestamp_ms < start + (i + 1) * third] for i in range(3)]
    parts[2].extend(r for r in chat if r.timestamp_ms >= start + 3 * third)

    def pages(requests) -> int:
        return sum(request_page_count(r, config.page_tokens) for r in requests)

    def generated(shape: str, offset: int, target_pages: int, seed: int) -> list[TraceRequest]:
        out, total = [], 0
        for raw in generate(WorkloadConfig(shape=shape, requests=10**7, seed=seed)):
            request = TraceRequest(raw["timestamp"], raw["input_length"], raw["output_length"],
                                   tuple(offset + block for block in raw["hash_ids"]))
            out.append(request)
            total += request_page_count(request, config.page_tokens)
            if total >= target_pages:
                break
        return out

    def new_pages(requests, seen: set) -> int:
        """Pages of blocks not seen before: what chat writes (its misses), not what it re-sends."""
        fresh = 0
        for request in requests:
            for block in request.hash_ids:
                if block not in seen:
                    seen.add(block)
                    fresh += 1
        return fresh * TRACE_BLOCK_TOKENS // config.page_tokens

    seen: set = set()
    new_pages(parts[0], seen)
    chat_writes = new_pages(parts[1], seen)
    scan = generated("scan", SCAN_IDS, int(config.scan_ratio * chat_writes), config.seed) if config.scan_ratio else []
    agents = generated("agentic", 2 * SCAN_IDS, AGENT_PAGES_PER_CHAT_PAGE * pages(parts[0]), config.seed + 1)

    requests: list[TraceRequest] = []
    phases: list[int] = []
    clock = 0

    def lay(batch: Sequence[TraceRequest], phase: int) -> None:
        nonlocal clock
        if not batch:
            return
        first = batch[0].timestamp_ms
        for request in batch:
            requests.append(replace(request, timestamp_ms=clock + request.timestamp_ms - first))
            phases.append(phase)
        clock = requests[-1].timestamp_ms + 1

    lay(parts[0], 0)
    # Scan phase: the chat third with the scan prompts spread evenly over its span.
    chat2 = parts[1]
    if chat2 and scan:
        span_start, span = chat2[0].timestamp_ms, max(chat2[-1].timestamp_ms - chat2[0].timestamp_ms, 1)
        spread = [replace(r, timestamp_ms=span_start + (i * span) // len(scan)) for i, r in enumerate(scan)]
        merged = sorted(chat2 + spread, key=lambda r: r.timestamp_ms)
    else:
        merged = chat2 or scan
    lay(merged, 1)
    lay(agents, 2)
    lay(parts[2], 3)
    return requests, phases


# ---- the runs -----------------------------------------------------------------------------------


def run(config: AdaptiveConfig) -> dict:
    """Run every configuration; print the table; return the report."""
    from raylsm.bench.replay import make_plan, pool_shape

    config = config.validate()
    started = time.perf_counter()
    requests, phase_of = build_workload(config)
    plan = make_plan(requests, config.page_tokens, config.host_cache_fraction)
    scale = config.payload_scale or (QUICK_PAYLOAD_SCALE if config.quick else 1 / 16)
    shape = pool_shape(config.profile, config.page_tokens, scale)
    capacity_bytes = int(config.capacity_fraction * plan.distinct_pages * shape.page_bytes)
    names = list(config.configs) or config_names()
    counts = [phase_of.count(i) for i in range(len(PHASES))]
    print(f"raylsm bench adaptive: {len(plan)} requests ({', '.join(f'{p} {n}' for p, n in zip(PHASES, counts))}), "
          f"{plan.distinct_pages} distinct pages; capacity {capacity_bytes} B ({config.capacity_fraction:g}); "
          f"{config.shards} shards ({'partitioned' if config.partitioned else 'pooled'}); configurations: {', '.join(names)}", file=sys.stderr)
    root = config.data_dir or os.path.join(".raylsm", "bench", f"adaptive-{os.getpid()}")
    runs = []
    try:
        for name in names:
            runs.append(_run_one(config, name, plan, shape, capacity_bytes, os.path.join(root, name)))
    finally:
        if config.data_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    report = build_report(config, plan, phase_of, runs, shape.page_bytes, capacity_bytes)
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    print(format_report(report))
    if config.json_path:
        with open(config.json_path, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
        print(f"wrote {config.json_path}", file=sys.stderr)
    if config.plot_path:
        write_plot(config.plot_path, plan, phase_of, runs, report)
        print(f"wrote {config.plot_path}", file=sys.stderr)
    return report


def _run_one(config: AdaptiveConfig, name: str, plan, shape, capacity_bytes: int, data_dir: str) -> ConfigRun:
    import ray
    import torch

    from raylsm.bench.host_pool import MiniHostKVPool, PagePattern
    from raylsm.bench.replay import STORAGE_BATCH_SIZE, SlotPicker, SystemRun, replay_request
    from raylsm.bench.report import progress_bar
    from raylsm.bench.systems import RaylsmSystem, ShardCounter, TierSession, sum_counters
    from raylsm.config import RAY_NAMESPACE
    from raylsm.controller.controller_actor import get_controller

    for logger_name in ("sglang", "raylsm.sglang", "raylsm.client"):
        logging.getLogger(logger_name).setLevel(logging.ERROR)
    store_changes, controller = tier_settings(name, config.tuning_period_s)
    tier = TierSession(config.shards, capacity_bytes, shape.page_bytes, data_dir, private=True,
                       pool_disk_budget=not config.partitioned,
                       store_changes=store_changes, controller=controller, ring_seed=config.seed)
    result = ConfigRun(name)
    system = None
    phase = time.perf_counter()
    try:
        os.makedirs(data_dir, exist_ok=True)
        tier.start()
        pool = MiniHostKVPool(2 * STORAGE_BATCH_SIZE * config.page_tokens, config.page_tokens, shape.layer_num,
                              shape.head_num, shape.head_dim, getattr(torch, shape.dtype_name))
        pattern = PagePattern(pool.page_bytes)
        picker = SlotPicker(pool.page_slots, config.seed)
        system = RaylsmSystem(pool, f"adaptive-{config.profile}", {**RaylsmSystem.EXTRA_CONFIG})
        system.clear()
        controller_handle = get_controller(RAY_NAMESPACE)
        record = SystemRun(name, measured=True)
        router = ShardCounter(tier.shard_names, system.routing_id(), system.split_extents)
        progress = progress_bar(len(plan), config.progress)
        polled = time.monotonic()
        for index, chain in enumerate(plan.chains):
            calls = len(record.get_ms)
            replay_request(system, record, chain, [page.hex() for page in chain], plan.host_hit_pages[index],
                           pattern, picker)
            result.get_ms.append(record.get_ms[calls:])
            result.shard_pages.append(dict(Counter(router.route(chain, plan.host_hit_pages[index], len(chain)))))
            if name == "controller" and time.monotonic() - polled >= config.tuning_period_s:
                polled = time.monotonic()
                tunings = ray.get(controller_handle.status.remote()).get("shards", [])
                result.tunings.append({"request": index, "choices": {
                    shard["shard"]: (shard.get("tuning") or {}).get("choice") for shard in tunings}, "scores": {
                    shard["shard"]: (shard.get("tuning") or {}).get("scores") for shard in tunings}})
            progress.update(1)
        progress.close()
        result.hits, result.load_ms, result.wrong_pages = record.l3_hit_pages, record.load_ms, record.wrong_pages
        result.failed_put_chunks = record.failed_put_chunks
        result.client_counters = dict((system.stats().get("client") or {}).get("counters") or {})
        result.store_counters = sum_counters(tier.shard_stats())
        print(f"raylsm bench adaptive: {name} ran in {time.perf_counter() - phase:.1f} s", file=sys.stderr)
        return result
    finally:
        try:
            if system is not None:
                system.close()
        finally:
            tier.stop()


# ---- the command --------------------------------------------------------------------------------


def add_adaptive_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from raylsm.cli_args import output_file

    parser.add_argument("--quick", action="store_true",
                        help=f"one conversation in {round(1 / QUICK_SAMPLE_RATE)} of the packaged trace (about 5 minutes)")
    parser.add_argument("--sample-conversations", type=float, dest="sample_rate", metavar="F",
                        help=f"fraction of the packaged trace's conversations, in (0, 1] (default "
                             f"{FULL_SAMPLE_RATE:g}; --quick {QUICK_SAMPLE_RATE:g})")
    parser.add_argument("--capacity-fraction", type=float, default=0.05, metavar="F",
                        help="L3 capacity as a fraction of the workload's distinct page bytes, in (0, 1] (default 0.05)")
    parser.add_argument("--scan-ratio", type=float, default=3.0, metavar="R",
                        help="scan pages per page chat writes in the scan phase, in [0, 100] (default 3)")
    parser.add_argument("--shards", type=int, default=4, help="shards of each run's tier, in [1, 64] (default 4)")
    parser.add_argument("--pooled", action="store_true",
                        help="the shards pool this machine's disk budget and evict as one cache (default: each "
                             "a fixed share, as shards on separate nodes have)")
    parser.add_argument("--tuning-period", type=float, default=2.0, dest="tuning_period_s", metavar="S",
                        help="the controller run's tuning period in seconds, in [0.05, 600] (default 2)")
    parser.add_argument("--configs", default="", metavar="LIST",
                        help=f"comma-separated subset of: {', '.join(config_names())} (default all)")
    parser.add_argument("--seed", type=int, default=0,
                        help="sampling and generator seed, and the ring: every configuration runs on shards "
                             "named shard-bench-<seed>-<i> (default 0)")
    parser.add_argument("--dir", metavar="PATH", dest="data_dir",
                        help="data directory (default ./.raylsm/bench/adaptive-<pid>, removed afterwards)")
    parser.add_argument("--json", metavar="PATH", dest="json_path", type=output_file, help="write the report as JSON")
    parser.add_argument("--plot", metavar="PATH", dest="plot_path", type=output_file,
                        help="plot the hit ratio over the run per configuration, phases marked (PNG)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> AdaptiveConfig:
    return AdaptiveConfig(quick=args.quick, sample_rate=args.sample_rate, capacity_fraction=args.capacity_fraction,
                          scan_ratio=args.scan_ratio, shards=args.shards, partitioned=not args.pooled,
                          tuning_period_s=args.tuning_period_s,
                          configs=tuple(name for name in args.configs.split(",") if name), seed=args.seed,
                          data_dir=args.data_dir, json_path=args.json_path, plot_path=args.plot_path,
                          progress=not args.no_progress)


def run_adaptive_command(args: argparse.Namespace) -> int:
    report = run(config_from_args(args))
    return 0 if all(run["wrong_pages"] == 0 for run in report["runs"]) else 1
