"""`raylsm bench adaptive`: the controller's store tuning against every static configuration it may
choose, on one workload whose phases want different ones (issue 10, section 3).

Owned here: the four-phase workload (`build_workload`), the runs (one fresh private tier per
configuration, the same request stream through the SGLang adapter as `raylsm bench trace` drives it),
the per-phase figures, the JSON report and the plot. Called by the `raylsm bench adaptive` command and
by tests. Single-threaded; Ray, SGLang and torch are imported only when a run starts.

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
from collections import Counter
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from raylsm.bench.trace import TraceRequest
from raylsm.errors import ConfigError

PHASES = ("chat", "scan", "agents", "chat-again")
SCAN_IDS = 1 << 40  # block ids of the generated scan prompts start here, the agents' at twice this
DEFAULT_CONFIG = "static_default"
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


@dataclass
class ConfigRun:
    name: str
    hits: list[int] = field(default_factory=list)  # L3 hit pages per request
    load_ms: list[float] = field(default_factory=list)
    get_ms: list[list[float]] = field(default_factory=list)  # per request, its get calls
    tunings: list[dict] = field(default_factory=list)  # the controller's choices over the run
    wrong_pages: int = 0
    failed_put_chunks: int = 0  # 128-page backups refused or timed out (their pages are misses later)
    shard_pages: list[dict] = field(default_factory=list)  # per request: pages asked of each shard
    client_counters: dict = field(default_factory=dict)  # the adapter's client counters (failures by cause)
    store_counters: dict = field(default_factory=dict)  # the shards' store counters, summed


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
                       store_changes=store_changes, controller=controller)
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
                    shard["shard"]: (shard.get("tuning") or {}).get("choice") for shard in tunings}})
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


# ---- the report ---------------------------------------------------------------------------------


def _figures(config: AdaptiveConfig, plan, run: ConfigRun, indices: Sequence[int]) -> dict:
    from raylsm.bench.replay import ttft_ms
    from raylsm.bench.report import percentile

    asked = sum(len(plan.chains[i]) - plan.host_hit_pages[i] for i in indices)
    hits = sum(run.hits[i] for i in indices)
    ttfts = [ttft_ms(plan.prompt_tokens[i], (plan.host_hit_pages[i] + run.hits[i]) * plan.page_tokens,
                     run.load_ms[i], config.prefill_tokens_per_s) for i in indices]
    gets = [ms for i in indices for ms in run.get_ms[i]]
    load: dict[str, int] = {}
    for i in indices:
        for shard, count in run.shard_pages[i].items():
            load[shard] = load.get(shard, 0) + count
    mean = sum(load.values()) / config.shards if load else 0
    p99 = percentile(gets, 99)
    return {"hit_token_ratio": round(hits / asked, 4) if asked else 0.0,
            "ttft_model_ms_mean": round(sum(ttfts) / len(ttfts), 2) if ttfts else None,
            "get_p99_ms": round(p99, 3) if p99 is not None else None,
            "balance_max_over_mean": round(max(load.values()) / mean, 3) if mean else None}


def build_report(config: AdaptiveConfig, plan, phase_of: Sequence[int], runs: Sequence[ConfigRun],
                 page_bytes: int, capacity_bytes: int) -> dict:
    by_phase = [[i for i, phase in enumerate(phase_of) if phase == p] for p in range(len(PHASES))]
    everything = list(range(len(plan)))
    out_runs = []
    for run in runs:
        out_runs.append({"config": run.name,
                         "per_phase": [_figures(config, plan, run, indices) for indices in by_phase],
                         "overall": _figures(config, plan, run, everything),
                         "wrong_pages": run.wrong_pages, "failed_put_chunks": run.failed_put_chunks,
                         "client_counters": run.client_counters, "store_counters": run.store_counters,
                         **({"tunings": run.tunings} if run.tunings else {})})
    report = {"phases": list(PHASES), "runs": out_runs,
              "requests_per_phase": [len(indices) for indices in by_phase],
              "capacity_bytes": capacity_bytes, "page_bytes": page_bytes, "shards": config.shards,
              "capacity_fraction": config.capacity_fraction, "distinct_pages": plan.distinct_pages,
              "partitioned": config.partitioned,
              "balance_note": ("pages asked of the most loaded shard over the mean, routed as the client routed "
                               "them (its ring, extents and the controller's split extents at the time)")}
    report["models"] = _models(plan, by_phase, capacity_bytes // page_bytes)
    report["goals"] = goals(report)
    return report


def _models(plan, by_phase: Sequence[Sequence[int]], capacity_pages: int) -> list[dict]:
    """LRU and the offline optimum (Belady) on the same L3 stream at the same capacity in pages
    (raylsm.bench.cache_models; one cache, no shards): L3 hit ratio per phase and overall."""
    from raylsm.bench import cache_models

    streams = plan.l3_streams()
    out = []
    for name, simulate in (("lru_model", cache_models.simulate_lru), ("belady_optimal", cache_models.simulate_belady)):
        hits = simulate(streams, capacity_pages).per_request_hits

        def ratio(indices) -> float:
            asked = sum(len(streams[i]) for i in indices)
            return round(sum(hits[i] for i in indices) / asked, 4) if asked else 0.0
        out.append({"config": name, "per_phase": [{"hit_token_ratio": ratio(indices)} for indices in by_phase],
                    "overall": {"hit_token_ratio": ratio(range(len(streams)))}})
    return out


def goals(report: dict) -> dict:
    """The issue's goals, checked on this run (only those its configurations allow)."""
    runs = {run["config"]: run for run in report["runs"]}
    controller, default = runs.get("controller"), runs.get(DEFAULT_CONFIG)
    statics = [run for name, run in runs.items() if name != "controller"]
    out: dict[str, Any] = {}
    if controller and statics:
        best = max(statics, key=lambda run: run["overall"]["hit_token_ratio"])
        out["overall_hit_vs_best_static"] = {
            "controller": controller["overall"]["hit_token_ratio"], "best_static": best["overall"]["hit_token_ratio"],
            "best_static_config": best["config"],
            "met": controller["overall"]["hit_token_ratio"] >= best["overall"]["hit_token_ratio"]}
        per_phase = []
        for index, phase in enumerate(report["phases"]):
            best_phase = max(run["per_phase"][index]["hit_token_ratio"] for run in statics)
            mine = controller["per_phase"][index]["hit_token_ratio"]
            per_phase.append({"phase": phase, "controller": mine, "best_static": best_phase,
                              "met": mine >= 0.95 * best_phase})
        out["per_phase_within_5pct_of_best_static"] = per_phase
        agents = report["phases"].index("agents")
        balance = controller["per_phase"][agents]["balance_max_over_mean"]
        out["agents_balance_at_most_1.5"] = {"controller": balance, "met": balance is not None and balance <= 1.5}
    if controller and default:
        mine, theirs = controller["overall"]["ttft_model_ms_mean"], default["overall"]["ttft_model_ms_mean"]
        if mine and theirs:
            out["ttft_10pct_below_static_default"] = {"controller": mine, "static_default": theirs,
                                                      "ratio": round(mine / theirs, 4), "met": mine <= 0.9 * theirs}
    return out


