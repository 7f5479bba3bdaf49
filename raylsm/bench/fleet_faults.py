"""Faults under load for `raylsm bench fleet --faults`: the schedule that injects them and the analysis.

Owned here: `FaultSchedule`, run by the fleet driver while the raylsm replicas replay: at 1/3 of the
run, kill -9 of one shard's process (Ray restarts the detached actor on its node, which recovers its
store); at 2/3, removal of another shard's node (as a node failure, not a graceful drain), and the
node back with the same disk label `rejoin_after_s` later (the controller puts the shard, named after
its disk, back in the ring at its old place). Each event records the trace time it happened at and,
where it has one, when the shard served again (`back_t_s`). And `analyze`: per event, the errors and
wrong pages of the requests around it, the hit ratio of the requests before, the dip after and the
recovery time, from the replicas' per-request records.

Called by `raylsm.bench.fleet`. The schedule runs in the driver's thread (it only sleeps and calls Ray).
"""

from __future__ import annotations

import bisect
import logging
import os
import signal
import time
from typing import Any, Sequence

logger = logging.getLogger(__name__)

POLL_S = 0.2
BACK_TIMEOUT_S = 120.0
BEFORE_REQUESTS = 50  # the requests before an event that set its hit ratio "before" (and those after it)
PROBE_REQUESTS = 20  # consecutive requests whose hit ratio must be back to RECOVERED x before
RECOVERED = 0.9


def trace_s(wall: float, origin: float, speedup: float) -> float:
    return round((wall - origin) * speedup, 3)


def _shard_label(name: str) -> str:
    """The disk label a shard is named after (`shard-<label>-<index>`, raylsm.actors.placement)."""
    return name[len("shard-"):name.rindex("-")]


class FaultSchedule:
    """kill -9 a shard at 1/3 of `run_wall_s`, remove another shard's node at 2/3, add it back after
    `rejoin_after_s` (default: 5% of the run, at least 2 s). `events` holds what happened."""

    def __init__(self, cluster: Any, run_wall_s: float, speedup: float, rejoin_after_s: float | None = None) -> None:
        self.cluster = cluster
        self.run_wall_s = run_wall_s
        self.speedup = speedup
        self.rejoin_after_s = rejoin_after_s if rejoin_after_s is not None else max(2.0, 0.05 * run_wall_s)
        self.events: list[dict] = []

    def run(self, origin: float) -> None:
        import ray

        from raylsm.controller.controller_actor import get_controller

        def sleep_until(wall: float) -> None:
            time.sleep(max(0.0, wall - time.time()))

        controller = get_controller("raylsm")
        shards = sorted(ray.get(controller.ring.remote(), timeout=30)["shards"])
        if len(shards) < 2:
            self.events.append({"kind": "skipped", "why": f"{len(shards)} shard(s) in the ring; faults need 2"})
            return
        try:
            sleep_until(origin + self.run_wall_s / 3)
            self._kill(shards[0], origin)
            sleep_until(origin + 2 * self.run_wall_s / 3)
            self._remove_and_return(shards[1], origin, controller)
        except Exception as error:  # noqa: BLE001 (the run goes on; the report says the schedule broke)
            logger.exception("fault schedule failed")
            self.events.append({"kind": "schedule_failed", "why": repr(error)})

    def _kill(self, name: str, origin: float) -> None:
        import ray

        handle = ray.get_actor(name, namespace="raylsm")
        pid = ray.get(handle.info.remote(), timeout=30)["pid"]
        os.kill(pid, signal.SIGKILL)  # the shard actor runs on this machine (a simulated node)
        killed = time.time()
        event = {"kind": "kill_shard", "shard": name, "t_s": trace_s(killed, origin, self.speedup), "back_t_s": None}
        self.events.append(event)
        while time.time() - killed < BACK_TIMEOUT_S:
            try:
                if ray.get(handle.info.remote(), timeout=2)["pid"] != pid:
                    event["back_t_s"] = trace_s(time.time(), origin, self.speedup)
                    return
            except Exception:  # noqa: BLE001 (restarting: not reachable yet)
                pass
            time.sleep(POLL_S)

    def _remove_and_return(self, name: str, origin: float, controller: Any) -> None:
        import ray

        label = _shard_label(name)
        self.cluster.remove(label)
        removed = time.time()
        self.events.append({"kind": "remove_node", "shard": name, "disk": label,
                            "t_s": trace_s(removed, origin, self.speedup), "back_t_s": None})
        time.sleep(max(0.0, removed + self.rejoin_after_s - time.time()))
        node = self.cluster.add(label)
        added = time.time()
        event = {"kind": "add_node", "shard": name, "disk": label, "t_s": trace_s(added, origin, self.speedup),
                 "back_t_s": None}
        self.events.append(event)
        while time.time() - added < BACK_TIMEOUT_S:
            try:
                entry = ray.get(controller.ring.remote(), timeout=5)["shards"].get(name)
                if entry and entry.get("node_id") == node.node_id:
                    event["back_t_s"] = trace_s(time.time(), origin, self.speedup)
                    return
            except Exception:  # noqa: BLE001
                pass
            time.sleep(POLL_S)


