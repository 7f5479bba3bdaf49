"""The report of `raylsm bench adaptive` (raylsm.bench.adaptive): per-phase and overall figures of
each configuration's run, the LRU and Belady models on the same stream, the issue's goals, the
printed table and the plot.

Owned here: `ConfigRun` (what one configuration's run recorded), `build_report`, `goals`,
`format_report`, `write_plot`, and the phase names. Called by raylsm.bench.adaptive and by tests.
Pure functions of the runs (matplotlib imported only to plot).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from raylsm.bench.adaptive import AdaptiveConfig

PHASES = ("chat", "scan", "agents", "chat-again")
DEFAULT_CONFIG = "static_default"


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
