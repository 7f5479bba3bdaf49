"""What `raylsm status` prints: the shard table and the lines below it (workload statistics, tuning,
elasticity), from the controller's `status()` report. Pure formatting; called by the CLI and tests."""

from __future__ import annotations

import time


def format_workload(workload: dict | None) -> str:
    """One line of a shard's workload statistics (raylsm/store/workload_stats.py), or "" before its
    first page reference: references (asks and writes of missed pages) and their hit ratio, the estimated LRU miss ratio at multiples of its disk budget (its
    miss-ratio curve), ghost hits, and the share of hits on pages written over an hour ago."""
    if not workload or not workload.get("references"):
        return ""
    curve = ", ".join(f"{ratio:.3f} at {multiple}x" for multiple, ratio in
                      workload.get("miss_ratio_by_capacity_multiple", {}).items())
    hit_ratio = workload.get("hit_ratio")
    parts = [f"{workload['references']} page references, hit {hit_ratio if hit_ratio is not None else '-'}",
             f"LRU miss ratio {curve or '-'} of its budget", f"ghost hits ~{workload['ghost_hits_est']}"]
    hits_by_age = workload.get("hits_by_age_s", {})
    hits = sum(hits_by_age.values())
    if hits:
        old = sum(n for label, n in hits_by_age.items() if label in ("3600-86400", "86400+"))
        parts.append(f"hits on pages written over 1 h ago {old / hits:.0%}")
    return "; ".join(parts)


def format_tuning(tuning: dict | None) -> str:
    """One line of a shard's tuning (raylsm.controller.tuning), or "" if the controller does not
    tune it: the version and choice, whether the shard acknowledged it, the candidates' modelled hit
    ratios, and a challenger the policy is confirming."""
    if not tuning:
        return ""
    version = tuning["version"]
    state = ("configured default" if not version else
             "applied" if tuning.get("acked_version") == version else "pushed, not acknowledged yet")
    line = f"version {version} {tuning['choice']} ({state})"
    scores = tuning.get("scores") or {}
    if scores:
        line += "; modelled hit " + ", ".join(f"{name} {score:.3f}" for name, score in
                                              sorted(scores.items(), key=lambda item: -item[1]))
    if tuning.get("challenger"):
        line += f"; {tuning['challenger']} leads ({tuning['streak']} windows)"
    return line


def format_status(report: dict) -> str:
    """A fixed-width table of shards (node, state, pages, bytes, capacity, hit rate), then one line
    per disk budget pool (the shards of one disk that share its budget), then one line of workload
    statistics per shard that has been asked for pages (`format_workload`) and one of its tuning
    (`format_tuning`)."""
    rows = [("shard", "node", "state", "pages", "live GB", "disk GB", "capacity GB", "hit rate")]
    for shard in report["shards"]:
        stats = shard.get("stats") or {}
        space = stats.get("space", {})
        counters = stats.get("counters", {})
        hits = counters.get("gets_hit", 0) + counters.get("gets_located", 0)
        lookups = hits + sum(v for k, v in counters.items() if k.startswith("gets_miss"))
        rows.append((shard["shard"], shard["node_id"][:12], shard["state"], str(space.get("live_pages", "-")),
                     f"{space.get('live_bytes', 0) / 1e9:.3f}", f"{space.get('disk_bytes', 0) / 1e9:.3f}",
                     f"{space.get('capacity_bytes', 0) / 1e9:.1f}",
                     f"{hits / lookups:.3f}" if lookups else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    for shard in report["shards"]:
        if shard.get("error"):
            lines.append(f"{shard['shard']} failed: {shard['error']}")
    pools: dict[str, dict] = {}
    for shard in report["shards"]:
        pool = (shard.get("stats") or {}).get("pool")
        if pool:
            pools[pool["path"]] = pool
    for path, pool in sorted(pools.items()):
        lines.append(f"disk budget pool {path}: {pool['members']} shards, disk {pool['disk_bytes'] / 1e9:.3f} GB "
                     f"of {pool['capacity_bytes'] / 1e9:.1f} GB (they evict as one cache)")
    for shard in report["shards"]:
        stats = shard.get("stats") or {}
        line = format_workload(stats.get("workload"))
        counters = stats.get("counters", {})
        if line and counters.get("puts_bytes"):
            amplification = (counters["puts_bytes"] + counters.get("reinserted_bytes", 0)) / counters["puts_bytes"]
            line += f"; write amplification {amplification:.2f} (re-appends)"
        if line:
            lines.append(f"{shard['shard']} workload: {line}")
    for shard in report["shards"]:
        line = format_tuning(shard.get("tuning"))
        if line:
            lines.append(f"{shard['shard']} tuning: {line}")
    line = format_scale(report.get("scale"))
    if line:
        lines.append(line)
    lines.append(f"ring version {report['ring_version']}"
                 + (f"; {report['split_extents']} hot extents split (docs/placement.md)" if report.get("split_extents")
                    else ""))
    if report.get("errors"):
        lines.append(f"controller errors: {report['errors']}")
    return "\n".join(lines)


def format_scale(scale: dict | None) -> str:
    """Lines of the tier's elasticity (raylsm.controller.elastic), or "" while no scale event was ever
    asked and autoscaling is off: target and ring size, standby and draining shards, what Ray's
    autoscaler was asked for, the policy's last answer, and the last scale events."""
    if not scale or (scale.get("target") is None and not scale.get("decision")):
        return ""
    parts = [f"scale: target {scale['target'] if scale.get('target') is not None else '-'} shards, "
             f"{scale['members']} in the ring"]
    if scale.get("draining"):
        parts.append(f"draining {scale['draining']}")
    if scale.get("standby"):
        parts.append(f"standby {', '.join(scale['standby'])}")
    if scale.get("requested") is not None:
        parts.append(f"Ray's autoscaler asked for {scale['requested']} raylsm_shard units")
    lines = ["; ".join(parts)]
    decision = scale.get("decision") or {}
    if decision:
        lines.append(f"autoscaling: {decision.get('reason')} (target {decision.get('target')})")
    for event in scale.get("events", [])[-3:]:
        detail = ", ".join(f"{key} {value}" for key, value in event.items() if key not in ("kind", "t"))
        lines.append(f"scale event {time.strftime('%H:%M:%S', time.localtime(event['t']))} {event['kind']}: {detail}")
    return "\n".join(lines)