def hit_ratio(records: Sequence[dict]) -> float | None:
    """L3 token hit ratio of `records` (None when they asked nothing)."""
    asked = sum(record["asked_pages"] for record in records)
    return sum(record["hit_pages"] for record in records) / asked if asked else None


def analyze(events: Sequence[dict], records: Sequence[dict], reference: Sequence[dict] | None = None,
            window_requests: int = BEFORE_REQUESTS, probe_requests: int = PROBE_REQUESTS,
            recovered: float = RECOVERED) -> list[dict]:
    """Each event with, from the fault run's per-request `records` (and, when given, the `reference`
    records of the same requests replayed without faults, matched by their "index"):

    - `errors`, `wrong_pages`: of the `window_requests` requests before it and after it (trace order);
    - `hit_before`: the hit ratio of the `window_requests` before it; `hit_dip`: how far below
      hit_before (a fraction: 0.1 = 10% lower) the lowest hit ratio of `probe_requests` consecutive
      requests fell among the `window_requests` after it;
    - `recovery_s`: trace seconds from the shard being back (`back_t_s`, else the event) to the first
      request of the first `probe_requests` run at or after it whose hit ratio is >= `recovered` x
      hit_before (0 when already there; None when never within the run): the issue's definition;
    - with a reference: `hits_lost_after` (1 - hits / reference hits over the `window_requests` after
      the event; negative: more hits), `hit_dip_vs_reference` (the same, 0 for a gain) and
      `recovery_vs_reference_s`, as recovery_s but against the reference's hit ratio
      of the same `probe_requests` requests, which the workload's own swings do not move.

    NOTE: windows count requests, not seconds: a sampled trace has well under one request per trace
    second (the --quick sample: 0.2), so a 10 s window would hold two requests and say nothing."""
    ordered = sorted(records, key=lambda record: record["trace_s"])
    times = [record["trace_s"] for record in ordered]
    undisturbed = {record["index"]: record for record in reference or ()}

    def reference_of(window: Sequence[dict]) -> list[dict]:
        return [undisturbed[record["index"]] for record in window if record["index"] in undisturbed]

    out = []
    for event in events:
        if "t_s" not in event:
            out.append(dict(event))
            continue
        at = bisect.bisect_left(times, event["t_s"])
        before_window = ordered[max(0, at - window_requests):at]
        after_window = ordered[at:at + window_requests]
        before = hit_ratio(before_window)
        probes = [hit_ratio(after_window[index:index + probe_requests])
                  for index in range(0, max(1, len(after_window) - probe_requests + 1))]
        probes = [value for value in probes if value is not None]
        lowest = min(probes) if probes else None
        first = bisect.bisect_left(times, event.get("back_t_s") or event["t_s"])
        reference_t = event.get("back_t_s") or event["t_s"]

        def recovery(target) -> float | None:
            for index in range(first, len(ordered) - probe_requests + 1):
                window = ordered[index:index + probe_requests]
                value, goal = hit_ratio(window), target(window)
                if value is not None and goal is not None and value >= recovered * goal - 1e-12:
                    return round(max(0.0, times[index] - reference_t), 3)
            return None

        near = before_window + after_window
        result = {**event, "errors": sum(record["errors"] for record in near),
                  "wrong_pages": sum(record["wrong_pages"] for record in near),
                  "hit_before": None if before is None else round(before, 4),
                  "hit_dip": (None if not before or lowest is None else round(max(0.0, 1 - lowest / before), 4)),
                  "lowest_probe_hit": None if lowest is None else round(lowest, 4),
                  "recovery_s": None if before is None else recovery(lambda window: before),
                  "window_requests": window_requests, "probe_requests": probe_requests, "recovered_to": recovered}
        if undisturbed:
            hits = sum(record["hit_pages"] for record in after_window)
            reference_hits = sum(record["hit_pages"] for record in reference_of(after_window))
            result["hit_before_reference"] = _rounded(hit_ratio(reference_of(before_window)))
            result["hits_lost_after"] = round(1 - hits / reference_hits, 4) if reference_hits else None
            # The dip against the same requests undisturbed: the workload's own swings between
            # windows (a 20-request window of this trace ranges 0.0-0.5) cancel out.
            result["hit_dip_vs_reference"] = (None if result["hits_lost_after"] is None
                                              else max(0.0, result["hits_lost_after"]))
            result["recovery_vs_reference_s"] = recovery(lambda window: hit_ratio(reference_of(window)))
        out.append(result)
    return out


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
