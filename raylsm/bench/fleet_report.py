"""The report of `raylsm bench fleet`: one row per system, per-replica rows, the table and the plot.

Owned here: `system_row` (from the replicas' results of one system: hit ratios, cross-replica hits,
per-call latency percentiles, throughput, queueing, errors and wrong pages, modelled TTFT, and a row
per replica), `goals` (the issue's ratios, from rows of the same run), `format_table`, and
`write_plot` (hit ratio and get p99 over trace time per system, fault events marked). Called by
`raylsm.bench.fleet`. Pure functions but for the plot file.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from raylsm.bench.replay import ttft_ms
from raylsm.bench.report import percentile, rolling


def _ms(values: Sequence[float], q: float) -> float | None:
    value = percentile(values, q)
    return None if value is None else round(value, 3)


def _ratio(hits: int, asked: int) -> float:
    return round(hits / asked, 6) if asked else 0.0


def system_row(system: str, results: Sequence[dict], page_tokens: int, prefill_tokens_per_s: float) -> dict:
    """The row of one system from its replicas' results (each `raylsm.bench.fleet_replica.run_replica`'s)."""
    failures = [result["failure"] for result in results if "failure" in result]
    done = [result for result in results if "failure" not in result]
    records = [record for result in done for record in result["records"]]
    asked = sum(record["asked_pages"] for record in records)
    hits = sum(record["hit_pages"] for record in records)
    host = sum(record["host_hit_pages"] for record in records)
    prompt = sum(record["prompt_tokens"] for record in records)
    exists_ms = [value for result in done for value in result["exists_ms"]]
    get_ms = [value for result in done for value in result["get_ms"]]
    put_ms = [value for result in done for value in result["put_ms"]]
    span = (max((record["end_s"] for record in records), default=0.0)
            - min((record["start_s"] for record in records), default=0.0))
    queue = [record["queue_s"] for record in records]
    ttfts = [ttft_ms(record["prompt_tokens"], (record["host_hit_pages"] + record["hit_pages"]) * page_tokens,
                     record["load_ms"], prefill_tokens_per_s) for record in records]
    per_replica = []
    for result in done:
        mine = result["records"]
        per_replica.append({
            "replica": result["replica"], "requests": len(mine),
            "hit_token_ratio": _ratio(sum(r["hit_pages"] for r in mine), sum(r["asked_pages"] for r in mine)),
            "cross_replica_hit_pages": result["cross_replica_hit_pages"], "get_p99_ms": _ms(result["get_ms"], 99),
            "put_p99_ms": _ms(result["put_ms"], 99), "queue_s_p99": _ms([r["queue_s"] for r in mine], 99),
            "errors": result["errors"], "wrong_pages": result["wrong_pages"]})
    return {
        "system": system,
        "hit_token_ratio": _ratio(hits, asked),
        "prompt_hit_token_ratio": round((hits + host) * page_tokens / prompt, 6) if prompt else 0.0,
        "cross_replica_hit_pages": sum(result["cross_replica_hit_pages"] for result in done),
        "hit_pages": hits,
        "exists_p50_ms": _ms(exists_ms, 50), "exists_p99_ms": _ms(exists_ms, 99),
        "get_p50_ms": _ms(get_ms, 50), "get_p99_ms": _ms(get_ms, 99),
        "put_p50_ms": _ms(put_ms, 50), "put_p99_ms": _ms(put_ms, 99),
        "requests": len(records),
        "requests_per_s": round(len(records) / span, 3) if span > 0 else None,
        "queue_s_mean": round(sum(queue) / len(queue), 4) if queue else None,
        "queue_s_p99": _ms(queue, 99),
        "ttft_model_ms_mean": round(sum(ttfts) / len(ttfts), 3) if ttfts else None,
        "errors": sum(result["errors"] for result in done),
        "error_samples": [sample for result in done for sample in result["error_samples"]][:10],
        "wrong_pages": sum(result["wrong_pages"] for result in done),
        "failed_put_chunks": sum(result["failed_put_chunks"] for result in done),
        "replica_failures": failures,
        "per_replica": per_replica,
        "client_counters": _summed_counters(done),
    }


def _summed_counters(results: Sequence[dict]) -> dict:
    """The raylsm clients' counters summed over replicas (timeouts, hand-off reads, failed calls...);
    empty for other systems."""
    total: dict[str, int] = {}
    for result in results:
        counters = ((result.get("stats") or {}).get("client") or {}).get("counters") or {}
        for key, value in counters.items():
            if isinstance(value, (int, float)):
                total[key] = total.get(key, 0) + value
    return dict(sorted(total.items()))


def goals(rows: Sequence[dict], faults: Sequence[dict], scale_events: Sequence[dict] = ()) -> dict:
    """The issues' goals from rows of one run: raylsm hit >= 1.5x hicache_file_private's and >=
    mooncake_store's; raylsm get p99 <= 3x mooncake_store's; 0 errors and 0 wrong pages in the raylsm
    runs (with and without faults or scale events); after a shard restart or a node's return, hit
    ratio back to 90% of the window before within 10 s of trace time (and, reported beside it, of the
    same requests without faults). Scale events (`scale_goals`) add theirs."""
    by_name = {row["system"]: row for row in rows if "skipped" not in row}
    ours = by_name.get("raylsm")
    out: dict[str, Any] = {}
    if ours is None:
        return out
    private, mooncake = by_name.get("hicache_file_private"), by_name.get("mooncake_store")
    if private:
        ratio = ours["hit_token_ratio"] / private["hit_token_ratio"] if private["hit_token_ratio"] else None
        out["raylsm_over_hicache_file_private_hit"] = None if ratio is None else round(ratio, 3)
        out["goal_hit_vs_private_met"] = ratio is not None and ratio >= 1.5
    if mooncake:
        out["raylsm_over_mooncake_hit"] = (round(ours["hit_token_ratio"] / mooncake["hit_token_ratio"], 3)
                                           if mooncake["hit_token_ratio"] else None)
        out["goal_hit_vs_mooncake_met"] = ours["hit_token_ratio"] >= mooncake["hit_token_ratio"]
        if ours["get_p99_ms"] and mooncake["get_p99_ms"]:
            out["raylsm_get_p99_over_mooncake"] = round(ours["get_p99_ms"] / mooncake["get_p99_ms"], 3)
            out["goal_get_p99_met"] = out["raylsm_get_p99_over_mooncake"] <= 3.0
    checked = [row for name, row in by_name.items() if name in ("raylsm", "raylsm_faults", "raylsm_scale")]
    out["goal_no_errors_met"] = all(row["errors"] == 0 and row["wrong_pages"] == 0 for row in checked)
    timed = [event for event in faults if event.get("kind") in ("kill_shard", "add_node")]
    if timed:
        out["goal_fault_recovery_met"] = all(event.get("recovery_s") is not None and event["recovery_s"] <= 10.0
                                             for event in timed)
        if all("recovery_vs_reference_s" in event for event in timed):
            out["fault_recovery_vs_reference_within_10_s"] = all(
                event["recovery_vs_reference_s"] is not None and event["recovery_vs_reference_s"] <= 10.0
                for event in timed)
    out.update(scale_goals(scale_events))
    return out


def scale_goals(events: Sequence[dict]) -> dict:
    """The elastic tier's goals (docs/elastic.md) from `raylsm bench fleet --scale`'s analysed events:
    scale out N -> N+1 remaps <= 1.2 / (N+1) of the keys with 0 errors, a hit-ratio dip <= 10% and
    the pre-event level back within 30 s of trace time; scale in with drain dips <= 5% (the same
    event without drain reported beside it); the controller killed: 0 errors, 0 wrong pages, no
    ring-version regression and nothing remapped.

    Dips and recoveries are judged against the same requests in the run without scale events
    (`hit_dip_vs_reference`, `recovery_vs_reference_s`) when there is one; the "_window_before"
    goals judge them, as the issue words it, against the requests just before the event, which the
    trace's own swings dominate (a controller kill, which moves no key, "dipped" 97% so)."""
    by_kind = {event["kind"]: event for event in events if "kind" in event}
    out: dict[str, Any] = {}

    def dip(event: dict) -> float | None:
        return event.get("hit_dip_vs_reference", event.get("hit_dip"))

    def recovery(event: dict) -> float | None:
        return event.get("recovery_vs_reference_s", event.get("recovery_s"))

    def within(value: float | None, bound: float) -> bool:
        return value is not None and value <= bound

    grow = by_kind.get("scale_out")
    if grow and grow.get("shards_after"):
        clean = (within(grow.get("remapped_fraction"), 1.2 / grow["shards_after"]) and grow["errors"] == 0
                 and grow["wrong_pages"] == 0)
        out["scale_out_remapped_fraction"] = grow.get("remapped_fraction")
        out["scale_out_hit_dip"] = dip(grow)
        out["scale_out_recovery_s"] = recovery(grow)
        out["goal_scale_out_met"] = clean and within(dip(grow), 0.10) and within(recovery(grow), 30.0)
        out["goal_scale_out_met_window_before"] = (clean and within(grow.get("hit_dip"), 0.10)
                                                   and within(grow.get("recovery_s"), 30.0))
    drained, dropped = by_kind.get("scale_in_drain"), by_kind.get("scale_in_no_drain")
    if drained:
        out["scale_in_drain_hit_dip"] = dip(drained)
        out["goal_scale_in_drain_met"] = within(dip(drained), 0.05) and drained["errors"] == 0
        out["goal_scale_in_drain_met_window_before"] = within(drained.get("hit_dip"), 0.05)
    if dropped:
        out["scale_in_no_drain_hit_dip"] = dip(dropped)
    killed = by_kind.get("kill_controller")
    if killed:
        out["goal_controller_kill_met"] = (killed["errors"] == 0 and killed["wrong_pages"] == 0
                                           and killed.get("ring_version_regressed") is False
                                           and killed.get("remapped_fraction") == 0.0)
    if any(event.get("kind") == "schedule_failed" for event in events):
        out["scale_schedule_failed"] = True
    return out


