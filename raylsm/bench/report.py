"""The report of a trace-driven bench: rows, ratios, the table, the JSON file and the plots.

Owned here: one row per system from its `SystemRun` (`summarize`: hit ratios, call latency
percentiles, read bandwidth, modelled TTFT), the report document and its ratios (`build_report`), the
printed table (`format_report`), the per-request series and rolling plots (`rolling`, `write_plot`),
and the small output helpers (JSON file, progress bar). Called by `raylsm.bench.trace_replay` and
`raylsm.bench.fleet`. Pure functions but for the file writers.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Sequence

from raylsm.bench.replay import ReplayPlan, SystemRun, ttft_ms


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100, linear interpolation); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


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
    for key in ratios:
        if key.endswith("_lru_to_belady"):
            name = key[:-len("_lru_to_belady")]
            lines.append(f"{name}: {_show(ratios[key])} of the way from LRU to Belady ((system - lru) / (belady - lru))")
    if report.get("balance_max_over_mean") is not None:
        lines.append(f"raylsm balance: stored bytes max/mean over {report['shards']} shards "
                     f"{report['balance_max_over_mean']:.2f}; shards per 128-page call "
                     f"{_show(report.get('shards_per_batch_mean'))}")
    forwarding = report.get("forwarding")
    if forwarding:
        lines.append(f"raylsm forwarding (partitioned shards): {forwarding['forwarded_pages']} pages forwarded "
                     f"({forwarding['forwarded_bytes'] / 1e9:.2f} GB), {forwarding['forwarded_reads']} found "
                     f"forwarded by probes; dropped: {forwarding['forward_dropped_pages']} (send queue full), "
                     f"{forwarding['forward_failed_pages']} (send failed), "
                     f"{forwarding['forward_second_chances_skipped']} (forwarded once already)")
    inside = next((row.get("store_latency_ms") for row in report.get("systems", []) if row.get("store_latency_ms")), None)
    if inside:
        lines.append("raylsm inside the stores (bucket upper bounds, ms): " + "; ".join(
            f"{op} p50 {_show(v['p50_ms'])} p99 {_show(v['p99_ms'])}" for op, v in sorted(inside.items()) if v["calls"]))
    for key in ("hit_ratio_definition", "ttft_model", "page_cache_note", "capacity_note", "payload_note", "window_note", "notes"):
        value = report.get(key)
        if isinstance(value, list):
            lines.extend(f"note: {item}" for item in value)
        elif value:
            lines.append(f"{key.replace('_', ' ')}: {value}")
    return "\n".join(lines)


def _show(value: Any) -> str:
    return "-" if value is None else f"{value}"



def run_series(run: SystemRun, plan: ReplayPlan, rate: float) -> dict:
    loads = run.load_ms if run.measured else [0.0] * len(plan)
    return {
        "hit": run.l3_hit_pages,
        "asked": plan.asked_pages(),
        "ttft": [ttft_ms(tokens, (host + l3) * plan.page_tokens, load, rate)
                 for tokens, host, l3, load in zip(plan.prompt_tokens, plan.host_hit_pages, run.l3_hit_pages, loads)],
    }


def write_json(path: str, report: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        json.dump(report, out, indent=2)
        out.write("\n")



def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class _NoProgress:
    def update(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool):
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