def format_report(report: dict) -> str:
    phases = report["phases"]
    header = ["config"] + [f"{phase} hit" for phase in phases] + ["overall hit", "TTFT ms", "get p99 ms",
                                                                  "balance agents"]
    rows = [header]
    agents = phases.index("agents")
    for run in report["runs"]:
        overall = run["overall"]
        rows.append([run["config"]] + [f"{figures['hit_token_ratio']:.4f}" for figures in run["per_phase"]] + [
            f"{overall['hit_token_ratio']:.4f}", f"{overall['ttft_model_ms_mean']}", f"{overall['get_p99_ms']}",
            f"{run['per_phase'][agents]['balance_max_over_mean']}"])
    for model in report.get("models", []):
        rows.append([model["config"]] + [f"{figures['hit_token_ratio']:.4f}" for figures in model["per_phase"]] + [
            f"{model['overall']['hit_token_ratio']:.4f}", "-", "-", "-"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    for name, goal in report.get("goals", {}).items():
        if isinstance(goal, list):
            lines.append(f"goal {name}: " + ", ".join(
                f"{item['phase']} {item['controller']:.4f} vs {item['best_static']:.4f} {'met' if item['met'] else 'NOT met'}"
                for item in goal))
        else:
            lines.append(f"goal {name}: {json.dumps(goal)}")
    return "\n".join(lines)


def write_plot(path: str, plan, phase_of: Sequence[int], runs: Sequence[ConfigRun], report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from raylsm.bench.report import rolling

    asked = [len(chain) - start for chain, start in zip(plan.chains, plan.host_hit_pages)]
    window = max(20, len(plan) // 40)
    figure, axis = plt.subplots(figsize=(11, 5))
    for run in runs:
        axis.plot(range(len(plan)), rolling(run.hits, asked, window), label=run.name,
                  linewidth=2.2 if run.name == "controller" else 1.0)
    for index in range(1, len(phase_of)):
        if phase_of[index] != phase_of[index - 1]:
            axis.axvline(index, color="grey", linestyle="--", linewidth=0.8)
    starts = [phase_of.index(p) for p in range(len(PHASES)) if p in phase_of]
    for p, start in zip(range(len(PHASES)), starts):
        axis.text(start, axis.get_ylim()[1] * 0.97, f" {PHASES[p]}", va="top", fontsize=9)
    axis.set_xlabel("request")
    axis.set_ylabel(f"L3 hit token ratio (rolling {window} requests)")
    axis.set_title(f"raylsm bench adaptive: capacity {report['capacity_fraction']:g}, {report['shards']} shards")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---- the command --------------------------------------------------------------------------------


def add_adaptive_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from raylsm.cli import output_file

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
    parser.add_argument("--seed", type=int, default=0, help="sampling and generator seed (default 0)")
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