def format_table(report: dict) -> str:
    columns = [("system", "system", "{}"), ("hit_token_ratio", "L3 hit", "{:.3f}"),
               ("cross_replica_hit_pages", "cross-replica pages", "{}"),
               ("exists_p99_ms", "exists p99", "{:.2f}"), ("get_p50_ms", "get p50", "{:.2f}"),
               ("get_p99_ms", "get p99", "{:.2f}"), ("put_p50_ms", "put p50", "{:.2f}"),
               ("put_p99_ms", "put p99", "{:.2f}"), ("requests_per_s", "req/s", "{:.1f}"),
               ("queue_s_p99", "queue p99 s", "{:.2f}"), ("ttft_model_ms_mean", "TTFT mean", "{:.0f}"),
               ("errors", "errors", "{}"), ("wrong_pages", "wrong", "{}")]
    table = [[title for _, title, _ in columns]]
    notes = []
    for row in report["systems"]:
        if "skipped" in row:
            notes.append(f"{row['system']}: skipped: {row['skipped']}")
            continue
        table.append([("-" if row.get(key) is None else fmt.format(row[key])) for key, _, fmt in columns])
        for failure in row.get("replica_failures", []):
            notes.append(f"{row['system']}: a replica failed: {failure.strip().splitlines()[-1]}")
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in
                       enumerate(zip(line, widths))) for line in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append(f"({report['replicas']} replicas, router {report['router']}, {report['nodes']} nodes, "
                 f"speedup {report['speedup']:g}, {report['cores']} cores; latencies in ms per call of <= 128 pages)")
    for event in report.get("faults", []):
        lines.append("fault: " + ", ".join(f"{key} {value}" for key, value in event.items()))
    for event in report.get("scale_events", []):
        lines.append("scale: " + ", ".join(f"{key} {value}" for key, value in event.items()))
    for key, value in report.get("goals", {}).items():
        lines.append(f"goal: {key} = {value}")
    lines.extend(notes)
    lines.extend(f"note: {note}" for note in report.get("notes", []))
    return "\n".join(lines)


