"""The autoscaling policy: how many shards the tier should have, from the shards' workload statistics.

Owned here: pure functions over the shards' `stats()` (no Ray, no state): the tier's hit ratio if
every shard had `factor` times its capacity (`tier_hit_ratio`, from each shard's miss-ratio curve),
the window between two readings (`window_curves`), each shard's disk traffic rate, and `decide`,
which turns them into a target shard count with the reason. Called by Controller._reconcile_autoscale
every `autoscale_period_s`; the controller then asks Ray's autoscaler for the nodes
(`ray.autoscaler.sdk.request_resources`) and drains the shards it scales in (docs/elastic.md).

The model: a consistent-hash ring gives each of N shards a uniform 1/N sample of the extents, so a
shard's miss-ratio curve at cache size x is the tier's curve at N x (the spatial sampling argument
of SHARDS, Waldspurger et al., FAST 2015). With N+1 shards of the same capacity C every shard sees
N/(N+1) of the keys with capacity C, which is the same as today's share with (N+1)/N times C. So the
tier's hit ratio after a scale to M shards is the reference-weighted mean of every shard's curve read
at M/N times its capacity. The curves are LRU curves of the references SGLang makes
(raylsm.store.workload_stats); the gain they predict is the gain an LRU-like cache of that size gets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence


@dataclass(frozen=True)
class ScaleParams:
    """ControllerConfig's autoscaling fields (raylsm.config.ControllerConfig documents each)."""

    min_shards: int = 1
    max_shards: int = 0  # 0: no ceiling
    scale_out_gain: float = 0.02
    scale_in_loss: float = 0.002
    min_references: int = 10_000
    disk_bytes_per_s: float = 0.0  # 0: disk traffic is not a trigger
    disk_busy_fraction: float = 0.8


@dataclass(frozen=True)
class Curve:
    """One shard's miss-ratio curve over a window: [(cache bytes, miss ratio)] ascending, its
    capacity in bytes, and the references the window counted."""

    points: tuple[tuple[float, float], ...]
    capacity_bytes: float
    references: float

    def miss_ratio(self, cache_bytes: float) -> float:
        """Interpolated in log cache size; 1.0 below the first point, the last point beyond it."""
        points = self.points
        if not points or cache_bytes < points[0][0]:
            return 1.0
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            if x0 <= cache_bytes <= x1:
                if x1 <= x0 or x0 <= 0:
                    return y1
                weight = math.log(cache_bytes / x0) / math.log(x1 / x0)
                return y0 + weight * (y1 - y0)
        return points[-1][1]


def curve_of(stats: Mapping) -> Curve | None:
    """A shard's whole-life curve from its `stats()` (None without workload statistics)."""
    workload = stats.get("workload") or {}
    points = workload.get("mrc") or []
    capacity = (stats.get("space") or {}).get("capacity_bytes") or 0
    if not points or not capacity:
        return None
    return Curve(tuple((float(x), float(y)) for x, y in points), float(capacity),
                 float(workload.get("references") or 0))


def window_curves(now: Mapping[str, Curve], before: Mapping[str, Curve]) -> dict[str, Curve]:
    """Each shard's curve over the references since `before` (its whole-life curve where there is no
    earlier reading, or the shard restarted or was resized; no references where it counted none). A curve point is misses / references, so the window's
    is (m_now R_now - m_before R_before) / (R_now - R_before) at the same cache size."""
    windows = {}
    for name, curve in now.items():
        old = before.get(name)
        if old is None or old.references > curve.references or old.capacity_bytes != curve.capacity_bytes:
            windows[name] = curve  # no earlier reading of this store (new, restarted or resized)
            continue
        span = curve.references - old.references
        if span <= 0:
            windows[name] = Curve(curve.points, curve.capacity_bytes, 0.0)  # nothing counted since
            continue
        points = tuple((x, min(max((y * curve.references - old.miss_ratio(x) * old.references) / span, 0.0), 1.0))
                       for x, y in curve.points)
        windows[name] = Curve(points, curve.capacity_bytes, span)
    return windows


def tier_hit_ratio(curves: Sequence[Curve], factor: float) -> float | None:
    """The tier's predicted hit ratio with every shard at `factor` times its capacity (see the module
    docstring); None when no shard counted a reference."""
    total = sum(curve.references for curve in curves)
    if total <= 0:
        return None
    return sum(curve.references * (1.0 - curve.miss_ratio(factor * curve.capacity_bytes))
               for curve in curves) / total


def decide(curves: Sequence[Curve], shards: int, params: ScaleParams,
           disk_rates: Sequence[float] = ()) -> tuple[int, str]:
    """(target shard count, reason). Scales out by one when one more shard is predicted to raise the
    tier's hit ratio by more than `scale_out_gain`, or when the shards' mean disk traffic (bytes/s
    read and written, `disk_rates`) passes `disk_busy_fraction` of `disk_bytes_per_s`; scales in by
    one when one shard fewer is predicted to lose less than `scale_in_loss` (0: never) and the disks
    would stay below that fraction. Stays within [min_shards, max_shards]; below min_references counted in the
    window, only the bounds apply. `shards` is the ring's size now."""
    low, high = max(params.min_shards, 1), params.max_shards or math.inf
    if shards < low:
        return low, f"below min_shards {low}"
    if shards > high:
        return int(high), f"above max_shards {int(high)}"
    busy = 0.0
    if params.disk_bytes_per_s > 0 and disk_rates:
        busy = sum(disk_rates) / len(disk_rates) / params.disk_bytes_per_s
        if busy > params.disk_busy_fraction and shards + 1 <= high:
            return shards + 1, f"disks {busy:.0%} busy (> {params.disk_busy_fraction:.0%})"
    references = sum(curve.references for curve in curves)
    now = tier_hit_ratio(curves, 1.0)
    if now is None or references < params.min_references:
        return shards, f"{references:.0f} references in the window (< {params.min_references})"
    if shards + 1 <= high:
        gain = tier_hit_ratio(curves, (shards + 1) / shards) - now
        if gain > params.scale_out_gain:
            return shards + 1, f"one more shard: hit ratio {now:.3f} -> {now + gain:.3f} (+{gain:.3f})"
    if shards - 1 >= low:
        loss = now - tier_hit_ratio(curves, (shards - 1) / shards)
        busy_after = busy * shards / (shards - 1)
        if params.scale_in_loss > 0 and loss < params.scale_in_loss and (
                params.disk_bytes_per_s <= 0 or busy_after < params.disk_busy_fraction):
            return shards - 1, f"one shard fewer: hit ratio {now:.3f} -> {now - loss:.3f} (-{loss:.4f})"
    return shards, f"hit ratio {now:.3f}: no scale event pays"