def write_plot(path: str, series: dict[str, list[dict]], faults: Sequence[dict], title: str) -> None:
    """Hit ratio (rolling over requests) and get p99 (per 5% of the run) over trace time per system;
    fault events as vertical lines. `series`: system -> its requests' records (any order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (hit_axis, p99_axis) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for name, records in series.items():
        ordered = sorted(records, key=lambda record: record["trace_s"])
        if not ordered:
            continue
        times = [record["trace_s"] for record in ordered]
        window = max(10, len(ordered) // 20)
        hit_axis.plot(times, rolling([r["hit_pages"] for r in ordered], [r["asked_pages"] for r in ordered], window),
                      label=name)
        end = times[-1] or 1.0
        bins = 20
        centers, p99s = [], []
        for index in range(bins):
            low, high = end * index / bins, end * (index + 1) / bins
            calls = [value for r in ordered if low <= r["trace_s"] < high for value in r["get_ms"]]
            if calls:
                centers.append((low + high) / 2)
                p99s.append(percentile(calls, 99))
        p99_axis.plot(centers, p99s, marker=".", label=name)
    for event in faults:
        if "t_s" in event:
            for axis in (hit_axis, p99_axis):
                axis.axvline(event["t_s"], color="red", alpha=0.5, linestyle="--")
            hit_axis.annotate(event["kind"], (event["t_s"], 0.02), rotation=90, fontsize="x-small", color="red")
    hit_axis.set_ylabel("L3 token hit ratio (rolling)")
    p99_axis.set_ylabel("get p99, ms")
    p99_axis.set_xlabel("trace time, s")
    hit_axis.legend(loc="upper left", fontsize="small")
    hit_axis.grid(alpha=0.3)
    p99_axis.grid(alpha=0.3)
    hit_axis.set_title(title)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
